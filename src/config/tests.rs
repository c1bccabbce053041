use super::*;

use std::path::{Path, PathBuf};

/// A gateway file whose line numbers the tests rely on.
const GATEWAY: &str = r#"server:
  listen: 127.0.0.1:8443
  tls: { cert: server.crt, key: server.key }
upstream:
  url: http://127.0.0.1:9000/acme/v2
  authorization: "Bearer backend-secret"
tenants:
  - id: acme
    path_prefix: /acme/scim/v2
    domains: [acme.com, "*.acme.io"]
  - id: globex
    path_prefix: /globex/scim/v2
    domains: [globex.com]
tokens_file: tokens.yaml
"#;

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const H3: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

/// A variable name no environment sets.
const UNSET: &str = "SCIMGATE_TEST_CERTAINLY_UNSET_9F3A61C2";

fn two_tokens() -> String {
    format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read, users:write]\n  - id: t2\n    tenant: globex\n    sha256: {H2}\n    scopes: [bulk]\n    domains: [globex.com]\n"
    )
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(gateway: &str, tokens: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.crt"), "not checked here").unwrap();
        std::fs::write(dir.path().join("server.key"), "not checked here").unwrap();
        std::fs::write(dir.path().join("gateway.yaml"), gateway).unwrap();
        std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        Files { dir }
    }
    fn gateway(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens.yaml")
    }
    fn load(&self) -> Result<Config, Problems> {
        load(&self.gateway())
    }
    fn problems(&self) -> Vec<Problem> {
        match self.load() {
            Ok(_) => panic!("the configuration loaded"),
            Err(p) => p.0,
        }
    }
}

fn p(file: &Path, line: Option<usize>, key: &str, message: &str) -> Problem {
    Problem::new(file, line, key, message)
}

/// GATEWAY with one line replaced (1-based).
fn with_line(n: usize, new: &str) -> String {
    GATEWAY
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == n {
                new.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// GATEWAY with lines inserted after line `n` (1-based).
fn insert_after(n: usize, new: &str) -> String {
    let mut lines: Vec<String> = GATEWAY.lines().map(str::to_owned).collect();
    lines.insert(n, new.to_owned());
    lines.join("\n") + "\n"
}

#[test]
fn a_valid_configuration_loads() {
    let f = Files::new(GATEWAY, &two_tokens());
    let cfg = f.load().unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(cfg.path, f.gateway());
    assert_eq!(cfg.tokens_path, f.tokens());
    assert_eq!(cfg.gateway.tenants.len(), 2);
    assert_eq!(cfg.gateway.tenants[0].id, "acme");
    assert_eq!(cfg.gateway.tenants[1].path_prefix, "/globex/scim/v2");
    assert_eq!(cfg.gateway.mode, Mode::Enforce);
    assert_eq!(cfg.gateway.server.max_body_bytes, 1024 * 1024);
    assert_eq!(
        cfg.gateway.server.body_read_timeout.0,
        Duration::from_secs(30)
    );
    assert_eq!(cfg.gateway.upstream.timeout.0, Duration::from_secs(30));
    assert_eq!(cfg.gateway.admin_listen, None);
    assert_eq!(
        cfg.upstream_authorization,
        vec![
            Some("Bearer backend-secret".to_owned()),
            Some("Bearer backend-secret".to_owned())
        ]
    );
    assert_eq!(cfg.tokens.tokens.len(), 2);
    assert_eq!(
        cfg.tokens.tokens[0].scopes,
        vec![Scope::UsersRead, Scope::UsersWrite]
    );
    assert_eq!(cfg.tokens.tokens[0].status, TokenStatus::Active);
    assert_eq!(
        cfg.tokens.tokens[1].domains,
        Some(vec!["globex.com".to_owned()])
    );
    assert_eq!(cfg.version.len(), 16);
    assert!(cfg.version.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(cfg.resolve(Path::new("x.pem")), f.dir.path().join("x.pem"));
    assert_eq!(
        cfg.resolve(Path::new("/abs/x.pem")),
        PathBuf::from("/abs/x.pem")
    );

    // The version is a function of both files.
    let again = f.load().unwrap();
    assert_eq!(again.version, cfg.version);
    std::fs::write(f.tokens(), two_tokens() + "# comment\n").unwrap();
    assert_ne!(f.load().unwrap().version, cfg.version);

    // And it compiles into a policy.
    let policy = crate::policy::Policy::compile(&cfg).unwrap();
    assert_eq!(policy.tenants.len(), 2);
    assert_eq!(policy.tokens.len(), 2);
    assert_eq!(&*policy.version, cfg.version.as_str());
}

#[test]
fn an_empty_token_file_is_valid() {
    for tokens in ["tokens: []\n", "{}\n"] {
        let f = Files::new(GATEWAY, tokens);
        let cfg = f.load().unwrap_or_else(|p| panic!("{tokens:?}: {p}"));
        assert!(cfg.tokens.tokens.is_empty());
    }
}

#[test]
fn unknown_keys_are_refused_with_file_line_and_key() {
    // Inside `server`, line 3.
    let f = Files::new(&insert_after(2, "  bogus: 1"), &two_tokens());
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].file.as_path(), got[0].line, got[0].key.as_str()),
        (f.gateway().as_path(), Some(3), "server")
    );
    assert!(
        got[0].message.starts_with("unknown field `bogus`"),
        "{}",
        got[0].message
    );

    // At the top level, line 15.
    let f = Files::new(&(GATEWAY.to_owned() + "bogus: 1\n"), &two_tokens());
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].file.as_path(), got[0].line),
        (f.gateway().as_path(), Some(15))
    );
    assert!(
        got[0].message.contains("unknown field `bogus`"),
        "{}",
        got[0].message
    );

    // Inside a tenant, line 12.
    let f = Files::new(&insert_after(11, "    domain: [evil.com]"), &two_tokens());
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].line, got[0].key.as_str()), (Some(12), "tenants[1]"));
    assert!(
        got[0].message.starts_with("unknown field `domain`"),
        "{}",
        got[0].message
    );

    // In the token file, line 6.
    let tokens = format!("tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n    domain: [evil.com]\n");
    let f = Files::new(GATEWAY, &tokens);
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].file.as_path(), got[0].line, got[0].key.as_str()),
        (f.tokens().as_path(), Some(6), "tokens[0]")
    );
    assert!(
        got[0].message.starts_with("unknown field `domain`"),
        "{}",
        got[0].message
    );
}

