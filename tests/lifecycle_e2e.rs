//! End-to-end tests of the token lifecycle on a running gateway: hot reload (file watch and
//! SIGHUP), revoke, suspend and resume, rotation with and without overlap, refusal of an
//! invalid change, requests in flight across a reload, idle expiry and last-use times across a
//! restart, and `token list`.
//!
//! Reloads are waited for, never slept on: each change is followed by the gateway's own log
//! line, `policy reloaded` with a new `policy_version`, or `configuration refused`. The only
//! real-time waits are for idle expiry, where time passing is the behaviour under test.
//!
//! Run with `scripts/test`, or `SCIM2_SERVER=… cargo test --test lifecycle_e2e`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a reload may take to show in the log. Generous: a reload rebuilds TLS and upstream
/// clients, which takes a while in a debug build on a busy machine; the wait ends as soon as the
/// line is there.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

const RELOADED: &str = "policy reloaded";
const REFUSED: &str = "configuration refused";

fn acme(path: &str) -> String {
    format!("{ACME_PREFIX}{path}")
}

fn globex(path: &str) -> String {
    format!("{GLOBEX_PREFIX}{path}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The policy version the gateway serves: from its last `listening` or `policy reloaded` line.
fn current_version(gw: &Gateway) -> String {
    gw.log_lines_from(0)
        .iter()
        .rev()
        .find(|v| matches!(message(v), "listening" | RELOADED))
        .and_then(|v| v["policy_version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no policy_version in the log:\n{}", gw.stderr()))
}

/// Makes sure the gateway's reload machinery (watcher and SIGHUP handler) is up before a test
/// relies on it: rewrites the configuration unchanged until a reload is logged.
fn wait_until_watching(gw: &Gateway) {
    let text = gw.setup.config_text();
    for _ in 0..10 {
        let mark = gw.log_mark();
        gw.setup.write_config(&text);
        let seen = gw.wait_log_from(mark, Duration::from_secs(3), |l| l.contains(RELOADED));
        if seen.is_ok() {
            return;
        }
    }
    panic!(
        "the gateway never reloaded after its configuration was rewritten:\n{}",
        gw.stderr()
    );
}

/// Runs `change` and waits for the gateway to take it in: a `policy reloaded` line with a
/// policy version other than the one served before (so a late reload of an earlier change is
/// not mistaken for this one), or a `configuration refused` line. Returns that line.
fn apply(gw: &Gateway, change: impl FnOnce()) -> Value {
    let before = current_version(gw);
    let mark = gw.log_mark();
    change();
    let line = gw.wait_log_from(mark, RELOAD_TIMEOUT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            (message(&v) == RELOADED && v["policy_version"].as_str() != Some(before.as_str()))
                || message(&v).starts_with(REFUSED)
        })
    });
    match line {
        Ok(l) => serde_json::from_str(&l).expect("JSON"),
        Err(why) => panic!(
            "no reload after the change ({why:?}); stderr:\n{}",
            gw.stderr()
        ),
    }
}

/// `apply`, asserting that the change was taken.
#[track_caller]
fn reload_with(gw: &Gateway, change: impl FnOnce()) {
    let line = apply(gw, change);
    assert_eq!(
        message(&line),
        RELOADED,
        "the change was refused: {line}\n{}",
        gw.stderr()
    );
}

/// GET /Users of a tenant with `token`: the response and its access-log line.
fn probe(gw: &Gateway, path: &str, token: &str) -> (Resp, Value) {
    let rid = format!("life-{}", random_hex(8));
    let r = gw.send(Req::get(path).bearer(token).request_id(&rid));
    let log = gw.access_log_for(&rid);
    (r, log)
}

#[track_caller]
fn assert_accepted(gw: &Gateway, token: &str, what: &str) {
    let (r, log) = probe(gw, &acme("/Users"), token);
    assert_eq!(r.status.as_u16(), 200, "{what}: {log}\n{r:?}");
    assert_eq!(log["decision"], "allow", "{what}: {log}");
}

