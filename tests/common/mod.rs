//! Harness for the end-to-end tests: a real SCIM backend (`scim2-server` from PyPI), the real
//! `scimgate` binary in front of it, and an HTTPS client that trusts only the test certificate.
//!
//! Every child process sits in a [`ChildGuard`] that kills and reaps it on drop, so nothing
//! leaks when a test panics. Readiness is read from the children's output (no sleeps), with a
//! bounded wait and the captured output in the panic message when it does not come.
//!
//! The helpers are synchronous: requests run on one shared tokio runtime, so tests are plain
//! `#[test]` functions that read top to bottom.

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a child may take to announce that it is ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one HTTP exchange may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a log line that should already be on its way.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a one-shot CLI command (`check`, `token …`) may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The tenants the backend serves and the gateway routes.
pub const ACME_PREFIX: &str = "/acme/scim/v2";
pub const GLOBEX_PREFIX: &str = "/globex/scim/v2";

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const WWW_AUTHENTICATE_401: &str = r#"Bearer realm="scimgate", error="invalid_token""#;

/// The User-Agent of the harness's direct backend queries, so they can be told apart from
/// requests the gateway forwarded when reading the backend's log.
const DIRECT_USER_AGENT: &str = "scimgate-e2e-direct";

// ---------------------------------------------------------------------------------------------
// Runtime, randomness, ports
// ---------------------------------------------------------------------------------------------

/// One multi-threaded runtime shared by every test of the binary; `block_on` may be called from
/// many test threads at once.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot build the tokio runtime")
    })
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("OS random source");
    hex::encode(b)
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read the port, release it). Whoever
/// uses it must retry if someone else took it meanwhile.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
pub fn query_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Child processes and their output
// ---------------------------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped, panic or not.
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_owned(),
            child,
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child.stdout.take().expect("stdout was not piped")
    }

    pub fn take_stderr(&mut self) -> std::process::ChildStderr {
        self.child.stderr.take().expect("stderr was not piped")
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits at most `timeout` for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (through kill(1), no libc needed).
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.id().to_string())
            .status()
            .expect("cannot run kill")
            .success();
        assert!(ok, "kill -TERM {} ({}) failed", self.id(), self.name);
    }

    /// Kills (SIGKILL) and reaps the child.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines a child writes to one of its pipes, read on a background thread.
#[derive(Clone, Default)]
pub struct Capture {
    inner: Arc<(Mutex<CaptureState>, Condvar)>,
}

#[derive(Default)]
struct CaptureState {
    lines: Vec<String>,
    closed: bool,
}

/// Why a wait on a [`Capture`] ended without the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The pipe closed (the child exited).
    Closed,
    TimedOut,
}

impl Capture {
    pub fn spawn(name: &str, pipe: impl Read + Send + 'static) -> Capture {
        let cap = Capture::default();
        let writer = cap.clone();
        std::thread::Builder::new()
            .name(format!("{name}-output"))
            .spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.trim_end_matches(['\n', '\r']).to_owned();
                            let (m, cv) = &*writer.inner;
                            m.lock().unwrap().lines.push(line);
                            cv.notify_all();
                        }
                    }
                }
                let (m, cv) = &*writer.inner;
                m.lock().unwrap().closed = true;
                cv.notify_all();
            })
            .expect("cannot spawn an output reader thread");
        cap
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line (already read or still to come) satisfies `pred`, and returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        self.wait_for_from(0, timeout, pred)
    }

    /// How many lines were read so far: a mark for [`Capture::wait_for_from`].
    pub fn mark(&self) -> usize {
        self.inner.0.lock().unwrap().lines.len()
    }

    /// Like [`Capture::wait_for`], looking only at lines from index `start` on (lines written
    /// after a [`Capture::mark`]).
    pub fn wait_for_from(
        &self,
        start: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut state = m.lock().unwrap();
        let mut seen = start;
        loop {
            while seen < state.lines.len() {
                if pred(&state.lines[seen]) {
                    return Ok(state.lines[seen].clone());
                }
                seen += 1;
            }
            if state.closed {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            state = cv.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: requests, responses, clients
// ---------------------------------------------------------------------------------------------

type ReqBody = BoxBody<Bytes, Infallible>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;
type PlainClient = Client<HttpConnector, ReqBody>;

/// A body sent in chunks with no `Content-Length` (chunked transfer encoding on HTTP/1.1).
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A request to send through the gateway (or to the backend): path with query, headers, body.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    /// Path and query exactly as sent, e.g. `/acme/scim/v2/Users?filter=...`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    /// Send the body in chunks of this size without `Content-Length`.
    pub chunked: Option<usize>,
}

impl Req {
    pub fn new(method: Method, path: &str) -> Req {
        Req {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
            chunked: None,
        }
    }
    pub fn get(path: &str) -> Req {
        Req::new(Method::GET, path)
    }
    pub fn delete(path: &str) -> Req {
        Req::new(Method::DELETE, path)
    }
    /// POST with a JSON body as `application/scim+json`.
    pub fn post(path: &str, body: &Value) -> Req {
        Req::new(Method::POST, path).json(body)
    }
    pub fn put(path: &str, body: &Value) -> Req {
        Req::new(Method::PUT, path).json(body)
    }
    pub fn patch(path: &str, body: &Value) -> Req {
        Req::new(Method::PATCH, path).json(body)
    }
    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Req {
        self.authorization(&format!("Bearer {token}"))
    }
    /// A raw `Authorization` header value.
    pub fn authorization(self, raw: &str) -> Req {
        self.header("authorization", raw)
    }
    /// Adds a header (repeatable: adding the same name twice sends it twice).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        let n = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("header name {name:?}: {e}"));
        let v =
            HeaderValue::from_str(value).unwrap_or_else(|e| panic!("header value {value:?}: {e}"));
        self.headers.push((n, v));
        self
    }
    /// A JSON body with `Content-Type: application/scim+json`.
    pub fn json(self, body: &Value) -> Req {
        self.body(serde_json::to_vec(body).expect("serialise JSON"))
            .header("content-type", "application/scim+json")
    }
    /// A raw body (set the content type yourself).
    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = Some(body.into());
        self
    }
    /// Sends the body in `chunk`-byte pieces without `Content-Length`.
    pub fn chunked(mut self, chunk: usize) -> Req {
        self.chunked = Some(chunk.max(1));
        self
    }
    /// Sets `X-Request-Id`.
    pub fn request_id(self, id: &str) -> Req {
        self.header("x-request-id", id)
    }

    fn into_http(self, base: &str) -> Request<ReqBody> {
        let uri = format!("{base}{}", self.path);
        let mut b = Request::builder().method(self.method).uri(&uri);
        for (n, v) in self.headers {
            b = b.header(n, v);
        }
        let body: ReqBody = match (self.body, self.chunked) {
            (None, _) => Full::new(Bytes::new()).boxed(),
            (Some(bytes), None) => Full::new(bytes).boxed(),
            (Some(bytes), Some(n)) => {
                let chunks = bytes.chunks(n).map(Bytes::copy_from_slice).collect();
                Chunks(chunks).boxed()
            }
        };
        b.body(body)
            .unwrap_or_else(|e| panic!("cannot build a request for {uri}: {e}"))
    }
}