#[test]
fn token_with_an_unknown_tenant_names_file_line_and_key() {
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n  - id: t2\n    tenant: x\n    sha256: {H2}\n    scopes: [users:read]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    let err = f.load().unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(
        err.0[0].to_string(),
        format!(
            "{}:7: tokens[1].tenant: unknown tenant \"x\"",
            f.tokens().display()
        )
    );
    assert_eq!(err.to_string(), err.0[0].to_string());

    // Tenant ids are compared exactly.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: ACME\n    sha256: {H1}\n    scopes: [users:read]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(3),
            "tokens[0].tenant",
            "unknown tenant \"ACME\""
        )]
    );
}

#[test]
fn token_domains_must_lie_inside_the_tenant() {
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n    domains: [acme.com, evil.com, \"*\", \"*.acme.com\", acme.io, \"*.eu.acme.io\", EU.ACME.IO, \"*.acme.io\", sub.acme.com]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    let t = f.tokens();
    let outside = |j: usize, d: &str| {
        p(
            &t,
            Some(6),
            &format!("tokens[0].domains[{j}]"),
            &format!("domain \"{d}\" is outside tenant \"acme\"'s domains"),
        )
    };
    assert_eq!(
        f.problems(),
        vec![
            outside(1, "evil.com"),
            outside(2, "*"),
            outside(3, "*.acme.com"),
            outside(4, "acme.io"),
            outside(8, "sub.acme.com"),
        ]
    );

    // Another tenant's domain is outside too.
    let tokens = format!("tokens:\n  - id: t1\n    tenant: globex\n    sha256: {H1}\n    scopes: [users:read]\n    domains: [acme.com]\n");
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(6),
            "tokens[0].domains[0]",
            "domain \"acme.com\" is outside tenant \"globex\"'s domains"
        )]
    );

    // An empty list and an invalid pattern.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n    domains: []\n  - id: t2\n    tenant: acme\n    sha256: {H2}\n    scopes: [users:read]\n    domains: [\"a.*.acme.com\"]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![
            p(&f.tokens(), Some(6), "tokens[0].domains", "must not be empty (omit it to use the tenant's domains)"),
            p(
                &f.tokens(),
                Some(11),
                "tokens[1].domains[0]",
                "invalid domain pattern \"a.*.acme.com\": a wildcard may only lead, as in \"*.acme.io\""
            ),
        ]
    );

    // A tenant that admits every domain admits `*` tokens.
    let gw = with_line(13, "    domains: [\"*\"]");
    let tokens = format!("tokens:\n  - id: t1\n    tenant: globex\n    sha256: {H1}\n    scopes: [users:read]\n    domains: [\"*\", evil.com]\n");
    let f = Files::new(&gw, &tokens);
    assert!(f.load().is_ok());
}

