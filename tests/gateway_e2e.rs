//! End-to-end tests: the real `scimgate` binary in front of a real SCIM backend (scim2-server),
//! over TLS. Each test starts its own backend and gateway, talks to the gateway as a
//! provisioning client would, and checks the status, the body and what the backend has (by
//! asking it directly) or received (from its `--debug` environ log).
//!
//! Run with `scripts/test` (it installs scim2-server), or set `SCIM2_SERVER`.

mod common;

use common::*;
use http::{Method, Version};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn acme(path: &str) -> String {
    format!("{ACME_PREFIX}{path}")
}

fn globex(path: &str) -> String {
    format!("{GLOBEX_PREFIX}{path}")
}

/// A configuration whose upstreams are never contacted, for tests that need no backend.
fn setup_without_backend() -> Setup {
    let opts = GatewayOptions {
        acme_upstream: "http://127.0.0.1:9/acme/v2".into(),
        globex_upstream: "http://127.0.0.1:9/globex/v2".into(),
        upstream_timeout: "5s".into(),
        max_body_bytes: 65536,
        shutdown_grace: "5s".into(),
        conditional_writes: false,
    };
    Setup::new(&opts, "backend-unused")
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}

fn schemas_of(v: &Value) -> Vec<String> {
    v["schemas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_2xx_patch(resp: &Resp) {
    assert!(
        resp.status.as_u16() == 200 || resp.status.as_u16() == 204,
        "PATCH should succeed with 200 or 204; response:\n{resp:?}"
    );
}

/// The backend-log assertions are only as good as the log parser: check it on what Python's
/// pprint really writes (a long value wrapped over lines, a quote, a tuple, two requests).
#[test]
fn harness_reads_the_backend_debug_log() {
    let log = "DEBUG:log_environ:{'HTTP_AUTHORIZATION': 'Bearer '\n\
               \x20                      'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx '\n\
               \x20                      'tail',\n\
               \x20'HTTP_X_QUOTE': \"it's\",\n\
               \x20'PATH_INFO': '/acme/v2/Users',\n\
               \x20'QUERY_STRING': '',\n\
               \x20'wsgi.version': (1, 0)}\n\
               127.0.0.1 - - [23/Nov/2026 19:02:10] \"GET /acme/v2/Users HTTP/1.1\" 200 10\n\
               DEBUG:log_environ:{'PATH_INFO': '/globex/v2/Groups',\n\
               \x20'REQUEST_METHOD': 'POST'}\n";
    let reqs = parse_debug_log(log);
    assert_eq!(reqs.len(), 2);
    let expected = format!("Bearer {} tail", "x".repeat(60));
    assert_eq!(reqs[0].get("HTTP_AUTHORIZATION"), Some(expected.as_str()));
    assert_eq!(reqs[0].get("HTTP_X_QUOTE"), Some("it's"));
    assert_eq!(reqs[0].path(), "/acme/v2/Users");
    assert_eq!(reqs[0].query(), "");
    assert_eq!(reqs[0].get("wsgi.version"), Some("(1, 0)"));
    assert_eq!(reqs[1].path(), "/globex/v2/Groups");
    assert_eq!(reqs[1].method(), "POST");
}

// ---------------------------------------------------------------------------------------------
// Provisioning through the gateway
// ---------------------------------------------------------------------------------------------

#[test]
fn users_create_get_filter_patch_put_delete() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    // Create: 201, and every URL in the answer is the gateway's.
    let r = gw.send(Req::post(&acme("/Users"), &user_body("bjensen@acme.com")).bearer(&token));
    r.expect(201);
    assert_no_backend_address(&r, &backend);
    let created = r.json();
    let id = id_of(&created);
    let public = format!("{}/acme/scim/v2/Users/{id}", gw.origin());
    assert_eq!(
        r.header("location"),
        Some(public.as_str()),
        "Location; response:\n{r:?}"
    );
    assert_eq!(
        created["meta"]["location"],
        public.as_str(),
        "meta.location; response:\n{r:?}"
    );
    let stored = backend
        .get("acme", "Users", &id)
        .expect("the user exists in the backend");
    assert_eq!(stored["userName"], "bjensen@acme.com");

    // Get.
    let r = gw.send(Req::get(&acme(&format!("/Users/{id}"))).bearer(&token));
    r.expect(200);
    assert_no_backend_address(&r, &backend);
    let got = r.json();
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["userName"], "bjensen@acme.com");
    assert_eq!(got["meta"]["location"], public.as_str());

    // List with a filter: only the matching user, with rewritten locations.
    backend.create("acme", "Users", &user_body("other@acme.com"));
    let filter = query_encode(r#"userName eq "bjensen@acme.com""#);
    let r = gw.send(Req::get(&acme(&format!("/Users?filter={filter}"))).bearer(&token));
    r.expect(200);
    assert_no_backend_address(&r, &backend);
    let list = r.json();
    assert!(
        schemas_of(&list).contains(&LIST_SCHEMA.to_owned()),
        "not a ListResponse:\n{r:?}"
    );
    assert_eq!(
        list["totalResults"], 1,
        "filter must match one user:\n{r:?}"
    );
    assert_eq!(list["Resources"][0]["id"], id.as_str());
    assert_eq!(list["Resources"][0]["meta"]["location"], public.as_str());
    let r = gw.send(Req::get(&acme("/Users")).bearer(&token));
    r.expect(200);
    assert_eq!(r.json()["totalResults"], 2, "unfiltered list:\n{r:?}");

    // PATCH with a lower-case op.
    let patch =
        patch_body(json!([{ "op": "replace", "path": "displayName", "value": "Babs Jensen" }]));
    let r = gw.send(Req::patch(&acme(&format!("/Users/{id}")), &patch).bearer(&token));
    assert_2xx_patch(&r);
    assert_no_backend_address(&r, &backend);
    assert_eq!(
        backend.get("acme", "Users", &id).unwrap()["displayName"],
        "Babs Jensen"
    );

    // PATCH with "Replace", as Microsoft Entra sends it, and a path-less value.
    let patch = patch_body(json!([{ "op": "Replace", "value": { "active": false } }]));
    let r = gw.send(Req::patch(&acme(&format!("/Users/{id}")), &patch).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(backend.get("acme", "Users", &id).unwrap()["active"], false);

    // PUT replaces the whole resource.
    let mut replacement = user_body("bjensen@acme.com");
    replacement["displayName"] = json!("Barbara Jensen");
    replacement["id"] = json!(id);
    let r = gw.send(Req::put(&acme(&format!("/Users/{id}")), &replacement).bearer(&token));
    r.expect(200);
    assert_no_backend_address(&r, &backend);
    assert_eq!(r.json()["meta"]["location"], public.as_str());
    let stored = backend.get("acme", "Users", &id).unwrap();
    assert_eq!(stored["displayName"], "Barbara Jensen");
    assert_eq!(stored["active"], true, "PUT replaced the whole user");

    // DELETE: 204, gone from the backend, and a later GET is the backend's 404.
    let r = gw.send(Req::delete(&acme(&format!("/Users/{id}"))).bearer(&token));
    r.expect(204);
    assert!(r.body.is_empty(), "204 with a body:\n{r:?}");
    assert_no_backend_address(&r, &backend);
    assert!(
        backend.get("acme", "Users", &id).is_none(),
        "the user is still in the backend"
    );
    let r = gw.send(Req::get(&acme(&format!("/Users/{id}"))).bearer(&token));
    assert_scim_error(&r, 404);
    assert_no_backend_address(&r, &backend);

    // Everything went to the acme tenant, on canonical paths. (The gateway may add its own GETs,
    // e.g. to look up the stored user before a write; the writes are the client's, in order.)
    let fwd = backend.forwarded();
    for req in &fwd {
        assert!(
            req.path().starts_with("/acme/v2/Users"),
            "forwarded to {}",
            req.path()
        );
    }
    let writes: Vec<&str> = fwd
        .iter()
        .map(|r| r.method())
        .filter(|m| *m != "GET")
        .collect();
    assert_eq!(
        writes,
        ["POST", "PATCH", "PATCH", "PUT", "DELETE"],
        "writes the backend received"
    );
    assert_token_not_at_backend(&backend, &token);
}

#[test]
fn groups_create_get_patch_members_delete() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let member = id_of(&backend.create("acme", "Users", &user_body("member@acme.com")));

    let r = gw.send(Req::post(&acme("/Groups"), &group_body("Engineering")).bearer(&token));
    r.expect(201);
    assert_no_backend_address(&r, &backend);
    let gid = id_of(&r.json());
    let public = format!("{}/acme/scim/v2/Groups/{gid}", gw.origin());
    assert_eq!(
        r.header("location"),
        Some(public.as_str()),
        "Location; response:\n{r:?}"
    );
    assert_eq!(r.json()["meta"]["location"], public.as_str());
    assert_eq!(
        backend
            .get("acme", "Groups", &gid)
            .expect("group in backend")["displayName"],
        "Engineering"
    );

    let r = gw.send(Req::get(&acme(&format!("/Groups/{gid}"))).bearer(&token));
    r.expect(200);
    assert_eq!(r.json()["displayName"], "Engineering");
    assert_eq!(r.json()["meta"]["location"], public.as_str());

    // Add a member.
    let add =
        patch_body(json!([{ "op": "add", "path": "members", "value": [{ "value": member }] }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{gid}")), &add).bearer(&token));
    assert_2xx_patch(&r);
    assert_no_backend_address(&r, &backend);
    let stored = backend.get("acme", "Groups", &gid).unwrap();
    assert_eq!(
        stored["members"][0]["value"],
        member.as_str(),
        "backend group: {stored}"
    );

    // The member shows through the gateway, and any $ref is the gateway's.
    let r = gw.send(Req::get(&acme(&format!("/Groups/{gid}"))).bearer(&token));
    r.expect(200);
    assert_no_backend_address(&r, &backend);
    assert_eq!(r.json()["members"][0]["value"], member.as_str());

    // Rename with Entra's capitalised op, then remove the member.
    let rename =
        patch_body(json!([{ "op": "Replace", "path": "displayName", "value": "Platform" }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{gid}")), &rename).bearer(&token));
    assert_2xx_patch(&r);
    assert_eq!(
        backend.get("acme", "Groups", &gid).unwrap()["displayName"],
        "Platform"
    );
    let remove =
        patch_body(json!([{ "op": "remove", "path": format!("members[value eq \"{member}\"]") }]));
    let r = gw.send(Req::patch(&acme(&format!("/Groups/{gid}")), &remove).bearer(&token));
    assert_2xx_patch(&r);
    let stored = backend.get("acme", "Groups", &gid).unwrap();
    assert!(
        stored["members"].as_array().is_none_or(|m| m.is_empty()),
        "member not removed: {stored}"
    );

    let r = gw.send(Req::delete(&acme(&format!("/Groups/{gid}"))).bearer(&token));
    r.expect(204);
    assert!(
        backend.get("acme", "Groups", &gid).is_none(),
        "the group is still in the backend"
    );
    assert!(
        backend.get("acme", "Users", &member).is_some(),
        "deleting a group deleted its member"
    );
    assert_token_not_at_backend(&backend, &token);
}

#[test]
fn endpoint_names_are_case_insensitive_and_forwarded_canonically() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    for path in ["/users", "/USERS", "/uSeRs"] {
        let r = gw.send(Req::get(&acme(path)).bearer(&token));
        r.expect(200);
        assert!(
            schemas_of(&r.json()).contains(&LIST_SCHEMA.to_owned()),
            "{path}:\n{r:?}"
        );
    }
    let r = gw.send(Req::post(&acme("/users"), &user_body("lower@acme.com")).bearer(&token));
    r.expect(201);
    let id = id_of(&r.json());
    let expected = format!("{}/acme/scim/v2/Users/{id}", gw.origin());
    assert_eq!(r.header("location"), Some(expected.as_str()));
    gw.send(Req::get(&acme("/GROUPS")).bearer(&token))
        .expect(200);
    gw.send(Req::get(&acme("/serviceproviderconfig")).bearer(&token))
        .expect(200);

    let paths: Vec<String> = backend
        .forwarded()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/acme/v2/Users",
            "/acme/v2/Users",
            "/acme/v2/Users",
            "/acme/v2/Users",
            "/acme/v2/Groups",
            "/acme/v2/ServiceProviderConfig"
        ],
        "the backend must see canonical endpoint names"
    );
    assert_eq!(backend.users_named("acme", "lower@acme.com").len(), 1);
}

#[test]
fn http2_is_negotiated_by_alpn_and_works() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    let r = gw.send_alpn(Req::get(&acme("/Users")).bearer(&token));
    r.expect(200);
    assert_eq!(r.version, Version::HTTP_2, "ALPN should select h2");

    let r = gw.send_alpn(Req::post(&acme("/Users"), &user_body("h2@acme.com")).bearer(&token));
    r.expect(201);
    assert_eq!(r.version, Version::HTTP_2);
    assert_no_backend_address(&r, &backend);
    let id = id_of(&r.json());
    let expected = format!("{}/acme/scim/v2/Users/{id}", gw.origin());
    assert_eq!(
        r.header("location"),
        Some(expected.as_str()),
        "h2 Location:\n{r:?}"
    );
    assert!(backend.get("acme", "Users", &id).is_some());

    // The HTTP/1.1-only client still gets HTTP/1.1.
    let r = gw.send(Req::get(&acme("/Users")).bearer(&token));
    r.expect(200);
    assert_eq!(r.version, Version::HTTP_11);
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn every_authentication_failure_gets_the_same_401() {
    let (backend, setup) = backend_and_setup(|_| {});
    let good = setup.issue("acme", "good", &[]);
    let suspended = setup.issue("acme", "suspended", &[]);
    setup.token_action("suspend", "suspended");
    let revoked = setup.issue("acme", "revoked", &[]);
    setup.token_action("revoke", "revoked");
    let expired = setup.issue("acme", "expired", &[]);
    setup.edit_token("expired", |e| {
        e.insert("expires_at".into(), "2020-01-01T00:00:00Z".into());
    });
    let unknown = foreign_token();
    // Same shape, wrong checksum.
    let mut bad_checksum = good.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
    let gw = setup.start();

    let missing = &["token_missing"][..];
    let malformed = &["token_malformed", "token_missing"][..];
    let cases: Vec<(&str, Vec<String>, &[&str])> = vec![
        ("no Authorization header", vec![], missing),
        ("empty bearer", vec!["Bearer ".into()], malformed),
        ("scheme only", vec!["Bearer".into()], malformed),
        ("not a token", vec!["Bearer not-a-token".into()], malformed),
        (
            "truncated token",
            vec![format!("Bearer {}", &good[..good.len() - 1])],
            malformed,
        ),
        (
            "bad checksum",
            vec![format!("Bearer {bad_checksum}")],
            malformed,
        ),
        (
            "token and junk",
            vec![format!("Bearer {good} extra")],
            malformed,
        ),
        ("basic scheme", vec![format!("Basic {good}")], malformed),
        (
            "two headers",
            vec![format!("Bearer {good}"), format!("Bearer {good}")],
            malformed,
        ),
        (
            "unknown token",
            vec![format!("Bearer {unknown}")],
            &["token_unknown"],
        ),
        (
            "expired token",
            vec![format!("Bearer {expired}")],
            &["token_expired"],
        ),
        (
            "suspended token",
            vec![format!("Bearer {suspended}")],
            &["token_suspended"],
        ),
        (
            "revoked token",
            vec![format!("Bearer {revoked}")],
            &["token_revoked"],
        ),
    ];
    let mut first_body: Option<bytes::Bytes> = None;
    for (i, (name, auth, reasons)) in cases.iter().enumerate() {
        let rid = format!("auth-case-{i}");
        let mut req = Req::get(&acme("/Users")).request_id(&rid);
        for a in auth {
            req = req.authorization(a);
        }
        let r = gw.send(req);
        assert_eq!(
            r.status.as_u16(),
            401,
            "case {name:?}: expected 401; response:\n{r:?}"
        );
        assert_unauthorized(&r);
        match &first_body {
            None => first_body = Some(r.body.clone()),
            Some(b) => assert_eq!(
                &r.body,
                b,
                "case {name:?}: the 401 body differs from the first case's (it must not tell causes apart)"
            ),
        }
        let line = gw.access_log_for(&rid);
        assert_eq!(line["status"], 401, "case {name:?}: {line}");
        assert_eq!(line["decision"], "deny", "case {name:?}: {line}");
        let reason = line["reason"].as_str().unwrap_or("");
        assert!(
            reasons.contains(&reason),
            "case {name:?}: logged reason {reason:?}, expected one of {reasons:?}"
        );
    }

    // A POST without a token creates nothing.
    let r = gw.send(Req::post(&acme("/Users"), &user_body("anon@acme.com")));
    assert_unauthorized(&r);
    assert_nothing_forwarded(&backend);
    assert!(backend.users_named("acme", "anon@acme.com").is_empty());

    // The good token works.
    gw.send(Req::get(&acme("/Users")).bearer(&good)).expect(200);
    assert_eq!(backend.forwarded().len(), 1);
}

#[test]
fn token_in_the_query_string_is_not_accepted_nor_logged() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    let r = gw.send(Req::get(&acme(&format!("/Users?access_token={token}"))));
    assert_unauthorized(&r);
    let r = gw.send(Req::post(
        &acme(&format!("/Users?access_token={token}")),
        &user_body("q@acme.com"),
    ));
    assert_unauthorized(&r);
    assert_nothing_forwarded(&backend);
    assert!(backend.users_named("acme", "q@acme.com").is_empty());
    assert_eq!(
        gw.access_log_n(2).len(),
        2,
        "one access-log line per request"
    );
    let secret_part = token.strip_prefix("scimgate_").unwrap();
    assert!(
        !gw.stderr().contains(secret_part),
        "the gateway logged the token:\n{}",
        gw.stderr()
    );
}

#[test]
fn bare_token_and_any_case_bearer_scheme_are_accepted() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "okta", &[]);
    let gw = setup.start();

    for auth in [
        token.clone(), // Okta's "Header" mode: the token alone
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer {token}"),
    ] {
        let r = gw.send(Req::get(&acme("/Users")).authorization(&auth));
        assert_eq!(
            r.status.as_u16(),
            200,
            "Authorization: {auth:?} was refused:\n{r:?}"
        );
    }
    let fwd = backend.forwarded();
    assert_eq!(fwd.len(), 4);
    for req in &fwd {
        assert_eq!(
            req.get("HTTP_AUTHORIZATION"),
            Some(format!("Bearer {}", backend.secret).as_str())
        );
    }
    assert_token_not_at_backend(&backend, &token);
}

