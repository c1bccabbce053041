use super::*;

use crate::policy::blast;
use crate::policy::bulk::parse_bulk;
use crate::policy::domain::{DomainPattern, DomainSet};
use crate::policy::patch::{group_member_changes, judge_user_patch, MemberChanges, PatchDenial};
use crate::policy::query::{
    list_resources, list_response, raw_list_resources, strip_attrs, ScimQuery,
};
use crate::policy::route::{
    classify, normalize_path, Endpoint, OpKind, Operation, ResourceType, RouteError,
};
use crate::policy::scope::{authorize, required_scope, Scope, ScopeSet};
use crate::policy::user::{
    address_projection, check_attribute_names, scan_user_addresses, user_addresses,
    user_write_member, AddressAttr, Addresses, DomainPolicy, OutOfScope, USER_ATTRS,
};
use crate::scim::json::{parse_strict, parse_strict_keeping, Keep, MAX_DEPTH};
use http::Method;
use serde_json::{json, Value};

const URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

fn set(p: &[&str]) -> DomainSet {
    DomainSet::new(p.iter().map(|s| DomainPattern::parse(s).unwrap()).collect())
}

/// `test_util::write_config`, with its YAML repaired if the fixture loses the indentation of the
/// second tenant (a `\`-continued string literal strips leading whitespace).
fn write_config(
    dir: &std::path::Path,
    backend: std::net::SocketAddr,
    credential: &str,
) -> std::path::PathBuf {
    let path = crate::test_util::write_config(dir, backend, credential);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\n- id: globex", "\n  - id: globex")).unwrap();
    path
}

fn acme() -> DomainSet {
    set(&["acme.com", "*.acme.io"])
}

// ---------------------------------------------------------------------------------------------
// route::normalize_path
// ---------------------------------------------------------------------------------------------

#[test]
fn normalize_path_accepts_and_canonicalises() {
    let cases: &[(&str, &str)] = &[
        ("/Users", "/Users"),
        ("/%55sers", "/Users"),
        ("/%55SERS", "/USERS"),
        ("/%75sers", "/users"),
        ("/Users/%7e%2D%2e%5F", "/Users/~-._"),
        ("/Users/%41%7A%30", "/Users/Az0"),
        // Other escapes stay encoded, upper-cased, and are never decoded twice.
        ("/Users/%e2%82%ac", "/Users/%E2%82%AC"),
        ("/Users/a%3ab", "/Users/a%3Ab"),
        ("/Users/%20", "/Users/%20"),
        ("/Users/%252F", "/Users/%252F"),
        ("/Users/%25", "/Users/%25"),
        ("/Users/%3F", "/Users/%3F"),
        ("/Users/%23", "/Users/%23"),
        // Dot segments.
        ("/a/b/../c", "/a/c"),
        ("/a/./b", "/a/b"),
        ("/../..", "/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/a/b/../../../c", "/c"),
        ("/users/../Users", "/Users"),
        ("/Users/%2e%2e/Groups", "/Groups"),
        ("/Users/%2E", "/Users"),
        ("/Users/.%2e/Groups", "/Groups"),
        ("/Users/...", "/Users/..."),
        ("/Users/.x", "/Users/.x"),
        // Repeated and trailing slashes.
        ("//Users", "/Users"),
        ("/Users//abc", "/Users/abc"),
        ("/Users/", "/Users"),
        ("/Users///", "/Users"),
        ("///", "/"),
        ("/", "/"),
        // Reserved but harmless characters pass through.
        ("/Users/a:b@c", "/Users/a:b@c"),
        (
            "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User",
            "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            normalize_path(input).as_deref(),
            Ok(*want),
            "input {input:?}"
        );
    }
}

/// The slow path alone: every path decoded, split into segments and joined again.
fn normalize_by_segments(raw: &str) -> Result<String, RouteError> {
    let decoded = normalize_path(&format!("{raw}/./"))?;
    Ok(decoded)
}

/// Paths that are already normal come back unchanged through the fast path, and every other
/// path comes back exactly as splitting and joining its segments gives: checked on all
/// sequences of up to five pieces over slashes, dot segments, plain and escaped characters.
#[test]
fn normalize_path_fast_path_agrees_with_the_segment_walk() {
    let pieces = ["/", "a", ".", "..", "%41", "%2e", "%7e", "%20", "b", "//"];
    let inputs = crate::test_util::concatenations(&pieces, 5);
    for raw in inputs.iter().map(|s| format!("/{s}")) {
        let raw = raw.as_str();
        // Appending "/./" forces the segment walk without changing the normal form.
        assert_eq!(
            normalize_path(raw).ok(),
            normalize_by_segments(raw).ok(),
            "{raw:?}"
        );
    }
}

#[test]
fn normalize_path_refuses_ambiguous_encodings() {
    let cases: &[&str] = &[
        "/Users%2Fabc",
        "/Users%2fabc",
        "/Users/%2F..%2F",
        "/Users%5Cabc",
        "/Users%5cabc",
        "/Users/%00",
        "/Users/%0a",
        "/Users/%0D",
        "/Users/%1f",
        "/Users/%7F",
        "/Users/%3B",
        "/Users/%3bx",
        "/Users;jsessionid=1",
        "/Users/abc;x",
        "/Users\\abc",
        "/Users\\..\\Groups",
        "/Users/a b",
        "/Users/a\tb",
        "/Users/a\u{7f}",
        "/Users\n",
        "/Users/%4",
        "/Users/%",
        "/Users/%zz",
        "/Users/%g1",
        "/Users/%1g",
        "/Users/%-1",
        "/Users/%+1",
        "Users",
        "",
        "*",
        "http://evil.example/Users",
    ];
    for input in cases {
        assert!(
            matches!(normalize_path(input), Err(RouteError::BadPath(_))),
            "input {input:?} gave {:?}",
            normalize_path(input)
        );
    }
}

#[test]
fn normalize_path_is_idempotent() {
    for input in [
        "/%55sers/../Groups/%e2%82%ac",
        "/a/./b//c/",
        "/Users/%2e%2e",
        "/x/%7e/%41",
    ] {
        let once = normalize_path(input).unwrap();
        assert_eq!(normalize_path(&once).unwrap(), once, "input {input:?}");
    }
}

