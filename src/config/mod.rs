//! The gateway configuration (`gateway.yaml`) and the token file (`tokens.yaml`): their shape,
//! loading, and validation into a list of `file:line: key: problem` findings.
//!
//! Loading never stops at the first problem: `scimgate check` and a refused reload list every
//! problem at once, each with the file, line and key path that is wrong.

mod duration;
mod lines;
mod problem;

pub use duration::{format_duration, parse_duration, HumanDuration, Timestamp};
pub use lines::LineIndex;
pub use problem::{Problem, Problems};

use crate::policy::domain::DomainPattern;
use crate::policy::scope::Scope;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `mode:` — whether refusals are enforced or only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    ReportOnly,
}

/// `gateway.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub server: ServerSection,
    /// Plain-HTTP listener for `/healthz` and `/readyz`; absent means none.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub mode: Mode,
    pub upstream: UpstreamSection,
    pub tenants: Vec<TenantSection>,
    pub tokens_file: PathBuf,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditSection,
    /// Rate limits, brute-force protection, concurrency bounds and blast-radius guards.
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    /// Where the gateway keeps state that must survive restarts (token last-use times).
    /// Default: `scimgate-state/` next to this file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: SocketAddr,
    pub tls: TlsSection,
    /// Largest request body accepted (413 beyond). Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time allowed for a client to send the request headers.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Time allowed for a client to send the whole request body (408 beyond).
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout: HumanDuration,
    /// Time allowed for a whole request, lookups and upstream calls included (504 beyond).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// How long a SIGTERM waits for in-flight requests before closing connections.
    #[serde(default = "default_grace")]
    pub shutdown_grace: HumanDuration,
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

/// Where audit records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSink {
    #[default]
    Stdout,
    File,
    None,
}

/// `audit:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    #[serde(default)]
    pub sink: AuditSink,
    /// The file for `sink: file` (default `audit.log` next to the configuration).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rotate the file past this size.
    #[serde(default = "default_audit_max")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_audit_keep")]
    pub keep: u32,
    /// Log query parameter values (names only by default: filters carry personal data).
    #[serde(default)]
    pub query_values: bool,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            sink: AuditSink::default(),
            path: None,
            max_bytes: default_audit_max(),
            keep: default_audit_keep(),
            query_values: false,
        }
    }
}

fn default_audit_max() -> u64 {
    100 * 1024 * 1024
}
fn default_audit_keep() -> u32 {
    10
}

/// A GCRA rate: a sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// `rate_limits:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSection {
    /// Default per-token rate (a token's own `rate_limit` overrides it).
    #[serde(default = "default_token_rate")]
    pub token: Option<Rate>,
    /// Default per-tenant aggregate rate (a tenant's own `rate_limit` overrides it).
    #[serde(default)]
    pub tenant: Option<Rate>,
    /// Failed authentications allowed per client address (IPv6: per /64) per window; beyond,
    /// 429 without any token lookup.
    #[serde(default = "default_auth_failures")]
    pub auth_failures: AuthFailuresSection,
    /// Requests one token may have in flight at once (503 beyond).
    #[serde(default = "default_token_concurrency")]
    pub token_concurrency: u32,
    /// Requests the gateway may have in flight at once (503 beyond).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Per-token caps on destructive operations.
    #[serde(default)]
    pub blast_radius: BlastRadiusSection,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        RateLimitsSection {
            token: default_token_rate(),
            tenant: None,
            auth_failures: default_auth_failures(),
            token_concurrency: default_token_concurrency(),
            max_in_flight: default_max_in_flight(),
            blast_radius: BlastRadiusSection::default(),
        }
    }
}

fn default_token_rate() -> Option<Rate> {
    Some(Rate {
        per_second: 50,
        burst: 100,
    })
}
fn default_auth_failures() -> AuthFailuresSection {
    AuthFailuresSection {
        max: 20,
        window: HumanDuration(Duration::from_secs(300)),
    }
}
fn default_token_concurrency() -> u32 {
    32
}
fn default_max_in_flight() -> u32 {
    1024
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFailuresSection {
    pub max: u32,
    pub window: HumanDuration,
}

/// Caps per token and window on deletes, deactivations (`active: false`) and operations that
/// remove every member of a group: a runaway sync or a stolen token cannot wipe a directory.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadiusSection {
    #[serde(default = "default_blast_window")]
    pub window: HumanDuration,
    #[serde(default = "default_blast_deletes")]
    pub deletes: u32,
    #[serde(default = "default_blast_deletes")]
    pub deactivations: u32,
    #[serde(default = "default_blast_wipes")]
    pub group_wipes: u32,
}

