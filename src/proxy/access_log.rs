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
use std::time::{Duration, Instant};

use tower::{Layer, Service};

/// What is known about a request by the time it is answered.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub request_id: Option<HeaderValue>,
    pub path: Option<String>,
    pub tenant: Option<Arc<str>>,
    pub token_id: Option<crate::token::TokenRef>,
    pub operation: Option<&'static str>,
    pub decision: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub upstream_status: Option<u16>,
    pub policy_version: Option<Arc<str>>,
    pub resource_type: Option<&'static str>,
    pub target_id: Option<String>,
    /// Normalisations applied to the request (`path_normalized`, `endpoint_case`, …).
    pub normalizations: Vec<&'static str>,
    pub audit: Option<crate::audit::Audit>,
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

/// The access line's tracing target: `RUST_LOG=scimgate::access=off` turns the lines off.
pub const TARGET: &str = "scimgate::access";

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
        let conn = req.extensions().get::<super::ClientConn>().cloned();
        let query = req.uri().query().map(str::to_owned);
        let bytes_in = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if method == Method::HEAD {
                // A HEAD answer carries no body (HTTP/2 resets a stream that sends one).
                *resp.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
            }
            let status = resp.status().as_u16();
            let bytes_out = http_body::Body::size_hint(resp.body()).exact();
            let elapsed = start.elapsed();
            emit(&handle, &method, raw_path_len, status, elapsed);
            let facts = Facts {
                method: &method,
                conn: conn.as_ref(),
                query: query.as_deref(),
                status,
                bytes_in,
                bytes_out,
                elapsed,
            };
            if let Some((audit, record)) = audit_record(&handle, &facts) {
                audit.send(record).await;
            }
            Ok(resp)
        })
    }
}

fn decision_of(r: &AccessRecord) -> &'static str {
    r.decision.unwrap_or(if r.upstream_status.is_some() {
        "allow"
    } else {
        "deny"
    })
}

/// Whether a URL part carries a token, as written or percent-decoded (`scimgate%5F…`).
fn carries_token(p: &str) -> bool {
    p.contains(crate::token::PREFIX)
        || (p.contains('%')
            && percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .contains(crate::token::PREFIX))
}

/// A token pasted into a URL must not reach any log.
fn redacted(p: &str) -> &str {
    if carries_token(p) {
        "[redacted]"
    } else {
        p
    }
}

/// [`redacted`], keeping the string when it is clean.
fn redacted_owned(p: String) -> String {
    if carries_token(&p) {
        "[redacted]".to_owned()
    } else {
        p
    }
}

/// What the outermost layer saw of the request and its response.
struct Facts<'a> {
    method: &'a Method,
    conn: Option<&'a super::ClientConn>,
    query: Option<&'a str>,
    status: u16,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    elapsed: Duration,
}

/// The audit record, taking what the access line no longer needs from the access record.
fn audit_record(
    handle: &RecordHandle,
    f: &Facts<'_>,
) -> Option<(crate::audit::Audit, crate::audit::Record)> {
    let mut r = handle.0.lock().ok()?;
    let audit = r.audit.clone()?;
    let decision = decision_of(&r);
    let path = r.path.take().map(redacted_owned);
    let target_id = r.target_id.take().map(redacted_owned);
    let record = crate::audit::Record {
        kind: "request",
        request_id: r.request_id.clone().map(crate::audit::HeaderText),
        client_addr: f.conn.map(|c| c.remote.ip()),
        client_cert_subject: f.conn.and_then(|c| c.client_cert_subject.clone()),
        token_id: r.token_id.clone(),
        tenant: r.tenant.clone(),
        method: Some(method_text(f.method)),
        path,
        query: f
            .query
            .map(|q| crate::audit::audited_query(q, audit.query_values))
            .map(|q| redacted(&q).to_owned()),
        resource_type: r.resource_type,
        operation: r.operation,
        target_id,
        decision: Some(decision),
        reason: r.reason,
        status: Some(f.status),
        upstream_status: r.upstream_status,
        bytes_in: f.bytes_in,
        bytes_out: f.bytes_out,
        duration_us: Some(f.elapsed.as_micros() as u64),
        policy_version: r.policy_version.clone(),
        normalizations: std::mem::take(&mut r.normalizations),
        event: None,
        detail: None,
    };
    Some((audit, record))
}

/// The method's name, without a copy for the standard ones.
fn method_text(m: &Method) -> std::borrow::Cow<'static, str> {
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    const NAMES: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    match known.iter().position(|k| k == m) {
        Some(i) => NAMES[i].into(),
        None => m.as_str().to_owned().into(),
    }
}

fn emit(
    handle: &RecordHandle,
    method: &Method,
    raw_path_len: usize,
    status: u16,
    elapsed: Duration,
) {
    let Ok(r) = handle.0.lock() else { return };
    let decision = decision_of(&r);
    let m = &crate::metrics::METRICS;
    m.requests
        .get_or_create(&crate::metrics::RequestLabels {
            tenant: crate::metrics::TenantLabel(r.tenant.clone().unwrap_or_else(|| "-".into())),
            decision,
            status,
        })
        .inc();
    m.request_duration.observe(elapsed.as_secs_f64());
    if status == 429 || status == 503 {
        m.rate_limited
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: r.reason.unwrap_or("upstream"),
            })
            .inc();
    }
    // Built directly rather than through tracing's field visitors, which cost ten times more;
    // RUST_LOG still decides whether the line is written.
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(writer) = crate::telemetry::writer() else {
        return;
    };
    let mut line = crate::telemetry::JsonLine::info("request");
    line.opt_str(
        "request_id",
        r.request_id.as_ref().and_then(|v| v.to_str().ok()),
    )
    .opt_str("tenant", r.tenant.as_deref())
    .opt_str("token_id", r.token_id.as_ref().map(|t| t.id()))
    .str("method", method.as_str())
    .opt_str("path", r.path.as_deref().map(redacted))
    .num("raw_path_len", raw_path_len as u64)
    .opt_str("operation", r.operation)
    .str("decision", decision)
    .opt_str("reason", r.reason)
    .num("status", status.into())
    .opt_num("upstream_status", r.upstream_status.map(u64::from))
    .opt_str("policy_version", r.policy_version.as_deref())
    .num("duration_us", elapsed.as_micros() as u64);
    writer.write_line(&line.finish(TARGET));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_a_url_is_redacted_however_it_is_encoded() {
        let token = "scimgate_MKHfTi8jDokbisqbG1zwPHmNtzT0jqEYQjTucQyb2eV0ewRIh";
        for q in [
            format!("filter={token}"),
            format!("filter=scimgate%5F{}", &token[9..]),
            format!("filter=scimgate%5f{}", &token[9..]),
            format!("{}=1", token.replace('_', "%5F")),
        ] {
            assert_eq!(redacted(&q), "[redacted]", "{q}");
            assert_eq!(redacted_owned(q.clone()), "[redacted]", "{q}");
        }
        assert_eq!(
            redacted("filter=userName%20eq%20%22a%22"),
            "filter=userName%20eq%20%22a%22"
        );
        assert_eq!(redacted("%zz"), "%zz");
    }
}
