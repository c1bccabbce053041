//! Token last-use times: shared counters the hot path bumps with one relaxed store, kept across
//! policy reloads, and persisted to `state_dir/token-usage.json` (written to a temporary file,
//! fsynced and renamed, so a crash leaves the old or the new file) at least every 10 s and on
//! shutdown. A restart therefore neither revives an idle-expired token nor expires one in use,
//! and validation never waits on disk.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const FILE: &str = "token-usage.json";

/// Last-use counters by token id.
#[derive(Debug, Default)]
pub struct UsageStore {
    dir: Option<PathBuf>,
    /// Keyed by the token entry's own id (shared, not copied).
    counters: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    /// What the file held at start, for ids not yet seen in a policy.
    persisted: HashMap<String, u64>,
    last_written: Mutex<BTreeMap<String, u64>>,
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
        let persisted: HashMap<String, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: unreadable: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        Ok(UsageStore {
            dir: Some(dir.to_owned()),
            last_written: Mutex::new(persisted.iter().map(|(k, v)| (k.clone(), *v)).collect()),
            persisted,
            counters: Mutex::new(HashMap::new()),
        })
    }

    /// The counter for token `id`. A new counter starts at what was persisted (raised to
    /// `created`, for an id re-issued since), else at `created`, else at `now`. An existing
    /// counter is only ever raised by a newer `created`: a reload never renews idle time.
    pub fn counter(&self, id: &Arc<str>, created: Option<u64>, now: u64) -> Arc<AtomicU64> {
        let Ok(mut map) = self.counters.lock() else {
            return Arc::new(AtomicU64::new(created.unwrap_or(now)));
        };
        let c = map.entry(id.clone()).or_insert_with(|| {
            let start = match (self.persisted.get(&**id).copied(), created) {
                (Some(p), c) => p.max(c.unwrap_or(0)),
                (None, Some(c)) => c,
                (None, None) => now,
            };
            Arc::new(AtomicU64::new(start))
        });
        if let Some(created) = created {
            c.fetch_max(created, Ordering::Relaxed);
        }
        c.clone()
    }

    /// Last use of `id` as known now (counters first, then the file).
    pub fn last_used(&self, id: &str) -> Option<u64> {
        self.counters
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|c| c.load(Ordering::Relaxed)))
            .or_else(|| self.persisted.get(id).copied())
    }

    /// Writes the counters if they changed since the last write.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let snapshot: BTreeMap<String, u64> = match self.counters.lock() {
            Ok(m) => m
                .iter()
                .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
                .collect(),
            Err(_) => return Ok(()),
        };
        let Ok(mut last) = self.last_written.lock() else {
            return Ok(());
        };
        let mut merged = last.clone();
        merged.extend(snapshot);
        if merged == *last {
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(&merged).map_err(std::io::Error::other)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".usage.")
            .tempfile_in(dir)?;
        tmp.write_all(&body)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(FILE)).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        *last = merged;
        Ok(())
    }
}

/// Reads the persisted last-use times of a state directory (for `scimgate token list`).
pub fn read_usage(dir: &Path) -> HashMap<String, u64> {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
