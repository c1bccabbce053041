//! Applies the token's and the tenant's rate limits (429 with `Retry-After` and the IETF
//! `RateLimit-Policy`/`RateLimit` headers) and the concurrency bounds per token and in total
//! (503 with `Retry-After` rather than an unbounded queue). Allowed responses carry the
//! token's remaining quota.

use super::{Authenticated, GatewayResponse, Routed, Snapshot};
use crate::ratelimit::{Decision, RateSlot};
use crate::scim::error::{GatewayError, RATELIMIT, RATELIMIT_POLICY};
use crate::BoxError;
use http::{HeaderValue, Request};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct RateLimitLayer;

pub fn layer() -> RateLimitLayer {
    RateLimitLayer
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit { inner }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
}

/// Charges `cost` to a slot; on refusal, the 429 to answer with.
pub fn charge(slot: &RateSlot, cost: u32) -> Result<u32, GatewayError> {
    match slot.check(cost) {
        Decision::Allow { remaining } => Ok(remaining),
        Decision::Deny { retry_after } => {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            Err(GatewayError::RateLimited {
                reason: if slot.name == "tenant" {
                    "tenant_rate_limited"
                } else {
                    "token_rate_limited"
                },
                detail: "rate limit exceeded; retry after the time in Retry-After",
                retry_after: secs,
                headers: Some((slot.policy_header(), slot.status_header(0, secs))),
            })
        }
    }
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = GatewayResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let (Some(snapshot), Some(token), Some(routed)) = (
            ext.get::<Snapshot>(),
            ext.get::<Authenticated>(),
            ext.get::<Routed>(),
        ) else {
            return Box::pin(async {
                Err(GatewayError::Internal("rate limit before routing").into())
            });
        };
        let policy = &snapshot.0;
        let token_slot = token.0.rate();
        let token_key = token_slot.as_ref().map_or_else(|| token.0.key(), |s| s.key);
        let permits = match policy
            .limiters
            .enter(token_key, policy.rate_limits.token_concurrency)
        {
            Ok(p) => p,
            Err(reason) => {
                return Box::pin(async move { Err(GatewayError::Overloaded { reason }.into()) })
            }
        };
        let mut status = None;
        if let Some(slot) = &token_slot {
            match charge(slot, 1) {
                Ok(remaining) => status = Some((slot.clone(), remaining)),
                Err(e) => return Box::pin(async move { Err(e.into()) }),
            }
        }
        if let Some(slot) = &routed.tenant.rate {
            if let Err(e) = charge(slot, 1) {
                return Box::pin(async move { Err(e.into()) });
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await.map_err(Into::into)?;
            drop(permits);
            if let Some((slot, remaining)) = status {
                let h = resp.headers_mut();
                // The strings become the values without a copy.
                if let Ok(v) = HeaderValue::try_from(slot.policy_header()) {
                    h.insert(RATELIMIT_POLICY.clone(), v);
                }
                if let Ok(v) =
                    HeaderValue::try_from(slot.status_header(remaining, slot.reset_secs(remaining)))
                {
                    h.insert(RATELIMIT.clone(), v);
                }
            }
            Ok(resp)
        })
    }
}
