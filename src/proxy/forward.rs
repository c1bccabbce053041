//! Sends the checked request to the tenant's backend over the pooled client: canonical path,
//! the gateway's own credential instead of the client's, hop-by-hop headers dropped,
//! `X-Forwarded-For`/`-Proto` set; the response is buffered within the upstream's limits.

use super::{ClientConn, GatewayResponse, Routed};
use crate::scim::error::GatewayError;
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{timeout_at, Instant};
use tower::Service;

/// The innermost service.
#[derive(Clone, Copy, Default)]
pub struct Forward;

/// Hop-by-hop headers (RFC 9110 §7.6.1), `Upgrade` included: never passed on either way.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A client header with `_` in its name never reaches the backend (as nginx's
/// `underscores_in_headers off`): CGI and WSGI servers read `if_match` as `If-Match` (joining it
/// to the gateway's own), `x_forwarded_for` as `X-Forwarded-For`, and so on, which would get
/// round every header the gateway removes, replaces or sets.
fn is_underscored(name: &HeaderName) -> bool {
    name.as_str().contains('_')
}

/// Client headers the backend never sees: the client's credential and anything the gateway
/// sets itself, and headers some frameworks honour to change the method or path after the
/// gateway has judged them.
fn is_replaced_upstream(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "host"
            | "content-length"
            | "accept-encoding"
            | "cookie"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-real-ip"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-method"
    )
}

/// Removes every header `drop` picks, plus those the `Connection` header names. One pass over
/// the names present instead of one hash lookup per name that might be: a request carries a
/// handful of headers and this runs on every request.
fn remove_headers(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| drop(n) || named.contains(n))
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_headers(headers, is_hop_by_hop);
}

/// Rewrites the client's headers into the backend request's headers, in place: `host` is the
/// backend's own (without it, the pooled client sets it).
pub fn upstream_headers(
    headers: &mut HeaderMap,
    conn: Option<&ClientConn>,
    host: Option<&HeaderValue>,
    credential: Option<&HeaderValue>,
) {
    remove_headers(headers, |n| {
        is_hop_by_hop(n) || is_replaced_upstream(n) || is_underscored(n)
    });
    if let Some(h) = host {
        headers.insert(header::HOST, h.clone());
    }
    if let Some(c) = credential {
        headers.insert(header::AUTHORIZATION, c.clone());
    }
    if let Some(v) = conn.and_then(|c| c.forwarded_for.clone()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
}

impl Service<Request<Bytes>> for Forward {
    type Response = GatewayResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(forward(req))
    }
}

async fn forward(req: Request<Bytes>) -> Result<GatewayResponse, BoxError> {
    let (mut parts, body) = req.into_parts();
    let routed = parts
        .extensions
        .remove::<Routed>()
        .ok_or(GatewayError::Internal("forwarding an unrouted request"))?;
    let record = parts
        .extensions
        .get::<super::access_log::RecordHandle>()
        .cloned();
    let up = &routed.tenant.upstream;

    let mut target = String::with_capacity(up.base_url.len() + 64);
    target.push_str(&up.base_url);
    routed.op.write_upstream_path(&mut target);
    if let Some(q) = parts.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    // From the string itself: parsing a `&str` would copy it.
    let uri = Uri::try_from(target).map_err(|_| {
        GatewayError::bad_request("bad_path", "the request path cannot be forwarded")
    })?;
    upstream_headers(
        &mut parts.headers,
        parts.extensions.get::<ClientConn>(),
        up.host(),
        up.authorization(),
    );

    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = parts.headers;

    let started = Instant::now();
    let deadline = started + up.timeout;
    let m = &crate::metrics::METRICS;
    let failed = |reason: &'static str| {
        m.upstream_errors
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    };
    // One deadline, one timer, for the answer and its body.
    let exchange = async {
        let resp = up.client().request(out).await.map_err(|e| {
            failed("unavailable");
            GatewayError::UpstreamUnavailable(error_chain(&e))
        })?;
        let (rparts, rbody) = resp.into_parts();
        if let Some(r) = &record {
            r.update(|r| r.upstream_status = Some(rparts.status.as_u16()));
        }
        let bytes = match Limited::new(rbody, up.max_response_bytes).collect().await {
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(GatewayError::UpstreamInvalid(
                    "response larger than upstream.max_response_bytes",
                ))
            }
            Err(e) => return Err(GatewayError::UpstreamUnavailable(error_chain(e.as_ref()))),
            Ok(c) => c.to_bytes(),
        };
        Ok((rparts, bytes))
    };
    let (mut rparts, bytes) = match timeout_at(deadline, exchange).await {
        Err(_) => {
            failed("timeout");
            return Err(GatewayError::UpstreamTimeout.into());
        }
        Ok(r) => r?,
    };
    m.upstream_duration.observe(started.elapsed().as_secs_f64());
    strip_hop_by_hop(&mut rparts.headers);
    if rparts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(GatewayError::UpstreamInvalid("compressed response").into());
    }
    rparts.headers.remove(header::CONTENT_LENGTH);
    rparts.version = Version::default();
    Ok(GatewayResponse::from_parts(rparts, Full::new(bytes)))
}

/// The error and its sources on one line, for the log (hyper's errors carry no headers).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
