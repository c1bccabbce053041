//! Bounds the whole request — body, lookups and upstream calls together — by the policy's
//! `server.request_timeout` (504 beyond), so no request can hold a connection indefinitely.

use super::Snapshot;
use crate::scim::error::GatewayError;
use crate::BoxError;
use http::Request;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct LimitRequestTimeLayer;

pub fn layer() -> LimitRequestTimeLayer {
    LimitRequestTimeLayer
}

impl<S> Layer<S> for LimitRequestTimeLayer {
    type Service = LimitRequestTime<S>;
    fn layer(&self, inner: S) -> LimitRequestTime<S> {
        LimitRequestTime { inner }
    }
}

#[derive(Clone)]
pub struct LimitRequestTime<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for LimitRequestTime<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = req
            .extensions()
            .get::<Snapshot>()
            .map(|s| s.0.limits.request_timeout);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match limit {
                Some(d) => match tokio::time::timeout(d, fut).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(GatewayError::UpstreamTimeout.into()),
                },
                None => fut.await.map_err(Into::into),
            }
        })
    }
}
