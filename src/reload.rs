//! Hot reload: the configuration, the token file and the certificates are re-read on SIGHUP and
//! whenever one of them changes on disk (notify), and a new policy snapshot is swapped in
//! atomically. In-flight requests finish on the snapshot they started with. An invalid change
//! is refused with its `file:line: key` problems in the log, and the last good policy keeps
//! serving.

use crate::config::{self, Config, Problems};
use crate::policy::{Policy, PolicyHandle};
use crate::token::usage::UsageStore;
use crate::token::{Entry, TokenIndex};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The SIGHUP stream.
#[cfg(unix)]
pub type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
pub type Hangup = std::convert::Infallible;

/// Registers for SIGHUP now (before the default action can end the process).
pub fn hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Tokens this close to expiry are warned about at every load.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The live TLS configuration, swapped on reload; each new connection reads it once.
pub type TlsHandle = Arc<ArcSwap<rustls::ServerConfig>>;

/// Builds the TLS configuration a validated configuration names.
pub fn tls_for(cfg: &Config) -> Result<Arc<rustls::ServerConfig>, String> {
    let s = &cfg.gateway.server;
    crate::tls::server_config(
        &cfg.resolve(&s.tls.cert),
        &cfg.resolve(&s.tls.key),
        s.tls.client_ca.as_ref().map(|p| cfg.resolve(p)).as_deref(),
    )
    .map_err(|e| format!("{}: server.tls: {e}", cfg.path.display()))
}

/// Logs tokens that expire within [`EXPIRY_WARNING`]: one expired token can stop provisioning.
pub fn warn_expiring(cfg: &Config) {
    let now = crate::proxy::unix_now();
    let mut soon = 0;
    for t in &cfg.tokens.tokens {
        if t.status != config::TokenStatus::Active {
            continue;
        }
        if let Some(exp) = t.expires_at.map(|e| e.unix()) {
            if exp > now && exp - now <= EXPIRY_WARNING.as_secs() {
                soon += 1;
                tracing::warn!(token_id = %t.id, tenant = %t.tenant, expires_at = %t.expires_at.map(|e| e.to_string()).unwrap_or_default(), days_left = (exp - now) / 86_400, "token expires soon; rotate it");
            }
        }
    }
    crate::metrics::METRICS.tokens_expiring.set(soon);
}

/// Administrative events a new token file implies, as `(event, token id)`, judged against the
/// policy it replaces (which holds no copy of the old file).
pub fn token_changes(before: &TokenIndex, after: &Config) -> Vec<(&'static str, String)> {
    use config::TokenStatus::*;
    // By id, so a file of a hundred thousand tokens diffs in linear time.
    let old: std::collections::HashMap<&str, Entry<'_>> =
        before.entries().map(|b| (b.id(), b)).collect();
    let new: HashSet<&str> = after.tokens.tokens.iter().map(|t| t.id.as_str()).collect();
    let mut out = Vec::new();
    for t in &after.tokens.tokens {
        match old.get(t.id.as_str()) {
            None => out.push(("token_issued", t.id.clone())),
            Some(b) => {
                if !b.has_digest(&t.sha256) {
                    out.push(("token_rotated", t.id.clone()));
                }
                match (b.status(), t.status) {
                    (x, y) if x == y => {}
                    (_, Revoked) => out.push(("token_revoked", t.id.clone())),
                    (_, Suspended) => out.push(("token_suspended", t.id.clone())),
                    (_, Active) => out.push(("token_resumed", t.id.clone())),
                }
            }
        }
    }
    for b in before.entries() {
        if !new.contains(b.id()) {
            out.push(("token_removed", b.id().to_owned()));
        }
    }
    out
}

/// The files whose change triggers a reload (configuration, tokens, certificates), by
/// directory.
pub fn watch_list(
    config_path: &std::path::Path,
    cfg: &Config,
) -> Vec<(PathBuf, HashSet<OsString>)> {
    let s = &cfg.gateway.server;
    let mut files = vec![
        config_path.to_owned(),
        cfg.tokens_path.clone(),
        cfg.resolve(&s.tls.cert),
        cfg.resolve(&s.tls.key),
    ];
    files.extend(s.tls.client_ca.as_ref().map(|p| cfg.resolve(p)));
    dirs_of(&files)
}

