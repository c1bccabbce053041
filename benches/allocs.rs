//! Heap allocations per request through the whole tower stack, in-process, against the
//! in-memory backend: GET /Users/{id}, GET /Users?filter, POST /Users and PATCH /Users/{id},
//! with the access line and the audit record on, as in production.
//!
//! Unlike time, the count does not drift with the machine, so two commits compare exactly. It
//! counts the request's own thread (the stack and the pooled client's connection task); the
//! backend runs on another thread and is not counted, nor is the audit writer's thread.
//!
//!   cargo bench --bench allocs
//!   ALLOC_SITES=get cargo bench --bench allocs   # also where a GET's allocations come from
//!
//! The baseline row is the same request sent to the backend directly with the pooled client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use scimgate::policy::scope::Scope;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use tower::ServiceExt;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static SITES: Cell<bool> = const { Cell::new(false) };
    static IN_SITE: Cell<bool> = const { Cell::new(false) };
}

static mut SITE_LOG: Option<Vec<(std::backtrace::Backtrace, usize)>> = None;

#[global_allocator]
static GLOBAL: Counting = Counting;

impl Counting {
    fn note(size: usize) {
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                COUNT.with(|n| n.set(n.get() + 1));
                BYTES.with(|b| b.set(b.get() + size as u64));
                if SITES.with(Cell::get) && !IN_SITE.with(Cell::get) {
                    IN_SITE.with(|s| s.set(true));
                    c.set(false);
                    let bt = std::backtrace::Backtrace::force_capture();
                    // SAFETY: only the counting thread touches the log, and only here and in
                    // `take_sites`, never at the same time.
                    #[allow(static_mut_refs)]
                    unsafe {
                        SITE_LOG.get_or_insert_with(Vec::new).push((bt, size))
                    };
                    c.set(true);
                    IN_SITE.with(|s| s.set(false));
                }
            }
        });
    }
}

// SAFETY: forwards to mimalloc, as the binary does; the bookkeeping allocates nothing itself
// except while capturing a site, which is guarded against re-entry.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        Self::note(l.size());
        mimalloc::MiMalloc.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        Self::note(l.size());
        mimalloc::MiMalloc.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        Self::note(new);
        mimalloc::MiMalloc.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        mimalloc::MiMalloc.dealloc(p, l)
    }
}

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    COUNT.with(|n| n.set(0));
    BYTES.with(|b| b.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, COUNT.with(Cell::get), BYTES.with(Cell::get))
}

fn take_sites() -> Vec<(std::backtrace::Backtrace, usize)> {
    #[allow(static_mut_refs)]
    // SAFETY: see `note`; counting is off here.
    unsafe {
        SITE_LOG.take().unwrap_or_default()
    }
}

/// The first source positions of a captured allocation site outside the standard library
/// and this file: `function (file:line)`, innermost first.
fn site_key(bt: &std::backtrace::Backtrace) -> String {
    let text = format!("{bt}");
    let mut frames = Vec::new();
    let mut name = "";
    for line in text.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            let skip = ["/rustc/", "benches/allocs.rs", "mimalloc"];
            if skip.iter().any(|s| at.contains(s)) {
                continue;
            }
            let at = at.rsplit_once(":").map_or(at, |(a, _col)| a);
            let at = at.split("/src/").last().unwrap_or(at);
            let short: String = name.chars().take(40).collect();
            frames.push(format!("{short} ({at})"));
            if frames.len() == 3 {
                break;
            }
        } else if let Some((_, n)) = line.split_once(": ") {
            name = n;
        }
    }
    frames.join(" <- ")
}

/// Builds the next request of a scenario.
type MakeRequest = Box<dyn FnMut() -> http::Request<Full<Bytes>>>;

const USER: &str = include_str!("load/user.json");
const CREATE: &str = include_str!("load/create-user.json");
const PATCH: &str = include_str!("load/patch-user.json");

