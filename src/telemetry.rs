//! Structured JSON logging on stderr (tracing-subscriber). `RUST_LOG` filters as usual; the
//! per-request line has target `scimgate::access`. Lines are written by a background thread
//! (tracing-appender), so a request never waits on a write to stderr; the writer applies
//! back-pressure rather than dropping lines.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber once; later calls are no-ops. Keep the returned guard alive
/// until exit: dropping it flushes what is still queued.
pub fn init() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
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
