//! A background writer thread that, while busy, wakes on a short timer instead of once per line,
//! so a request hands over its log line or audit record without a system call or a wake-up.
//!
//! The thread drains whatever is queued, writes it in one batch, then sleeps [`LINGER`]. Only
//! when a drain finds nothing does it declare itself idle and sleep until the next
//! [`Wakeup::notify`]: producers pay a wake-up once per idle-to-busy transition, not per line.
//! A line is therefore written at most [`LINGER`] after it was queued, and everything queued is
//! written before [`Flusher::close`] returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// How long a busy writer waits before its next batch: the most a line waits to be written.
pub const LINGER: Duration = Duration::from_millis(10);

/// An idle writer looks at its queue this often even if nobody woke it (belt and braces).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// What one drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Something was written.
    Some,
    /// Nothing was queued.
    Empty,
    /// The producers are gone and the queue is empty: the thread may end.
    Closed,
}

/// The producers' side: how to wake the writer when it sleeps.
#[derive(Debug)]
pub struct Wakeup {
    thread: Thread,
    idle: AtomicBool,
    closing: AtomicBool,
}

impl Wakeup {
    /// Call after queueing: wakes the writer only if it declared itself idle.
    #[inline]
    pub fn notify(&self) {
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

/// A running writer thread.
#[derive(Debug)]
pub struct Flusher {
    wakeup: Arc<Wakeup>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts a thread named `name` that calls `drain` until it reports [`Drained::Closed`] or
    /// [`Flusher::close`] is called (after which it drains until empty and ends).
    pub fn spawn(
        name: &str,
        drain: impl FnMut() -> Drained + Send + 'static,
    ) -> std::io::Result<Flusher> {
        Self::spawn_with(name, IDLE_RECHECK, drain)
    }

    fn spawn_with(
        name: &str,
        idle_recheck: Duration,
        mut drain: impl FnMut() -> Drained + Send + 'static,
    ) -> std::io::Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Wakeup>>(1);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let Ok(wakeup) = rx.recv() else { return };
                run(&wakeup, idle_recheck, &mut drain);
            })?;
        let wakeup = Arc::new(Wakeup {
            thread: handle.thread().clone(),
            idle: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        // The thread cannot have ended: it is waiting for this.
        let _ = tx.send(wakeup.clone());
        Ok(Flusher {
            wakeup,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// The handle producers notify after queueing.
    pub fn wakeup(&self) -> Arc<Wakeup> {
        self.wakeup.clone()
    }

    /// Writes everything queued so far and stops the thread; later calls return at once.
    pub fn close(&self) {
        self.wakeup.closing.store(true, Ordering::SeqCst);
        self.wakeup.thread.unpark();
        let handle = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn run(w: &Wakeup, idle_recheck: Duration, drain: &mut impl FnMut() -> Drained) {
    loop {
        let closing = w.closing.load(Ordering::SeqCst);
        match drain() {
            Drained::Closed => return,
            Drained::Some if closing => continue,
            Drained::Some => std::thread::park_timeout(LINGER),
            Drained::Empty if closing => return,
            Drained::Empty => {
                w.idle.store(true, Ordering::SeqCst);
                // A producer that queued before seeing `idle` did not wake us: look once more.
                match drain() {
                    Drained::Closed => return,
                    Drained::Some => {}
                    Drained::Empty => std::thread::park_timeout(idle_recheck),
                }
                w.idle.store(false, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn collector() -> (mpsc::Sender<u32>, Flusher, Arc<Mutex<Vec<u32>>>) {
        let (tx, rx) = mpsc::channel::<u32>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        // An idle writer is never woken by its timer here: only `notify` can wake it.
        let flusher = Flusher::spawn_with("test-flusher", Duration::from_secs(3600), move || {
            let mut got = Drained::Empty;
            loop {
                match rx.try_recv() {
                    Ok(v) => {
                        out.lock().unwrap().push(v);
                        got = Drained::Some;
                    }
                    Err(mpsc::TryRecvError::Empty) => return got,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return if got == Drained::Some {
                            got
                        } else {
                            Drained::Closed
                        }
                    }
                }
            }
        })
        .unwrap();
        (tx, flusher, seen)
    }

    #[test]
    fn close_writes_everything_queued_in_order() {
        let (tx, flusher, seen) = collector();
        let w = flusher.wakeup();
        for i in 0..10_000 {
            tx.send(i).unwrap();
            w.notify();
        }
        flusher.close();
        assert_eq!(*seen.lock().unwrap(), (0..10_000).collect::<Vec<_>>());
        flusher.close(); // idempotent
    }

    #[test]
    fn an_idle_writer_is_woken_by_the_next_line() {
        let (tx, flusher, seen) = collector();
        let w = flusher.wakeup();
        // Let the writer go idle, then queue one line and wait for it without closing.
        while !w.idle.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        tx.send(7).unwrap();
        w.notify();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle writer was not woken"
            );
            std::thread::yield_now();
        }
        assert_eq!(*seen.lock().unwrap(), vec![7]);
        flusher.close();
    }

    #[test]
    fn the_thread_ends_when_producers_are_gone() {
        let (tx, flusher, seen) = collector();
        tx.send(1).unwrap();
        drop(tx);
        flusher.wakeup().notify();
        flusher.close();
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }
}