impl Default for BlastRadiusSection {
    fn default() -> Self {
        BlastRadiusSection {
            window: default_blast_window(),
            deletes: default_blast_deletes(),
            deactivations: default_blast_deletes(),
            group_wipes: default_blast_wipes(),
        }
    }
}

fn default_blast_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_blast_deletes() -> u32 {
    1000
}
fn default_blast_wipes() -> u32 {
    50
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA bundle signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub url: String,
    /// Sent upstream as `Authorization`; `${VAR}` reads the environment.
    #[serde(default)]
    pub authorization: Option<String>,
    /// Trust anchors for an https upstream (default: the public web PKI roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: HumanDuration,
    /// Largest upstream response body the gateway buffers for inspection (502 beyond).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// The operator's word that the backend applies `If-Match` to user writes atomically (RFC
    /// 7644 §3.14) and gives each user an `ETag`. The gateway then pins every user PUT, PATCH
    /// and DELETE to the version of the user it judged, and may judge one on its cached copy:
    /// a user changed meanwhile makes the backend refuse the write (412), and the gateway reads
    /// it afresh and tries once more. Off, every such write reads the user first, unpinned.
    #[serde(default)]
    pub conditional_writes: bool,
}

fn default_upstream_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_response() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    pub path_prefix: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub upstream: Option<UpstreamSection>,
    /// Overrides the gateway-wide `mode` for this tenant.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Whether a domain-scoped token may manage users that carry no email address at all.
    #[serde(default)]
    pub allow_users_without_email: bool,
    /// Aggregate rate of every token of this tenant.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
}

/// `tokens.yaml`: written by `scimgate token …`, reviewable in git, holds no secret.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// A token's lifecycle state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStatus {
    #[default]
    Active,
    Suspended,
    Revoked,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Suspended => "suspended",
            TokenStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    /// Hex SHA-256 of the whole token string.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Must lie within the tenant's domains; absent means the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub status: TokenStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// The last four characters of the secret, so an operator can tell tokens apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// This token's own rate (overrides `rate_limits.token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// The secret this one replaced, still accepted until `expires_at` (rotation overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousSecret>,
}

fn validate_rate(key: &str, r: &Rate, at: &mut dyn FnMut(&str, String)) {
    if r.per_second == 0 || r.burst == 0 {
        at(key, "per_second and burst must be greater than 0".into());
    }
}

/// A rotated-out secret that keeps working until the overlap ends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    pub sha256: String,
    pub expires_at: Timestamp,
}

/// A loaded and validated configuration, with paths resolved against the config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewayFile,
    pub tokens_path: PathBuf,
    pub tokens: TokensFile,
    /// `upstream.authorization` (and tenants' overrides) after `${VAR}` expansion, by tenant
    /// index; `None` entries send no credential.
    pub upstream_authorization: Vec<Option<String>>,
    /// SHA-256 over both files' bytes: the policy version in logs.
    pub version: String,
}

impl Config {
    /// The state directory (token last-use times).
    pub fn state_dir(&self) -> PathBuf {
        match &self.gateway.state_dir {
            Some(p) => self.resolve(p),
            None => self.resolve(Path::new("scimgate-state")),
        }
    }

    /// Resolves a path written in the configuration against the configuration's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_against(&self.path, p)
    }

    /// The upstream block that applies to tenant `i`.
    pub fn upstream_for(&self, i: usize) -> &UpstreamSection {
        self.gateway.tenants[i]
            .upstream
            .as_ref()
            .unwrap_or(&self.gateway.upstream)
    }
}

fn resolve_against(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        config_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(p)
    }
}