// ---------------------------------------------------------------------------------------------
// Authorisation
// ---------------------------------------------------------------------------------------------

#[test]
fn token_of_another_tenant_is_forbidden() {
    let (backend, setup) = backend_and_setup(|_| {});
    let acme_token = setup.issue("acme", "acme-entra", &[]);
    let globex_token = setup.issue("globex", "globex-entra", &[]);
    let gw = setup.start();

    assert_scim_error(
        &gw.send(Req::get(&acme("/Users")).bearer(&globex_token)),
        403,
    );
    let r = gw.send(Req::post(&acme("/Users"), &user_body("x@acme.com")).bearer(&globex_token));
    assert_scim_error(&r, 403);
    assert_scim_error(
        &gw.send(Req::get(&globex("/Users")).bearer(&acme_token)),
        403,
    );
    let r = gw.send(Req::post(&globex("/Users"), &user_body("y@globex.com")).bearer(&acme_token));
    assert_scim_error(&r, 403);
    assert_nothing_forwarded(&backend);
    assert!(backend.list("acme", "Users").is_empty());
    assert!(backend.list("globex", "Users").is_empty());

    // Each tenant's own token works, against its own upstream.
    let r =
        gw.send(Req::post(&globex("/Users"), &user_body("jdoe@globex.com")).bearer(&globex_token));
    r.expect(201);
    assert_no_backend_address(&r, &backend);
    let id = id_of(&r.json());
    let expected = format!("{}/globex/scim/v2/Users/{id}", gw.origin());
    assert_eq!(r.header("location"), Some(expected.as_str()));
    assert!(backend.get("globex", "Users", &id).is_some());
    assert!(
        backend.list("acme", "Users").is_empty(),
        "a globex user landed in acme"
    );
    gw.send(Req::get(&acme("/Users")).bearer(&acme_token))
        .expect(200);
}

