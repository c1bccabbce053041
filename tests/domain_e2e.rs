//! End-to-end tests of email-domain scoping, written as an attacker would probe it: a token
//! scoped to `acme.com` (and the tenant's `*.acme.io`) must never create, read, change or
//! delete a user outside those domains by any SCIM means, although scim2-server, the backend,
//! enforces nothing. Every refusal is checked three ways: the status, the SCIM error body (and
//! the access log's reason), and the backend's state afterwards, read directly with the
//! backend's own secret. Out-of-scope users are seeded straight into the backend.
//!
//! Run with `scripts/test`, or `SCIM2_SERVER=… cargo test --test domain_e2e`.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
const BULK_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

fn acme(path: &str) -> String {
    format!("{ACME_PREFIX}{path}")
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}

/// A user with this userName and these addresses (the first one primary, of type work).
fn user_with(user_name: &str, emails: &[&str]) -> Value {
    let emails: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({ "value": e, "type": if i == 0 { "work" } else { "home" }, "primary": i == 0 })
        })
        .collect();
    let mut u = json!({ "schemas": [USER_SCHEMA], "userName": user_name });
    if !emails.is_empty() {
        u["emails"] = Value::Array(emails);
    }
    u
}

/// Creates a user straight in the backend (tenant acme) and returns its id.
fn seed(backend: &Backend, user_name: &str, emails: &[&str]) -> String {
    id_of(&backend.create("acme", "Users", &user_with(user_name, emails)))
}

/// Creates a group straight in the backend with these member ids and returns its id.
fn seed_group(backend: &Backend, name: &str, members: &[&str]) -> String {
    let members: Vec<Value> = members.iter().map(|m| json!({ "value": m })).collect();
    let g = json!({ "schemas": [GROUP_SCHEMA], "displayName": name, "members": members });
    id_of(&backend.create("acme", "Groups", &g))
}

fn users(backend: &Backend) -> BTreeMap<String, Value> {
    backend.state("acme", "Users")
}

fn groups(backend: &Backend) -> BTreeMap<String, Value> {
    backend.state("acme", "Groups")
}

/// The member ids of a group as the backend stores it.
fn member_ids(backend: &Backend, gid: &str) -> BTreeSet<String> {
    let g = backend
        .get("acme", "Groups", gid)
        .unwrap_or_else(|| panic!("group {gid} is not in the backend"));
    member_values(&g)
}

fn member_values(g: &Value) -> BTreeSet<String> {
    g["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["value"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The writes (anything but GET) the gateway forwarded to the backend so far.
fn forwarded_writes(backend: &Backend) -> Vec<String> {
    backend
        .forwarded()
        .iter()
        .filter(|r| r.method() != "GET")
        .map(|r| format!("{} {}", r.method(), r.path()))
        .collect()
}

/// Sends `req` with a fresh request id and returns the response and its access-log line.
fn send_logged(gw: &Gateway, req: Req) -> (Resp, Value) {
    let rid = format!("e2e-{}", random_hex(8));
    let resp = gw.send(req.request_id(&rid));
    let log = gw.access_log_for(&rid);
    (resp, log)
}

/// Asserts a SCIM error with this status whose access-log line says `deny` for `reason`.
#[track_caller]
fn assert_denied(what: &str, resp: &Resp, log: &Value, status: u16, reason: &str) -> Value {
    let body = assert_scim_error(resp, status);
    assert_eq!(
        (log["decision"].as_str(), log["reason"].as_str()),
        (Some("deny"), Some(reason)),
        "{what}: access log line {log}\nresponse:\n{resp:?}"
    );
    body
}

fn resources(list: &Value) -> Vec<Value> {
    list["Resources"].as_array().cloned().unwrap_or_default()
}

fn ids(list: &Value) -> BTreeSet<String> {
    resources(list).iter().map(id_of).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

#[track_caller]
fn assert_2xx_patch(resp: &Resp) {
    assert!(
        resp.status.as_u16() == 200 || resp.status.as_u16() == 204,
        "PATCH should succeed with 200 or 204; response:\n{resp:?}"
    );
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65535);
    let len = data.len() as u16;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // BFINAL, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Creating users
// ---------------------------------------------------------------------------------------------

#[test]
fn creating_users_admits_only_addresses_inside_the_domains() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    // In scope: the domain is compared lower-cased, without a trailing dot, and is what follows
    // the last '@'; the tenant's `*.acme.io` admits its subdomains.
    for name in [
        "bjensen@acme.com",
        "upper@ACME.COM",
        "dot@acme.com.",
        "eu@eu.acme.io",
        "route@evil.com@acme.com",
    ] {
        let (r, log) = send_logged(
            &gw,
            Req::post(&acme("/Users"), &user_body(name)).bearer(&token),
        );
        r.expect(201);
        assert_eq!(log["decision"], "allow", "{name}: {log}");
        let created = r.json();
        assert_eq!(created["userName"], name, "{name}:\n{r:?}");
        let stored = backend
            .get("acme", "Users", &id_of(&created))
            .unwrap_or_else(|| panic!("{name}: not in the backend"));
        assert_eq!(stored["userName"], name);
    }

    let before = users(&backend);
    let writes_before = forwarded_writes(&backend);
    let addr_user = |user_name: &str, emails: Value| json!({ "schemas": [USER_SCHEMA], "userName": user_name, "emails": emails });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "out-of-scope userName",
            user_body("eve@evil.com"),
            "domain_out_of_scope",
        ),
        (
            "one out-of-scope secondary email",
            addr_user(
                "mixed@acme.com",
                json!([
                    { "value": "mixed@acme.com", "type": "work", "primary": true },
                    { "value": "mixed@evil.com", "type": "home" }
                ]),
            ),
            "domain_out_of_scope",
        ),
        (
            "EMAILS in capitals",
            json!({ "schemas": [USER_SCHEMA], "userName": "caps@acme.com",
                    "EMAILS": [{ "value": "caps@evil.com" }] }),
            "domain_out_of_scope",
        ),
        (
            "UserName in another case",
            json!({ "schemas": [USER_SCHEMA], "UserName": "caps@evil.com",
                    "emails": [{ "value": "caps@acme.com" }] }),
            "domain_out_of_scope",
        ),
        (
            "Value in capitals inside emails",
            addr_user("v@acme.com", json!([{ "VALUE": "v@evil.com" }])),
            "domain_out_of_scope",
        ),
        (
            "URN-qualified emails",
            json!({ "schemas": [USER_SCHEMA], "userName": "urn@acme.com",
                    "urn:ietf:params:scim:schemas:core:2.0:User:emails": [{ "value": "urn@evil.com" }] }),
            "domain_out_of_scope",
        ),
        (
            "emails nested under the core URN",
            json!({ "schemas": [USER_SCHEMA], "userName": "nest@acme.com",
                    USER_SCHEMA: { "emails": [{ "value": "nest@evil.com" }] } }),
            "domain_out_of_scope",
        ),
        (
            "a@acme.com@evil.com (the last @ decides)",
            user_body("a@acme.com@evil.com"),
            "domain_out_of_scope",
        ),
        (
            "IDNA lookalike (Cyrillic a)",
            user_body("x@\u{430}cme.com"),
            "domain_out_of_scope",
        ),
        (
            "lookalike subdomain",
            user_body("x@acme.com.evil.com"),
            "domain_out_of_scope",
        ),
        (
            "trailing space",
            user_body("space@acme.com "),
            "domain_out_of_scope",
        ),
        (
            "two addresses separated by a space",
            user_body("eve@evil.com x@acme.com"),
            "domain_out_of_scope",
        ),
        (
            "two addresses separated by a comma",
            user_body("eve@evil.com,x@acme.com"),
            "domain_out_of_scope",
        ),
        (
            "a display name",
            user_body("Eve <eve@acme.com>"),
            "domain_out_of_scope",
        ),
        (
            "a newline",
            user_body("eve@evil.com\r\n@acme.com"),
            "domain_out_of_scope",
        ),
        (
            "full-width @ in an email",
            addr_user("fw@acme.com", json!([{ "value": "eve\u{FF20}evil.com" }])),
            "domain_out_of_scope",
        ),
        (
            "no address at all (the tenant does not allow it)",
            json!({ "schemas": [USER_SCHEMA], "userName": "jdoe",
                    "name": { "givenName": "J", "familyName": "Doe" } }),
            "user_without_email",
        ),
        (
            "emails the gateway cannot read",
            addr_user("n@acme.com", json!(42)),
            "user_unreadable",
        ),
    ];
    for (what, body, reason) in cases {
        let (r, log) = send_logged(&gw, Req::post(&acme("/Users"), &body).bearer(&token));
        assert_denied(what, &r, &log, 403, reason);
        assert_eq!(
            users(&backend),
            before,
            "{what}: the backend's users changed"
        );
        assert_eq!(
            forwarded_writes(&backend),
            writes_before,
            "{what}: a write was forwarded"
        );
    }
}

