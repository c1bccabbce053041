//! The request path: a stack of tower layers, outermost first, each in its own file and named
//! for what it adds.
//!
//! ```text
//! access_log        one JSON line per request, whatever happens below
//! drain_unread_body a body left unread below is drained in the background (no reset)
//! strip_hop_by_hop  the client's hop-by-hop headers, and those its Connection names, go
//! request_id        X-Request-Id: kept when sane, generated otherwise, echoed on the response
//! scim_errors       every refusal below becomes a SCIM error response, here and only here
//! snapshot_policy   the live policy is read once, so a reload never splits a request
//! limit_request_time the whole request is bounded in time (504 beyond)
//! normalize_path    the path is normalised once; that path is checked and forwarded
//! throttle_auth     an address that keeps failing authentication gets 429 before any lookup
//! authenticate      bearer token → token entry (401 otherwise)
//! route_tenant      path prefix → tenant and SCIM operation; the token must be the tenant's
//! authorize_scope   the operation needs a scope the token holds (403 otherwise)
//! rate_limit        token and tenant rates (429), concurrency bounds (503)
//! read_body         body buffered within limits; media type and encoding checked
//! enforce_domains   bodies, stored users, lists and members kept inside the token's domains
//! rewrite_locations backend URLs in headers and bodies become the gateway's
//! forward           the pooled upstream call with the gateway's own credential
//! ```

pub mod access_log;
pub mod authenticate;
pub mod authorize_scope;
pub mod directory;
pub mod drain_unread_body;
pub mod enforce_domains;
pub mod forward;
pub mod limit_request_time;
pub mod normalize_path;
pub mod rate_limit;
pub mod read_body;
pub mod request_id;
pub mod rewrite_locations;
pub mod route_tenant;
pub mod scim_errors;
pub mod snapshot_policy;
pub mod strip_hop_by_hop;
pub mod throttle_auth;
pub mod upstream;

use crate::policy::route::Operation;
use crate::policy::{Policy, PolicyHandle, Tenant};
use crate::token::TokenRef;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::{Service, ServiceBuilder};

/// Every response the gateway writes: buffered, so bodies can be inspected and rewritten.
pub type GatewayResponse = Response<Full<Bytes>>;

/// Facts about the client connection, put on each request by the server.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub remote: SocketAddr,
    /// The gateway's own address on this connection (fallback for the public URL).
    pub local: SocketAddr,
    /// Whether the client presented a verified certificate (mTLS).
    pub client_cert: bool,
    /// The verified client certificate's subject, for the audit trail.
    pub client_cert_subject: Option<Arc<str>>,
    /// `X-Forwarded-For` for the backend: the remote address, written once per connection.
    pub forwarded_for: Option<http::HeaderValue>,
}

impl ClientConn {
    pub fn new(
        remote: SocketAddr,
        local: SocketAddr,
        client_cert: bool,
        client_cert_subject: Option<Arc<str>>,
    ) -> Self {
        ClientConn {
            remote,
            local,
            client_cert,
            client_cert_subject,
            forwarded_for: http::HeaderValue::try_from(remote.ip().to_string()).ok(),
        }
    }
}

/// The policy snapshot this request is judged by.
#[derive(Clone)]
pub struct Snapshot(pub Arc<Policy>);

/// The normalised path (without query).
#[derive(Debug, Clone)]
pub struct NormalizedPath(pub String);

/// The authenticated token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub TokenRef);

/// The routed request: its tenant and its SCIM operation.
#[derive(Debug, Clone)]
pub struct Routed {
    pub tenant: Arc<Tenant>,
    pub op: Operation,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds the gateway's service over a bodied request type, so tests and benches can drive it
/// without a network.
pub fn stack<B>(
    policy: PolicyHandle,
) -> impl Service<
    Request<B>,
    Response = GatewayResponse,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    ServiceBuilder::new()
        .layer(access_log::layer())
        .layer(drain_unread_body::layer())
        .layer(strip_hop_by_hop::layer())
        .layer(request_id::layer())
        .layer(scim_errors::layer())
        .layer(snapshot_policy::layer(policy))
        .layer(limit_request_time::layer())
        .layer(normalize_path::layer())
        .layer(throttle_auth::layer())
        .layer(authenticate::layer())
        .layer(route_tenant::layer())
        .layer(authorize_scope::layer())
        .layer(rate_limit::layer())
        .layer(read_body::layer())
        .layer(enforce_domains::layer())
        .layer(rewrite_locations::layer())
        .service(forward::Forward)
}

#[cfg(test)]
mod tests;