#[test]
fn normalize_path_does_not_mangle_raw_non_ascii() {
    // A raw UTF-8 byte is either refused or kept as it was; never re-interpreted as Latin-1.
    for input in [
        "/Users/\u{e9}",
        "/\u{55}sers/\u{ff}",
        "/Users/\u{FF0F}x",
        "/Users\u{2215}x",
    ] {
        let got = normalize_path(input);
        assert!(
            matches!(&got, Err(RouteError::BadPath(_))) || got.as_deref() == Ok(input),
            "input {input:?} gave {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// route::classify and Operation::write_upstream_path
// ---------------------------------------------------------------------------------------------

fn op(endpoint: Endpoint, kind: OpKind, id: Option<&str>) -> Operation {
    Operation {
        endpoint,
        kind,
        id: id.map(Into::into),
    }
}

const USERS: Endpoint = Endpoint::Resource(ResourceType::User);
const GROUPS: Endpoint = Endpoint::Resource(ResourceType::Group);

#[test]
fn classify_every_endpoint_and_method() {
    use Method as M;
    let ok: Vec<(Method, &str, Operation)> = vec![
        (M::GET, "/Users", op(USERS, OpKind::List, None)),
        (M::GET, "/users", op(USERS, OpKind::List, None)),
        (M::GET, "/USERS", op(USERS, OpKind::List, None)),
        (M::POST, "/Users", op(USERS, OpKind::Create, None)),
        (M::POST, "/uSeRs", op(USERS, OpKind::Create, None)),
        (M::POST, "/Users/.search", op(USERS, OpKind::Search, None)),
        (M::POST, "/Users/.SEARCH", op(USERS, OpKind::Search, None)),
        (M::GET, "/Users/abc", op(USERS, OpKind::Get, Some("abc"))),
        (
            M::PUT,
            "/Users/abc",
            op(USERS, OpKind::Replace, Some("abc")),
        ),
        (
            M::PATCH,
            "/Users/abc",
            op(USERS, OpKind::Patch, Some("abc")),
        ),
        (
            M::DELETE,
            "/Users/abc",
            op(USERS, OpKind::Delete, Some("abc")),
        ),
        (
            M::GET,
            "/Users/bulkId:x",
            op(USERS, OpKind::Get, Some("bulkId:x")),
        ),
        (M::GET, "/Groups", op(GROUPS, OpKind::List, None)),
        (M::GET, "/groups", op(GROUPS, OpKind::List, None)),
        (M::POST, "/Groups", op(GROUPS, OpKind::Create, None)),
        (M::POST, "/Groups/.search", op(GROUPS, OpKind::Search, None)),
        (M::GET, "/Groups/g1", op(GROUPS, OpKind::Get, Some("g1"))),
        (
            M::PUT,
            "/Groups/g1",
            op(GROUPS, OpKind::Replace, Some("g1")),
        ),
        (
            M::PATCH,
            "/GROUPS/g1",
            op(GROUPS, OpKind::Patch, Some("g1")),
        ),
        (
            M::DELETE,
            "/Groups/g1",
            op(GROUPS, OpKind::Delete, Some("g1")),
        ),
        (M::POST, "/Bulk", op(Endpoint::Bulk, OpKind::Bulk, None)),
        (M::POST, "/bulk", op(Endpoint::Bulk, OpKind::Bulk, None)),
        (
            M::GET,
            "/ServiceProviderConfig",
            op(Endpoint::ServiceProviderConfig, OpKind::Discovery, None),
        ),
        (
            M::GET,
            "/serviceproviderconfig",
            op(Endpoint::ServiceProviderConfig, OpKind::Discovery, None),
        ),
        (
            M::GET,
            "/ResourceTypes",
            op(Endpoint::ResourceTypes, OpKind::Discovery, None),
        ),
        (
            M::GET,
            "/ResourceTypes/User",
            op(Endpoint::ResourceTypes, OpKind::Discovery, Some("User")),
        ),
        (
            M::GET,
            "/Schemas",
            op(Endpoint::Schemas, OpKind::Discovery, None),
        ),
        (
            M::GET,
            "/schemas/urn:x",
            op(Endpoint::Schemas, OpKind::Discovery, Some("urn:x")),
        ),
        // classify ignores empty segments.
        (M::GET, "Users", op(USERS, OpKind::List, None)),
    ];
    for (m, path, want) in ok {
        assert_eq!(classify(&m, path), Ok(want), "{m} {path}");
    }

    let refused: Vec<(Method, &str, RouteError)> = vec![
        (
            M::GET,
            "",
            RouteError::NotImplemented("a query across all resource types at the tenant root"),
        ),
        (
            M::GET,
            "/",
            RouteError::NotImplemented("a query across all resource types at the tenant root"),
        ),
        (M::POST, "", RouteError::MethodNotAllowed),
        (M::DELETE, "/", RouteError::MethodNotAllowed),
        (
            M::POST,
            "/.search",
            RouteError::NotImplemented("POST /.search across all resource types"),
        ),
        (
            M::POST,
            "/.SEARCH",
            RouteError::NotImplemented("POST /.search across all resource types"),
        ),
        (M::GET, "/.search", RouteError::MethodNotAllowed),
        (M::GET, "/.search/x", RouteError::NotFound),
        (
            M::GET,
            "/Me",
            RouteError::NotImplemented("the /Me endpoint"),
        ),
        (
            M::PATCH,
            "/me",
            RouteError::NotImplemented("the /Me endpoint"),
        ),
        (
            M::DELETE,
            "/ME",
            RouteError::NotImplemented("the /Me endpoint"),
        ),
        (
            M::GET,
            "/Me/x/y",
            RouteError::NotImplemented("the /Me endpoint"),
        ),
        (M::GET, "/Users/a/b", RouteError::NotFound),
        (M::DELETE, "/Users/a/b", RouteError::NotFound),
        (M::POST, "/Users/.search/x", RouteError::NotFound),
        (M::DELETE, "/Users", RouteError::MethodNotAllowed),
        (M::PUT, "/Users", RouteError::MethodNotAllowed),
        (M::PATCH, "/Users", RouteError::MethodNotAllowed),
        (M::HEAD, "/Users", RouteError::MethodNotAllowed),
        (M::GET, "/Users/.search", RouteError::MethodNotAllowed),
        (M::DELETE, "/Users/.search", RouteError::MethodNotAllowed),
        (M::POST, "/Users/abc", RouteError::MethodNotAllowed),
        (M::OPTIONS, "/Users/abc", RouteError::MethodNotAllowed),
        (M::DELETE, "/Groups", RouteError::MethodNotAllowed),
        (M::GET, "/Bulk", RouteError::MethodNotAllowed),
        (M::DELETE, "/Bulk", RouteError::MethodNotAllowed),
        (M::POST, "/Bulk/x", RouteError::NotFound),
        (M::GET, "/ServiceProviderConfig/x", RouteError::NotFound),
        (
            M::POST,
            "/ServiceProviderConfig",
            RouteError::MethodNotAllowed,
        ),
        (M::PUT, "/Schemas", RouteError::MethodNotAllowed),
        (
            M::DELETE,
            "/ResourceTypes/User",
            RouteError::MethodNotAllowed,
        ),
        (M::GET, "/Schemas/a/b", RouteError::NotFound),
        (M::GET, "/Unknown", RouteError::NotFound),
        (M::POST, "/Unknown", RouteError::NotFound),
        (M::GET, "/Userss", RouteError::NotFound),
        (M::GET, "/User", RouteError::NotFound),
        (M::GET, "/%55sers", RouteError::NotFound),
    ];
    for (m, path, want) in refused {
        assert_eq!(classify(&m, path), Err(want), "{m} {path}");
    }
}

#[test]
fn allowed_methods_match_classify() {
    let cases: &[(&str, &str)] = &[
        ("/Users", "GET, POST"),
        ("/groups", "GET, POST"),
        ("/Users/1", "GET, PUT, PATCH, DELETE"),
        ("/Groups/g", "GET, PUT, PATCH, DELETE"),
        ("/Users/.search", "POST"),
        ("/Bulk", "POST"),
        ("/ServiceProviderConfig", "GET"),
        ("/Schemas", "GET"),
        ("/ResourceTypes/User", "GET"),
        ("", "GET"),
        ("/.search", "POST"),
    ];
    for (rest, want) in cases {
        assert_eq!(route::allowed_methods(rest), *want, "{rest:?}");
        // Every listed method is one classify accepts, every other one it refuses with 405.
        for m in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let listed = want.split(", ").any(|w| w == m.as_str());
            let refused = classify(&m, rest) == Err(RouteError::MethodNotAllowed);
            assert_eq!(listed, !refused, "{m} {rest:?}");
        }
    }
}

#[test]
fn write_upstream_path_uses_canonical_spelling() {
    let cases: &[(Method, &str, &str)] = &[
        (Method::GET, "/users", "/Users"),
        (Method::POST, "/USERS", "/Users"),
        (Method::POST, "/users/.SEARCH", "/Users/.search"),
        (Method::GET, "/users/AbC", "/Users/AbC"),
        (Method::PATCH, "/groups/g1", "/Groups/g1"),
        (Method::POST, "/groups/.Search", "/Groups/.search"),
        (Method::POST, "/bulk", "/Bulk"),
        (
            Method::GET,
            "/serviceproviderconfig",
            "/ServiceProviderConfig",
        ),
        (Method::GET, "/resourcetypes/User", "/ResourceTypes/User"),
        (Method::GET, "/SCHEMAS", "/Schemas"),
    ];
    for (m, path, want) in cases {
        let o = classify(m, path).unwrap();
        let mut out = String::from("http://backend/base");
        o.write_upstream_path(&mut out);
        assert_eq!(out, format!("http://backend/base{want}"), "{m} {path}");
    }
    assert_eq!(
        op(USERS, OpKind::Get, Some("1")).resource_type(),
        Some(ResourceType::User)
    );
    assert_eq!(
        op(GROUPS, OpKind::List, None).resource_type(),
        Some(ResourceType::Group)
    );
    assert_eq!(op(Endpoint::Bulk, OpKind::Bulk, None).resource_type(), None);
    assert_eq!(
        op(Endpoint::Schemas, OpKind::Discovery, None).resource_type(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// scope
// ---------------------------------------------------------------------------------------------

#[test]
fn required_scope_for_every_operation() {
    let cases: Vec<(Operation, Option<Scope>)> = vec![
        (op(USERS, OpKind::List, None), Some(Scope::UsersRead)),
        (op(USERS, OpKind::Search, None), Some(Scope::UsersRead)),
        (op(USERS, OpKind::Get, Some("1")), Some(Scope::UsersRead)),
        (op(USERS, OpKind::Create, None), Some(Scope::UsersWrite)),
        (
            op(USERS, OpKind::Replace, Some("1")),
            Some(Scope::UsersWrite),
        ),
        (op(USERS, OpKind::Patch, Some("1")), Some(Scope::UsersWrite)),
        (
            op(USERS, OpKind::Delete, Some("1")),
            Some(Scope::UsersWrite),
        ),
        (op(GROUPS, OpKind::List, None), Some(Scope::GroupsRead)),
        (op(GROUPS, OpKind::Search, None), Some(Scope::GroupsRead)),
        (op(GROUPS, OpKind::Get, Some("1")), Some(Scope::GroupsRead)),
        (op(GROUPS, OpKind::Create, None), Some(Scope::GroupsWrite)),
        (
            op(GROUPS, OpKind::Replace, Some("1")),
            Some(Scope::GroupsWrite),
        ),
        (
            op(GROUPS, OpKind::Patch, Some("1")),
            Some(Scope::GroupsWrite),
        ),
        (
            op(GROUPS, OpKind::Delete, Some("1")),
            Some(Scope::GroupsWrite),
        ),
        (op(Endpoint::Bulk, OpKind::Bulk, None), Some(Scope::Bulk)),
        (
            op(Endpoint::ServiceProviderConfig, OpKind::Discovery, None),
            None,
        ),
        (
            op(Endpoint::ResourceTypes, OpKind::Discovery, Some("User")),
            None,
        ),
        (op(Endpoint::Schemas, OpKind::Discovery, None), None),
    ];
    for (o, want) in &cases {
        assert_eq!(required_scope(o), *want, "{o:?}");
        // Only the required scope satisfies the operation.
        for s in Scope::ALL {
            let only: ScopeSet = [s].into_iter().collect();
            let expect = match want {
                None => Ok(()),
                Some(w) if *w == s => Ok(()),
                Some(w) => Err(*w),
            };
            assert_eq!(authorize(only, o), expect, "{o:?} with only {s}");
        }
        assert_eq!(
            authorize(ScopeSet::default(), o),
            want.map_or(Ok(()), Err),
            "{o:?} with no scope"
        );
        assert_eq!(
            authorize(Scope::ALL.into_iter().collect(), o),
            Ok(()),
            "{o:?} with every scope"
        );
    }
}

#[test]
fn scope_set_and_parsing() {
    let s: ScopeSet = [Scope::UsersRead, Scope::Bulk].into_iter().collect();
    assert!(s.contains(Scope::UsersRead));
    assert!(s.contains(Scope::Bulk));
    assert!(!s.contains(Scope::UsersWrite));
    assert!(!s.contains(Scope::GroupsRead));
    assert!(!s.contains(Scope::GroupsWrite));
    let empty = ScopeSet::default();
    assert!(Scope::ALL.iter().all(|sc| !empty.contains(*sc)));
    let all: ScopeSet = Scope::ALL.into_iter().collect();
    assert!(Scope::ALL.iter().all(|sc| all.contains(*sc)));
    let prov: ScopeSet = Scope::PROVISIONING.into_iter().collect();
    assert!(!prov.contains(Scope::Bulk));

    for sc in Scope::ALL {
        assert_eq!(sc.as_str().parse::<Scope>(), Ok(sc));
        assert_eq!(sc.to_string(), sc.as_str());
    }
    for bad in [
        "Users:Read",
        "users:READ",
        " users:read",
        "users:read ",
        "users",
        "users:*",
        "*",
        "",
        "admin",
    ] {
        assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
    }
    let parsed: Vec<Scope> = serde_yaml::from_str("[users:read, groups:write, bulk]").unwrap();
    assert_eq!(
        parsed,
        vec![Scope::UsersRead, Scope::GroupsWrite, Scope::Bulk]
    );
    assert!(serde_yaml::from_str::<Vec<Scope>>("[users:admin]").is_err());
}

// ---------------------------------------------------------------------------------------------
// Policy::route
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_route_matches_whole_prefix_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let path = write_config(dir.path(), backend, "Bearer x");
    let policy: Policy = crate::test_util::load_policy(&path);
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        ("/acme/scim/v2/Users", Some(("acme", "/Users"))),
        ("/acme/scim/v2/Users/1", Some(("acme", "/Users/1"))),
        ("/acme/scim/v2", Some(("acme", ""))),
        ("/acme/scim/v2/", Some(("acme", "/"))),
        ("/globex/scim/v2/Groups", Some(("globex", "/Groups"))),
        ("/acme/scim/v2x", None),
        ("/acme/scim/v2x/Users", None),
        ("/acme/scim/v20/Users", None),
        ("/acme/scim", None),
        ("/acme", None),
        ("/", None),
        ("/ACME/scim/v2/Users", None),
        ("/globex/scim/v2acme/scim/v2/Users", None),
        ("/x/acme/scim/v2/Users", None),
    ];
    for (path, want) in cases {
        let got = policy.route(path).map(|(t, rest)| (&*t.id, rest));
        assert_eq!(got, *want, "path {path:?}");
    }
    assert_eq!(route::strip_prefix("/a/b", "/a"), Some("/b"));
    assert_eq!(route::strip_prefix("/ab", "/a"), None);
    assert_eq!(route::strip_prefix("/a", "/a"), Some(""));
}

// ---------------------------------------------------------------------------------------------
// user::scan_user_addresses

/// Users with every shape the tree-based reading distinguishes, in every position.
fn user_docs() -> Vec<String> {
    let shapes = [
        r#""a@acme.com""#,
        r#""alice""#,
        r#""x\u0040evil.com""#,
        "\"a\u{FF20}evil.com\"",
        "null",
        "true",
        "12",
        "-1.5e3",
        "[]",
        r#"["b@acme.com", "c@evil.com"]"#,
        r#"[{"value": "d@acme.com", "type": "work"}, {"VALUE": "e@evil.com"}]"#,
        r#"[{"value": null}, {"value": 3}, {"value": {"x": 1}}, null, 4, [1]]"#,
        r#"{"value": "f@acme.com", "primary": true}"#,
        r#"{"Value": ["g@acme.com"]}"#,
        r#"{"userName": "h@evil.com", "emails": [{"value": "i@evil.com"}]}"#,
    ];
    let names = [
        "userName",
        "USERNAME",
        "emails",
        "Emails",
        "urn:ietf:params:scim:schemas:core:2.0:User:emails",
        "URN:IETF:PARAMS:SCIM:SCHEMAS:CORE:2.0:USER:userName",
        "urn:ietf:params:scim:schemas:core:2.0:Group:emails",
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        "displayName",
        "value",
    ];
    let mut docs: Vec<String> = vec![
        "null".into(),
        "[]".into(),
        r#""a@acme.com""#.into(),
        "{}".into(),
    ];
    for n in names {
        for v in shapes {
            docs.push(format!(
                r#"{{"id": "1", "{n}": {v}, "meta": {{"x": [1, {{"y": null}}]}}}}"#
            ));
            docs.push(format!(
                r#"{{"{URN}": {{"{n}": {v}}}, "schemas": ["{URN}"]}}"#
            ));
        }
    }
    docs
}

#[test]
fn scanning_the_text_finds_what_the_parsed_user_holds() {
    for doc in &user_docs() {
        let tree: Value = serde_json::from_str(doc).unwrap();
        let mut want = user_addresses(&tree);
        let mut got = scan_user_addresses(doc.as_bytes()).unwrap();
        let mut projected = user_addresses(&address_projection(doc.as_bytes()).unwrap());
        want.values.sort();
        got.values.sort();
        projected.values.sort();
        assert_eq!(got, want, "{doc}");
        assert_eq!(projected, want, "projection of {doc}");
    }
}

/// A User create or replace is built only as far as [`user_write_member`] keeps it: every
/// decision over it (names, addresses, deactivation) answers as over the whole body, and the
/// same bodies are refused with the same error.
#[test]
fn user_writes_judge_alike_on_the_kept_members_and_the_whole_body() {
    let mut docs = user_docs();
    for active in ["false", "\"false\"", "\"TRUE\"", "0", "null", "true", "{}"] {
        for name in [
            "active",
            "ACTIVE",
            "urn:ietf:params:scim:schemas:core:2.0:User:active",
        ] {
            docs.push(format!(
                r#"{{"userName": "a@acme.com", "{name}": {active}}}"#
            ));
            docs.push(format!(r#"{{"{URN}": {{"{name}": {active}}}}}"#));
            docs.push(format!(
                r#"{{"{URN}": {{"{URN}": {{"{name}": {active}}}}}}}"#
            ));
        }
    }
    // Refused wherever they sit, kept or not.
    let wide: Vec<String> = (0..20).map(|i| format!("\"k{i}\": {i}")).collect();
    docs.extend([
        r#"{"userName": "a@acme.com", "name": {"givenName": "a", "GIVENNAME": "b"}}"#.to_owned(),
        r#"{"userName": "a@acme.com", "x": [{"a": 1, "a": 2}]}"#.to_owned(),
        r#"{"userName": "a@acme.com", "x": {"a": 1, "\u0061": 2}}"#.to_owned(),
        "{\"userName\": \"a@acme.com\", \"x\": {\"\u{17f}\": 1}}".to_owned(),
        "{\"userName\": \"a@acme.com\", \"x\": \"\\ud800\"}".to_owned(),
        r#"{"userName": "a@acme.com", "x": 1e999}"#.to_owned(),
        format!(r#"{{"x": {}1{}}}"#, "[".repeat(40), "]".repeat(40)),
        format!(r#"{{"x": {{{}, "K19": 0}}}}"#, wide.join(", ")),
        format!(
            r#"{{"x": {{{}}}, "userName": "a@acme.com"}}"#,
            wide.join(", ")
        ),
        r#"{"userName": "a@acme.com", "x": "\ud83d\ude00 \" \\"} "#.to_owned(),
        r#"{"userName": "a@acme.com"} {"#.to_owned(),
    ]);
    let keep = Keep::Select(user_write_member);
    let policy = DomainPolicy {
        domains: &acme(),
        allow_users_without_email: false,
    };
    let (mut accepted, mut refused) = (0, 0);
    for doc in &docs {
        let (whole, kept) = match (
            parse_strict(doc.as_bytes(), MAX_DEPTH),
            parse_strict_keeping(doc.as_bytes(), MAX_DEPTH, keep),
        ) {
            (Ok(w), Ok(k)) => (w, k),
            (Err(w), Err(k)) => {
                assert_eq!(w.to_string(), k.to_string(), "{doc}");
                refused += 1;
                continue;
            }
            (w, k) => panic!("{doc}: whole {w:?}, kept {k:?}"),
        };
        accepted += 1;
        assert_eq!(
            check_attribute_names(&whole, USER_ATTRS),
            check_attribute_names(&kept, USER_ATTRS),
            "{doc}"
        );
        assert_eq!(user_addresses(&whole), user_addresses(&kept), "{doc}");
        assert_eq!(policy.judge_user(&whole), policy.judge_user(&kept), "{doc}");
        for kind in [OpKind::Create, OpKind::Replace] {
            let o = op(Endpoint::Resource(ResourceType::User), kind, Some("1"));
            assert_eq!(
                blast::classify(&o, Some(&whole)),
                blast::classify(&o, Some(&kept)),
                "{kind:?} {doc}"
            );
        }
    }
    assert!(
        accepted > 300 && refused == 9,
        "{accepted} accepted, {refused} refused"
    );
}

/// Members named twice, which a tree keeps one of, make the projection unreadable: it is never
/// judged more leniently than the scan that GET and lists use.
#[test]
fn a_projection_is_never_more_lenient_than_the_scan() {
    for doc in [
        format!(r#"{{"userName": "a@acme.com", "{URN}": {{"emails": [{{"value": "boss@evil.com"}}]}}, "{URN}": {{}}}}"#),
        format!(r#"{{"userName": "a@acme.com", "{URN}": {{"emails": [{{"value": "boss@evil.com"}}]}}, "{URN}": null}}"#),
        r#"{"userName": "a@acme.com", "emails": [{"value": "boss@evil.com", "value": "a@acme.com"}]}"#.to_owned(),
        r#"{"userName": "boss@evil.com", "USERNAME": "a@acme.com"}"#.to_owned(),
        r#"{"emails": [{"value": "boss@evil.com"}], "emails": []}"#.to_owned(),
        r#"{"emails": {"value": "boss@evil.com", "VALUE": "a@acme.com"}}"#.to_owned(),
        format!(r#"{{"userName": "a@acme.com", "{URN}:userName": "boss@evil.com"}}"#),
        // Read in one pass, the URN object named twice is unreadable even when both agree.
        format!(r#"{{"userName": "a@acme.com", "{URN}": {{}}, "{URN}": {{}}}}"#),
    ] {
        let p = address_projection(doc.as_bytes()).unwrap();
        assert!(user_addresses(&p).unreadable, "{doc} projected to {p}");
        let policy = DomainPolicy {
            domains: &set(&["acme.com"]),
            allow_users_without_email: true,
        };
        assert!(policy.judge_user(&p).is_err(), "{doc}");
    }
}

/// serde_json with `raw_value` reads an object whose one member is
/// `$serde_json::private::RawValue` as the JSON in its string. Wherever an address could hide,
/// the scan and the projection read such a user as unreadable (serde_json's `Value` would
/// unwrap it into an address).
#[test]
fn users_with_names_serde_json_reserves_are_unreadable() {
    const RAW: &str = "$serde_json::private::RawValue";
    for doc in [
        format!(r#"{{"userName": {{"{RAW}": "\"a@acme.com\""}}}}"#),
        format!(
            r#"{{"userName": "a@acme.com", "emails": [{{"value": {{"{RAW}": "\"a@acme.com\""}}, "type": "work"}}]}}"#
        ),
        format!(r#"{{"userName": "a@acme.com", "emails": [{{"value": {{"{RAW}": "null"}}}}]}}"#),
        format!(
            r#"{{"userName": "a@acme.com", "emails": [{{"{RAW}": "{{\"value\": \"x@evil.com\"}}"}}]}}"#
        ),
        format!(r#"{{"userName": "a@acme.com", "emails": {{"{RAW}": "[]"}}}}"#),
        format!(r#"{{"{URN}": {{"userName": {{"{RAW}": "\"a@acme.com\""}}}}}}"#),
        format!(
            r#"{{"{URN}": {{"{RAW}": "{{\"emails\": \"x@evil.com\"}}"}}, "userName": "a@acme.com"}}"#
        ),
        format!(r#"{{"{RAW}": "{{\"userName\": \"x@evil.com\"}}"}}"#),
    ] {
        assert!(
            scan_user_addresses(doc.as_bytes()).unwrap().unreadable,
            "scan {doc}"
        );
        let p = address_projection(doc.as_bytes()).unwrap();
        assert!(user_addresses(&p).unreadable, "projection of {doc}: {p}");
    }
}

/// An email naming anything but value, display, type and primary is unreadable to every
/// reading: a backend folding names reads `va_lue` as `value`.
#[test]
fn emails_with_unknown_members_are_unreadable() {
    for doc in [
        r#"{"userName": "a@acme.com", "emails": [{"value": "a@acme.com", "va_lue": "boss@evil.com"}]}"#,
        r#"{"userName": "a@acme.com", "emails": {"Value": "a@acme.com", "e-mail": "boss@evil.com"}}"#,
        r#"{"userName": "a@acme.com", "emails": [{"va_lue": "boss@evil.com", "type": "work"}]}"#,
    ] {
        let tree: Value = serde_json::from_str(doc).unwrap();
        assert!(user_addresses(&tree).unreadable, "tree {doc}");
        assert!(
            scan_user_addresses(doc.as_bytes()).unwrap().unreadable,
            "scan {doc}"
        );
        let p = address_projection(doc.as_bytes()).unwrap();
        assert!(user_addresses(&p).unreadable, "projection of {doc}: {p}");
    }
    let fine =
        r#"{"emails": [{"VALUE": "a@acme.com", "Type": "work", "primary": true, "display": "A"}]}"#;
    assert!(!scan_user_addresses(fine.as_bytes()).unwrap().unreadable);
}

/// A stored user naming userName twice has no single value to simulate a PATCH on.
#[test]
fn a_patch_on_a_user_with_two_user_names_is_unreadable() {
    let domains = set(&["acme.com"]);
    let policy = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    let patch = json!({"Operations": [{"op": "replace", "path": "displayName", "value": "x"}]});
    for user in [
        json!({"userName": "a@acme.com", "USERNAME": "b@acme.com"}),
        json!({"userName": "a@acme.com", URN: {"userName": "b@acme.com"}}),
    ] {
        assert_eq!(
            judge_user_patch(&user, &patch, &policy),
            Err(PatchDenial::OutOfScope(OutOfScope::Unreadable)),
            "{user}"
        );
    }
    let one = json!({"userName": "a@acme.com"});
    assert_eq!(judge_user_patch(&one, &patch, &policy), Ok(()));
}

/// A PATCH simulated on a stored user's address projection is judged as on the whole user.
#[test]
fn patches_judge_alike_on_the_projection_and_the_whole_user() {
    let docs = user_docs();
    let domains = DomainSet::new(vec![DomainPattern::parse("acme.com").unwrap()]);
    let policy = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    let patches = [
        json!({"Operations": [{"op": "replace", "path": "displayName", "value": "x"}]}),
        json!({"Operations": [{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "n@acme.com"}]}),
        json!({"Operations": [{"op": "add", "path": "emails", "value": [{"value": "n@evil.com"}]}]}),
        json!({"Operations": [{"op": "remove", "path": "emails"}]}),
        json!({"Operations": [{"op": "replace", "value": {"userName": "u@acme.com"}}]}),
        json!({"Operations": [{"op": "replace", "path": format!("{URN}:emails[primary eq true].value"), "value": "p@evil.com"}]}),
    ];
    for doc in &docs {
        let tree: Value = serde_json::from_str(doc).unwrap();
        let projection = address_projection(doc.as_bytes()).unwrap();
        let unreadable = scan_user_addresses(doc.as_bytes()).unwrap().unreadable;
        for p in &patches {
            let on_projection = judge_user_patch(&projection, p, &policy);
            if unreadable {
                // Refused either way (the projection says why: unreadable).
                assert!(on_projection.is_err(), "{doc}\n{p}");
                continue;
            }
            assert_eq!(
                format!("{on_projection:?}"),
                format!("{:?}", judge_user_patch(&tree, p, &policy)),
                "{doc}\n{p}"
            );
        }
    }
}

#[test]
fn scanning_reads_every_duplicate_member_and_refuses_bad_json() {
    // An address attribute twice in one object, in any spelling, is unreadable: a backend that
    // keeps one of them could store a user with no address where the scan saw one.
    for dup in [
        r#"{"userName": "x@evil.com", "userName": "plain"}"#,
        r#"{"userName": "bob", "emails": [{"value": "a@acme.com"}], "EMAILS": []}"#,
        r#"{"emails": [{"value": "a@acme.com", "Value": null}]}"#,
        r#"{"emails": [], "urn:ietf:params:scim:schemas:core:2.0:User:emails": []}"#,
    ] {
        assert!(
            scan_user_addresses(dup.as_bytes()).unwrap().unreadable,
            "{dup}"
        );
        // The projection keeps `emails` whole, so only a twice-named attribute counts there.
        if !dup.contains("\"Value\"") {
            let p = address_projection(dup.as_bytes()).unwrap();
            assert!(user_addresses(&p).unreadable, "projection of {dup}");
        }
    }
    for bad in [
        &b"{"[..],
        b"{\"a\":1}x",
        b"",
        b"{\"emails\": [}",
        b"{\"userName\": \"a@acme.com\", \"displayName\": \"\xff\"}",
    ] {
        assert!(scan_user_addresses(bad).is_err());
        assert!(address_projection(bad).is_err());
    }
}

// user::user_addresses and DomainPolicy::judge_user
// ---------------------------------------------------------------------------------------------

#[test]
fn user_addresses_collects_every_spelling() {
    let u = json!({
        "userName": "u@acme.com",
        "EMAILS": [{"value": "a@acme.com", "primary": true}, {"VALUE": "b@acme.com"}, "c@acme.com"],
        (format!("{URN}:emails")): [{"value": "d@acme.com"}],
        URN: {"emails": {"value": "e@acme.com"}, "UserName": "f@acme.com"},
        "displayName": "x@evil.com",
        "name": {"formatted": "y@evil.com"}
    });
    let mut a = user_addresses(&u);
    a.values.sort();
    assert!(!a.unreadable);
    assert_eq!(
        a.values,
        vec![
            "a@acme.com",
            "b@acme.com",
            "c@acme.com",
            "d@acme.com",
            "e@acme.com",
            "f@acme.com",
            "u@acme.com"
        ]
    );
    // userName without '@' is not an address.
    assert_eq!(
        user_addresses(&json!({"userName": "alice"})),
        Addresses::default()
    );
    // Non-objects cannot be read.
    assert!(user_addresses(&json!([{"userName": "a@acme.com"}])).unreadable);
    assert!(user_addresses(&json!("a@acme.com")).unreadable);
}

#[test]
fn judge_user_table() {
    let domains = acme();
    let strict = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    let n = |v: &str| format!("{URN}:{v}");
    use OutOfScope::*;
    let cases: Vec<(Value, Result<(), OutOfScope>)> = vec![
        // userName as address or not.
        (json!({"userName": "a@acme.com"}), Ok(())),
        (json!({"userName": "a@evil.com"}), Err(Domain)),
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com"}]}),
            Ok(()),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": "a@evil.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@evil.com", "emails": [{"value": "a@acme.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@", "emails": [{"value": "a@acme.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@b", "emails": [{"value": "a@acme.com"}]}),
            Err(Domain),
        ),
        // Every email counts, not only the primary one.
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com", "primary": true}, {"value": "b@evil.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": "b@evil.com"}, {"value": "a@acme.com", "primary": true}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com", "type": "work"}, {"value": "b@x.acme.io", "type": "home"}]}),
            Ok(()),
        ),
        // Attribute-name letter case.
        (
            json!({"userName": "alice", "EMAILS": [{"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "Emails": [{"Value": "x@evil.com"}]}),
            Err(Domain),
        ),
        (json!({"UserName": "x@evil.com"}), Err(Domain)),
        (
            json!({"USERNAME": "x@evil.com", "emails": [{"value": "a@acme.com"}]}),
            Err(Domain),
        ),
        // Two `value` members in one item (different case): both are read.
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com", "VALUE": "x@evil.com"}]}),
            Err(Domain),
        ),
        // URN-qualified names.
        (
            json!({"userName": "alice", (n("emails")): [{"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@acme.com", (n("userName")): "x@evil.com"}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@acme.com", (URN.to_uppercase() + ":EMAILS"): [{"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        (json!({(n("emails")): [{"value": "a@acme.com"}]}), Ok(())),
        (
            json!({(format!("{GROUP_URN}:emails")): [{"value": "x@evil.com"}], "userName": "a@acme.com"}),
            Err(Domain),
        ),
        // Attributes nested under the core URN key.
        (
            json!({"userName": "a@acme.com", URN: {"emails": [{"value": "x@evil.com"}]}}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@acme.com", URN: {"userName": "x@evil.com"}}),
            Err(Domain),
        ),
        (
            json!({"userName": "a@acme.com", URN.to_lowercase(): {"EMAILS": [{"value": "x@evil.com"}]}}),
            Err(Domain),
        ),
        (json!({URN: {"userName": "a@acme.com"}}), Ok(())),
        (
            json!({"userName": "a@acme.com", URN: "x@evil.com"}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", URN: [{"emails": [{"value": "x@evil.com"}]}]}),
            Err(Unreadable),
        ),
        (json!({"userName": "a@acme.com", URN: null}), Ok(())),
        // Two spellings of emails both present: both count.
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com"}], (n("emails")): [{"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", (n("emails")): [{"value": "a@acme.com"}], "emails": [{"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        // emails as an object, bare strings.
        (
            json!({"userName": "alice", "emails": {"value": "x@evil.com"}}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": {"value": "a@acme.com"}}),
            Ok(()),
        ),
        (
            json!({"userName": "alice", "emails": ["x@evil.com"]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": ["a@acme.com"]}),
            Ok(()),
        ),
        (
            json!({"userName": "alice", "emails": ["a@acme.com", {"value": "x@evil.com"}]}),
            Err(Domain),
        ),
        // Values the gateway cannot read.
        (
            json!({"userName": "alice", "emails": "x@evil.com"}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": "a@acme.com"}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": 5}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": true}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": [{"value": 5}]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": [{"value": ["x@evil.com"]}]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": [{"value": {"value": "x@evil.com"}}]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": [[{"value": "x@evil.com"}]]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": "a@acme.com", "emails": [7]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": 5, "emails": [{"value": "a@acme.com"}]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": ["x@evil.com"], "emails": [{"value": "a@acme.com"}]}),
            Err(Unreadable),
        ),
        (
            json!({"userName": {"value": "x@evil.com"}, "emails": [{"value": "a@acme.com"}]}),
            Err(Unreadable),
        ),
        // No address at all.
        (json!({"userName": "alice"}), Err(NoAddress)),
        (json!({}), Err(NoAddress)),
        (json!({"userName": "alice", "emails": []}), Err(NoAddress)),
        (json!({"userName": "alice", "emails": null}), Err(NoAddress)),
        (
            json!({"userName": null, "emails": [{"value": null}]}),
            Err(NoAddress),
        ),
        (
            json!({"userName": "alice", "emails": [{"type": "work", "primary": true}]}),
            Err(NoAddress),
        ),
        // IDNA, full-width dots, letter case, trailing dot.
        (json!({"userName": "a@ACME.COM"}), Ok(())),
        (json!({"userName": "a@acme.com."}), Ok(())),
        (json!({"userName": "a@acme\u{FF0E}com"}), Ok(())),
        (json!({"userName": "a@acme\u{3002}com"}), Ok(())),
        (json!({"userName": "a@\u{430}cme.com"}), Err(Domain)),
        (json!({"userName": "a@xn--cme-8cd.com"}), Err(Domain)),
        (json!({"userName": "a@acme.com.."}), Err(Domain)),
        (json!({"userName": "a@.acme.com"}), Err(Domain)),
        (json!({"userName": "a@acme.com.evil.com"}), Err(Domain)),
        (json!({"userName": "a@evil-acme.com"}), Err(Domain)),
        (json!({"userName": "a@sub.acme.com"}), Err(Domain)),
        (json!({"userName": "a@[127.0.0.1]"}), Err(Domain)),
        // `*.acme.io` admits subdomains at any depth, never acme.io itself.
        (json!({"userName": "a@eu.acme.io"}), Ok(())),
        (json!({"userName": "a@x.eu.acme.io"}), Ok(())),
        (json!({"userName": "a@EU.ACME.IO."}), Ok(())),
        (json!({"userName": "a@acme.io"}), Err(Domain)),
        (json!({"userName": "a@evilacme.io"}), Err(Domain)),
        (json!({"userName": "a@acme.io.evil.com"}), Err(Domain)),
        (json!({"userName": "a@.acme.io"}), Err(Domain)),
        // Several '@': the domain is what follows the last one.
        (json!({"userName": "a@evil.com@acme.com"}), Ok(())),
        (json!({"userName": "a@acme.com@evil.com"}), Err(Domain)),
        (
            json!({"userName": "alice", "emails": [{"value": "a@acme.com@evil.com"}]}),
            Err(Domain),
        ),
        // Whitespace, separators, display names, quoting.
        (json!({"userName": " a@acme.com"}), Err(Domain)),
        (json!({"userName": "a@acme.com "}), Err(Domain)),
        (json!({"userName": "a@acme.com\n"}), Err(Domain)),
        (json!({"userName": "a@acme.com\u{0}"}), Err(Domain)),
        (json!({"userName": "a@acme.com\u{a0}"}), Err(Domain)),
        (json!({"userName": "a@acme.com,x@evil.com"}), Err(Domain)),
        (json!({"userName": "x@evil.com,a@acme.com"}), Err(Domain)),
        (json!({"userName": "x@evil.com;a@acme.com"}), Err(Domain)),
        (json!({"userName": "<x@evil.com>a@acme.com"}), Err(Domain)),
        (json!({"userName": "Eve <x@evil.com>"}), Err(Domain)),
        (json!({"userName": "x@evil.com (a@acme.com)"}), Err(Domain)),
        (json!({"userName": "x(a@acme.com)@evil.com"}), Err(Domain)),
        (json!({"userName": "\"x@evil.com\"@acme.com"}), Err(Domain)),
        (json!({"userName": "x\\@evil.com@acme.com"}), Err(Domain)),
        (
            json!({"userName": "alice", "emails": [{"value": "x@evil.com\u{FF20}acme.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": "x@evil.com\u{FE6B}acme.com"}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": ""}]}),
            Err(Domain),
        ),
        (
            json!({"userName": "alice", "emails": [{"value": "alice"}]}),
            Err(Domain),
        ),
    ];
    for (user, want) in &cases {
        assert_eq!(strict.judge_user(user), *want, "user {user}");
    }
}

#[test]
fn users_without_address_need_the_tenant_setting_or_an_unrestricted_token() {
    let domains = acme();
    let lenient = DomainPolicy {
        domains: &domains,
        allow_users_without_email: true,
    };
    let any = set(&["*"]);
    let unrestricted = DomainPolicy {
        domains: &any,
        allow_users_without_email: false,
    };
    let none = DomainSet::default();
    let nothing = DomainPolicy {
        domains: &none,
        allow_users_without_email: false,
    };
    assert!(!lenient.unrestricted());
    assert!(unrestricted.unrestricted());
    let no_address = [
        json!({"userName": "alice"}),
        json!({}),
        json!({"emails": []}),
    ];
    for u in &no_address {
        assert_eq!(lenient.judge_user(u), Ok(()), "{u}");
        assert_eq!(unrestricted.judge_user(u), Ok(()), "{u}");
        assert_eq!(nothing.judge_user(u), Err(OutOfScope::NoAddress), "{u}");
    }
    // The setting never admits a foreign or unreadable address.
    assert_eq!(
        lenient.judge_user(&json!({"userName": "alice", "emails": [{"value": "x@evil.com"}]})),
        Err(OutOfScope::Domain)
    );
    assert_eq!(
        lenient.judge_user(&json!({"userName": "alice", "emails": 5})),
        Err(OutOfScope::Unreadable)
    );
    // `*` admits every valid address, never an invalid one or an unreadable user.
    assert_eq!(
        unrestricted.judge_user(&json!({"userName": "x@evil.com"})),
        Ok(())
    );
    assert_eq!(
        unrestricted.judge_user(&json!({"userName": "x@evil com"})),
        Err(OutOfScope::Domain)
    );
    assert_eq!(
        unrestricted.judge_user(&json!({"emails": 1})),
        Err(OutOfScope::Unreadable)
    );
    // An empty domain set admits nobody.
    assert_eq!(
        nothing.judge_user(&json!({"userName": "a@acme.com"})),
        Err(OutOfScope::Domain)
    );
    assert_eq!(OutOfScope::Domain.reason(), "domain_out_of_scope");
    assert_eq!(OutOfScope::NoAddress.reason(), "user_without_email");
    assert_eq!(OutOfScope::Unreadable.reason(), "user_unreadable");
}

#[test]
fn user_name_with_look_alike_at_is_an_address() {
    let domains = acme();
    let strict = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    for name in ["x\u{FF20}evil.com", "x\u{FE6B}evil.com"] {
        let u = json!({"userName": name, "emails": [{"value": "a@acme.com"}]});
        assert_eq!(
            strict.judge_user(&u),
            Err(OutOfScope::Domain),
            "userName {name:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// patch::judge_user_patch
// ---------------------------------------------------------------------------------------------

/// A stored in-scope user whose userName is also an address.
fn stored() -> Value {
    json!({
        "id": "u1",
        "userName": "alice@acme.com",
        "displayName": "Alice",
        "emails": [
            {"value": "alice@acme.com", "type": "work", "primary": true},
            {"value": "alice@eu.acme.io", "type": "home"}
        ]
    })
}

/// A stored in-scope user whose only address is one email.
fn stored_one_email() -> Value {
    json!({
        "id": "u2",
        "userName": "alice",
        "emails": [{"value": "alice@acme.com", "type": "work", "primary": true}]
    })
}

fn patch(ops: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

fn judge(current: &Value, body: &Value, allow_no_email: bool) -> Result<(), PatchDenial> {
    let domains = acme();
    let policy = DomainPolicy {
        domains: &domains,
        allow_users_without_email: allow_no_email,
    };
    judge_user_patch(current, body, &policy)
}

fn invalid(r: &Result<(), PatchDenial>) -> bool {
    matches!(r, Err(PatchDenial::Invalid(_)))
}

#[test]
fn patch_writes_into_address_attributes_are_judged() {
    let out = Err(PatchDenial::OutOfScope(OutOfScope::Domain));
    let unreadable = Err(PatchDenial::OutOfScope(OutOfScope::Unreadable));
    let urn = |p: &str| format!("{URN}:{p}");
    let cases: Vec<(Value, Result<(), PatchDenial>)> = vec![
        // Whole `emails`.
        (
            json!([{"op": "replace", "path": "emails", "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails", "value": [{"value": "b@acme.com"}]}]),
            Ok(()),
        ),
        (
            json!([{"op": "add", "path": "emails", "value": [{"value": "x@evil.com", "type": "other"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "emails", "value": [{"value": "b@x.acme.io"}]}]),
            Ok(()),
        ),
        (
            json!([{"op": "add", "path": "emails", "value": {"value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "emails", "value": ["x@evil.com"]}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "emails", "value": [{"value": "a@acme.com"}, {"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "EMAILS", "value": [{"VALUE": "x@evil.com"}]}]),
            out.clone(),
        ),
        // Filtered and sub-attribute paths.
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "b@acme.com"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"nomatch\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[value eq \"alice@acme.com\"]", "value": {"value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[value eq \"alice@acme.com\"]", "value": {"value": "b@acme.com"}}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "emails[primary eq true].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails.value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "emails[type eq \"work\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "Emails[Type EQ \"WORK\"].Value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        // userName.
        (
            json!([{"op": "replace", "path": "userName", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "USERNAME", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "add", "path": "userName", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": "bob@acme.com"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": "bob"}]),
            Ok(()),
        ),
        // URN-qualified paths.
        (
            json!([{"op": "replace", "path": urn("emails"), "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": urn("userName"), "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": urn("emails[type eq \"work\"].value"), "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": URN.to_uppercase() + ":EMAILS", "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": format!("{GROUP_URN}:emails"), "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": URN, "value": {"emails": [{"value": "x@evil.com"}]}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": format!(" {URN} "), "value": {"userName": "x@evil.com"}}]),
            out.clone(),
        ),
        // Path-less value objects (Entra and friends).
        (
            json!([{"op": "replace", "value": {"emails": [{"value": "x@evil.com"}]}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"userName": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"emails[type eq \"work\"].value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"emails[type eq \"work\"].value": "b@acme.com"}}]),
            Ok(()),
        ),
        (
            json!([{"op": "add", "value": {"emails.value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {(urn("emails")): [{"value": "x@evil.com"}]}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {(urn("userName")): "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {URN: {"emails": [{"value": "x@evil.com"}]}}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {URN: {"userName": "x@evil.com"}}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"displayName": "A", URN: {"emails[type eq \"work\"].value": "x@evil.com"}}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": null, "value": {"userName": "x@evil.com"}}]),
            out.clone(),
        ),
        // `op` letter case.
        (
            json!([{"op": "Replace", "path": "emails", "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "ADD", "path": "emails", "value": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"OP": "Add", "PATH": "emails", "VALUE": [{"value": "x@evil.com"}]}]),
            out.clone(),
        ),
        (
            json!([{"op": "Replace", "value": {"userName": "x@evil.com"}}]),
            out.clone(),
        ),
        // A write that is later undone still wrote an out-of-scope address.
        (
            json!([
                {"op": "add", "path": "emails", "value": [{"value": "x@evil.com", "type": "tmp"}]},
                {"op": "remove", "path": "emails[type eq \"tmp\"]"}
            ]),
            out.clone(),
        ),
        // An in-scope write after an out-of-scope one.
        (
            json!([
                {"op": "replace", "path": "userName", "value": "x@evil.com"},
                {"op": "replace", "path": "userName", "value": "alice@acme.com"}
            ]),
            out.clone(),
        ),
        // Filters the simulator cannot evaluate: the written value is judged anyway.
        (
            json!([{"op": "replace", "path": "emails[value co \"alice\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[value co \"alice\"]", "value": {"value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[value co \"alice\"]", "value": {"value": "b@acme.com"}}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\" or type eq \"home\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"w\\\"x\"].value", "value": "x@evil.com"}]),
            out.clone(),
        ),
        // Non-string and unreadable values.
        (
            json!([{"op": "replace", "path": "emails", "value": [{"value": 5}]}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails", "value": "x@evil.com"}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails", "value": "alice@acme.com"}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails", "value": 5}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": 5}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": ["x@evil.com"]}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": {"value": "x@evil.com"}}]),
            out.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": {"value": "b@acme.com"}}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"]", "value": {"value": 5}}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": 5}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": ["x@evil.com"]}]),
            unreadable.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"emails": 5}}]),
            unreadable.clone(),
        ),
        // Harmless changes.
        (
            json!([{"op": "replace", "path": "displayName", "value": "x@evil.com"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "name.givenName", "value": "Bob"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": urn("name.familyName"), "value": "B"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "active", "value": false}]),
            Ok(()),
        ),
        (
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "value": {"active": false, "displayName": "Y", "name.givenName": "Z"}}]),
            Ok(()),
        ),
        (
            json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": {"value": "m"}}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].type", "value": "home"}]),
            Ok(()),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].primary", "value": false}]),
            Ok(()),
        ),
        (json!([{"op": "remove", "path": "displayName"}]), Ok(())),
        (
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
            Ok(()),
        ),
        (json!([{"op": "remove", "path": "userName"}]), Ok(())),
    ];
    for (ops, want) in &cases {
        assert_eq!(
            judge(&stored(), &patch(ops.clone()), false),
            *want,
            "ops {ops}"
        );
    }
}

#[test]
fn patch_removals_cannot_leave_a_user_without_address() {
    let none = Err(PatchDenial::OutOfScope(OutOfScope::NoAddress));
    let cases: Vec<(Value, Result<(), PatchDenial>)> = vec![
        (json!([{"op": "remove", "path": "emails"}]), none.clone()),
        (json!([{"op": "Remove", "path": "EMAILS"}]), none.clone()),
        (
            json!([{"op": "remove", "path": format!("{URN}:emails")}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[value eq \"alice@acme.com\"]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[value eq \"ALICE@ACME.COM\"]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[type eq \"work\"]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[primary eq true]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[type eq \"work\"].value"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails.value"}]),
            none.clone(),
        ),
        // Entra-style removal of listed entries.
        (
            json!([{"op": "remove", "path": "emails", "value": [{"value": "alice@acme.com"}]}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails", "value": [{"value": "Alice@Acme.com", "type": "work"}]}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails", "value": {"value": "alice@acme.com"}}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails", "value": [{"value": "other@acme.com"}]}]),
            Ok(()),
        ),
        // Filters the simulator cannot evaluate are assumed to match everything.
        (
            json!([{"op": "remove", "path": "emails[value co \"zzz\"]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[value sw \"zzz\"].value"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[type eq \"home\" or type eq \"work\"]"}]),
            none.clone(),
        ),
        (
            json!([{"op": "remove", "path": "emails[not (value eq \"zzz\")]"}]),
            none.clone(),
        ),
        // Replacing with nothing.
        (
            json!([{"op": "replace", "path": "emails", "value": []}]),
            none.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails", "value": null}]),
            none.clone(),
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": null}]),
            none.clone(),
        ),
        (
            json!([{"op": "replace", "value": {"emails": []}}]),
            none.clone(),
        ),
        // Removing something that is not there, or a harmless sub-attribute.
        (
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
            Ok(()),
        ),
        (
            json!([{"op": "remove", "path": "emails[value eq \"zzz@acme.com\"]"}]),
            Ok(()),
        ),
        (
            json!([{"op": "remove", "path": "emails[type eq \"work\"].display"}]),
            Ok(()),
        ),
        (json!([{"op": "remove", "path": "userName"}]), Ok(())),
        // Remove then add back.
        (
            json!([{"op": "remove", "path": "emails"}, {"op": "add", "path": "emails", "value": [{"value": "n@acme.com"}]}]),
            Ok(()),
        ),
        // Moving the only address into userName keeps the user addressed.
        (
            json!([{"op": "replace", "path": "userName", "value": "alice@acme.com"}, {"op": "remove", "path": "emails"}]),
            Ok(()),
        ),
    ];
    for (ops, want) in &cases {
        assert_eq!(
            judge(&stored_one_email(), &patch(ops.clone()), false),
            *want,
            "ops {ops}"
        );
    }
    // The tenant setting admits the address-less result, never a foreign address.
    assert_eq!(
        judge(
            &stored_one_email(),
            &patch(json!([{"op": "remove", "path": "emails"}])),
            true
        ),
        Ok(())
    );
    assert_eq!(
        judge(
            &stored_one_email(),
            &patch(json!([{"op": "add", "path": "emails", "value": [{"value": "x@evil.com"}]}])),
            true
        ),
        Err(PatchDenial::OutOfScope(OutOfScope::Domain))
    );
}

#[test]
fn patch_user_name_removal_is_judged_on_the_result() {
    // userName is the only address.
    let u = json!({"userName": "alice@acme.com"});
    assert_eq!(
        judge(
            &u,
            &patch(json!([{"op": "remove", "path": "userName"}])),
            false
        ),
        Err(PatchDenial::OutOfScope(OutOfScope::NoAddress))
    );
    assert_eq!(
        judge(
            &u,
            &patch(json!([{"op": "replace", "path": "userName", "value": "alice"}])),
            false
        ),
        Err(PatchDenial::OutOfScope(OutOfScope::NoAddress))
    );
    assert_eq!(
        judge(
            &u,
            &patch(json!([{"op": "replace", "value": {(format!("{URN}:userName")): null}}])),
            false
        ),
        Err(PatchDenial::OutOfScope(OutOfScope::NoAddress))
    );
}

#[test]
fn patch_user_stored_under_urn_key_is_simulated() {
    // The stored user keeps its attributes under the core URN key.
    let u = json!({URN: {"userName": "alice", "emails": [{"value": "alice@acme.com", "type": "work"}]}});
    assert_eq!(
        judge(
            &u,
            &patch(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}])),
            false
        ),
        Err(PatchDenial::OutOfScope(OutOfScope::NoAddress))
    );
    assert_eq!(
        judge(
            &u,
            &patch(json!([{"op": "replace", "path": "displayName", "value": "A"}])),
            false
        ),
        Ok(())
    );
}

#[test]
fn patch_bodies_the_gateway_cannot_read_are_invalid() {
    let bodies: Vec<Value> = vec![
        json!([]),
        json!("x"),
        json!({}),
        json!({"Operations": []}),
        json!({"Operations": {"op": "add"}}),
        json!({"Operations": [5]}),
        patch(json!([{"op": "move", "path": "emails", "value": []}])),
        patch(json!([{"op": "copy", "path": "emails", "value": []}])),
        patch(json!([{"op": "test", "path": "emails", "value": []}])),
        patch(json!([{"op": "", "path": "emails", "value": []}])),
        patch(json!([{"op": 1, "path": "emails", "value": []}])),
        patch(json!([{"op": null, "path": "emails", "value": []}])),
        patch(json!([{"path": "emails", "value": []}])),
        patch(json!([{"op": " add", "path": "emails", "value": []}])),
        patch(json!([{"op": "add", "path": "emails", "value": [], "from": "x"}])),
        patch(json!([{"op": "add", "path": 5, "value": []}])),
        patch(json!([{"op": "add", "path": ["emails"], "value": []}])),
        // remove without a path.
        patch(json!([{"op": "remove"}])),
        patch(json!([{"op": "remove", "value": {"emails": []}}])),
        patch(json!([{"op": "remove", "path": null}])),
        patch(json!([{"op": "remove", "path": URN}])),
        // add/replace without a path need an object.
        patch(json!([{"op": "add"}])),
        patch(json!([{"op": "replace", "value": "x@evil.com"}])),
        patch(json!([{"op": "replace", "value": [{"emails": []}]}])),
        // add/replace of an address attribute need a value.
        patch(json!([{"op": "add", "path": "emails"}])),
        patch(json!([{"op": "replace", "path": "userName"}])),
        patch(json!([{"op": "replace", "path": "emails[type eq \"work\"].value"}])),
        // Paths the gateway cannot parse.
        patch(json!([{"op": "replace", "path": "", "value": "x"}])),
        patch(json!([{"op": "replace", "path": ".emails", "value": "x"}])),
        patch(json!([{"op": "replace", "path": "[type eq \"work\"]", "value": "x"}])),
        patch(
            json!([{"op": "replace", "path": "emails[type eq \"work\"", "value": {"value": "a@acme.com"}}]),
        ),
        patch(
            json!([{"op": "replace", "path": "emails[type eq \"work\"]value", "value": "x@evil.com"}]),
        ),
        patch(json!([{"op": "replace", "path": "emails.value.x", "value": "x@evil.com"}])),
        patch(json!([{"op": "replace", "path": "emails.", "value": "x@evil.com"}])),
        patch(
            json!([{"op": "replace", "path": "emails[type eq \"work\"].", "value": "x@evil.com"}]),
        ),
        // A filtered emails value must be an object.
        patch(
            json!([{"op": "replace", "path": "emails[type eq \"work\"]", "value": "x@evil.com"}]),
        ),
        patch(json!([{"op": "add", "path": "emails[type eq \"work\"]", "value": ["x@evil.com"]}])),
        // Unknown emails sub-attribute.
        patch(
            json!([{"op": "replace", "path": "emails[type eq \"work\"].foo", "value": "x@evil.com"}]),
        ),
        patch(json!([{"op": "replace", "path": "emails.ref", "value": "x@evil.com"}])),
        // userName has no sub-attributes.
        patch(json!([{"op": "replace", "path": "userName.value", "value": "x@evil.com"}])),
        patch(
            json!([{"op": "replace", "path": "userName[value eq \"a\"]", "value": "x@evil.com"}]),
        ),
        patch(json!([{"op": "remove", "path": "userName.x"}])),
        // Path-less values nested too deep.
        patch(json!([{"op": "replace", "value": {URN: {URN: {URN: {"userName": "x@evil.com"}}}}}])),
    ];
    for b in &bodies {
        let got = judge(&stored(), b, false);
        assert!(invalid(&got), "body {b} gave {got:?}");
    }
}

#[test]
fn patch_path_with_non_ascii_does_not_panic() {
    for path in [
        "abc\u{e9}",
        "ab\u{e9}x",
        "\u{e9}mails",
        "urn\u{e9}:x",
        "emails[value eq \"\u{e9}\"]",
    ] {
        let body = patch(json!([{"op": "replace", "path": path, "value": "x@evil.com"}]));
        let got = std::panic::catch_unwind(|| judge(&stored(), &body, false));
        assert!(got.is_ok(), "path {path:?} panicked");
        let got = std::panic::catch_unwind(|| group_member_changes(&body));
        assert!(got.is_ok(), "group path {path:?} panicked");
    }
}

// ---------------------------------------------------------------------------------------------
// patch::group_member_changes
// ---------------------------------------------------------------------------------------------

fn changes(added: &[&str], removed: &[&str], removes_unnamed: bool) -> MemberChanges {
    MemberChanges {
        added: added.iter().map(|s| s.to_string()).collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
        removes_unnamed,
    }
}

#[test]
fn group_member_changes_table() {
    let gm = format!("{GROUP_URN}:members");
    let cases: Vec<(Value, MemberChanges)> = vec![
        (
            json!([{"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}]),
            changes(&["u1", "u2"], &[], false),
        ),
        (
            json!([{"op": "Add", "path": "Members", "value": [{"VALUE": "u1", "display": "x"}]}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "path": "members", "value": {"value": "u1"}}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "path": gm, "value": [{"value": "u1"}]}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "path": GROUP_URN.to_uppercase() + ":MEMBERS", "value": [{"value": "u1"}]}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "value": {"members": [{"value": "u1"}]}}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "value": {(gm.clone()): [{"value": "u1"}]}}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "value": {GROUP_URN: {"members": [{"value": "u1"}]}}}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "path": GROUP_URN, "value": {"members": [{"value": "u1"}]}}]),
            changes(&["u1"], &[], false),
        ),
        (
            json!([{"op": "add", "path": "members", "value": null}]),
            changes(&[], &[], false),
        ),
        // replace drops every member it does not name.
        (
            json!([{"op": "replace", "path": "members", "value": [{"value": "u3"}]}]),
            changes(&["u3"], &[], true),
        ),
        (
            json!([{"op": "Replace", "value": {"members": [{"value": "u3"}]}}]),
            changes(&["u3"], &[], true),
        ),
        (
            json!([{"op": "replace", "path": "members", "value": []}]),
            changes(&[], &[], true),
        ),
        // remove.
        (
            json!([{"op": "remove", "path": "members[value eq \"u1\"]"}]),
            changes(&[], &["u1"], false),
        ),
        (
            json!([{"op": "remove", "path": "members[VALUE EQ \"u1\"]"}]),
            changes(&[], &["u1"], false),
        ),
        (
            json!([{"op": "remove", "path": format!("{gm}[value eq \"u1\"]")}]),
            changes(&[], &["u1"], false),
        ),
        (
            json!([{"op": "remove", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}]),
            changes(&[], &["u1", "u2"], false),
        ),
        (
            json!([{"op": "remove", "path": "members"}]),
            changes(&[], &[], true),
        ),
        (
            json!([{"op": "remove", "path": "members[display eq \"Bob\"]"}]),
            changes(&[], &[], true),
        ),
        (
            json!([{"op": "remove", "path": "members[value co \"u\"]"}]),
            changes(&[], &[], true),
        ),
        (
            json!([{"op": "remove", "path": "members[value eq u1]"}]),
            changes(&[], &[], true),
        ),
        (
            json!([{"op": "remove", "path": "members[value eq \"u\\\"1\"]"}]),
            changes(&[], &[], true),
        ),
        (
            json!([{"op": "remove", "path": "members[value eq \"u1\" or value eq \"u2\"]"}]),
            changes(&[], &[], true),
        ),
        // Other attributes are not membership changes.
        (
            json!([{"op": "replace", "path": "displayName", "value": "G"}]),
            changes(&[], &[], false),
        ),
        (
            json!([{"op": "replace", "value": {"displayName": "G"}}]),
            changes(&[], &[], false),
        ),
        // Several operations accumulate.
        (
            json!([
                {"op": "add", "path": "members", "value": [{"value": "u1"}]},
                {"op": "remove", "path": "members[value eq \"u2\"]"},
                {"op": "add", "value": {"members": [{"value": "u3"}]}}
            ]),
            changes(&["u1", "u3"], &["u2"], false),
        ),
    ];
    for (ops, want) in &cases {
        assert_eq!(
            group_member_changes(&patch(ops.clone())).as_ref(),
            Ok(want),
            "ops {ops}"
        );
    }

    let refused: Vec<Value> = vec![
        json!([{"op": "add", "path": "members[value eq \"u1\"]", "value": {"value": "u1"}}]),
        json!([{"op": "replace", "path": "members[value eq \"u1\"].value", "value": "u9"}]),
        json!([{"op": "replace", "path": "members.value", "value": "u9"}]),
        json!([{"op": "add", "path": "members", "value": [{"display": "no value"}]}]),
        json!([{"op": "add", "path": "members", "value": [{"value": 5}]}]),
        json!([{"op": "add", "path": "members", "value": ["u1"]}]),
        json!([{"op": "add", "path": "members", "value": "u1"}]),
        json!([{"op": "remove", "path": "members", "value": ["u1"]}]),
        json!([{"op": "remove"}]),
        json!([{"op": "remove", "value": {"members": [{"value": "u1"}]}}]),
        json!([{"op": "add", "value": "u1"}]),
        json!([{"op": "move", "path": "members", "value": []}]),
        json!([{"op": "add", "value": {GROUP_URN: {GROUP_URN: {"members": [{"value": "u1"}]}}}}]),
        json!([]),
    ];
    for ops in &refused {
        assert!(
            group_member_changes(&patch(ops.clone())).is_err(),
            "ops {ops}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// query
// ---------------------------------------------------------------------------------------------

#[test]
fn scim_query_from_query_parses_strictly() {
    let q = ScimQuery::from_query(Some(
        "filter=userName%20eq%20%22a%40acme.com%22&attributes=id,%20displayName&startIndex=3&count=10&sortBy=userName&sortOrder=descending",
    ))
    .unwrap();
    assert_eq!(
        q,
        ScimQuery {
            filter: Some("userName eq \"a@acme.com\"".into()),
            attributes: vec!["id".into(), "displayName".into()],
            excluded: vec![],
            start_index: Some(3),
            count: Some(10),
            sort_by: Some("userName".into()),
            sort_order: Some("descending".into()),
        }
    );
    assert_eq!(ScimQuery::from_query(None).unwrap(), ScimQuery::default());
    assert_eq!(
        ScimQuery::from_query(Some("")).unwrap(),
        ScimQuery::default()
    );
    assert_eq!(
        ScimQuery::from_query(Some("&&")).unwrap(),
        ScimQuery::default()
    );
    // Names are case-insensitive; '+' is a space; names may be percent-encoded.
    let q = ScimQuery::from_query(Some("FILTER=a+eq+b&ExcludedAttributes=emails&COUNT=0")).unwrap();
    assert_eq!(q.filter.as_deref(), Some("a eq b"));
    assert_eq!(q.excluded, vec!["emails".to_owned()]);
    assert_eq!(q.count, Some(0));
    assert_eq!(
        ScimQuery::from_query(Some("%66ilter=x"))
            .unwrap()
            .filter
            .as_deref(),
        Some("x")
    );
    assert_eq!(
        ScimQuery::from_query(Some("startIndex=0"))
            .unwrap()
            .start_index,
        Some(1)
    );
    assert_eq!(
        ScimQuery::from_query(Some("filter"))
            .unwrap()
            .filter
            .as_deref(),
        Some("")
    );
    assert_eq!(
        ScimQuery::from_query(Some("count=5000")).unwrap().page(),
        (1, query::MAX_PAGE)
    );
    assert_eq!(
        ScimQuery::from_query(None).unwrap().page(),
        (1, query::DEFAULT_PAGE)
    );

    let refused = [
        "filter=a&filter=b",
        "filter=a&FILTER=b",
        "filter=a&%66ilter=b",
        "excludedAttributes=x&%65xcludedAttributes=emails",
        "attributes=id&attribute%73=emails",
        "filter%20=a",
        "=a",
        "count=1&Count=2",
        "attributes=id&attributes=emails",
        "foo=1",
        "access_token=x",
        "filter=a&x",
        "filter%00=a",
        "filter=%FF",
        "filter=%C3%28",
        "%FF=1",
        "attributes=id&excludedAttributes=emails",
        "excludedAttributes=emails&attributes=id",
        "count=-1",
        "count=abc",
        "count=1.5",
        "startIndex=x",
        "count=99999999999999999999999999",
    ];
    for q in refused {
        assert!(ScimQuery::from_query(Some(q)).is_err(), "query {q:?}");
    }
}

#[test]
fn scim_query_from_search_parses_strictly() {
    let q = ScimQuery::from_search(&json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": "userName eq \"a\"",
        "attributes": ["id", "userName"],
        "startIndex": 2,
        "count": "5",
        "SORTBY": "userName"
    }))
    .unwrap();
    assert_eq!(q.filter.as_deref(), Some("userName eq \"a\""));
    assert_eq!(q.attributes, vec!["id".to_owned(), "userName".to_owned()]);
    assert_eq!((q.start_index, q.count), (Some(2), Some(5)));
    assert_eq!(q.sort_by.as_deref(), Some("userName"));
    assert_eq!(
        ScimQuery::from_search(&json!({"attributes": "id, emails"}))
            .unwrap()
            .attributes,
        vec!["id", "emails"]
    );

    let refused = [
        json!([]),
        json!("filter"),
        json!({"filter": "a", "Filter": "b"}),
        json!({"foo": 1}),
        json!({"attributes": ["id"], "excludedAttributes": ["emails"]}),
        json!({"filter": true}),
        json!({"filter": ["a"]}),
        json!({"filter": {"a": 1}}),
        json!({"attributes": [{"a": 1}]}),
        json!({"count": -1}),
        json!({"count": 1.5}),
        json!({"startIndex": "x"}),
    ];
    for b in &refused {
        assert!(ScimQuery::from_search(b).is_err(), "body {b}");
    }
}

fn q(s: &str) -> ScimQuery {
    ScimQuery::from_query(Some(s)).unwrap()
}

fn decoded_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap()
                    .into_owned(),
            )
        })
        .collect()
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Whether an attribute name (as the backend would read it) names userName or emails.
fn names_address(attr: &str) -> bool {
    let a = attr.trim().to_ascii_lowercase();
    let bare = a
        .strip_prefix(&(URN.to_ascii_lowercase() + ":"))
        .or_else(|| a.strip_prefix(&(GROUP_URN.to_ascii_lowercase() + ":")))
        .unwrap_or(&a);
    bare == "username"
        || bare == "emails"
        || bare.starts_with("emails.")
        || bare.starts_with("emails[")
}

#[test]
fn hidden_address_attrs_follow_the_client_selection() {
    use AddressAttr::*;
    let cases: &[(&str, &[AddressAttr])] = &[
        ("", &[]),
        ("attributes=id", &[UserName, Emails]),
        ("attributes=id,displayName", &[UserName, Emails]),
        ("attributes=emails", &[UserName]),
        ("attributes=EMAILS", &[UserName]),
        ("attributes=emails.value", &[UserName]),
        ("attributes=emails[type eq \"work\"]", &[UserName]),
        ("attributes=userName", &[Emails]),
        ("attributes=username,emails", &[]),
        ("excludedAttributes=emails", &[Emails]),
        ("excludedAttributes=emails.value", &[Emails]),
        ("excludedAttributes=userName", &[UserName]),
        ("excludedAttributes=userName,Emails", &[UserName, Emails]),
        ("excludedAttributes=displayName", &[]),
    ];
    for (query, want) in cases {
        assert_eq!(
            q(query).hidden_address_attrs(),
            want.to_vec(),
            "query {query:?}"
        );
    }
}

#[test]
fn hidden_address_attrs_understand_urn_qualified_names() {
    use AddressAttr::*;
    let cases: Vec<(String, Vec<AddressAttr>)> = vec![
        (format!("attributes={URN}:emails,{URN}:userName"), vec![]),
        (format!("attributes={URN}:emails.value"), vec![UserName]),
        (format!("excludedAttributes={URN}:emails"), vec![Emails]),
        (format!("excludedAttributes={URN}:userName"), vec![UserName]),
    ];
    for (query, want) in &cases {
        assert_eq!(q(query).hidden_address_attrs(), *want, "query {query:?}");
    }
}

#[test]
fn backend_query_always_fetches_the_address_attributes() {
    let cases: &[&str] = &[
        "attributes=id",
        "attributes=id,displayName",
        "attributes=emails.value",
        "attributes=emails[type eq \"work\"].value",
        "attributes=emails.type,userName",
        "attributes=userName",
        "attributes=EMAILS",
        "excludedAttributes=emails",
        "excludedAttributes=EMAILS,USERNAME,displayName",
        "excludedAttributes=emails.value",
        "excludedAttributes=emails[type eq \"work\"]",
        "excludedAttributes=userName",
        "excludedAttributes=%20emails%20",
        "filter=userName eq \"a\"&attributes=id&count=3&startIndex=2",
        "",
    ];
    for query in cases {
        let parsed = q(query);
        for page in [None, Some((1, 200))] {
            let params = decoded_params(&parsed.backend_query(page));
            if let Some(attrs) = param(&params, "attributes") {
                let list: Vec<&str> = attrs.split(',').collect();
                assert!(
                    list.iter().any(|a| a.eq_ignore_ascii_case("userName")),
                    "{query:?}: {attrs}"
                );
                assert!(
                    list.iter().any(|a| a.eq_ignore_ascii_case("emails")),
                    "{query:?}: {attrs}"
                );
            } else {
                assert!(
                    parsed.attributes.is_empty(),
                    "{query:?}: attributes dropped"
                );
            }
            if let Some(ex) = param(&params, "excludedAttributes") {
                assert!(
                    !ex.split(',').any(names_address),
                    "{query:?}: excludes {ex}"
                );
            }
            if page.is_none() {
                assert_eq!(param(&params, "filter"), None, "{query:?}");
                assert_eq!(param(&params, "startIndex"), None, "{query:?}");
            }
        }
        let search = parsed.backend_search(1, 200);
        if let Some(Value::Array(a)) = search.get("attributes") {
            let has = |n: &str| {
                a.iter()
                    .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(n)))
            };
            assert!(has("userName") && has("emails"), "{query:?}");
        }
        if let Some(Value::Array(ex)) = search.get("excludedAttributes") {
            assert!(
                !ex.iter().any(|v| names_address(v.as_str().unwrap())),
                "{query:?}"
            );
        }
    }
    assert_eq!(
        q("attributes=id").backend_query(None),
        "attributes=id%2CuserName%2Cemails"
    );
    assert_eq!(q("").backend_query(None), "");
    assert_eq!(
        q("filter=userName eq \"a b\"&count=3").backend_query(Some((1, 200))),
        "filter=userName%20eq%20%22a%20b%22&startIndex=1&count=200"
    );
    assert_eq!(
        q("excludedAttributes=emails,displayName").backend_query(None),
        "excludedAttributes=displayName"
    );
}

#[test]
fn backend_query_never_excludes_urn_qualified_address_attributes() {
    for query in [
        format!("excludedAttributes={URN}:emails"),
        format!("excludedAttributes={URN}:userName"),
        format!("excludedAttributes={URN}:emails.value"),
        format!("excludedAttributes={}:EMAILS", URN.to_uppercase()),
    ] {
        let parsed = q(&query);
        for page in [None, Some((1, 200))] {
            let params = decoded_params(&parsed.backend_query(page));
            if let Some(ex) = param(&params, "excludedAttributes") {
                assert!(
                    !ex.split(',').any(names_address),
                    "{query:?}: excludes {ex}"
                );
            }
        }
        if let Some(Value::Array(ex)) = parsed.backend_search(1, 200).get("excludedAttributes") {
            assert!(
                !ex.iter().any(|v| names_address(v.as_str().unwrap())),
                "{query:?}"
            );
        }
    }
}

#[test]
fn canonical_query_re_encodes_the_client_query() {
    assert_eq!(
        q("filter=displayName eq \"x\"&count=5").canonical_query(),
        "filter=displayName%20eq%20%22x%22&count=5"
    );
    assert_eq!(
        q("COUNT=2&startIndex=0&sortOrder=descending&sortBy=x&filter=a+b").canonical_query(),
        "filter=a%20b&sortBy=x&sortOrder=descending&startIndex=1&count=2"
    );
    assert_eq!(
        q("attributes=id,members").canonical_query(),
        "attributes=id%2Cmembers"
    );
    assert_eq!(
        q("excludedAttributes=members").canonical_query(),
        "excludedAttributes=members"
    );
    assert_eq!(q("").canonical_query(), "");
    assert!(!q("attributes=id").has_list_params());
    assert!(q("count=1").has_list_params());
    assert!(q("sortOrder=ascending").has_list_params());
}

#[test]
fn strip_attrs_removes_every_spelling() {
    let mut u = json!({
        "id": "1",
        "userName": "a@acme.com",
        "EMAILS": [{"value": "a@acme.com"}],
        (format!("{URN}:emails")): [{"value": "a@acme.com"}],
        URN: {"emails": [], "UserName": "x", "nickName": "n"},
        "displayName": "A"
    });
    strip_attrs(&mut u, &[AddressAttr::UserName, AddressAttr::Emails]);
    assert_eq!(
        u,
        json!({"id": "1", URN: {"nickName": "n"}, "displayName": "A"})
    );

    let mut u = json!({"id": "1", "userName": "a@acme.com", "emails": []});
    strip_attrs(&mut u, &[AddressAttr::Emails]);
    assert_eq!(u, json!({"id": "1", "userName": "a@acme.com"}));

    let mut u = json!({"id": "1", "userName": "a@acme.com", "emails": []});
    strip_attrs(&mut u, &[]);
    assert_eq!(
        u,
        json!({"id": "1", "userName": "a@acme.com", "emails": []})
    );
}

#[test]
fn list_response_and_list_resources() {
    let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
    let text = list_response(&[raw(json!({"id": "a"})), raw(json!({"id": "b"}))], 7, 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&text).unwrap(),
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": 7,
            "startIndex": 3,
            "itemsPerPage": 2,
            "Resources": [{"id": "a"}, {"id": "b"}]
        })
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&list_response(&[], 0, 1)).unwrap(),
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": 0,
            "startIndex": 1,
            "itemsPerPage": 0,
            "Resources": []
        })
    );

    let mut body = json!({"totalResults": 2, "Resources": [{"id": "a"}, {"id": "b"}]});
    assert_eq!(
        list_resources(&mut body),
        Some((vec![json!({"id": "a"}), json!({"id": "b"})], 2))
    );
    let mut body = json!({"TOTALRESULTS": 1, "resources": [{"id": "a"}]});
    assert_eq!(
        list_resources(&mut body),
        Some((vec![json!({"id": "a"})], 1))
    );
    let mut body = json!({"totalResults": 0});
    assert_eq!(list_resources(&mut body), Some((vec![], 0)));
    let mut body = json!({"totalResults": 1, "Resources": {"id": "a"}});
    assert_eq!(list_resources(&mut body), None);
    let mut body = json!([{"id": "a"}]);
    assert_eq!(list_resources(&mut body), None);
}

/// The tree-free page reader agrees with the tree-based one, and refuses what it cannot read
/// unambiguously.
#[test]
fn raw_list_resources_reads_pages_like_the_tree() {
    let texts = |body: &str| {
        raw_list_resources(body.as_bytes()).map(|(r, total)| {
            (
                r.iter().map(|r| r.get().to_owned()).collect::<Vec<_>>(),
                total,
            )
        })
    };
    assert_eq!(
        texts(
            r#"{"totalResults": 2, "Resources": [{"id": "a"}, {"id":"b", "x": [1, {"y": null}]}]}"#
        ),
        Some((
            vec![
                r#"{"id": "a"}"#.to_owned(),
                r#"{"id":"b", "x": [1, {"y": null}]}"#.to_owned()
            ],
            2
        ))
    );
    assert_eq!(
        texts(r#"{"TOTALRESULTS": 1, "resources": [{"id": "a"}]}"#),
        Some((vec![r#"{"id": "a"}"#.to_owned()], 1))
    );
    assert_eq!(texts(r#"{"totalResults": 0}"#), Some((vec![], 0)));
    assert_eq!(
        texts(r#"{"totalResults": "3", "Resources": null}"#),
        Some((vec![], 0))
    );
    for bad in [
        r#"{"totalResults": 1, "Resources": {"id": "a"}}"#,
        r#"[{"id": "a"}]"#,
        r#"{"Resources": [], "resources": [{"id": "a"}]}"#,
        r#"{"totalResults": 1, "TotalResults": 9, "Resources": []}"#,
        r#"{"Resources": [{"id": "a"}]} {"Resources": []}"#,
        r#"{"Resources": [{"id": "a"]}"#,
    ] {
        assert_eq!(texts(bad), None, "{bad}");
    }
    assert!(raw_list_resources(b"{\"Resources\": [{\"id\": \"\xff\"}]}").is_none());
    // Same resources and total as the tree reader, on bodies both can read.
    for body in [
        json!({"totalResults": 3, "Resources": [{"id": "1", "emails": [{"value": "a@acme.com"}]}]}),
        json!({"Resources": [], "itemsPerPage": 0, "schemas": ["x"]}),
    ] {
        let text = serde_json::to_vec(&body).unwrap();
        let (raw, total) = raw_list_resources(&text).unwrap();
        let mut tree = body.clone();
        let (want, want_total) = list_resources(&mut tree).unwrap();
        let got: Vec<Value> = raw
            .iter()
            .map(|r| serde_json::from_str(r.get()).unwrap())
            .collect();
        assert_eq!((got, total), (want, want_total));
    }
}

// ---------------------------------------------------------------------------------------------
// bulk::parse_bulk
// ---------------------------------------------------------------------------------------------

fn bulk(ops: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops})
}

#[test]
fn parse_bulk_classifies_each_operation() {
    let body = bulk(json!([
        {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"userName": "a@acme.com"}},
        {"method": "patch", "path": "/users/../Users/bulkId:a", "data": {"Operations": []}},
        {"method": "Put", "path": "//Groups/g1/", "data": {}},
        {"method": "DELETE", "path": "/Users/%55x"},
        {"METHOD": "POST", "PATH": "/Groups", "BULKID": "g", "DATA": {}}
    ]));
    let ops = parse_bulk(&body, 100).unwrap();
    let got: Vec<(Method, Operation, Option<&str>, bool)> = ops
        .iter()
        .map(|b| (b.method.clone(), b.op.clone(), b.bulk_id, b.data.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Method::POST,
                op(USERS, OpKind::Create, None),
                Some("a"),
                true
            ),
            (
                Method::PATCH,
                op(USERS, OpKind::Patch, Some("bulkId:a")),
                None,
                true
            ),
            (
                Method::PUT,
                op(GROUPS, OpKind::Replace, Some("g1")),
                None,
                true
            ),
            (
                Method::DELETE,
                op(USERS, OpKind::Delete, Some("Ux")),
                None,
                false
            ),
            (
                Method::POST,
                op(GROUPS, OpKind::Create, None),
                Some("g"),
                true
            ),
        ]
    );
    assert_eq!(ops[0].data, Some(&json!({"userName": "a@acme.com"})));
    assert!(parse_bulk(&bulk(json!([])), 100).unwrap().is_empty());
}

#[test]
fn parse_bulk_refuses_what_it_cannot_judge() {
    let user = json!({"method": "POST", "path": "/Users", "bulkId": "x", "data": {}});
    let max = bulk(Value::Array(vec![user.clone(); 3]));
    assert!(parse_bulk(&max, 3).is_ok());
    assert_eq!(
        parse_bulk(&bulk(Value::Array(vec![user.clone(); 4])), 3).unwrap_err(),
        "4 operations exceed maxOperations (3)"
    );

    let refused: Vec<Value> = vec![
        json!([]),
        json!({}),
        json!({"Operations": {"method": "POST"}}),
        bulk(json!([5])),
        // POST needs a bulkId; bulkId must be a string.
        bulk(json!([{"method": "POST", "path": "/Users", "data": {}}])),
        bulk(json!([{"method": "POST", "path": "/Users", "bulkId": null, "data": {}}])),
        bulk(json!([{"method": "POST", "path": "/Users", "bulkId": 1, "data": {}}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/1", "bulkId": ["x"]}])),
        // Methods.
        bulk(json!([{"method": "GET", "path": "/Users/1"}])),
        bulk(json!([{"method": "HEAD", "path": "/Users/1"}])),
        bulk(json!([{"method": "", "path": "/Users/1"}])),
        bulk(json!([{"method": 1, "path": "/Users/1"}])),
        bulk(json!([{"path": "/Users/1"}])),
        bulk(json!([{"method": "DELETE ", "path": "/Users/1"}])),
        // Paths.
        bulk(json!([{"method": "DELETE"}])),
        bulk(json!([{"method": "DELETE", "path": 1}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/1?x=1"}])),
        bulk(json!([{"method": "POST", "path": "/Users?filter=x", "bulkId": "a", "data": {}}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/1#x"}])),
        bulk(json!([{"method": "DELETE", "path": "Users/1"}])),
        bulk(json!([{"method": "DELETE", "path": "/Users%2F1"}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/1;x"}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/a b"}])),
        bulk(json!([{"method": "DELETE", "path": "/Users/1/x"}])),
        bulk(json!([{"method": "DELETE", "path": "/Users"}])),
        bulk(json!([{"method": "DELETE", "path": "/acme/scim/v2/Users/1"}])),
        bulk(json!([{"method": "PATCH", "path": "/Me", "data": {}}])),
        // Discovery and Bulk targets.
        bulk(json!([{"method": "POST", "path": "/Bulk", "bulkId": "a", "data": {}}])),
        bulk(json!([{"method": "PUT", "path": "/Schemas/x", "data": {}}])),
        bulk(json!([{"method": "POST", "path": "/ServiceProviderConfig", "bulkId": "a"}])),
        bulk(json!([{"method": "DELETE", "path": "/ResourceTypes/User"}])),
        bulk(json!([{"method": "POST", "path": "/", "bulkId": "a"}])),
        bulk(json!([{"method": "POST", "path": "/.search", "bulkId": "a"}])),
        // One bad operation among good ones.
        bulk(json!([user, {"method": "GET", "path": "/Users"}])),
    ];
    for b in &refused {
        assert!(parse_bulk(b, 100).is_err(), "body {b}");
    }
}

#[test]
fn parse_bulk_refuses_searches() {
    for path in ["/Users/.search", "/Groups/.search", "/users/.SEARCH"] {
        let body = bulk(
            json!([{"method": "POST", "path": path, "bulkId": "a", "data": {"filter": "userName pr"}}]),
        );
        let got =
            parse_bulk(&body, 100).map(|ops| ops.iter().map(|b| b.op.kind).collect::<Vec<_>>());
        assert!(got.is_err(), "path {path:?} gave {got:?}");
    }
}

#[test]
fn bulk_and_page_limits() {
    assert_eq!(bulk::MAX_OPERATIONS, 100);
    assert_eq!(query::DEFAULT_PAGE, 100);
    assert_eq!(query::MAX_PAGE, 1000);
}

// --- Findings of the adversarial review -------------------------------------------------------

#[test]
fn patch_paths_outside_the_grammar_are_refused_not_guessed() {
    use crate::policy::patch::{judge_user_patch, parse_path, PatchDenial};
    for bad in [
        "emails pr",
        "emails [type eq \"work\"]",
        "emails eq \"m@acme.com\"",
        "urn:ietf:params:scim:schemas:core:2.0:User:emails [type eq \"work\"].value",
        "emails [value pr]",
        " emails",
        "emails ",
        "emails.value pr",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User manager",
    ] {
        assert!(parse_path(bad).is_err(), "{bad:?} parsed");
    }
    let domains =
        crate::policy::domain::DomainSet::new(vec![crate::policy::domain::DomainPattern::parse(
            "acme.com",
        )
        .unwrap()]);
    let policy = crate::policy::user::DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    let stored = serde_json::json!({"userName": "frank", "emails": [{"value": "frank@acme.com", "type": "work"}]});
    for (path, value) in [
        ("emails pr", serde_json::json!({"value": "victim@evil.com"})),
        ("user_name", serde_json::json!("cfo@evil.com")),
        (
            "urn:ietf:params:scim:schemas:core:2.0:User:user_name",
            serde_json::json!("cfo@evil.com"),
        ),
    ] {
        let body =
            serde_json::json!({"Operations": [{"op": "replace", "path": path, "value": value}]});
        assert!(
            matches!(
                judge_user_patch(&stored, &body, &policy),
                Err(PatchDenial::Invalid(_))
            ),
            "{path}"
        );
    }
    let body = serde_json::json!({"Operations": [{"op": "replace", "value": {"user_name": "cto@evil.com"}}]});
    assert!(matches!(
        judge_user_patch(&stored, &body, &policy),
        Err(PatchDenial::Invalid(_))
    ));
    // A filter literal some backends turn into a new entry counts as written.
    let body = serde_json::json!({"Operations": [{"op": "replace", "path": "emails[value eq \"ceo@evil.com\"].type", "value": "work"}]});
    assert!(matches!(
        judge_user_patch(&stored, &body, &policy),
        Err(PatchDenial::OutOfScope(_))
    ));
    let body = serde_json::json!({"Operations": [{"op": "replace", "path": "emails[value eq \"frank@acme.com\"].type", "value": "home"}]});
    assert_eq!(judge_user_patch(&stored, &body, &policy), Ok(()));
}

#[test]
fn lax_false_values_count_as_deactivations() {
    use crate::policy::blast::classify;
    use crate::policy::route::{classify as route, normalize_path};
    let op = route(&http::Method::PATCH, &normalize_path("/Users/1").unwrap()).unwrap();
    for v in [
        serde_json::json!(false),
        serde_json::json!("false"),
        serde_json::json!(0),
        serde_json::json!("off"),
    ] {
        let body =
            serde_json::json!({"Operations": [{"op": "replace", "path": "active", "value": v}]});
        assert_eq!(
            classify(&op, Some(&body)),
            Some(crate::ratelimit::Blast::Deactivate),
            "{v}"
        );
    }
    let body =
        serde_json::json!({"Operations": [{"op": "replace", "path": "active", "value": true}]});
    assert_eq!(classify(&op, Some(&body)), None);
}

#[test]
fn resource_bodies_may_only_name_core_attributes_or_extensions() {
    use crate::policy::user::{check_attribute_names, GROUP_ATTRS, USER_ATTRS};
    let ok = serde_json::json!({"schemas": [], "UserName": "a@acme.com", "EMAILS": [], "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {}}});
    assert!(check_attribute_names(&ok, USER_ATTRS).is_ok());
    for bad in [
        serde_json::json!({"user_name": "x@evil.com"}),
        serde_json::json!({"urn:ietf:params:scim:schemas:core:2.0:User:user_name": "x"}),
        serde_json::json!({"urn:ietf:params:scim:schemas:core:2.0:User": {"user_name": "x"}}),
        serde_json::json!({"urn:bad urn": 1}),
        serde_json::json!([]),
    ] {
        assert!(check_attribute_names(&bad, USER_ATTRS).is_err(), "{bad}");
    }
    assert!(check_attribute_names(
        &serde_json::json!({"displayName": "g", "members": []}),
        GROUP_ATTRS
    )
    .is_ok());
    assert!(check_attribute_names(&serde_json::json!({"member": []}), GROUP_ATTRS).is_err());
}

/// `folded_alias` answers names of letters and digits alone without the general path: this
/// compares it with the general rule (written out here) on every such spelling that matters.
#[test]
fn folded_alias_takes_plain_names_as_the_general_rule_does() {
    use crate::policy::user::{folded_alias, is_user_urn, strip_user_urn, USER_URN};
    fn fold(s: &str) -> String {
        s.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase() as char)
            .collect()
    }
    fn general(name: &str) -> bool {
        let starts = |known: &str| fold(name).starts_with(&fold(known));
        let bare = match strip_user_urn(name) {
            Some(bare) => bare,
            None if is_user_urn(name) => return false,
            None if starts(USER_URN) || starts(GROUP_URN) => return true,
            None => name,
        };
        ["userName", "emails", "members"]
            .iter()
            .any(|a| !bare.eq_ignore_ascii_case(a) && fold(bare) == fold(a))
    }
    let mut names: Vec<String> = Vec::new();
    let base = [
        "userName",
        "emails",
        "members",
        "value",
        "givenName",
        "id",
        "meta",
        "schemas",
        "USERNAME",
        "eMails",
        "Members",
        "user",
        "email",
        "membersx",
        "xemails",
        "urnietfparamsscimschemascore20User",
        "URNIETFPARAMSSCIMSCHEMASCORE20GROUP",
        "urnietfparamsscimschemascore20Userx",
        "urnietfparamsscimschemascore20Use",
        "urnietfparamsscimschemascore20Grou",
        "urnietfparamsscimschemasextension20User",
        USER_URN,
        GROUP_URN,
        "user_Name",
        "e-mails",
        "mem.bers",
        "e_mails_",
        "displayName",
        "xuserName",
        "9emails",
        "a_mails",
        "Name",
    ];
    for b in base {
        names.push(b.to_owned());
        names.push(format!("{b}1"));
        names.push(format!("{USER_URN}:{b}"));
        names.push(b.to_ascii_uppercase());
        names.push(b.replace(':', ""));
        names.push(b.replace([':', '.'], ""));
    }
    // Every string of up to three characters over letters and digits that start or end the
    // names above, and a few punctuation marks.
    let alphabet: Vec<char> = "uUeEmMsSa0_:-".chars().collect();
    let mut short = vec![String::new()];
    for _ in 0..3 {
        let next: Vec<String> = short
            .iter()
            .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
            .collect();
        names.extend(next.iter().cloned());
        short = next;
    }
    for n in &names {
        assert_eq!(folded_alias(n), general(n), "{n:?}");
    }
    assert!(folded_alias("urnietfparamsscimschemascore20User"));
    assert!(folded_alias("e_mails"));
    assert!(!folded_alias("eMails"));
}

/// `allowed_attr` compares names as `eq_ignore_ascii_case` does, against lists kept lower-cased.
#[test]
fn allowed_attr_compares_names_in_any_ascii_case() {
    use crate::policy::user::{allowed_attr, GROUP_ATTRS, USER_ATTRS, USER_URN};
    for list in [USER_ATTRS, GROUP_ATTRS] {
        for a in list {
            assert_eq!(*a, a.to_ascii_lowercase(), "lists are lower-cased");
            assert!(allowed_attr(a, list));
            assert!(allowed_attr(&a.to_ascii_uppercase(), list), "{a}");
            assert!(allowed_attr(
                &format!("{USER_URN}:{}", a.to_ascii_uppercase()),
                list
            ));
            assert!(!allowed_attr(&format!("{a}x"), list), "{a}");
            assert!(!allowed_attr(&a[1..], list), "{a}");
        }
    }
    assert!(allowed_attr("userName", USER_ATTRS));
    assert!(!allowed_attr("userName", GROUP_ATTRS));
    for bad in [
        "",
        "user_name",
        "userNamé",
        "u\u{17F}erName",
        &"a".repeat(40),
        &"username".repeat(5),
    ] {
        assert!(!allowed_attr(bad, USER_ATTRS), "{bad:?}");
    }
}