/// Reads and validates a configuration and its token file, returning every problem found.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let mut problems = Problems::default();
    let gw_src = read(path, &mut problems).ok_or_else(|| problems.clone())?;
    let gateway: GatewayFile =
        parse_yaml(path, &gw_src, &mut problems).ok_or_else(|| problems.clone())?;
    // Line numbers are only needed to report a problem: index lazily (a second YAML parse of a
    // 100k-token file is not free).
    let gw_lines = std::cell::OnceCell::new();
    let tokens_path = resolve_against(path, &gateway.tokens_file);
    let mut at = |problems: &mut Problems, key: &str, msg: String| {
        let line = gw_lines
            .get_or_init(|| LineIndex::build(&gw_src))
            .line_of(key);
        problems.push(Problem::new(path, line, key, msg));
    };

    validate_gateway(path, &gateway, &mut problems, &mut at);
    let upstream_authorization = expand_authorizations(&gateway, &mut problems, &mut at);

    let tok_src = read(&tokens_path, &mut problems);
    let tokens = tok_src
        .as_deref()
        .and_then(|src| parse_yaml::<TokensFile>(&tokens_path, src, &mut problems));
    if let (Some(src), Some(tokens)) = (tok_src.as_deref(), tokens.as_ref()) {
        let tok_lines = std::cell::OnceCell::new();
        validate_tokens(&gateway, tokens, &mut |key: &str, msg: String| {
            let line = tok_lines.get_or_init(|| LineIndex::build(src)).line_of(key);
            problems.push(Problem::new(&tokens_path, line, key, msg));
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let version = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(gw_src.as_bytes());
        h.update([0]);
        h.update(tok_src.unwrap_or_default().as_bytes());
        hex::encode(&h.finalize()[..8])
    };
    Ok(Config {
        path: path.to_owned(),
        gateway,
        tokens_path,
        tokens: tokens.unwrap_or_default(),
        upstream_authorization,
        version,
    })
}

fn read(path: &Path, problems: &mut Problems) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem::new(
                path,
                None,
                "",
                format!("cannot read the file: {e}"),
            ));
            None
        }
    }
}

/// Deserialises strictly (unknown keys are errors) and turns serde_yaml's error into a problem
/// with its line and key path.
///
/// A document in YAML's JSON form (after leading comments), as `scimgate token` writes the
/// token file, is read by serde_json, which is twenty times faster than serde_yaml on a large
/// token file; JSON is YAML, so the result is the same. Anything serde_json refuses, including
/// every malformed document, goes to serde_yaml, which reports the error with its line.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    src: &str,
    problems: &mut Problems,
) -> Option<T> {
    if let Some(json) = json_form(src) {
        if let Ok(v) = serde_json::from_str::<T>(json) {
            return Some(v);
        }
    }
    match serde_yaml::from_str::<T>(src) {
        Ok(v) => Some(v),
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let msg = e.to_string();
            let msg = match msg.rfind(" at line ") {
                Some(cut) => msg[..cut].to_owned(),
                None => msg,
            };
            // serde_yaml writes "key.path: message"; split it so the output matches ours.
            let (key, msg) = match msg.split_once(": ") {
                Some((k, m)) if !k.contains(' ') => (k.to_owned(), m.to_owned()),
                _ => (String::new(), msg),
            };
            problems.push(Problem::new(path, line, &key, msg));
            None
        }
    }
}

/// The document after its leading comment and blank lines, if it is a JSON object that YAML
/// reads the same way: no line break YAML knows and JSON does not (a lone CR, NEL, LS, PS, which
/// could end a comment line early for YAML only), and no character YAML refuses.
fn json_form(src: &str) -> Option<&str> {
    let mut prev_cr = false;
    for c in src.chars() {
        let ok = match c {
            '\n' | '\t' => true,
            '\r' => true,
            '\u{20}'..='\u{7e}' => true,
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => {
                !matches!(c, '\u{2028}' | '\u{2029}')
            }
            _ => false,
        };
        if !ok || (prev_cr && c != '\n') {
            return None;
        }
        prev_cr = c == '\r';
    }
    if prev_cr {
        return None;
    }
    let mut rest = src.strip_prefix('\u{feff}').unwrap_or(src);
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        if trimmed.starts_with('#') {
            rest = trimmed.split_once('\n').map_or("", |(_, r)| r);
        } else {
            return trimmed.starts_with('{').then_some(trimmed);
        }
    }
}

