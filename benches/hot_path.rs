//! Criterion micro-benchmarks of the per-request work, each beside a baseline measured in the
//! same run (compare ratios, not absolute times):
//!
//! - token validation (hit, miss, malformed) with 10 and 1M tokens, against a bare hash-map probe
//! - the routing and scope decision for a typical request
//! - User body inspection (1 KB and 100 KB): strict parse + domain judgement, against serde_json
//! - list-response filtering of 100 users
//! - PATCH analysis
//! - the rate-limiter check with 1, 10k and 1M keys
//! - the per-request access line, built directly against tracing-subscriber's JSON formatter
//! - the whole tower stack in-process against the in-memory backend, against calling the
//!   backend directly
//!
//! `cargo bench --bench hot_path` (add `-- --quick` for a fast pass).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use scimgate::config::{Rate, TokenRecord, TokenStatus};
use scimgate::policy::domain::{DomainPattern, DomainSet};
use scimgate::policy::patch::judge_user_patch;
use scimgate::policy::route::{classify, normalize_path};
use scimgate::policy::scope::{authorize, Scope};
use scimgate::policy::user::{
    check_attribute_names, scan_user_addresses, user_write_member, DomainPolicy, USER_ATTRS,
};
use scimgate::ratelimit::{check, quota, Keyed};
use scimgate::scim::json::{parse_strict, parse_strict_keeping, Keep, MAX_DEPTH};
use scimgate::token::TokenIndex;
use serde_json::{json, Value};
use std::sync::Arc;

fn record(id: usize, secret: &str) -> TokenRecord {
    TokenRecord {
        id: format!("t{id}"),
        tenant: "acme".into(),
        sha256: hex::encode(scimgate::token::hash(secret)),
        scopes: Scope::ALL.to_vec(),
        domains: None,
        expires_at: None,
        idle_timeout: None,
        status: TokenStatus::Active,
        created_at: None,
        hint: None,
        rate_limit: None,
        previous: None,
    }
}

fn index(n: usize) -> (Arc<TokenIndex>, String) {
    let domains = DomainSet::new(vec![DomainPattern::parse("acme.com").unwrap()]);
    let mut hit = String::new();
    let records: Vec<_> = (0..n)
        .map(|i| {
            let secret = scimgate::token::generate().unwrap();
            if i == n / 2 {
                hit = secret.clone();
            }
            record(i, &secret)
        })
        .collect();
    let idx = Arc::new(TokenIndex::from_records(&records, &domains, 0));
    (idx, hit)
}

fn tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_validation");
    let miss = scimgate::token::generate().unwrap();
    let mut malformed = miss.clone();
    malformed.replace_range(20..21, if &miss[20..21] == "A" { "B" } else { "A" });
    for n in [10usize, 1_000_000] {
        let (idx, hit) = index(n);
        g.bench_with_input(BenchmarkId::new("hit", n), &idx, |b, idx| {
            b.iter(|| idx.validate(black_box(&hit), 1))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &idx, |b, idx| {
            b.iter(|| idx.validate(black_box(&miss), 1))
        });
        g.bench_with_input(BenchmarkId::new("malformed", n), &idx, |b, idx| {
            b.iter(|| idx.validate(black_box(&malformed), 1))
        });
    }
    let map: std::collections::HashMap<[u8; 32], u32> =
        (0..10u32).map(|i| ([i as u8; 32], i)).collect();
    g.bench_function("baseline_hashmap_probe", |b| {
        b.iter(|| map.get(black_box(&[3u8; 32])))
    });
    g.finish();
}

fn decision(c: &mut Criterion) {
    let scopes = Scope::ALL.iter().copied().collect();
    c.bench_function("route_and_scope/GET_user", |b| {
        b.iter(|| {
            let p = normalize_path(black_box(
                "/acme/scim/v2/Users/2819c223-7f76-453a-919d-413861904646",
            ))
            .unwrap();
            let rest = p.strip_prefix("/acme/scim/v2").unwrap();
            let op = classify(&http::Method::GET, rest).unwrap();
            authorize(scopes, &op).unwrap();
            op
        })
    });
}

fn user(n_extra: usize) -> Value {
    let filler: String = "x".repeat(n_extra);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "ada.lovelace@acme.com",
        "name": {"givenName": "Ada", "familyName": "Lovelace", "formatted": filler},
        "displayName": "Ada Lovelace",
        "active": true,
        "emails": [{"value": "ada.lovelace@acme.com", "type": "work", "primary": true}, {"value": "ada@acme.com", "type": "home"}],
        "phoneNumbers": [{"value": "+44 20 7946 0000", "type": "work"}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "1815", "department": "Analytical Engines"}
    })
}

