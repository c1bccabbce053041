//! Rate limits and overload protection: per-token and per-tenant GCRA limits (governor keyed
//! limiters, one per distinct quota, keyed by a keyed hash of the token or tenant id), brute-force throttling of
//! failed authentication per client address (IPv6 per /64), concurrency bounds per token and in
//! total, and per-token blast-radius caps on destructive operations.
//!
//! The state here outlives policy reloads: a reload that keeps a token's quota keeps its budget.

use crate::config::{AuthFailuresSection, BlastRadiusSection, Rate, RateLimitsSection};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use moka::sync::Cache;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A keyed GCRA limiter that reports the remaining burst capacity, keyed by [`KeyHasher::key`].
pub type Keyed<C = DefaultClock> =
    RateLimiter<u64, DashMapStateStore<u64>, C, StateInformationMiddleware>;

/// Turns a subject's id into the 64-bit key its limiter state lives under, with a key chosen
/// at random once per process: a token needs no key string of its own, the key is the same
/// for an id across reloads, and nobody outside the process can make two ids collide.
#[derive(Clone, Debug, Default)]
pub struct KeyHasher(std::hash::RandomState);

impl KeyHasher {
    /// The key of subject `id` of kind `kind` (`token`, `tenant`, a blast-radius kind).
    pub fn key(&self, kind: &str, id: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.0.build_hasher();
        h.write(kind.as_bytes());
        h.write_u8(0xff); // never part of UTF-8 text: `kind` and `id` cannot run together
        h.write(id.as_bytes());
        h.finish()
    }
}

/// The quota a rate stands for: `burst` cells, one replenished every `1/per_second` s.
pub fn quota(rate: Rate) -> Option<Quota> {
    let per = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst)?;
    Some(Quota::per_second(per).allow_burst(burst))
}

/// A quota of `cap` per `window` (used for blast-radius caps).
pub fn windowed(cap: u32, window: Duration) -> Option<Quota> {
    let cap = NonZeroU32::new(cap)?;
    Quota::with_period(window / cap.get()).map(|q| q.allow_burst(cap))
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow { remaining: u32 },
    Deny { retry_after: Duration },
}

/// Charges `cost` cells to `key`. A cost above the burst can never pass: it is denied with the
/// time a full bucket takes to refill.
pub fn check<C: Clock>(limiter: &Keyed<C>, key: u64, cost: u32, rate: Rate) -> Decision {
    let Some(n) = NonZeroU32::new(cost) else {
        return Decision::Allow {
            remaining: rate.burst,
        };
    };
    match limiter.check_key_n(&key, n) {
        Ok(Ok(snapshot)) => Decision::Allow {
            remaining: snapshot.remaining_burst_capacity(),
        },
        Ok(Err(not_until)) => Decision::Deny {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
        },
        Err(_) => Decision::Deny {
            retry_after: Duration::from_secs_f64(rate.burst as f64 / rate.per_second.max(1) as f64),
        },
    }
}

/// A shared limiter's identity: subject kind, replenish interval (ns), burst.
type LimiterId = (&'static str, u64, u32);

/// A quota as configured for a kind of subject: the limiter it shares with every subject of
/// that kind and quota. Tokens with the same quota share one spec.
#[derive(Clone)]
pub struct RateSpec {
    pub limiter: Arc<Keyed>,
    pub rate: Rate,
    /// `token` or `tenant`: the RateLimit header's policy name.
    pub name: &'static str,
}

impl RateSpec {
    /// The slot of the subject whose key is `key`.
    pub fn slot(&self, key: u64) -> RateSlot {
        RateSlot {
            limiter: self.limiter.clone(),
            key,
            rate: self.rate,
            name: self.name,
        }
    }

    /// Whether two specs are one limiter and rate (so a token table stores it once).
    pub fn same(&self, other: &RateSpec) -> bool {
        Arc::ptr_eq(&self.limiter, &other.limiter) && self.rate == other.rate
    }
}

impl std::fmt::Debug for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateSpec")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .finish()
    }
}

/// A request counted in flight until this is dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU32>);

impl Permit {
    /// Counts one more in `counter` unless it already holds `max`.
    fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<Permit> {
        counter
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(counter.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// One limited subject (a token or a tenant): its limiter, key and rate.
#[derive(Clone)]
pub struct RateSlot {
    pub limiter: Arc<Keyed>,
    pub key: u64,
    pub rate: Rate,
    /// `token` or `tenant`: the RateLimit header's policy name.
    pub name: &'static str,
}

impl std::fmt::Debug for RateSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateSlot")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .finish()
    }
}

impl RateSlot {
    pub fn check(&self, cost: u32) -> Decision {
        check(&self.limiter, self.key, cost, self.rate)
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): quota and window.
    pub fn policy_header(&self) -> String {
        let mut s = String::with_capacity(32);
        s.push('"');
        s.push_str(self.name);
        s.push_str("\";q=");
        s.push_str(itoa::Buffer::new().format(self.rate.burst));
        s.push_str(";w=");
        s.push_str(itoa::Buffer::new().format(window_secs(self.rate)));
        s
    }

