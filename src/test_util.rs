//! Shared fixtures for unit tests and benchmarks: a policy over an in-memory backend, built
//! through the real configuration loader.

use crate::config::{self, TokenRecord, TokenStatus, TokensFile};
use crate::policy::scope::Scope;
use std::net::SocketAddr;
use std::path::Path;

/// Writes a gateway configuration with tenants `acme` (acme.com, *.acme.io) and `globex`
/// (globex.com) whose upstreams are `backend`'s `/acme/v2` and `/globex/v2`, plus throwaway
/// certificates, into `dir`. Returns the configuration path.
pub fn write_config(dir: &Path, backend: SocketAddr, credential: &str) -> std::path::PathBuf {
    let (cert, key) = crate::tls::self_signed().expect("self-signed certificate");
    std::fs::write(dir.join("server.crt"), cert).expect("write cert");
    std::fs::write(dir.join("server.key"), key).expect("write key");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  tls: {{ cert: server.crt, key: server.key }}\n  max_body_bytes: 65536\n\
upstream:\n  url: http://{backend}/acme/v2\n  authorization: \"{credential}\"\n  timeout: 5s\n\
tenants:\n  - id: acme\n    path_prefix: /acme/scim/v2\n    domains: [acme.com, \"*.acme.io\"]\n  - id: globex\n    path_prefix: /globex/scim/v2\n    domains: [globex.com]\n    upstream:\n      url: http://{backend}/globex/v2\n      authorization: \"{credential}\"\n\
tokens_file: tokens.yaml\n"
    );
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    std::fs::write(dir.join("tokens.yaml"), "tokens: []\n").expect("write tokens");
    path
}

/// Adds a token to the configuration's token file and returns its secret.
pub fn add_token(
    config_path: &Path,
    id: &str,
    tenant: &str,
    scopes: &[Scope],
    domains: Option<&[&str]>,
) -> String {
    let tokens = config_path.with_file_name("tokens.yaml");
    let secret = crate::token::generate().expect("random");
    let record = TokenRecord {
        id: id.into(),
        tenant: tenant.into(),
        sha256: hex::encode(crate::token::hash(&secret)),
        scopes: scopes.to_vec(),
        domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
        expires_at: None,
        idle_timeout: None,
        status: TokenStatus::Active,
        created_at: None,
        hint: None,
        previous: None,
        rate_limit: None,
    };
    crate::token::update_tokens_file(&tokens, |f: &mut TokensFile| {
        f.tokens.push(record);
        Ok(())
    })
    .expect("update tokens");
    secret
}

/// Every concatenation of up to `max` of `pieces` (the empty one included), sorted and
/// deduplicated: inputs for checking a fast path against the general one exhaustively.
pub fn concatenations(pieces: &[&str], max: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut last = all.clone();
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|s| pieces.iter().map(move |p| format!("{s}{p}")))
            .collect();
        all.extend(last.iter().cloned());
    }
    all.sort();
    all.dedup();
    all
}

/// Loads and compiles the configuration, panicking with its problems.
pub fn load_policy(config_path: &Path) -> crate::policy::Policy {
    let cfg = config::load(config_path).unwrap_or_else(|p| panic!("{p}"));
    crate::policy::Policy::compile(&cfg).unwrap_or_else(|p| panic!("{p}"))
}