#[track_caller]
fn assert_refused(gw: &Gateway, token: &str, reason: &str, what: &str) {
    let (r, log) = probe(gw, &acme("/Users"), token);
    assert_unauthorized(&r);
    assert_eq!(
        (log["decision"].as_str(), log["reason"].as_str()),
        (Some("deny"), Some(reason)),
        "{what}: {log}"
    );
}

/// `scimgate token list`: each entry's whitespace-separated columns, by id, and the raw text.
fn token_list(setup: &Setup) -> (Vec<Vec<String>>, String) {
    let out = setup.cli(&["token", "list"]);
    assert!(
        out.status.success(),
        "token list failed: {}",
        describe(&out)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let rows = text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (rows, text)
}

#[track_caller]
fn listed_status(setup: &Setup, id: &str) -> String {
    let (rows, text) = token_list(setup);
    let row = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some(id))
        .unwrap_or_else(|| panic!("{id} is not in `token list`:\n{text}"));
    assert_eq!(row.get(1).map(String::as_str), Some("acme"), "{text}");
    row.get(2).cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn revoke_suspend_and_resume_take_effect_on_the_running_gateway() {
    let (backend, setup) = backend_and_setup(|_| {});
    let a = setup.issue("acme", "entra-a", &[]);
    let b = setup.issue("acme", "entra-b", &[]);
    setup.issue_with("acme", "short", &["--expires-in", "7d"]);
    let gw = setup.start();
    wait_until_watching(&gw);
    assert_eq!(listed_status(&gw.setup, "entra-a"), "active");
    // A token close to its expiry is warned about at every load, and flagged by `token list`.
    let warning = gw
        .wait_log(|l| l.contains("expires soon") && l.contains("\"short\""))
        .unwrap_or_else(|e| panic!("no expiry warning for short ({e:?}):\n{}", gw.stderr()));
    assert!(warning.contains("WARN"), "{warning}");
    let (rows, text) = token_list(&gw.setup);
    let short = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("short"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(short.contains(&"!".to_owned()), "no '!' for short:\n{text}");
    let entra_a = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("entra-a"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        !entra_a.contains(&"!".to_owned()),
        "'!' for entra-a:\n{text}"
    );

    assert_accepted(&gw, &a, "a fresh token");
    reload_with(&gw, || gw.setup.token_action("suspend", "entra-a"));
    assert_refused(&gw, &a, "token_suspended", "after suspend");
    assert_accepted(&gw, &b, "another token, after suspend");
    assert_eq!(listed_status(&gw.setup, "entra-a"), "suspended");

    reload_with(&gw, || gw.setup.token_action("resume", "entra-a"));
    assert_accepted(&gw, &a, "after resume");
    assert_eq!(listed_status(&gw.setup, "entra-a"), "active");

    let forwarded = backend.forwarded().len();
    reload_with(&gw, || gw.setup.token_action("revoke", "entra-a"));
    assert_refused(&gw, &a, "token_revoked", "after revoke");
    assert_eq!(listed_status(&gw.setup, "entra-a"), "revoked");
    assert_eq!(listed_status(&gw.setup, "entra-b"), "active");
    // Revocation is final.
    let out = gw.setup.cli(&["token", "resume", "--id", "entra-a"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "resume of a revoked token: {}",
        describe(&out)
    );
    assert_refused(&gw, &a, "token_revoked", "after a refused resume");
    assert_eq!(
        backend.forwarded().len(),
        forwarded,
        "a refused request reached the backend"
    );
    assert_accepted(&gw, &b, "another token, after revoke");
}

#[test]
fn rotation_keeps_at_most_two_secrets_and_overlap_zero_cuts_the_old_one() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let s0 = setup.issue("acme", "rot", &[]);
    let gw = setup.start();
    wait_until_watching(&gw);
    assert_accepted(&gw, &s0, "s0 before rotation");

    let mut s1 = String::new();
    reload_with(&gw, || s1 = gw.setup.rotate("rot", "1h"));
    assert_ne!(s0, s1);
    assert_accepted(&gw, &s0, "s0 within the overlap");
    assert_accepted(&gw, &s1, "s1");
    let (_, text) = token_list(&gw.setup);
    assert!(
        text.contains("previous secret accepted until"),
        "token list does not show the live previous secret:\n{text}"
    );
    assert!(!text.contains(&s0) && !text.contains(&s1), "{text}");

    let mut s2 = String::new();
    reload_with(&gw, || s2 = gw.setup.rotate("rot", "1h"));
    assert_accepted(&gw, &s1, "s1 within the second overlap");
    assert_accepted(&gw, &s2, "s2");
    assert_refused(&gw, &s0, "token_unknown", "s0 after a second rotation");

    // When the overlap ends, the previous secret stops working.
    reload_with(&gw, || {
        gw.setup.edit_token("rot", |e| {
            let prev = e
                .get_mut("previous")
                .and_then(|p| p.as_mapping_mut())
                .expect("a rotated entry has a previous secret");
            prev.insert("expires_at".into(), "2020-01-01T00:00:00Z".into());
        })
    });
    assert_refused(&gw, &s1, "token_rotated_out", "s1 after its overlap");
    assert_accepted(&gw, &s2, "s2 after the overlap of s1");

    // A leaked secret: rotate with no overlap, and only the newest works.
    let mut s3 = String::new();
    reload_with(&gw, || s3 = gw.setup.rotate("rot", "0"));
    assert_accepted(&gw, &s3, "s3");
    for (name, s) in [("s2", &s2), ("s1", &s1), ("s0", &s0)] {
        assert_refused(
            &gw,
            s,
            "token_unknown",
            &format!("{name} after --overlap 0"),
        );
    }
    let (_, text) = token_list(&gw.setup);
    assert!(
        !text.contains("previous secret"),
        "a previous secret is still listed after --overlap 0:\n{text}"
    );
}

#[test]
fn an_invalid_change_is_refused_and_the_last_good_policy_keeps_serving() {
    let (backend, setup) = backend_and_setup(|_| {});
    let t = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    wait_until_watching(&gw);
    let tokens_path = gw.setup.tokens_path();
    let tokens_text = std::fs::read_to_string(&tokens_path).expect("read tokens.yaml");
    let config_text = gw.setup.config_text();
    let create = |name: &str| gw.send(Req::post(&acme("/Users"), &user_body(name)).bearer(&t));

    // Garbage appended to the token file: refused, with where and what.
    let line = apply(&gw, || {
        std::fs::write(
            &tokens_path,
            format!("{tokens_text}\n: [this is not: yaml\n"),
        )
        .expect("write tokens.yaml");
    });
    assert!(message(&line).starts_with(REFUSED), "{line}");
    let problem = line["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("tokens.yaml:"),
        "the problem does not name the file and line: {line}"
    );
    assert_accepted(&gw, &t, "after a refused token file");

    // Put the token file back (with a comment, so the policy version changes).
    reload_with(&gw, || {
        std::fs::write(&tokens_path, format!("# restored\n{tokens_text}"))
            .expect("write tokens.yaml");
    });
    assert_accepted(&gw, &t, "after the token file was restored");

    // An unknown key in the configuration, next to a change that would be valid alone: the
    // whole change is refused, nothing of it applies.
    assert_scim_error(&create("a@acme.org"), 403);
    let domains = "domains: [acme.com, \"*.acme.io\"]";
    let widened = "domains: [acme.com, \"*.acme.io\", acme.org]";
    let line = apply(&gw, || {
        gw.setup.write_config(&config_text.replacen(
            domains,
            &format!("{widened}\n    colour: blue"),
            1,
        ))
    });
    assert!(message(&line).starts_with(REFUSED), "{line}");
    let problem = line["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("gateway.yaml:") && problem.contains("colour"),
        "the problem does not name the file, line and key: {line}"
    );
    assert_accepted(&gw, &t, "after a refused configuration");
    assert_scim_error(&create("b@acme.org"), 403);
    assert!(backend.users_named("acme", "b@acme.org").is_empty());

    // The valid change alone applies.
    reload_with(&gw, || {
        gw.setup
            .write_config(&config_text.replacen(domains, widened, 1))
    });
    let r = create("c@acme.org");
    r.expect(201);
    assert_eq!(backend.users_named("acme", "c@acme.org").len(), 1);
    assert_accepted(&gw, &t, "after a valid configuration change");
}

#[test]
fn a_request_in_flight_finishes_across_reloads() {
    let list = json!({
        "schemas": [LIST_SCHEMA], "totalResults": 0, "startIndex": 1, "itemsPerPage": 0,
        "Resources": []
    })
    .to_string();
    let held = HeldUpstream::start(&list);
    let opts = GatewayOptions {
        acme_upstream: "http://127.0.0.1:9/acme/v2".into(),
        globex_upstream: held.url("/globex/v2"),
        upstream_timeout: "120s".into(),
        max_body_bytes: 65536,
        shutdown_grace: "5s".into(),
        conditional_writes: false,
    };
    let setup = Setup::new(&opts, "backend-unused");
    let g = setup.issue("globex", "globex-entra", &[]);
    let mut gw = setup.start();
    wait_until_watching(&gw);

    let rid = format!("inflight-{}", random_hex(6));
    let result = std::thread::scope(|s| {
        let in_flight = s.spawn(|| {
            gw.try_send_within(
                Req::get(&globex("/Groups")).bearer(&g).request_id(&rid),
                Duration::from_secs(120),
            )
        });
        assert!(
            held.wait_received(1, Duration::from_secs(10)),
            "the request never reached the upstream"
        );
        // The request now waits on the upstream. Reload by SIGHUP, then revoke its token.
        let mark = gw.log_mark();
        gw.sighup();
        gw.wait_log_from(mark, RELOAD_TIMEOUT, |l| l.contains(RELOADED))
            .unwrap_or_else(|e| panic!("no reload after SIGHUP ({e:?}):\n{}", gw.stderr()));
        reload_with(&gw, || gw.setup.token_action("revoke", "globex-entra"));
        let (r, log) = probe(&gw, &globex("/Groups"), &g);
        assert_unauthorized(&r);
        assert_eq!(log["reason"], "token_revoked", "{log}");
        assert_eq!(
            held.received(),
            1,
            "the refused request reached the upstream"
        );
        held.release();
        in_flight.join().expect("request thread")
    });
    let r = result.unwrap_or_else(|e| {
        panic!(
            "the in-flight request did not complete: {e}\n{}",
            gw.stderr()
        )
    });
    r.expect(200);
    let body = r.json();
    assert_eq!(body["totalResults"], 0, "{r:?}");
    assert_eq!(body["Resources"], json!([]), "{r:?}");
    let log = gw.access_log_for(&rid);
    assert_eq!(log["decision"], "allow", "{log}");
    assert_eq!(log["status"], 200, "{log}");
    assert_eq!(log["token_id"], "globex-entra", "{log}");
    assert!(
        gw.try_status().is_none(),
        "the gateway exited:\n{}",
        gw.stderr()
    );
}

#[test]
fn idle_expiry_and_last_use_survive_a_restart() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let keep = setup.issue_with("acme", "keep", &["--idle-timeout", "30s"]);
    // Issued last: its idle time runs from its creation until its first use.
    let idle = setup.issue_with("acme", "idle", &["--idle-timeout", "2s"]);
    let mut gw = setup.start();

    assert_accepted(&gw, &idle, "idle, fresh");
    let idle_used = Instant::now();
    assert_accepted(&gw, &keep, "keep, fresh");
    // Idleness is the behaviour under test: let more than 2 whole seconds pass.
    std::thread::sleep(Duration::from_millis(3050).saturating_sub(idle_used.elapsed()));
    assert_refused(&gw, &idle, "token_idle_expired", "idle after 3s unused");
    let keep_used = unix_now();
    assert_accepted(&gw, &keep, "keep, in use");

    let status = gw
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM:\n{}", gw.stderr()));
    assert!(status.success(), "exit status {status}:\n{}", gw.stderr());
    let setup = gw.into_setup();
    let usage_path = setup.state_dir().join("token-usage.json");
    let usage: Value = serde_json::from_slice(
        &std::fs::read(&usage_path)
            .unwrap_or_else(|e| panic!("{} after shutdown: {e}", usage_path.display())),
    )
    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", usage_path.display()));
    assert!(
        usage["keep"].as_u64().is_some_and(|t| t >= keep_used),
        "keep's last use ({keep_used}) is not persisted: {usage}"
    );
    assert!(usage["idle"].as_u64().is_some(), "{usage}");
    let (rows, text) = token_list(&setup);
    let keep_row = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("keep"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        !keep_row.contains(&"never".to_owned()),
        "token list shows keep as never used:\n{text}"
    );

    // From now on only the persisted last use can keep `keep` alive: its creation is long past
    // its idle timeout.
    setup.edit_token("keep", |e| {
        e.insert("created_at".into(), "2020-01-01T00:00:00Z".into());
    });
    let gw = setup.start();
    assert_accepted(&gw, &keep, "keep after the restart");
    assert_refused(
        &gw,
        &idle,
        "token_idle_expired",
        "idle after the restart (not revived)",
    );
}

#[test]
fn a_reload_does_not_revive_an_idle_expired_token_without_created_at() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let idle = setup.issue_with("acme", "idle", &["--idle-timeout", "3s"]);
    setup.edit_token("idle", |e| {
        e.remove("created_at");
    });
    let gw = setup.start();
    // Without created_at the idle clock starts when the gateway loads the token: use it at once,
    // then wait for the watcher (which may take a while on a loaded machine).
    assert_accepted(&gw, &idle, "idle, fresh");
    let used = Instant::now();
    wait_until_watching(&gw);
    std::thread::sleep(Duration::from_millis(4050).saturating_sub(used.elapsed()));
    assert_refused(&gw, &idle, "token_idle_expired", "idle after 4s unused");
    // Someone else's token change reloads the policy.
    reload_with(&gw, || {
        gw.setup.issue("acme", "other", &[]);
    });
    assert_refused(&gw, &idle, "token_idle_expired", "idle after a reload");
}

#[test]
fn new_connections_get_a_reloaded_certificate() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let t = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    wait_until_watching(&gw);
    let old_cert = gw.setup.cert_pem.clone();
    let req = || Req::get(&acme("/Users")).bearer(&t);
    gw.try_send_trusting(&old_cert, req())
        .unwrap_or_else(|e| panic!("the first certificate: {e}"))
        .expect(200);

    let (new_cert, new_key) = scimgate::tls::self_signed().expect("self-signed certificate");
    std::fs::write(gw.setup.dir.path().join("server2.crt"), &new_cert).expect("write");
    std::fs::write(gw.setup.dir.path().join("server2.key"), new_key).expect("write");
    reload_with(&gw, || {
        gw.setup.replace_in_config(
            "tls: { cert: server.crt, key: server.key }",
            "tls: { cert: server2.crt, key: server2.key }",
        )
    });
    gw.try_send_trusting(&new_cert, req())
        .unwrap_or_else(|e| panic!("a new connection after the reload: {e}\n{}", gw.stderr()))
        .expect(200);
    let old = gw.try_send_trusting(&old_cert, req());
    assert!(
        old.is_err(),
        "a new connection still got the old certificate: {old:?}"
    );
}