/// A buffered response.
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.status, self.version)?;
        for (n, v) in &self.headers {
            write!(f, "\n  {n}: {}", String::from_utf8_lossy(v.as_bytes()))?;
        }
        write!(f, "\n\n{}", self.text())
    }
}

impl Resp {
    /// A header as a string (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics with the whole response when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{self:?}"))
    }
    /// Asserts the status, showing the whole response otherwise.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; response:\n{self:?}"
        );
        self
    }
}

async fn exchange<C>(client: &Client<C, ReqBody>, req: Request<ReqBody>) -> Result<Resp, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    exchange_within(client, req, REQUEST_TIMEOUT).await
}

async fn exchange_within<C>(
    client: &Client<C, ReqBody>,
    req: Request<ReqBody>,
    timeout: Duration,
) -> Result<Resp, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let what = format!("{} {}", req.method(), req.uri());
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{what}: reading the body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what}: no response within {timeout:?}")),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Which protocols the HTTPS client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/1.1 only (no ALPN, like many provisioning clients).
    Http1,
    /// ALPN `h2` and `http/1.1`: the server picks.
    Both,
}

/// An HTTPS client that trusts only `cert_pem`.
pub fn https_client(cert_pem: &str, alpn: Alpn) -> HttpsClient {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(cert.expect("test certificate PEM"))
            .expect("add the test certificate");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = match alpn {
        Alpn::Http1 => builder.enable_http1().build(),
        Alpn::Both => builder.enable_all_versions().build(),
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

fn plain_client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

// ---------------------------------------------------------------------------------------------
// The SCIM backend
// ---------------------------------------------------------------------------------------------

/// Where scim2-server is: `$SCIM2_SERVER`, else the repository's `.venv`. Panics (the tests
/// must fail, not skip) when it is missing.
pub fn scim2_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SCIM2_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SCIM2_SERVER={} does not exist; run scripts/test, which installs scim2-server into .venv",
            p.display()
        );
        return p;
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/scim2-server");
    assert!(
        p.is_file(),
        "scim2-server not found: SCIM2_SERVER is unset and {} does not exist.\n\
         The end-to-end tests need the real SCIM backend; run `scripts/test` (it creates .venv and \
         installs scim2-server from PyPI), or set SCIM2_SERVER to a scim2-server executable.",
        p.display()
    );
    p
}

/// One request as the backend saw it: its WSGI environ, from the `--debug` log.
#[derive(Debug, Clone, Default)]
pub struct BackendRequest {
    pub environ: BTreeMap<String, String>,
}

impl BackendRequest {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.environ.get(key).map(String::as_str)
    }
    pub fn method(&self) -> &str {
        self.get("REQUEST_METHOD").unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.get("PATH_INFO").unwrap_or("")
    }
    pub fn query(&self) -> &str {
        self.get("QUERY_STRING").unwrap_or("")
    }
    /// Whether the harness itself sent it (not the gateway).
    pub fn is_direct(&self) -> bool {
        self.get("HTTP_USER_AGENT") == Some(DIRECT_USER_AGENT)
    }
}

/// A running scim2-server with tenants `acme` and `globex`.
pub struct Backend {
    pub port: u16,
    /// The backend's bearer secret: what the gateway must send.
    pub secret: String,
    log_path: PathBuf,
    stdout: Capture,
    child: ChildGuard,
    client: PlainClient,
    _dir: TempDir,
}

