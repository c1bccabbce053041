use super::*;

use crate::config::{Timestamp, TokenStatus, TokensFile};
use crate::demo::backend::{self, MemoryScim};
use crate::policy::scope::Scope;
use crate::test_util;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

const CREDENTIAL: &str = "Bearer backend-secret";
const HOST: &str = "gw.example.com";
const BASE: &str = "/acme/scim/v2";
const URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const WWW_AUTH: &str = r#"Bearer realm="scimgate", error="invalid_token""#;

/// `test_util::write_config`, with its YAML repaired if the fixture loses the indentation of the
/// second tenant (a `\`-continued string literal strips leading whitespace).
fn write_config(dir: &Path, backend: std::net::SocketAddr) -> PathBuf {
    let path = test_util::write_config(dir, backend, CREDENTIAL);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\n- id: globex", "\n  - id: globex")).unwrap();
    path
}

fn set_token(config: &Path, id: &str, edit: impl FnOnce(&mut crate::config::TokenRecord)) {
    crate::token::update_tokens_file(
        &config.with_file_name("tokens.yaml"),
        |f: &mut TokensFile| {
            let rec = f
                .tokens
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or("no such token")?;
            edit(rec);
            Ok(())
        },
    )
    .unwrap();
}

struct Tokens {
    /// acme, every scope, the tenant's domains (acme.com, *.acme.io).
    full: String,
    /// acme, every scope, acme.com only.
    acme_only: String,
    /// acme, users:read only.
    read_only: String,
    /// acme, provisioning scopes (no bulk).
    no_bulk: String,
    /// globex, every scope.
    globex: String,
    revoked: String,
    suspended: String,
    expired: String,
}

struct Gw {
    _dir: tempfile::TempDir,
    backend: std::sync::Arc<MemoryScim>,
    addr: std::net::SocketAddr,
    handle: crate::policy::PolicyHandle,
    t: Tokens,
}

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn gateway() -> Gw {
    gateway_with(|yaml| yaml).await
}

async fn gateway_with(edit: impl FnOnce(String) -> String) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let (backend, addr) = backend::spawn("/acme/v2", CREDENTIAL).await.unwrap();
    let config = write_config(dir.path(), addr);
    let yaml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(yaml)).unwrap();
    let add = |id: &str, tenant: &str, scopes: &[Scope], domains: Option<&[&str]>| {
        test_util::add_token(&config, id, tenant, scopes, domains)
    };
    let t = Tokens {
        full: add("full", "acme", &Scope::ALL, None),
        acme_only: add("acme-only", "acme", &Scope::ALL, Some(&["acme.com"])),
        read_only: add("read-only", "acme", &[Scope::UsersRead], None),
        no_bulk: add("no-bulk", "acme", &Scope::PROVISIONING, None),
        globex: add("globex", "globex", &Scope::ALL, None),
        revoked: add("revoked", "acme", &Scope::ALL, None),
        suspended: add("suspended", "acme", &Scope::ALL, None),
        expired: add("expired", "acme", &Scope::ALL, None),
    };
    set_token(&config, "revoked", |r| r.status = TokenStatus::Revoked);
    set_token(&config, "suspended", |r| r.status = TokenStatus::Suspended);
    set_token(&config, "expired", |r| {
        r.expires_at = Some(Timestamp(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        ))
    });
    let handle = crate::policy::handle(test_util::load_policy(&config));
    Gw {
        _dir: dir,
        backend,
        addr,
        handle,
        t,
    }
}

fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> http::request::Builder {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(body) = body {
        b = b
            .header(header::CONTENT_TYPE, "application/scim+json")
            .header(header::CONTENT_LENGTH, body.len());
    }
    b
}

impl Gw {
    async fn call(&self, req: http::Request<Full<Bytes>>) -> Resp {
        let svc = stack::<Full<Bytes>>(self.handle.clone());
        let resp = svc
            .oneshot(req)
            .await
            .unwrap_or_else(|e: Infallible| match e {});
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e: Infallible| match e {})
            .to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn send(&self, method: &str, uri: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        let req = request(method, uri, token, body)
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        self.call(req).await
    }

    async fn send_json(&self, method: &str, uri: &str, token: &str, body: &Value) -> Resp {
        self.send(method, uri, Some(token), Some(&body.to_string()))
            .await
    }

    /// Stores a resource in the backend directly, bypassing the gateway.
    fn insert(&self, kind: &str, resource: Value) -> String {
        let (status, v, _) = self.backend.handle(
            &Method::POST,
            &format!("/acme/v2/{kind}"),
            "backend.internal",
            Some(CREDENTIAL),
            resource.to_string().as_bytes(),
        );
        assert_eq!(status, StatusCode::CREATED);
        v.unwrap()["id"].as_str().unwrap().to_owned()
    }

    fn user(&self, id: &str) -> Option<Value> {
        self.backend
            .all("Users")
            .into_iter()
            .find(|u| u["id"] == id)
    }
}