fn main() {
    const N: u64 = 200;
    // The access line is built and written as in production, into /dev/null.
    #[cfg(unix)]
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: replaces this process's stderr with /dev/null; no Rust handle owns fd 2.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
    let _log = scimgate::telemetry::init();

    let dir = tempfile::tempdir().expect("tempdir");
    let credential = "Bearer bench-backend";
    let backend_rt = tokio::runtime::Runtime::new().expect("runtime");
    let (scim, addr) = backend_rt
        .block_on(scimgate::demo::backend::spawn("/acme/v2", credential))
        .expect("backend");
    let cfg = scimgate::test_util::write_config(dir.path(), addr, credential);
    let secret =
        scimgate::test_util::add_token(&cfg, "bench", "acme", &Scope::ALL, Some(&["acme.com"]));
    let text = std::fs::read_to_string(&cfg).expect("config")
        + "rate_limits:\n  token: { per_second: 10000000, burst: 10000000 }\n\
           audit: { sink: file, path: audit.log }\n";
    std::fs::write(&cfg, text).expect("config");
    let config = scimgate::config::load(&cfg).unwrap_or_else(|p| panic!("{p}"));
    let runtime = scimgate::policy::Runtime {
        audit: scimgate::audit::Audit::start(&config.gateway.audit, dir.path()).expect("audit"),
        ..Default::default()
    };
    let policy =
        scimgate::policy::Policy::compile_with(&config, &runtime).unwrap_or_else(|p| panic!("{p}"));
    let svc = scimgate::proxy::stack::<Full<Bytes>>(scimgate::policy::handle(policy));
    let client = scimgate::proxy::upstream::build_client(None).expect("client");

    let (status, body, _) = scim.handle(
        &http::Method::POST,
        "/acme/v2/Users",
        &addr.to_string(),
        Some(credential),
        USER.as_bytes(),
    );
    assert_eq!(status, http::StatusCode::CREATED);
    let id = body.expect("created")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let filter = "filter=userName%20eq%20%22ada%40acme.com%22";
    let mut n = 0u64;
    let scenario = |method: &str, path: String, body: &str| {
        let method = method.to_owned();
        let body = body.to_owned();
        let secret = secret.clone();
        let path_c = path.clone();
        move || {
            n += 1;
            let body = if method == "POST" {
                // A fresh userName each time: the backend refuses duplicates.
                body.replace("\"userName\": \"", &format!("\"userName\": \"n{n}."))
            } else {
                body.clone()
            };
            let mut b = http::Request::builder()
                .method(method.as_str())
                .uri(path_c.clone())
                .header("host", "gw.example")
                .header("authorization", format!("Bearer {secret}"))
                .header("accept", "application/scim+json");
            if !body.is_empty() {
                b = b.header("content-type", "application/scim+json");
            }
            b.body(Full::new(Bytes::from(body))).expect("request")
        }
    };
    let cases: Vec<(&str, MakeRequest)> = vec![
        (
            "get",
            Box::new(scenario("GET", format!("/acme/scim/v2/Users/{id}"), "")),
        ),
        (
            "list",
            Box::new(scenario("GET", format!("/acme/scim/v2/Users?{filter}"), "")),
        ),
        (
            "post",
            Box::new(scenario("POST", "/acme/scim/v2/Users".into(), CREATE)),
        ),
        (
            "patch",
            Box::new(scenario(
                "PATCH",
                format!("/acme/scim/v2/Users/{id}"),
                PATCH,
            )),
        ),
    ];
    let sites = std::env::var("ALLOC_SITES").unwrap_or_default();
    println!("| scenario | allocations/request | bytes/request | baseline: backend direct |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, mut make) in cases {
        let one = |req: http::Request<Full<Bytes>>| {
            rt.block_on(async {
                let resp = svc.clone().oneshot(req).await.expect("infallible");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(status.is_success(), "{name}: {status} {body:?}");
            })
        };
        for _ in 0..20 {
            one(make());
        }
        let mut total = (0, 0);
        for _ in 0..N {
            let req = make();
            let ((), a, b) = counted(|| one(req));
            total = (total.0 + a, total.1 + b);
        }
        // The same request straight to the backend through the pooled client.
        let direct = |req: http::Request<Full<Bytes>>| {
            rt.block_on(async {
                let (mut parts, body) = req.into_parts();
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let pq = pq.replacen("/acme/scim/v2", "/acme/v2", 1);
                parts.uri = format!("http://{addr}{pq}").parse().expect("uri");
                parts.headers.insert(
                    "authorization",
                    http::HeaderValue::from_static("Bearer bench-backend"),
                );
                let resp = client
                    .request(http::Request::from_parts(parts, body))
                    .await
                    .expect("backend");
                resp.into_body().collect().await.expect("body").to_bytes()
            })
        };
        for _ in 0..20 {
            direct(make());
        }
        let mut base = 0;
        for _ in 0..N {
            let req = make();
            let (_, a, _) = counted(|| direct(req));
            base += a;
        }
        println!(
            "| {name} | {:.1} | {} | {:.1} |",
            total.0 as f64 / N as f64,
            total.1 / N,
            base as f64 / N as f64
        );
        if sites == name {
            SITES.with(|s| s.set(true));
            let k = 20;
            for _ in 0..k {
                let req = make();
                counted(|| one(req));
            }
            SITES.with(|s| s.set(false));
            let mut by: HashMap<String, (u64, u64)> = HashMap::new();
            for (bt, size) in take_sites() {
                let e = by.entry(site_key(&bt)).or_default();
                e.0 += 1;
                e.1 += size as u64;
            }
            let mut by: Vec<_> = by.into_iter().collect();
            by.sort_by_key(|b| std::cmp::Reverse(b.1));
            for (site, (c, bytes)) in by {
                println!("    {:5.1} {:6}  {site}", c as f64 / k as f64, bytes / k);
            }
        }
    }
}
