//! Token last-use times: shared counters the hot path bumps with one relaxed store, kept across
//! policy reloads, and persisted to `state_dir/token-usage.json` (written to a temporary file,
//! fsynced and renamed, so a crash leaves the old or the new file) at least every 10 s and on
//! shutdown. A restart therefore neither revives an idle-expired token nor expires one in use,
//! and validation never waits on disk.
//!
//! The live times are the token index's own (one 4-byte counter per token, bumped on use); this
//! store keeps the times of ids no current index holds (read from the file, or of tokens a
//! reload removed) and hands both to the next index and to the file.

use super::TokenIndex;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const FILE: &str = "token-usage.json";

/// Last-use times by token id, across policy snapshots and restarts.
#[derive(Debug, Default)]
pub struct UsageStore {
    dir: Option<PathBuf>,
    state: Mutex<State>,
    /// Set when the known times changed without a use (a reload), so the next flush writes.
    changed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// The index of the policy in force, whose counters are the live times.
    live: Option<Arc<TokenIndex>>,
    /// Times of ids the live index does not hold.
    others: HashMap<Box<str>, u64>,
}

impl UsageStore {
    /// A store that is never written (tests, the demo).
    pub fn in_memory() -> Self {
        UsageStore::default()
    }

    /// Opens (creating if needed) the store in `dir`. An unreadable file is an error: better
    /// to refuse to start than to silently forget which tokens went idle.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create the state directory: {e}", dir.display()))?;
        let path = dir.join(FILE);
        let persisted: HashMap<Box<str>, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: unreadable: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        Ok(UsageStore {
            dir: Some(dir.to_owned()),
            state: Mutex::new(State {
                live: None,
                others: persisted,
            }),
            changed: AtomicBool::new(false),
        })
    }

    /// The live index and the other known times, copied out so no lock is held while they
    /// are used.
    fn snapshot(&self) -> (Option<Arc<TokenIndex>>, HashMap<Box<str>, u64>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.live.clone(), state.others.clone())
    }

    /// Calls `f` with a function giving the start time of a token about to be compiled: what
    /// is known of `id` (live, else persisted or remembered) raised to `created`, else
    /// `created`, else `now`. A known time is only ever raised by a newer `created`: a reload
    /// never renews idle time.
    pub fn with_starts<R>(
        &self,
        now: u64,
        f: impl FnOnce(&dyn Fn(&str, Option<u64>) -> u64) -> R,
    ) -> R {
        let (live_index, others) = self.snapshot();
        let live: HashMap<&str, u64> = live_index
            .as_deref()
            .map(|ix| ix.entries().map(|e| (e.id(), e.last_used())).collect())
            .unwrap_or_default();
        let start = |id: &str, created: Option<u64>| {
            let known = live.get(id).copied().or_else(|| others.get(id).copied());
            match (known, created) {
                (Some(k), c) => k.max(c.unwrap_or(0)),
                (None, Some(c)) => c,
                (None, None) => now,
            }
        };
        f(&start)
    }

    /// Raises `index`'s times to the live index's: called just before `index` is put in
    /// force, so uses made while it was compiled count from its first request on.
    pub fn carry(&self, index: &TokenIndex) {
        let (Some(live), _) = self.snapshot() else {
            return;
        };
        let positions: HashMap<&str, u32> = index.entries().map(|e| (e.id(), e.at())).collect();
        for e in live.entries() {
            if let Some(&at) = positions.get(e.id()) {
                index.raise_last_used(at, e.last_used());
            }
        }
    }

    /// Makes `index` (of the policy just put in force) the live one. Uses of the index it
    /// replaces since [`UsageStore::carry`] are carried over, and the times of tokens the new
    /// one no longer holds are remembered, for the file and for a later reload that brings
    /// them back (their idle time is never renewed).
    pub fn adopt(&self, index: &Arc<TokenIndex>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let positions: HashMap<&str, u32> = index.entries().map(|e| (e.id(), e.at())).collect();
        if let Some(old) = state.live.take() {
            for e in old.entries() {
                match positions.get(e.id()) {
                    Some(&at) => index.raise_last_used(at, e.last_used()),
                    None => {
                        state.others.insert(e.id().into(), e.last_used());
                    }
                }
            }
        }
        for id in positions.keys() {
            state.others.remove(*id);
        }
        state.others.shrink_to_fit();
        state.live = Some(index.clone());
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Writes every known time if any changed since the last write: to a temporary file,
    /// fsynced, then renamed over the old one. Blocking (disk): run it off the async workers.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let (live, others) = self.snapshot();
        let used = live.as_deref().is_some_and(|ix| ix.take_used());
        if !(self.changed.swap(false, Ordering::Relaxed) | used) {
            return Ok(());
        }
        let mut times: Vec<(&str, u64)> = others
            .iter()
            .map(|(k, v)| (&**k, *v))
            .chain(
                live.as_deref()
                    .into_iter()
                    .flat_map(|ix| ix.entries().map(|e| (e.id(), e.last_used()))),
            )
            .collect();
        times.sort_unstable();
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::Builder::new()
                .prefix(".usage.")
                .tempfile_in(dir)?;
            {
                let mut w = std::io::BufWriter::new(tmp.as_file_mut());
                w.write_all(b"{")?;
                for (n, (id, t)) in times.iter().enumerate() {
                    let sep = if n == 0 { "\n  " } else { ",\n  " };
                    w.write_all(sep.as_bytes())?;
                    serde_json::to_writer(&mut w, id)?;
                    write!(w, ": {t}")?;
                }
                w.write_all(b"\n}\n")?;
                w.flush()?;
            }
            tmp.as_file().sync_all()?;
            tmp.persist(dir.join(FILE)).map_err(|e| e.error)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        let result = write();
        if result.is_err() {
            // Try again at the next flush.
            self.changed.store(true, Ordering::Relaxed);
        }
        result
    }
}

/// Reads the persisted last-use times of a state directory (for `scimgate token list`).
pub fn read_usage(dir: &Path) -> HashMap<String, u64> {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
