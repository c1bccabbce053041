//! End-to-end tests of the audit trail (schema, hash chain, no secrets, admin events) and the
//! Prometheus metrics, against the real gateway and the real SCIM backend.

mod common;

use common::*;
use serde_json::Value;

fn acme(path: &str) -> String {
    format!("{ACME_PREFIX}{path}")
}

#[test]
fn the_audit_trail_is_schema_valid_chained_secret_free_and_records_admin_events() {
    let (_backend, setup) = backend_and_setup(|_| {});
    // Every test gateway writes its audit trail to audit.log (tests/common).
    let token = setup.issue("acme", "entra", &[]);
    let other = setup.issue("acme", "okta", &[]);
    let audit_path = setup.dir.path().join("audit.log");
    let gw = setup.start();

    gw.send(Req::post(&acme("/Users"), &user_body("ada@acme.com")).bearer(&token))
        .expect(201);
    gw.send(Req::get(&acme("/users?filter=userName%20eq%20%22ada%40acme.com%22")).bearer(&token))
        .expect(200);
    gw.send(Req::post(&acme("/Users"), &user_body("eve@evil.com")).bearer(&token))
        .expect(403);
    gw.send(Req::get(&acme("/Users")).bearer(&foreign_token()))
        .expect(401);
    gw.send(Req::get(&acme("/Users")).authorization(&format!("Bearer {other}x")))
        .expect(401);

    let mark = gw.log_mark();
    gw.setup.token_action("revoke", "okta");
    gw.wait_log_from(mark, LOG_TIMEOUT, |l: &str| l.contains("policy reloaded"))
        .expect("reload");
    gw.send(Req::get(&acme("/Users")).bearer(&other))
        .expect(401);

    // The writer is asynchronous: wait until the last request's record is there.
    let deadline = std::time::Instant::now() + LOG_TIMEOUT;
    let text = loop {
        let t = std::fs::read_to_string(&audit_path).unwrap_or_default();
        if t.lines()
            .filter(|l| l.contains("\"kind\":\"request\""))
            .count()
            >= 6
        {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit records missing:\n{t}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let records: Vec<Value> = text.lines().map(check_audit_line).collect();
    assert!(
        !text.contains(&token) && !text.contains(&other),
        "a secret reached the audit log"
    );
    assert!(
        !text.contains("ada%40acme.com") && !text.contains("ada@acme.com\""),
        "a query value or body reached the audit log"
    );
    assert!(
        !text.contains(&gw.setup.backend_secret),
        "the backend credential reached the audit log"
    );

    let created = records
        .iter()
        .find(|r| r["method"] == "POST" && r["status"] == 201)
        .expect("create record");
    assert_eq!(created["decision"], "allow");
    assert_eq!(created["token_id"], "entra");
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["resource_type"], "Users");
    assert_eq!(created["operation"], "create");
    assert_eq!(created["upstream_status"], 201);
    assert_eq!(created["client_addr"], "127.0.0.1");
    let listed = records
        .iter()
        .find(|r| r["operation"] == "list")
        .expect("list record");
    assert_eq!(listed["query"], "filter");
    assert!(listed["normalizations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "endpoint_case"));
    let denied = records
        .iter()
        .find(|r| r["status"] == 403)
        .expect("403 record");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "domain_out_of_scope");
    assert!(records.iter().any(|r| r["reason"] == "token_unknown"));
    assert!(records.iter().any(|r| r["reason"] == "token_revoked"));
    assert!(records.iter().any(|r| r["event"] == "policy_reloaded"));
    assert!(records
        .iter()
        .any(|r| r["event"] == "token_revoked" && r["detail"] == "okta"));

    // The chain verifies, and removing or editing a line breaks it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimgate"))
        .args(["audit", "verify"])
        .arg(&audit_path)
        .output()
        .expect("run audit verify");
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<&str> = text.lines().collect();
    let tampered = gw.setup.dir.path().join("tampered.log");
    let mut cut = lines.clone();
    cut.remove(2);
    std::fs::write(&tampered, cut.join("\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimgate"))
        .args(["audit", "verify"])
        .arg(&tampered)
        .output()
        .expect("run audit verify");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        describe(&out)
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_known_traffic() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    for _ in 0..3 {
        gw.send(Req::get(&acme("/ServiceProviderConfig")).bearer(&token))
            .expect(200);
    }
    gw.send(Req::get(&acme("/Users")).bearer(&foreign_token()))
        .expect(401);
    gw.send(Req::post(&acme("/Users"), &user_body("eve@evil.com")).bearer(&token))
        .expect(403);

    let r = gw.admin_get("/metrics");
    r.expect(200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
    let text = r.text();
    assert_eq!(
        metric(
            &text,
            r#"scimgate_requests_total{tenant="acme",decision="allow",status="200"}"#
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"scimgate_requests_total{tenant="-",decision="deny",status="401"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"scimgate_requests_total{tenant="acme",decision="deny",status="403"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "scimgate_request_duration_seconds_count"),
        5.0
    );
    assert_eq!(
        metric(&text, "scimgate_upstream_duration_seconds_count"),
        3.0
    );
    assert!(metric(&text, "scimgate_open_connections") >= 1.0);
    assert!(text.contains("scimgate_policy_reloads_total"));
    // No client-supplied value becomes a label.
    assert!(!text.contains("evil.com") && !text.contains(&token));
}
