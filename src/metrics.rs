//! Prometheus metrics, served on `admin_listen` at `/metrics`. Label values come from the
//! policy (tenant ids) and from fixed sets (decisions, status codes, reason codes), never from
//! anything a client sends, so the number of series stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};

/// A tenant id as a label value: shares the policy's string, so counting a request allocates
/// nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TenantLabel(pub Arc<str>);

impl EncodeLabelValue for TenantLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: TenantLabel,
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub upstream_errors: Family<ReasonLabels, Counter>,
    pub rate_limited: Family<ReasonLabels, Counter>,
    pub tokens_expiring: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    pub open_connections: Gauge,
    pub audit_records: Counter,
    /// User writes pinned to a version (`upstream.conditional_writes`), by what they were
    /// judged on: `cached` (and accepted), `read` (a fresh read), `rejudged` (judged on the
    /// cached copy, refused by the backend, judged again on a fresh read).
    pub pinned_writes: Family<ResultLabels, Counter>,
    registry: Registry,
}

fn latency() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            requests: Family::default(),
            request_duration: latency(),
            upstream_duration: latency(),
            upstream_errors: Family::default(),
            rate_limited: Family::default(),
            tokens_expiring: Gauge::default(),
            reloads: Family::default(),
            open_connections: Gauge::default(),
            audit_records: Counter::default(),
            pinned_writes: Family::default(),
            registry: Registry::with_prefix("scimgate"),
        };
        // Series that should exist before their first event, so alerts can use them.
        for result in ["success", "failure"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["cached", "read", "rejudged"] {
            let _ = m.pinned_writes.get_or_create(&ResultLabels { result });
        }
        let r = &mut m.registry;
        r.register(
            "requests",
            "Requests by tenant, decision and status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time the gateway took per request, upstream included",
            m.request_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time the backend took per call",
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Backend calls that failed, by reason",
            m.upstream_errors.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a rate limit, cap or concurrency bound, by reason",
            m.rate_limited.clone(),
        );
        r.register(
            "tokens_expiring_soon",
            "Active tokens that expire within 14 days",
            m.tokens_expiring.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        r.register(
            "audit_records",
            "Audit records written",
            m.audit_records.clone(),
        );
        r.register(
            "pinned_writes",
            "User writes pinned to the version judged, by what they were judged on",
            m.pinned_writes.clone(),
        );
        m
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}