    /// `RateLimit`: remaining quota and seconds until it is whole again.
    pub fn status_header(&self, remaining: u32, reset: u64) -> String {
        let mut s = String::with_capacity(32);
        s.push('"');
        s.push_str(self.name);
        s.push_str("\";r=");
        s.push_str(itoa::Buffer::new().format(remaining));
        s.push_str(";t=");
        s.push_str(itoa::Buffer::new().format(reset));
        s
    }

    /// Seconds until `remaining` is back to the full burst.
    pub fn reset_secs(&self, remaining: u32) -> u64 {
        let missing = self.rate.burst.saturating_sub(remaining) as u64;
        missing.div_ceil(self.rate.per_second.max(1) as u64)
    }
}

fn window_secs(rate: Rate) -> u64 {
    (rate.burst as u64)
        .div_ceil(rate.per_second.max(1) as u64)
        .max(1)
}

/// Kinds of destructive operations capped per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blast {
    Delete,
    Deactivate,
    GroupWipe,
}

impl Blast {
    pub fn reason(self) -> &'static str {
        match self {
            Blast::Delete => "blast_radius_deletes",
            Blast::Deactivate => "blast_radius_deactivations",
            Blast::GroupWipe => "blast_radius_group_wipes",
        }
    }
}

/// The shared limiter state, created once and kept across reloads.
pub struct Limits {
    /// By subject kind (`token`, `tenant`) and quota, so a key is a bare 64-bit hash of the
    /// id (no per-token key string).
    limiters: Mutex<HashMap<LimiterId, Arc<Keyed>>>,
    /// Subject ids to limiter keys; the same for the life of the process.
    pub keys: KeyHasher,
    auth_failures: Mutex<(AuthFailuresSection, Cache<IpAddr, Arc<AtomicU32>>)>,
    /// When an address last failed at or past the limit, in milliseconds after `started` (0:
    /// never since the counters were last reset). A counter expires a window after its first
    /// failure, so when this is older than a window nobody can be blocked: every request then
    /// answers without the lock and the cache, however many requests fail to authenticate.
    last_block_ms: AtomicU64,
    /// The window of the counters in `auth_failures`, in milliseconds.
    failure_window_ms: AtomicU64,
    started: std::time::Instant,
    /// Requests in flight, by token key. Read-locked on the request path; written once per
    /// token.
    concurrency: RwLock<HashMap<u64, Arc<AtomicU32>>>,
    /// Requests in flight through the whole gateway, and their bound.
    in_flight: Arc<AtomicU32>,
    max_in_flight: AtomicU32,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Default for Limits {
    fn default() -> Self {
        let d = RateLimitsSection::default();
        Limits {
            limiters: Mutex::new(HashMap::new()),
            keys: KeyHasher::default(),
            auth_failures: Mutex::new((d.auth_failures, failure_cache(d.auth_failures))),
            last_block_ms: AtomicU64::new(0),
            failure_window_ms: AtomicU64::new(window_ms(d.auth_failures)),
            started: std::time::Instant::now(),
            concurrency: RwLock::new(HashMap::new()),
            in_flight: Arc::default(),
            max_in_flight: AtomicU32::new(d.max_in_flight),
            checks: AtomicU64::new(0),
        }
    }
}

/// The window in whole milliseconds, rounded up: the lock-free answer must never end a block
/// early.
fn window_ms(cfg: AuthFailuresSection) -> u64 {
    u64::try_from(cfg.window.0.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn failure_cache(cfg: AuthFailuresSection) -> Cache<IpAddr, Arc<AtomicU32>> {
    Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(cfg.window.0)
        .build()
}

/// The key brute-force throttling counts under: the address, IPv6 by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Limits {
    /// The limiter for a quota (shared by every subject with that quota).
    fn limiter(&self, name: &'static str, q: Quota) -> Option<Arc<Keyed>> {
        let id = (
            name,
            q.replenish_interval().as_nanos() as u64,
            q.burst_size().get(),
        );
        let mut map = self.limiters.lock().ok()?;
        Some(
            map.entry(id)
                .or_insert_with(|| {
                    Arc::new(
                        RateLimiter::dashmap(q).with_middleware::<StateInformationMiddleware>(),
                    )
                })
                .clone(),
        )
    }

    /// The spec of quota `rate` for subjects of kind `name` (`token`, `tenant`).
    pub fn spec(&self, name: &'static str, rate: Option<Rate>) -> Option<RateSpec> {
        let rate = rate?;
        Some(RateSpec {
            limiter: self.limiter(name, quota(rate)?)?,
            rate,
            name,
        })
    }

    /// A rate slot for the subject `id` of kind `name` (`token`, `tenant`).
    pub fn slot(&self, name: &'static str, id: &str, rate: Option<Rate>) -> Option<RateSlot> {
        Some(self.spec(name, rate)?.slot(self.keys.key(name, id)))
    }

    /// Applies the reloadable settings (auth-failure window, total in-flight bound).
    pub fn configure(&self, cfg: &RateLimitsSection) {
        if let Ok(mut af) = self.auth_failures.lock() {
            if af.0.max != cfg.auth_failures.max || af.0.window != cfg.auth_failures.window {
                *af = (cfg.auth_failures, failure_cache(cfg.auth_failures));
                self.failure_window_ms
                    .store(window_ms(cfg.auth_failures), Ordering::Relaxed);
                self.last_block_ms.store(0, Ordering::Relaxed);
            }
        }
        // Requests already in flight keep counting against the new bound.
        self.max_in_flight
            .store(cfg.max_in_flight, Ordering::Relaxed);
    }

    /// Whether `ip` has used up its failed authentications.
    pub fn auth_blocked(&self, ip: IpAddr) -> bool {
        let last = self.last_block_ms.load(Ordering::Relaxed);
        let window = self.failure_window_ms.load(Ordering::Relaxed);
        if last == 0 || self.now_ms() > last.saturating_add(window) {
            return false;
        }
        let Ok(af) = self.auth_failures.lock() else {
            return false;
        };
        af.1.get(&client_key(ip))
            .is_some_and(|c| c.load(Ordering::Relaxed) >= af.0.max)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a failed authentication from `ip`; true when this one crossed the limit.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        let Ok(af) = self.auth_failures.lock() else {
            return false;
        };
        let c =
            af.1.get_with(client_key(ip), || Arc::new(AtomicU32::new(0)));
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= af.0.max {
            // Every failure at or past the limit, not only the crossing: its address stays
            // blocked until its counter expires, at most a window after this.
            self.last_block_ms
                .store(self.now_ms().max(1), Ordering::Relaxed);
        }
        n == af.0.max
    }

    /// A slot in the total in-flight bound and one in the token's, or why not. Counters, not
    /// semaphores: nothing ever waits for a slot, and a semaphore takes a lock to give one back.
    pub fn enter(&self, token_key: u64, per_token: u32) -> Result<(Permit, Permit), &'static str> {
        let total = Permit::take(&self.in_flight, self.max_in_flight.load(Ordering::Relaxed))
            .ok_or("overloaded")?;
        let existing = self
            .concurrency
            .read()
            .map_err(|_| "overloaded")?
            .get(&token_key)
            .cloned();
        let counter = match existing {
            Some(c) => c,
            None => self
                .concurrency
                .write()
                .map_err(|_| "overloaded")?
                .entry(token_key)
                .or_default()
                .clone(),
        };
        let mine = Permit::take(&counter, per_token).ok_or("token_concurrency")?;
        self.maintain();
        Ok((total, mine))
    }

    /// Expires idle limiter keys now and then, so memory stays bounded however many distinct
    /// keys pass through.
    fn maintain(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 65_536 != 65_535 {
            return;
        }
        if let Ok(map) = self.limiters.lock() {
            for l in map.values() {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    /// The blast-radius slot of `kind` for a token.
    pub fn blast(&self, kind: Blast, token_id: &str, cfg: &BlastRadiusSection) -> Option<RateSlot> {
        let cap = match kind {
            Blast::Delete => cfg.deletes,
            Blast::Deactivate => cfg.deactivations,
            Blast::GroupWipe => cfg.group_wipes,
        };
        let q = windowed(cap, cfg.window.0)?;
        Some(RateSlot {
            limiter: self.limiter(kind.reason(), q)?,
            key: self.keys.key(kind.reason(), token_id),
            rate: Rate {
                per_second: 1,
                burst: cap,
            },
            name: "blast",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(rate: Rate, clock: &FakeRelativeClock) -> Keyed<FakeRelativeClock> {
        RateLimiter::dashmap_with_clock(quota(rate).unwrap(), clock.clone())
            .with_middleware::<StateInformationMiddleware>()
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 10,
            burst: 5,
        };
        let l = limiter(rate, &clock);
        let k = 1;
        let allowed = (0..20)
            .filter(|_| matches!(check(&l, k, 1, rate), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
        match check(&l, k, 1, rate) {
            Decision::Deny { retry_after } => {
                assert!(retry_after <= Duration::from_millis(100) && retry_after > Duration::ZERO)
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        clock.advance(Duration::from_millis(100));
        assert_eq!(check(&l, k, 1, rate), Decision::Allow { remaining: 0 });
        clock.advance(Duration::from_secs(1));
        assert_eq!(check(&l, k, 1, rate), Decision::Allow { remaining: 4 });
    }

    #[test]
    fn keys_do_not_share_budgets() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 1,
            burst: 2,
        };
        let l = limiter(rate, &clock);
        let (a, b) = (1, 2);
        for _ in 0..2 {
            assert!(matches!(check(&l, a, 1, rate), Decision::Allow { .. }));
        }
        assert!(matches!(check(&l, a, 1, rate), Decision::Deny { .. }));
        assert_eq!(check(&l, b, 1, rate), Decision::Allow { remaining: 1 });
    }

    #[test]
    fn a_bulk_costs_one_cell_per_operation_and_never_more_than_the_burst() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 1,
            burst: 10,
        };
        let l = limiter(rate, &clock);
        let k = 1;
        assert_eq!(check(&l, k, 7, rate), Decision::Allow { remaining: 3 });
        assert!(matches!(check(&l, k, 4, rate), Decision::Deny { .. }));
        assert!(matches!(check(&l, k, 11, rate), Decision::Deny { .. }));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn failed_authentications_block_an_address_after_the_limit() {
        let limits = three_failures_a_minute();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(!limits.auth_failed(ip));
        assert!(!limits.auth_failed(ip));
        assert!(!limits.auth_blocked(ip));
        assert!(limits.auth_failed(ip));
        assert!(limits.auth_blocked(ip));
        assert!(!limits.auth_blocked(other));
    }

    /// Limits that block an address after three failed authentications within a minute.
    fn three_failures_a_minute() -> Limits {
        let limits = Limits::default();
        limits.configure(&RateLimitsSection {
            auth_failures: AuthFailuresSection {
                max: 3,
                window: crate::config::HumanDuration(Duration::from_secs(60)),
            },
            ..RateLimitsSection::default()
        });
        limits
    }

    #[test]
    fn failures_below_the_limit_keep_the_lock_free_answer() {
        let limits = three_failures_a_minute();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!limits.auth_failed(ip));
        assert!(!limits.auth_failed(ip));
        assert_eq!(limits.last_block_ms.load(Ordering::Relaxed), 0);
        assert!(limits.auth_failed(ip));
        assert_ne!(limits.last_block_ms.load(Ordering::Relaxed), 0);
        // Failures past the limit keep it set: the block is seen however it was reached.
        assert!(!limits.auth_failed(ip));
        assert!(limits.auth_blocked(ip));
    }

    #[test]
    fn concurrency_is_bounded_per_token() {
        let limits = Limits::default();
        let t = limits.keys.key("token", "a");
        let p1 = limits.enter(t, 2).unwrap();
        let _p2 = limits.enter(t, 2).unwrap();
        assert_eq!(limits.enter(t, 2).err(), Some("token_concurrency"));
        assert!(limits.enter(limits.keys.key("token", "b"), 2).is_ok());
        drop(p1);
        assert!(limits.enter(t, 2).is_ok());
    }

    #[test]
    fn the_gateway_wide_bound_counts_every_token_and_follows_reloads() {
        let limits = Limits::default();
        let key = |id: &str| limits.keys.key("token", id);
        let mut cfg = RateLimitsSection {
            max_in_flight: 2,
            ..RateLimitsSection::default()
        };
        limits.configure(&cfg);
        let a = limits.enter(key("a"), 1).unwrap();
        // A refusal for the token's own bound gives its gateway-wide slot back.
        assert_eq!(limits.enter(key("a"), 1).err(), Some("token_concurrency"));
        let _b = limits.enter(key("b"), 1).unwrap();
        assert_eq!(limits.enter(key("c"), 1).err(), Some("overloaded"));
        drop(a);
        let _c = limits.enter(key("c"), 1).unwrap();
        // A lower bound applies at once, counting the requests already in flight.
        cfg.max_in_flight = 1;
        limits.configure(&cfg);
        assert_eq!(limits.enter(key("d"), 1).err(), Some("overloaded"));
    }

    #[test]
    fn keys_are_stable_and_kinds_and_ids_never_run_together() {
        let keys = KeyHasher::default();
        assert_eq!(keys.key("token", "a"), keys.key("token", "a"));
        assert_ne!(keys.key("token", "a"), keys.key("tenant", "a"));
        assert_ne!(keys.key("token", "ab"), keys.key("tokena", "b"));
        assert_ne!(
            keys.key("token", "a"),
            KeyHasher::default().key("token", "a")
        );
    }
}