fn inspection(c: &mut Criterion) {
    let domains = DomainSet::new(vec![
        DomainPattern::parse("acme.com").unwrap(),
        DomainPattern::parse("*.acme.io").unwrap(),
    ]);
    let policy = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    let mut g = c.benchmark_group("user_body");
    for (name, extra) in [("1KB", 500usize), ("100KB", 100_000)] {
        let bytes = serde_json::to_vec(&user(extra)).unwrap();
        g.bench_function(BenchmarkId::new("strict_parse_and_judge", name), |b| {
            b.iter(|| {
                let v = parse_strict(black_box(&bytes), MAX_DEPTH).unwrap();
                policy.judge_user(&v).unwrap();
            })
        });
        // What GET /Users/{id} and write answers do: addresses read straight from the text.
        g.bench_function(BenchmarkId::new("scan_and_judge", name), |b| {
            b.iter(|| {
                let a = scan_user_addresses(black_box(&bytes)).unwrap();
                policy.judge(&a).unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("baseline_serde_json_parse", name), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&bytes)).unwrap())
        });
    }
    // The user the load benchmark's backend returns: short strings, as real users have.
    let realistic = include_bytes!("load/user.json");
    g.bench_function(BenchmarkId::new("scan_and_judge", "load_user"), |b| {
        b.iter(|| {
            let a = scan_user_addresses(black_box(realistic)).unwrap();
            policy.judge(&a).unwrap();
        })
    });
    // The least any serde_json reading of that user costs: its UTF-8 checked, every value
    // skipped. What the scan and judgement add is the time over this.
    g.bench_function(
        BenchmarkId::new("baseline_serde_json_skip", "load_user"),
        |b| {
            b.iter(|| {
                let text = std::str::from_utf8(black_box(realistic)).unwrap();
                serde_json::from_str::<serde::de::IgnoredAny>(text).unwrap()
            })
        },
    );
    // The body the load benchmark POSTs: what a create is parsed and judged from.
    let create = include_bytes!("load/create-user.json");
    g.bench_function(
        BenchmarkId::new("strict_parse_and_judge", "create_user"),
        |b| {
            b.iter(|| {
                let v = parse_strict(black_box(create), MAX_DEPTH).unwrap();
                policy.judge_user(&v).unwrap();
            })
        },
    );
    // Everything a POST /Users body is judged on: names, addresses. The gateway builds only the
    // members those decisions read (`selected`); `whole_tree` is what it built before.
    for (name, keep) in [
        ("whole_tree", Keep::Whole),
        ("selected", Keep::Select(user_write_member)),
    ] {
        g.bench_function(BenchmarkId::new("create_check", name), |b| {
            b.iter(|| {
                let v = parse_strict_keeping(black_box(create), MAX_DEPTH, keep).unwrap();
                check_attribute_names(&v, USER_ATTRS).unwrap();
                policy.judge_user(&v).unwrap();
            })
        });
    }
    g.bench_function(
        BenchmarkId::new("baseline_serde_json_parse", "create_user"),
        |b| b.iter(|| serde_json::from_slice::<Value>(black_box(create)).unwrap()),
    );
    g.bench_function(
        BenchmarkId::new("baseline_serde_json_parse", "load_user"),
        |b| b.iter(|| serde_json::from_slice::<Value>(black_box(realistic)).unwrap()),
    );
    g.finish();

    let list: Vec<Value> = (0..100)
        .map(|i| {
            let mut u = user(200);
            if i % 3 == 0 {
                u["emails"][1]["value"] = json!("x@evil.com");
            }
            u
        })
        .collect();
    c.bench_function("list_filter/100_users", |b| {
        b.iter_batched(
            || list.clone(),
            |l| {
                l.into_iter()
                    .filter(|u| policy.judge_user(u).is_ok())
                    .count()
            },
            BatchSize::SmallInput,
        )
    });

    let stored = user(100);
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ada.l@acme.com"},
        {"op": "replace", "value": {"displayName": "Ada L", "name.givenName": "Ada"}},
        {"op": "add", "path": "phoneNumbers", "value": [{"value": "+44", "type": "mobile"}]}
    ]});
    c.bench_function("patch_analysis/entra_style", |b| {
        b.iter(|| judge_user_patch(black_box(&stored), black_box(&patch), &policy))
    });
}