#[test]
fn operations_outside_the_tokens_scopes_are_forbidden() {
    let (backend, setup) = backend_and_setup(|_| {});
    let reader = setup.issue("acme", "reader", &["users:read"]);
    let provisioner = setup.issue("acme", "provisioner", &[]); // default scopes: no bulk
    let users_only = setup.issue("acme", "users-only", &["users:read", "users:write"]);
    let gw = setup.start();
    let keep = id_of(&backend.create("acme", "Users", &user_body("keep@acme.com")));
    let user_path = acme(&format!("/Users/{keep}"));

    let bulk = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [{ "method": "POST", "path": "/Users", "bulkId": "b1", "data": user_body("bulk@acme.com") }]
    });
    let patch = patch_body(json!([{ "op": "replace", "path": "displayName", "value": "Changed" }]));
    let cases = [
        (
            "reader creates",
            Req::post(&acme("/Users"), &user_body("new@acme.com")).bearer(&reader),
        ),
        ("reader deletes", Req::delete(&user_path).bearer(&reader)),
        (
            "reader patches",
            Req::patch(&user_path, &patch).bearer(&reader),
        ),
        (
            "reader replaces",
            Req::put(&user_path, &user_body("keep@acme.com")).bearer(&reader),
        ),
        (
            "reader lists groups",
            Req::get(&acme("/Groups")).bearer(&reader),
        ),
        (
            "no bulk scope",
            Req::post(&acme("/Bulk"), &bulk).bearer(&provisioner),
        ),
        (
            "no groups scope",
            Req::post(&acme("/Groups"), &group_body("G")).bearer(&users_only),
        ),
    ];
    for (i, (name, req)) in cases.into_iter().enumerate() {
        let rid = format!("scope-case-{i}");
        let r = gw.send(req.request_id(&rid));
        assert_eq!(
            r.status.as_u16(),
            403,
            "case {name:?}: expected 403; response:\n{r:?}"
        );
        assert_scim_error(&r, 403);
        let line = gw.access_log_for(&rid);
        assert_eq!(line["reason"], "scope_denied", "case {name:?}: {line}");
    }
    assert_nothing_forwarded(&backend);
    let users = backend.list("acme", "Users");
    assert_eq!(users.len(), 1, "users: {users:?}");
    assert_eq!(users[0]["id"], keep.as_str());
    assert!(
        users[0].get("displayName").is_none(),
        "the user was modified: {}",
        users[0]
    );
    assert!(backend.list("acme", "Groups").is_empty());

    // What the scopes do allow goes through.
    gw.send(Req::get(&user_path).bearer(&reader)).expect(200);
    assert_eq!(backend.forwarded().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Routing and request checks
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_and_unsupported_endpoints_are_refused_locally() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue(
        "acme",
        "all",
        &[
            "users:read",
            "users:write",
            "groups:read",
            "groups:write",
            "bulk",
        ],
    );
    let gw = setup.start();
    let search = json!({ "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName pr" });

    let cases = [
        (Req::get(&acme("/Nope")), 404),
        (Req::get("/initech/scim/v2/Users"), 404),
        (Req::get("/acme/scim/Users"), 404),
        (Req::get("/"), 404),
        (Req::get(&acme("/Users/x/y")), 404),
        (Req::get(&acme("/Bulk/1")), 404),
        (Req::get(ACME_PREFIX), 501),
        (Req::get(&acme("/")), 501),
        (Req::post(&acme("/.search"), &search), 501),
        (Req::get(&acme("/Me")), 501),
        (Req::delete(&acme("/Users")), 405),
        (Req::put(&acme("/Groups"), &group_body("G")), 405),
        (Req::get(&acme("/Bulk")), 405),
    ];
    for (req, status) in cases {
        let what = format!("{} {}", req.method, req.path);
        let r = gw.send(req.bearer(&token));
        assert_eq!(
            r.status.as_u16(),
            status,
            "{what}: expected {status}; response:\n{r:?}"
        );
        assert_scim_error(&r, status);
    }
    assert_nothing_forwarded(&backend);
}