fn validate_gateway(
    path: &Path,
    gw: &GatewayFile,
    problems: &mut Problems,
    at: &mut impl FnMut(&mut Problems, &str, String),
) {
    let exists = |problems: &mut Problems,
                  at: &mut dyn FnMut(&mut Problems, &str, String),
                  key: &str,
                  p: &Path| {
        let full = resolve_against(path, p);
        if !full.is_file() {
            at(
                problems,
                key,
                format!("file {} does not exist", full.display()),
            );
        }
    };
    exists(problems, at, "server.tls.cert", &gw.server.tls.cert);
    exists(problems, at, "server.tls.key", &gw.server.tls.key);
    if let Some(ca) = &gw.server.tls.client_ca {
        exists(problems, at, "server.tls.client_ca", ca);
    }
    for (key, d) in [
        ("server.header_read_timeout", gw.server.header_read_timeout),
        ("server.body_read_timeout", gw.server.body_read_timeout),
        ("server.request_timeout", gw.server.request_timeout),
    ] {
        if d.0.is_zero() {
            at(problems, key, "must be greater than 0".into());
        }
    }
    {
        let mut rate_at = |k: &str, m: String| at(problems, k, m);
        let rl = &gw.rate_limits;
        if let Some(r) = &rl.token {
            validate_rate("rate_limits.token", r, &mut rate_at);
        }
        if let Some(r) = &rl.tenant {
            validate_rate("rate_limits.tenant", r, &mut rate_at);
        }
        for (i, t) in gw.tenants.iter().enumerate() {
            if let Some(r) = &t.rate_limit {
                validate_rate(&format!("tenants[{i}].rate_limit"), r, &mut rate_at);
            }
        }
        if rl.auth_failures.max == 0 || rl.auth_failures.window.0.is_zero() {
            rate_at(
                "rate_limits.auth_failures",
                "max and window must be greater than 0".into(),
            );
        }
        if rl.token_concurrency == 0 || rl.max_in_flight == 0 {
            rate_at(
                "rate_limits",
                "token_concurrency and max_in_flight must be greater than 0".into(),
            );
        }
        let b = &rl.blast_radius;
        if b.window.0.is_zero() || b.deletes == 0 || b.deactivations == 0 || b.group_wipes == 0 {
            rate_at(
                "rate_limits.blast_radius",
                "window and caps must be greater than 0".into(),
            );
        }
    }
    if gw.server.max_body_bytes == 0 {
        at(
            problems,
            "server.max_body_bytes",
            "must be greater than 0".into(),
        );
    }
    validate_upstream(path, &gw.upstream, "upstream", problems, at);
    if gw.tenants.is_empty() {
        at(
            problems,
            "tenants",
            "at least one tenant is required".into(),
        );
    }
    let mut ids = HashSet::new();
    let mut prefixes: Vec<(usize, &str)> = Vec::new();
    for (i, t) in gw.tenants.iter().enumerate() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        if !valid_id(&t.id) {
            at(
                problems,
                &key("id"),
                format!(
                    "invalid tenant id {:?}: use letters, digits, '-' and '_'",
                    t.id
                ),
            );
        }
        if !ids.insert(t.id.as_str()) {
            at(
                problems,
                &key("id"),
                format!("duplicate tenant id {:?}", t.id),
            );
        }
        match crate::policy::route::normalize_path(&t.path_prefix) {
            Ok(norm) if norm == t.path_prefix && norm != "/" => {
                for (j, other) in &prefixes {
                    if crate::policy::route::strip_prefix(other, &norm).is_some()
                        || crate::policy::route::strip_prefix(&norm, other).is_some()
                    {
                        at(problems, &key("path_prefix"), format!("path_prefix {norm:?} overlaps tenants[{j}]'s {other:?}"));
                    }
                }
                prefixes.push((i, &t.path_prefix));
            }
            _ => at(
                problems,
                &key("path_prefix"),
                format!("path_prefix {:?} must be a normalised absolute path such as /acme/scim/v2 (no trailing slash, dot segments or escapes)", t.path_prefix),
            ),
        }
        if t.domains.is_empty() {
            at(
                problems,
                &key("domains"),
                "at least one domain (or \"*\") is required".into(),
            );
        }
        for (j, d) in t.domains.iter().enumerate() {
            if let Err(e) = DomainPattern::parse(d) {
                at(problems, &format!("tenants[{i}].domains[{j}]"), e);
            }
        }
        if let Some(up) = &t.upstream {
            validate_upstream(path, up, &key("upstream"), problems, at);
        }
    }
    let _ = exists;
}

fn validate_upstream(
    path: &Path,
    up: &UpstreamSection,
    key: &str,
    problems: &mut Problems,
    at: &mut impl FnMut(&mut Problems, &str, String),
) {
    match up.url.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
            if !scheme_ok || uri.authority().is_none() {
                at(
                    problems,
                    &format!("{key}.url"),
                    format!("{:?} must be an absolute http:// or https:// URL", up.url),
                );
            } else if uri.query().is_some() {
                at(
                    problems,
                    &format!("{key}.url"),
                    "must not carry a query string".into(),
                );
            } else if up.ca.is_some() && uri.scheme_str() != Some("https") {
                at(
                    problems,
                    &format!("{key}.ca"),
                    "only applies to an https:// upstream".into(),
                );
            }
        }
        Err(e) => at(
            problems,
            &format!("{key}.url"),
            format!("{:?} is not a URL: {e}", up.url),
        ),
    }
    if let Some(ca) = &up.ca {
        let full = resolve_against(path, ca);
        if !full.is_file() {
            at(
                problems,
                &format!("{key}.ca"),
                format!("file {} does not exist", full.display()),
            );
        }
    }
    if up.timeout.0.is_zero() {
        at(
            problems,
            &format!("{key}.timeout"),
            "must be greater than 0".into(),
        );
    }
}

