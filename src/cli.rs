//! The command line: `serve`, `check`, `token issue|list|revoke|suspend|resume`, `demo`.

use crate::config::{
    self, format_duration, parse_duration, HumanDuration, Problems, Timestamp, TokenRecord,
    TokenStatus,
};
use crate::policy::domain::{DomainPattern, DomainSet};
use crate::policy::scope::Scope;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_CONFIG: &str = "policies/gateway.yaml";
/// Issue-time default lifetime, and the longest allowed without `--never-expires`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
const MAX_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86_400);

#[derive(Parser, Debug)]
#[command(
    name = "scimgate",
    version,
    about = "A SCIM 2.0 gateway that enforces token, tenant, scope and email-domain policy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the configuration and the token file, like `nginx -t`.
    Check(ConfigArg),
    /// Manage tokens in the token file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Work with the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the gateway in front of an in-memory SCIM backend, with a generated certificate and token.
    Demo {
        /// Address of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check an audit file's hash chain: exit 0 when intact, 1 with the first broken line.
    Verify {
        /// The audit log file.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// The gateway configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; prints the secret alone on the first line of stdout, once.
    Issue(IssueArgs),
    /// List the token entries (never secrets).
    List(ConfigArg),
    /// Revoke a token for good.
    Revoke(IdArgs),
    /// Suspend a token (it can be resumed).
    Suspend(IdArgs),
    /// Resume a suspended token.
    Resume(IdArgs),
    /// Issue a new secret for an entry; the old one keeps working until the overlap ends.
    Rotate(RotateArgs),
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The token's id.
    #[arg(long)]
    pub id: String,
    /// How long the old secret keeps working: default 1h, at most 24h, 0 for a leaked token.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub overlap: Duration,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The tenant the token works for.
    #[arg(long)]
    pub tenant: String,
    /// A unique, non-secret name for the token (e.g. entra-prod).
    #[arg(long)]
    pub id: String,
    /// Scopes (repeatable): users:read, users:write, groups:read, groups:write, bulk.
    /// Default: the four read/write scopes.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Email domains (repeatable), within the tenant's. Default: the tenant's.
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// Lifetime, e.g. 90d. Default 365d; at most 730d.
    #[arg(long, value_parser = parse_duration, conflicts_with = "never_expires")]
    pub expires_in: Option<Duration>,
    /// Issue a token without an expiry date (discouraged; must be explicit).
    #[arg(long)]
    pub never_expires: bool,
    /// Idle timeout renewed by every use, e.g. 90d.
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The token's id.
    #[arg(long)]
    pub id: String,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// The control runtime, on the main thread: reloads, signals, the admin endpoints and the
/// demo. The gateway's requests run on the shards' own runtimes ([`crate::shard`]).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(a) => {
            let _log = crate::telemetry::init();
            // Before the policy is compiled: it holds one backend pool per shard.
            crate::shard::set_count(crate::shard::default_count());
            let bulk = crate::memory::Bulk::begin();
            let cfg = config::load(&a.config).map_err(|p| p.to_string())?;
            runtime()?.block_on(crate::server::serve(a.config.clone(), cfg, bulk))
        }
        Command::Check(a) => {
            let cfg = config::load(&a.config).map_err(|p| p.to_string())?;
            crate::policy::Policy::compile(&cfg).map_err(|p| p.to_string())?;
            crate::reload::tls_for(&cfg)?;
            println!("configuration ok");
            Ok(())
        }
        Command::Token(t) => token_command(t),
        Command::Audit(AuditCommand::Verify { file }) => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let n = crate::audit::verify(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            println!("{}: {n} records, chain intact", file.display());
            Ok(())
        }
        Command::Demo { listen } => {
            let _log = crate::telemetry::init();
            runtime()?.block_on(crate::demo::run(listen))
        }
    }
}

/// The parts of the configuration the token commands need: tenants and the token file path.
/// The rest (certificates, upstream credential) need not be present to manage tokens.
fn token_context(config_path: &Path) -> Result<(config::GatewayFile, PathBuf), String> {
    let src = std::fs::read_to_string(config_path)
        .map_err(|e| format!("{}: cannot read the file: {e}", config_path.display()))?;
    let mut problems = Problems::default();
    let gw: config::GatewayFile =
        config::parse_yaml(config_path, &src, &mut problems).ok_or_else(|| problems.to_string())?;
    let tokens = if gw.tokens_file.is_absolute() {
        gw.tokens_file.clone()
    } else {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&gw.tokens_file)
    };
    Ok((gw, tokens))
}

