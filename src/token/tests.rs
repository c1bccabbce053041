use super::*;

use crate::config::{HumanDuration, PreviousSecret, Timestamp, TokenRecord, TokenStatus};
use crate::policy::domain::{DomainPattern, DomainSet};
use crate::policy::scope::Scope;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn tenant_domains() -> DomainSet {
    DomainSet::new(vec![
        DomainPattern::parse("acme.com").unwrap(),
        DomainPattern::parse("*.acme.io").unwrap(),
    ])
}

fn at(unix: u64) -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}

/// A record as the token file would hold it (built through serde, so new optional fields of
/// `TokenRecord` need no change here), created at t=1000.
fn record(id: &str, secret: &str) -> TokenRecord {
    let rec: TokenRecord = serde_yaml::from_str(&format!(
        "id: {id}\ntenant: acme\nsha256: {}\nscopes: [users:read]\ncreated_at: 1970-01-01T00:16:40Z\n",
        hex::encode(hash(secret))
    ))
    .unwrap();
    assert_eq!(rec.created_at, Some(at(1_000)));
    assert_eq!(rec.status, TokenStatus::Active);
    rec
}

/// An index of `recs` loaded at t=5000 (records without `created_at` count as used then).
fn index_of(recs: &[TokenRecord]) -> Arc<TokenIndex> {
    Arc::new(TokenIndex::from_records(recs, &tenant_domains(), 5_000))
}

#[test]
fn generated_tokens_have_the_documented_shape() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let t = generate().unwrap();
        assert!(t.starts_with(PREFIX), "{t}");
        assert_eq!(PREFIX, "scimgate_");
        assert_eq!(t.len(), 58, "{t}");
        assert!(
            t[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()),
            "{t}"
        );
        assert!(looks_like_token(&t), "{t}");
        assert!(seen.insert(t), "a token repeated");
    }
}

#[test]
fn any_single_character_change_breaks_the_token() {
    for _ in 0..20 {
        let t = generate().unwrap();
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            // Every other base62 character, and a few outside the alphabet.
            let alternatives = BASE62.bytes().chain(*b"_-+/=. ").filter(|&c| c != bytes[i]);
            for c in alternatives {
                let mut changed = bytes.to_vec();
                changed[i] = c;
                let changed = String::from_utf8(changed).unwrap();
                assert!(
                    !looks_like_token(&changed),
                    "position {i} changed to {:?}: {changed}",
                    c as char
                );
            }
        }
    }
}

#[test]
fn near_tokens_are_refused() {
    let t = generate().unwrap();
    let refused = [
        String::new(),
        t[..57].to_owned(),
        format!("{t}0"),
        format!(" {t}"),
        format!("{t} "),
        format!("{t}\n"),
        t.to_uppercase(),
        t.replacen("scimgate_", "SCIMGATE_", 1),
        t.replacen("scimgate_", "scimgate-", 1),
        t.replacen("scimgate_", "xcimgate_", 1),
        format!("scimgate_{}", "0".repeat(49)),
        // Same length, non-ASCII inside.
        format!("{}\u{e9}{}", &t[..51], &t[53..]),
        format!("{}\u{e9}{}", &t[..50], &t[52..]),
        format!("{}\u{20ac}{}", &t[..51], &t[54..]),
    ];
    for r in &refused {
        assert!(!looks_like_token(r), "{r:?}");
    }
    // Swapping two different characters of the body is caught by the checksum.
    let b = t.as_bytes();
    let (i, j) = (10..51)
        .find_map(|i| (b[i] != b[i + 1]).then_some((i, i + 1)))
        .unwrap();
    let mut swapped = b.to_vec();
    swapped.swap(i, j);
    assert!(!looks_like_token(&String::from_utf8(swapped).unwrap()));
}

