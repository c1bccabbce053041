//! Buffers the request body within the policy's size and time limits and checks that a body is
//! JSON the gateway can read: 413 past the limit, 408 when the client stalls, 415 for another
//! media type or a `Content-Encoding` the gateway does not decode.

use super::Snapshot;
use crate::scim::error::GatewayError;
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderMap, Request};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct ReadBodyLayer;

pub fn layer() -> ReadBodyLayer {
    ReadBodyLayer
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;
    fn layer(&self, inner: S) -> ReadBody<S> {
        ReadBody { inner }
    }
}

#[derive(Clone)]
pub struct ReadBody<S> {
    inner: S,
}

/// Whether the headers describe a body the gateway can inspect.
pub fn check_media_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    for enc in headers.get_all(header::CONTENT_ENCODING) {
        let ok = enc
            .to_str()
            .map(|s| {
                s.split(',')
                    .all(|e| e.trim().eq_ignore_ascii_case("identity"))
            })
            .unwrap_or(false);
        if !ok {
            return Err(GatewayError::UnsupportedMediaType(
                "compressed request bodies are not accepted; send the body uncompressed",
            ));
        }
    }
    if headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
        return Err(GatewayError::UnsupportedMediaType(
            "a request may carry one Content-Type",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match ct {
        Some(t)
            if t.eq_ignore_ascii_case("application/scim+json")
                || t.eq_ignore_ascii_case("application/json") =>
        {
            Ok(())
        }
        _ => Err(GatewayError::UnsupportedMediaType(
            "request bodies must be application/scim+json or application/json",
        )),
    }
}

impl<S, B> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<Bytes>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let Some(limits) = req
                .extensions()
                .get::<Snapshot>()
                .map(|s| s.0.limits.clone())
            else {
                return Err(GatewayError::Internal("no policy snapshot").into());
            };
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
                return Err(GatewayError::BodyTooLarge(limits.max_body_bytes).into());
            }
            let (parts, body) = req.into_parts();
            let collected = tokio::time::timeout(
                limits.body_read_timeout,
                Limited::new(body, limits.max_body_bytes).collect(),
            )
            .await;
            let bytes = match collected {
                Err(_) => return Err(GatewayError::RequestTimeout.into()),
                Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    return Err(GatewayError::BodyTooLarge(limits.max_body_bytes).into())
                }
                Ok(Err(_)) => {
                    return Err(GatewayError::bad_request(
                        "body_unreadable",
                        "the request body could not be read",
                    )
                    .into())
                }
                Ok(Ok(c)) => c.to_bytes(),
            };
            if !bytes.is_empty() {
                check_media_type(&parts.headers)?;
            }
            inner
                .call(Request::from_parts(parts, bytes))
                .await
                .map_err(Into::into)
        })
    }
}