impl Backend {
    /// Starts scim2-server on a free port, retrying with another port when it cannot bind.
    pub fn start() -> Backend {
        let exe = scim2_server_path();
        let secret = format!("backend-{}", random_hex(12));
        let dir = tempfile::Builder::new()
            .prefix("scimgate-e2e-backend-")
            .tempdir()
            .expect("tempdir");
        let mut failures = String::new();
        for attempt in 1..=5 {
            let port = free_port();
            let log_path = dir.path().join(format!("backend-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("create the backend log");
            let mut cmd = Command::new(&exe);
            cmd.args(["--port", &port.to_string(), "--bearer-token", &secret])
                .args(["--tenant", "acme", "--tenant", "globex", "--debug"])
                // A small, known environment: the debug log prints all of it for every request.
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("LANG", "C.UTF-8")
                .env("PYTHONUNBUFFERED", "1")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log));
            let mut child = ChildGuard::spawn("scim2-server", &mut cmd);
            let stdout = Capture::spawn("scim2-server", child.take_stdout());
            let ready = stdout.wait_for(STARTUP_TIMEOUT, |l| l.contains("Serving SCIM on"));
            match ready {
                Ok(line) => {
                    assert!(
                        line.contains(&format!("127.0.0.1:{port}/")),
                        "scim2-server announced another address: {line}"
                    );
                    return Backend {
                        port,
                        secret,
                        log_path,
                        stdout,
                        child,
                        client: plain_client(),
                        _dir: dir,
                    };
                }
                Err(why) => {
                    child.kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push_str(&format!(
                        "\n--- attempt {attempt} on port {port}: {why:?}\nstdout:\n{}\nstderr:\n{}",
                        stdout.text(),
                        tail(&log, 4000)
                    ));
                    if why == WaitError::TimedOut {
                        break;
                    }
                }
            }
        }
        panic!(
            "scim2-server ({}) did not print \"Serving SCIM on\" within {STARTUP_TIMEOUT:?}:{failures}",
            exe.display()
        );
    }

    /// `http://127.0.0.1:P/<tenant>/v2`: the upstream URL of a tenant.
    pub fn url(&self, tenant: &str) -> String {
        format!("http://127.0.0.1:{}/{tenant}/v2", self.port)
    }

    /// `127.0.0.1:P`: the backend's address as it appears in URLs it writes.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a request straight to the backend with its own secret. `req.path` is the backend
    /// path, e.g. `/acme/v2/Users`.
    pub fn send(&self, req: Req) -> Resp {
        let req = req
            .authorization(&format!("Bearer {}", self.secret))
            .header("user-agent", DIRECT_USER_AGENT);
        let req = req.into_http(&format!("http://127.0.0.1:{}", self.port));
        rt().block_on(exchange(&self.client, req))
            .unwrap_or_else(|e| panic!("direct backend request failed: {e}"))
    }

    /// A resource as the backend has it, `None` when it answers 404.
    pub fn get(&self, tenant: &str, endpoint: &str, id: &str) -> Option<Value> {
        let r = self.send(Req::get(&format!("/{tenant}/v2/{endpoint}/{id}")));
        match r.status.as_u16() {
            200 => Some(r.json()),
            404 => None,
            _ => panic!("unexpected backend answer for {tenant}/{endpoint}/{id}:\n{r:?}"),
        }
    }

    /// Every resource of an endpoint (`Users`, `Groups`) of a tenant.
    pub fn list(&self, tenant: &str, endpoint: &str) -> Vec<Value> {
        let r = self.send(Req::get(&format!("/{tenant}/v2/{endpoint}?count=1000")));
        r.expect(200);
        r.json()["Resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every resource of an endpoint by id, for before/after comparisons: any created,
    /// deleted or changed resource (`meta.version` changes with every write) shows.
    pub fn state(&self, tenant: &str, endpoint: &str) -> BTreeMap<String, Value> {
        self.list(tenant, endpoint)
            .into_iter()
            .map(|r| {
                let id = r["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a backend resource without id: {r}"))
                    .to_owned();
                (id, r)
            })
            .collect()
    }

    /// The users of a tenant with this userName.
    pub fn users_named(&self, tenant: &str, user_name: &str) -> Vec<Value> {
        self.list(tenant, "Users")
            .into_iter()
            .filter(|u| u["userName"] == user_name)
            .collect()
    }

    /// Creates a resource directly in the backend and returns it.
    pub fn create(&self, tenant: &str, endpoint: &str, body: &Value) -> Value {
        let r = self.send(Req::post(&format!("/{tenant}/v2/{endpoint}"), body));
        r.expect(201);
        r.json()
    }

    /// Stops the backend (SIGKILL), e.g. to see the gateway's 502.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// The backend's stderr so far: the WSGI environ of every request (`--debug`).
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).expect("read the backend log")
    }

    /// Every request the backend logged, harness queries included.
    pub fn requests(&self) -> Vec<BackendRequest> {
        parse_debug_log(&self.debug_log())
    }

    /// The requests the gateway forwarded (the harness's own queries left out).
    pub fn forwarded(&self) -> Vec<BackendRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_direct())
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Splits scim2-server's `--debug` log into requests. Each starts with `DEBUG:log_environ:` and
/// a `pprint`ed dict: one `'KEY': value` per line (the first after `{`, the others after one
/// space); a long string value continues on lines indented further, as adjacent literals
/// (`'Bearer '` then `'abc…'`).
pub fn parse_debug_log(log: &str) -> Vec<BackendRequest> {
    log.split("DEBUG:log_environ:")
        .skip(1)
        .map(|block| BackendRequest {
            environ: parse_environ(block),
        })
        .collect()
}

