//! The in-memory token index: SHA-256 digest → entry, so lookup cost does not grow with the
//! number of tokens, and validation of expiry, idle expiry and status.

use crate::config::{TokenRecord, TokenStatus};
use crate::policy::domain::{DomainPattern, DomainSet};
use crate::policy::scope::ScopeSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Why a presented credential was refused. The client sees one identical 401 for all of them;
/// the log records which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no bearer token was presented")]
    Missing,
    #[error("the credential is not a well-formed scimgate token")]
    Malformed,
    #[error("the token is not known")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("the token has not been used within its idle timeout")]
    IdleExpired,
    #[error("the token is suspended")]
    Suspended,
    #[error("the token is revoked")]
    Revoked,
}

impl AuthFailure {
    /// Stable reason code for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "token_missing",
            AuthFailure::Malformed => "token_malformed",
            AuthFailure::Unknown => "token_unknown",
            AuthFailure::Expired => "token_expired",
            AuthFailure::IdleExpired => "token_idle_expired",
            AuthFailure::Suspended => "token_suspended",
            AuthFailure::Revoked => "token_revoked",
        }
    }
}

/// A validated token's grants, shared by every request that presents it.
#[derive(Debug)]
pub struct TokenEntry {
    pub id: Arc<str>,
    pub tenant: Arc<str>,
    digest: [u8; 32],
    pub scopes: ScopeSet,
    pub domains: DomainSet,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<u64>,
    /// Seconds of disuse after which the token stops working.
    pub idle_timeout: Option<u64>,
    pub status: TokenStatus,
    /// Unix seconds of the last accepted use (or of issue/load when never used).
    pub last_used: AtomicU64,
}

impl TokenEntry {
    /// Builds an entry from a validated record; `tenant_domains` applies when the record names none.
    pub fn from_record(rec: &TokenRecord, tenant_domains: &DomainSet, now: u64) -> Option<Self> {
        let digest: [u8; 32] = hex::decode(&rec.sha256).ok()?.try_into().ok()?;
        let domains = match &rec.domains {
            Some(ds) => DomainSet::new(ds.iter().filter_map(|d| DomainPattern::parse(d).ok()).collect()),
            None => tenant_domains.clone(),
        };
        let created = rec.created_at.map(|t| t.unix()).unwrap_or(now);
        Some(TokenEntry {
            id: rec.id.as_str().into(),
            tenant: rec.tenant.as_str().into(),
            digest,
            scopes: rec.scopes.iter().copied().collect(),
            domains,
            expires_at: rec.expires_at.map(|t| t.unix()),
            idle_timeout: rec.idle_timeout.map(|d| d.0.as_secs()),
            status: rec.status,
            last_used: AtomicU64::new(created),
        })
    }

    /// Checks status, expiry and idle expiry at `now`, and on success records the use.
    pub fn check(&self, now: u64) -> Result<(), AuthFailure> {
        match self.status {
            TokenStatus::Active => {}
            TokenStatus::Suspended => return Err(AuthFailure::Suspended),
            TokenStatus::Revoked => return Err(AuthFailure::Revoked),
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthFailure::Expired);
        }
        if let Some(idle) = self.idle_timeout {
            let last = self.last_used.load(Ordering::Relaxed);
            if now.saturating_sub(last) > idle {
                return Err(AuthFailure::IdleExpired);
            }
        }
        // Sliding expiry: one relaxed store per second at most, no lock on the hot path.
        if self.last_used.load(Ordering::Relaxed) < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Every token of a policy, keyed by digest.
#[derive(Debug, Default)]
pub struct TokenIndex {
    by_digest: HashMap<[u8; 32], Arc<TokenEntry>>,
}

impl TokenIndex {
    pub fn new(entries: impl IntoIterator<Item = TokenEntry>) -> Self {
        TokenIndex {
            by_digest: entries.into_iter().map(|e| (e.digest, Arc::new(e))).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<TokenEntry>> {
        self.by_digest.values()
    }

    /// Validates a presented token: format and checksum first (no lookup for garbage), then one
    /// hash-map probe, then a constant-time comparison of the digest, then status and expiry.
    pub fn validate(&self, presented: &str, now: u64) -> Result<Arc<TokenEntry>, AuthFailure> {
        if presented.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if !super::looks_like_token(presented) {
            return Err(AuthFailure::Malformed);
        }
        let digest = super::hash(presented);
        let entry = self.by_digest.get(&digest).ok_or(AuthFailure::Unknown)?;
        if !bool::from(entry.digest.ct_eq(&digest)) {
            return Err(AuthFailure::Unknown);
        }
        entry.check(now)?;
        Ok(entry.clone())
    }
}