#[test]
fn method_not_allowed_lists_the_allowed_methods() {
    // RFC 9110 §15.5.6: a 405 response MUST carry an Allow header.
    let setup = setup_without_backend();
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let r = gw.send(Req::delete(&acme("/Users")).bearer(&token));
    assert_scim_error(&r, 405);
    let allow = r
        .header("allow")
        .unwrap_or_else(|| panic!("405 without an Allow header:\n{r:?}"));
    let methods: Vec<String> = allow
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .collect();
    assert!(
        methods.contains(&"GET".into())
            && methods.contains(&"POST".into())
            && !methods.contains(&"DELETE".into()),
        "Allow for /Users should list GET and POST, not DELETE: {allow:?}"
    );
}

#[test]
fn bodies_over_the_limit_get_413_and_create_nothing() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    let mut big = user_body("big@acme.com");
    big["displayName"] = json!("x".repeat(70_000));
    let r = gw.send(Req::post(&acme("/Users"), &big).bearer(&token));
    let body = assert_scim_error(&r, 413);
    assert_eq!(body["scimType"], "tooLarge", "413 scimType:\n{r:?}");

    // Without Content-Length (chunked), the limit holds while reading.
    let r = gw.send(
        Req::post(&acme("/Users"), &big)
            .bearer(&token)
            .chunked(8192),
    );
    let body = assert_scim_error(&r, 413);
    assert_eq!(body["scimType"], "tooLarge");
    assert_nothing_forwarded(&backend);
    assert!(backend.users_named("acme", "big@acme.com").is_empty());

    // Exactly at the limit is accepted.
    let mut exact = user_body("exact@acme.com");
    exact["displayName"] = json!("");
    let base = serde_json::to_vec(&exact).unwrap().len();
    exact["displayName"] = json!("y".repeat(65_536 - base));
    assert_eq!(serde_json::to_vec(&exact).unwrap().len(), 65_536);
    gw.send(Req::post(&acme("/Users"), &exact).bearer(&token))
        .expect(201);
    assert_eq!(backend.users_named("acme", "exact@acme.com").len(), 1);
}

