//! The in-memory token index: SHA-256 digest → token, so lookup cost does not grow with the
//! number of tokens, and validation of expiry, idle expiry and status.
//!
//! A gateway may hold a hundred thousand tokens, so the index is a few flat tables rather than
//! one object per token: the digests in one array (found through a table of 4-byte positions),
//! every id in one string, 16 bytes per token, and what tokens share (tenant, domain list,
//! quota, scopes, idle timeout) stored once per distinct combination and referred to by
//! number. About 65 bytes a token, and a handful of allocations however many tokens there are.

use crate::config::{TokenRecord, TokenStatus};
use crate::policy::domain::{DomainPattern, DomainSet};
use crate::policy::scope::ScopeSet;
use crate::ratelimit::{KeyHasher, RateSlot, RateSpec};
use hashbrown::HashTable;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// "No limit" for a 32-bit time or duration field.
const NONE: u32 = u32::MAX;

/// Unix seconds or a duration in seconds as 32 bits. Anything past February 2106 becomes the
/// last representable second: an expiry can only move earlier, never disappear.
fn secs(t: u64) -> u32 {
    t.min(u64::from(NONE - 1)) as u32
}

/// One token: its id in the arena, its state, its expiry and its grants by number (16 bytes).
#[derive(Debug)]
pub(super) struct Token {
    id_start: u32,
    id_len: u8,
    status: TokenStatus,
    /// Index into `TokenIndex::grants`.
    grants: u32,
    /// Unix seconds; `NONE` never expires.
    expires_at: u32,
}

/// What a token may do, shared by every token granted the same: a file of many tokens has
/// few distinct combinations.
#[derive(Debug)]
pub(super) struct Grants {
    tenant: Arc<str>,
    domains: DomainSet,
    rate: Option<RateSpec>,
    scopes: ScopeSet,
    /// Seconds of disuse after which the token stops working; `NONE` never.
    idle_timeout: u32,
}

/// Identifies a [`Grants`] while building: the shared values by identity, the rest by value.
type GrantsKey = (usize, usize, Option<(usize, u32, u32)>, ScopeSet, u32);

/// Every token of a policy. A rotated token has two live secrets, both found here.
pub struct TokenIndex {
    /// Secret numbers, hashed by the digest's first eight bytes (a digest is uniformly
    /// random, and nobody can add entries, so no keyed hash is needed).
    by_digest: HashTable<u32>,
    /// By secret number: token `i`'s current secret is secret `i`; rotated-out secrets follow.
    digests: Vec<[u8; 32]>,
    /// For secret `tokens.len() + k`: its token and the end of its overlap (unix seconds).
    previous: Vec<(u32, u32)>,
    tokens: Vec<Token>,
    /// Every token id, end to end.
    ids: String,
    pub(super) grants: Vec<Grants>,
    /// Unix seconds of each token's last accepted use (or of issue/load when never used).
    last_used: Box<[AtomicU32]>,
    /// Set when a last use moved, so the usage store writes only what changed.
    used: AtomicBool,
    keys: KeyHasher,
}

impl std::fmt::Debug for TokenIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIndex")
            .field("tokens", &self.tokens.len())
            .field("secrets", &self.digests.len())
            .finish_non_exhaustive()
    }
}

impl Default for TokenIndex {
    fn default() -> Self {
        TokenIndex::builder(KeyHasher::default(), 0).finish()
    }
}

/// Parses a record's hex digest.
fn digest_of(hex_sha256: &str) -> Option<[u8; 32]> {
    hex::decode(hex_sha256).ok()?.try_into().ok()
}

