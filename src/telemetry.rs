//! Structured JSON logging on stderr (tracing-subscriber). `RUST_LOG` filters as usual; the
//! per-request line has target `scimgate::access`.
//!
//! A request never writes to stderr itself: its line is appended to a shared buffer that a
//! background [`Flusher`] writes out in batches (at most [`crate::flusher::LINGER`] later).
//! Nothing is dropped: a buffer past [`HIGH_WATER`] is written by the thread that filled it, so
//! a stalled stderr slows logging down rather than losing lines or growing memory without bound.

use crate::flusher::{Drained, Flusher, Wakeup};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A buffer this large is written at once by whoever filled it.
pub const HIGH_WATER: usize = 256 * 1024;

/// Lines waiting to be written, and the sink they go to. Whoever holds `sink` writes; taking
/// the buffer only while holding it keeps lines in order.
struct Shared<W> {
    buf: Mutex<Vec<u8>>,
    sink: Mutex<W>,
}

impl<W: Write> Shared<W> {
    /// Writes whatever is buffered; reports whether there was anything.
    fn write_out(&self) -> bool {
        let mut sink = lock(&self.sink);
        let data = std::mem::take(&mut *lock(&self.buf));
        if data.is_empty() {
            return false;
        }
        // Nowhere to report a failing stderr: the lines are lost, the gateway goes on.
        let _ = sink.write_all(&data).and_then(|_| sink.flush());
        true
    }
}

/// A poisoned lock only means a panic elsewhere while appending bytes: keep logging.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The [`MakeWriter`] handed to tracing-subscriber.
#[derive(Clone)]
pub struct BatchWriter<W> {
    shared: Arc<Shared<W>>,
    wakeup: Arc<Wakeup>,
}

/// Stops the background writer when dropped, after writing everything buffered.
pub struct Guard(Arc<Flusher>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<W: Write + Send + 'static> BatchWriter<W> {
    /// A writer batching into `sink`, with its background thread.
    pub fn new(sink: W) -> std::io::Result<(BatchWriter<W>, Guard)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            sink: Mutex::new(sink),
        });
        let s = shared.clone();
        let flusher = Flusher::spawn("scimgate-log", move || {
            if s.write_out() {
                Drained::Some
            } else {
                Drained::Empty
            }
        })?;
        let writer = BatchWriter {
            shared,
            wakeup: flusher.wakeup(),
        };
        Ok((writer, Guard(Arc::new(flusher))))
    }
}

impl<W: Write> Write for &BatchWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = lock(&self.shared.buf);
            buf.extend_from_slice(bytes);
            buf.len() >= HIGH_WATER
        };
        if full {
            self.shared.write_out();
        } else {
            self.wakeup.notify();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for BatchWriter<W> {
    type Writer = &'a BatchWriter<W>;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Installs the JSON subscriber once; later calls are no-ops. Keep the returned guard alive
/// until exit: dropping it writes what is still buffered.
pub fn init() -> Option<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = BatchWriter::new(std::io::stderr()).ok()?;
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init()
        .ok()
        .map(|_| guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_all_by_the_guard() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let w = &writer;
                s.spawn(move || {
                    for i in 0..5_000 {
                        let line = format!(
                            "{{\"t\":{t},\"i\":{i},\"pad\":\"{}\"}}\n",
                            "x".repeat(i % 97)
                        );
                        (&mut w.make_writer()).write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
            let t = v["t"].as_u64().unwrap() as usize;
            assert_eq!(
                v["i"].as_u64().unwrap() as usize,
                next[t],
                "thread {t} out of order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line was written");
    }
}