#[test]
fn bodies_the_gateway_cannot_read_get_415() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    let json_bytes = serde_json::to_vec(&user_body("media@acme.com")).unwrap();

    let cases = [
        (
            "text/plain",
            Req::new(Method::POST, &acme("/Users"))
                .body(json_bytes.clone())
                .header("content-type", "text/plain"),
        ),
        (
            "no content type",
            Req::new(Method::POST, &acme("/Users")).body(json_bytes.clone()),
        ),
        (
            "application/xml",
            Req::new(Method::POST, &acme("/Users"))
                .body(json_bytes.clone())
                .header("content-type", "application/xml"),
        ),
        (
            "gzip encoding",
            Req::new(Method::POST, &acme("/Users"))
                .body(vec![
                    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
                ])
                .header("content-type", "application/scim+json")
                .header("content-encoding", "gzip"),
        ),
    ];
    for (name, req) in cases {
        let r = gw.send(req.bearer(&token));
        assert_eq!(
            r.status.as_u16(),
            415,
            "case {name:?}: expected 415; response:\n{r:?}"
        );
        assert_scim_error(&r, 415);
    }
    assert_nothing_forwarded(&backend);
    assert!(backend.list("acme", "Users").is_empty());

    // Both JSON media types are accepted, with parameters.
    let r = gw.send(
        Req::new(Method::POST, &acme("/Users"))
            .body(json_bytes.clone())
            .header("content-type", "application/json; charset=utf-8")
            .bearer(&token),
    );
    r.expect(201);
    assert_eq!(backend.users_named("acme", "media@acme.com").len(), 1);
}

#[test]
fn ambiguous_paths_get_400_and_are_not_forwarded() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    for path in [
        "/acme/scim/v2/Users%2Fabc",
        "/acme/scim/v2/..%2F..%2Fglobex/scim/v2/Users",
        "/acme/scim/v2/Users%2fabc",
        "/acme/scim/v2/Users%5Cabc",
        "/acme/scim/v2/Users;jsessionid=1",
        "/acme/scim/v2/Users/%00",
    ] {
        let r = gw.send(Req::get(path).bearer(&token));
        assert_eq!(
            r.status.as_u16(),
            400,
            "{path}: expected 400; response:\n{r:?}"
        );
        let body = assert_scim_error(&r, 400);
        assert_eq!(body["scimType"], "invalidPath", "{path}:\n{r:?}");
    }
    assert_nothing_forwarded(&backend);
}