fn bucket(digest: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// Builds a [`TokenIndex`] one record at a time.
pub struct Builder {
    index: TokenIndex,
    last_used: Vec<AtomicU32>,
    /// Rotated-out secrets' digests, numbered after every current secret at the end.
    previous_digests: Vec<[u8; 32]>,
    /// Positions in `grants`.
    grants_at: HashMap<GrantsKey, u32>,
}

impl Builder {
    /// Adds the token of a validated record, last used at `last_used` (unix seconds), with
    /// its tenant, its resolved domains and its quota. Returns `None`, adding nothing, when a
    /// digest is not 64 hex digits or the id is longer than 255 bytes.
    pub fn push(
        &mut self,
        rec: &TokenRecord,
        tenant: &Arc<str>,
        domains: &DomainSet,
        rate: Option<&RateSpec>,
        last_used: u64,
    ) -> Option<()> {
        let digest = digest_of(&rec.sha256)?;
        let previous = match &rec.previous {
            Some(p) => Some((digest_of(&p.sha256)?, secs(p.expires_at.unix()))),
            None => None,
        };
        let id_len = u8::try_from(rec.id.len()).ok()?;
        let ix = &mut self.index;
        let at = u32::try_from(ix.tokens.len()).ok()?;
        let id_start = u32::try_from(ix.ids.len()).ok()?;
        let scopes: ScopeSet = rec.scopes.iter().copied().collect();
        let idle_timeout = rec.idle_timeout.map_or(NONE, |d| secs(d.0.as_secs()));
        let key: GrantsKey = (
            Arc::as_ptr(tenant) as *const () as usize,
            domains.identity(),
            rate.map(|r| {
                let limiter = Arc::as_ptr(&r.limiter) as *const () as usize;
                (limiter, r.rate.per_second, r.rate.burst)
            }),
            scopes,
            idle_timeout,
        );
        let grants = *self.grants_at.entry(key).or_insert_with(|| {
            ix.grants.push(Grants {
                tenant: tenant.clone(),
                domains: domains.clone(),
                rate: rate.cloned(),
                scopes,
                idle_timeout,
            });
            (ix.grants.len() - 1) as u32
        });
        ix.ids.push_str(&rec.id);
        ix.tokens.push(Token {
            id_start,
            id_len,
            status: rec.status,
            grants,
            expires_at: rec.expires_at.map_or(NONE, |t| secs(t.unix())),
        });
        ix.digests.push(digest);
        self.last_used.push(AtomicU32::new(secs(last_used)));
        if let Some((d, until)) = previous {
            ix.previous.push((at, until));
            self.previous_digests.push(d);
        }
        Some(())
    }

    /// The finished index. Where two secrets share a digest, the first current secret with it
    /// wins, else the first rotated-out one (the configuration refuses such files; this only
    /// fixes the choice).
    pub fn finish(self) -> TokenIndex {
        let mut ix = self.index;
        ix.digests.extend(self.previous_digests);
        ix.digests.shrink_to_fit();
        ix.tokens.shrink_to_fit();
        ix.previous.shrink_to_fit();
        ix.ids.shrink_to_fit();
        let digests = &ix.digests;
        let mut table = HashTable::with_capacity(digests.len());
        for (n, d) in digests.iter().enumerate() {
            let h = bucket(d);
            if table
                .find(h, |&s: &u32| digests[s as usize] == *d)
                .is_none()
            {
                table.insert_unique(h, n as u32, |&s: &u32| bucket(&digests[s as usize]));
            }
        }
        ix.by_digest = table;
        ix.last_used = self.last_used.into_boxed_slice();
        ix
    }
}

impl TokenIndex {
    /// An empty builder; `capacity` tokens are reserved up front. `keys` turns token ids into
    /// rate-limiter keys (the runtime's, so budgets survive reloads).
    pub fn builder(keys: KeyHasher, capacity: usize) -> Builder {
        Builder {
            index: TokenIndex {
                by_digest: HashTable::new(),
                digests: Vec::with_capacity(capacity),
                previous: Vec::new(),
                tokens: Vec::with_capacity(capacity),
                ids: String::new(),
                grants: Vec::new(),
                last_used: Box::new([]),
                used: AtomicBool::new(false),
                keys,
            },
            last_used: Vec::with_capacity(capacity),
            previous_digests: Vec::new(),
            grants_at: HashMap::new(),
        }
    }

    /// An index of `records`, each with its own domains or else `tenant_domains`, no rate
    /// limit, and never used before `now` (tests, benchmarks). Records with a malformed
    /// digest are left out.
    pub fn from_records<'r>(
        records: impl IntoIterator<Item = &'r TokenRecord>,
        tenant_domains: &DomainSet,
        now: u64,
    ) -> TokenIndex {
        let mut b = TokenIndex::builder(KeyHasher::default(), 0);
        let mut tenants: HashMap<&str, Arc<str>> = HashMap::new();
        for rec in records {
            let tenant = tenants
                .entry(rec.tenant.as_str())
                .or_insert_with(|| rec.tenant.as_str().into())
                .clone();
            let domains = match &rec.domains {
                Some(ds) => parse_domains(ds),
                None => tenant_domains.clone(),
            };
            let created = rec.created_at.map(|t| t.unix()).unwrap_or(now);
            let _ = b.push(rec, &tenant, &domains, None, created);
        }
        b.finish()
    }

    /// Number of tokens (not secrets).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Every token, in the order it was added.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        (0..self.tokens.len() as u32).map(move |at| Entry { index: self, at })
    }

    /// Validates a presented token: format and checksum first (no lookup for garbage), then one
    /// hash-table probe with a constant-time comparison of the digest, then status and expiry.
    /// On success the use is recorded (sliding idle expiry).
    pub fn validate(self: &Arc<Self>, presented: &str, now: u64) -> Result<TokenRef, AuthFailure> {
        if presented.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if !super::looks_like_token(presented) {
            return Err(AuthFailure::Malformed);
        }
        let digest = super::hash(presented);
        let secret = *self
            .by_digest
            .find(bucket(&digest), |&s| {
                bool::from(self.digests[s as usize].ct_eq(&digest))
            })
            .ok_or(AuthFailure::Unknown)?;
        let at = match (secret as usize).checked_sub(self.tokens.len()) {
            None => secret,
            Some(k) => {
                let (at, until) = self.previous[k];
                if secs(now) >= until {
                    return Err(AuthFailure::Rotated);
                }
                at
            }
        };
        self.check(at, now)?;
        Ok(TokenRef {
            index: self.clone(),
            at,
        })
    }

    /// Checks status, expiry and idle expiry of token `at` at `now`, and on success records
    /// the use: one relaxed store per token and second at most, no lock.
    fn check(&self, at: u32, now: u64) -> Result<(), AuthFailure> {
        let t = &self.tokens[at as usize];
        match t.status {
            TokenStatus::Active => {}
            TokenStatus::Suspended => return Err(AuthFailure::Suspended),
            TokenStatus::Revoked => return Err(AuthFailure::Revoked),
        }
        let now = secs(now);
        if t.expires_at != NONE && now >= t.expires_at {
            return Err(AuthFailure::Expired);
        }
        let last_used = &self.last_used[at as usize];
        let last = last_used.load(Ordering::Relaxed);
        let idle_timeout = self.grants[t.grants as usize].idle_timeout;
        if idle_timeout != NONE && now.saturating_sub(last) > idle_timeout {
            return Err(AuthFailure::IdleExpired);
        }
        if last < now {
            // fetch_max: two requests in different seconds never move it backwards. The
            // release store pairs with `take_used`: a flush that clears the mark sees this time.
            last_used.fetch_max(now, Ordering::Relaxed);
            self.used.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Whether a use moved any last-use time since the last call (which clears the mark).
    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::AcqRel)
    }

    fn id(&self, at: u32) -> &str {
        let t = &self.tokens[at as usize];
        let start = t.id_start as usize;
        self.ids.get(start..start + t.id_len as usize).unwrap_or("")
    }

    fn grants(&self, at: u32) -> &Grants {
        &self.grants[self.tokens[at as usize].grants as usize]
    }

    fn rate(&self, at: u32) -> Option<RateSlot> {
        let spec = self.grants(at).rate.as_ref()?;
        Some(spec.slot(self.key(at)))
    }

    fn key(&self, at: u32) -> u64 {
        self.keys.key("token", self.id(at))
    }

    /// Raises token `at`'s last use to `unix` if that is later (a use recorded elsewhere).
    pub(crate) fn raise_last_used(&self, at: u32, unix: u64) {
        self.last_used[at as usize].fetch_max(secs(unix), Ordering::Relaxed);
    }
}

