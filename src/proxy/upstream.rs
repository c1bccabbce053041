//! A legacy SCIM backend: where requests go, the credential they carry, and the pooled client
//! that carries them.

use crate::config::{Config, Problems, UpstreamSection};
use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type UpstreamClient = Client<HttpsConnector, Full<Bytes>>;

static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One backend.
pub struct Upstream {
    /// `scheme://authority`, e.g. `http://127.0.0.1:8080`.
    pub origin: Box<str>,
    /// Path of the SCIM root without a trailing slash, e.g. `/scim/v2`.
    pub base_path: Box<str>,
    /// `origin + base_path`: the prefix of every URL the backend writes about itself.
    pub base_url: Box<str>,
    /// The gateway's own credential for the backend; never logged.
    authorization: Option<HeaderValue>,
    /// The `Host` every request carries, built once instead of by the pooled client on every
    /// request; `None` leaves it to the client (see [`host_header`]).
    host: Option<HeaderValue>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// `upstream.conditional_writes`: the backend honours `If-Match` on user writes.
    pub conditional_writes: bool,
    /// Unique to this configuration of the backend (every policy compile builds new ones):
    /// what the gateway cached about users is keyed by it, so nothing read from one backend
    /// stands for another after a reload.
    pub generation: u64,
    /// One pool per shard ([`crate::shard`]): a shard's requests use connections its own
    /// runtime drives.
    clients: Box<[UpstreamClient]>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Upstream {
    pub fn new(
        cfg: &Config,
        section: &UpstreamSection,
        authorization: Option<&str>,
    ) -> Result<Self, Problems> {
        let problem = |msg: String| Problems::single(&cfg.path, msg);
        let uri: Uri = section
            .url
            .parse()
            .map_err(|e| problem(format!("upstream.url: {e}")))?;
        let scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let origin = format!("{scheme}://{authority}");
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host = host_header(&uri);
        let authorization = match authorization {
            Some(v) => {
                let mut hv = HeaderValue::from_str(v).map_err(|_| {
                    problem("upstream.authorization: not a valid header value".into())
                })?;
                hv.set_sensitive(true);
                Some(hv)
            }
            None => None,
        };
        let ca = section.ca.as_ref().map(|p| cfg.resolve(p));
        let clients = build_clients(ca.as_deref(), crate::shard::count())
            .map_err(problem)?
            .into_boxed_slice();
        Ok(Upstream {
            base_url: format!("{origin}{base_path}").into(),
            origin: origin.into(),
            base_path: base_path.into(),
            authorization,
            host,
            timeout: section.timeout.0,
            max_response_bytes: section.max_response_bytes,
            conditional_writes: section.conditional_writes,
            generation: NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            clients,
        })
    }

    /// The pooled client of the current shard.
    #[inline]
    pub fn client(&self) -> &UpstreamClient {
        &self.clients[crate::shard::current() % self.clients.len()]
    }

    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// The `Host` header for requests to this backend.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    pub(crate) fn authorization_matches(&self, other: Option<&str>) -> bool {
        self.authorization.as_ref().map(|h| h.as_bytes()) == other.map(str::as_bytes)
    }
}

/// The `Host` header hyper-util's client would write for `uri` (`host`, and `:port` unless it
/// is the scheme's default), but only when it is the URL's authority as written: an HTTP/2
/// backend also gets the authority as `:authority`, and the two must never differ (RFC 9113
/// §8.3.1). A URL that spells out its default port or carries user information gets `None`,
/// and the client sets `Host` itself, on HTTP/1 only, as it always did.
pub(crate) fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?.as_str();
    let host = uri.host().filter(|h| !h.is_empty())?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    if value != authority {
        return None;
    }
    HeaderValue::from_str(&value).ok()
}

/// A pooled HTTP/1.1 and HTTP/2 client; https upstreams are verified against `ca` or, without
/// it, the bundled web PKI roots.
pub fn build_client(ca: Option<&std::path::Path>) -> Result<UpstreamClient, String> {
    build_clients(ca, 1)?
        .pop()
        .ok_or_else(|| "no client".to_owned())
}

/// `n` clients with separate pools over one TLS configuration and connector (one per shard).
pub fn build_clients(
    ca: Option<&std::path::Path>,
    n: usize,
) -> Result<Vec<UpstreamClient>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in crate::tls::read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok((0..n.max(1))
        .map(|_| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .build(https.clone())
        })
        .collect())
}