#[test]
fn duplicate_ids_and_hashes_are_refused() {
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H3}\n    scopes: [users:read]\n  - id: t1\n    tenant: acme\n    sha256: {H2}\n    scopes: [users:read]\n  - id: t3\n    tenant: globex\n    sha256: {}\n    scopes: [users:read]\n",
        H3.to_ascii_uppercase()
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![
            p(
                &f.tokens(),
                Some(6),
                "tokens[1].id",
                "duplicate token id \"t1\""
            ),
            p(
                &f.tokens(),
                Some(12),
                "tokens[2].sha256",
                "duplicate hash: two entries share one secret"
            ),
        ]
    );
}

#[test]
fn bad_hashes_scopes_ids_and_timeouts_are_refused() {
    let bad_hash = "must be 64 hexadecimal characters (the SHA-256 of the token)";
    for sha in [
        "xyz",
        &H1[..63],
        &format!("{H1}1"),
        &format!("g{}", &H1[1..]),
        "",
        &format!(" {}", &H1[1..]),
    ] {
        let tokens = format!("tokens:\n  - id: t1\n    tenant: acme\n    sha256: \"{sha}\"\n    scopes: [users:read]\n");
        let f = Files::new(GATEWAY, &tokens);
        assert_eq!(
            f.problems(),
            vec![p(&f.tokens(), Some(4), "tokens[0].sha256", bad_hash)],
            "sha {sha:?}"
        );
    }

    let tokens =
        format!("tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: []\n");
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(5),
            "tokens[0].scopes",
            "at least one scope is required"
        )]
    );

    let tokens = format!(
        "tokens:\n  - id: bad id\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(2),
            "tokens[0].id",
            "invalid token id \"bad id\": use letters, digits, '-', '_' and '.'"
        )]
    );

    let tokens = format!("tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n    idle_timeout: \"0\"\n");
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(6),
            "tokens[0].idle_timeout",
            "must be greater than 0 (omit it for no idle expiry)"
        )]
    );

    // An unknown scope is a parse error in the token file.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:admin]\n"
    );
    let f = Files::new(GATEWAY, &tokens);
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].file, f.tokens());
    assert_eq!(got[0].line, Some(5));
    assert!(
        got[0].message.contains("unknown scope \"users:admin\""),
        "{}",
        got[0].message
    );
}

#[test]
fn a_missing_token_file_is_a_problem() {
    let f = Files::new(&with_line(14, "tokens_file: missing.yaml"), "");
    let got = f.problems();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].file, f.dir.path().join("missing.yaml"));
    assert_eq!(got[0].line, None);
    assert_eq!(got[0].key, "");
    assert!(
        got[0].message.starts_with("cannot read the file: "),
        "{}",
        got[0].message
    );
    assert!(
        got[0].to_string().starts_with(&format!(
            "{}: cannot read the file: ",
            f.dir.path().join("missing.yaml").display()
        )),
        "{}",
        got[0]
    );
}

#[test]
fn a_missing_gateway_file_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let err = load(&path).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(
        (
            err.0[0].file.as_path(),
            err.0[0].line,
            err.0[0].key.as_str()
        ),
        (path.as_path(), None, "")
    );
    assert!(err.0[0].message.starts_with("cannot read the file: "));
}

