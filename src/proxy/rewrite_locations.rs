//! Rewrites the backend's URLs (`Location`, `Content-Location`, `meta.location`, `$ref`) to the
//! gateway's public prefix, so clients never see the backend's address.

use super::{ClientConn, GatewayResponse, Routed};
use crate::scim::rewrite::{rewrite_body, rewrite_url};
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Full;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct RewriteLocationsLayer;

pub fn layer() -> RewriteLocationsLayer {
    RewriteLocationsLayer
}

impl<S> Layer<S> for RewriteLocationsLayer {
    type Service = RewriteLocations<S>;
    fn layer(&self, inner: S) -> RewriteLocations<S> {
        RewriteLocations { inner }
    }
}

#[derive(Clone)]
pub struct RewriteLocations<S> {
    inner: S,
}

/// `https://<host><tenant prefix>`: the URL clients should see for the tenant's SCIM root.
/// The host is the one the client addressed (validated), else the gateway's local address.
pub fn public_base<B>(req: &Request<B>, prefix: &str) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| {
            h.parse::<http::uri::Authority>()
                .is_ok_and(|a| a.as_str() == *h && !h.contains('@'))
        });
    let mut out = String::with_capacity(8 + host.map_or(24, str::len) + prefix.len());
    out.push_str("https://");
    match host {
        Some(h) => out.push_str(h),
        None => match req.extensions().get::<ClientConn>() {
            Some(c) => {
                use std::fmt::Write;
                let _ = write!(out, "{}", c.local);
            }
            None => out.push_str("localhost"),
        },
    }
    out.push_str(prefix);
    out
}

impl<S> Service<Request<Bytes>> for RewriteLocations<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let target = req
            .extensions()
            .get::<Routed>()
            .map(|r| (r.tenant.clone(), public_base(&req, &r.tenant.prefix)));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let Some((tenant, public)) = target else {
                return Ok(resp);
            };
            let from = &*tenant.upstream.base_url;
            let (mut parts, body) = resp.into_parts();
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let new = parts
                    .headers
                    .get(&name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| rewrite_url(v, from, &public))
                    .and_then(|v| HeaderValue::from_str(&v).ok());
                if let Some(v) = new {
                    parts.headers.insert(name, v);
                }
            }
            let body = match http_body::Body::size_hint(&body).exact() {
                Some(0) => body,
                _ => {
                    let bytes = http_body_util::BodyExt::collect(body)
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    match rewrite_body(&bytes, from, &public) {
                        Some(v) => Full::new(Bytes::from(v)),
                        None => Full::new(bytes),
                    }
                }
            };
            Ok(GatewayResponse::from_parts(parts, body))
        })
    }
}