#[test]
fn bodies_two_parsers_could_read_differently_are_refused_before_any_check() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let before = users(&backend);

    let s = USER_SCHEMA;
    let deep = format!(
        r#"{{"schemas":["{s}"],"userName":"deep@acme.com","x":{}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let mut bad_utf8 =
        format!(r#"{{"schemas":["{s}"],"userName":"u@acme.com","displayName":"X"#).into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}");
    let raw: Vec<(&str, Vec<u8>)> = vec![
        (
            "userName twice",
            format!(r#"{{"schemas":["{s}"],"userName":"a@acme.com","userName":"eve@evil.com"}}"#)
                .into_bytes(),
        ),
        (
            "userName and USERNAME",
            format!(r#"{{"schemas":["{s}"],"userName":"a@acme.com","USERNAME":"eve@evil.com"}}"#)
                .into_bytes(),
        ),
        (
            "userName and an escaped userName",
            format!(
                r#"{{"schemas":["{s}"],"userName":"a@acme.com","user\u004eame":"eve@evil.com"}}"#
            )
            .into_bytes(),
        ),
        (
            "value twice inside an email",
            format!(
                r#"{{"schemas":["{s}"],"userName":"a@acme.com","emails":[{{"value":"a@acme.com","value":"eve@evil.com"}}]}}"#
            )
            .into_bytes(),
        ),
        (
            "emails and Emails",
            format!(
                r#"{{"schemas":["{s}"],"userName":"a@acme.com","emails":[{{"value":"a@acme.com"}}],"Emails":[{{"value":"eve@evil.com"}}]}}"#
            )
            .into_bytes(),
        ),
        (
            "a non-ASCII key",
            format!(r#"{{"schemas":["{s}"],"userName":"a@acme.com","em\u0430ils":[{{"value":"eve@evil.com"}}]}}"#)
                .into_bytes(),
        ),
        ("invalid UTF-8", bad_utf8),
        ("nesting deeper than 32", deep.into_bytes()),
        (
            "trailing data",
            format!(
                r#"{{"schemas":["{s}"],"userName":"a@acme.com"}} {{"userName":"eve@evil.com"}}"#
            )
            .into_bytes(),
        ),
    ];
    for (what, body) in raw {
        let req = Req::new(Method::POST, &acme("/Users"))
            .header("content-type", "application/scim+json")
            .body(body)
            .bearer(&token);
        let (r, log) = send_logged(&gw, req);
        let err = assert_denied(what, &r, &log, 400, "invalid_body");
        assert_eq!(err["scimType"], "invalidSyntax", "{what}:\n{r:?}");
        assert_eq!(
            users(&backend),
            before,
            "{what}: the backend's users changed"
        );
    }

    // A compressed body is never inflated by the gateway, so it is never forwarded either.
    let evil = serde_json::to_vec(&user_body("eve@evil.com")).unwrap();
    let req = Req::new(Method::POST, &acme("/Users"))
        .header("content-type", "application/scim+json")
        .header("content-encoding", "gzip")
        .body(gzip_stored(&evil))
        .bearer(&token);
    let (r, log) = send_logged(&gw, req);
    assert_denied("gzip", &r, &log, 415, "unsupported_media_type");
    let req = Req::new(Method::POST, &acme("/Users"))
        .header("content-type", "text/plain")
        .body(evil)
        .bearer(&token);
    let (r, log) = send_logged(&gw, req);
    assert_denied("text/plain", &r, &log, 415, "unsupported_media_type");

    assert_eq!(users(&backend), before, "the backend's users changed");
    assert!(
        forwarded_writes(&backend).is_empty(),
        "writes were forwarded: {:?}",
        forwarded_writes(&backend)
    );
}

#[test]
fn a_token_narrowed_to_a_wildcard_admits_only_strict_subdomains() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue_with("acme", "eu-only", &["--domain", "*.acme.io"]);
    let gw = setup.start();
    let corp = seed(&backend, "corp@acme.com", &["corp@acme.com"]);

    let mut created = Vec::new();
    for name in ["x@eu.acme.io", "y@deep.eu.acme.io", "z@EU.ACME.IO."] {
        let r = gw.send(Req::post(&acme("/Users"), &user_body(name)).bearer(&token));
        r.expect(201);
        let id = id_of(&r.json());
        assert!(backend.get("acme", "Users", &id).is_some(), "{name}");
        created.push(id);
    }
    let before = users(&backend);
    for name in [
        "x@acme.io",
        "x@acme.io.evil.com",
        "x@evilacme.io",
        "x@acme.com",
    ] {
        let (r, log) = send_logged(
            &gw,
            Req::post(&acme("/Users"), &user_body(name)).bearer(&token),
        );
        assert_denied(name, &r, &log, 403, "domain_out_of_scope");
        assert_eq!(
            users(&backend),
            before,
            "{name}: the backend's users changed"
        );
    }

    // The tenant's own acme.com users are outside this token's domains: invisible.
    let r = gw.send(Req::get(&acme("/Users")).bearer(&token));
    r.expect(200);
    let list = r.json();
    assert_eq!(list["totalResults"], 3, "{r:?}");
    assert_eq!(ids(&list), created.iter().cloned().collect(), "{r:?}");
    let r = gw.send(Req::get(&acme(&format!("/Users/{corp}"))).bearer(&token));
    assert_scim_error(&r, 404);
}

// ---------------------------------------------------------------------------------------------
// Users outside the scope behind PUT, PATCH, DELETE and GET
// ---------------------------------------------------------------------------------------------

/// The request `method` on user `id` (bodies that would be fine on an in-scope user).
fn on_user(method: &Method, id: &str) -> Req {
    let path = acme(&format!("/Users/{id}"));
    match *method {
        Method::PUT => {
            let mut body = user_body("takeover@acme.com");
            body["id"] = json!(id);
            Req::put(&path, &body)
        }
        Method::PATCH => Req::patch(
            &path,
            &patch_body(json!([{ "op": "replace", "path": "displayName", "value": "pwned" }])),
        ),
        _ => Req::new(method.clone(), &path),
    }
}

/// What a client can compare between two answers: status, content type, the set of header
/// names (less those that differ on every answer) and the body with the id replaced.
fn observable(resp: &Resp, id: &str) -> (u16, Option<String>, BTreeSet<String>, String) {
    let volatile = ["date", "x-request-id", "content-length"];
    let names = resp
        .headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| !volatile.contains(&n.as_str()))
        .collect();
    (
        resp.status.as_u16(),
        resp.header("content-type").map(str::to_owned),
        names,
        resp.text().replace(id, "<id>"),
    )
}

/// Users the token must not see: another domain, a mixed user, a user without an address.
fn seed_hidden(backend: &Backend) -> Vec<(&'static str, String)> {
    vec![
        (
            "eve@evil.com",
            seed(backend, "eve@evil.com", &["eve@evil.com"]),
        ),
        (
            "mixed",
            seed(
                backend,
                "mixed@acme.com",
                &["mixed@acme.com", "mixed@evil.com"],
            ),
        ),
        ("no address", seed(backend, "noaddress", &[])),
    ]
}

#[test]
fn writes_to_users_outside_the_scope_are_404_exactly_like_a_missing_user() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let hidden = seed_hidden(&backend);
    let before = users(&backend);
    let missing = random_hex(16);

    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let r = gw.send(on_user(&method, &missing).bearer(&token));
        assert_scim_error(&r, 404);
        let expected = observable(&r, &missing);
        for (what, id) in &hidden {
            let (r, log) = send_logged(&gw, on_user(&method, id).bearer(&token));
            assert_scim_error(&r, 404);
            assert_eq!(
                observable(&r, id),
                expected,
                "{method} on {what}: the answer differs from a missing user's"
            );
            assert_eq!(log["decision"], "deny", "{method} {what}: {log}");
            assert!(
                log["reason"]
                    .as_str()
                    .is_some_and(|x| x == "domain_out_of_scope" || x == "user_without_email"),
                "{method} {what}: {log}"
            );
        }
    }
    assert_eq!(
        users(&backend),
        before,
        "a hidden user was changed or deleted"
    );
    assert!(
        forwarded_writes(&backend).is_empty(),
        "writes were forwarded: {:?}",
        forwarded_writes(&backend)
    );
}

#[test]
fn reading_a_user_outside_the_scope_is_404_exactly_like_a_missing_user() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let hidden = seed_hidden(&backend);
    let missing = random_hex(16);

    let r = gw.send(Req::get(&acme(&format!("/Users/{missing}"))).bearer(&token));
    assert_scim_error(&r, 404);
    let expected = observable(&r, &missing);
    for (what, id) in &hidden {
        let r = gw.send(Req::get(&acme(&format!("/Users/{id}"))).bearer(&token));
        assert_scim_error(&r, 404);
        assert!(!r.text().contains("evil"), "{what}:\n{r:?}");
        assert_eq!(
            observable(&r, id),
            expected,
            "GET {what}: the answer differs from a missing user's"
        );
    }
}