#[test]
fn missing_certificate_files_are_problems() {
    let f = Files::new(
        &with_line(
            3,
            "  tls: { cert: nope.crt, key: server.key, client_ca: ca/none.pem }",
        ),
        &two_tokens(),
    );
    let dir = f.dir.path();
    assert_eq!(
        f.problems(),
        vec![
            p(
                &f.gateway(),
                Some(3),
                "server.tls.cert",
                &format!("file {} does not exist", dir.join("nope.crt").display())
            ),
            p(
                &f.gateway(),
                Some(3),
                "server.tls.client_ca",
                &format!("file {} does not exist", dir.join("ca/none.pem").display())
            ),
        ]
    );
    assert_eq!(
        f.problems()[0].to_string(),
        format!(
            "{}:3: server.tls.cert: file {} does not exist",
            f.gateway().display(),
            dir.join("nope.crt").display()
        )
    );
    // A directory is not a file.
    let f2 = Files::new(
        &with_line(3, "  tls: { cert: server.crt, key: keydir }"),
        &two_tokens(),
    );
    std::fs::create_dir(f2.dir.path().join("keydir")).unwrap();
    assert_eq!(
        f2.problems(),
        vec![p(
            &f2.gateway(),
            Some(3),
            "server.tls.key",
            &format!(
                "file {} does not exist",
                f2.dir.path().join("keydir").display()
            )
        )]
    );
}

#[test]
fn overlapping_tenant_prefixes_are_refused() {
    for (prefix, other) in [
        ("/acme/scim/v2/globex", "/acme/scim/v2"),
        ("/acme/scim/v2", "/acme/scim/v2"),
        ("/acme", "/acme/scim/v2"),
        ("/acme/scim", "/acme/scim/v2"),
    ] {
        let f = Files::new(
            &with_line(12, &format!("    path_prefix: {prefix}")),
            &two_tokens(),
        );
        assert_eq!(
            f.problems(),
            vec![p(
                &f.gateway(),
                Some(12),
                "tenants[1].path_prefix",
                &format!("path_prefix \"{prefix}\" overlaps tenants[0]'s \"{other}\"")
            )],
            "prefix {prefix}"
        );
    }
    // Sharing a string prefix but not a segment is no overlap.
    for prefix in [
        "/acme/scim/v2x",
        "/acme/scim/v20",
        "/acmex/scim/v2",
        "/acme/scim/v",
    ] {
        let f = Files::new(
            &with_line(12, &format!("    path_prefix: {prefix}")),
            &two_tokens(),
        );
        assert!(f.load().is_ok(), "prefix {prefix}: {:?}", f.load().err());
    }
}

#[test]
fn path_prefixes_must_be_normalised() {
    for prefix in [
        "/acme/scim/v2/",
        "/acme//scim",
        "acme/scim/v2",
        "/",
        "/acme/./scim",
        "/acme/../scim",
        "/acme/%7Escim",
        "/acme/%2Fscim",
        "/acme/scim;v2",
        "/acme/scim v2",
        "/acme/%e2%82%ac",
        "\"\"",
    ] {
        let f = Files::new(
            &with_line(12, &format!("    path_prefix: {prefix}")),
            &two_tokens(),
        );
        let shown = if prefix == "\"\"" { "" } else { prefix };
        assert_eq!(
            f.problems(),
            vec![p(
                &f.gateway(),
                Some(12),
                "tenants[1].path_prefix",
                &format!("path_prefix {shown:?} must be a normalised absolute path such as /acme/scim/v2 (no trailing slash, dot segments or escapes)")
            )],
            "prefix {prefix}"
        );
    }
}

#[test]
fn unset_environment_variables_are_problems() {
    let f = Files::new(
        &with_line(6, &format!("  authorization: \"Bearer ${{{UNSET}}}\"")),
        &two_tokens(),
    );
    let got = f.problems();
    let want = p(
        &f.gateway(),
        Some(6),
        "upstream.authorization",
        &format!("environment variable {UNSET} is not set"),
    );
    assert!(got.contains(&want), "{got:?}");
    assert!(got.iter().all(|g| *g == want), "{got:?}");
}

#[test]
fn an_unset_variable_is_reported_once() {
    let f = Files::new(
        &with_line(6, &format!("  authorization: \"Bearer ${{{UNSET}}}\"")),
        &two_tokens(),
    );
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(6),
            "upstream.authorization",
            &format!("environment variable {UNSET} is not set")
        )]
    );
}