#[test]
fn dot_segments_are_resolved_before_routing_and_checks() {
    let (backend, setup) = backend_and_setup(|_| {});
    let acme_token = setup.issue("acme", "acme-entra", &[]);
    let globex_token = setup.issue("globex", "globex-entra", &[]);
    let gw = setup.start();

    for path in [
        "/acme/scim/v2/Groups/../Users",
        "/acme/scim/v2/./Users/.",
        "/acme/scim/v2/%2e%2e/v2/Users",
    ] {
        let r = gw.send(Req::get(path).bearer(&acme_token));
        r.expect(200);
        assert!(
            schemas_of(&r.json()).contains(&LIST_SCHEMA.to_owned()),
            "{path}:\n{r:?}"
        );
    }
    let paths: Vec<String> = backend
        .forwarded()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(
        paths, ["/acme/v2/Users"; 3],
        "dot segments must be resolved before forwarding"
    );

    // Two `..` from /acme/scim/v2 only reach /acme: /acme/globex/scim/v2/Users is no tenant's.
    let r = gw.send(Req::get("/acme/scim/v2/../../globex/scim/v2/Users").bearer(&acme_token));
    assert_eq!(
        r.status.as_u16(),
        404,
        "expected 404 (resolves to /acme/globex/...); response:\n{r:?}"
    );
    assert_scim_error(&r, 404);

    // Three climb out of the acme prefix into globex's: judged as globex, so refused.
    for path in [
        "/acme/scim/v2/../../../globex/scim/v2/Users",
        "/acme/scim/v2/%2e%2e/%2E%2E/../globex/scim/v2/Users",
    ] {
        let r = gw.send(Req::get(path).bearer(&acme_token));
        assert_eq!(
            r.status.as_u16(),
            403,
            "{path}: expected 403; response:\n{r:?}"
        );
        assert_scim_error(&r, 403);
    }
    assert!(
        backend
            .forwarded()
            .iter()
            .all(|r| !r.path().contains("globex")),
        "a request climbing into globex was forwarded"
    );
    assert_eq!(backend.forwarded().len(), 3);

    // The same path with the globex token is globex's.
    let r = gw.send(Req::get("/acme/scim/v2/../../../globex/scim/v2/Users").bearer(&globex_token));
    r.expect(200);
    assert_eq!(
        backend.forwarded().last().unwrap().path(),
        "/globex/v2/Users"
    );
}