#[test]
fn put_cannot_move_a_user_out_of_scope_nor_take_over_a_hidden_one() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let mine = seed(&backend, "mine@acme.com", &["mine@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let before = users(&backend);

    // An in-scope user replaced by an out-of-scope one: 403.
    for (what, body) in [
        ("userName", user_body("mine@evil.com")),
        (
            "secondary email",
            user_with("mine@acme.com", &["mine@acme.com", "mine@evil.com"]),
        ),
        ("no address", user_with("mine", &[])),
    ] {
        let mut body = body;
        body["id"] = json!(mine);
        let r = gw.send(Req::put(&acme(&format!("/Users/{mine}")), &body).bearer(&token));
        assert_scim_error(&r, 403);
        assert_eq!(
            users(&backend),
            before,
            "PUT {what}: the backend's users changed"
        );
    }
    // A hidden user replaced by an in-scope body (a takeover): 404.
    let mut body = user_body("takeover@acme.com");
    body["id"] = json!(eve);
    let r = gw.send(Req::put(&acme(&format!("/Users/{eve}")), &body).bearer(&token));
    assert_scim_error(&r, 404);
    assert_eq!(users(&backend), before, "the hidden user was replaced");
    assert!(forwarded_writes(&backend).is_empty());

    // Control: an in-scope replacement goes through.
    let mut body = user_body("mine@acme.com");
    body["id"] = json!(mine);
    body["displayName"] = json!("Mine");
    let r = gw.send(Req::put(&acme(&format!("/Users/{mine}")), &body).bearer(&token));
    r.expect(200);
    assert_eq!(
        backend.get("acme", "Users", &mine).unwrap()["displayName"],
        "Mine"
    );
}

// ---------------------------------------------------------------------------------------------
// PATCH of in-scope users
// ---------------------------------------------------------------------------------------------

#[test]
fn patch_cannot_take_an_in_scope_user_outside_the_domains() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let pat = seed(&backend, "pat@acme.com", &["pat@acme.com"]);
    // userName is not an address: the work email is the user's only address.
    let solo = seed(&backend, "solo", &["solo@acme.com"]);
    let before = users(&backend);

    let urn_user_name = format!("{USER_SCHEMA}:userName");
    let urn_emails = format!("{USER_SCHEMA}:emails");
    let cases: Vec<(&str, &String, Value, u16, &str)> = vec![
        (
            "Replace of a filtered email value",
            &pat,
            json!([{ "op": "Replace", "path": "emails[type eq \"work\"].value", "value": "pat@evil.com" }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "path-less filtered email value (Entra)",
            &pat,
            json!([{ "op": "Replace", "value": { "emails[type eq \"work\"].value": "pat@evil.com" } }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "path-less URN-qualified userName",
            &pat,
            json!([{ "op": "Replace", "value": { urn_user_name.clone(): "pat@evil.com" } }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "URN-qualified emails path",
            &pat,
            json!([{ "op": "replace", "path": urn_emails, "value": [{ "value": "pat@evil.com" }] }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "path-less value nested under the core URN",
            &pat,
            json!([{ "op": "add", "value": { USER_SCHEMA: { "emails": [{ "value": "pat2@evil.com" }] } } }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "add a second, out-of-scope email",
            &pat,
            json!([{ "op": "ADD", "path": "EMAILS", "value": [{ "value": "pat2@evil.com", "type": "home" }] }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "userName with a trailing @evil.com",
            &pat,
            json!([{ "op": "replace", "path": "userName", "value": "pat@acme.com@evil.com" }]),
            403,
            "domain_out_of_scope",
        ),
        (
            "an in-scope write then an out-of-scope one",
            &pat,
            json!([
                { "op": "replace", "path": "displayName", "value": "Pat" },
                { "op": "replace", "path": "emails[value eq \"pat@acme.com\"].value", "value": "pat@evil.com" }
            ]),
            403,
            "domain_out_of_scope",
        ),
        (
            "remove the last address",
            &solo,
            json!([{ "op": "remove", "path": "emails" }]),
            403,
            "user_without_email",
        ),
        (
            "remove the last address by filter",
            &solo,
            json!([{ "op": "Remove", "path": "emails[type eq \"work\"]" }]),
            403,
            "user_without_email",
        ),
        (
            "drop the address userName then every email",
            &pat,
            json!([
                { "op": "replace", "path": "userName", "value": "pat" },
                { "op": "remove", "path": "emails" }
            ]),
            403,
            "user_without_email",
        ),
        (
            "an unknown op",
            &pat,
            json!([{ "op": "move", "path": "emails", "value": [{ "value": "pat@evil.com" }] }]),
            400,
            "patch_uninterpretable",
        ),
        (
            "an unknown operation member",
            &pat,
            json!([{ "op": "replace", "path": "displayName", "value": "x", "from": "emails" }]),
            400,
            "patch_uninterpretable",
        ),
    ];
    for (what, id, ops, status, reason) in cases {
        let req = Req::patch(&acme(&format!("/Users/{id}")), &patch_body(ops)).bearer(&token);
        let (r, log) = send_logged(&gw, req);
        assert_denied(what, &r, &log, status, reason);
        assert_eq!(
            users(&backend),
            before,
            "{what}: the backend's users changed"
        );
        assert!(
            forwarded_writes(&backend).is_empty(),
            "{what}: forwarded {:?}",
            forwarded_writes(&backend)
        );
    }

    // Controls: harmless changes go through.
    let ops = json!([{ "op": "Replace", "path": "displayName", "value": "Pat Doe" }]);
    let r = gw.send(Req::patch(&acme(&format!("/Users/{pat}")), &patch_body(ops)).bearer(&token));
    assert_2xx_patch(&r);
    let stored = backend.get("acme", "Users", &pat).unwrap();
    assert_eq!(stored["displayName"], "Pat Doe");
    let ops = json!([{ "op": "Add", "path": "emails", "value": [{ "value": "solo.home@acme.com", "type": "home" }] }]);
    let r = gw.send(Req::patch(&acme(&format!("/Users/{solo}")), &patch_body(ops)).bearer(&token));
    assert_2xx_patch(&r);
    let stored = backend.get("acme", "Users", &solo).unwrap();
    assert_eq!(
        stored["emails"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
    // Now that solo has two addresses, removing one of them is fine.
    let ops = json!([{ "op": "remove", "path": "emails[type eq \"work\"]" }]);
    let r = gw.send(Req::patch(&acme(&format!("/Users/{solo}")), &patch_body(ops)).bearer(&token));
    assert_2xx_patch(&r);
    let stored = backend.get("acme", "Users", &solo).unwrap();
    assert_eq!(
        stored["emails"][0]["value"], "solo.home@acme.com",
        "{stored}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lists and searches
// ---------------------------------------------------------------------------------------------

struct Population {
    in_scope: Vec<String>,
    out_of_scope: Vec<String>,
}

/// In scope: alice, carol, dave (no user name starts with "b"). Out of scope: the "b…" users
/// (another domain, a secondary address in another domain, no address) and eve.
fn populate(backend: &Backend) -> Population {
    let in_scope = vec![
        seed(backend, "alice@acme.com", &["alice@acme.com"]),
        seed(
            backend,
            "carol@acme.com",
            &["carol@acme.com", "carol.h@acme.com"],
        ),
        seed(backend, "dave", &["dave@eu.acme.io"]),
    ];
    let out_of_scope = vec![
        seed(backend, "bad@evil.com", &["bad@evil.com"]),
        seed(
            backend,
            "bmixed@acme.com",
            &["bmixed@acme.com", "bmixed@evil.com"],
        ),
        seed(backend, "bnoaddress", &[]),
        seed(backend, "eve@evil.com", &["eve@evil.com"]),
    ];
    Population {
        in_scope,
        out_of_scope,
    }
}

#[track_caller]
fn assert_list(r: &Resp, expected: &BTreeSet<String>, total: usize, start: usize) -> Value {
    r.expect(200);
    let list = r.json();
    assert!(
        list["schemas"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == LIST_SCHEMA)),
        "not a ListResponse:\n{r:?}"
    );
    assert_eq!(list["totalResults"], total, "totalResults:\n{r:?}");
    assert_eq!(list["startIndex"], start, "startIndex:\n{r:?}");
    assert_eq!(
        list["itemsPerPage"],
        resources(&list).len(),
        "itemsPerPage:\n{r:?}"
    );
    assert_eq!(&ids(&list), expected, "resources:\n{r:?}");
    let text = r.text();
    assert!(
        !text.contains("evil") && !text.contains("bnoaddress") && !text.contains("bmixed"),
        "an out-of-scope user shows:\n{r:?}"
    );
    list
}

#[test]
fn lists_and_searches_show_only_in_scope_users_and_count_only_them() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let pop = populate(&backend);
    let all: BTreeSet<String> = pop.in_scope.iter().cloned().collect();
    let none = BTreeSet::new();
    let get = |q: &str| gw.send(Req::get(&acme(&format!("/Users{q}"))).bearer(&token));
    let search = |body: Value| gw.send(Req::post(&acme("/Users/.search"), &body).bearer(&token));
    let filter = |f: &str| format!("?filter={}", query_encode(f));

    assert_list(&get(""), &all, 3, 1);
    // Filters that match only hidden users reveal nothing: an empty list, not an error.
    assert_list(&get(&filter(r#"userName sw "b""#)), &none, 0, 1);
    assert_list(&get(&filter(r#"emails co "@evil.com""#)), &none, 0, 1);
    assert_list(&get(&filter(r#"userName eq "eve@evil.com""#)), &none, 0, 1);
    let id_filter = filter(&format!("id eq \"{}\"", pop.out_of_scope[1]));
    assert_list(&get(&id_filter), &none, 0, 1);
    // A filter matching in- and out-of-scope users counts only the former.
    assert_list(
        &get(&filter(r#"emails co "acme.com""#)),
        &set(&[&pop.in_scope[0], &pop.in_scope[1]]),
        2,
        1,
    );

    // attributes=id: still only in-scope users, and the addresses fetched to judge them are
    // not returned.
    let list = assert_list(&get("?attributes=id"), &all, 3, 1);
    for u in resources(&list) {
        let keys: Vec<&String> = u.as_object().unwrap().keys().collect();
        assert!(
            u.get("emails").is_none() && u.get("userName").is_none(),
            "attributes=id returned {keys:?}: {u}"
        );
    }
    let list = assert_list(&get("?excludedAttributes=emails"), &all, 3, 1);
    for u in resources(&list) {
        assert!(u.get("emails").is_none(), "emails returned: {u}");
        assert!(u.get("userName").is_some(), "userName missing: {u}");
    }
    let list = assert_list(
        &get(&format!(
            "{}&attributes=userName",
            filter(r#"userName sw "b""#)
        )),
        &none,
        0,
        1,
    );
    assert!(resources(&list).is_empty());

    // Pages are cut from the in-scope users alone: totalResults never changes and the pages
    // add up to exactly those users.
    let mut seen = BTreeSet::new();
    for (start, n) in [(1, 2), (3, 1), (5, 0)] {
        let r = get(&format!("?startIndex={start}&count=2&sortBy=userName"));
        r.expect(200);
        let list = r.json();
        assert_eq!(list["totalResults"], 3, "page {start}:\n{r:?}");
        assert_eq!(list["startIndex"], start, "page {start}:\n{r:?}");
        assert_eq!(list["itemsPerPage"], n, "page {start}:\n{r:?}");
        assert_eq!(resources(&list).len(), n, "page {start}:\n{r:?}");
        assert!(!r.text().contains("evil"), "page {start}:\n{r:?}");
        for id in ids(&list) {
            assert!(seen.insert(id.clone()), "{id} on two pages");
        }
    }
    assert_eq!(seen, all, "the pages do not add up to the in-scope users");
    let r = get("?count=0");
    r.expect(200);
    assert_eq!(r.json()["totalResults"], 3, "{r:?}");
    assert!(resources(&r.json()).is_empty(), "{r:?}");

    // POST /.search: the same guarantees.
    let sr = |extra: Value| {
        let mut b = json!({ "schemas": [SEARCH_SCHEMA] });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_list(&search(sr(json!({}))), &all, 3, 1);
    assert_list(
        &search(sr(json!({ "filter": "userName sw \"b\"" }))),
        &none,
        0,
        1,
    );
    assert_list(
        &search(sr(json!({ "filter": "emails co \"@evil.com\"" }))),
        &none,
        0,
        1,
    );
    let list = assert_list(&search(sr(json!({ "attributes": ["id"] }))), &all, 3, 1);
    for u in resources(&list) {
        assert!(u.get("emails").is_none(), "search attributes=id: {u}");
    }
    let r = search(sr(json!({ "startIndex": 2, "count": 1 })));
    let list = r.json();
    assert_eq!(list["totalResults"], 3, "{r:?}");
    assert_eq!(list["itemsPerPage"], 1, "{r:?}");

    // Parameters are read strictly: anything ambiguous is a 400, never forwarded.
    let forwarded_before = backend.forwarded().len();
    for (what, q) in [
        (
            "filter twice",
            format!(
                "?filter={}&filter={}",
                query_encode(r#"userName eq "alice@acme.com""#),
                query_encode(r#"userName sw "b""#)
            ),
        ),
        (
            "filter and FILTER",
            format!(
                "?filter={}&FILTER={}",
                query_encode(r#"userName eq "alice@acme.com""#),
                query_encode(r#"userName sw "b""#)
            ),
        ),
        ("an unknown parameter", "?foo=bar".to_owned()),
        ("count twice", "?count=1&count=1000".to_owned()),
        ("invalid UTF-8", "?filter=%FF".to_owned()),
        ("a negative count", "?count=-1".to_owned()),
    ] {
        let (r, log) = send_logged(&gw, Req::get(&acme(&format!("/Users{q}"))).bearer(&token));
        assert_denied(what, &r, &log, 400, "bad_query");
    }
    let (r, log) = send_logged(
        &gw,
        Req::post(
            &acme("/Users/.search"),
            &sr(json!({ "filter": "userName sw \"a\"", "unknown": 1 })),
        )
        .bearer(&token),
    );
    assert_denied("search with an unknown member", &r, &log, 400, "bad_query");
    assert_eq!(
        backend.forwarded().len(),
        forwarded_before,
        "a refused query reached the backend"
    );
}

#[test]
fn urn_qualified_excluded_attributes_do_not_hide_addresses_from_the_gateway() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let pop = populate(&backend);
    let all: BTreeSet<String> = pop.in_scope.iter().cloned().collect();
    // bmixed@acme.com has an evil.com address: out of scope, whatever the client asks to see.
    let mixed = &pop.out_of_scope[1];

    for attr in ["emails", "userName"] {
        let ex = query_encode(&format!("{USER_SCHEMA}:{attr}"));
        let r = gw.send(Req::get(&acme(&format!("/Users?excludedAttributes={ex}"))).bearer(&token));
        assert_list(&r, &all, 3, 1);
        let r = gw.send(
            Req::get(&acme(&format!("/Users/{mixed}?excludedAttributes={ex}"))).bearer(&token),
        );
        assert_scim_error(&r, 404);
        let body = json!({ "schemas": [SEARCH_SCHEMA], "excludedAttributes": [format!("{USER_SCHEMA}:{attr}")] });
        let r = gw.send(Req::post(&acme("/Users/.search"), &body).bearer(&token));
        assert_list(&r, &all, 3, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

#[test]
fn groups_never_gain_lose_or_show_members_outside_the_scope() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let alice = seed(&backend, "alice@acme.com", &["alice@acme.com"]);
    let carol = seed(&backend, "carol@acme.com", &["carol@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let mixed_group = seed_group(&backend, "Mixed", &[&alice, &eve]);
    let r = gw.send(
        Req::post(
            &acme("/Groups"),
            &json!({ "schemas": [GROUP_SCHEMA], "displayName": "Clean", "members": [{ "value": alice }] }),
        )
        .bearer(&token),
    );
    r.expect(201);
    let clean = id_of(&r.json());
    let before = groups(&backend);
    let users_before = users(&backend);

    // Reading: only in-scope members, one group or a list.
    let r = gw.send(Req::get(&acme(&format!("/Groups/{mixed_group}"))).bearer(&token));
    r.expect(200);
    assert_eq!(member_values(&r.json()), set(&[&alice]), "{r:?}");
    assert!(!r.text().contains(&eve), "the hidden member shows:\n{r:?}");
    let r = gw.send(Req::get(&acme("/Groups")).bearer(&token));
    r.expect(200);
    assert!(!r.text().contains(&eve), "the hidden member shows:\n{r:?}");
    let listed = resources(&r.json());
    let m = listed
        .iter()
        .find(|g| g["id"] == mixed_group.as_str())
        .unwrap_or_else(|| panic!("Mixed not listed:\n{r:?}"));
    assert_eq!(member_values(m), set(&[&alice]));
    let r = gw.send(
        Req::post(
            &acme("/Groups/.search"),
            &json!({ "schemas": [SEARCH_SCHEMA], "filter": "displayName eq \"Mixed\"" }),
        )
        .bearer(&token),
    );
    r.expect(200);
    assert!(!r.text().contains(&eve), "the hidden member shows:\n{r:?}");

    let members_path = format!("{GROUP_SCHEMA}:members");
    let new_group = |members: Value| json!({ "schemas": [GROUP_SCHEMA], "displayName": "New", "members": members });
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        (
            "create with an out-of-scope member",
            Req::post(
                &acme("/Groups"),
                &new_group(json!([{ "value": alice }, { "value": eve }])),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "create with a member id that is no user",
            Req::post(
                &acme("/Groups"),
                &new_group(json!([{ "value": random_hex(16) }])),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "Add members (Entra)",
            Req::patch(
                &acme(&format!("/Groups/{clean}")),
                &patch_body(
                    json!([{ "op": "Add", "path": "members", "value": [{ "value": eve }] }]),
                ),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "add members by a URN-qualified path",
            Req::patch(
                &acme(&format!("/Groups/{clean}")),
                &patch_body(
                    json!([{ "op": "add", "path": members_path, "value": [{ "value": eve }] }]),
                ),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "add members without a path",
            Req::patch(
                &acme(&format!("/Groups/{clean}")),
                &patch_body(json!([{ "op": "add", "value": { "members": [{ "value": eve }] } }])),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "add members without a path, under the Group URN",
            Req::patch(
                &acme(&format!("/Groups/{clean}")),
                &patch_body(
                    json!([{ "op": "add", "value": { GROUP_SCHEMA: { "members": [{ "value": eve }] } } }]),
                ),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "replace members of a group with hidden members",
            Req::patch(
                &acme(&format!("/Groups/{mixed_group}")),
                &patch_body(
                    json!([{ "op": "replace", "path": "members", "value": [{ "value": alice }, { "value": carol }] }]),
                ),
            ),
            403,
            "group_has_hidden_members",
        ),
        (
            "remove all members of a group with hidden members",
            Req::patch(
                &acme(&format!("/Groups/{mixed_group}")),
                &patch_body(json!([{ "op": "remove", "path": "members" }])),
            ),
            403,
            "group_has_hidden_members",
        ),
        (
            "remove members by a filter the gateway cannot read",
            Req::patch(
                &acme(&format!("/Groups/{mixed_group}")),
                &patch_body(json!([{ "op": "remove", "path": "members[value ne \"x\"]" }])),
            ),
            403,
            "group_has_hidden_members",
        ),
        (
            "remove the hidden member by id",
            Req::patch(
                &acme(&format!("/Groups/{mixed_group}")),
                &patch_body(
                    json!([{ "op": "remove", "path": format!("members[value eq \"{eve}\"]") }]),
                ),
            ),
            403,
            "member_out_of_scope",
        ),
        (
            "PUT a group with hidden members",
            Req::put(
                &acme(&format!("/Groups/{mixed_group}")),
                &json!({ "schemas": [GROUP_SCHEMA], "id": mixed_group, "displayName": "Mixed",
                         "members": [{ "value": alice }] }),
            ),
            403,
            "group_has_hidden_members",
        ),
        (
            "DELETE a group with hidden members",
            Req::delete(&acme(&format!("/Groups/{mixed_group}"))),
            403,
            "group_has_hidden_members",
        ),
    ];
    for (what, req, status, reason) in cases {
        let (r, log) = send_logged(&gw, req.bearer(&token));
        assert_denied(what, &r, &log, status, reason);
        assert_eq!(
            groups(&backend),
            before,
            "{what}: the backend's groups changed"
        );
        assert_eq!(users(&backend), users_before, "{what}: users changed");
    }
    assert!(
        !forwarded_writes(&backend)
            .iter()
            .any(|w| w.contains(&mixed_group) || w.starts_with("PATCH")),
        "a refused write was forwarded: {:?}",
        forwarded_writes(&backend)
    );
    assert_eq!(member_ids(&backend, &mixed_group), set(&[&alice, &eve]));
    assert_eq!(member_ids(&backend, &clean), set(&[&alice]));

    // Controls: named in-scope members can be added to and removed from a group with hidden
    // members, and the hidden member stays.
    let add =
        patch_body(json!([{ "op": "Add", "path": "members", "value": [{ "value": carol }] }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{mixed_group}")), &add).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(
        member_ids(&backend, &mixed_group),
        set(&[&alice, &eve, &carol])
    );
    let remove =
        patch_body(json!([{ "op": "Remove", "path": format!("members[value eq \"{carol}\"]") }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{mixed_group}")), &remove).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(member_ids(&backend, &mixed_group), set(&[&alice, &eve]));
    let rename =
        patch_body(json!([{ "op": "Replace", "path": "displayName", "value": "Renamed" }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{mixed_group}")), &rename).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(member_ids(&backend, &mixed_group), set(&[&alice, &eve]));
}

#[test]
fn group_write_answers_do_not_show_hidden_members() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let alice = seed(&backend, "alice@acme.com", &["alice@acme.com"]);
    let carol = seed(&backend, "carol@acme.com", &["carol@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let mixed_group = seed_group(&backend, "Mixed", &[&alice, &eve]);

    let add =
        patch_body(json!([{ "op": "Add", "path": "members", "value": [{ "value": carol }] }]));
    let rename =
        patch_body(json!([{ "op": "Replace", "path": "displayName", "value": "Renamed" }]));
    for (what, ops) in [("add a member", add), ("rename", rename)] {
        // RFC 7644 §3.5.2: `attributes` asks for the changed resource in the answer.
        let path = acme(&format!("/Groups/{mixed_group}?attributes=members"));
        let r = gw.send(Req::patch(&path, &ops).bearer(&token));
        r.expect(200);
        assert!(
            r.text().contains(&alice),
            "{what}: the answer lists no members:\n{r:?}"
        );
        assert!(
            !r.text().contains(&eve),
            "{what}: the hidden member shows in the answer:\n{r:?}"
        );
    }
    assert_eq!(
        member_ids(&backend, &mixed_group),
        set(&[&alice, &eve, &carol])
    );
}

#[test]
fn group_filters_on_hidden_members_reveal_nothing() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let alice = seed(&backend, "alice@acme.com", &["alice@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    seed_group(&backend, "Mixed", &[&alice, &eve]);

    let f = query_encode(&format!("members.value eq \"{eve}\""));
    let r = gw.send(Req::get(&acme(&format!("/Groups?filter={f}"))).bearer(&token));
    assert!(
        r.status.as_u16() == 400 || (r.status.as_u16() == 200 && r.json()["totalResults"] == 0),
        "a filter on a hidden member's id found its group:\n{r:?}"
    );
    let missing = query_encode(&format!("members.value eq \"{}\"", random_hex(16)));
    let m = gw.send(Req::get(&acme(&format!("/Groups?filter={missing}"))).bearer(&token));
    assert_eq!(
        (r.status, r.json()["totalResults"].clone()),
        (m.status, m.json()["totalResults"].clone()),
        "a hidden member's id reads differently from an unknown id"
    );
}

#[test]
fn group_filters_combining_a_visible_and_a_hidden_member_reveal_nothing() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let alice = seed(&backend, "alice@acme.com", &["alice@acme.com"]);
    let carol = seed(&backend, "carol@acme.com", &["carol@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    // Alice is in no group; eve's group has an in-scope member too, so the token may see it.
    let eves_group = seed_group(&backend, "Eve's", &[&eve, &carol]);

    let probe = |other: &str| {
        let f = query_encode(&format!(
            "members[value eq \"{alice}\" or value eq \"{other}\"]"
        ));
        gw.send(Req::get(&acme(&format!("/Groups?filter={f}"))).bearer(&token))
    };
    let hidden = probe(&eve);
    assert!(
        !hidden.text().contains(&eves_group),
        "a filter naming a hidden member found its group:\n{hidden:?}"
    );
    let unknown = probe(&random_hex(16));
    assert_eq!(
        (hidden.status, hidden.text().contains("\"totalResults\":0")),
        (
            unknown.status,
            unknown.text().contains("\"totalResults\":0")
        ),
        "a hidden member's id reads differently from an unknown id:\n{hidden:?}\n{unknown:?}"
    );
}

#[test]
fn group_bodies_with_urn_qualified_members_are_judged() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let before = groups(&backend);
    for body in [
        json!({ "schemas": [GROUP_SCHEMA], "displayName": "U",
                format!("{GROUP_SCHEMA}:members"): [{ "value": eve }] }),
        json!({ "schemas": [GROUP_SCHEMA], "displayName": "N",
                GROUP_SCHEMA: { "members": [{ "value": eve }] } }),
    ] {
        let (r, log) = send_logged(&gw, Req::post(&acme("/Groups"), &body).bearer(&token));
        assert_denied("URN members", &r, &log, 403, "member_out_of_scope");
        assert_eq!(groups(&backend), before);
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk and ServiceProviderConfig
// ---------------------------------------------------------------------------------------------

fn bulk(ops: Value) -> Value {
    json!({ "schemas": [BULK_SCHEMA], "Operations": ops })
}

fn bulk_post_user(bulk_id: &str, user_name: &str) -> Value {
    json!({ "method": "POST", "path": "/Users", "bulkId": bulk_id, "data": user_body(user_name) })
}

#[test]
fn bulk_is_judged_operation_by_operation_and_refused_as_a_whole() {
    let (backend, setup) = backend_and_setup(|_| {});
    let plain = setup.issue("acme", "no-bulk", &[]);
    let bulk_token = setup.issue(
        "acme",
        "bulk",
        &[
            "users:read",
            "users:write",
            "groups:read",
            "groups:write",
            "bulk",
        ],
    );
    let gw = setup.start();
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let users_before = users(&backend);
    let groups_before = groups(&backend);

    // The backend advertises Bulk; the gateway only to tokens with the bulk scope.
    let r = gw.send(Req::get(&acme("/ServiceProviderConfig")).bearer(&plain));
    r.expect(200);
    let spc = r.json();
    assert_eq!(spc["bulk"]["supported"], false, "{r:?}");
    assert_eq!(spc["bulk"]["maxOperations"], 0, "{r:?}");
    let r = gw.send(Req::get(&acme("/ServiceProviderConfig")).bearer(&bulk_token));
    r.expect(200);
    let spc = r.json();
    assert_eq!(spc["bulk"]["supported"], true, "{r:?}");
    assert_eq!(spc["bulk"]["maxOperations"], 100, "{r:?}");
    assert_eq!(spc["bulk"]["maxPayloadSize"], 65536, "{r:?}");

    let good = bulk(json!([bulk_post_user("a", "bulk-a@acme.com")]));
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "a token without bulk",
            &plain,
            good.clone(),
            403,
            "scope_denied",
        ),
        (
            "one out-of-scope POST among good ones",
            &bulk_token,
            bulk(json!([
                bulk_post_user("a", "bulk-a@acme.com"),
                bulk_post_user("e", "bulk-e@evil.com"),
                bulk_post_user("b", "bulk-b@acme.com")
            ])),
            403,
            "domain_out_of_scope",
        ),
        (
            "DELETE of an out-of-scope user",
            &bulk_token,
            bulk(json!([
                bulk_post_user("a", "bulk-a@acme.com"),
                { "method": "DELETE", "path": format!("/Users/{eve}") }
            ])),
            404,
            "domain_out_of_scope",
        ),
        (
            "PATCH of an out-of-scope user",
            &bulk_token,
            bulk(json!([{ "method": "PATCH", "path": format!("/Users/{eve}"),
                          "data": patch_body(json!([{ "op": "replace", "path": "userName", "value": "eve@acme.com" }])) }])),
            404,
            "domain_out_of_scope",
        ),
        (
            "a group with an out-of-scope member",
            &bulk_token,
            bulk(json!([{ "method": "POST", "path": "/Groups", "bulkId": "g",
                          "data": { "schemas": [GROUP_SCHEMA], "displayName": "G", "members": [{ "value": eve }] } }])),
            403,
            "member_out_of_scope",
        ),
        (
            "a reference to a user created later in the request",
            &bulk_token,
            bulk(json!([
                { "method": "POST", "path": "/Groups", "bulkId": "g",
                  "data": { "schemas": [GROUP_SCHEMA], "displayName": "G", "members": [{ "value": "bulkId:later" }] } },
                bulk_post_user("later", "later@acme.com")
            ])),
            403,
            "member_out_of_scope",
        ),
        (
            "more than 100 operations",
            &bulk_token,
            bulk(Value::Array(
                (0..101)
                    .map(|i| bulk_post_user(&format!("u{i}"), &format!("u{i}@acme.com")))
                    .collect(),
            )),
            400,
            "bulk_invalid",
        ),
    ];
    for (what, token, body, status, reason) in cases {
        let (r, log) = send_logged(&gw, Req::post(&acme("/Bulk"), &body).bearer(token));
        assert_denied(what, &r, &log, status, reason);
        assert_eq!(users(&backend), users_before, "{what}: users changed");
        assert_eq!(groups(&backend), groups_before, "{what}: groups changed");
    }
    assert!(
        forwarded_writes(&backend).is_empty(),
        "a refused Bulk request was forwarded: {:?}",
        forwarded_writes(&backend)
    );

    // A user created in the request may be made a group member by its bulkId.
    let body = bulk(json!([
        bulk_post_user("u1", "bulk-u1@acme.com"),
        { "method": "POST", "path": "/Groups", "bulkId": "g1",
          "data": { "schemas": [GROUP_SCHEMA], "displayName": "Bulk group", "members": [{ "value": "bulkId:u1" }] } }
    ]));
    let r = gw.send(Req::post(&acme("/Bulk"), &body).bearer(&bulk_token));
    r.expect(200);
    assert_no_backend_address(&r, &backend);
    let ops = r.json()["Operations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ops.len(), 2, "{r:?}");
    assert!(
        ops.iter().all(|o| o["status"] == "201"),
        "every operation should succeed:\n{r:?}"
    );
    let created = backend.users_named("acme", "bulk-u1@acme.com");
    assert_eq!(created.len(), 1, "the bulk user was not created");
    let uid = id_of(&created[0]);
    let group = backend
        .list("acme", "Groups")
        .into_iter()
        .find(|g| g["displayName"] == "Bulk group")
        .expect("the bulk group was not created");
    assert_eq!(member_values(&group), set(&[&uid]), "{group}");
    assert!(backend.get("acme", "Users", &eve).is_some());
}

// ---------------------------------------------------------------------------------------------
// Report-only
// ---------------------------------------------------------------------------------------------

#[test]
fn report_only_lets_domain_refusals_through_and_logs_would_deny() {
    let (backend, setup) = backend_and_setup(|_| {});
    setup.replace_in_config(
        "    domains: [acme.com, \"*.acme.io\"]\n",
        "    domains: [acme.com, \"*.acme.io\"]\n    mode: report_only\n",
    );
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    let (r, log) = send_logged(
        &gw,
        Req::post(&acme("/Users"), &user_body("eve@evil.com")).bearer(&token),
    );
    r.expect(201);
    let id = id_of(&r.json());
    assert_eq!(
        backend.get("acme", "Users", &id).expect("created")["userName"],
        "eve@evil.com"
    );
    assert_eq!(log["decision"], "would_deny", "{log}");
    assert_eq!(log["reason"], "domain_out_of_scope", "{log}");
    assert_eq!(log["status"], 201, "{log}");

    // An in-scope create is a plain allow.
    let (r, log) = send_logged(
        &gw,
        Req::post(&acme("/Users"), &user_body("ok@acme.com")).bearer(&token),
    );
    r.expect(201);
    assert_eq!(log["decision"], "allow", "{log}");

    // Malformed bodies are refused whatever the mode.
    let before = users(&backend);
    let raw = format!(
        r#"{{"schemas":["{USER_SCHEMA}"],"userName":"a@acme.com","userName":"eve2@evil.com"}}"#
    );
    let (r, log) = send_logged(
        &gw,
        Req::new(Method::POST, &acme("/Users"))
            .header("content-type", "application/scim+json")
            .body(raw)
            .bearer(&token),
    );
    assert_denied("duplicate keys", &r, &log, 400, "invalid_body");
    assert_eq!(users(&backend), before);
}

// ---------------------------------------------------------------------------------------------
// Regressions from the adversarial review (each was a confirmed bypass against scim2-server)
// ---------------------------------------------------------------------------------------------

#[test]
fn patch_paths_the_backend_reads_more_loosely_are_refused() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let frank = seed(&backend, "frank", &["frank@acme.com"]);
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let bob = seed(&backend, "bob@acme.com", &["bob@acme.com"]);
    let g = seed_group(&backend, "mixed", &[&bob, &eve]);
    let users_before = backend.state("acme", "Users");
    let groups_before = groups(&backend);
    let uri = acme(&format!("/Users/{frank}"));
    for op in [
        json!({"op": "replace", "path": "emails pr", "value": {"value": "victim@evil.com"}}),
        json!({"op": "replace", "path": "emails [type eq \"work\"]", "value": {"value": "victim@evil.com"}}),
        json!({"op": "replace", "path": "emails eq \"frank@acme.com\"", "value": {"value": "victim@evil.com"}}),
        json!({"op": "add", "path": "emails [value pr]", "value": {"value": "victim@evil.com"}}),
        json!({"op": "remove", "path": "emails pr"}),
        json!({"op": "replace", "path": "user_name", "value": "cfo@evil.com"}),
        json!({"op": "replace", "value": {"user_name": "cto@evil.com"}}),
    ] {
        let r = gw.send(Req::patch(&uri, &patch_body(json!([op]))).bearer(&token));
        assert_scim_error(&r, 400);
        assert_eq!(backend.state("acme", "Users"), users_before, "{op}");
    }
    // Creating or replacing with an alias the backend accepts is refused too.
    let body = json!({"schemas": [USER_SCHEMA], "user_name": "ceo@evil.com", "emails": [{"value": "mallory@acme.com"}]});
    assert_scim_error(
        &gw.send(Req::post(&acme("/Users"), &body).bearer(&token)),
        400,
    );
    assert_scim_error(&gw.send(Req::put(&uri, &body).bearer(&token)), 400);
    assert_eq!(backend.state("acme", "Users"), users_before);
    // Group members cannot be removed or wiped through loose paths either.
    let guri = acme(&format!("/Groups/{g}"));
    for op in [
        json!({"op": "remove", "path": format!("members eq \"{eve}\"")}),
        json!({"op": "remove", "path": format!("members [value eq \"{eve}\"]")}),
        json!({"op": "remove", "path": "members pr"}),
    ] {
        let r = gw.send(Req::patch(&guri, &patch_body(json!([op]))).bearer(&token));
        assert_scim_error(&r, 400);
        assert_eq!(groups(&backend), groups_before, "{op}");
    }
}

#[test]
fn a_conditional_get_tells_nothing_about_a_hidden_user() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let eve = seed(&backend, "eve@evil.com", &["eve@evil.com"]);
    let missing = acme("/Users/0123456789abcdef0123456789abcdef");
    for (name, value) in [("if-none-match", "*"), ("if-match", "\"x\"")] {
        let hidden = gw.send(
            Req::get(&acme(&format!("/Users/{eve}")))
                .bearer(&token)
                .header(name, value),
        );
        let absent = gw.send(Req::get(&missing).bearer(&token).header(name, value));
        let h = assert_scim_error(&hidden, 404);
        let a = assert_scim_error(&absent, 404);
        assert_eq!(h, a, "{name}: a hidden user differs from a missing one");
    }
}

#[test]
fn a_user_who_left_the_scope_cannot_be_changed_from_a_stale_cache() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let carol = seed(&backend, "carol@acme.com", &["carol@acme.com"]);
    let g = seed_group(&backend, "team", &[&carol]);
    // Reading the group caches carol as visible.
    gw.send(Req::get(&acme(&format!("/Groups/{g}"))).bearer(&token))
        .expect(200);
    // The directory moves carol out of acme.com behind the gateway's back.
    let moved = backend.send(Req::put(
        &format!("/acme/v2/Users/{carol}"),
        &user_with("carol@evil.com", &["carol@evil.com"]),
    ));
    assert!(moved.status.is_success(), "{moved:?}");
    let before = backend.state("acme", "Users");
    let r = gw.send(
        Req::patch(
            &acme(&format!("/Users/{carol}")),
            &patch_body(json!([{"op": "replace", "path": "displayName", "value": "pwned"}])),
        )
        .bearer(&token),
    );
    assert_scim_error(&r, 404);
    assert_scim_error(
        &gw.send(Req::delete(&acme(&format!("/Users/{carol}"))).bearer(&token)),
        404,
    );
    assert_eq!(backend.state("acme", "Users"), before);
}

// ---------------------------------------------------------------------------------------------
// Conditional writes (`upstream.conditional_writes`)
// ---------------------------------------------------------------------------------------------

/// The backend's current version of a user (`meta.version`, its ETag).
fn version_of(backend: &Backend, id: &str) -> String {
    let u = backend
        .get("acme", "Users", id)
        .unwrap_or_else(|| panic!("user {id} is not in the backend"));
    u["meta"]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta.version (ETag) in {u}"))
        .to_owned()
}

/// The requests the gateway sent about user `id` since `from` (an index into
/// `backend.forwarded()`), as `METHOD If-Match` strings.
fn sent_about(backend: &Backend, id: &str, from: usize) -> Vec<String> {
    backend.forwarded()[from..]
        .iter()
        .filter(|r| r.path().ends_with(&format!("/Users/{id}")))
        .map(|r| format!("{} {}", r.method(), r.get("HTTP_IF_MATCH").unwrap_or("-")))
        .collect()
}

fn rename(display: &str) -> Value {
    json!({
        "schemas": [PATCH_SCHEMA],
        "Operations": [{ "op": "replace", "path": "displayName", "value": display }]
    })
}

#[test]
fn pinned_writes_are_judged_on_the_cached_user_and_never_land_on_a_user_changed_since() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let id = seed(&backend, "ada@acme.com", &["ada@acme.com"]);

    // First write: the user is read (nothing cached), and the write is pinned to what was read.
    let v1 = version_of(&backend, &id);
    let mark = backend.forwarded().len();
    let r = gw.send(Req::patch(&acme(&format!("/Users/{id}")), &rename("Ada")).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(
        sent_about(&backend, &id, mark),
        vec!["GET -".to_owned(), format!("PATCH {v1}")]
    );

    // scim2-server answers a PATCH with 204 and no body: nothing to cache, so the next write
    // reads the user again. A PUT's answer is the whole user at its new version.
    let v2 = version_of(&backend, &id);
    assert_ne!(v1, v2);
    let mark = backend.forwarded().len();
    let put = user_with("ada@acme.com", &["ada@acme.com", "ada@sub.acme.io"]);
    gw.send(Req::put(&acme(&format!("/Users/{id}")), &put).bearer(&token))
        .expect(200);
    assert_eq!(
        sent_about(&backend, &id, mark),
        vec!["GET -".to_owned(), format!("PUT {v2}")]
    );

    // The next write is judged on the copy the PUT's answer left: no read, pinned to it.
    let v3 = version_of(&backend, &id);
    let mark = backend.forwarded().len();
    let r = gw.send(Req::patch(&acme(&format!("/Users/{id}")), &rename("Ada L.")).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(sent_about(&backend, &id, mark), vec![format!("PATCH {v3}")]);
    assert_eq!(
        backend.get("acme", "Users", &id).unwrap()["displayName"],
        "Ada L."
    );

    // Someone else moves a user out of the domains, straight at the backend, after the gateway
    // cached it. The pinned write is refused by the backend (412); the gateway reads the user
    // afresh, sees it outside the domains and answers 404 without writing again.
    let moved = |m: &Method| {
        let to = format!("{m}@evil.com");
        json!({
            "schemas": [PATCH_SCHEMA],
            "Operations": [
                { "op": "replace", "path": "userName", "value": to },
                { "op": "replace", "path": "emails", "value": [{ "value": to, "primary": true }] }
            ]
        })
    };
    for method in [Method::PATCH, Method::PUT, Method::DELETE] {
        let id = seed(
            &backend,
            &format!("{method}@acme.com"),
            &[&format!("{method}@acme.com")],
        );
        let path = acme(&format!("/Users/{id}"));
        // Caches the user at the version of this write's answer.
        let mine = user_with(
            &format!("{method}@acme.com"),
            &[&format!("{method}@acme.com")],
        );
        gw.send(Req::put(&path, &mine).bearer(&token)).expect(200);
        let cached = version_of(&backend, &id);
        backend
            .send(Req::patch(&format!("/acme/v2/Users/{id}"), &moved(&method)))
            .expect(204);
        let before = users(&backend);
        let mark = backend.forwarded().len();
        let req = match method {
            Method::PATCH => Req::patch(&path, &rename("mine now")),
            Method::PUT => Req::put(&path, &user_with("back@acme.com", &["back@acme.com"])),
            _ => Req::delete(&path),
        };
        let (r, log) = send_logged(&gw, req.bearer(&token));
        assert_denied(method.as_str(), &r, &log, 404, "domain_out_of_scope");
        assert_eq!(
            sent_about(&backend, &id, mark),
            vec![format!("{method} {cached}"), "GET -".to_owned()],
            "{method}: the write should go out pinned to the cached version, be refused, and \
             the user be read afresh"
        );
        assert_eq!(
            users(&backend),
            before,
            "{method}: the moved user was changed"
        );
    }

    // Two writes judged on fresh reads above, one on the cached user, and per method a priming
    // PUT (read) and a refused cached judgement (rejudged).
    let metrics = gw.admin_get("/metrics");
    let text = metrics.text();
    let count = |result: &str| -> f64 {
        let series = format!("scimgate_pinned_writes_total{{result=\"{result}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        (count("read"), count("cached"), count("rejudged")),
        (5.0, 1.0, 3.0),
        "{text}"
    );
}

#[test]
fn a_clients_if_match_is_evaluated_against_the_version_judged() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let id = seed(&backend, "grace@acme.com", &["grace@acme.com"]);
    let path = acme(&format!("/Users/{id}"));
    let v1 = version_of(&backend, &id);

    // A stale or unknown version: 412 from the gateway, nothing written.
    let before = users(&backend);
    for stale in [r#"W/"not-a-version""#, r#""0", W/"00""#] {
        let r = gw.send(
            Req::patch(&path, &rename("x"))
                .bearer(&token)
                .header("if-match", stale),
        );
        let body = assert_scim_error(&r, 412);
        assert!(
            body["detail"].as_str().unwrap_or("").contains("If-Match"),
            "{body}"
        );
    }
    // Not a list of entity tags: 400.
    for bad in ["v1", r#"W/"1", *"#] {
        let r = gw.send(
            Req::patch(&path, &rename("x"))
                .bearer(&token)
                .header("if-match", bad),
        );
        assert_scim_error(&r, 400);
    }
    assert_eq!(users(&backend), before);
    assert!(
        forwarded_writes(&backend).is_empty(),
        "{:?}",
        forwarded_writes(&backend)
    );

    // The current version, weakly compared, among others; and `*`: the write goes through,
    // pinned to the version the gateway read (never the client's list).
    let strong = v1.trim_start_matches("W/").to_owned();
    let mark = backend.forwarded().len();
    let r = gw.send(
        Req::patch(&path, &rename("Grace"))
            .bearer(&token)
            .header("if-match", &format!(r#""0", {strong}"#)),
    );
    assert_2xx_patch(&r);
    assert_eq!(
        sent_about(&backend, &id, mark),
        vec!["GET -".to_owned(), format!("PATCH {v1}")]
    );
    let v2 = version_of(&backend, &id);
    let r = gw.send(
        Req::patch(&path, &rename("Grace H."))
            .bearer(&token)
            .header("if-match", "*"),
    );
    assert_2xx_patch(&r);
    assert_eq!(
        backend.get("acme", "Users", &id).unwrap()["displayName"],
        "Grace H."
    );
    assert_ne!(version_of(&backend, &id), v2);
}

/// Moves a user to `to` straight at the backend (as the IdP, another replica, … would).
fn move_to(backend: &Backend, id: &str, to: &str) {
    let body = json!({
        "schemas": [PATCH_SCHEMA],
        "Operations": [
            { "op": "replace", "path": "userName", "value": to },
            { "op": "replace", "path": "emails", "value": [{ "value": to, "primary": true }] }
        ]
    });
    backend
        .send(Req::patch(&format!("/acme/v2/Users/{id}"), &body))
        .expect(204);
}

/// Seeds `<label>@acme.com`, has the gateway cache it (in scope) from the answer to a PUT
/// through it, then moves it to `<label>@evil.com` straight at the backend. Returns its id, its
/// gateway path and the backend's copy after the move.
fn cached_then_moved(
    backend: &Backend,
    gw: &Gateway,
    token: &str,
    label: &str,
) -> (String, String, Value) {
    let mine = format!("{label}@acme.com");
    let id = seed(backend, &mine, &[&mine]);
    let path = acme(&format!("/Users/{id}"));
    gw.send(Req::put(&path, &user_with(&mine, &[&mine])).bearer(token))
        .expect(200);
    move_to(backend, &id, &format!("{label}@evil.com"));
    let before = backend
        .get("acme", "Users", &id)
        .unwrap_or_else(|| panic!("user {id} is not in the backend"));
    (id, path, before)
}

/// A write that would take user `i` over (or delete it): DELETE, a PATCH or a PUT of
/// `taken<i>@acme.com`.
fn takeover(method: &Method, path: &str, i: usize) -> Req {
    let taken = format!("taken{i}@acme.com");
    match *method {
        Method::DELETE => Req::delete(path),
        Method::PATCH => Req::patch(
            path,
            &json!({
                "schemas": [PATCH_SCHEMA],
                "Operations": [
                    { "op": "replace", "path": "userName", "value": taken },
                    { "op": "replace", "path": "emails", "value": [{ "value": taken, "primary": true }] }
                ]
            }),
        ),
        _ => Req::put(path, &user_with(&taken, &[&taken])),
    }
}

/// Found by adversarial review: a CGI/WSGI backend reads `if_match` as `If-Match` and joins it
/// to the gateway's pin (`W/"3",*`), which `*` then defeats.
#[test]
fn a_header_spelled_with_underscores_cannot_loosen_the_pin() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    for (i, method) in [Method::DELETE, Method::PATCH, Method::PUT]
        .into_iter()
        .enumerate()
    {
        let (id, path, before) = cached_then_moved(&backend, &gw, &token, &format!("victim{i}"));
        let req = takeover(&method, &path, i);
        let r = gw.send(req.bearer(&token).header("if_match", "*"));
        assert_eq!(
            backend.get("acme", "Users", &id),
            Some(before),
            "{method}: a user outside acme.com was changed or deleted; the gateway answered {r:?}"
        );
        assert_scim_error(&r, 404);
        let seen = backend.forwarded();
        assert!(
            seen.iter()
                .all(|r| r.get("HTTP_IF_MATCH").is_none_or(|v| !v.contains('*'))),
            "{method}: the backend saw a `*` condition"
        );
    }
}

/// Found by adversarial review: a write judged on the cached copy of a user deleted since got
/// the backend's own 404, unlike the 404 of a user who left the domains.
#[test]
fn a_user_deleted_since_it_was_cached_reads_like_one_that_left_the_domains() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let missing = gw.send(Req::delete(&acme(&format!("/Users/{}", random_hex(16)))).bearer(&token));
    let expected = assert_scim_error(&missing, 404);
    for (i, fate) in ["moved", "deleted"].into_iter().enumerate() {
        let mine = format!("leaker{i}@acme.com");
        let id = seed(&backend, &mine, &[&mine]);
        let path = acme(&format!("/Users/{id}"));
        gw.send(Req::put(&path, &user_with(&mine, &[&mine])).bearer(&token))
            .expect(200);
        if fate == "moved" {
            move_to(&backend, &id, &format!("leaker{i}@evil.com"));
        } else {
            backend
                .send(Req::delete(&format!("/acme/v2/Users/{id}")))
                .expect(204);
        }
        for req in [
            Req::delete(&path),
            Req::patch(&path, &rename("x")),
            Req::put(&path, &user_with(&mine, &[&mine])),
        ] {
            let r = gw.send(req.bearer(&token));
            let body = assert_scim_error(&r, 404);
            assert_eq!(body, expected, "{fate}: {r:?}");
        }
    }
    // A client's If-None-Match is the backend's to evaluate (on a fresh judgement): `*` on an
    // existing user is 412, and nothing is written.
    let id = seed(&backend, "kept@acme.com", &["kept@acme.com"]);
    let before = users(&backend);
    let r = gw.send(
        Req::patch(&acme(&format!("/Users/{id}")), &rename("x"))
            .bearer(&token)
            .header("if-none-match", "*"),
    );
    assert_eq!(r.status.as_u16(), 412, "{r:?}");
    assert_eq!(users(&backend), before);
}

/// Found by adversarial review: `Connection: if-match` made the gateway drop its own pin on the
/// way out, so a write judged on a stale cached copy reached the backend unconditioned.
#[test]
fn a_connection_header_cannot_strip_the_pin() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    for (i, method) in [Method::DELETE, Method::PATCH, Method::PUT]
        .into_iter()
        .enumerate()
    {
        let (id, path, before) = cached_then_moved(&backend, &gw, &token, &format!("conn{i}"));
        let req = takeover(&method, &path, i);
        let mark = backend.forwarded().len();
        let r = gw.send(
            req.bearer(&token)
                .header("connection", "keep-alive, if-match"),
        );
        assert_eq!(
            backend.get("acme", "Users", &id),
            Some(before),
            "{method}: a user outside acme.com was changed or deleted; sent {:?}; answer {r:?}",
            sent_about(&backend, &id, mark)
        );
        assert_scim_error(&r, 404);
        assert!(
            sent_about(&backend, &id, mark)
                .iter()
                .all(|s| s.starts_with("GET ") || !s.ends_with(" -")),
            "{method}: a write went out without its pin: {:?}",
            sent_about(&backend, &id, mark)
        );
    }
}

/// Found by adversarial review: the backend checks a PUT's body before its condition, so a
/// stale cached judgement let the backend's 400 about a user who left the domains through,
/// where a deleted user got the gateway's 404.
#[test]
fn a_refusal_on_a_cached_judgement_is_judged_again_before_it_is_shown() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let mut answers = Vec::new();
    for (i, fate) in ["moved", "deleted"].into_iter().enumerate() {
        let mine = format!("oracle{i}@acme.com");
        let id = seed(&backend, &mine, &[&mine]);
        let path = acme(&format!("/Users/{id}"));
        gw.send(Req::put(&path, &user_with(&mine, &[&mine])).bearer(&token))
            .expect(200);
        if fate == "moved" {
            move_to(&backend, &id, &format!("oracle{i}@evil.com"));
        } else {
            backend
                .send(Req::delete(&format!("/acme/v2/Users/{id}")))
                .expect(204);
        }
        let mut body = user_with(&mine, &[&mine]);
        body["active"] = json!("not a boolean");
        let r = gw.send(Req::put(&path, &body).bearer(&token));
        answers.push((fate, r.status.as_u16(), r.text().replace(&id, "<id>")));
    }
    assert_eq!(
        (answers[0].1, &answers[0].2),
        (answers[1].1, &answers[1].2),
        "a user who left the domains reads unlike a deleted one: {answers:#?}"
    );
    assert_eq!(answers[0].1, 404, "{answers:#?}");
}

/// Found by adversarial review: a write the backend refused on an unchanged cached user was
/// sent a second time after the fresh read, on every request.
#[test]
fn a_refused_write_on_an_unchanged_user_is_not_sent_twice() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let id = seed(&backend, "amp@acme.com", &["amp@acme.com"]);
    let path = acme(&format!("/Users/{id}"));
    gw.send(Req::put(&path, &user_with("amp@acme.com", &["amp@acme.com"])).bearer(&token))
        .expect(200);
    let v = version_of(&backend, &id);
    let mut body = user_with("amp@acme.com", &["amp@acme.com"]);
    body["active"] = json!("not a boolean");
    for _ in 0..3 {
        let mark = backend.forwarded().len();
        let r = gw.send(Req::put(&path, &body).bearer(&token));
        assert_scim_error(&r, 400);
        let sent = sent_about(&backend, &id, mark);
        let count = |m: &str| sent.iter().filter(|s| s.starts_with(m)).count();
        assert_eq!(
            (count("PUT "), count("GET ")),
            (1, 1),
            "one client PUT should be one backend PUT and one read: {sent:?}"
        );
        assert!(sent.contains(&format!("PUT {v}")), "{sent:?}");
    }
    assert_eq!(version_of(&backend, &id), v);
}

/// Found by adversarial review: `Connection: x-request-id` removed the request id after it was
/// logged, so the backend's records of the request no longer matched the gateway's.
#[test]
fn the_request_id_the_client_sees_is_the_one_the_backend_gets() {
    let (backend, setup) = backend_and_setup(|o| o.conditional_writes = true);
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let id = seed(&backend, "rid@acme.com", &["rid@acme.com"]);
    let path = acme(&format!("/Users/{id}"));
    for connection in [None, Some("x-request-id")] {
        let mark = backend.forwarded().len();
        let mut req = Req::patch(&path, &rename("x"))
            .bearer(&token)
            .request_id("e2e-rid-1");
        if let Some(c) = connection {
            req = req.header("connection", c);
        }
        let r = gw.send(req);
        assert_2xx_patch(&r);
        let shown = r.header("x-request-id").map(str::to_owned);
        let seen: Vec<Option<String>> = backend.forwarded()[mark..]
            .iter()
            .map(|r| r.get("HTTP_X_REQUEST_ID").map(str::to_owned))
            .collect();
        assert!(
            !seen.is_empty() && seen.iter().all(|v| *v == shown),
            "{connection:?}: the client was shown {shown:?}, the backend got {seen:?}"
        );
    }
}
