//! Writes one structured JSON line per request (target `scimgate::access`): request id, tenant,
//! token id, method, path, decision, reason, status, upstream status and duration. Layers below
//! fill in what they learn through [`record`]. Never a secret, a query string or a body.

use super::GatewayResponse;
use http::{HeaderValue, Method, Request};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// What is known about a request by the time it is answered.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub request_id: Option<HeaderValue>,
    pub path: Option<String>,
    pub tenant: Option<Arc<str>>,
    pub token_id: Option<Arc<str>>,
    pub operation: Option<&'static str>,
    pub decision: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub upstream_status: Option<u16>,
    pub policy_version: Option<Arc<str>>,
}

/// The shared record, carried in the request's extensions.
#[derive(Clone, Default)]
pub struct RecordHandle(Arc<Mutex<AccessRecord>>);

/// Lets a layer note what it learned about the request.
pub fn record<B>(req: &Request<B>, f: impl FnOnce(&mut AccessRecord)) {
    if let Some(h) = req.extensions().get::<RecordHandle>() {
        h.update(f);
    }
}

impl RecordHandle {
    pub fn update(&self, f: impl FnOnce(&mut AccessRecord)) {
        if let Ok(mut r) = self.0.lock() {
            f(&mut r);
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct AccessLogLayer;

pub fn layer() -> AccessLogLayer {
    AccessLogLayer
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let handle = RecordHandle::default();
        req.extensions_mut().insert(handle.clone());
        let method = req.method().clone();
        let raw_path_len = req.uri().path().len();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            emit(
                &handle,
                &method,
                raw_path_len,
                resp.status().as_u16(),
                start,
            );
            Ok(resp)
        })
    }
}

fn emit(handle: &RecordHandle, method: &Method, raw_path_len: usize, status: u16, start: Instant) {
    let Ok(r) = handle.0.lock() else { return };
    let decision = r.decision.unwrap_or(if r.upstream_status.is_some() {
        "allow"
    } else {
        "deny"
    });
    // A token pasted into a URL must not reach the log.
    let path = r.path.as_deref().map(|p| {
        if p.contains(crate::token::PREFIX) {
            "[redacted]"
        } else {
            p
        }
    });
    tracing::info!(
        target: "scimgate::access",
        request_id = r.request_id.as_ref().and_then(|v| v.to_str().ok()),
        tenant = r.tenant.as_deref(),
        token_id = r.token_id.as_deref(),
        method = method.as_str(),
        path,
        raw_path_len,
        operation = r.operation,
        decision,
        reason = r.reason,
        status,
        upstream_status = r.upstream_status,
        policy_version = r.policy_version.as_deref(),
        duration_us = start.elapsed().as_micros() as u64,
        "request"
    );
}
