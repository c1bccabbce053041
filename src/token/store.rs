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
    #[error("the secret was rotated out and its overlap has ended")]
    Rotated,
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
            AuthFailure::Rotated => "token_rotated_out",
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
    /// Unix seconds of the last accepted use (or of issue/load when never used). Shared with
    /// the usage store, so it survives reloads and is persisted across restarts.
    pub last_used: Arc<AtomicU64>,
    /// The rotated-out secret's digest and the end of its overlap, if any.
    previous: Option<Box<([u8; 32], u64)>>,
    /// This token's rate limit, if any.
    pub rate: Option<crate::ratelimit::RateSlot>,
}

impl TokenEntry {
    /// Builds an entry from a validated record; `tenant_domains` applies when the record names none.
    pub fn from_record(rec: &TokenRecord, tenant_domains: &DomainSet, now: u64) -> Option<Self> {
        let domains = match &rec.domains {
            Some(ds) => Self::parse_domains(ds),
            None => tenant_domains.clone(),
        };
        Self::with_domains(rec, rec.tenant.as_str().into(), domains, now)
    }

    /// A token record's own `domains` list as a set (invalid patterns were refused at load).
    pub fn parse_domains(ds: &[String]) -> DomainSet {
        DomainSet::new(
            ds.iter()
                .filter_map(|d| DomainPattern::parse(d).ok())
                .collect(),
        )
    }

    /// [`TokenEntry::from_record`] with the token's domains already resolved, so a large token
    /// file parses each distinct domain list once.
    pub fn with_domains(
        rec: &TokenRecord,
        tenant: Arc<str>,
        domains: DomainSet,
        now: u64,
    ) -> Option<Self> {
        let digest: [u8; 32] = hex::decode(&rec.sha256).ok()?.try_into().ok()?;
        let created = rec.created_at.map(|t| t.unix()).unwrap_or(now);
        let previous = match &rec.previous {
            Some(p) => Some(Box::new((
                hex::decode(&p.sha256).ok()?.try_into().ok()?,
                p.expires_at.unix(),
            ))),
            None => None,
        };
        Some(TokenEntry {
            id: rec.id.as_str().into(),
            tenant,
            digest,
            scopes: rec.scopes.iter().copied().collect(),
            domains,
            expires_at: rec.expires_at.map(|t| t.unix()),
            idle_timeout: rec.idle_timeout.map(|d| d.0.as_secs()),
            status: rec.status,
            last_used: Arc::new(AtomicU64::new(created)),
            previous,
            rate: None,
        })
    }

    /// Whether this entry's current secret is the one whose hex SHA-256 is `sha256`.
    pub fn has_digest(&self, sha256: &str) -> bool {
        hex::decode(sha256).is_ok_and(|d| d == self.digest)
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

/// One live secret: the entry it unlocks and, for a rotated-out secret, when it stops working.
#[derive(Debug)]
struct Slot {
    entry: Arc<TokenEntry>,
    until: Option<u64>,
}

/// Every token of a policy, keyed by digest. A rotated entry has two live secrets, both keyed
/// here, sharing one entry.
#[derive(Debug, Default)]
pub struct TokenIndex {
    by_digest: HashMap<[u8; 32], Slot>,
    entries: Vec<Arc<TokenEntry>>,
}

impl TokenIndex {
    pub fn new(entries: impl IntoIterator<Item = TokenEntry>) -> Self {
        let mut idx = TokenIndex::default();
        for e in entries {
            let e = Arc::new(e);
            if let Some(&(digest, until)) = e.previous.as_deref() {
                idx.by_digest.insert(
                    digest,
                    Slot {
                        entry: e.clone(),
                        until: Some(until),
                    },
                );
            }
            idx.by_digest.insert(
                e.digest,
                Slot {
                    entry: e.clone(),
                    until: None,
                },
            );
            idx.entries.push(e);
        }
        idx
    }

    /// Number of token entries (not secrets).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<TokenEntry>> {
        self.entries.iter()
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
        let slot = self.by_digest.get(&digest).ok_or(AuthFailure::Unknown)?;
        let expected = match (slot.until, slot.entry.previous.as_deref()) {
            (Some(_), Some(&(prev, _))) => prev,
            _ => slot.entry.digest,
        };
        if !bool::from(expected.ct_eq(&digest)) {
            return Err(AuthFailure::Unknown);
        }
        if slot.until.is_some_and(|t| now >= t) {
            return Err(AuthFailure::Rotated);
        }
        slot.entry.check(now)?;
        Ok(slot.entry.clone())
    }
}