fn token_command(cmd: TokenCommand) -> Result<(), String> {
    match cmd {
        TokenCommand::Issue(a) => issue(a),
        TokenCommand::List(a) => list(&a.config),
        TokenCommand::Revoke(a) => set_status(&a, TokenStatus::Revoked),
        TokenCommand::Suspend(a) => set_status(&a, TokenStatus::Suspended),
        TokenCommand::Resume(a) => set_status(&a, TokenStatus::Active),
        TokenCommand::Rotate(a) => rotate(a),
    }
}

fn issue(a: IssueArgs) -> Result<(), String> {
    let (gw, tokens_path) = token_context(&a.config)?;
    if !config::valid_id(&a.id) {
        return Err(format!(
            "invalid token id {:?}: use letters, digits, '-', '_' and '.'",
            a.id
        ));
    }
    let tenant = gw
        .tenants
        .iter()
        .find(|t| t.id == a.tenant)
        .ok_or_else(|| format!("unknown tenant {:?}", a.tenant))?;
    let scopes: Vec<Scope> = if a.scopes.is_empty() {
        Scope::PROVISIONING.to_vec()
    } else {
        a.scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    };
    let tenant_set = DomainSet::new(
        tenant
            .domains
            .iter()
            .filter_map(|d| DomainPattern::parse(d).ok())
            .collect(),
    );
    for d in &a.domains {
        let p = DomainPattern::parse(d)?;
        if !tenant_set.covers(&p) {
            return Err(format!(
                "domain {d:?} is outside tenant {:?}'s domains",
                a.tenant
            ));
        }
    }
    let lifetime = match (a.expires_in, a.never_expires) {
        (_, true) => None,
        (Some(d), false) if d > MAX_LIFETIME => {
            return Err(format!(
                "--expires-in {} is longer than the {} maximum; pass --never-expires to issue a token without expiry",
                format_duration(d),
                format_duration(MAX_LIFETIME)
            ))
        }
        (Some(d), false) if d.is_zero() => return Err("--expires-in must be greater than 0".into()),
        (Some(d), false) => Some(d),
        (None, false) => Some(DEFAULT_LIFETIME),
    };
    let token =
        crate::token::generate().map_err(|e| format!("the OS random source failed: {e}"))?;
    let now = Timestamp::now();
    let record = TokenRecord {
        id: a.id.clone(),
        tenant: a.tenant.clone(),
        sha256: hex::encode(crate::token::hash(&token)),
        scopes,
        domains: (!a.domains.is_empty()).then(|| a.domains.clone()),
        expires_at: lifetime.map(|d| Timestamp(now.0 + d)),
        idle_timeout: a.idle_timeout.map(HumanDuration),
        status: TokenStatus::Active,
        created_at: Some(now),
        hint: Some(crate::token::hint(&token)),
        previous: None,
        rate_limit: None,
    };
    crate::token::update_tokens_file(&tokens_path, |f| {
        if f.tokens.iter().any(|t| t.id == record.id) {
            return Err(format!(
                "a token with id {:?} already exists; pick another id or revoke it",
                record.id
            ));
        }
        f.tokens.push(record.clone());
        Ok(())
    })?;
    println!("{token}");
    eprintln!(
        "issued token {:?} for tenant {:?}; it is shown only this once. Entry written to {}",
        a.id,
        a.tenant,
        tokens_path.display()
    );
    Ok(())
}

fn ago(now: u64, t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    format!(
        "{} ago",
        format_duration(
            Duration::from_secs(now.saturating_sub(t) / 60 * 60).max(Duration::from_secs(60))
        )
    )
}