fn ids(list: &Value) -> BTreeSet<String> {
    list["Resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no Resources in {list}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn user_body(user_name: &str, emails: &[&str]) -> Value {
    json!({
        "schemas": [URN],
        "userName": user_name,
        "emails": emails.iter().map(|e| json!({"value": e, "type": "work"})).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// Authentication, tenant, scope and routing refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_authentication_failure_is_one_identical_401() {
    let gw = gateway().await;
    let body = user_body("alice@acme.com", &["alice@acme.com"]).to_string();
    let unknown = crate::token::generate().unwrap();
    let t = &gw.t;
    let variants: Vec<(&str, Vec<String>, String)> = vec![
        ("no header", vec![], format!("{BASE}/Users")),
        ("empty", vec![String::new()], format!("{BASE}/Users")),
        (
            "scheme only",
            vec!["Bearer".into()],
            format!("{BASE}/Users"),
        ),
        (
            "scheme and space",
            vec!["Bearer ".into()],
            format!("{BASE}/Users"),
        ),
        ("junk", vec!["Bearer junk".into()], format!("{BASE}/Users")),
        (
            "basic",
            vec!["Basic YWxpY2U6c2VjcmV0".into()],
            format!("{BASE}/Users"),
        ),
        (
            "other scheme",
            vec![format!("Token {}", t.full)],
            format!("{BASE}/Users"),
        ),
        (
            "unknown",
            vec![format!("Bearer {unknown}")],
            format!("{BASE}/Users"),
        ),
        (
            "unknown bare",
            vec![unknown.clone()],
            format!("{BASE}/Users"),
        ),
        (
            "truncated",
            vec![format!("Bearer {}", &t.full[..57])],
            format!("{BASE}/Users"),
        ),
        (
            "extended",
            vec![format!("Bearer {}x", t.full)],
            format!("{BASE}/Users"),
        ),
        (
            "two tokens",
            vec![format!("Bearer {} {}", t.full, t.full)],
            format!("{BASE}/Users"),
        ),
        (
            "two headers",
            vec![format!("Bearer {}", t.full), format!("Bearer {}", t.full)],
            format!("{BASE}/Users"),
        ),
        (
            "revoked",
            vec![format!("Bearer {}", t.revoked)],
            format!("{BASE}/Users"),
        ),
        (
            "suspended",
            vec![format!("Bearer {}", t.suspended)],
            format!("{BASE}/Users"),
        ),
        (
            "expired",
            vec![format!("Bearer {}", t.expired)],
            format!("{BASE}/Users"),
        ),
        (
            "query token",
            vec![],
            format!("{BASE}/Users?access_token={}", t.full),
        ),
        ("unknown path", vec![], "/nowhere/Users".into()),
    ];
    let mut first: Option<bytes::Bytes> = None;
    for (name, auths, uri) in &variants {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(uri.as_str())
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/scim+json");
        for a in auths {
            b = b.header(header::AUTHORIZATION, a.as_str());
        }
        let r = gw
            .call(b.body(Full::new(Bytes::from(body.clone()))).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {:?}", r.body);
        assert_eq!(r.header(header::WWW_AUTHENTICATE), Some(WWW_AUTH), "{name}");
        assert_eq!(
            r.header(header::CONTENT_TYPE),
            Some("application/scim+json"),
            "{name}"
        );
        assert_eq!(
            r.detail(),
            "The bearer token is missing, invalid, expired or revoked.",
            "{name}"
        );
        match &first {
            None => first = Some(r.body.clone()),
            Some(f) => assert_eq!(&r.body, f, "{name}: the 401 body differs"),
        }
    }
    assert_eq!(gw.backend.count("Users"), 0);

    // The scheme is case-insensitive, and a bare token (Okta's header mode) is accepted.
    for auth in [
        format!("bearer {}", t.full),
        format!("BEARER {}", t.full),
        t.full.clone(),
    ] {
        let req = http::Request::builder()
            .uri(format!("{BASE}/Users"))
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, auth.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(gw.call(req).await.status, StatusCode::OK, "{auth}");
    }
}

#[tokio::test]
async fn a_token_only_works_for_its_tenant() {
    let gw = gateway().await;
    let body = user_body("alice@acme.com", &[]);
    for (uri, token) in [
        (format!("{BASE}/Users"), &gw.t.globex),
        (
            "/globex/scim/v2/../../../acme/scim/v2/Users".to_owned(),
            &gw.t.globex,
        ),
        ("/globex/scim/v2/Users".to_owned(), &gw.t.full),
    ] {
        let r = gw.send_json("POST", &uri, token, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {:?}", r.body);
        assert_eq!(r.detail(), "the token belongs to another tenant", "{uri}");
    }
    assert_eq!(gw.backend.count("Users"), 0);
}

#[tokio::test]
async fn operations_need_their_scope() {
    let gw = gateway().await;
    let user = user_body("alice@acme.com", &[]);
    let cases: Vec<(&str, String, &str, Option<Value>, &str)> = vec![
        (
            "POST",
            format!("{BASE}/Users"),
            &gw.t.read_only,
            Some(user.clone()),
            "users:write",
        ),
        (
            "DELETE",
            format!("{BASE}/Users/1"),
            &gw.t.read_only,
            None,
            "users:write",
        ),
        (
            "PATCH",
            format!("{BASE}/Users/1"),
            &gw.t.read_only,
            Some(json!({"Operations": []})),
            "users:write",
        ),
        (
            "GET",
            format!("{BASE}/Groups"),
            &gw.t.read_only,
            None,
            "groups:read",
        ),
        (
            "POST",
            format!("{BASE}/Groups"),
            &gw.t.read_only,
            Some(json!({"displayName": "g"})),
            "groups:write",
        ),
        (
            "POST",
            format!("{BASE}/Bulk"),
            &gw.t.no_bulk,
            Some(json!({"Operations": []})),
            "bulk",
        ),
        (
            "POST",
            format!("{BASE}/Bulk"),
            &gw.t.read_only,
            Some(json!({"Operations": []})),
            "bulk",
        ),
    ];
    for (m, uri, token, body, scope) in &cases {
        let r = match body {
            Some(b) => gw.send_json(m, uri, token, b).await,
            None => gw.send(m, uri, Some(token), None).await,
        };
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}");
        assert_eq!(
            r.detail(),
            format!("the token lacks the {scope} scope"),
            "{m} {uri}"
        );
    }
    assert_eq!(gw.backend.count("Users"), 0);

    // A Bulk operation needs the scope of what it does, too.
    let bulk = json!({"Operations": [{"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"displayName": "g"}}]});
    let gw2 = gateway().await;
    let token = {
        // bulk + users scopes only.
        let cfg = gw2._dir.path().join("gateway.yaml");
        let t = test_util::add_token(
            &cfg,
            "bulk-users",
            "acme",
            &[Scope::Bulk, Scope::UsersWrite],
            None,
        );
        let gw2_handle = crate::policy::handle(test_util::load_policy(&cfg));
        (t, gw2_handle)
    };
    let gw2 = Gw {
        handle: token.1,
        ..gw2
    };
    let r = gw2
        .send_json("POST", &format!("{BASE}/Bulk"), &token.0, &bulk)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.detail(), "the token lacks the groups:write scope");
    assert_eq!(gw2.backend.count("Groups"), 0);

    // Discovery needs only a valid token.
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/ServiceProviderConfig"),
            Some(&gw.t.read_only),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn unroutable_requests_get_404_405_501_or_400() {
    let gw = gateway().await;
    let tok = Some(gw.t.full.as_str());
    let cases: &[(&str, String, StatusCode)] = &[
        ("GET", format!("{BASE}/Unknown"), StatusCode::NOT_FOUND),
        ("GET", "/nowhere/Users".into(), StatusCode::NOT_FOUND),
        ("GET", "/acme/scim/v2x/Users".into(), StatusCode::NOT_FOUND),
        ("GET", "/acme/scim/Users".into(), StatusCode::NOT_FOUND),
        ("GET", format!("{BASE}/Users/a/b"), StatusCode::NOT_FOUND),
        (
            "GET",
            format!("{BASE}/ServiceProviderConfig/x"),
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            format!("{BASE}/Users"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT",
            format!("{BASE}/Groups"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            format!("{BASE}/Bulk"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            format!("{BASE}/Users/.search"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            format!("{BASE}/Users/abc"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("GET", format!("{BASE}/Me"), StatusCode::NOT_IMPLEMENTED),
        ("GET", BASE.into(), StatusCode::NOT_IMPLEMENTED),
        ("GET", format!("{BASE}/"), StatusCode::NOT_IMPLEMENTED),
        (
            "POST",
            format!("{BASE}/.search"),
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            "GET",
            format!("{BASE}/Users%2Fabc"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("{BASE}/Users%5Cabc"),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", format!("{BASE}/Users;x=1"), StatusCode::BAD_REQUEST),
        ("GET", format!("{BASE}/Users/%00"), StatusCode::BAD_REQUEST),
        ("GET", format!("{BASE}/Users/%zz"), StatusCode::BAD_REQUEST),
    ];
    for (m, uri, want) in cases {
        let r = gw.send(m, uri, tok, None).await;
        assert_eq!(r.status, *want, "{m} {uri}: {:?}", r.body);
        assert_eq!(r.json()["status"], want.as_str(), "{m} {uri}");
        assert_eq!(
            r.header(header::CONTENT_TYPE),
            Some("application/scim+json"),
            "{m} {uri}"
        );
    }
    let r = gw
        .send("GET", &format!("{BASE}/Users%2Fabc"), tok, None)
        .await;
    assert_eq!(r.json()["scimType"], "invalidPath");
    // A 405 names the methods the endpoint takes.
    for (m, uri, allow) in [
        ("DELETE", format!("{BASE}/Users"), "GET, POST"),
        (
            "POST",
            format!("{BASE}/Users/abc"),
            "GET, PUT, PATCH, DELETE",
        ),
        ("GET", format!("{BASE}/Bulk"), "POST"),
        ("GET", format!("{BASE}/Users/.search"), "POST"),
        ("PUT", format!("{BASE}/Schemas"), "GET"),
    ] {
        let r = gw.send(m, &uri, tok, None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {uri}");
        assert_eq!(r.header(header::ALLOW), Some(allow), "{m} {uri}");
    }
}

// ---------------------------------------------------------------------------------------------
// Body limits and media types
// ---------------------------------------------------------------------------------------------

fn padded_user(len: usize) -> String {
    let head = r#"{"userName":"alice@acme.com","displayName":""#;
    let tail = r#""}"#;
    let pad = len - head.len() - tail.len();
    let s = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(s.len(), len);
    s
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let gw = gateway().await;
    let uri = format!("{BASE}/Users");
    // Declared length over the limit.
    let big = padded_user(70_000);
    let r = gw.send("POST", &uri, Some(&gw.t.full), Some(&big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["scimType"], "tooLarge");
    // No declared length: the body is cut off while reading.
    let req = http::Request::builder()
        .method("POST")
        .uri(uri.as_str())
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {}", gw.t.full))
        .header(header::CONTENT_TYPE, "application/scim+json")
        .body(Full::new(Bytes::from(padded_user(65_537))))
        .unwrap();
    assert_eq!(gw.call(req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A lying Content-Length does not help either.
    let req = request("POST", &uri, Some(&gw.t.full), None)
        .header(header::CONTENT_TYPE, "application/scim+json")
        .header(header::CONTENT_LENGTH, "10")
        .body(Full::new(Bytes::from(padded_user(65_537))))
        .unwrap();
    assert_eq!(gw.call(req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gw.backend.count("Users"), 0);
    // Exactly the limit is accepted.
    let r = gw
        .send("POST", &uri, Some(&gw.t.full), Some(&padded_user(65_536)))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(gw.backend.count("Users"), 1);
}

#[tokio::test]
async fn other_media_types_and_encodings_are_415() {
    let gw = gateway().await;
    let uri = format!("{BASE}/Users");
    let body = user_body("alice@acme.com", &["alice@acme.com"]).to_string();
    let variants: Vec<Vec<(header::HeaderName, &str)>> = vec![
        vec![(header::CONTENT_TYPE, "text/plain")],
        vec![(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
        vec![(header::CONTENT_TYPE, "application/scim+json+xml")],
        vec![],
        vec![
            (header::CONTENT_TYPE, "application/scim+json"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        vec![
            (header::CONTENT_TYPE, "application/scim+json"),
            (header::CONTENT_ENCODING, "identity, gzip"),
        ],
        vec![
            (header::CONTENT_TYPE, "application/scim+json"),
            (header::CONTENT_TYPE, "application/json"),
        ],
    ];
    for headers in &variants {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(uri.as_str())
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {}", gw.t.full));
        for (k, v) in headers {
            b = b.header(k, *v);
        }
        let r = gw
            .call(b.body(Full::new(Bytes::from(body.clone()))).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
    }
    assert_eq!(gw.backend.count("Users"), 0);
    for ct in ["application/json; charset=utf-8", "Application/SCIM+JSON"] {
        let req = request("POST", &uri, Some(&gw.t.full), None)
            .header(header::CONTENT_TYPE, ct)
            .header(header::CONTENT_ENCODING, "identity")
            .body(Full::new(Bytes::from(
                user_body(&format!("{}@acme.com", ct.len()), &[]).to_string(),
            )))
            .unwrap();
        assert_eq!(gw.call(req).await.status, StatusCode::CREATED, "{ct}");
    }
    assert_eq!(gw.backend.count("Users"), 2);
}

#[tokio::test]
async fn bodies_are_read_strictly() {
    let gw = gateway().await;
    let uri = format!("{BASE}/Users");
    let bad = [
        r#"{"userName":"alice@acme.com","userName":"x@evil.com"}"#,
        r#"{"userName":"alice@acme.com","USERNAME":"x@evil.com"}"#,
        r#"{"userName":"alice@acme.com","user\u004eame":"x@evil.com"}"#,
        r#"{"userName":"alice","emails":[{"value":"a@acme.com","value":"x@evil.com"}]}"#,
        r#"{"userName":"alice","emails":[{"value":"a@acme.com"}],"Emails":[{"value":"x@evil.com"}]}"#,
        r#"{"userName":"alice@acme.com","em\u0101ils":[]}"#,
        r#"{"userName":"alice@acme.com"} {"userName":"x@evil.com"}"#,
        r#"{"userName":"alice@acme.com""#,
        // serde_json with `raw_value` reads this email as x@evil.com.
        r#"{"userName":"alice@acme.com","emails":[{"$serde_json::private::RawValue":"{\"value\":\"x@evil.com\"}"}]}"#,
        r#"{"userName":"alice@acme.com","emails":[{"\u0024serde_json::private::RawValue":"{\"value\":\"x@evil.com\"}"}]}"#,
        "",
    ];
    for b in bad {
        let r = gw.send("POST", &uri, Some(&gw.t.full), Some(b)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {:?}", r.body);
    }
    // Valid JSON that is not a user object cannot be judged, so it is refused.
    for b in [
        r#"[{"userName":"alice@acme.com"}]"#,
        r#""alice@acme.com""#,
        "null",
    ] {
        let r = gw.send("POST", &uri, Some(&gw.t.full), Some(b)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {:?}", r.body);
    }
    // So is a name outside the core schema: a backend that accepts an alias (`user_name`)
    // would store an address the gateway never judged.
    for b in [
        r#"{"userName":"alice@acme.com","user_name":"ceo@evil.com"}"#,
        r#"{"urn:ietf:params:scim:schemas:core:2.0:User":{"user_name":"ceo@evil.com"},"userName":"a@acme.com"}"#,
    ] {
        let r = gw.send("POST", &uri, Some(&gw.t.full), Some(b)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {:?}", r.body);
        assert!(String::from_utf8_lossy(&r.body).contains("unknown attribute"));
    }
    // Bodies where none belong.
    let r = gw.send("GET", &uri, Some(&gw.t.full), Some("{}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = gw
        .send("DELETE", &format!("{uri}/1"), Some(&gw.t.full), Some("{}"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.backend.count("Users"), 0);
}

// ---------------------------------------------------------------------------------------------
// Creating users
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn creating_an_in_scope_user_reaches_the_backend_with_its_credential() {
    let gw = gateway().await;
    let body = user_body("alice@acme.com", &["alice@acme.com", "a@eu.acme.io"]);
    let r = gw
        .send_json("POST", &format!("{BASE}/Users"), &gw.t.full, &body)
        .await;
    // The backend answers 401 to anything but its own credential: 201 proves the gateway
    // replaced the client's token with it.
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(gw.backend.count("Users"), 1);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let stored = gw.user(&id).unwrap();
    assert_eq!(stored["userName"], "alice@acme.com");
    assert_eq!(stored["emails"], body["emails"]);
    // Locations point at the gateway, never at the backend.
    let want = format!("https://{HOST}{BASE}/Users/{id}");
    assert_eq!(r.header(header::LOCATION), Some(want.as_str()));
    assert_eq!(created["meta"]["location"], want.as_str());
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains(&gw.addr.to_string()),
        "backend address leaked: {text}"
    );
    assert!(!text.contains("/acme/v2"), "backend path leaked: {text}");
    assert!(r
        .header(header::LOCATION)
        .is_some_and(|l| !l.contains(&gw.addr.to_string())));
}

#[tokio::test]
async fn locations_use_the_host_the_client_addressed() {
    let gw = gateway().await;
    for (host, prefix) in [
        ("gw.example.com:8443", "https://gw.example.com:8443"),
        ("GW.example.com", "https://GW.example.com"),
        ("evil@gw.example.com", "https://localhost"),
        ("gw.example.com/x", "https://localhost"),
    ] {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("{BASE}/Users"))
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, format!("Bearer {}", gw.t.full))
            .header(header::CONTENT_TYPE, "application/scim+json")
            .body(Full::new(Bytes::from(
                user_body(&format!("u{}@acme.com", host.len()), &[]).to_string(),
            )))
            .unwrap();
        let r = gw.call(req).await;
        assert_eq!(r.status, StatusCode::CREATED, "{host}");
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let want = format!("{prefix}{BASE}/Users/{id}");
        assert_eq!(r.header(header::LOCATION), Some(want.as_str()), "{host}");
        assert_eq!(r.json()["meta"]["location"], want.as_str(), "{host}");

        // And on a retrieval.
        let mut get = request("GET", &format!("{BASE}/Users/{id}"), Some(&gw.t.full), None)
            .body(Full::new(Bytes::new()))
            .unwrap();
        get.headers_mut()
            .insert(header::HOST, HeaderValue::from_str(host).unwrap());
        let g = gw.call(get).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.json()["meta"]["location"], want.as_str(), "{host}");
    }
}

#[tokio::test]
async fn creating_an_out_of_scope_user_is_refused_and_nothing_is_stored() {
    let gw = gateway().await;
    let cases: Vec<(&str, Value)> = vec![
        (&gw.t.full, json!({"userName": "x@evil.com"})),
        (&gw.t.full, user_body("alice@acme.com", &["x@evil.com"])),
        (
            &gw.t.full,
            user_body("alice", &["alice@acme.com", "x@evil.com"]),
        ),
        (&gw.t.full, user_body("x@evil.com", &["alice@acme.com"])),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", (format!("{URN}:emails")): [{"value": "x@evil.com"}]}),
        ),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", URN: {"emails": [{"value": "x@evil.com"}]}}),
        ),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", "EMAILS": [{"VALUE": "x@evil.com"}]}),
        ),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", "emails": {"value": "x@evil.com"}}),
        ),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", "emails": ["x@evil.com"]}),
        ),
        (&gw.t.full, json!({"userName": "alice"})),
        (&gw.t.full, json!({"userName": "alice", "emails": []})),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", "emails": "x@evil.com"}),
        ),
        (
            &gw.t.full,
            json!({"userName": "alice@acme.com", "emails": [{"value": 1}]}),
        ),
        (&gw.t.full, json!({"userName": "alice@acme.io"})),
        (&gw.t.full, json!({"userName": "alice@acme.com@evil.com"})),
        (&gw.t.full, json!({"userName": "alice@acme.com "})),
        (&gw.t.full, json!({"userName": "x@evil.com,alice@acme.com"})),
        (&gw.t.full, json!({"userName": "Eve <x@evil.com>"})),
        (&gw.t.acme_only, json!({"userName": "alice@eu.acme.io"})),
        (
            &gw.t.acme_only,
            user_body("alice@acme.com", &["a@eu.acme.io"]),
        ),
    ];
    for (token, body) in &cases {
        let r = gw
            .send_json("POST", &format!("{BASE}/Users"), token, body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {:?}", r.body);
        assert_eq!(
            r.detail(),
            "the user is not within the token's domains",
            "{body}"
        );
        assert_eq!(gw.backend.count("Users"), 0, "{body}");
    }
    // Path spellings reach the same check.
    let evil = json!({"userName": "x@evil.com"});
    for uri in [
        format!("{BASE}/users"),
        format!("{BASE}/USERS/"),
        format!("{BASE}/%55sers"),
        format!("{BASE}//Users"),
        format!("{BASE}/Groups/../Users"),
        "/acme/scim/v2/./Users".to_owned(),
        "/x/../acme/scim/v2/Users".to_owned(),
    ] {
        let r = gw.send_json("POST", &uri, &gw.t.full, &evil).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {:?}", r.body);
    }
    assert_eq!(gw.backend.count("Users"), 0);
}

#[tokio::test]
async fn report_only_mode_lets_refusals_through() {
    let gw = gateway_with(|yaml| format!("mode: report_only\n{yaml}")).await;
    let r = gw
        .send_json(
            "POST",
            &format!("{BASE}/Users"),
            &gw.t.full,
            &json!({"userName": "x@evil.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(gw.backend.count("Users"), 1);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = gw
        .send("GET", &format!("{BASE}/Users/{id}"), Some(&gw.t.full), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["userName"], "x@evil.com");
    // Tenant, scope and authentication are still enforced.
    let r = gw
        .send_json(
            "POST",
            &format!("{BASE}/Users"),
            &gw.t.read_only,
            &json!({"userName": "a@acme.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw
        .send_json(
            "POST",
            &format!("{BASE}/Users"),
            &gw.t.globex,
            &json!({"userName": "a@acme.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw.send("GET", &format!("{BASE}/Users"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.backend.count("Users"), 1);

    // A tenant-level mode overrides the gateway's.
    let gw = gateway_with(|yaml| {
        yaml.replace(
            "    domains: [acme.com, \"*.acme.io\"]\n",
            "    domains: [acme.com, \"*.acme.io\"]\n    mode: report_only\n",
        )
    })
    .await;
    let r = gw
        .send_json(
            "POST",
            &format!("{BASE}/Users"),
            &gw.t.full,
            &json!({"userName": "x@evil.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn report_only_mode_does_not_filter_lists() {
    let gw = gateway_with(|yaml| format!("mode: report_only\n{yaml}")).await;
    gw.insert("Users", user_body("alice@acme.com", &[]));
    gw.insert("Users", user_body("bob@evil.com", &[]));
    gw.insert("Users", user_body("carol@eu.acme.io", &[]));
    let r = gw
        .send("GET", &format!("{BASE}/Users"), Some(&gw.t.full), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["totalResults"], 3);
}

// ---------------------------------------------------------------------------------------------
// Reading, changing and deleting stored users
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_out_of_scope_user_reads_exactly_like_a_missing_one() {
    let gw = gateway().await;
    let hidden = gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"]));
    let missing = "00000000000000ff";
    let a = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{hidden}"),
            Some(&gw.t.full),
            None,
        )
        .await;
    let b = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{missing}"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body, b.body, "{:?} vs {:?}", a.body, b.body);
    assert_eq!(
        a.header(header::CONTENT_TYPE),
        b.header(header::CONTENT_TYPE)
    );
    assert_eq!(
        a.header(header::CACHE_CONTROL),
        b.header(header::CACHE_CONTROL)
    );
}

#[tokio::test]
async fn out_of_scope_users_cannot_be_read() {
    let gw = gateway().await;
    let visible = gw.insert("Users", user_body("alice@acme.com", &["alice@acme.com"]));
    let hidden = [
        gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"])),
        gw.insert(
            "Users",
            user_body("carol@acme.com", &["carol@acme.com", "carol@evil.com"]),
        ),
        gw.insert("Users", user_body("dave", &[])),
        gw.insert(
            "Users",
            json!({"userName": "erin@acme.com", URN: {"emails": [{"value": "erin@evil.com"}]}}),
        ),
        gw.insert(
            "Users",
            json!({"userName": "frank@acme.com", "emails": "frank@acme.com"}),
        ),
        gw.insert(
            "Users",
            json!({"userName": "gina@acme.com", "emails": [
                {"$serde_json::private::RawValue": r#"{"value": "gina@evil.com"}"#}
            ]}),
        ),
    ];
    for id in &hidden {
        for uri in [
            format!("{BASE}/Users/{id}"),
            format!("{BASE}/users/{id}/"),
            format!("{BASE}/Users/./{id}"),
            format!("{BASE}/Users/{id}?attributes=id"),
            format!("{BASE}/Users/{id}?excludedAttributes=emails"),
            format!("{BASE}/Users/{id}?excludedAttributes=emails,userName"),
        ] {
            let r = gw.send("GET", &uri, Some(&gw.t.full), None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {:?}", r.body);
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                !text.contains("evil.com") && !text.contains(id.as_str()),
                "{uri}: {text}"
            );
        }
    }
    // A narrower token sees less.
    let narrow = gw.insert("Users", user_body("gina@eu.acme.io", &[]));
    assert_eq!(
        gw.send(
            "GET",
            &format!("{BASE}/Users/{narrow}"),
            Some(&gw.t.full),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        gw.send(
            "GET",
            &format!("{BASE}/Users/{narrow}"),
            Some(&gw.t.acme_only),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // In-scope: shown, with the attributes the client asked for.
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{visible}"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["userName"], "alice@acme.com");
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{visible}?attributes=id"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let u = r.json();
    assert_eq!(u["id"], visible.as_str());
    assert!(
        u.get("emails").is_none() && u.get("userName").is_none(),
        "{u}"
    );
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{visible}?excludedAttributes=emails"),
            Some(&gw.t.full),
            None,
        )
        .await;
    let u = r.json();
    assert!(
        u.get("emails").is_none() && u["userName"] == "alice@acme.com",
        "{u}"
    );
    // List parameters make no sense on a retrieval.
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{visible}?filter=userName%20pr"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = gw
        .send(
            "GET",
            &format!("{BASE}/Users/{visible}?foo=1"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn lists_show_and_count_only_in_scope_users() {
    let gw = gateway().await;
    let alice = gw.insert("Users", user_body("alice@acme.com", &["alice@acme.com"]));
    let bob = gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"]));
    let _carol = gw.insert(
        "Users",
        user_body("carol@acme.com", &["carol@acme.com", "carol@evil.com"]),
    );
    let dave = gw.insert("Users", user_body("dave@eu.acme.io", &[]));
    let _eve = gw.insert("Users", user_body("eve", &[]));
    let list = |query: &str| format!("{BASE}/Users{query}");
    let both: BTreeSet<String> = [alice.clone(), dave.clone()].into_iter().collect();
    let only_alice: BTreeSet<String> = [alice.clone()].into_iter().collect();

    let r = gw.send("GET", &list(""), Some(&gw.t.full), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(ids(&v), both);
    assert_eq!(
        (
            v["totalResults"].as_u64(),
            v["itemsPerPage"].as_u64(),
            v["startIndex"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains("evil.com") && !text.contains("\"eve\""),
        "{text}"
    );

    let filtered: &[(&str, usize)] = &[
        ("?filter=userName%20eq%20%22bob%40evil.com%22", 0),
        ("?filter=userName+eq+%22carol%40acme.com%22", 0),
        ("?filter=userName%20eq%20%22eve%22", 0),
        ("?filter=userName%20eq%20%22alice%40acme.com%22", 1),
        ("?FILTER=USERNAME%20EQ%20%22ALICE%40ACME.COM%22", 1),
    ];
    for (q, n) in filtered {
        let v = gw
            .send("GET", &list(q), Some(&gw.t.full), None)
            .await
            .json();
        assert_eq!(v["totalResults"], *n, "{q}: {v}");
        assert_eq!(
            v["Resources"].as_array().map(Vec::len),
            Some(*n),
            "{q}: {v}"
        );
    }

    // Paging is over the visible users only.
    let v = gw
        .send(
            "GET",
            &list("?startIndex=2&count=1"),
            Some(&gw.t.full),
            None,
        )
        .await
        .json();
    assert_eq!(
        (
            v["totalResults"].as_u64(),
            v["itemsPerPage"].as_u64(),
            v["startIndex"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    assert_eq!(ids(&v).len(), 1);
    let v = gw
        .send("GET", &list("?count=0"), Some(&gw.t.full), None)
        .await
        .json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(2), Some(0))
    );
    let v = gw
        .send("GET", &list("?startIndex=3"), Some(&gw.t.full), None)
        .await
        .json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(2), Some(0))
    );

    // attributes=id: still filtered, and the address attributes fetched for judging are removed.
    let v = gw
        .send("GET", &list("?attributes=id"), Some(&gw.t.full), None)
        .await
        .json();
    assert_eq!(ids(&v), both);
    assert_eq!(v["totalResults"], 2);
    for r in v["Resources"].as_array().unwrap() {
        assert!(
            r.get("emails").is_none() && r.get("userName").is_none(),
            "{r}"
        );
    }
    let v = gw
        .send(
            "GET",
            &list("?excludedAttributes=emails,userName"),
            Some(&gw.t.full),
            None,
        )
        .await
        .json();
    assert_eq!(ids(&v), both);
    for r in v["Resources"].as_array().unwrap() {
        assert!(
            r.get("emails").is_none() && r.get("userName").is_none(),
            "{r}"
        );
    }

    // Searches too.
    let search = format!("{BASE}/Users/.search");
    for (body, want) in [
        (
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}),
            both.clone(),
        ),
        (
            json!({"filter": "userName eq \"bob@evil.com\""}),
            BTreeSet::new(),
        ),
        (
            json!({"filter": format!("id eq \"{bob}\"")}),
            BTreeSet::new(),
        ),
        (
            json!({"filter": "userName eq \"alice@acme.com\"", "attributes": ["id"]}),
            only_alice.clone(),
        ),
    ] {
        let r = gw.send_json("POST", &search, &gw.t.full, &body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}");
        let v = r.json();
        assert_eq!(ids(&v), want, "{body}");
        assert_eq!(v["totalResults"], want.len(), "{body}");
    }

    // A narrower token sees fewer.
    let v = gw
        .send("GET", &list(""), Some(&gw.t.acme_only), None)
        .await
        .json();
    assert_eq!(ids(&v), only_alice);
    assert_eq!(v["totalResults"], 1);

    // Query parameters are read strictly.
    for q in [
        "?foo=1",
        "?filter=a&filter=b",
        "?count=-1",
        "?attributes=id&excludedAttributes=emails",
        "?filter=%FF",
    ] {
        let r = gw.send("GET", &list(q), Some(&gw.t.full), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test]
async fn a_patch_that_would_move_a_user_out_is_refused() {
    let gw = gateway().await;
    let id = gw.insert(
        "Users",
        json!({"userName": "alice@acme.com", "displayName": "Alice", "emails": [{"value": "alice@acme.com", "type": "work", "primary": true}]}),
    );
    let solo = gw.insert(
        "Users",
        json!({"userName": "sam", "emails": [{"value": "sam@acme.com", "type": "work"}]}),
    );
    let before = gw.backend.all("Users");
    let uri = format!("{BASE}/Users/{id}");
    let ops = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let refused = [
        ops(json!([{"op": "replace", "path": "emails", "value": [{"value": "x@evil.com"}]}])),
        ops(json!([{"op": "add", "path": "emails", "value": [{"value": "x@evil.com"}]}])),
        ops(json!([{"op": "Replace", "path": "userName", "value": "x@evil.com"}])),
        ops(json!([{"op": "replace", "path": format!("{URN}:userName"), "value": "x@evil.com"}])),
        ops(
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "x@evil.com"}]),
        ),
        ops(
            json!([{"op": "replace", "path": "emails[value co \"a\"].value", "value": "x@evil.com"}]),
        ),
        ops(json!([{"op": "replace", "value": {"emails[type eq \"work\"].value": "x@evil.com"}}])),
        ops(json!([{"op": "replace", "value": {"userName": "x@evil.com"}}])),
        ops(json!([{"op": "replace", "value": {URN: {"emails": [{"value": "x@evil.com"}]}}}])),
        ops(
            json!([{"op": "ADD", "value": {"displayName": "A", (format!("{URN}:emails")): [{"value": "x@evil.com"}]}}]),
        ),
        ops(json!([{"op": "replace", "path": "emails", "value": [{"value": 5}]}])),
        ops(json!([
            {"op": "replace", "path": "userName", "value": "x@evil.com"},
            {"op": "replace", "path": "userName", "value": "alice@acme.com"}
        ])),
    ];
    for body in &refused {
        let r = gw.send_json("PATCH", &uri, &gw.t.full, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {:?}", r.body);
        assert_eq!(gw.backend.all("Users"), before, "{body}");
    }
    // Removing the only address.
    let solo_uri = format!("{BASE}/Users/{solo}");
    for body in [
        ops(json!([{"op": "remove", "path": "emails"}])),
        ops(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}])),
        ops(json!([{"op": "remove", "path": "emails", "value": [{"value": "sam@acme.com"}]}])),
        ops(json!([{"op": "replace", "path": "emails", "value": []}])),
    ] {
        let r = gw.send_json("PATCH", &solo_uri, &gw.t.full, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {:?}", r.body);
        assert_eq!(
            r.detail(),
            "the change would take the user outside the token's domains"
        );
        assert_eq!(gw.backend.all("Users"), before, "{body}");
    }
    // A narrower token may not write addresses its token excludes.
    let r = gw
        .send_json(
            "PATCH",
            &uri,
            &gw.t.acme_only,
            &ops(json!([{"op": "add", "path": "emails", "value": [{"value": "a@eu.acme.io"}]}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // PATCH bodies the gateway cannot interpret are 400.
    for body in [
        ops(json!([{"op": "move", "path": "emails", "value": []}])),
        ops(json!([{"op": "remove"}])),
        ops(
            json!([{"op": "replace", "path": "emails[type eq \"work\"", "value": {"value": "a@acme.com"}}]),
        ),
        ops(json!([])),
        json!({"op": "replace"}),
    ] {
        let r = gw.send_json("PATCH", &uri, &gw.t.full, &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(gw.backend.all("Users"), before, "{body}");
    }
    // A path outside the attribute grammar (here non-ASCII) is refused, never guessed at,
    // and never upsets the gateway.
    let r = gw
        .send_json(
            "PATCH",
            &uri,
            &gw.t.full,
            &ops(json!([{"op": "replace", "path": "abc\u{e9}", "value": "x"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(gw.backend.all("Users"), before);
    // Harmless changes go through.
    let r = gw
        .send_json(
            "PATCH",
            &uri,
            &gw.t.full,
            &ops(json!([{"op": "replace", "path": "displayName", "value": "Alice B"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(gw.user(&id).unwrap()["displayName"], "Alice B");
}

#[tokio::test]
async fn out_of_scope_users_cannot_be_changed_or_deleted() {
    let gw = gateway().await;
    let hidden = gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"]));
    let mixed = gw.insert("Users", user_body("carol@acme.com", &["carol@evil.com"]));
    // A backend reading with serde_json's `raw_value` sees erin@evil.com in this email.
    let wrapped = gw.insert(
        "Users",
        json!({"userName": "erin@acme.com", "emails": [
            {"$serde_json::private::RawValue": r#"{"value": "erin@evil.com"}"#}
        ]}),
    );
    let before = gw.backend.all("Users");
    let adopt = user_body("bob@acme.com", &["bob@acme.com"]);
    let patch = json!({"Operations": [{"op": "replace", "value": {"userName": "bob@acme.com", "emails": [{"value": "bob@acme.com"}]}}]});
    let missing = gw
        .send(
            "DELETE",
            &format!("{BASE}/Users/00000000000000ff"),
            Some(&gw.t.full),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for id in [&hidden, &mixed, &wrapped] {
        let uri = format!("{BASE}/Users/{id}");
        let d = gw.send("DELETE", &uri, Some(&gw.t.full), None).await;
        assert_eq!(d.status, StatusCode::NOT_FOUND, "DELETE {id}");
        assert_eq!(
            d.body, missing.body,
            "DELETE {id} differs from a missing user"
        );
        let r = gw.send_json("PUT", &uri, &gw.t.full, &adopt).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "PUT {id}");
        assert_eq!(r.body, missing.body, "PUT {id}");
        let r = gw.send_json("PATCH", &uri, &gw.t.full, &patch).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "PATCH {id}");
        assert_eq!(r.body, missing.body, "PATCH {id}");
    }
    assert_eq!(gw.backend.all("Users"), before);

    // In scope: PUT may not move the user out, and DELETE works.
    let alice = gw.insert("Users", user_body("alice@acme.com", &["alice@acme.com"]));
    let uri = format!("{BASE}/Users/{alice}");
    let r = gw
        .send_json(
            "PUT",
            &uri,
            &gw.t.full,
            &user_body("alice@acme.com", &["x@evil.com"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        gw.user(&alice).unwrap()["emails"][0]["value"],
        "alice@acme.com"
    );
    let r = gw
        .send_json(
            "PUT",
            &uri,
            &gw.t.full,
            &user_body("alice@acme.com", &["a2@acme.com"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        gw.user(&alice).unwrap()["emails"][0]["value"],
        "a2@acme.com"
    );
    let r = gw.send("DELETE", &uri, Some(&gw.t.full), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(gw.user(&alice).is_none());
    assert_eq!(gw.backend.all("Users"), before);
}

/// Names a backend could read as another: scim2-models before 0.8 drops `_`, `-` and
/// punctuation from member names (the last duplicate winning), C strings end at NUL, JavaScript
/// merges treat `__proto__` as the prototype. None reaches the backend, and a stored user
/// carrying one is hidden.
#[tokio::test]
async fn names_a_folding_backend_would_read_differently_are_refused() {
    let gw = gateway().await;
    let alice = gw.insert("Users", user_body("alice@acme.com", &["alice@acme.com"]));
    let bob = gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"]));
    let odd = gw.insert(
        "Users",
        json!({"userName": "olga@acme.com", "emails": [{"value": "olga@acme.com", "va_lue": "olga@evil.com"}]}),
    );
    let folded = [
        gw.insert(
            "Users",
            json!({"userName": "pia@acme.com", "emails": [{"value": "pia@acme.com"}], "e_mails": [{"value": "pia@evil.com"}]}),
        ),
        gw.insert(
            "Users",
            json!({"userName": "quinn@acme.com", "user_Name": "quinn@evil.com"}),
        ),
        gw.insert(
            "Users",
            json!({"userName": "rita@acme.com", "urn:ietf:params:scim:schemas:core:2.0:User_": {"emails": [{"value": "rita@evil.com"}]}}),
        ),
    ];
    let group = gw.insert(
        "Groups",
        json!({"displayName": "g", "members": [{"value": alice}], "mem_bers": [{"value": bob}]}),
    );
    let before = gw.backend.all("Users");
    let users = format!("{BASE}/Users");
    let alice_uri = format!("{BASE}/Users/{alice}");
    let group_uri = format!("{BASE}/Groups/{group}");
    let evil = json!([{"value": "x@evil.com"}]);
    let cases = [
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "emails": [{"value": "carl@acme.com", "va_lue": "x@evil.com"}]}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "emails": [{"va-lue": "x@evil.com"}]}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "emails": [{"value ": "x@evil.com"}]}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "emails": [{"__proto__": {"value": "x@evil.com"}}]}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "emails": [{"value\u{0}": "x@evil.com"}]}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "urn:ietf:params:scim:schemas:core:2.0:Us_er": {"emails": evil}}),
        ),
        (
            "POST",
            users.clone(),
            json!({"userName": "carl@acme.com", "urn:ietf:params:scim:schemas:core:2.0:Us-er:emails": evil}),
        ),
        (
            "PUT",
            alice_uri.clone(),
            json!({"userName": "alice@acme.com", "emails": [{"va_lue": "x@evil.com"}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "add", "path": "nickName", "value": "x"}],
            "Oper_ations": [{"op": "replace", "path": "emails", "value": evil}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "add", "path": "emails", "value": [{"va_lue": "x@evil.com"}]}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "add", "value": {"emails": [{"va_lue": "x@evil.com"}]}}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "replace", "path": "e_mails", "value": evil}]}),
        ),
        (
            "POST",
            format!("{BASE}/Bulk"),
            json!({"Operations": [{"method": "DELETE", "path": format!("/Users/{alice}")}],
            "Oper_ations": [{"method": "DELETE", "path": format!("/Users/{bob}")}]}),
        ),
        (
            "POST",
            format!("{BASE}/Bulk"),
            json!({"Operations": [{"method": "PATCH", "path": format!("/Users/{alice}"),
            "data": {"Operations": [{"op": "add", "path": "nickName", "value": "x"}]},
            "da_ta": {"Operations": [{"op": "replace", "path": "emails", "value": evil}]}}]}),
        ),
        (
            "POST",
            format!("{BASE}/Groups"),
            json!({"displayName": "g", "members": [{"value": alice, "va_lue": bob}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User_:emails", "value": evil}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User", "value": {"emails": evil}}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:User_": {"emails": evil}}}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:User-:emails": evil}}]}),
        ),
        (
            "PATCH",
            group_uri.clone(),
            json!({"Operations": [{"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group_:members", "value": [{"value": bob}]}]}),
        ),
        (
            "PATCH",
            group_uri.clone(),
            json!({"Operations": [{"op": "replace", "value": {"urn:ietf:params:scim:schemas:core:2.0:Group_": {"members": []}}}]}),
        ),
        (
            "PATCH",
            alice_uri.clone(),
            json!({"Operations": [{"op": "remove", "path": "emails[type eq \"work\"].val_ue"}]}),
        ),
        (
            "POST",
            format!("{users}/.search"),
            json!({"excludedAttributes": ["e_mails"]}),
        ),
    ];
    for (method, uri, body) in cases {
        let r = gw.send_json(method, &uri, &gw.t.full, &body).await;
        assert!(
            matches!(r.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN),
            "{method} {uri} {body}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(gw.backend.all("Users"), before);
    assert_eq!(gw.backend.count("Groups"), 1);
    // Stored users a folding reader takes for out-of-domain ones read as missing, and a
    // group's folded members list is not shown.
    for id in folded.iter().chain([&odd]) {
        let r = gw
            .send("GET", &format!("{BASE}/Users/{id}"), Some(&gw.t.full), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {:?}", r.body);
    }
    let r = gw.send("GET", &group_uri, Some(&gw.t.full), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&bob),
        "{:?}",
        r.body
    );
    // Nor may a query leave out, under another spelling, the addresses an answer is judged by.
    for query in [
        "excludedAttributes=e_mails,user_Name",
        "excludedAttributes=urn:ietf:params:scim:schemas:core:2.0:User_:emails",
        "excludedAttributes=e-mails.value",
        "attributes=id,user_name",
        "sortBy=e_mails",
    ] {
        for uri in [format!("{users}/{bob}?{query}"), format!("{users}?{query}")] {
            let r = gw.send("GET", &uri, Some(&gw.t.full), None).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {:?}", r.body);
        }
    }
    let uri = format!("{users}/{alice}?excludedAttributes=name.givenName");
    let r = gw.send("GET", &uri, Some(&gw.t.full), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

// ---------------------------------------------------------------------------------------------
// Bulk and groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bulk_with_one_bad_operation_changes_nothing() {
    let gw = gateway().await;
    let hidden = gw.insert("Users", user_body("bob@evil.com", &["bob@evil.com"]));
    let alice = gw.insert("Users", user_body("alice@acme.com", &["alice@acme.com"]));
    let before = gw.backend.all("Users");
    let uri = format!("{BASE}/Bulk");
    let good = json!({"method": "POST", "path": "/Users", "bulkId": "a", "data": user_body("new@acme.com", &[])});
    let cases: Vec<(Value, StatusCode)> = vec![
        (
            json!({"method": "POST", "path": "/Users", "bulkId": "b", "data": {"userName": "x@evil.com"}}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"method": "POST", "path": "/users/../Users", "bulkId": "b", "data": {"userName": "x@evil.com"}}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"method": "PATCH", "path": format!("/Users/{alice}"), "data": {"Operations": [{"op": "replace", "path": "userName", "value": "x@evil.com"}]}}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"method": "PUT", "path": format!("/Users/{alice}"), "data": {"userName": "x@evil.com"}}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"method": "PUT", "path": format!("/Users/{hidden}"), "data": user_body("bob@acme.com", &[])}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"method": "DELETE", "path": format!("/Users/{hidden}")}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"method": "DELETE", "path": format!("/Users/bulkId:later")}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"displayName": "g", "members": [{"value": hidden}]}}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"method": "GET", "path": format!("/Users/{hidden}")}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"method": "POST", "path": "/Users"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"method": "DELETE", "path": format!("/Users/{hidden}?x=1")}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"method": "POST", "path": "/Bulk", "bulkId": "n", "data": {}}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let bulk = |ops: Vec<Value>| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops});
    for (bad, want) in &cases {
        for ops in [
            vec![good.clone(), bad.clone()],
            vec![bad.clone(), good.clone()],
        ] {
            let r = gw.send_json("POST", &uri, &gw.t.full, &bulk(ops)).await;
            assert_eq!(r.status, *want, "{bad}: {:?}", r.body);
            assert_eq!(gw.backend.all("Users"), before, "{bad}");
            assert_eq!(gw.backend.count("Groups"), 0, "{bad}");
        }
    }
    // A bulkId reference is judged as the resource it creates; before its POST it names nothing.
    let patch_new = json!({"method": "PATCH", "path": "/Users/bulkId:a", "data": {"Operations": [{"op": "add", "path": "emails", "value": [{"value": "x@evil.com"}]}]}});
    let r = gw
        .send_json(
            "POST",
            &uri,
            &gw.t.full,
            &bulk(vec![good.clone(), patch_new.clone()]),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = gw
        .send_json(
            "POST",
            &uri,
            &gw.t.full,
            &bulk(vec![patch_new, good.clone()]),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    assert_eq!(gw.backend.all("Users"), before);
    // Too many operations, and query parameters, are refused up front.
    let many = json!({"Operations": vec![good.clone(); crate::policy::bulk::MAX_OPERATIONS + 1]});
    assert_eq!(
        gw.send_json("POST", &uri, &gw.t.full, &many).await.status,
        StatusCode::BAD_REQUEST
    );
    let one = json!({"Operations": [good]});
    assert_eq!(
        gw.send_json("POST", &format!("{uri}?x=1"), &gw.t.full, &one)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(gw.backend.all("Users"), before);
}

#[tokio::test]
async fn groups_only_take_and_show_in_scope_members() {
    let gw = gateway().await;
    let alice = gw.insert("Users", user_body("alice@acme.com", &[]));
    let bob = gw.insert("Users", user_body("bob@evil.com", &[]));
    let uri = format!("{BASE}/Groups");

    let r = gw
        .send_json(
            "POST",
            &uri,
            &gw.t.full,
            &json!({"displayName": "g", "members": [{"value": alice}, {"value": bob}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw
        .send_json(
            "POST",
            &uri,
            &gw.t.full,
            &json!({"displayName": "g", "members": [{"value": "no-such-user"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.backend.count("Groups"), 0);
    let r = gw
        .send_json(
            "POST",
            &uri,
            &gw.t.full,
            &json!({"displayName": "g", "members": [{"value": alice}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let g = r.json()["id"].as_str().unwrap().to_owned();

    // Adding an out-of-scope member, by any spelling, is refused.
    for ops in [
        json!([{"op": "add", "path": "members", "value": [{"value": bob}]}]),
        json!([{"op": "Add", "value": {"members": [{"value": bob}]}}]),
        json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:members", "value": [{"value": bob}]}]),
        json!([{"op": "replace", "path": "members", "value": [{"value": bob}]}]),
        json!([{"op": "remove", "path": format!("members[value eq \"{bob}\"]")}]),
    ] {
        let r = gw
            .send_json(
                "PATCH",
                &format!("{uri}/{g}"),
                &gw.t.full,
                &json!({"Operations": ops}),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{ops}: {:?}", r.body);
    }
    assert_eq!(
        gw.backend.all("Groups")[0]["members"],
        json!([{"value": alice}])
    );

    // A group stored with a hidden member shows only the visible one, and may not be wiped.
    let mixed = gw.insert("Groups", json!({"displayName": "m", "members": [{"value": alice}, {"value": bob, "display": "Bob"}]}));
    let r = gw
        .send("GET", &format!("{uri}/{mixed}"), Some(&gw.t.full), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["members"], json!([{"value": alice}]));
    assert!(!String::from_utf8_lossy(&r.body).contains(&bob));
    let r = gw.send("GET", &uri, Some(&gw.t.full), None).await;
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&bob),
        "{:?}",
        r.body
    );
    // However the backend spells the list, and whatever a member names besides its value.
    let spelled = gw.insert(
        "Groups",
        json!({"displayName": "s", "members": [{"value": alice}], "Members": [{"value": bob}],
            "urn:ietf:params:scim:schemas:core:2.0:Group:members": [{"value": bob}],
            "urn:ietf:params:scim:schemas:core:2.0:Group": {"members": [{"value": bob}]},
            "MEMBERS": {"value": bob}}),
    );
    let odd = gw.insert(
        "Groups",
        json!({"displayName": "o", "members": [{"value": alice}, {"value": alice, "va_lue": bob}]}),
    );
    for id in [&spelled, &odd] {
        let r = gw
            .send("GET", &format!("{uri}/{id}"), Some(&gw.t.full), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            !String::from_utf8_lossy(&r.body).contains(&bob),
            "{:?}",
            r.body
        );
        assert_eq!(r.json()["members"], json!([{"value": alice}]));
    }
    for (m, body) in [
        ("DELETE", None),
        (
            "PUT",
            Some(json!({"displayName": "m", "members": [{"value": alice}]})),
        ),
        (
            "PATCH",
            Some(json!({"Operations": [{"op": "remove", "path": "members"}]})),
        ),
    ] {
        let r = match &body {
            Some(b) => {
                gw.send_json(m, &format!("{uri}/{mixed}"), &gw.t.full, b)
                    .await
            }
            None => {
                gw.send(m, &format!("{uri}/{mixed}"), Some(&gw.t.full), None)
                    .await
            }
        };
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m}: {:?}", r.body);
        // Nor may a group whose hidden member sits in another spelling of the list, or
        // cannot be read.
        for id in [&spelled, &odd] {
            let r = gw
                .send(m, &format!("{uri}/{id}"), Some(&gw.t.full), None)
                .await;
            if m == "DELETE" {
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {id}: {:?}", r.body);
            }
        }
    }
    assert_eq!(gw.backend.count("Groups"), 4);
}

#[tokio::test]
async fn service_provider_config_advertises_what_the_token_may_do() {
    let gw = gateway().await;
    for token in [&gw.t.full, &gw.t.read_only] {
        let r = gw
            .send(
                "GET",
                &format!("{BASE}/ServiceProviderConfig"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        // The backend does not support Bulk, so neither does the gateway.
        assert_eq!(
            r.json()["bulk"],
            json!({"supported": false, "maxOperations": 0, "maxPayloadSize": 0})
        );
    }
}

#[tokio::test]
async fn bulk_cannot_carry_a_search() {
    let gw = gateway().await;
    gw.insert("Users", user_body("bob@evil.com", &[]));
    let body = json!({"Operations": [{"method": "POST", "path": "/Users/.search", "bulkId": "s", "data": {"filter": "userName pr"}}]});
    let r = gw
        .send_json("POST", &format!("{BASE}/Bulk"), &gw.t.full, &body)
        .await;
    // The in-memory backend has no /Bulk, so a forwarded request comes back as its own 404.
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "forwarded: {:?}", r.body);
}

#[tokio::test]
async fn bulk_operations_on_one_user_are_judged_together() {
    let gw = gateway().await;
    let id = gw.insert(
        "Users",
        json!({"userName": "alice@acme.com", "emails": [{"value": "alice@acme.com", "type": "work"}]}),
    );
    let remove_emails = json!([{"op": "remove", "path": "emails"}]);
    let rename = json!([{"op": "replace", "path": "userName", "value": "alice"}]);
    // Sent as one PATCH, the two changes are refused: the user would have no address.
    let mut both = remove_emails.as_array().unwrap().clone();
    both.extend(rename.as_array().unwrap().iter().cloned());
    let r = gw
        .send_json(
            "PATCH",
            &format!("{BASE}/Users/{id}"),
            &gw.t.full,
            &json!({"Operations": both}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Split over two Bulk operations they must be refused just the same.
    let bulk = json!({"Operations": [
        {"method": "PATCH", "path": format!("/Users/{id}"), "data": {"Operations": remove_emails}},
        {"method": "PATCH", "path": format!("/Users/{id}"), "data": {"Operations": rename}}
    ]});
    let r = gw
        .send_json("POST", &format!("{BASE}/Bulk"), &gw.t.full, &bulk)
        .await;
    // The gateway refuses a Bulk request that touches one resource twice (it would otherwise
    // judge each operation against the stored user alone). The in-memory backend has no /Bulk,
    // so a forwarded request would come back as its own 404.
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "forwarded: {:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("one operation per resource"));
}

#[test]
fn upstream_headers_keep_only_what_the_backend_may_see() {
    let mut h = http::HeaderMap::new();
    for (name, value) in [
        ("host", "gw.example.com"),
        ("authorization", "Bearer client-secret"),
        ("content-type", "application/scim+json"),
        ("content-length", "12"),
        ("accept", "application/scim+json"),
        ("connection", "keep-alive, X-Named-Secret"),
        ("keep-alive", "timeout=5"),
        ("x-named-secret", "1"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic x"),
        ("cookie", "a=b"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/globex/scim/v2/Users"),
        ("if_match", "*"),
        ("x_forwarded_for", "6.6.6.6"),
        ("authorization_", "Bearer x"),
        ("x-custom", "kept"),
    ] {
        h.append(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h.append("x-custom", HeaderValue::from_static("kept twice"));
    let conn = ClientConn::new(
        "192.0.2.7:5000".parse().unwrap(),
        "127.0.0.1:8443".parse().unwrap(),
        false,
        None,
    );
    let credential = HeaderValue::from_static(CREDENTIAL);
    let host = HeaderValue::from_static("backend.internal:8080");
    forward::upstream_headers(&mut h, Some(&conn), Some(&host), Some(&credential));
    let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "content-type",
            "host",
            "x-custom",
            "x-forwarded-for",
            "x-forwarded-proto"
        ]
    );
    assert_eq!(h[header::HOST], "backend.internal:8080");
    assert_eq!(h[header::AUTHORIZATION], CREDENTIAL);
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h.get_all("x-custom").iter().count(), 2);
}

#[test]
fn generated_request_ids_are_prefix_and_counter_in_hex() {
    let a = request_id::generate();
    let b = request_id::generate();
    let parse = |v: &HeaderValue| {
        let s = v.to_str().unwrap().to_owned();
        let (p, n) = s.split_once('-').unwrap();
        assert_eq!((p.len(), n.len()), (8, 12), "{s}");
        assert!(s
            .bytes()
            .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        (p.to_owned(), u64::from_str_radix(n, 16).unwrap())
    };
    let (pa, na) = parse(&a);
    let (pb, nb) = parse(&b);
    assert_eq!(pa, pb, "one prefix per process");
    assert!(nb > na, "the counter increases");
}

/// A body of `frames` 1 KiB frames that counts what was taken and says when it is dropped.
struct Counted {
    left: usize,
    taken: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<tokio::sync::Notify>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            &[b'x'; 1024],
        )))))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

/// Wraps a `frames`-frame body as the stack does and drops the request unread; returns how
/// many frames were read before the body was let go.
async fn abandon(frames: usize, expect: &[&'static str], version: http::Version) -> usize {
    use tower::Layer;
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dropped = Arc::new(tokio::sync::Notify::new());
    let body = Counted {
        left: frames,
        taken: taken.clone(),
        dropped: dropped.clone(),
    };
    let mut req = http::Request::post("/acme/scim/v2/Users").version(version);
    for e in expect {
        req = req.header(header::EXPECT, *e);
    }
    let req = req.body(body).unwrap();
    // The layer's request mapping, applied to a service that drops what it is given.
    let svc = drain_unread_body::layer().layer(tower::service_fn(
        |r: http::Request<drain_unread_body::DrainOnDrop>| async move {
            drop(r);
            Ok::<_, std::convert::Infallible>(())
        },
    ));
    svc.oneshot(req).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), dropped.notified())
        .await
        .expect("the body was let go");
    taken.load(std::sync::atomic::Ordering::SeqCst)
}

const H1: http::Version = http::Version::HTTP_11;

#[tokio::test]
async fn an_abandoned_body_is_read_to_its_end_in_the_background() {
    assert_eq!(abandon(100, &[], H1).await, 100);
    assert_eq!(abandon(100, &["something-else"], H1).await, 100);
}

#[tokio::test]
async fn draining_stops_at_its_byte_bound() {
    let cap = drain_unread_body::DRAIN_BYTES / 1024;
    let taken = abandon(4 * cap, &[], H1).await;
    assert!(
        (cap..=cap + 1).contains(&taken),
        "read {taken} KiB of a {} KiB body",
        4 * cap
    );
}

#[tokio::test]
async fn a_body_behind_expect_continue_is_not_read() {
    assert_eq!(abandon(100, &["100-continue"], H1).await, 0);
    // hyper waits for the go-ahead when any `Expect` value asks for it.
    assert_eq!(abandon(100, &["foo", "100-Continue"], H1).await, 0);
}

#[tokio::test]
async fn http2_bodies_are_not_drained() {
    assert_eq!(abandon(100, &[], http::Version::HTTP_2).await, 0);
}

#[tokio::test]
async fn a_request_id_carrying_a_token_is_replaced() {
    use tower::Layer;
    let svc = request_id::layer().layer(tower::service_fn(|r: http::Request<()>| async move {
        // The id the layers below (and the logs) see.
        let seen = r.headers()[&request_id::X_REQUEST_ID].clone();
        let mut resp = GatewayResponse::new(Full::new(bytes::Bytes::new()));
        resp.headers_mut().insert("x-seen", seen);
        Ok::<_, std::convert::Infallible>(resp)
    }));
    let secret = crate::token::generate().unwrap();
    for pasted in [
        format!("req-{secret}"),
        secret.to_ascii_uppercase(),
        "ok-req_1.2:3".to_owned(),
    ] {
        // Printable and short: only the token in it can make the layer refuse it.
        assert!(pasted.len() <= 128);
        assert!(pasted
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c)));
        let req = http::Request::get("/")
            .header(&request_id::X_REQUEST_ID, pasted.as_str())
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        let seen = resp.headers()["x-seen"].to_str().unwrap();
        assert_eq!(seen, resp.headers()[&request_id::X_REQUEST_ID]);
        if pasted.starts_with("ok-") {
            assert_eq!(seen, pasted, "a plain id is kept");
        } else {
            assert!(!seen.to_ascii_lowercase().contains("scimgate_"), "{seen}");
            assert_eq!(seen.len(), 21, "a generated id replaces {pasted}: {seen}");
        }
    }
}

/// Each shard sends through its own backend pool, so its requests use connections its own
/// runtime drives; threads that are not shards use the first.
#[test]
fn each_shard_uses_its_own_backend_pool() {
    // Global, but harmless to other tests: they merely get one more pool.
    crate::shard::set_count(2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "127.0.0.1:9".parse().unwrap());
    let policy = Arc::new(test_util::load_policy(&cfg));
    let pool = |shard: Option<usize>| {
        let policy = policy.clone();
        std::thread::spawn(move || {
            if let Some(i) = shard {
                crate::shard::enter(i);
            }
            std::ptr::from_ref(policy.tenants[0].upstream.client()) as usize
        })
        .join()
        .unwrap()
    };
    let (none, first, second) = (pool(None), pool(Some(0)), pool(Some(1)));
    assert_eq!(none, first);
    assert_ne!(first, second);
    assert_eq!(second, pool(Some(1)));
}

#[test]
fn the_backend_host_header_is_built_once_only_when_it_is_the_authority_as_written() {
    for (url, host) in [
        ("http://127.0.0.1:8080/scim/v2", Some("127.0.0.1:8080")),
        ("https://scim.example.com/scim/v2", Some("scim.example.com")),
        (
            "https://scim.example.com:8443/",
            Some("scim.example.com:8443"),
        ),
        ("http://scim.example.com:443/", Some("scim.example.com:443")),
        ("http://[::1]:9000/scim", Some("[::1]:9000")),
        // The client's own Host drops the default port, HTTP/2's `:authority` would keep it:
        // left to the client, as before.
        ("http://scim.example.com:80/scim", None),
        ("https://scim.example.com:443", None),
        // Never user information in a header.
        ("http://user:secret@scim.example.com:8080/scim", None),
        ("/scim/v2", None),
    ] {
        let uri: http::Uri = url.parse().unwrap();
        let got = super::upstream::host_header(&uri);
        assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), host, "{url}");
    }
}
