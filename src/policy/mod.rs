//! The compiled policy: an immutable snapshot of tenants, upstreams and tokens that every
//! request reads once, and the decisions made over it. Reloads swap a whole new snapshot in.

pub mod blast;
pub mod bulk;
pub mod domain;
pub mod patch;
pub mod query;
pub mod route;
pub mod scope;
pub mod user;

use crate::config::{Config, Mode, Problems, RateLimitsSection};
use crate::proxy::upstream::Upstream;
use crate::ratelimit::{RateSlot, RateSpec};
use crate::token::usage::UsageStore;
use crate::token::TokenIndex;
use arc_swap::ArcSwap;
use domain::{DomainPattern, DomainSet};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One tenant: its public prefix, its domains, its backend.
#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    /// Public path prefix, e.g. `/acme/scim/v2`.
    pub prefix: Box<str>,
    pub domains: DomainSet,
    pub mode: Mode,
    pub allow_users_without_email: bool,
    pub upstream: Arc<Upstream>,
    /// The tenant-wide aggregate rate, if any.
    pub rate: Option<RateSlot>,
}

/// Limits that apply to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
}

/// An immutable policy snapshot.
#[derive(Debug)]
pub struct Policy {
    /// Short hash of the configuration and token files: the policy version in logs.
    pub version: Arc<str>,
    pub tenants: Vec<Arc<Tenant>>,
    /// Shared with the usage store (whose live last-use times are this index's) and with
    /// every request it validated.
    pub tokens: Arc<TokenIndex>,
    pub limits: Limits,
    /// Rate-limit settings and the limiter state shared across reloads.
    pub rate_limits: RateLimitsSection,
    pub limiters: Arc<crate::ratelimit::Limits>,
    /// The audit trail, if one is configured.
    pub audit: Option<crate::audit::Audit>,
}

/// State that outlives policy snapshots: last-use counters, limiter state, the audit writer.
#[derive(Debug, Default, Clone)]
pub struct Runtime {
    pub usage: Arc<UsageStore>,
    pub limiters: Arc<crate::ratelimit::Limits>,
    pub audit: Option<crate::audit::Audit>,
}

impl Policy {
    /// Compiles a validated configuration. Upstream clients are built here, so a bad upstream CA
    /// file is refused like any other problem.
    pub fn compile(cfg: &Config) -> Result<Policy, Problems> {
        Self::compile_with(cfg, &Runtime::default())
    }

    /// Compiles with token last-use counters from `usage`, so idle expiry carries across
    /// reloads and restarts.
    pub fn compile_with(cfg: &Config, runtime: &Runtime) -> Result<Policy, Problems> {
        let (usage, limiters) = (&runtime.usage, &runtime.limiters);
        let now = crate::proxy::unix_now();
        let rl = &cfg.gateway.rate_limits;
        limiters.configure(rl);
        let mut shared_default: Option<Arc<Upstream>> = None;
        let mut tenants = Vec::with_capacity(cfg.gateway.tenants.len());
        for (i, t) in cfg.gateway.tenants.iter().enumerate() {
            let auth = cfg.upstream_authorization[i].as_deref();
            let upstream = match (&t.upstream, &shared_default) {
                (None, Some(u)) if u.authorization_matches(auth) => u.clone(),
                (section, _) => {
                    let section = section.as_ref().unwrap_or(&cfg.gateway.upstream);
                    let u = Arc::new(Upstream::new(cfg, section, auth)?);
                    if t.upstream.is_none() {
                        shared_default = Some(u.clone());
                    }
                    u
                }
            };
            let id: Arc<str> = t.id.as_str().into();
            tenants.push(Arc::new(Tenant {
                rate: limiters.slot("tenant", &id, t.rate_limit.or(rl.tenant)),
                id,
                prefix: t.path_prefix.as_str().into(),
                domains: DomainSet::new(
                    t.domains
                        .iter()
                        .filter_map(|d| DomainPattern::parse(d).ok())
                        .collect(),
                ),
                mode: t.mode.unwrap_or(cfg.gateway.mode),
                allow_users_without_email: t.allow_users_without_email,
                upstream,
            }));
        }
        // Tokens mostly share a few domain lists and quotas: each is made once.
        let mut domain_sets: HashMap<&[String], DomainSet> = HashMap::new();
        let mut rates: HashMap<(u32, u32), Option<RateSpec>> = HashMap::new();
        let mut builder = TokenIndex::builder(limiters.keys.clone(), cfg.tokens.tokens.len());
        usage.with_starts(now, |start| {
            for rec in &cfg.tokens.tokens {
                let Some(tenant) = tenants.iter().find(|t| *t.id == *rec.tenant) else {
                    continue;
                };
                let domains = match rec.domains.as_deref() {
                    Some(ds) => domain_sets
                        .entry(ds)
                        .or_insert_with(|| crate::token::parse_domains(ds)),
                    None => &tenant.domains,
                };
                let rate = rec.rate_limit.or(rl.token).and_then(|r| {
                    rates
                        .entry((r.per_second, r.burst))
                        .or_insert_with(|| limiters.spec("token", Some(r)))
                        .clone()
                });
                let last_used = start(&rec.id, rec.created_at.map(|t| t.unix()));
                // Validation refused malformed digests and long ids: nothing is dropped here.
                let pushed = builder.push(rec, &tenant.id, domains, rate.as_ref(), last_used);
                debug_assert!(pushed.is_some(), "token {} was not indexed", rec.id);
            }
        });
        let tokens = Arc::new(builder.finish());
        Ok(Policy {
            version: cfg.version.as_str().into(),
            tenants,
            tokens,
            limits: Limits {
                max_body_bytes: cfg.gateway.server.max_body_bytes,
                body_read_timeout: cfg.gateway.server.body_read_timeout.0,
                request_timeout: cfg.gateway.server.request_timeout.0,
            },
            rate_limits: rl.clone(),
            limiters: limiters.clone(),
            audit: runtime.audit.clone(),
        })
    }

    /// The tenant whose prefix the normalised `path` lies under, and the rest of the path.
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Arc<Tenant>, &'p str)> {
        self.tenants
            .iter()
            .find_map(|t| route::strip_prefix(path, &t.prefix).map(|rest| (t, rest)))
    }
}

/// The live policy, swapped atomically on reload; readers never block.
pub type PolicyHandle = Arc<ArcSwap<Policy>>;

pub fn handle(policy: Policy) -> PolicyHandle {
    Arc::new(ArcSwap::from_pointee(policy))
}

#[cfg(test)]
mod tests;
