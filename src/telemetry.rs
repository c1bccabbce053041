//! Structured JSON logging on stderr (tracing-subscriber). `RUST_LOG` filters as usual; the
//! per-request line has target `scimgate::access`.
//!
//! A request never writes to stderr itself: its line is appended to a shared buffer that a
//! background [`Flusher`] writes out in batches (at most [`crate::flusher::LINGER`] later).
//! Nothing is dropped: a buffer past [`HIGH_WATER`] is written by the thread that filled it, so
//! a stalled stderr slows logging down rather than losing lines or growing memory without bound.

use crate::flusher::{Drained, Flusher, Wakeup};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
pub struct BatchWriter<W> {
    shared: Arc<Shared<W>>,
    wakeup: Arc<Wakeup>,
}

impl<W> Clone for BatchWriter<W> {
    fn clone(&self) -> Self {
        BatchWriter {
            shared: self.shared.clone(),
            wakeup: self.wakeup.clone(),
        }
    }
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

impl<W: Write> BatchWriter<W> {
    /// Appends one whole line (the caller ends it with a newline).
    pub fn write_line(&self, line: &[u8]) {
        let _ = (&mut &*self).write(line);
    }
}

/// The log's writer, once [`init`] installed it: lines built by hand (the access line) go to
/// the same buffer, in order with every other line.
static WRITER: OnceLock<BatchWriter<std::io::Stderr>> = OnceLock::new();

/// The installed log writer; `None` when [`init`] was not called (library use, tests).
pub fn writer() -> Option<&'static BatchWriter<std::io::Stderr>> {
    WRITER.get()
}

/// One log line in exactly the form tracing-subscriber's flattened JSON format writes
/// (`timestamp`, `level`, `message`, the fields, `target`), built directly. The access line is
/// written once per request; through tracing's field visitors it cost about ten times more
/// than the line itself (`benches/hot_path.rs`, `access_line`).
pub struct JsonLine {
    buf: Vec<u8>,
}

impl JsonLine {
    /// Starts an INFO line with its timestamp and message.
    pub fn info(message: &str) -> JsonLine {
        let mut buf = Vec::with_capacity(512);
        let _ = write!(
            buf,
            "{{\"timestamp\":\"{}\",\"level\":\"INFO\"",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        );
        let mut line = JsonLine { buf };
        line.str("message", message);
        line
    }

    fn key(&mut self, key: &'static str) {
        // Keys are the caller's identifiers: nothing in them needs escaping.
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string field, escaped as JSON.
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        write_json_str(&mut self.buf, value);
        self
    }

    /// A string field, left out when absent (as tracing leaves out a `None`).
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    /// A number field.
    pub fn num(&mut self, key: &'static str, value: u64) -> &mut Self {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// A number field, left out when absent.
    pub fn opt_num(&mut self, key: &'static str, value: Option<u64>) -> &mut Self {
        if let Some(v) = value {
            self.num(key, v);
        }
        self
    }

    /// Ends the line with its target and a newline.
    pub fn finish(mut self, target: &'static str) -> Vec<u8> {
        self.str("target", target);
        self.buf.extend_from_slice(b"}\n");
        self.buf
    }
}

/// Appends `value` as a JSON string, byte for byte as serde_json writes it. serde_json escapes
/// only quotes, backslashes and control characters: text without them is copied as it is,
/// without serde_json's byte-by-byte escaping loop.
pub fn write_json_str(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// Whether serde_json would escape any byte of `s`. Checked 16 bytes at a time without an early
/// exit inside a block, which the compiler turns into vector compares.
fn needs_escape(s: &[u8]) -> bool {
    s.chunks(16).any(|block| {
        block.iter().fold(false, |hit, &b| {
            hit | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    })
}

/// Installs the JSON subscriber once; later calls are no-ops. Keep the returned guard alive
/// until exit: dropping it writes what is still buffered.
pub fn init() -> Option<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = BatchWriter::new(std::io::stderr()).ok()?;
    let _ = WRITER.set(writer.clone());
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

    /// A line built by [`JsonLine`] reads exactly like the one tracing-subscriber writes for
    /// the same event: same keys, same order, same escaping, absent fields left out.
    #[test]
    fn json_line_matches_the_subscriber_format() {
        let sink = Sink::default();
        let s2 = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || s2.clone())
            .finish();
        let odd = "/a\"b\\c\u{1}\u{e9}\u{2028}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "scimgate::access",
                request_id = "r-1",
                tenant = None::<&str>,
                path = odd,
                status = 200u64,
                upstream_status = None::<u64>,
                "request"
            );
        });
        let mut line = JsonLine::info("request");
        line.str("request_id", "r-1")
            .opt_str("tenant", None)
            .str("path", odd)
            .num("status", 200)
            .opt_num("upstream_status", None);
        let ours = String::from_utf8(line.finish("scimgate::access")).unwrap();
        let theirs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let strip = |l: &str| l[l.find("\"level\"").unwrap()..].to_owned();
        assert_eq!(strip(&ours), strip(&theirs));
        let ts = |l: &str| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["timestamp"]
                .as_str()
                .unwrap()
                .len()
        };
        assert_eq!(ts(&ours), ts(&theirs), "timestamps of the same precision");
    }

    /// Text written as it is reads exactly as serde_json's escaping writes it: every byte
    /// value alone, next to plain text, and some non-ASCII.
    #[test]
    fn plain_strings_are_written_as_serde_json_writes_them() {
        let mut texts: Vec<String> = (0..=0x7f_u8)
            .map(|b| format!("a{}b", char::from(b)))
            .collect();
        texts
            .extend(["", "plain", "\u{e9}\u{2028}\u{7f}", "/acme/scim/v2/Users"].map(String::from));
        // Every byte that needs escaping, at every position of a string spanning three of
        // `needs_escape`'s 16-byte blocks.
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..40 {
                let mut text = "x".repeat(40);
                text.replace_range(at..=at, &special.to_string());
                texts.push(text);
            }
        }
        for text in &texts {
            let mut line = JsonLine { buf: Vec::new() };
            line.str("k", text);
            let mut expected = b",\"k\":".to_vec();
            serde_json::to_writer(&mut expected, text).unwrap();
            assert_eq!(line.buf, expected, "{text:?}");
        }
        let mut line = JsonLine { buf: Vec::new() };
        line.num("n", u64::MAX);
        assert_eq!(line.buf, format!(",\"n\":{}", u64::MAX).into_bytes());
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
