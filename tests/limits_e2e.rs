//! End-to-end tests of rate limits, brute-force throttling, Bulk cost, blast-radius caps and
//! concurrency bounds: the real gateway over TLS in front of the real SCIM backend.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn acme(path: &str) -> String {
    format!("{ACME_PREFIX}{path}")
}

/// Appends top-level keys to the configuration.
fn with_config(setup: &Setup, extra: &str) {
    let text = setup.config_text() + extra;
    setup.write_config(&text);
}

/// Sends `n` cheap requests and counts the statuses; returns (ok, limited, elapsed).
fn burst(gw: &Gateway, token: &str, n: usize) -> (usize, Vec<Resp>, Duration) {
    let start = Instant::now();
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..n {
        let r = gw.send(Req::get(&acme("/ServiceProviderConfig")).bearer(token));
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            other => panic!("unexpected status {other}: {r:?}"),
        }
    }
    (ok, limited, start.elapsed())
}

#[test]
fn a_token_gets_exactly_its_burst_then_429_with_headers_and_others_are_unaffected() {
    let (_backend, setup) = backend_and_setup(|_| {});
    with_config(
        &setup,
        "rate_limits:\n  token: { per_second: 1, burst: 5 }\n",
    );
    let a = setup.issue("acme", "entra-a", &[]);
    let b = setup.issue("acme", "entra-b", &[]);
    let gw = setup.start();

    let (ok, limited, elapsed) = burst(&gw, &a, 12);
    // One cell comes back per second: a slow machine may earn extra ones while sending.
    let refilled = elapsed.as_secs() as usize;
    assert!(
        (5..=5 + refilled).contains(&ok),
        "{ok} of 12 passed in {elapsed:?}, expected the burst of 5"
    );
    let r = &limited[0];
    let body = assert_scim_error(r, 429);
    assert!(body["detail"].as_str().unwrap_or("").contains("rate limit"));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"token\";q=5;w=5"));
    let status = r.header("ratelimit").expect("RateLimit");
    assert!(status.starts_with("\"token\";r=0;t="), "{status}");

    // Another token's budget is untouched, and allowed responses carry the remaining quota.
    let r = gw.send(Req::get(&acme("/ServiceProviderConfig")).bearer(&b));
    r.expect(200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"token\";q=5;w=5"));
    assert!(r
        .header("ratelimit")
        .expect("RateLimit")
        .starts_with("\"token\";r=4;"));

    // The refusal is in the access log with its reason.
    gw.access_line(|l| l["reason"] == "token_rate_limited" && l["status"] == 429);
}

#[test]
fn a_tenant_limit_caps_all_its_tokens_together() {
    let (_backend, setup) = backend_and_setup(|_| {});
    with_config(
        &setup,
        "rate_limits:\n  token: { per_second: 1000, burst: 1000 }\n  tenant: { per_second: 1, burst: 4 }\n",
    );
    let a = setup.issue("acme", "a", &[]);
    let b = setup.issue("acme", "b", &[]);
    let c = setup.issue("globex", "c", &[]);
    let gw = setup.start();
    let (ok_a, _, t1) = burst(&gw, &a, 3);
    let (ok_b, limited_b, t2) = burst(&gw, &b, 3);
    let extra = (t1 + t2).as_secs() as usize;
    assert!(
        (4..=4 + extra).contains(&(ok_a + ok_b)),
        "{ok_a} + {ok_b} passed"
    );
    assert_eq!(
        limited_b[0].header("ratelimit-policy"),
        Some("\"tenant\";q=4;w=4")
    );
    // Another tenant has its own aggregate.
    gw.send(Req::get("/globex/scim/v2/ServiceProviderConfig").bearer(&c))
        .expect(200);
}

#[test]
fn repeated_bad_tokens_from_one_address_are_throttled_before_any_lookup() {
    let (_backend, setup) = backend_and_setup(|_| {});
    with_config(
        &setup,
        "rate_limits:\n  auth_failures: { max: 3, window: 1m }\n",
    );
    let good = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    for _ in 0..3 {
        let r = gw.send(Req::get(&acme("/Users")).bearer(&foreign_token()));
        assert_scim_error(&r, 401);
    }
    // From now on this address gets 429, even with a valid token, until the window passes.
    let r = gw.send(Req::get(&acme("/Users")).bearer(&good));
    assert_scim_error(&r, 429);
    assert!(r.header("retry-after").is_some());
    let r = gw.send(Req::get(&acme("/Users")).bearer(&foreign_token()));
    assert_scim_error(&r, 429);
    gw.wait_log(|l| l.contains("authentication failures reached the limit"))
        .expect("a warning that the limit was reached");
    gw.access_line(|l| l["reason"] == "auth_throttled");
}