/// A token record's own `domains` list as a set (invalid patterns were refused at load).
pub fn parse_domains(ds: &[String]) -> DomainSet {
    DomainSet::new(
        ds.iter()
            .filter_map(|d| DomainPattern::parse(d).ok())
            .collect(),
    )
}

/// A validated token: its position in the index of the policy snapshot that validated it. A
/// request carries one; cloning it is one reference count, and nothing is copied per request.
#[derive(Clone)]
pub struct TokenRef {
    index: Arc<TokenIndex>,
    at: u32,
}

impl TokenRef {
    pub fn id(&self) -> &str {
        self.index.id(self.at)
    }

    pub fn tenant(&self) -> &Arc<str> {
        &self.index.grants(self.at).tenant
    }

    pub fn scopes(&self) -> ScopeSet {
        self.index.grants(self.at).scopes
    }

    pub fn domains(&self) -> &DomainSet {
        &self.index.grants(self.at).domains
    }

    /// The token's key in the rate limiters and the concurrency bound (a keyed hash of its id).
    pub fn key(&self) -> u64 {
        self.index.key(self.at)
    }

    /// The token's rate-limit slot, if it has a quota.
    pub fn rate(&self) -> Option<RateSlot> {
        self.index.rate(self.at)
    }

    /// Unix seconds of the last accepted use.
    pub fn last_used(&self) -> u64 {
        self.index.last_used[self.at as usize].load(Ordering::Relaxed) as u64
    }
}