fn list(config_path: &Path) -> Result<(), String> {
    let (gw, tokens_path) = token_context(config_path)?;
    let state_dir = match &gw.state_dir {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => config_path.parent().unwrap_or(Path::new(".")).join(p),
        None => config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("scimgate-state"),
    };
    let usage = crate::token::usage::read_usage(&state_dir);
    let src = std::fs::read_to_string(&tokens_path)
        .map_err(|e| format!("{}: cannot read the file: {e}", tokens_path.display()))?;
    let mut problems = Problems::default();
    let file: config::TokensFile = config::parse_yaml(&tokens_path, &src, &mut problems)
        .ok_or_else(|| problems.to_string())?;
    println!(
        "{:<20} {:<10} {:<10} {:<5} {:<34} {:<8} {:<12} SCOPES / DOMAINS",
        "ID", "TENANT", "STATUS", "HINT", "EXPIRES", "IDLE", "LAST USED"
    );
    let now = Timestamp::now();
    for t in &file.tokens {
        let expires = match t.expires_at {
            None => "never".to_owned(),
            Some(e) if e <= now => format!("{e} (expired)"),
            Some(e) => {
                let left = e.unix() - now.unix();
                let warn = if left <= crate::reload::EXPIRY_WARNING.as_secs() {
                    " !"
                } else {
                    ""
                };
                format!(
                    "{e} (in {}){warn}",
                    format_duration(
                        Duration::from_secs(left / 86_400 * 86_400)
                            .max(Duration::from_secs(86_400))
                    )
                )
            }
        };
        let last_used = usage
            .get(&t.id)
            .map(|u| ago(now.unix(), *u))
            .unwrap_or_else(|| "never".into());
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        let domains = t
            .domains
            .as_ref()
            .map(|d| d.join(","))
            .unwrap_or_else(|| "(tenant's)".into());
        println!(
            "{:<20} {:<10} {:<10} {:<5} {:<34} {:<8} {:<12} {} / {}",
            t.id,
            t.tenant,
            t.status.as_str(),
            t.hint.as_deref().unwrap_or("-"),
            expires,
            t.idle_timeout
                .map(|d| format_duration(d.0))
                .unwrap_or_else(|| "-".into()),
            last_used,
            scopes.join(","),
            domains
        );
        let rate = t.rate_limit.or(gw.rate_limits.token);
        println!(
            "{:<20} rate limit: {}",
            "",
            rate.map(|r| format!(
                "{}/s, burst {}{}",
                r.per_second,
                r.burst,
                if t.rate_limit.is_some() {
                    ""
                } else {
                    " (gateway default)"
                }
            ))
            .unwrap_or_else(|| "none".into())
        );
        if let Some(p) = &t.previous {
            if p.expires_at > now {
                println!("{:<20} previous secret accepted until {}", "", p.expires_at);
            }
        }
    }
    Ok(())
}

const MAX_OVERLAP: Duration = Duration::from_secs(24 * 3600);

fn rotate(a: RotateArgs) -> Result<(), String> {
    if a.overlap > MAX_OVERLAP {
        return Err(format!(
            "--overlap {} is longer than the 24h maximum",
            format_duration(a.overlap)
        ));
    }
    let (_, tokens_path) = token_context(&a.config)?;
    let token =
        crate::token::generate().map_err(|e| format!("the OS random source failed: {e}"))?;
    let now = Timestamp::now();
    crate::token::update_tokens_file(&tokens_path, |f| {
        let t = f
            .tokens
            .iter_mut()
            .find(|t| t.id == a.id)
            .ok_or_else(|| format!("no token with id {:?}", a.id))?;
        if t.status == TokenStatus::Revoked {
            return Err(format!("token {:?} is revoked; issue a new one", a.id));
        }
        // At most two live secrets: the new one and the one it replaces.
        t.previous = (!a.overlap.is_zero()).then(|| config::PreviousSecret {
            sha256: t.sha256.clone(),
            expires_at: Timestamp(now.0 + a.overlap),
        });
        t.sha256 = hex::encode(crate::token::hash(&token));
        t.hint = Some(crate::token::hint(&token));
        Ok(())
    })?;
    println!("{token}");
    eprintln!(
        "rotated token {:?}; the new secret is shown only this once; the old one works for {}",
        a.id,
        format_duration(a.overlap)
    );
    Ok(())
}

fn set_status(a: &IdArgs, status: TokenStatus) -> Result<(), String> {
    let (_, tokens_path) = token_context(&a.config)?;
    crate::token::update_tokens_file(&tokens_path, |f| {
        let t = f
            .tokens
            .iter_mut()
            .find(|t| t.id == a.id)
            .ok_or_else(|| format!("no token with id {:?}", a.id))?;
        if t.status == TokenStatus::Revoked && status != TokenStatus::Revoked {
            return Err(format!("token {:?} is revoked; revocation is final", a.id));
        }
        t.status = status;
        Ok(())
    })?;
    eprintln!("token {:?} is now {}", a.id, status.as_str());
    Ok(())
}
