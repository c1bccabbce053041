//! Turns every error from the layers below into its SCIM error response: the single place
//! where refusals become responses. Anything that is not a `GatewayError` is a 500, never a
//! forwarded request.

use super::access_log::RecordHandle;
use super::GatewayResponse;
use crate::scim::error::GatewayError;
use crate::BoxError;
use http::Request;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct ScimErrorsLayer;

pub fn layer() -> ScimErrorsLayer {
    ScimErrorsLayer
}

impl<S> Layer<S> for ScimErrorsLayer {
    type Service = ScimErrors<S>;
    fn layer(&self, inner: S) -> ScimErrors<S> {
        ScimErrors { inner }
    }
}

#[derive(Clone)]
pub struct ScimErrors<S> {
    inner: S,
}

/// The response for an error that reached the top of the stack, noting the decision.
pub fn respond(err: BoxError, record: Option<&RecordHandle>) -> GatewayResponse {
    let err = match err.downcast::<GatewayError>() {
        Ok(e) => *e,
        Err(other) => {
            tracing::error!(error = %other, "unexpected error in the request path");
            GatewayError::Internal("unexpected error")
        }
    };
    if let Some(rec) = record {
        rec.update(|r| {
            r.decision = Some(if err.is_policy_decision() {
                "deny"
            } else {
                "error"
            });
            r.reason = Some(err.reason());
        });
    }
    if !err.is_policy_decision() {
        tracing::warn!(reason = err.reason(), error = %err, "request failed");
    }
    err.to_response()
}

impl<S, B> Service<Request<B>> for ScimErrors<S>
where
    S: Service<Request<B>, Response = GatewayResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A readiness error would surface again on the call, where it becomes a response.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = req.extensions().get::<RecordHandle>().cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp),
                Err(e) => Ok(respond(e.into(), record.as_ref())),
            }
        })
    }
}
