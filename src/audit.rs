//! The audit trail: one JSON object per request and per administrative event, on its own sink
//! (stdout, or a file with size rotation), separate from diagnostic logs. Each record carries
//! `prev`, the SHA-256 of the previous record's line, so a deleted or edited line breaks the
//! chain; `scimgate audit verify FILE` checks it. Never a secret, never a body; query strings
//! keep their parameter names only unless `audit.query_values` is set.
//!
//! Records are serialised, chained and written in batches by a background [`Flusher`], off
//! the request path: a request only queues its record (no system call, no wake-up while busy).

use crate::config::{AuditSection, AuditSink};
use crate::flusher::{Drained, Flusher, Wakeup};
use crate::telemetry::write_json_str;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Version of the record layout; bumped on any incompatible change.
pub const SCHEMA: &str = "scimgate.audit/v1";
/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record. Optional fields are omitted when unknown. Lines are written by
/// [`write_members`]; the serde derive is the reference a test holds that writer to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<HeaderText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_subject: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<crate::token::TokenRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<std::borrow::Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub normalizations: Vec<&'static str>,
    /// Administrative events: `policy_reloaded`, `policy_refused`, `token_issued`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A header value written as text (request ids: validated or generated, always visible ASCII).
/// Shares the header's bytes instead of copying them on the request path.
#[derive(Debug, Clone)]
pub struct HeaderText(pub http::HeaderValue);

impl Serialize for HeaderText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(self.0.as_bytes()))
    }
}

/// Writes one chained line into `out`: `{"schema":…,"time":…,` the record's members `,"prev":…}`,
/// byte for byte what serialising a struct that flattens the record with serde gives (a test
/// holds the two equal), without serde's per-field dispatch and byte-by-byte escaping, which
/// cost the writer thread more than hashing the line.
fn write_chained(
    out: &mut Vec<u8>,
    record: &Record,
    time: humantime::Rfc3339Timestamp,
    prev: &str,
) -> std::io::Result<()> {
    out.clear();
    out.extend_from_slice(b"{\"schema\":");
    write_json_str(out, SCHEMA);
    out.extend_from_slice(b",\"time\":\"");
    write!(out, "{time}")?;
    out.extend_from_slice(b"\",");
    write_members(out, record);
    out.extend_from_slice(b",\"prev\":");
    write_json_str(out, prev);
    out.push(b'}');
    Ok(())
}

/// The record's members in declaration order, absent ones left out, as `#[derive(Serialize)]`
/// writes them (without the braces).
fn write_members(out: &mut Vec<u8>, r: &Record) {
    let mut m = Members { out, first: true };
    m.str("kind", Some(r.kind));
    if let Some(id) = &r.request_id {
        m.str(
            "request_id",
            Some(&String::from_utf8_lossy(id.0.as_bytes())),
        );
    }
    if let Some(addr) = r.client_addr {
        m.key("client_addr");
        // An address's text has nothing to escape.
        let _ = write!(m.out, "\"{addr}\"");
    }
    m.str("client_cert_subject", r.client_cert_subject.as_deref());
    m.str("token_id", r.token_id.as_ref().map(|t| t.id()));
    m.str("tenant", r.tenant.as_deref());
    m.str("method", r.method.as_deref());
    m.str("path", r.path.as_deref());
    m.str("query", r.query.as_deref());
    m.str("resource_type", r.resource_type);
    m.str("operation", r.operation);
    m.str("target_id", r.target_id.as_deref());
    m.str("decision", r.decision);
    m.str("reason", r.reason);
    m.num("status", r.status.map(u64::from));
    m.num("upstream_status", r.upstream_status.map(u64::from));
    m.num("bytes_in", r.bytes_in);
    m.num("bytes_out", r.bytes_out);
    m.num("duration_us", r.duration_us);
    m.str("policy_version", r.policy_version.as_deref());
    if !r.normalizations.is_empty() {
        m.key("normalizations");
        m.out.push(b'[');
        for (i, n) in r.normalizations.iter().enumerate() {
            if i > 0 {
                m.out.push(b',');
            }
            write_json_str(m.out, n);
        }
        m.out.push(b']');
    }
    m.str("event", r.event);
    m.str("detail", r.detail.as_deref());
}

/// Writes `"key":value` members, comma-separated.
struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Members<'_> {
    fn key(&mut self, key: &'static str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        // Keys are this file's identifiers: nothing in them needs escaping.
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.key(key);
            write_json_str(self.out, v);
        }
    }

    fn num(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(v) = value {
            self.key(key);
            self.out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }
}

