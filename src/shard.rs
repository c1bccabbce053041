//! Shards: the gateway serves on one single-threaded runtime per core, each accepting from the
//! same listening socket, like nginx's workers. A connection, its requests and the pooled
//! backend connections they use stay on one thread: no task migrates, no wake-up crosses
//! cores. This module says how many shards there are and which one the current thread is, so
//! per-shard state (the backend connection pools) can be picked without a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many shards serve; 1 until [`set_count`] (library use, tests).
static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The number of shards to run: one per CPU the process may use (cgroup quotas included).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the shard count; policies compiled afterwards hold one backend pool per shard.
pub fn set_count(n: usize) {
    COUNT.store(n.max(1), Ordering::Relaxed);
}

pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the current thread as shard `i`.
pub fn enter(i: usize) {
    CURRENT.with(|c| c.set(i));
}

/// The shard the current thread serves (0 on threads that are not shards).
#[inline]
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}
