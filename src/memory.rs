//! How the process gives memory back to the operating system (mimalloc, the binary's allocator).
//!
//! mimalloc purges a freed page (returns it to the system) once it has stayed free for its
//! purge delay, but only when some thread next goes into the allocator's slow path: a gateway
//! quiet after start-up, a reload or a burst of traffic would go on holding its peak. Purging
//! each page the moment it empties avoided that, but cost a `madvise`, a TLB shootdown and
//! fresh page faults over and over under load: about a tenth of the gateway's CPU per request.
//! So freed pages are purged after [`PURGE_DELAY_MS`] ([`set_purge_delay`]), and every runtime
//! thread of the serving process force-collects once a second ([`collect_expired`]), so that a
//! quiet gateway gives back what it freed within about a second. After a token file is parsed,
//! [`Bulk`] returns everything at once.
//!
//! The delay, measured (`benches/scale.sh`, and page faults per GET under `benches/load.sh`'s
//! load): 10 ms costs 0.21 page faults and 0.02 `madvise` calls per request; 100 ms cuts that
//! to 0.05 faults and about 1.7 µs of CPU per GET, but then 3 of 5 scale runs kept 3.6 MiB
//! more resident at rest (31 MiB with 100,000 tokens and 1,000 idle connections, over the
//! 30 MB target), and a second did so every time. 10 ms gave 27.0–27.4 MiB in every run, so it
//! stays until that is understood.

//! Harmless when mimalloc is not the global allocator (tests, benchmarks): the calls then only
//! touch mimalloc's own empty heaps.

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3 alike),
/// in milliseconds.
const PURGE_DELAY: mi_option_t = 15;

/// How long a freed page stays with the process before it goes back: long enough that pages
/// freed and reused within a request or two are not purged and faulted in again, short enough
/// that memory at rest reliably gets back to its floor (see the module documentation).
pub const PURGE_DELAY_MS: i64 = 10;

/// How often the serving process purges what has expired, whether or not requests come.
pub const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets the purge delay to [`PURGE_DELAY_MS`]. `MIMALLOC_PURGE_DELAY` in the environment, when
/// set, decides instead.
pub fn set_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads options atomically at any time.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// Hands the calling thread's empty pages back and purges every freed page now, expired or
/// not (a forced collection: the gentle one left a gateway that had just gone quiet about
/// 1.5 MiB larger in `benches/scale.sh`). Once a second per thread this bounds how long freed
/// memory stays with a quiet gateway. Cheap when there is nothing to do.
pub fn collect_expired() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

/// Held while a token file is read, compiled and its parsed form dropped; on drop, everything
/// freed goes back to the system at once instead of over the next second.
#[must_use = "the memory is returned when the guard drops"]
pub struct Bulk(());

impl Bulk {
    pub fn begin() -> Bulk {
        Bulk(())
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        release_freed();
    }
}

/// Returns every free page to the system now. Costs a few milliseconds: called after bulk
/// frees only.
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

/// The purge delay in force, in milliseconds (for tests and diagnostics).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads an integer option.
    unsafe { mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_ours_unless_the_operator_set_one() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's setting wins; nothing of ours to check
        }
        set_purge_delay();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        drop(Bulk::begin());
        collect_expired();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