#[test]
fn a_bulk_request_costs_one_unit_per_operation() {
    let (_backend, setup) = backend_and_setup(|_| {});
    with_config(
        &setup,
        "rate_limits:\n  token: { per_second: 1, burst: 6 }\n",
    );
    let token = setup.issue("acme", "bulk", &["users:read", "users:write", "bulk"]);
    let gw = setup.start();
    let ops: Vec<_> = (0..4)
        .map(|i| json!({"method": "POST", "path": "/Users", "bulkId": format!("b{i}"), "data": user_body(&format!("bulk{i}@acme.com"))}))
        .collect();
    let bulk = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops});
    let start = Instant::now();
    let r = gw.send(Req::post(&acme("/Bulk"), &bulk).bearer(&token));
    assert_ne!(
        r.status.as_u16(),
        429,
        "the bulk itself fits the burst: {r:?}"
    );
    // 6 - 4 = 2 left.
    let (ok, limited, elapsed) = burst(&gw, &token, 4);
    let extra = (start.elapsed() + elapsed).as_secs() as usize;
    assert!(
        (2..=2 + extra).contains(&ok),
        "{ok} passed after a 4-operation bulk"
    );
    assert!(!limited.is_empty());
}

#[test]
fn deletes_past_the_blast_radius_cap_are_refused_and_nothing_is_deleted() {
    let (backend, setup) = backend_and_setup(|_| {});
    with_config(
        &setup,
        "rate_limits:\n  blast_radius: { window: 1h, deletes: 2, deactivations: 1, group_wipes: 1 }\n",
    );
    let token = setup.issue("acme", "sync", &[]);
    let gw = setup.start();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let v = backend.create("acme", "Users", &user_body(&format!("u{i}@acme.com")));
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    gw.send(Req::delete(&acme(&format!("/Users/{}", ids[0]))).bearer(&token))
        .expect(204);
    gw.send(Req::delete(&acme(&format!("/Users/{}", ids[1]))).bearer(&token))
        .expect(204);
    let r = gw.send(Req::delete(&acme(&format!("/Users/{}", ids[2]))).bearer(&token));
    assert_scim_error(&r, 429);
    assert!(r.header("retry-after").is_some());
    assert!(
        backend.get("acme", "Users", &ids[2]).is_some(),
        "the third user was deleted"
    );
    gw.access_line(|l| l["reason"] == "blast_radius_deletes");

    // Deactivations have their own cap.
    let u = backend.create("acme", "Users", &user_body("v@acme.com"));
    let w = backend.create("acme", "Users", &user_body("w@acme.com"));
    let off = patch_body(json!([{"op": "Replace", "path": "active", "value": false}]));
    let r = gw.send(
        Req::patch(
            &acme(&format!("/Users/{}", u["id"].as_str().unwrap())),
            &off,
        )
        .bearer(&token),
    );
    assert!(matches!(r.status.as_u16(), 200 | 204), "{r:?}");
    let r = gw.send(
        Req::patch(
            &acme(&format!("/Users/{}", w["id"].as_str().unwrap())),
            &off,
        )
        .bearer(&token),
    );
    assert_scim_error(&r, 429);
    let stored = backend
        .get("acme", "Users", w["id"].as_str().unwrap())
        .expect("user");
    assert_eq!(
        stored["active"], true,
        "the second deactivation went through"
    );
}

#[test]
fn past_the_per_token_concurrency_bound_the_gateway_answers_503() {
    let held = HeldUpstream::start(
        r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"Resources":[]}"#,
    );
    let (_backend, setup) = backend_and_setup(|o| o.globex_upstream = held.url("/globex/v2"));
    with_config(&setup, "rate_limits:\n  token_concurrency: 1\n");
    let token = setup.issue("globex", "slow", &[]);
    let gw = std::sync::Arc::new(setup.start());
    let gw2 = gw.clone();
    let token2 = token.clone();
    let first =
        std::thread::spawn(move || gw2.send(Req::get("/globex/scim/v2/Groups").bearer(&token2)));
    assert!(
        held.wait_received(1, REQUEST_TIMEOUT),
        "the first request never reached the backend"
    );
    let r = gw.send(Req::get("/globex/scim/v2/Groups").bearer(&token));
    assert_scim_error(&r, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    held.release();
    first.join().expect("first request").expect(200);
    // The bound frees with the response.
    gw.send(Req::get("/globex/scim/v2/ServiceProviderConfig").bearer(&token))
        .expect(200);
}