// ---------------------------------------------------------------------------------------------
// Backend failures
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_down_gives_502_without_backend_details() {
    let (mut backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    gw.send(Req::get(&acme("/Users")).bearer(&token))
        .expect(200);

    backend.stop();
    let r = gw.send(
        Req::get(&acme("/Users"))
            .bearer(&token)
            .request_id("down-1"),
    );
    assert_scim_error(&r, 502);
    assert_no_backend_address(&r, &backend);
    assert!(
        !r.text().contains("127.0.0.1"),
        "502 names an address:\n{r:?}"
    );
    let line = gw.access_log_for("down-1");
    assert_eq!(line["status"], 502);
    assert_eq!(line["reason"], "upstream_unavailable", "{line}");
}

#[test]
fn hung_backend_gives_504_after_the_upstream_timeout() {
    let silent = SilentUpstream::start();
    let (backend, setup) = backend_and_setup(|o| {
        o.acme_upstream = silent.url("/acme/v2");
        o.upstream_timeout = "1s".into();
    });
    let acme_token = setup.issue("acme", "acme-entra", &[]);
    let globex_token = setup.issue("globex", "globex-entra", &[]);
    let gw = setup.start();

    let start = Instant::now();
    let r = gw.send(
        Req::get(&acme("/Users"))
            .bearer(&acme_token)
            .request_id("hung-1"),
    );
    let took = start.elapsed();
    assert_scim_error(&r, 504);
    assert!(
        silent.accepted() >= 1,
        "the gateway never connected to the hung backend"
    );
    assert!(
        took >= Duration::from_millis(900),
        "504 after only {took:?}, before the 1s timeout"
    );
    assert!(
        took < Duration::from_secs(8),
        "504 took {took:?} for a 1s timeout"
    );
    assert_eq!(gw.access_log_for("hung-1")["reason"], "upstream_timeout");

    // The other tenant's backend is unaffected.
    gw.send(Req::get(&globex("/Users")).bearer(&globex_token))
        .expect(200);
    assert_eq!(backend.forwarded().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// What the backend receives
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_gets_the_gateway_credential_and_forwarding_headers_never_the_client_token() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    let spoofed = Req::get(&acme("/Users"))
        .bearer(&token)
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.7;proto=http")
        .header("x-real-ip", "203.0.113.7")
        .header("cookie", "session=abc");
    gw.send(spoofed).expect(200);
    gw.send(Req::post(&acme("/Users"), &user_body("fwd@acme.com")).bearer(&token))
        .expect(201);
    gw.send(Req::get(&acme("/Users")).authorization(&token))
        .expect(200);

    let fwd = backend.forwarded();
    assert_eq!(fwd.len(), 3);
    let credential = format!("Bearer {}", backend.secret);
    for req in &fwd {
        let what = format!("{} {}", req.method(), req.path());
        assert_eq!(
            req.get("HTTP_AUTHORIZATION"),
            Some(credential.as_str()),
            "{what}: {:?}",
            req.environ
        );
        assert_eq!(req.get("HTTP_X_FORWARDED_PROTO"), Some("https"), "{what}");
        assert_eq!(req.get("HTTP_X_FORWARDED_FOR"), Some("127.0.0.1"), "{what}");
        for absent in [
            "HTTP_X_FORWARDED_HOST",
            "HTTP_FORWARDED",
            "HTTP_X_REAL_IP",
            "HTTP_COOKIE",
        ] {
            assert_eq!(
                req.get(absent),
                None,
                "{what}: the client's {absent} was forwarded"
            );
        }
    }
    let log = backend.debug_log();
    assert!(
        log.contains(&format!("'HTTP_AUTHORIZATION': '{credential}'")),
        "raw backend log lacks the credential"
    );
    assert!(
        !log.contains("203.0.113.7"),
        "a client-supplied forwarding header reached the backend"
    );
    assert_token_not_at_backend(&backend, &token);
    gw.access_log_n(3); // everything these requests logged has been written
    let stderr = gw.stderr();
    assert!(
        !stderr.contains(token.strip_prefix("scimgate_").unwrap()),
        "the gateway logged the client token"
    );
    assert!(
        !stderr.contains(&backend.secret),
        "the gateway logged its backend credential"
    );
}

#[test]
fn request_ids_are_kept_or_generated_echoed_forwarded_and_logged() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    // A client id is kept.
    let r = gw.send(
        Req::get(&acme("/Users"))
            .bearer(&token)
            .request_id("e2e-req-42"),
    );
    r.expect(200);
    assert_eq!(r.header("x-request-id"), Some("e2e-req-42"));
    assert_eq!(
        backend.forwarded().last().unwrap().get("HTTP_X_REQUEST_ID"),
        Some("e2e-req-42")
    );
    let line = gw.access_log_for("e2e-req-42");
    assert_eq!(line["status"], 200);

    // None sent: one is generated, echoed, forwarded and logged.
    let r = gw.send(Req::get(&acme("/Users")).bearer(&token));
    r.expect(200);
    let generated = r
        .header("x-request-id")
        .expect("a generated X-Request-Id")
        .to_owned();
    assert!(!generated.is_empty());
    assert_eq!(
        backend.forwarded().last().unwrap().get("HTTP_X_REQUEST_ID"),
        Some(generated.as_str())
    );
    gw.access_log_for(&generated);

    // A second one differs.
    let r = gw.send(Req::get(&acme("/Users")).bearer(&token));
    let second = r.header("x-request-id").expect("X-Request-Id").to_owned();
    assert_ne!(generated, second, "generated request ids repeat");

    // An unusable one is replaced.
    let r = gw.send(
        Req::get(&acme("/Users"))
            .bearer(&token)
            .request_id("not ok; <script>"),
    );
    r.expect(200);
    let replaced = r.header("x-request-id").expect("X-Request-Id").to_owned();
    assert_ne!(replaced, "not ok; <script>");
    assert_eq!(
        backend.forwarded().last().unwrap().get("HTTP_X_REQUEST_ID"),
        Some(replaced.as_str())
    );

    // Refusals carry it too.
    let r = gw.send(Req::get(&acme("/Users")).request_id("e2e-denied-1"));
    assert_unauthorized(&r);
    assert_eq!(r.header("x-request-id"), Some("e2e-denied-1"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();

    // A create is always the client's own request, forwarded.
    let r = gw.send(
        Req::post(&acme("/Users"), &user_body("hop@acme.com"))
            .bearer(&token)
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-kept", "yes"),
    );
    r.expect(201);
    assert_eq!(r.version, Version::HTTP_11);
    let req = backend.forwarded().pop().expect("forwarded");
    assert_eq!(req.method(), "POST");
    assert_eq!(
        req.get("HTTP_X_SECRET"),
        None,
        "a header named in Connection was forwarded"
    );
    assert_eq!(
        req.get("HTTP_PROXY_AUTHORIZATION"),
        None,
        "Proxy-Authorization was forwarded"
    );
    assert_eq!(
        req.get("HTTP_X_KEPT"),
        Some("yes"),
        "an end-to-end header was dropped"
    );
    assert_eq!(backend.users_named("acme", "hop@acme.com").len(), 1);
}

#[test]
fn access_log_records_decision_tenant_token_and_statuses() {
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let reader = setup.issue("acme", "reader", &["users:read"]);
    let gw = setup.start();
    let id = id_of(&backend.create("acme", "Users", &user_body("logged@acme.com")));

    let path = acme(&format!("/Users/{id}"));
    gw.send(Req::get(&path).bearer(&token).request_id("log-allow"))
        .expect(200);
    let line = gw.access_log_for("log-allow");
    assert_eq!(line["tenant"], "acme", "{line}");
    assert_eq!(line["token_id"], "entra", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], path.as_str(), "{line}");
    assert_eq!(line["decision"], "allow", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");

    let r = gw.send(
        Req::post(&acme("/Users"), &user_body("no@acme.com"))
            .bearer(&reader)
            .request_id("log-deny"),
    );
    assert_scim_error(&r, 403);
    let line = gw.access_log_for("log-deny");
    assert_eq!(line["tenant"], "acme", "{line}");
    assert_eq!(line["token_id"], "reader", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["reason"], "scope_denied", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    assert!(
        line.get("upstream_status").is_none_or(Value::is_null),
        "{line}"
    );

    gw.send(Req::get(&acme("/Users")).request_id("log-401"))
        .expect(401);
    let line = gw.access_log_for("log-401");
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["reason"], "token_missing", "{line}");
    assert_eq!(line["status"], 401, "{line}");
}

#[test]
fn access_log_marks_a_served_user_list_as_allowed() {
    // User lists are paged through by the gateway itself; the log must still say the request
    // was allowed and what the backend answered.
    let (backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    backend.create("acme", "Users", &user_body("listed@acme.com"));

    let r = gw.send(
        Req::get(&acme("/Users"))
            .bearer(&token)
            .request_id("log-list"),
    );
    r.expect(200);
    assert_eq!(r.json()["totalResults"], 1);
    let line = gw.access_log_for("log-list");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(
        line["decision"], "allow",
        "a served 200 list is logged as {}: {line}",
        line["decision"]
    );
    assert_eq!(line["upstream_status"], 200, "{line}");
}

// ---------------------------------------------------------------------------------------------
// Operations: check, probes, shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_a_valid_configuration() {
    let setup = setup_without_backend();
    setup.issue("acme", "entra", &[]);
    let out = setup.cli(&["check"]);
    assert!(out.status.success(), "check failed: {}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration ok"
    );
}

#[test]
fn check_reports_an_unknown_tenant_with_file_line_and_key() {
    let setup = setup_without_backend();
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme2\n    sha256: \"{}\"\n    scopes: [users:read]\n",
        "ab".repeat(32)
    );
    std::fs::write(setup.tokens_path(), tokens).unwrap();
    let out = setup.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1), "check: {}", describe(&out));
    let expected = format!(
        "{}:3: tokens[0].tenant: unknown tenant \"acme2\"",
        setup.tokens_path().display()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in: {}",
        describe(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("configuration ok"));

    // `serve` refuses the same configuration with the same message.
    let out = setup.cli(&["serve"]);
    assert_eq!(out.status.code(), Some(1), "serve: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&expected),
        "serve: {}",
        describe(&out)
    );
}

#[test]
fn check_reports_an_unknown_key_with_file_and_line() {
    let setup = setup_without_backend();
    let original = std::fs::read_to_string(&setup.config_path).unwrap();
    assert!(original.starts_with("server:\n"));
    let with_bogus = original.replacen("server:\n", "server:\n  bogus_key: 1\n", 1);
    std::fs::write(&setup.config_path, &with_bogus).unwrap();
    let out = setup.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1), "check: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:2:", setup.config_path.display());
    assert!(
        stderr.contains(&at) && stderr.contains("bogus_key"),
        "expected {at:?} and bogus_key in: {}",
        describe(&out)
    );

    // A misspelt top-level key, on the last line.
    let line = original.lines().count() + 1;
    std::fs::write(
        &setup.config_path,
        format!("{original}tokens_fiel: other.yaml\n"),
    )
    .unwrap();
    let out = setup.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1), "check: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:{line}:", setup.config_path.display());
    assert!(
        stderr.contains(&at) && stderr.contains("tokens_fiel"),
        "expected {at:?} and tokens_fiel in: {}",
        describe(&out)
    );
}