fn expand_authorizations(
    gw: &GatewayFile,
    problems: &mut Problems,
    at: &mut impl FnMut(&mut Problems, &str, String),
) -> Vec<Option<String>> {
    let mut shared_reported = false;
    gw.tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shared = t.upstream.is_none();
            let (key, up) = match &t.upstream {
                Some(up) => (format!("tenants[{i}].upstream.authorization"), up),
                None => ("upstream.authorization".to_owned(), &gw.upstream),
            };
            let raw = up.authorization.as_deref()?;
            match expand_env(raw) {
                Ok(v) if http::HeaderValue::from_str(&v).is_ok() => Some(v),
                Ok(_) => {
                    at(
                        problems,
                        &key,
                        "is not a valid header value after expansion".into(),
                    );
                    None
                }
                Err(e) => {
                    // The shared block is one problem, however many tenants inherit it.
                    if !(shared && std::mem::replace(&mut shared_reported, true)) {
                        at(problems, &key, e);
                    }
                    None
                }
            }
        })
        .collect()
}

/// Expands `${NAME}` from the environment; an unset variable is an error, never an empty string.
pub fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unterminated ${ in value")?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        let val =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Token and tenant ids: short, printable, safe in logs and metric labels.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn validate_tokens(gw: &GatewayFile, file: &TokensFile, at: &mut impl FnMut(&str, String)) {
    let mut ids = HashSet::with_capacity(file.tokens.len());
    let mut hashes = HashSet::with_capacity(file.tokens.len());
    // Each tenant's domains, parsed once rather than once per token.
    let tenant_sets: Vec<_> = gw
        .tenants
        .iter()
        .map(|tenant| {
            crate::policy::domain::DomainSet::new(
                tenant
                    .domains
                    .iter()
                    .filter_map(|d| DomainPattern::parse(d).ok())
                    .collect(),
            )
        })
        .collect();
    for (i, t) in file.tokens.iter().enumerate() {
        let key = |k: &str| format!("tokens[{i}].{k}");
        if !valid_id(&t.id) {
            at(
                &key("id"),
                format!(
                    "invalid token id {:?}: use letters, digits, '-', '_' and '.'",
                    t.id
                ),
            );
        }
        if !ids.insert(t.id.as_str()) {
            at(&key("id"), format!("duplicate token id {:?}", t.id));
        }
        let hashes_of = std::iter::once(("sha256", &t.sha256))
            .chain(t.previous.iter().map(|p| ("previous.sha256", &p.sha256)));
        for (k, h) in hashes_of {
            let hash_ok = h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
            let mut lower = [0u8; 64];
            if hash_ok {
                lower.copy_from_slice(h.as_bytes());
                lower.make_ascii_lowercase();
            }
            if !hash_ok {
                at(
                    &key(k),
                    "must be 64 hexadecimal characters (the SHA-256 of the token)".into(),
                );
            } else if !hashes.insert(lower) {
                at(
                    &key(k),
                    "duplicate hash: two entries share one secret".into(),
                );
            }
        }
        if t.scopes.is_empty() {
            at(&key("scopes"), "at least one scope is required".into());
        }
        if let Some(r) = &t.rate_limit {
            validate_rate(&key("rate_limit"), r, at);
        }
        if let Some(idle) = t.idle_timeout {
            if idle.0.is_zero() {
                at(
                    &key("idle_timeout"),
                    "must be greater than 0 (omit it for no idle expiry)".into(),
                );
            }
        }
        let Some(tenant_set) = gw
            .tenants
            .iter()
            .position(|x| x.id == t.tenant)
            .map(|n| &tenant_sets[n])
        else {
            at(&key("tenant"), format!("unknown tenant {:?}", t.tenant));
            continue;
        };
        if let Some(domains) = &t.domains {
            if domains.is_empty() {
                at(
                    &key("domains"),
                    "must not be empty (omit it to use the tenant's domains)".into(),
                );
            }
            for (j, d) in domains.iter().enumerate() {
                let dk = || format!("tokens[{i}].domains[{j}]");
                match DomainPattern::parse(d) {
                    Ok(p) if !tenant_set.covers(&p) => at(
                        &dk(),
                        format!("domain {d:?} is outside tenant {:?}'s domains", t.tenant),
                    ),
                    Ok(_) => {}
                    Err(e) => at(&dk(), e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