/// Where records go: a cheap handle the request path sends to.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Record>,
    wakeup: Arc<Wakeup>,
    writer: Arc<Flusher>,
    pub query_values: bool,
}

impl Audit {
    /// Queues a record; waits only if the writer is far behind (back-pressure, never loss).
    pub async fn send(&self, r: Record) {
        let _ = self.tx.send(r).await;
        self.wakeup.notify();
    }

    /// Queues a record from synchronous code, dropping it only if the queue is full.
    pub fn try_send(&self, r: Record) {
        let _ = self.tx.try_send(r);
        self.wakeup.notify();
    }

    /// Writes every record queued so far and stops the writer (at shutdown, after the last
    /// request); records queued later are not written.
    pub fn close(&self) {
        self.writer.close();
    }

    /// Starts the writer for `cfg` (paths relative to `base_dir`). `None` when auditing is off.
    pub fn start(cfg: &AuditSection, base_dir: &Path) -> Result<Option<Audit>, String> {
        let writer: Box<dyn LineWriter> = match cfg.sink {
            AuditSink::None => return Ok(None),
            AuditSink::Stdout => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
            AuditSink::File => {
                let path = base_dir.join(cfg.path.as_deref().unwrap_or(Path::new("audit.log")));
                Box::new(RotatingFile::open(path, cfg.max_bytes, cfg.keep)?)
            }
        };
        let prev = match cfg.sink {
            AuditSink::File => {
                let path = base_dir.join(cfg.path.as_deref().unwrap_or(Path::new("audit.log")));
                last_line_hash(&path).unwrap_or_else(|| GENESIS.to_owned())
            }
            _ => GENESIS.to_owned(),
        };
        let (tx, rx) = mpsc::channel(65_536);
        let mut chain = Chain {
            rx,
            out: writer,
            prev,
        };
        let writer = Flusher::spawn("scimgate-audit", move || chain.drain())
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Some(Audit {
            tx,
            wakeup: writer.wakeup(),
            writer: Arc::new(writer),
            query_values: cfg.query_values,
        }))
    }
}

/// A sink for audit lines. Lines are buffered and flushed at the end of each batch.
trait LineWriter: Send {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

impl LineWriter for std::io::BufWriter<std::io::Stdout> {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.write_all(line)?;
        self.write_all(b"\n")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }
}