fn parse_environ(block: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let flush = |entry: Option<(String, String)>, map: &mut BTreeMap<String, String>| {
        if let Some((key, raw)) = entry {
            let raw = raw
                .trim()
                .trim_end_matches('}')
                .trim_end_matches(',')
                .trim();
            let value = if raw.starts_with(['\'', '"', '(']) {
                python_literals(raw).unwrap_or_else(|| raw.to_owned())
            } else {
                raw.to_owned()
            };
            map.insert(key, value);
        }
    };
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("{'").or_else(|| line.strip_prefix(" '")) {
            flush(current.take(), &mut map);
            current = rest
                .split_once("': ")
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
        } else if line.starts_with("  ") {
            if let Some((_, v)) = current.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else {
            flush(current.take(), &mut map);
        }
    }
    flush(current, &mut map);
    map
}

/// Concatenates the Python string literals in `s` (`'a' "b"` → `ab`); `None` when there are none.
fn python_literals(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut found = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\'' && c != '"' {
            continue;
        }
        found = true;
        while let Some(d) = chars.next() {
            match d {
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(e) => out.push(e),
                    None => {}
                },
                d if d == c => break,
                d => out.push(d),
            }
        }
    }
    found.then_some(out)
}

// ---------------------------------------------------------------------------------------------
// A backend that never answers
// ---------------------------------------------------------------------------------------------