/// Everything a reload replaces.
pub struct Reloader {
    pub config_path: PathBuf,
    pub policy: PolicyHandle,
    pub tls: TlsHandle,
    pub runtime: crate::policy::Runtime,
    /// The listen addresses of the running server: changing them needs a restart.
    pub listen: (std::net::SocketAddr, Option<std::net::SocketAddr>),
    /// What to watch: [`watch_list`] of the configuration at start.
    pub watched: Vec<(PathBuf, HashSet<OsString>)>,
}

impl Reloader {
    /// Loads, validates and swaps in the configuration on disk. Returns whether it took effect.
    /// Blocking (a large token file takes a while to read): run it off the async workers.
    pub fn reload(&self) -> bool {
        let _bulk = crate::memory::Bulk::begin();
        let before_tokens = self.policy.load().version.clone();
        let m = &crate::metrics::METRICS;
        let started = std::time::Instant::now();
        match self.try_reload() {
            Ok((cfg, old)) => {
                let changes = token_changes(&old.tokens, &cfg);
                tracing::info!(
                    policy_version = %cfg.version,
                    tokens = cfg.tokens.tokens.len(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "policy reloaded"
                );
                m.reloads
                    .get_or_create(&crate::metrics::ResultLabels { result: "success" })
                    .inc();
                self.admin_event(
                    "policy_reloaded",
                    Some(format!("{} -> {}", before_tokens, cfg.version)),
                );
                for (event, id) in changes {
                    self.admin_event(event, Some(id));
                }
                warn_expiring(&cfg);
                drop(cfg);
                release(old);
                true
            }
            Err(problems) => {
                m.reloads
                    .get_or_create(&crate::metrics::ResultLabels { result: "failure" })
                    .inc();
                for p in &problems.0 {
                    tracing::error!(problem = %p, "configuration refused; the last good policy keeps serving");
                }
                self.admin_event("policy_refused", Some(problems.to_string()));
                false
            }
        }
    }

    fn admin_event(&self, event: &'static str, detail: Option<String>) {
        if let Some(audit) = &self.runtime.audit {
            let policy = self.policy.load();
            audit.try_send(crate::audit::Record {
                kind: "admin",
                event: Some(event),
                detail,
                policy_version: Some(policy.version.clone()),
                ..Default::default()
            });
        }
    }

    fn try_reload(&self) -> Result<(Config, Arc<Policy>), Problems> {
        let cfg = config::load(&self.config_path)?;
        let policy = Policy::compile_with(&cfg, &self.runtime)?;
        let tls = tls_for(&cfg).map_err(|e| Problems::single(&cfg.path, e))?;
        if (cfg.gateway.server.listen, cfg.gateway.admin_listen) != self.listen {
            tracing::warn!("listen addresses changed; they take effect on restart");
        }
        self.tls.store(tls);
        let tokens = policy.tokens.clone();
        // Uses made while compiling count from the new policy's first request; those between
        // this and the swap are carried over by `adopt` after it.
        self.runtime.usage.carry(&tokens);
        let old = self.policy.swap(Arc::new(policy));
        self.runtime.usage.adopt(&tokens);
        Ok((cfg, old))
    }

    /// Reloads on SIGHUP and on changes to the watched files until `shutdown` resolves.
    /// `hup` is the SIGHUP stream, registered by the caller before the gateway announces itself,
    /// so a SIGHUP right after start reloads instead of ending the process.
    /// `watching` is told once the files are watched, so the gateway announces readiness
    /// only when a change to them can no longer be missed.
    pub async fn run(
        self: Arc<Self>,
        hup: Option<Hangup>,
        watching: tokio::sync::oneshot::Sender<()>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watched = self.watched.clone();
        let names: Vec<(PathBuf, HashSet<OsString>)> = watched.clone();
        let watch_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Reading a file (as a reload does) raises access events: only changes count.
                let change = matches!(
                    ev.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(_)
                        | notify::EventKind::Remove(_)
                );
                let relevant = change
                    && ev.paths.iter().any(|p| {
                        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                            return false;
                        };
                        names
                            .iter()
                            .any(|(d, files)| d == dir && files.contains(name))
                    });
                if relevant {
                    let _ = watch_tx.send(());
                }
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                for (dir, _) in &watched {
                    if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; use SIGHUP to reload");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; use SIGHUP to reload");
                None
            }
        };
        let _ = watching.send(());
        if let Some(mut hup) = hup {
            let hup_tx = tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = hup_tx.send(());
                }
            });
        }
        drop(tx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                got = rx.recv() => {
                    if got.is_none() { return; }
                    // Editors and `scimgate token` write in several steps: let them settle.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
            }
        }
    }
}