#[test]
fn health_and_readiness_answer_on_the_admin_listener() {
    let setup = setup_without_backend();
    let token = setup.issue("acme", "entra", &[]);
    let gw = setup.start();
    assert_ne!(gw.admin_addr, gw.addr);

    let r = gw.admin_get("/healthz");
    r.expect(200);
    r.json();
    let r = gw.admin_get("/readyz");
    r.expect(200);
    r.json();
    gw.admin_get("/nope").expect(404);

    // The probes are not on the public listener.
    assert_scim_error(&gw.send(Req::get("/healthz").bearer(&token)), 404);
}

#[test]
fn sigterm_stops_the_gateway_with_exit_status_0() {
    let (_backend, setup) = backend_and_setup(|_| {});
    let token = setup.issue("acme", "entra", &[]);
    let mut gw = setup.start();
    // Leaves a kept-alive connection open, which must not hold the shutdown up.
    gw.send(Req::get(&acme("/Users")).bearer(&token))
        .expect(200);

    let status = gw.terminate(Duration::from_secs(10));
    let status = status
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM; stderr:\n{}", gw.stderr()));
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; stderr:\n{}",
        gw.stderr()
    );
    assert!(
        gw.wait_log(|l| l.contains("\"message\":\"stopped\""))
            .is_ok(),
        "no \"stopped\" line:\n{}",
        gw.stderr()
    );
}

#[test]
fn sigterm_right_after_the_listening_line_drains_instead_of_killing() {
    // The handlers are installed before the gateway announces itself: a supervisor that stops
    // it as soon as it is up gets a clean exit, not death by the default SIGTERM action.
    let setup = setup_without_backend();
    let mut gw = setup.start(); // returns once the "listening" line is out
    let status = gw
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM; stderr:\n{}", gw.stderr()));
    assert!(
        status.success(),
        "exit status {status} after an early SIGTERM; stderr:\n{}",
        gw.stderr()
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let silent = SilentUpstream::start();
    let (_backend, setup) = backend_and_setup(|o| {
        o.acme_upstream = silent.url("/acme/v2");
        o.upstream_timeout = "2s".into();
    });
    let token = setup.issue("acme", "entra", &[]);
    let mut gw = setup.start();

    let result = std::thread::scope(|s| {
        let in_flight = s.spawn(|| gw.try_send(Req::get(&acme("/Users")).bearer(&token)));
        assert!(
            silent.wait_accepted(1, Duration::from_secs(10)),
            "the request never reached the upstream"
        );
        // The request is now waiting on the upstream: stop the gateway under it.
        gw.sigterm();
        in_flight.join().expect("request thread")
    });
    let r = result.unwrap_or_else(|e| {
        panic!(
            "the in-flight request was cut off by the shutdown: {e}\n{}",
            gw.stderr()
        )
    });
    assert_scim_error(&r, 504);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM; stderr:\n{}", gw.stderr()));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        gw.stderr()
    );
}

/// A body the gateway refuses before reading all of it (over the limit, or a request refused
/// before its body is read) must not turn the answer into a connection reset: the gateway
/// drains what the client still sends. Without that, the 403 failed with "broken pipe" within
/// the first few requests, and the 413s about one time in forty.
#[test]
fn refusals_before_a_large_body_is_read_still_reach_the_client() {
    let (backend, setup) = backend_and_setup(|_| {});
    let writer = setup.issue("acme", "entra", &[]);
    let reader = setup.issue("acme", "reader", &["users:read"]);
    let gw = setup.start();
    let mut big = user_body("big@acme.com");
    big["displayName"] = json!("x".repeat(300_000));
    for i in 0..120 {
        let (req, want) = match i % 3 {
            0 => (Req::post(&acme("/Users"), &big).bearer(&writer), 413),
            1 => (
                Req::post(&acme("/Users"), &big)
                    .bearer(&writer)
                    .chunked(8192),
                413,
            ),
            _ => (Req::post(&acme("/Users"), &big).bearer(&reader), 403),
        };
        let r = gw
            .try_send(req)
            .unwrap_or_else(|e| panic!("request {i}: the refusal was lost: {e}"));
        assert_scim_error(&r, want);
    }
    assert_nothing_forwarded(&backend);
}