#[test]
fn a_tenant_upstream_override_expands_its_own_authorization() {
    let gw = insert_after(
        13,
        &format!("    upstream:\n      url: http://127.0.0.1:9001/globex/v2\n      authorization: \"${{{UNSET}}}\""),
    );
    let f = Files::new(&gw, &two_tokens());
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(16),
            "tenants[1].upstream.authorization",
            &format!("environment variable {UNSET} is not set")
        )]
    );
    // No authorization at all sends none.
    let gw = with_line(6, "  timeout: 5s");
    let cfg = Files::new(&gw, &two_tokens()).load().unwrap();
    assert_eq!(cfg.upstream_authorization, vec![None, None]);
}

#[test]
fn authorization_must_be_a_header_value() {
    let f = Files::new(
        &with_line(6, "  authorization: \"Bearer a\\nb\""),
        &two_tokens(),
    );
    let got = f.problems();
    let want = p(
        &f.gateway(),
        Some(6),
        "upstream.authorization",
        "is not a valid header value after expansion",
    );
    assert!(!got.is_empty() && got.iter().all(|g| *g == want), "{got:?}");
}

#[test]
fn expand_env_table() {
    assert_eq!(expand_env("Bearer abc"), Ok("Bearer abc".to_owned()));
    assert_eq!(expand_env("$HOME and $"), Ok("$HOME and $".to_owned()));
    assert_eq!(expand_env(""), Ok(String::new()));
    assert_eq!(
        expand_env(&format!("x${{{UNSET}}}y")),
        Err(format!("environment variable {UNSET} is not set"))
    );
    assert_eq!(expand_env("${"), Err("unterminated ${ in value".to_owned()));
    assert_eq!(
        expand_env("a${B"),
        Err("unterminated ${ in value".to_owned())
    );
    assert_eq!(
        expand_env("${}"),
        Err("invalid variable name \"\" in ${...}".to_owned())
    );
    assert_eq!(
        expand_env("${A-B}"),
        Err("invalid variable name \"A-B\" in ${...}".to_owned())
    );
    assert_eq!(
        expand_env("${A B}"),
        Err("invalid variable name \"A B\" in ${...}".to_owned())
    );
    // Reading (never setting) a variable every test environment has.
    if let Ok(path) = std::env::var("PATH") {
        assert_eq!(expand_env("<${PATH}>"), Ok(format!("<{path}>")));
        assert_eq!(expand_env("${PATH}${PATH}"), Ok(format!("{path}{path}")));
    }
}

#[test]
fn invalid_domain_patterns_are_refused() {
    let f = Files::new(
        &with_line(10, "    domains: [acme.com, \"a.*.com\", ac_me.com, \"*acme.com\", \"\", \"-x.com\", \"**\", \"*.\", \"[1.2.3.4]\"]"),
        &two_tokens(),
    );
    let got = f.problems();
    let keys: Vec<&str> = got.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "tenants[0].domains[1]",
            "tenants[0].domains[2]",
            "tenants[0].domains[3]",
            "tenants[0].domains[4]",
            "tenants[0].domains[5]",
            "tenants[0].domains[6]",
            "tenants[0].domains[7]",
            "tenants[0].domains[8]",
        ],
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|g| g.line == Some(10) && g.file == f.gateway()),
        "{got:?}"
    );
    assert_eq!(
        got[0].message,
        "invalid domain pattern \"a.*.com\": a wildcard may only lead, as in \"*.acme.io\""
    );
    assert_eq!(
        got[1].message,
        "invalid domain pattern \"ac_me.com\": not a valid domain name"
    );

    let f = Files::new(&with_line(13, "    domains: []"), "tokens: []\n");
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(13),
            "tenants[1].domains",
            "at least one domain (or \"*\") is required"
        )]
    );
}