/// Frees a replaced policy once the requests still judged by it are done, on a thread of its
/// own: dropping a hundred thousand tokens takes tens of milliseconds that no request should
/// wait for. Gives up waiting (and frees it wherever it is last released) after a minute.
fn release(old: Arc<Policy>) {
    let spawned = std::thread::Builder::new()
        .name("scimgate-release".into())
        .spawn(move || {
            for _ in 0..600 {
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _bulk = crate::memory::Bulk::begin();
            drop(old);
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start a thread to free the old policy");
    }
}

fn dirs_of(files: &[PathBuf]) -> Vec<(PathBuf, HashSet<OsString>)> {
    let mut out: Vec<(PathBuf, HashSet<OsString>)> = Vec::new();
    for f in files {
        let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
        let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
            continue;
        };
        match out.iter_mut().find(|(d, _)| d == dir) {
            Some((_, names)) => {
                names.insert(name.to_owned());
            }
            None => out.push((dir.to_owned(), HashSet::from([name.to_owned()]))),
        }
    }
    out
}

/// Writes the usage store every 10 s until `shutdown`, then once more.
pub async fn flush_usage(usage: Arc<UsageStore>, shutdown: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => flush_off_workers(&usage).await,
        }
    }
    flush_off_workers(&usage).await;
}

async fn flush_off_workers(usage: &Arc<UsageStore>) {
    let usage = usage.clone();
    let result = tokio::task::spawn_blocking(move || usage.flush()).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write token usage"),
        Err(e) => tracing::warn!(error = %e, "the token usage writer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenStatus;
    use crate::policy::scope::Scope;

    #[test]
    fn token_changes_name_each_change_by_id_against_the_replaced_policy() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::test_util::write_config(dir.path(), "127.0.0.1:9".parse().unwrap(), "x");
        for id in [
            "kept",
            "revoked",
            "rotated",
            "removed",
            "suspended",
            "resumed",
        ] {
            crate::test_util::add_token(&cfg, id, "acme", &[Scope::UsersRead], None);
        }
        crate::token::update_tokens_file(&cfg.with_file_name("tokens.yaml"), |f| {
            f.tokens[5].status = TokenStatus::Suspended;
            Ok(())
        })
        .unwrap();
        let before = crate::test_util::load_policy(&cfg);
        crate::test_util::add_token(&cfg, "issued", "acme", &[Scope::UsersRead], None);
        crate::token::update_tokens_file(&cfg.with_file_name("tokens.yaml"), |f| {
            f.tokens[1].status = TokenStatus::Revoked;
            f.tokens[2].sha256 = "ab".repeat(32);
            f.tokens[4].status = TokenStatus::Suspended;
            f.tokens[5].status = TokenStatus::Active;
            f.tokens.remove(3);
            Ok(())
        })
        .unwrap();
        let after = config::load(&cfg).unwrap_or_else(|p| panic!("{p}"));
        let mut got = token_changes(&before.tokens, &after);
        got.sort();
        let want = [
            ("token_issued", "issued"),
            ("token_removed", "removed"),
            ("token_resumed", "resumed"),
            ("token_revoked", "revoked"),
            ("token_rotated", "rotated"),
            ("token_suspended", "suspended"),
        ];
        let want: Vec<(&str, String)> = want.iter().map(|(e, i)| (*e, i.to_string())).collect();
        assert_eq!(got, want);
    }
}
