//! Gives every request an `X-Request-Id`: the client's when it is short and printable, a fresh
//! one otherwise. It is forwarded upstream, logged, and echoed on the response.

use super::GatewayResponse;
use http::{HeaderName, HeaderValue, Request};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tower::{Layer, Service};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

pub fn layer() -> RequestIdLayer {
    RequestIdLayer
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// A client's id is kept when it is short and printable, and is not a token pasted by mistake:
/// the id is logged and audited as it is.
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        && !b
            .windows(crate::token::PREFIX.len())
            .any(|w| w.eq_ignore_ascii_case(crate::token::PREFIX.as_bytes()))
}

/// A process-unique id: a random per-process prefix and a counter. Cheap, and unguessable
/// enough for correlation (it is not a secret).
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        u32::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:08x}-{n:012x}`, written by hand: this runs on every request without an id.
    let mut id = [b'-'; 21];
    hex_into(&mut id[..8], u64::from(prefix));
    hex_into(&mut id[9..], n);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// Writes the low `out.len()` hex digits of `n`, zero-padded.
fn hex_into(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

impl<S, B> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = GatewayResponse>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
        let id = match (ids.next(), ids.next()) {
            (Some(v), None) if acceptable(v) => v.clone(),
            _ => generate(),
        };
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        super::access_log::record(&req, |r| r.request_id = Some(id.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            Ok(resp)
        })
    }
}
