//! Shards: the gateway serves on one single-threaded runtime per core, each accepting from the
//! same listening socket, like nginx's workers. A connection, its requests and the pooled
//! backend connections they use stay on one thread: no task migrates, no wake-up crosses
//! cores. This module says how many shards there are and which one the current thread is, so
//! per-shard state (the backend connection pools) can be picked without a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

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

/// Spreads connections over the shards. Every shard accepts from the same socket and whichever
/// wakes first takes a new connection; it then goes to the shard serving the fewest, through
/// that shard's inbox. A burst of connections (an IdP opening its pool, a load test) is shared
/// out evenly instead of landing on whichever thread happened to be awake.
#[derive(Debug)]
pub struct Balancer {
    open: Box<[AtomicUsize]>,
    /// Shards still serving: a shard that stopped (shutdown, a failed start, a panic) gets no
    /// more connections, however few it counts.
    alive: Box<[AtomicBool]>,
    inboxes: Box<[tokio::sync::mpsc::UnboundedSender<Handoff>]>,
}

/// A connection accepted by one shard for another to serve.
#[derive(Debug)]
pub struct Handoff {
    pub tcp: std::net::TcpStream,
    pub remote: std::net::SocketAddr,
    /// Counts the connection against the shard serving it until the connection ends.
    pub open: Open,
}

/// One connection counted against a shard; uncounted when dropped.
#[derive(Debug)]
pub struct Open {
    balancer: Arc<Balancer>,
    shard: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.balancer.open[self.shard].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `n` shards, and each shard's inbox.
    pub fn new(
        n: usize,
    ) -> (
        Arc<Balancer>,
        Vec<tokio::sync::mpsc::UnboundedReceiver<Handoff>>,
    ) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let balancer = Balancer {
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            alive: (0..n).map(|_| AtomicBool::new(true)).collect(),
            inboxes: senders.into_boxed_slice(),
        };
        (Arc::new(balancer), receivers)
    }

    /// Where a connection shard `me` just accepted should be served, counted there: `me`
    /// unless another shard serves fewer connections.
    pub fn place(self: &Arc<Self>, me: usize) -> (usize, Open) {
        let mut target = me;
        let mut least = self.open[me].load(Ordering::Relaxed);
        for (i, n) in self.open.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n < least && self.alive[i].load(Ordering::Acquire) {
                (target, least) = (i, n);
            }
        }
        (target, self.count_on(target))
    }

    /// Counts one connection against `shard` until the returned guard drops.
    pub fn count_on(self: &Arc<Self>, shard: usize) -> Open {
        self.open[shard].fetch_add(1, Ordering::Relaxed);
        Open {
            balancer: self.clone(),
            shard,
        }
    }

    /// Sends a connection to shard `to`; gives it back if that shard has stopped.
    pub fn hand_off(&self, to: usize, h: Handoff) -> Result<(), Handoff> {
        if !self.alive[to].load(Ordering::Acquire) {
            return Err(h);
        }
        self.inboxes[to].send(h).map_err(|e| e.0)
    }

    /// Marks `shard` as no longer serving: [`place`](Self::place) skips it from now on.
    pub fn retire(&self, shard: usize) {
        self.alive[shard].store(false, Ordering::Release);
    }

    /// Connections each shard serves (for tests and diagnostics).
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_shard_serving_the_fewest() {
        let (b, _inboxes) = Balancer::new(3);
        // Shard 0 accepts everything, as the first awake thread might during a burst.
        let mut placed: Vec<(usize, Open)> = (0..6).map(|_| b.place(0)).collect();
        assert_eq!(b.open(), [2, 2, 2]);
        let mut shards: Vec<usize> = placed.iter().map(|p| p.0).collect();
        shards.sort_unstable();
        assert_eq!(shards, [0, 0, 1, 1, 2, 2]);
        // A connection that ends is no longer counted; the next one fills its place.
        let on_2 = placed.iter().position(|p| p.0 == 2).unwrap();
        drop(placed.remove(on_2));
        assert_eq!(b.open(), [2, 2, 1]);
        let (next, _open) = b.place(1);
        assert_eq!(next, 2);
        assert_eq!(b.open(), [2, 2, 2]);
    }

    #[test]
    fn a_stopped_shard_gets_no_connections() {
        let (b, mut inboxes) = Balancer::new(2);
        let _busy = b.place(0);
        b.retire(1);
        // Shard 1 serves nothing, but it has stopped: the connection stays with shard 0.
        let (to, _open) = b.place(0);
        assert_eq!(to, 0);
        assert_eq!(b.open(), [2, 0]);
        // A connection already on its way to a shard that stops comes back to the sender.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let remote = tcp.local_addr().unwrap();
        let h = Handoff {
            tcp,
            remote,
            open: b.count_on(1),
        };
        assert!(b.hand_off(1, h).is_err());
        assert_eq!(b.open(), [2, 0]);
        assert!(inboxes[1].try_recv().is_err());
    }
}
