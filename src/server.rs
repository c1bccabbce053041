//! Serving: one TLS accept loop per shard ([`crate::shard`], a single-threaded runtime per
//! core, all accepting from one socket), one hyper connection (HTTP/1.1 or h2 by ALPN) per
//! client, graceful shutdown that lets in-flight requests finish, and the `serve` entry point.

use crate::admin::{self, Health};
use crate::config::Config;
use crate::policy::{self, Policy, PolicyHandle};
use crate::proxy::{self, ClientConn};
use crate::reload::{self, Reloader, TlsHandle};
use crate::token::usage::UsageStore;
use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    pub fn from_config(cfg: &Config) -> Self {
        ServeOptions {
            header_read_timeout: cfg.gateway.server.header_read_timeout.0,
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: cfg.gateway.server.shutdown_grace.0,
        }
    }
}

/// Accepts TLS connections on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (up to `shutdown_grace`) and returns.
pub async fn run_gateway(
    listener: TcpListener,
    tls: TlsHandle,
    policy: PolicyHandle,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    run_shard(listener, None, tls, policy, opts, shutdown).await
}

/// This shard's place among the others: its number, the balancer, and its inbox.
pub struct ShardSeat {
    pub index: usize,
    pub balancer: Arc<crate::shard::Balancer>,
    pub inbox: tokio::sync::mpsc::UnboundedReceiver<crate::shard::Handoff>,
}

/// [`run_gateway`] as one of several shards: a connection accepted here is served by the
/// shard serving the fewest, and connections other shards hand over arrive in the inbox.
pub async fn run_shard(
    listener: TcpListener,
    mut seat: Option<ShardSeat>,
    tls: TlsHandle,
    policy: PolicyHandle,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let stack = proxy::stack::<Incoming>(policy);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    tokio::pin!(shutdown);
    loop {
        let handed = async {
            match seat.as_mut() {
                Some(s) => s.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (tcp, remote, open) = tokio::select! {
            _ = &mut shutdown => break,
            Some(h) = handed => match h.tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(h.tcp)) {
                Ok(tcp) => (tcp, h.remote, Some(h.open)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over a connection");
                    continue;
                }
            },
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => match &seat {
                    None => (tcp, remote, None),
                    Some(seat) => {
                        let (to, open) = seat.balancer.place(seat.index);
                        if to == seat.index {
                            (tcp, remote, Some(open))
                        } else {
                            // Served by a shard with fewer connections, or here after all if
                            // that shard has stopped meanwhile.
                            let handoff = tcp.into_std().map(|tcp| crate::shard::Handoff { tcp, remote, open });
                            match handoff.map(|h| seat.balancer.hand_off(to, h)) {
                                Ok(Ok(())) => continue,
                                Ok(Err(back)) => match TcpStream::from_std(back.tcp) {
                                    Ok(tcp) => (tcp, remote, Some(seat.balancer.count_on(seat.index))),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cannot serve a connection");
                                        continue;
                                    }
                                },
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot hand a connection over");
                                    continue;
                                }
                            }
                        }
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(remote);
        // Certificates reload without a restart: each connection takes the current ones.
        let acceptor = TlsAcceptor::from(tls.load_full());
        let stack = stack.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = opts.tls_handshake_timeout;
        tokio::spawn(async move {
            let _open = open;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let conn_info = ClientConn::new(
                remote,
                local,
                peer.is_some(),
                peer.and_then(|c| crate::tls::subject(c)).map(Into::into),
            );
            crate::metrics::METRICS.open_connections.inc();
            let _open = scopeguard(|| {
                crate::metrics::METRICS.open_connections.dec();
            });
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(conn_info.clone());
                    req
                })
                .service(stack);
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if let Some(seat) = seat.as_mut() {
        // No more connections come here; those handed over but not yet taken are closed, as
        // a listener closes its backlog.
        seat.balancer.retire(seat.index);
        seat.inbox.close();
        while seat.inbox.try_recv().is_ok() {}
    }
    tracing::info!(
        grace_secs = opts.shutdown_grace.as_secs(),
        "draining in-flight requests"
    );
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with requests still in flight");
    }
}

/// Retires a shard from the balancer when dropped.
struct Retire(Arc<crate::shard::Balancer>, usize);

impl Drop for Retire {
    fn drop(&mut self) {
        self.0.retire(self.1);
    }
}

/// Returns freed memory within a second even when no request comes: on the thread it runs on,
/// so every runtime runs one (mimalloc keeps a thread's empty pages until that thread
/// collects).
async fn collect_memory() {
    let mut tick = tokio::time::interval(crate::memory::COLLECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::memory::collect_expired();
    }
}

/// Runs `f` when dropped (connection gauges).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not on first poll:
/// call it before announcing readiness, so a SIGTERM sent right after `listening` drains the
/// gateway instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `scimgate serve`: builds everything from a validated configuration and runs until a signal,
/// reloading on SIGHUP and on file changes.
/// `bulk` spans the token file's parse: it ends once the parsed files are dropped.
pub async fn serve(
    config_path: std::path::PathBuf,
    cfg: Config,
    bulk: crate::memory::Bulk,
) -> Result<(), String> {
    let base_dir = cfg.path.parent().map(|p| p.to_owned()).unwrap_or_default();
    let runtime = crate::policy::Runtime {
        usage: Arc::new(UsageStore::open(&cfg.state_dir())?),
        limiters: Arc::default(),
        audit: crate::audit::Audit::start(&cfg.gateway.audit, &base_dir)?,
    };
    let usage = runtime.usage.clone();
    let audit = runtime.audit.clone();
    let compiled = Policy::compile_with(&cfg, &runtime).map_err(|p| p.to_string())?;
    let tokens = compiled.tokens.len();
    usage.adopt(&compiled.tokens);
    let policy = policy::handle(compiled);
    let tls: TlsHandle = Arc::new(ArcSwap::new(reload::tls_for(&cfg)?));
    reload::warn_expiring(&cfg);
    let opts = ServeOptions::from_config(&cfg);
    let listen = (cfg.gateway.server.listen, cfg.gateway.admin_listen);
    let version = cfg.version.clone();
    let reloader = Reloader {
        watched: reload::watch_list(&config_path, &cfg),
        config_path,
        policy: policy.clone(),
        tls: tls.clone(),
        runtime,
        listen,
    };
    // The compiled policy is all that serving needs: the parsed files (a large token file's
    // records) are not kept.
    drop(cfg);
    drop(bulk);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let hup = reload::hangup();
    let (watching, watched) = tokio::sync::oneshot::channel();
    let reload_task = tokio::spawn(Arc::new(reloader).run(hup, watching, stopped(stop_rx.clone())));
    // The control runtime runs one task at a time: readiness waits until the files are watched.
    let _ = watched.await;
    let flush_task = tokio::spawn(reload::flush_usage(usage, stopped(stop_rx)));
    let collector = tokio::spawn(collect_memory());
    let result = run(listen.0, listen.1, tls, policy, opts, tokens, &version).await;
    let _ = stop_tx.send(true);
    let _ = reload_task.await;
    let _ = flush_task.await;
    collector.abort();
    if let Some(audit) = audit {
        // Every request has ended: its record reaches the sink before the process exits.
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
    }
    result
}

/// Binds the listeners, announces them, and serves until SIGTERM/SIGINT: the gateway on one
/// shard per core ([`crate::shard`]), the admin endpoints on the calling runtime.
pub async fn run(
    listen: std::net::SocketAddr,
    admin_listen: Option<std::net::SocketAddr>,
    tls: TlsHandle,
    policy: PolicyHandle,
    opts: ServeOptions,
    tokens: usize,
    version: &str,
) -> Result<(), String> {
    let listener = bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let health = Arc::new(Health::default());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_addr = match admin_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (admin_listen): {e}"))?;
            let bound = l.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(admin::run(l, health.clone(), async {
                let _ = admin_stopped.await;
            }));
            Some(bound)
        }
        None => None,
    };
    let signal = shutdown_signal();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shards = spawn_shards(listener, &tls, &policy, &opts, &stop_rx)?;
    health.set_ready(true);
    tracing::info!(
        addr = %addr,
        admin_addr = admin_addr.map(|a| a.to_string()),
        tokens,
        shards = shards.len(),
        policy_version = version,
        "listening"
    );
    signal.await;
    health.set_ready(false);
    tracing::info!("shutdown requested");
    let _ = stop_tx.send(true);
    for done in shards {
        let _ = done.await;
    }
    let _ = stop_admin.send(());
    tracing::info!("stopped");
    Ok(())
}

