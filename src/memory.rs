//! How the process gives memory back to the operating system (mimalloc, the binary's allocator).
//!
//! mimalloc purges a freed page (returns it to the system) once it has stayed free for its
//! purge delay, but only when some thread next goes into the allocator's slow path: a gateway
//! quiet after start-up, a reload or a burst of traffic would go on holding its peak. Purging
//! each page the moment it empties avoided that, but cost a `madvise`, a TLB shootdown and
//! fresh page faults over and over under load: about a tenth of the gateway's CPU per request.
//! So freed pages are purged after [`PURGE_DELAY_MS`] ([`set_purge_delay`]), and every runtime
//! thread of the serving process force-collects once a second ([`collect_expired`]), so that a
//! quiet gateway gives back what traffic freed (3 s after a load run, RSS read the same, 12 MiB,
//! with a 10 ms, 100 ms or 1 s delay). [`Bulk`] work purges as it goes (below).
//!
//! The delay, measured (interleaved GET runs under `benches/load.sh`'s load, and
//! `benches/scale.sh`): 10 ms cost 0.21 page faults per request; 100 ms or 1 s save about
//! 1 µs of CPU per GET (three rounds of 10 ms / 100 ms / 1 s: 47.6 / 46.6 / 46.3 µs).
//! But pages freed while a long delay was pending were not all returned by the forced
//! collection afterwards: a gateway that had just parsed 100,000 tokens kept 3.7 MiB
//! (100 ms, some runs) to 6.4 MiB (1 s, every run) more at rest. So [`Bulk`] work (a token
//! file's parse, a reload, an old policy's release) runs with delay 0, which purges each page
//! as it empties, and restores the serving delay when it ends. With that, 100 ms gives
//! 15.0–15.2 MiB after start-up, 27.0–27.2 MiB with 1,000 idle connections and 28.1–28.3 MiB
//! after three reloads, lower than 10 ms did on every reading.

//! Harmless when mimalloc is not the global allocator (tests, benchmarks): the calls then only
//! touch mimalloc's own empty heaps.

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};
use std::sync::Mutex;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3 alike),
/// in milliseconds.
const PURGE_DELAY: mi_option_t = 15;

/// How long a freed page stays with the process before it goes back while serving: long enough
/// that pages freed and reused under load are not purged and faulted in again over and over.
/// [`Bulk`] work runs with 0 instead (see the module documentation).
pub const PURGE_DELAY_MS: i64 = 100;

/// How often the serving process purges what has expired, whether or not requests come.
pub const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the operator chose the delay (`MIMALLOC_PURGE_DELAY`): then it is never changed.
fn operator_delay() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

/// Sets the purge delay to [`PURGE_DELAY_MS`]. `MIMALLOC_PURGE_DELAY` in the environment, when
/// set, decides instead.
pub fn set_purge_delay() {
    if !operator_delay() {
        set_delay(PURGE_DELAY_MS);
    }
}

fn set_delay(ms: i64) {
    // SAFETY: sets an integer option; mimalloc reads options atomically at any time.
    unsafe { mi_option_set(PURGE_DELAY, ms as _) };
}

/// Hands the calling thread's empty pages back and purges every freed page now, expired or
/// not (a forced collection: the gentle one left a gateway that had just gone quiet about
/// 1.5 MiB larger in `benches/scale.sh`). Once a second per thread this bounds how long freed
/// memory stays with a quiet gateway. Cheap when there is nothing to do.
pub fn collect_expired() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

/// Held while a token file is read, compiled and its parsed form dropped: meanwhile freed pages
/// go back at once (purge delay 0), and on drop everything still free goes back and the serving
/// delay is restored. Pages freed with a long delay pending were not all returned by a later
/// forced collection (see the module documentation), and bulk work frees tens of megabytes.
#[must_use = "the memory is returned when the guard drops"]
pub struct Bulk(());

/// Bulk guards alive: the delay is lowered by the first and restored by the last. A lock, not
/// an atomic, so that a guard ending and another beginning cannot set the delay out of order
/// (these are rare events: start-up, reloads).
static BULK: Mutex<usize> = Mutex::new(0);

/// Counts a guard in (`+1`) or out (`-1`), setting the delay when the count leaves or reaches 0.
fn count_bulk(step: isize) {
    let mut n = BULK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = *n;
    *n = n.saturating_add_signed(step);
    if operator_delay() {
        return;
    }
    match (before, *n) {
        (0, 1) => set_delay(0),
        (1, 0) => set_delay(PURGE_DELAY_MS),
        _ => {}
    }
}

impl Bulk {
    pub fn begin() -> Bulk {
        count_bulk(1);
        Bulk(())
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Collected while the delay is still 0, so the pages freed now go back at once too.
        release_freed();
        count_bulk(-1);
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
    fn the_purge_delay_is_ours_and_zero_during_bulk_work_unless_the_operator_set_one() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's setting wins; nothing of ours to check
        }
        set_purge_delay();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        collect_expired();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        // Bulk work purges at once until the last guard ends (one test: the option is global).
        let outer = Bulk::begin();
        assert_eq!(purge_delay_ms(), 0);
        let inner = Bulk::begin();
        drop(inner);
        assert_eq!(purge_delay_ms(), 0, "another bulk guard is still alive");
        drop(outer);
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