/// A TCP listener that accepts connections and never answers on them (a hung backend).
pub struct SilentUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentUpstream {
    pub fn start() -> SilentUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent upstream");
        let addr = listener.local_addr().expect("local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("silent-upstream".into())
            .spawn(move || {
                let mut held = Vec::new();
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        held.push(c);
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .expect("spawn the silent upstream");
        SilentUpstream {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` connections were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A backend that answers when told to
// ---------------------------------------------------------------------------------------------

/// A TCP listener that reads each request's head, holds it until [`HeldUpstream::release`],
/// then answers `200` with a fixed SCIM JSON body and closes the connection: a slow backend
/// whose slowness the test controls (for requests in flight across a reload, say).
pub struct HeldUpstream {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    released: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HeldUpstream {
    pub fn start(body: &str) -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the held upstream");
        let addr = listener.local_addr().expect("local_addr");
        let received = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/scim+json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let (r, rel, s) = (received.clone(), released.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("held-upstream".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let (r, rel, response) = (r.clone(), rel.clone(), response.clone());
                    std::thread::spawn(move || {
                        use std::io::Write;
                        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let (m, cv) = &*rel;
                        let deadline = Instant::now() + REQUEST_TIMEOUT;
                        let mut go = m.lock().unwrap();
                        while !*go && Instant::now() < deadline {
                            go = cv.wait_timeout(go, Duration::from_millis(100)).unwrap().0;
                        }
                        drop(go);
                        let _ = conn.write_all(response.as_bytes());
                        let _ = conn.flush();
                    });
                }
            })
            .expect("spawn the held upstream");
        HeldUpstream {
            addr,
            received,
            released,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests whose head arrived so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` request heads arrived.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.received() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Lets every held request (and every later one) be answered.
    pub fn release(&self) {
        let (m, cv) = &*self.released;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway: configuration, CLI, process
// ---------------------------------------------------------------------------------------------

/// `env!("CARGO_BIN_EXE_scimgate")` as a command, with a predictable log filter.
pub fn scimgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scimgate"));
    c.env("RUST_LOG", "info").stdin(Stdio::null());
    c
}

/// The parts of `gateway.yaml` a test may change.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Upstream of tenant `acme` (the top-level `upstream.url`).
    pub acme_upstream: String,
    /// Upstream of tenant `globex` (its own `upstream:` block).
    pub globex_upstream: String,
    /// `upstream.timeout` for both.
    pub upstream_timeout: String,
    pub max_body_bytes: usize,
    pub shutdown_grace: String,
    /// `upstream.conditional_writes` for both (adds a line after `upstream.timeout` when set).
    pub conditional_writes: bool,
}

impl GatewayOptions {
    pub fn for_backend(backend: &Backend) -> GatewayOptions {
        GatewayOptions {
            acme_upstream: backend.url("acme"),
            globex_upstream: backend.url("globex"),
            upstream_timeout: "5s".into(),
            max_body_bytes: 65536,
            shutdown_grace: "5s".into(),
            conditional_writes: false,
        }
    }

    /// The configuration text. Line numbers are stable: tests rely on them.
    pub fn render(&self) -> String {
        format!(
            "server:\n\
             \x20 listen: 127.0.0.1:0\n\
             \x20 tls: {{ cert: server.crt, key: server.key }}\n\
             \x20 max_body_bytes: {max_body}\n\
             \x20 shutdown_grace: {grace}\n\
             admin_listen: 127.0.0.1:0\n\
             upstream:\n\
             \x20 url: {acme}\n\
             \x20 authorization: \"Bearer ${{SCIMGATE_TEST_BACKEND}}\"\n\
             \x20 timeout: {timeout}\n\
             {conditional}\
             tenants:\n\
             \x20 - id: acme\n\
             \x20   path_prefix: /acme/scim/v2\n\
             \x20   domains: [acme.com, \"*.acme.io\"]\n\
             \x20 - id: globex\n\
             \x20   path_prefix: /globex/scim/v2\n\
             \x20   domains: [globex.com]\n\
             \x20   upstream: {{ url: \"{globex}\", authorization: \"Bearer ${{SCIMGATE_TEST_BACKEND}}\", timeout: {timeout}{globex_conditional} }}\n\
             tokens_file: tokens.yaml\n\
             audit: {{ sink: file, path: audit.log }}\n",
            max_body = self.max_body_bytes,
            grace = self.shutdown_grace,
            acme = self.acme_upstream,
            globex = self.globex_upstream,
            timeout = self.upstream_timeout,
            conditional = if self.conditional_writes {
                "  conditional_writes: true\n"
            } else {
                ""
            },
            globex_conditional = if self.conditional_writes {
                ", conditional_writes: true"
            } else {
                ""
            },
        )
    }
}

/// A gateway configuration directory (config, certificate, key, tokens) that is not running
/// yet: tokens are issued here, before [`Setup::start`], since the gateway reads them at start.
pub struct Setup {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub cert_pem: String,
    /// Exported to the gateway as `SCIMGATE_TEST_BACKEND`.
    pub backend_secret: String,
}

impl Setup {
    /// Writes a configuration in a fresh temporary directory.
    pub fn new(opts: &GatewayOptions, backend_secret: &str) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("scimgate-e2e-gw-")
            .tempdir()
            .expect("tempdir");
        let (cert, key) = scimgate::tls::self_signed().expect("self-signed certificate");
        std::fs::write(dir.path().join("server.crt"), &cert).expect("write the certificate");
        std::fs::write(dir.path().join("server.key"), key).expect("write the key");
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, opts.render()).expect("write gateway.yaml");
        std::fs::write(dir.path().join("tokens.yaml"), "tokens: []\n").expect("write tokens.yaml");
        Setup {
            dir,
            config_path,
            cert_pem: cert,
            backend_secret: backend_secret.to_owned(),
        }
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.dir.path().join("tokens.yaml")
    }

    /// Runs `scimgate <args…> --config <this config>` and returns its output. Bounded: a
    /// command still running after [`CLI_TIMEOUT`] (say, `serve` accepting a configuration it
    /// should refuse) is killed and the test fails.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = scimgate();
        cmd.args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env("SCIMGATE_TEST_BACKEND", &self.backend_secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("scimgate", &mut cmd);
        let stdout = Capture::spawn("scimgate-cli", child.take_stdout());
        let stderr = Capture::spawn("scimgate-cli", child.take_stderr());
        let status = child.wait_exit(CLI_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "`scimgate {}` still running after {CLI_TIMEOUT:?}; stderr so far:\n{}",
                args.join(" "),
                stderr.text()
            )
        });
        // The pipes close when the process exits; wait for the readers to drain them.
        let _ = stdout.wait_for(LOG_TIMEOUT, |_| false);
        let _ = stderr.wait_for(LOG_TIMEOUT, |_| false);
        let join = |c: &Capture| {
            let mut t = c.text();
            if !t.is_empty() {
                t.push('\n');
            }
            t.into_bytes()
        };
        Output {
            status,
            stdout: join(&stdout),
            stderr: join(&stderr),
        }
    }

    /// `scimgate token issue --tenant T --id ID [extra…]`; returns the secret (first stdout line).
    pub fn issue_with(&self, tenant: &str, id: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "issue", "--tenant", tenant, "--id", id];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token issue failed: {}",
            describe(&out)
        );
        let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
        let secret = stdout.lines().next().unwrap_or("").trim().to_owned();
        assert!(
            scimgate::token::looks_like_token(&secret),
            "token issue did not print a token on its first line: {}",
            describe(&out)
        );
        secret
    }

    /// Issues a token with these scopes (none: the CLI's default, the four read/write scopes).
    pub fn issue(&self, tenant: &str, id: &str, scopes: &[&str]) -> String {
        let mut extra = Vec::new();
        for s in scopes {
            extra.push("--scope");
            extra.push(*s);
        }
        self.issue_with(tenant, id, &extra)
    }

    /// `scimgate token <action> --id ID` (suspend, revoke, resume).
    pub fn token_action(&self, action: &str, id: &str) {
        let out = self.cli(&["token", action, "--id", id]);
        assert!(
            out.status.success(),
            "token {action} failed: {}",
            describe(&out)
        );
    }

    /// Edits one entry of tokens.yaml in place.
    pub fn edit_token(&self, id: &str, edit: impl FnOnce(&mut serde_yaml::Mapping)) {
        let path = self.tokens_path();
        let src = std::fs::read_to_string(&path).expect("read tokens.yaml");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&src).expect("parse tokens.yaml");
        let entry = doc["tokens"]
            .as_sequence_mut()
            .expect("tokens: is a list")
            .iter_mut()
            .find(|t| t["id"].as_str() == Some(id))
            .unwrap_or_else(|| panic!("no token {id:?} in tokens.yaml:\n{src}"));
        edit(entry.as_mapping_mut().expect("a token entry is a mapping"));
        std::fs::write(
            &path,
            serde_yaml::to_string(&doc).expect("serialise tokens.yaml"),
        )
        .expect("write tokens.yaml");
    }

    /// `scimgate token rotate --id ID --overlap O`; returns the new secret (first stdout line).
    pub fn rotate(&self, id: &str, overlap: &str) -> String {
        let out = self.cli(&["token", "rotate", "--id", id, "--overlap", overlap]);
        assert!(
            out.status.success(),
            "token rotate failed: {}",
            describe(&out)
        );
        let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
        let secret = stdout.lines().next().unwrap_or("").trim().to_owned();
        assert!(
            scimgate::token::looks_like_token(&secret),
            "token rotate did not print a token on its first line: {}",
            describe(&out)
        );
        secret
    }

    /// The configuration file's text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read gateway.yaml")
    }

    /// Replaces the configuration file's text (written in place, like an editor would).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write gateway.yaml");
    }

    /// Edits the configuration text: `from` must occur in it, and is replaced by `to`.
    pub fn replace_in_config(&self, from: &str, to: &str) {
        let text = self.config_text();
        assert!(
            text.contains(from),
            "{from:?} is not in the configuration:\n{text}"
        );
        self.write_config(&text.replacen(from, to, 1));
    }

    /// The default `state_dir`: `scimgate-state/` beside the configuration.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("scimgate-state")
    }

    /// Starts `scimgate serve` on this configuration and waits until it listens.
    pub fn start(self) -> Gateway {
        Gateway::start(self)
    }
}