/// Shows the id only: never a digest.
impl std::fmt::Debug for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TokenRef").field(&self.id()).finish()
    }
}

/// Serialises as the token's id (audit records).
impl serde::Serialize for TokenRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// One token of an index, borrowed (reload diffs, the usage store, tests).
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    index: &'a TokenIndex,
    at: u32,
}

impl<'a> Entry<'a> {
    /// Position in the index.
    pub fn at(&self) -> u32 {
        self.at
    }

    pub fn id(&self) -> &'a str {
        self.index.id(self.at)
    }

    pub fn tenant(&self) -> &'a Arc<str> {
        &self.index.grants(self.at).tenant
    }

    pub fn status(&self) -> TokenStatus {
        self.token().status
    }

    pub fn scopes(&self) -> ScopeSet {
        self.index.grants(self.at).scopes
    }

    pub fn domains(&self) -> &'a DomainSet {
        &self.index.grants(self.at).domains
    }

    /// Unix seconds; `None` never expires.
    pub fn expires_at(&self) -> Option<u64> {
        let t = self.token().expires_at;
        (t != NONE).then_some(t as u64)
    }

    /// Seconds; `None` has no idle expiry.
    pub fn idle_timeout(&self) -> Option<u64> {
        let t = self.index.grants(self.at).idle_timeout;
        (t != NONE).then_some(t as u64)
    }

    /// Unix seconds of the last accepted use.
    pub fn last_used(&self) -> u64 {
        self.index.last_used[self.at as usize].load(Ordering::Relaxed) as u64
    }

    /// The token's rate-limit slot, if it has a quota.
    pub fn rate(&self) -> Option<RateSlot> {
        self.index.rate(self.at)
    }

    /// Whether this token's current secret is the one whose hex SHA-256 is `sha256`.
    pub fn has_digest(&self, sha256: &str) -> bool {
        digest_of(sha256).is_some_and(|d| d == self.index.digests[self.at as usize])
    }

    /// Checks status, expiry and idle expiry at `now`, recording the use on success.
    pub fn check(&self, now: u64) -> Result<(), AuthFailure> {
        self.index.check(self.at, now)
    }

    fn token(&self) -> &'a Token {
        &self.index.tokens[self.at as usize]
    }
}
