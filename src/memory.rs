//! How the process gives memory back to the operating system (mimalloc, the binary's allocator).
//!
//! Loading a large token file allocates several times what the compiled policy keeps and frees
//! it right after. mimalloc returns a freed page 10 ms after it empties, but only when the
//! thread that freed it next calls the allocator: a gateway quiet after start-up, a reload or a
//! burst of traffic would go on holding its peak. So the binary purges freed pages at once
//! ([`purge_at_once`]), except while a token file is parsed ([`Bulk`]), where purging each
//! page as it empties would only make the parse slower.
//!
//! Harmless when mimalloc is not the global allocator (tests, benchmarks): the calls then only
//! touch mimalloc's own empty heaps.

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, v2 and v3 alike),
/// in milliseconds.
const PURGE_DELAY: mi_option_t = 15;

/// Whether [`purge_at_once`] took effect (no `MIMALLOC_PURGE_DELAY` of the operator's).
static AT_ONCE: AtomicBool = AtomicBool::new(false);

/// Makes freed pages go back to the system as soon as they empty. At rest with one token this
/// is 13 MiB resident against 19 MiB; under load it costs about one `madvise` per hundred
/// requests. `MIMALLOC_PURGE_DELAY` in the environment, when set, decides instead.
pub fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads options atomically at any time.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
        AT_ONCE.store(true, Ordering::Relaxed);
    }
}

/// Held while a token file is read, compiled and its parsed form dropped: purging is deferred
/// to mimalloc's default meanwhile (purging each page as it empties would only slow the parse
/// down), and on drop everything freed goes back to the system. Concurrent holders are fine:
/// the last one to finish restores purging at once.
#[must_use = "purging is deferred only while the guard lives"]
pub struct Bulk(bool);

static BULK_HOLDERS: AtomicUsize = AtomicUsize::new(0);

impl Bulk {
    pub fn begin() -> Bulk {
        let at_once = AT_ONCE.load(Ordering::Relaxed);
        if at_once && BULK_HOLDERS.fetch_add(1, Ordering::AcqRel) == 0 {
            // SAFETY: as in `purge_at_once`.
            unsafe { mi_option_set(PURGE_DELAY, 10) };
        }
        Bulk(at_once)
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // First, while purging is still deferred: with a delay of 0 mimalloc schedules nothing
        // and its collection skips the purge of what was scheduled before.
        release_freed();
        if self.0 && BULK_HOLDERS.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: as in `purge_at_once`.
            unsafe { mi_option_set(PURGE_DELAY, 0) };
        }
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
    fn purging_is_deferred_while_any_bulk_guard_lives_and_immediate_after() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's setting wins; nothing of ours to check
        }
        purge_at_once();
        assert_eq!(purge_delay_ms(), 0);
        let outer = Bulk::begin();
        assert_eq!(purge_delay_ms(), 10);
        let inner = Bulk::begin();
        drop(outer);
        assert_eq!(purge_delay_ms(), 10, "another holder still parses");
        drop(inner);
        assert_eq!(purge_delay_ms(), 0);
    }
}