/// A well-formed token (right prefix and checksum) that no gateway of the test knows: issued
/// into a scratch configuration.
pub fn foreign_token() -> String {
    let opts = GatewayOptions {
        acme_upstream: "http://127.0.0.1:9/acme/v2".into(),
        globex_upstream: "http://127.0.0.1:9/globex/v2".into(),
        upstream_timeout: "5s".into(),
        max_body_bytes: 65536,
        shutdown_grace: "5s".into(),
        conditional_writes: false,
    };
    Setup::new(&opts, "unused").issue("acme", "foreign", &[])
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `scimgate serve`.
pub struct Gateway {
    /// Checks every audit record this gateway wrote when the test ends. First, so it runs
    /// before `setup` (and its directory) is dropped.
    _audit: AuditCheck,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub setup: Setup,
    stderr: Capture,
    child: ChildGuard,
    http1: HttpsClient,
    alpn: HttpsClient,
    plain: PlainClient,
}

/// On drop (unless the test is already failing), checks every complete line of a gateway's
/// audit log against docs/audit.schema.json and verifies the hash chain: every record the
/// end-to-end suite produces is checked.
pub struct AuditCheck(pub PathBuf);

impl Drop for AuditCheck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(&self.0)
            .unwrap_or_else(|e| panic!("{}: no audit log ({e})", self.0.display()));
        // The writer may be mid-line: only complete lines count.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            check_audit_line(line);
        }
        if let Err(e) = scimgate::audit::verify(complete) {
            panic!("{}: {e}", self.0.display());
        }
    }
}

/// The documented audit schema (docs/audit.schema.json).
pub fn audit_schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!("../../docs/audit.schema.json"))
            .expect("the audit schema is JSON")
    })
}

