//! Fuzzes the body inspector: strict JSON parsing, then every decision the gateway makes over a
//! request body (user judgement, PATCH simulation, group member changes, Bulk parsing, search
//! queries). It must never panic or hang, and a user it admits must have only admitted addresses.
//! A User create or replace, which the gateway builds only in part, must be refused and judged
//! exactly as the whole body. Read as a stored user, the text's one-pass projection is never
//! more lenient than the scan GET and lists judge users by.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scimgate::policy::blast;
use scimgate::policy::bulk::parse_bulk;
use scimgate::policy::domain::{DomainPattern, DomainSet};
use scimgate::policy::patch::{group_member_changes, judge_user_patch};
use scimgate::policy::query::ScimQuery;
use scimgate::policy::route::{Endpoint, OpKind, Operation, ResourceType};
use scimgate::policy::user::{
    address_projection, check_attribute_names, scan_user_addresses, user_addresses,
    user_write_member, DomainPolicy, USER_ATTRS,
};
use scimgate::scim::json::{parse_strict, parse_strict_keeping, Keep, MAX_DEPTH};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = address_projection(data) {
        let mut projected = user_addresses(&p);
        if !projected.unreadable {
            let mut scanned = scan_user_addresses(data).expect("the scan reads it too");
            assert!(!scanned.unreadable);
            projected.values.sort();
            scanned.values.sort();
            assert_eq!(projected.values, scanned.values);
        }
    }
    let kept = parse_strict_keeping(data, MAX_DEPTH, Keep::Select(user_write_member));
    let body = match (parse_strict(data, MAX_DEPTH), kept) {
        (Ok(body), Ok(kept)) => {
            assert_eq!(
                check_attribute_names(&body, USER_ATTRS),
                check_attribute_names(&kept, USER_ATTRS)
            );
            assert_eq!(user_addresses(&body), user_addresses(&kept));
            for kind in [OpKind::Create, OpKind::Replace] {
                let op = Operation {
                    endpoint: Endpoint::Resource(ResourceType::User),
                    kind,
                    id: None,
                };
                assert_eq!(
                    blast::classify(&op, Some(&body)),
                    blast::classify(&op, Some(&kept))
                );
            }
            body
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            return;
        }
        (a, b) => panic!("whole {a:?}, kept {b:?}"),
    };
    let domains = DomainSet::new(vec![
        DomainPattern::parse("acme.com").unwrap(),
        DomainPattern::parse("*.acme.io").unwrap(),
    ]);
    let policy = DomainPolicy {
        domains: &domains,
        allow_users_without_email: false,
    };
    if policy.judge_user(&body).is_ok() {
        let a = user_addresses(&body);
        assert!(!a.unreadable && !a.values.is_empty());
        assert!(a.values.iter().all(|v| domains.admits_address(v)));
    }
    let stored = serde_json::json!({
        "userName": "ada@acme.com",
        "emails": [{"value": "ada@acme.com", "type": "work"}, {"value": "ada@eu.acme.io"}]
    });
    let _ = judge_user_patch(&stored, &body, &policy);
    let _ = group_member_changes(&body);
    let _ = parse_bulk(&body, 100);
    let _ = ScimQuery::from_search(&body);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ScimQuery::from_query(Some(s));
        let _ = scimgate::policy::route::normalize_path(s);
    }
});