#[test]
fn hash_and_hint() {
    assert_eq!(
        hex::encode(hash("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(hint("scimgate_abcdWXYZ"), "WXYZ");
    assert_eq!(hint("ab"), "ab");
}

#[test]
fn validate_reports_each_failure() {
    let good = generate().unwrap();
    let expired = generate().unwrap();
    let suspended = generate().unwrap();
    let revoked = generate().unwrap();
    let revoked_and_expired = generate().unwrap();
    let unknown = generate().unwrap();
    let mut recs = vec![
        record("good", &good),
        TokenRecord {
            expires_at: Some(at(2_000)),
            ..record("expired", &expired)
        },
        TokenRecord {
            status: TokenStatus::Suspended,
            ..record("suspended", &suspended)
        },
        TokenRecord {
            status: TokenStatus::Revoked,
            ..record("revoked", &revoked)
        },
        TokenRecord {
            status: TokenStatus::Revoked,
            expires_at: Some(at(1_500)),
            ..record("revoked_and_expired", &revoked_and_expired)
        },
    ];
    recs[0].domains = Some(vec!["acme.com".into()]);
    let idx = index_of(&recs);
    assert_eq!(idx.len(), 5);
    assert!(!idx.is_empty());

    let now = 1_999;
    let mut bad_checksum = good.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'a' {
        b'b'
    } else {
        b'a'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    let cases: Vec<(&str, Result<&str, AuthFailure>)> = vec![
        ("", Err(AuthFailure::Missing)),
        ("junk", Err(AuthFailure::Malformed)),
        ("Bearer x", Err(AuthFailure::Malformed)),
        (bad_checksum.as_str(), Err(AuthFailure::Malformed)),
        (unknown.as_str(), Err(AuthFailure::Unknown)),
        (good.as_str(), Ok("good")),
        (expired.as_str(), Ok("expired")),
        (suspended.as_str(), Err(AuthFailure::Suspended)),
        (revoked.as_str(), Err(AuthFailure::Revoked)),
        (revoked_and_expired.as_str(), Err(AuthFailure::Revoked)),
    ];
    for (tok, want) in &cases {
        let got = idx.validate(tok, now).map(|e| e.id().to_owned());
        assert_eq!(got.as_deref().map_err(|e| *e), *want, "token {tok:?}");
    }
    // Expiry is inclusive of its instant.
    assert_eq!(
        idx.validate(&expired, 2_000).map(|_| ()),
        Err(AuthFailure::Expired)
    );
    assert_eq!(
        idx.validate(&expired, 9_999).map(|_| ()),
        Err(AuthFailure::Expired)
    );

    // The entry carries the record's grants.
    let e = idx.validate(&good, now).unwrap();
    assert_eq!(&**e.tenant(), "acme");
    assert!(e.scopes().contains(Scope::UsersRead));
    assert!(!e.scopes().contains(Scope::UsersWrite));
    assert!(e.domains().admits_address("a@acme.com"));
    assert!(!e.domains().admits_address("a@x.acme.io"));
    // Without its own domains a token has the tenant's.
    let s = idx.entries().find(|e| e.id() == "suspended").unwrap();
    assert_eq!(*s.domains(), tenant_domains());

    let reasons: Vec<&str> = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Unknown,
        AuthFailure::Expired,
        AuthFailure::IdleExpired,
        AuthFailure::Suspended,
        AuthFailure::Revoked,
    ]
    .iter()
    .map(|f| f.reason())
    .collect();
    assert_eq!(
        reasons,
        vec![
            "token_missing",
            "token_malformed",
            "token_unknown",
            "token_expired",
            "token_idle_expired",
            "token_suspended",
            "token_revoked"
        ]
    );
}

#[test]
fn idle_expiry_slides_with_use() {
    let tok = generate().unwrap();
    let rec = TokenRecord {
        idle_timeout: Some(HumanDuration(Duration::from_secs(60))),
        ..record("idle", &tok)
    };

    // Never used since creation (t=1000): usable up to t=1060, not after.
    let idx = index_of(std::slice::from_ref(&rec));
    assert_eq!(
        idx.validate(&tok, 1_061).map(|_| ()),
        Err(AuthFailure::IdleExpired)
    );
    // A refusal does not count as use.
    assert_eq!(
        idx.validate(&tok, 1_061).map(|_| ()),
        Err(AuthFailure::IdleExpired)
    );
    let idx = index_of(std::slice::from_ref(&rec));
    let e = idx.validate(&tok, 1_060).unwrap();
    assert_eq!(e.last_used(), 1_060);

    // Each accepted use moves the window.
    let idx = index_of(std::slice::from_ref(&rec));
    assert!(idx.validate(&tok, 1_050).is_ok());
    assert!(idx.validate(&tok, 1_110).is_ok());
    assert!(idx.validate(&tok, 1_170).is_ok());
    let e = idx.entries().next().unwrap();
    assert_eq!(e.last_used(), 1_170);
    assert_eq!(
        idx.validate(&tok, 1_231).map(|_| ()),
        Err(AuthFailure::IdleExpired)
    );
    assert_eq!(e.last_used(), 1_170);

    // A use from the past never moves last_used backwards.
    let idx = index_of(std::slice::from_ref(&rec));
    assert!(idx.validate(&tok, 1_040).is_ok());
    assert!(idx.validate(&tok, 1_020).is_ok());
    assert_eq!(idx.entries().next().unwrap().last_used(), 1_040);

    // Without created_at the load time counts as the last use.
    let rec2 = TokenRecord {
        created_at: None,
        ..rec.clone()
    };
    let idx = index_of(std::slice::from_ref(&rec2));
    let e = idx.entries().next().unwrap();
    assert_eq!(e.last_used(), 5_000);
    assert_eq!(e.idle_timeout(), Some(60));
    assert_eq!(e.check(5_060), Ok(()));
    let idx = index_of(std::slice::from_ref(&rec2));
    assert_eq!(
        idx.entries().next().unwrap().check(5_061),
        Err(AuthFailure::IdleExpired)
    );
}

#[test]
fn from_record_refuses_bad_hashes() {
    let tok = generate().unwrap();
    for sha in ["", "xyz", &"1".repeat(63), &"1".repeat(66), &"g".repeat(64)] {
        let rec = TokenRecord {
            sha256: sha.to_owned(),
            ..record("x", &tok)
        };
        assert!(index_of(&[rec]).is_empty(), "{sha:?}");
    }
    // Upper-case hex is the same digest.
    let rec = TokenRecord {
        sha256: hex::encode(hash(&tok)).to_uppercase(),
        ..record("upper", &tok)
    };
    let idx = index_of(&[rec]);
    assert_eq!(
        idx.validate(&tok, 1_000).map(|e| e.id().to_owned()),
        Ok("upper".to_owned())
    );
}

#[test]
fn lookups_do_not_depend_on_the_index_size() {
    let target = generate().unwrap();
    let revoked = generate().unwrap();
    let unknown = generate().unwrap();
    let mut recs = vec![
        record("target", &target),
        TokenRecord {
            status: TokenStatus::Revoked,
            ..record("revoked", &revoked)
        },
    ];
    let small = index_of(&recs);
    for i in 0..10_000 {
        let mut r = record(&format!("filler-{i}"), "");
        r.sha256 = hex::encode(hash(&format!("filler secret {i}")));
        recs.push(r);
    }
    let large = index_of(&recs);
    assert_eq!(large.len(), 10_002);
    let mut bad = target.clone().into_bytes();
    bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    for tok in [
        target.as_str(),
        revoked.as_str(),
        unknown.as_str(),
        bad.as_str(),
        "",
        "x",
    ] {
        let a = small.validate(tok, 2_000).map(|e| e.id().to_owned());
        let b = large.validate(tok, 2_000).map(|e| e.id().to_owned());
        assert_eq!(a, b, "token {tok:?}");
    }
    assert_eq!(
        large.validate(&target, 2_000).map(|e| e.id().to_owned()),
        Ok("target".to_owned())
    );
    assert_eq!(
        large.validate(&unknown, 2_000).map(|_| ()),
        Err(AuthFailure::Unknown)
    );
    // The filler secrets are not tokens, so they can never be presented.
    assert_eq!(
        large.validate("filler secret 1", 2_000).map(|_| ()),
        Err(AuthFailure::Malformed)
    );
}

#[test]
fn the_token_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    let tok = generate().unwrap();
    let rec = TokenRecord {
        domains: Some(vec!["acme.com".into()]),
        expires_at: Some(at(1_900_000_000)),
        idle_timeout: Some(HumanDuration(Duration::from_secs(3_600))),
        hint: Some(hint(&tok)),
        ..record("t1", &tok)
    };
    update_tokens_file(&path, |f| {
        f.tokens.push(rec.clone());
        Ok(())
    })
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&tok), "the secret was written");
    assert!(text.contains(&rec.sha256));
    let n = update_tokens_file(&path, |f| Ok(f.tokens.len())).unwrap();
    assert_eq!(n, 1);
    let again: crate::config::TokensFile =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(again.tokens[0].sha256, rec.sha256);
    assert_eq!(again.tokens[0].expires_at, rec.expires_at);
    assert_eq!(again.tokens[0].idle_timeout, rec.idle_timeout);
    assert_eq!(again.tokens[0].hint.as_deref(), Some(&tok[54..]));
    // A failed edit leaves the file as it was.
    let before = std::fs::read_to_string(&path).unwrap();
    let err = update_tokens_file(&path, |f| {
        f.tokens.clear();
        Err::<(), _>("refused".to_owned())
    });
    assert_eq!(err, Err("refused".to_owned()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

fn rotated(id: &str, new: &str, old: &str, until: u64) -> TokenRecord {
    TokenRecord {
        previous: Some(PreviousSecret {
            sha256: hex::encode(hash(old)),
            expires_at: at(until),
        }),
        ..record(id, new)
    }
}

#[test]
fn a_rotated_out_secret_works_only_until_the_overlap_ends() {
    let new = generate().unwrap();
    let old = generate().unwrap();
    let other = generate().unwrap();
    let idx = index_of(&[rotated("r", &new, &old, 3_000), record("other", &other)]);
    assert_eq!(idx.len(), 2);
    let id = |r: Result<TokenRef, AuthFailure>| r.map(|e| e.id().to_owned());
    assert_eq!(id(idx.validate(&old, 2_999)), Ok("r".to_owned()));
    assert_eq!(id(idx.validate(&old, 3_000)), Err(AuthFailure::Rotated));
    assert_eq!(id(idx.validate(&old, 9_000)), Err(AuthFailure::Rotated));
    assert_eq!(id(idx.validate(&new, 9_000)), Ok("r".to_owned()));
    assert_eq!(id(idx.validate(&other, 9_000)), Ok("other".to_owned()));
    assert_eq!(AuthFailure::Rotated.reason(), "token_rotated_out");

    // Both secrets unlock one entry: one set of grants, one last-use counter.
    let idx = index_of(&[rotated("r", &new, &old, 3_000)]);
    let a = idx.validate(&old, 2_000).unwrap();
    let b = idx.validate(&new, 2_500).unwrap();
    assert_eq!((a.id(), b.id()), ("r", "r"));
    assert_eq!(a.last_used(), 2_500);
    assert_eq!(idx.len(), 1);
}

#[test]
fn a_rotated_out_secret_obeys_the_entry_state() {
    let new = generate().unwrap();
    let old = generate().unwrap();
    for (status, want) in [
        (TokenStatus::Revoked, AuthFailure::Revoked),
        (TokenStatus::Suspended, AuthFailure::Suspended),
    ] {
        let rec = TokenRecord {
            status,
            ..rotated("r", &new, &old, 3_000)
        };
        let idx = index_of(&[rec]);
        assert_eq!(idx.validate(&old, 2_000).map(|_| ()), Err(want));
        assert_eq!(idx.validate(&new, 2_000).map(|_| ()), Err(want));
    }
    // The entry's own expiry ends both secrets, even inside the overlap.
    let rec = TokenRecord {
        expires_at: Some(at(2_000)),
        ..rotated("r", &new, &old, 3_000)
    };
    let idx = index_of(&[rec]);
    assert_eq!(
        idx.validate(&old, 2_500).map(|_| ()),
        Err(AuthFailure::Expired)
    );
    assert_eq!(
        idx.validate(&new, 2_500).map(|_| ()),
        Err(AuthFailure::Expired)
    );
    // Idle expiry applies to the old secret too.
    let rec = TokenRecord {
        idle_timeout: Some(HumanDuration(Duration::from_secs(60))),
        ..rotated("r", &new, &old, 3_000)
    };
    let idx = index_of(&[rec]);
    assert_eq!(
        idx.validate(&old, 1_061).map(|_| ()),
        Err(AuthFailure::IdleExpired)
    );

    // A previous secret with a bad hash makes the record unusable.
    let mut rec = rotated("r", &new, &old, 3_000);
    rec.previous.as_mut().unwrap().sha256 = "zz".into();
    assert!(index_of(&[rec]).is_empty());
}

/// Compiles `recs` against `usage` as a policy would: each token starts at what the store
/// knows of it.
fn compiled(usage: &usage::UsageStore, recs: &[TokenRecord], now: u64) -> Arc<TokenIndex> {
    let tenant: Arc<str> = "acme".into();
    let domains = tenant_domains();
    let mut b = TokenIndex::builder(crate::ratelimit::KeyHasher::default(), recs.len());
    usage.with_starts(now, |start| {
        for r in recs {
            let t = start(&r.id, r.created_at.map(|t| t.unix()));
            b.push(r, &tenant, &domains, None, t).expect("valid record");
        }
    });
    Arc::new(b.finish())
}

fn last_used_of(idx: &TokenIndex, id: &str) -> u64 {
    idx.entries().find(|e| e.id() == id).unwrap().last_used()
}

#[test]
fn last_uses_carry_across_reloads_and_removed_tokens_are_remembered() {
    let (ta, tb, tc) = (
        generate().unwrap(),
        generate().unwrap(),
        generate().unwrap(),
    );
    let (a, b, c) = (record("a", &ta), record("b", &tb), record("c", &tc));
    let usage = usage::UsageStore::in_memory();

    let first = compiled(&usage, &[a.clone(), b.clone()], 9_000);
    usage.adopt(&first);
    assert_eq!(
        last_used_of(&first, "a"),
        1_000,
        "created_at counts as the first use"
    );
    first.validate(&ta, 2_000).unwrap();
    first.validate(&tb, 1_800).unwrap();

    // A reload without b: a starts where the live index has it.
    let second = compiled(&usage, &[a.clone(), c.clone()], 9_000);
    assert_eq!(last_used_of(&second, "a"), 2_000);
    assert_eq!(last_used_of(&second, "c"), 1_000);
    // A use of the old index between compiling and adopting is not lost.
    first.validate(&ta, 2_500).unwrap();
    usage.adopt(&second);
    assert_eq!(last_used_of(&second, "a"), 2_500);

    // b comes back with the last use it had, not a fresh one.
    let third = compiled(&usage, &[a.clone(), b.clone()], 9_000);
    assert_eq!(last_used_of(&third, "b"), 1_800);
    // A re-issued token (newer created_at) starts at its creation; nothing is renewed else.
    let reissued = TokenRecord {
        created_at: Some(at(3_000)),
        ..a.clone()
    };
    let fourth = compiled(&usage, &[reissued, b], 9_000);
    assert_eq!(last_used_of(&fourth, "a"), 3_000);
    // An id never seen starts at its creation, or at load time without one.
    let fresh = TokenRecord {
        created_at: None,
        ..record("fresh", &generate().unwrap())
    };
    let fifth = compiled(&usage, &[fresh], 9_000);
    assert_eq!(last_used_of(&fifth, "fresh"), 9_000);
}

#[test]
fn the_usage_file_is_written_when_times_change_and_read_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token-usage.json");
    let (ta, tb) = (generate().unwrap(), generate().unwrap());
    let recs = [record("a", &ta), record("b", &tb)];
    let usage = usage::UsageStore::open(dir.path()).unwrap();
    let idx = compiled(&usage, &recs, 9_000);
    usage.adopt(&idx);
    usage.flush().unwrap();
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };
    assert_eq!(read(), serde_json::json!({"a": 1_000, "b": 1_000}));

    // Nothing changed: nothing is written.
    std::fs::remove_file(&file).unwrap();
    usage.flush().unwrap();
    assert!(!file.exists(), "an unchanged store was written");
    // A refused use changes nothing either.
    let _ = idx.validate("junk", 4_000);
    usage.flush().unwrap();
    assert!(!file.exists());

    idx.validate(&tb, 4_000).unwrap();
    usage.flush().unwrap();
    assert_eq!(read(), serde_json::json!({"a": 1_000, "b": 4_000}));

    // A restart starts every token at its persisted time.
    let again = usage::UsageStore::open(dir.path()).unwrap();
    let idx = compiled(&again, &recs, 9_000);
    assert_eq!(last_used_of(&idx, "b"), 4_000);
    assert_eq!(last_used_of(&idx, "a"), 1_000);
    // An unreadable file refuses the start.
    std::fs::write(&file, "{not json").unwrap();
    assert!(usage::UsageStore::open(dir.path()).is_err());
}

#[test]
fn tokens_share_their_grants() {
    let limits = crate::ratelimit::Limits::default();
    let spec = limits
        .spec(
            "token",
            Some(crate::config::Rate {
                per_second: 5,
                burst: 10,
            }),
        )
        .unwrap();
    let tenant: Arc<str> = "acme".into();
    let domains = tenant_domains();
    let mut b = TokenIndex::builder(limits.keys.clone(), 0);
    let secrets: Vec<String> = (0..50).map(|_| generate().unwrap()).collect();
    for (i, s) in secrets.iter().enumerate() {
        let rate = (i % 2 == 0).then_some(&spec);
        b.push(&record(&format!("t{i}"), s), &tenant, &domains, rate, 1_000)
            .unwrap();
    }
    let idx = Arc::new(b.finish());
    // Two combinations: with the quota and without.
    assert_eq!(idx.grants.len(), 2);
    assert_eq!(std::mem::size_of::<super::store::Token>(), 16);
    // Each token keeps its own id, quota and limiter key.
    for (i, s) in secrets.iter().enumerate() {
        let t = idx.validate(s, 2_000).unwrap();
        assert_eq!(t.id(), format!("t{i}"));
        assert_eq!(t.key(), limits.keys.key("token", &format!("t{i}")));
        match t.rate() {
            Some(slot) => {
                assert_eq!(i % 2, 0);
                assert_eq!(slot.key, t.key());
                assert_eq!(slot.rate.burst, 10);
            }
            None => assert_eq!(i % 2, 1),
        }
    }
    // The debug form names no secret material.
    let dbg = format!("{:?} {:?}", idx, idx.validate(&secrets[0], 2_000).unwrap());
    assert!(
        !dbg.contains(&hex::encode(hash(&secrets[0]))[..16]),
        "{dbg}"
    );
}

#[test]
fn times_past_2106_clamp_to_an_expiry_never_to_no_expiry() {
    let tok = generate().unwrap();
    let old = generate().unwrap();
    for exp in [u64::from(u32::MAX), 1 << 33] {
        let rec = TokenRecord {
            expires_at: Some(at(exp)),
            ..rotated("far", &tok, &old, exp)
        };
        let idx = index_of(&[rec]);
        assert_eq!(
            idx.entries().next().unwrap().expires_at(),
            Some(u64::from(u32::MAX - 1))
        );
        assert!(idx.validate(&tok, 2_000).is_ok());
        for now in [u64::from(u32::MAX), 1 << 34] {
            assert_eq!(
                idx.validate(&tok, now).map(|_| ()),
                Err(AuthFailure::Expired)
            );
            assert_eq!(
                idx.validate(&old, now).map(|_| ()),
                Err(AuthFailure::Rotated)
            );
        }
    }
}

#[test]
fn uses_made_while_a_reload_compiles_count_before_the_new_policy_serves() {
    let tok = generate().unwrap();
    let rec = TokenRecord {
        idle_timeout: Some(HumanDuration(Duration::from_secs(60))),
        ..record("idle", &tok)
    };
    let usage = usage::UsageStore::in_memory();
    let old = compiled(&usage, std::slice::from_ref(&rec), 9_000);
    usage.adopt(&old);
    old.validate(&tok, 1_050).unwrap();
    // The reload compiles (it sees t=1050), then the token is used on the old policy.
    let new = compiled(&usage, std::slice::from_ref(&rec), 9_000);
    old.validate(&tok, 1_100).unwrap();
    // Carried before the swap: the new policy's first request at t=1120 is within 60 s.
    usage.carry(&new);
    assert_eq!(new.validate(&tok, 1_120).map(|_| ()), Ok(()));
    usage.adopt(&new);
    assert_eq!(last_used_of(&new, "idle"), 1_120);
}