#[test]
fn tenant_ids_upstreams_and_limits_are_checked() {
    let f = Files::new(
        &with_line(11, "  - id: acme"),
        &format!(
            "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n"
        ),
    );
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(11),
            "tenants[1].id",
            "duplicate tenant id \"acme\""
        )]
    );

    let f = Files::new(&with_line(11, "  - id: \"glo bex\""), "tokens: []\n");
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(11),
            "tenants[1].id",
            "invalid tenant id \"glo bex\": use letters, digits, '-' and '_'"
        )]
    );

    let gw = "server:\n  listen: 127.0.0.1:8443\n  tls: { cert: server.crt, key: server.key }\nupstream:\n  url: http://127.0.0.1:9000/\ntenants: []\ntokens_file: tokens.yaml\n";
    let f = Files::new(gw, "tokens: []\n");
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(6),
            "tenants",
            "at least one tenant is required"
        )]
    );

    for (url, msg) in [
        (
            "ftp://127.0.0.1/v2",
            "\"ftp://127.0.0.1/v2\" must be an absolute http:// or https:// URL",
        ),
        (
            "/relative/v2",
            "\"/relative/v2\" must be an absolute http:// or https:// URL",
        ),
        (
            "http://127.0.0.1:9000/v2?x=1",
            "must not carry a query string",
        ),
    ] {
        let f = Files::new(&with_line(5, &format!("  url: {url}")), &two_tokens());
        assert_eq!(
            f.problems(),
            vec![p(&f.gateway(), Some(5), "upstream.url", msg)],
            "url {url}"
        );
    }

    let f = Files::new(&insert_after(5, "  ca: server.crt"), &two_tokens());
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(6),
            "upstream.ca",
            "only applies to an https:// upstream"
        )]
    );

    let f = Files::new(&insert_after(5, "  timeout: \"0\""), &two_tokens());
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(6),
            "upstream.timeout",
            "must be greater than 0"
        )]
    );

    let f = Files::new(&insert_after(3, "  max_body_bytes: 0"), &two_tokens());
    assert_eq!(
        f.problems(),
        vec![p(
            &f.gateway(),
            Some(4),
            "server.max_body_bytes",
            "must be greater than 0"
        )]
    );
}

#[test]
fn several_problems_are_reported_at_once() {
    let gw = with_line(3, "  tls: { cert: nope.crt, key: server.key }");
    let gw = gw.replace(
        "    path_prefix: /globex/scim/v2",
        "    path_prefix: /globex/scim/v2/",
    );
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: nowhere\n    sha256: {H1}\n    scopes: [users:read]\n  - id: t2\n    tenant: acme\n    sha256: nothex\n    scopes: [users:read]\n    domains: [evil.com]\n"
    );
    let f = Files::new(&gw, &tokens);
    let dir = f.dir.path();
    let got = f.problems();
    assert_eq!(
        got,
        vec![
            p(&f.gateway(), Some(3), "server.tls.cert", &format!("file {} does not exist", dir.join("nope.crt").display())),
            p(
                &f.gateway(),
                Some(12),
                "tenants[1].path_prefix",
                "path_prefix \"/globex/scim/v2/\" must be a normalised absolute path such as /acme/scim/v2 (no trailing slash, dot segments or escapes)"
            ),
            p(&f.tokens(), Some(3), "tokens[0].tenant", "unknown tenant \"nowhere\""),
            p(&f.tokens(), Some(8), "tokens[1].sha256", "must be 64 hexadecimal characters (the SHA-256 of the token)"),
            p(&f.tokens(), Some(10), "tokens[1].domains[0]", "domain \"evil.com\" is outside tenant \"acme\"'s domains"),
        ]
    );
    // The display lists one problem per line, in order.
    let shown = Problems(got.clone()).to_string();
    assert_eq!(shown.lines().count(), 5);
    assert_eq!(
        shown.lines().nth(2),
        Some(
            format!(
                "{}:3: tokens[0].tenant: unknown tenant \"nowhere\"",
                f.tokens().display()
            )
            .as_str()
        )
    );
}

#[test]
fn problem_display_formats() {
    let f = Path::new("/etc/scimgate/gateway.yaml");
    assert_eq!(
        p(f, Some(3), "server.tls.cert", "gone").to_string(),
        "/etc/scimgate/gateway.yaml:3: server.tls.cert: gone"
    );
    assert_eq!(
        p(f, None, "", "gone").to_string(),
        "/etc/scimgate/gateway.yaml: gone"
    );
    assert_eq!(
        p(f, Some(1), "", "gone").to_string(),
        "/etc/scimgate/gateway.yaml:1: gone"
    );
    assert_eq!(
        p(f, None, "k", "gone").to_string(),
        "/etc/scimgate/gateway.yaml: k: gone"
    );
    assert_eq!(Problems::single(f, "x").0, vec![p(f, None, "", "x")]);
}

