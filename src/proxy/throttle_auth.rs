//! Throttles brute force: once a client address (IPv6: its /64) has failed authentication
//! `rate_limits.auth_failures.max` times within the window, its further requests get 429 before
//! any token lookup, and the log says so.

use super::{ClientConn, Snapshot};
use crate::scim::error::GatewayError;
use crate::BoxError;
use http::Request;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct ThrottleAuthLayer;

pub fn layer() -> ThrottleAuthLayer {
    ThrottleAuthLayer
}

impl<S> Layer<S> for ThrottleAuthLayer {
    type Service = ThrottleAuth<S>;
    fn layer(&self, inner: S) -> ThrottleAuth<S> {
        ThrottleAuth { inner }
    }
}

#[derive(Clone)]
pub struct ThrottleAuth<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ThrottleAuth<S>
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
        let ip = req.extensions().get::<ClientConn>().map(|c| c.remote.ip());
        let limits = req
            .extensions()
            .get::<Snapshot>()
            .map(|s| s.0.limiters.clone());
        if let (Some(ip), Some(limits)) = (ip, &limits) {
            if limits.auth_blocked(ip) {
                tracing::warn!(client = %ip, "authentication throttled: too many failures from this address");
                return Box::pin(async { Err(GatewayError::AuthThrottled.into()) });
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            if let (Err(e), Some(ip), Some(limits)) = (&result, ip, limits) {
                let failed = matches!(
                    e.downcast_ref::<GatewayError>(),
                    Some(GatewayError::Auth(_))
                );
                if failed && limits.auth_failed(ip) {
                    tracing::warn!(client = %ip, "authentication failures reached the limit; throttling this address");
                }
            }
            result
        })
    }
}