/// Checks one audit line against the documented schema; returns it parsed.
#[track_caller]
pub fn check_audit_line(line: &str) -> Value {
    let schema = audit_schema();
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
    let obj = v.as_object().expect("an audit record is an object");
    for (k, val) in obj {
        let spec = &schema["properties"][k];
        assert!(spec.is_object(), "undocumented audit field {k:?} in {line}");
        let ok = match spec["type"].as_str() {
            Some("string") => val.is_string(),
            Some("integer") => val.is_u64(),
            Some("array") => val.as_array().is_some_and(|a| {
                a.iter().all(|i| {
                    spec["items"]["enum"]
                        .as_array()
                        .is_some_and(|e| e.contains(i))
                })
            }),
            _ => false,
        };
        assert!(ok, "audit field {k:?} does not match {spec}: {line}");
        if let Some(allowed) = spec["enum"].as_array() {
            assert!(
                allowed.contains(val),
                "audit field {k:?} = {val} is not one of {allowed:?}"
            );
        }
        if let Some(c) = spec.get("const") {
            assert_eq!(val, c, "audit field {k:?}");
        }
    }
    for req in schema["required"].as_array().expect("required") {
        assert!(
            obj.contains_key(req.as_str().unwrap_or("")),
            "audit record without {req}: {line}"
        );
    }
    let required_for = |kind: &str| -> Vec<String> {
        schema["allOf"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["if"]["properties"]["kind"]["const"] == kind)
            .and_then(|c| c["then"]["required"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    for f in required_for(v["kind"].as_str().unwrap_or("")) {
        assert!(
            obj.contains_key(&f),
            "{} record without {f}: {line}",
            v["kind"]
        );
    }
    let prev = v["prev"].as_str().unwrap_or("");
    assert!(
        prev.len() == 64 && prev.bytes().all(|b| b.is_ascii_hexdigit()),
        "bad prev: {line}"
    );
    humantime::parse_rfc3339(v["time"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("bad time ({e}): {line}"));
    v
}

impl Gateway {
    fn start(setup: Setup) -> Gateway {
        let mut cmd = scimgate();
        cmd.arg("serve")
            .arg("--config")
            .arg(&setup.config_path)
            .env("SCIMGATE_TEST_BACKEND", &setup.backend_secret)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("scimgate serve", &mut cmd);
        let stderr = Capture::spawn("scimgate", child.take_stderr());
        let line =
            match stderr.wait_for(STARTUP_TIMEOUT, |l| l.contains("\"message\":\"listening\"")) {
                Ok(l) => l,
                Err(why) => {
                    let status = child.wait_exit(Duration::from_millis(200));
                    panic!(
                    "scimgate serve did not log \"listening\" ({why:?}, exit status {status:?}).\n\
                     config:\n{}\n--- stderr:\n{}",
                    std::fs::read_to_string(&setup.config_path).unwrap_or_default(),
                    stderr.text()
                );
                }
            };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the listening line is not JSON ({e}): {line}"));
        let addr_of = |field: &str| -> SocketAddr {
            v[field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("the listening line has no usable {field:?}: {line}"))
        };
        let addr = addr_of("addr");
        let admin_addr = addr_of("admin_addr");
        let (http1, alpn) = {
            let _rt = rt().enter();
            (
                https_client(&setup.cert_pem, Alpn::Http1),
                https_client(&setup.cert_pem, Alpn::Both),
            )
        };
        let audit = AuditCheck(setup.dir.path().join("audit.log"));
        Gateway {
            addr,
            admin_addr,
            setup,
            stderr,
            child,
            http1,
            alpn,
            plain: plain_client(),
            _audit: audit,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:<port>`: what the client addresses.
    pub fn origin(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Sends over HTTP/1.1.
    pub fn send(&self, req: Req) -> Resp {
        self.try_send(req)
            .unwrap_or_else(|e| panic!("{e}\n--- gateway stderr:\n{}", self.stderr.text()))
    }

    /// Sends over HTTP/1.1; a transport failure is an `Err`.
    pub fn try_send(&self, req: Req) -> Result<Resp, String> {
        let req = req.into_http(&self.origin());
        rt().block_on(exchange(&self.http1, req))
    }

    /// Like [`Gateway::try_send`], waiting at most `timeout` for the response (for a request the
    /// test holds up on purpose).
    pub fn try_send_within(&self, req: Req, timeout: Duration) -> Result<Resp, String> {
        let req = req.into_http(&self.origin());
        rt().block_on(exchange_within(&self.http1, req, timeout))
    }

    /// Sends over a new HTTP/1.1 connection from a client that trusts only `cert_pem` (to see
    /// which certificate the gateway presents to new connections).
    pub fn try_send_trusting(&self, cert_pem: &str, req: Req) -> Result<Resp, String> {
        let client = {
            let _rt = rt().enter();
            https_client(cert_pem, Alpn::Http1)
        };
        let req = req.into_http(&self.origin());
        rt().block_on(exchange(&client, req))
    }

    /// Sends offering ALPN `h2` and `http/1.1` (the server picks; it should pick h2).
    pub fn send_alpn(&self, req: Req) -> Resp {
        let req = req.into_http(&self.origin());
        rt().block_on(exchange(&self.alpn, req))
            .unwrap_or_else(|e| panic!("{e}\n--- gateway stderr:\n{}", self.stderr.text()))
    }

    /// Plain-HTTP GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Resp {
        let req = Req::get(path).into_http(&format!("http://{}", self.admin_addr));
        rt().block_on(exchange(&self.plain, req))
            .unwrap_or_else(|e| panic!("admin request failed: {e}"))
    }

    /// Everything the gateway wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The access-log lines (target `scimgate::access`) written so far, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        self.stderr
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "scimgate::access")
            .collect()
    }

    /// Waits (bounded) until `n` access-log lines were written, then returns all of them. Lines
    /// reach stderr up to a few milliseconds after the response (they are written in batches).
    pub fn access_log_n(&self, n: usize) -> Vec<Value> {
        let mut seen = 0;
        let found = self.stderr.wait_for(LOG_TIMEOUT, |l| {
            if serde_json::from_str::<Value>(l).is_ok_and(|v| v["target"] == "scimgate::access") {
                seen += 1;
            }
            seen >= n
        });
        if let Err(why) = found {
            panic!(
                "fewer than {n} access-log lines ({why:?}); stderr:\n{}",
                self.stderr.text()
            );
        }
        self.access_log()
    }

    /// Waits (bounded) for an access-log line satisfying `pred` and returns it.
    pub fn access_line(&self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let found = self.stderr.wait_for(LOG_TIMEOUT, |l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["target"] == "scimgate::access" && pred(&v))
        });
        match found {
            Ok(l) => serde_json::from_str(&l).expect("JSON"),
            Err(why) => panic!(
                "no matching access-log line ({why:?}); stderr:\n{}",
                self.stderr.text()
            ),
        }
    }

    /// Waits (bounded) for the access-log line of the request with this `X-Request-Id`.
    pub fn access_log_for(&self, request_id: &str) -> Value {
        self.access_line(|v| v["request_id"] == request_id)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (and does not wait).
    pub fn sigterm(&self) {
        self.child.sigterm();
    }

    /// Waits (bounded) for the gateway to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.sigterm();
        self.child.wait_exit(timeout)
    }

    /// Waits (bounded) for a stderr line satisfying `pred`.
    pub fn wait_log(&self, pred: impl FnMut(&str) -> bool) -> Result<String, WaitError> {
        self.stderr.wait_for(LOG_TIMEOUT, pred)
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// How many stderr lines the gateway wrote so far: a mark for [`Gateway::wait_log_from`].
    pub fn log_mark(&self) -> usize {
        self.stderr.mark()
    }

    /// Waits (bounded by `timeout`) for a stderr line written after `mark` satisfying `pred`.
    pub fn wait_log_from(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Result<String, WaitError> {
        self.stderr.wait_for_from(mark, timeout, pred)
    }

    /// The JSON stderr lines written after `mark`, parsed.
    pub fn log_lines_from(&self, mark: usize) -> Vec<Value> {
        self.stderr
            .lines()
            .iter()
            .skip(mark)
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// Sends SIGHUP (through kill(1)).
    pub fn sighup(&self) {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("cannot run kill")
            .success();
        assert!(ok, "kill -HUP {} failed", self.pid());
    }

    /// Stops the gateway (killing it if it is still running) and hands its configuration
    /// directory back, e.g. to start it again.
    pub fn into_setup(mut self) -> Setup {
        self.child.kill();
        self.setup
    }
}

/// Starts a backend and writes a gateway configuration for it (default options edited by
/// `tweak`); issue tokens on the returned [`Setup`], then [`Setup::start`] it.
pub fn backend_and_setup(tweak: impl FnOnce(&mut GatewayOptions)) -> (Backend, Setup) {
    let backend = Backend::start();
    let mut opts = GatewayOptions::for_backend(&backend);
    tweak(&mut opts);
    let setup = Setup::new(&opts, &backend.secret);
    (backend, setup)
}

// ---------------------------------------------------------------------------------------------
// SCIM bodies
// ---------------------------------------------------------------------------------------------

pub fn user_body(user_name: &str) -> Value {
    serde_json::json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "name": { "givenName": "Test", "familyName": "User" },
        "emails": [{ "value": user_name, "type": "work", "primary": true }],
        "active": true
    })
}

pub fn group_body(display_name: &str) -> Value {
    serde_json::json!({ "schemas": [GROUP_SCHEMA], "displayName": display_name })
}

/// A PatchOp with these operations.
pub fn patch_body(ops: Value) -> Value {
    serde_json::json!({ "schemas": [PATCH_SCHEMA], "Operations": ops })
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Asserts a SCIM error response (RFC 7644 §3.12) with this status; returns the body.
#[track_caller]
pub fn assert_scim_error(resp: &Resp, status: u16) -> Value {
    resp.expect(status);
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/scim+json"),
        "error content-type is {ct:?}, not application/scim+json; response:\n{resp:?}"
    );
    let body = resp.json();
    let schemas = body["schemas"].as_array().cloned().unwrap_or_default();
    assert!(
        schemas.iter().any(|s| s == ERROR_SCHEMA),
        "error body lacks the SCIM Error schema; response:\n{resp:?}"
    );
    assert_eq!(
        body["status"],
        Value::String(status.to_string()),
        "error body status must be the string {status:?}; response:\n{resp:?}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "error body has no detail; response:\n{resp:?}"
    );
    body
}

/// Asserts the gateway's 401: SCIM error and `WWW-Authenticate`.
#[track_caller]
pub fn assert_unauthorized(resp: &Resp) -> Value {
    let body = assert_scim_error(resp, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(WWW_AUTHENTICATE_401),
        "401 without the expected WWW-Authenticate; response:\n{resp:?}"
    );
    body
}

/// Asserts that no header or body byte of `resp` names the backend's address.
#[track_caller]
pub fn assert_no_backend_address(resp: &Resp, backend: &Backend) {
    let authority = backend.authority();
    let port_marker = format!(":{}/", backend.port);
    for (n, v) in &resp.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !v.contains(&authority) && !v.contains(&port_marker),
            "header {n} leaks the backend address {authority}; response:\n{resp:?}"
        );
    }
    let text = resp.text();
    assert!(
        !text.contains(&authority) && !text.contains(&port_marker),
        "body leaks the backend address {authority}; response:\n{resp:?}"
    );
}

/// Asserts the client's token string never reached the backend (nor its secret part alone).
#[track_caller]
pub fn assert_token_not_at_backend(backend: &Backend, token: &str) {
    let log = backend.debug_log();
    let secret_part = token.strip_prefix(scimgate::token::PREFIX).unwrap_or(token);
    assert!(
        !log.contains(token) && !log.contains(secret_part),
        "the client's token reached the backend; backend log:\n{}",
        tail(&log, 6000)
    );
}

/// Asserts the gateway forwarded nothing at all to the backend.
#[track_caller]
pub fn assert_nothing_forwarded(backend: &Backend) {
    let fwd = backend.forwarded();
    assert!(
        fwd.is_empty(),
        "the backend received {} request(s) it should not have: {:?}",
        fwd.len(),
        fwd.iter()
            .map(|r| format!("{} {}", r.method(), r.path()))
            .collect::<Vec<_>>()
    );
}