fn limiter(c: &mut Criterion) {
    let rate = Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    let mut g = c.benchmark_group("rate_limiter_check");
    for n in [1usize, 10_000, 1_000_000] {
        let l: Keyed = governor::RateLimiter::dashmap(quota(rate).unwrap())
            .with_middleware::<governor::middleware::StateInformationMiddleware>();
        let hasher = scimgate::ratelimit::KeyHasher::default();
        let keys: Vec<u64> = (0..n)
            .map(|i| hasher.key("token", &format!("t{i}")))
            .collect();
        for &k in &keys {
            check(&l, k, 1, rate);
        }
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                check(&l, keys[i], 1, rate)
            })
        });
    }
    g.finish();
}

fn stack(c: &mut Criterion) {
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let credential = "Bearer bench-backend";
    let (scim, addr) = rt
        .block_on(scimgate::demo::backend::spawn("/acme/v2", credential))
        .unwrap();
    let cfg = scimgate::test_util::write_config(dir.path(), addr, credential);
    let secret =
        scimgate::test_util::add_token(&cfg, "bench", "acme", &Scope::ALL, Some(&["acme.com"]));
    // Rate limits high enough never to trigger.
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "rate_limits:\n  token: { per_second: 10000000, burst: 10000000 }\n";
    std::fs::write(&cfg, text).unwrap();
    let handle = scimgate::policy::handle(scimgate::test_util::load_policy(&cfg));
    let (status, body, _) = scim.handle(
        &http::Method::POST,
        "/acme/v2/Users",
        &addr.to_string(),
        Some(credential),
        &serde_json::to_vec(&user(300)).unwrap(),
    );
    assert_eq!(status, http::StatusCode::CREATED);
    let id = body.unwrap()["id"].as_str().unwrap().to_owned();
    let svc = scimgate::proxy::stack::<Full<bytes::Bytes>>(handle);
    let client = scimgate::proxy::upstream::build_client(None).unwrap();

    let mut g = c.benchmark_group("in_process_GET_user");
    g.bench_function("baseline_backend_direct", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get(format!("http://{addr}/acme/v2/Users/{id}"))
                .header("authorization", credential)
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
    });
    g.bench_function("through_scimgate_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get(format!("/acme/scim/v2/Users/{id}"))
                .header("host", "gw.example")
                .header("authorization", format!("Bearer {secret}"))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        })
    });
    g.finish();
}

/// The access line as scimgate writes it, against the same line through tracing-subscriber's
/// JSON formatter (what it used before), both into a sink.
fn access_line(c: &mut Criterion) {
    use scimgate::telemetry::JsonLine;
    let path = "/acme/scim/v2/Users/2819c223-7f76-453a-919d-413861904646";
    let mut g = c.benchmark_group("access_line");
    g.bench_function("direct", |b| {
        b.iter(|| {
            let mut l = JsonLine::info("request");
            l.opt_str("request_id", Some("f190dc51-000000000002"))
                .opt_str("tenant", Some("acme"))
                .opt_str("token_id", Some("bench"))
                .str("method", "GET")
                .opt_str("path", Some(black_box(path)))
                .num("raw_path_len", 56)
                .opt_str("operation", Some("get"))
                .str("decision", "allow")
                .opt_str("reason", None)
                .num("status", 200)
                .opt_num("upstream_status", Some(200))
                .opt_str("policy_version", Some("506e366ea1ca089a"))
                .num("duration_us", 812);
            std::io::Write::write_all(&mut std::io::sink(), &l.finish("scimgate::access"))
        })
    });
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        g.bench_function("baseline_tracing_json", |b| {
            b.iter(|| {
                tracing::info!(
                    target: "scimgate::access",
                    request_id = Some("f190dc51-000000000002"),
                    tenant = Some("acme"),
                    token_id = Some("bench"),
                    method = "GET",
                    path = Some(black_box(path)),
                    raw_path_len = 56u64,
                    operation = Some("get"),
                    decision = "allow",
                    reason = None::<&str>,
                    status = 200u16,
                    upstream_status = Some(200u16),
                    policy_version = Some("506e366ea1ca089a"),
                    duration_us = 812u64,
                    "request"
                )
            })
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    tokens,
    decision,
    inspection,
    access_line,
    limiter,
    stack
);
criterion_main!(benches);