#[test]
fn valid_ids() {
    for ok in ["a", "t-1", "t_1", "t.1", "A9", &"x".repeat(64)] {
        assert!(valid_id(ok), "{ok:?}");
    }
    for bad in ["", "a b", "a/b", "a:b", "é", "a\n", &"x".repeat(65), "a@b"] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

#[test]
fn rotated_out_secrets_are_checked_like_current_ones() {
    let prev = |sha: &str| {
        format!("    previous: {{ sha256: \"{sha}\", expires_at: 2030-01-01T00:00:00Z }}\n")
    };
    // A previous secret equal to another token's current one.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n  - id: t2\n    tenant: acme\n    sha256: {H2}\n    scopes: [users:read]\n{}",
        prev(&H1.to_ascii_uppercase())
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(10),
            "tokens[1].previous.sha256",
            "duplicate hash: two entries share one secret"
        )]
    );
    // A previous secret equal to its own current one.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n{}",
        prev(H1)
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(6),
            "tokens[0].previous.sha256",
            "duplicate hash: two entries share one secret"
        )]
    );
    // A malformed previous hash.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n{}",
        prev("nothex")
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(6),
            "tokens[0].previous.sha256",
            "must be 64 hexadecimal characters (the SHA-256 of the token)"
        )]
    );
    // A current secret equal to an earlier token's previous one.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n{}  - id: t2\n    tenant: acme\n    sha256: {H2}\n    scopes: [users:read]\n",
        prev(H2)
    );
    let f = Files::new(GATEWAY, &tokens);
    assert_eq!(
        f.problems(),
        vec![p(
            &f.tokens(),
            Some(9),
            "tokens[1].sha256",
            "duplicate hash: two entries share one secret"
        )]
    );
    // Distinct hashes load.
    let tokens = format!(
        "tokens:\n  - id: t1\n    tenant: acme\n    sha256: {H1}\n    scopes: [users:read]\n{}",
        prev(H3)
    );
    assert!(Files::new(GATEWAY, &tokens).load().is_ok());
}

#[test]
fn the_json_form_of_the_token_file_reads_like_yaml_and_errors_keep_their_line() {
    let file = TokensFile {
        tokens: vec![crate::config::TokenRecord {
            id: "a".into(),
            tenant: "acme".into(),
            sha256: "ab".repeat(32),
            scopes: vec![crate::policy::scope::Scope::UsersRead],
            domains: Some(vec!["acme.com".into()]),
            expires_at: None,
            idle_timeout: None,
            status: Default::default(),
            created_at: None,
            hint: Some("wxyz".into()),
            rate_limit: None,
            previous: None,
        }],
    };
    let text = format!(
        "# comment\n\n{}",
        crate::token::file::render(&file).unwrap()
    );
    let path = std::path::Path::new("tokens.yaml");
    let mut problems = Problems::default();
    let fast: TokensFile = parse_yaml(path, &text, &mut problems).expect("JSON form");
    let slow: TokensFile = serde_yaml::from_str(&text).expect("the same text as YAML");
    assert_eq!(
        serde_json::to_value(&fast).unwrap(),
        serde_json::to_value(&slow).unwrap()
    );
    let empty = crate::token::file::render(&TokensFile::default()).unwrap();
    let none: TokensFile = parse_yaml(path, &empty, &mut problems).unwrap();
    assert!(none.tokens.is_empty() && problems.0.is_empty());

    // A comment line that YAML ends early (at a lone CR, NEL, LS or PS) while JSON would not:
    // the text is read as YAML, whatever it says as JSON.
    for brk in ["\r", "\u{85}", "\u{2028}", "\u{2029}"] {
        let tricky = format!("# c{brk}{{\"tokens\": []}}\n{{\"tokens\": [1]}}\n");
        assert!(json_form(&tricky).is_none(), "{brk:?}");
    }
    assert!(
        json_form("{\"a\": \"\u{7f}\"}").is_none(),
        "DEL is not YAML"
    );
    assert!(
        json_form("# c\r\n{\"tokens\": []}\r\n").is_some(),
        "CRLF is fine"
    );

    // An unknown key on line 4: serde_json refuses it, serde_yaml reports where.
    let bad = "# c\n{\"tokens\": [\n  {\"id\":\"a\",\"tenant\":\"acme\",\"sha256\":\"x\",\"scopes\":[]},\n  {\"id\":\"b\",\"bogus\":1}\n]}\n";
    assert!(parse_yaml::<TokensFile>(path, bad, &mut problems).is_none());
    let p = problems.to_string();
    assert!(p.contains("tokens.yaml:4"), "{p}");
    assert!(p.contains("bogus"), "{p}");
}