/// The gateway's listening socket (backlog 1024, like tokio's own `bind`), for every shard to
/// accept from.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Starts one thread per shard, each with its own single-threaded runtime accepting from a
/// duplicate of `listener` until `stop` turns true, then draining. Resolves, per shard, once
/// it has drained.
fn spawn_shards(
    listener: std::net::TcpListener,
    tls: &TlsHandle,
    policy: &PolicyHandle,
    opts: &ServeOptions,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::sync::oneshot::Receiver<()>>, String> {
    let mut done = Vec::new();
    let (balancer, inboxes) = crate::shard::Balancer::new(crate::shard::count());
    for (i, inbox) in inboxes.into_iter().enumerate() {
        let seat = ShardSeat {
            index: i,
            balancer: balancer.clone(),
            inbox,
        };
        let listener = listener
            .try_clone()
            .map_err(|e| format!("cannot share the listening socket: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let (tls, policy, opts, mut stop) =
            (tls.clone(), policy.clone(), opts.clone(), stop.clone());
        let (finished, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("scimgate-shard-{i}"))
            .spawn(move || {
                crate::shard::enter(i);
                // However this thread ends (a failed start, a panic), connections stop coming.
                let _retire = Retire(seat.balancer.clone(), i);
                runtime.block_on(async move {
                    tokio::spawn(collect_memory());
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            run_shard(l, Some(seat), tls, policy, opts, async move {
                                let _ = stop.wait_for(|v| *v).await;
                            })
                            .await
                        }
                        Err(e) => tracing::error!(shard = i, error = %e, "shard cannot accept"),
                    }
                });
                let _ = finished.send(());
            })
            .map_err(|e| format!("cannot start a shard thread: {e}"))?;
        done.push(rx);
    }
    Ok(done)
}