/// A file rotated by size: `audit.log` → `audit.log.1` → … → `audit.log.<keep>`.
struct RotatingFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: u32) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: cannot open the audit log: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            file: std::io::BufWriter::with_capacity(64 * 1024, file),
            size,
            max_bytes,
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        self.file.flush()?;
        std::fs::rename(&self.path, name(1))?;
        self.file = std::io::BufWriter::with_capacity(
            64 * 1024,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

impl LineWriter for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes && self.keep > 0 {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The writer's state: the queue, the sink, and the hash of the last line written.
struct Chain {
    rx: mpsc::Receiver<Record>,
    out: Box<dyn LineWriter>,
    prev: String,
}

impl Chain {
    /// Writes every queued record, chained, then flushes the batch to the sink.
    fn drain(&mut self) -> Drained {
        let mut wrote = false;
        let mut bytes = Vec::with_capacity(1024);
        let closed = loop {
            let record = match self.rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            };
            wrote = true;
            let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            if write_chained(&mut bytes, &record, now, &self.prev).is_ok() {
                match self.out.write_line(&bytes) {
                    Ok(()) => {
                        crate::metrics::METRICS.audit_records.inc();
                        set_hex(&mut self.prev, &Sha256::digest(&bytes));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot write the audit log"),
                }
            }
        };
        if wrote {
            if let Err(e) = self.out.flush() {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
        match (wrote, closed) {
            (true, _) => Drained::Some,
            (false, true) => Drained::Closed,
            (false, false) => Drained::Empty,
        }
    }
}

/// `out` becomes `digest` in lower-case hex, in place (`hex::encode` builds a new `String`
/// char by char, once per record).
fn set_hex(out: &mut String, digest: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.clear();
    for b in digest {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

fn last_line_hash(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let last = text.lines().rev().find(|l| !l.is_empty())?;
    Some(hex::encode(Sha256::digest(last.as_bytes())))
}

/// Checks a file's chain. Returns the number of records, or the 1-based line where it breaks.
pub fn verify(text: &str) -> Result<usize, String> {
    let mut prev_hash: Option<String> = None;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        if v.get("schema").and_then(|s| s.as_str()) != Some(SCHEMA) {
            return Err(format!("line {}: schema is not {SCHEMA}", i + 1));
        }
        let prev = v
            .get("prev")
            .and_then(|p| p.as_str())
            .ok_or(format!("line {}: no prev", i + 1))?;
        if let Some(expected) = &prev_hash {
            if prev != expected {
                return Err(format!(
                    "line {}: the chain is broken (a record before it was removed or changed)",
                    i + 1
                ));
            }
        }
        prev_hash = Some(hex::encode(Sha256::digest(line.as_bytes())));
        n += 1;
    }
    Ok(n)
}

/// The query string as audited: parameter names only, unless values are configured.
pub fn audited_query(q: &str, values: bool) -> String {
    if values {
        return q.to_owned();
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map(|(k, _)| k).unwrap_or(p))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(records: &[&str]) -> String {
        let mut prev = GENESIS.to_owned();
        let mut out = String::new();
        for r in records {
            let line = format!(r#"{{"schema":"{SCHEMA}","kind":"{r}","prev":"{prev}"}}"#);
            prev = hex::encode(Sha256::digest(line.as_bytes()));
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The line as serde writes a struct that flattens the record: what `write_chained`
    /// must equal byte for byte.
    #[derive(Serialize)]
    struct Flattened<'a> {
        schema: &'static str,
        time: &'a str,
        #[serde(flatten)]
        record: &'a Record,
        prev: &'a str,
    }

    #[test]
    fn set_hex_writes_what_hex_encode_writes() {
        let digest = Sha256::digest(b"scimgate");
        let mut out = "stale".to_owned();
        set_hex(&mut out, &digest);
        assert_eq!(out, hex::encode(digest));
    }

    #[test]
    fn chained_lines_are_what_serde_flatten_writes() {
        let full = Record {
            kind: "request",
            request_id: Some(HeaderText(http::HeaderValue::from_static("f190dc51-0002"))),
            client_addr: Some("2001:db8::7".parse().unwrap()),
            client_cert_subject: Some("CN=idp \"x\"\n".into()),
            tenant: Some("acme".into()),
            method: Some("PATCH".into()),
            path: Some("/acme/scim/v2/Users/\u{e9}".into()),
            query: Some("filter".into()),
            resource_type: Some("User"),
            operation: Some("patch"),
            target_id: Some("42".into()),
            decision: Some("deny"),
            reason: Some("out_of_scope"),
            status: Some(404),
            upstream_status: Some(200),
            bytes_in: Some(156),
            bytes_out: Some(0),
            duration_us: Some(812),
            policy_version: Some("506e366ea1ca089a".into()),
            normalizations: vec!["path_normalized", "endpoint_case"],
            event: None,
            detail: Some("a \"quoted\" detail".into()),
            ..Record::default()
        };
        let bare = Record {
            kind: "policy_reloaded",
            ..Record::default()
        };
        let secret = crate::token::generate().unwrap();
        let rec: crate::config::TokenRecord = serde_yaml::from_str(&format!(
            "id: 'idp \"1\"'\ntenant: acme\nsha256: {}\nscopes: [users:read]\n",
            hex::encode(crate::token::hash(&secret))
        ))
        .unwrap();
        let index = Arc::new(crate::token::TokenIndex::from_records(
            [&rec],
            &Default::default(),
            0,
        ));
        let event = Record {
            kind: "token_issued",
            client_addr: Some("10.0.0.1".parse().unwrap()),
            token_id: Some(index.validate(&secret, 1).unwrap()),
            normalizations: vec!["path_normalized"],
            event: Some("token_issued"),
            ..Record::default()
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456);
        let time = humantime::format_rfc3339_micros(at).to_string();
        let time = time.as_str();
        let mut out = Vec::new();
        for r in [&full, &bare, &event] {
            let stamp = humantime::format_rfc3339_micros(at);
            write_chained(&mut out, r, stamp, GENESIS).unwrap();
            let want = serde_json::to_vec(&Flattened {
                schema: SCHEMA,
                time,
                record: r,
                prev: GENESIS,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_a_removed_or_edited_line_does_not() {
        let text = chain(&["a", "b", "c", "d"]);
        assert_eq!(verify(&text), Ok(4));
        let lines: Vec<&str> = text.lines().collect();
        let removed = [lines[0], lines[1], lines[3]].join("\n");
        assert!(verify(&removed).unwrap_err().starts_with("line 3"));
        let edited = text.replacen("\"kind\":\"b\"", "\"kind\":\"x\"", 1);
        assert!(verify(&edited).unwrap_err().starts_with("line 3"));
    }

    #[test]
    fn query_values_are_dropped_unless_asked_for() {
        assert_eq!(
            audited_query("filter=userName%20eq%20%22a%22&count=5", false),
            "filter&count"
        );
        assert_eq!(audited_query("filter=x", true), "filter=x");
    }
}
