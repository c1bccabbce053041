//! Reads the backend on the gateway's own behalf: the stored user behind a PUT, PATCH or DELETE
//! (its address attributes, cached in moka by tenant and id, invalidated by writes through the
//! gateway), group members, and list pages. Requests go through the same inner stack as client requests.

use super::{ClientConn, GatewayResponse, Routed};
use crate::policy::route::{Endpoint, OpKind, Operation, ResourceType};
use crate::policy::Tenant;
use crate::scim::error::GatewayError;
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use moka::sync::Cache;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};

/// How long a stored user is trusted without asking the backend again.
const USER_TTL: Duration = Duration::from_secs(30);
const USER_CAPACITY: u64 = 100_000;

/// The shared user cache: each user's address projection
/// ([`crate::policy::user::address_projection`]), a few hundred bytes rather than its tree.
pub struct Directory {
    users: Cache<UserKey, Arc<StoredUser>>,
}

/// A user as one backend stores it: the tenant, the backend as configured when it was read
/// ([`crate::proxy::upstream::Upstream::generation`]: a reload that repoints a tenant starts
/// afresh) and the id.
type UserKey = (Arc<str>, u64, Box<str>);

fn key(tenant: &Tenant, id: &str) -> UserKey {
    (tenant.id.clone(), tenant.upstream.generation, id.into())
}

/// A stored user as the gateway judges it.
#[derive(Debug)]
pub struct StoredUser {
    /// Its address projection: enough to judge it and to simulate a PATCH on it.
    pub projection: Value,
    /// The `ETag` the backend answered with, if any: the version a write judged on this copy
    /// is pinned to (`If-Match`), when the backend honours that (`upstream.conditional_writes`).
    pub version: Option<HeaderValue>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            users: Cache::builder()
                .max_capacity(USER_CAPACITY)
                .time_to_live(USER_TTL)
                .build(),
        }
    }
}

impl Directory {
    pub fn invalidate(&self, tenant: &Tenant, id: &str) {
        self.users.invalidate(&key(tenant, id));
    }

    /// The cached copy of a user, if any, without asking the backend.
    pub fn cached(&self, tenant: &Tenant, id: &str) -> Option<Arc<StoredUser>> {
        self.users.get(&key(tenant, id))
    }

    /// Caches what the backend answered a write with: the user as stored, at `version`.
    pub fn remember(&self, tenant: &Tenant, id: &str, user: StoredUser) {
        self.users.insert(key(tenant, id), Arc::new(user));
    }
}

/// What the gateway's own requests carry over from the client's: the tenant, the host (for
/// URLs in the answers) and the connection facts.
#[derive(Clone)]
pub struct Origin {
    pub tenant: Arc<Tenant>,
    pub host: Option<HeaderValue>,
    pub conn: Option<ClientConn>,
    pub request_id: Option<HeaderValue>,
    /// The client request's log record: the backend statuses of lookups are noted on it.
    pub record: Option<super::access_log::RecordHandle>,
}

impl Origin {
    pub fn of<B>(req: &Request<B>, tenant: Arc<Tenant>) -> Self {
        Origin {
            tenant,
            host: req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            conn: req.extensions().get::<ClientConn>().cloned(),
            request_id: req.headers().get(&super::request_id::X_REQUEST_ID).cloned(),
            record: req
                .extensions()
                .get::<super::access_log::RecordHandle>()
                .cloned(),
        }
    }

    /// Builds a gateway-originated request for `op`.
    pub fn request(
        &self,
        method: Method,
        op: Operation,
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Request<Bytes> {
        let mut req = Request::new(body.map(Bytes::from).unwrap_or_default());
        *req.method_mut() = method;
        let uri = if query.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{query}")
        };
        *req.uri_mut() = uri.parse().unwrap_or_default();
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(crate::scim::SCIM_JSON),
        );
        if !req.body().is_empty() {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::scim::SCIM_JSON),
            );
        }
        if let Some(host) = &self.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        if let Some(id) = &self.request_id {
            req.headers_mut()
                .insert(super::request_id::X_REQUEST_ID.clone(), id.clone());
        }
        if let Some(c) = &self.conn {
            req.extensions_mut().insert(c.clone());
        }
        if let Some(r) = &self.record {
            req.extensions_mut().insert(r.clone());
        }
        req.extensions_mut().insert(Routed {
            tenant: self.tenant.clone(),
            op,
        });
        req
    }
}

/// Sends a gateway-originated request through `inner`.
pub async fn call<S>(inner: &S, req: Request<Bytes>) -> Result<GatewayResponse, BoxError>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = BoxError> + Clone,
{
    inner.clone().oneshot(req).await
}

/// Reads a response body as JSON.
pub async fn json_of(resp: GatewayResponse) -> Result<(StatusCode, Value), BoxError> {
    let status = resp.status();
    let v = parse_body(resp, |b| serde_json::from_slice(b)).await?;
    Ok((status, v))
}

/// Reads a backend answer's body with `parse`; unreadable is a 502, never a pass.
async fn parse_body(
    resp: GatewayResponse,
    parse: impl FnOnce(&[u8]) -> Result<Value, serde_json::Error>,
) -> Result<Value, GatewayError> {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    parse(&bytes).map_err(|_| GatewayError::UpstreamInvalid("the backend's answer is not JSON"))
}

fn get_op(rt: ResourceType, id: &str) -> Operation {
    Operation {
        endpoint: Endpoint::Resource(rt),
        kind: OpKind::Get,
        id: Some(id.into()),
    }
}

/// The stored user with `id`, or `None` when the backend has none. `fresh` skips the cache
/// (write decisions); the answer refreshes it either way.
pub async fn user<S>(
    dir: &Directory,
    inner: &S,
    origin: &Origin,
    id: &str,
    fresh: bool,
) -> Result<Option<Arc<StoredUser>>, BoxError>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = BoxError> + Clone,
{
    let key = key(&origin.tenant, id);
    if !fresh {
        if let Some(v) = dir.users.get(&key) {
            return Ok(Some(v));
        }
    }
    let resp = call(
        inner,
        origin.request(Method::GET, get_op(ResourceType::User, id), "", None),
    )
    .await?;
    match resp.status() {
        StatusCode::OK => {
            let version = resp
                .headers()
                .get(header::ETAG)
                .filter(|v| crate::scim::etag::is_entity_tag(v))
                .cloned();
            // Only what judging needs is kept: the address attributes, never the whole tree.
            let projection = parse_body(resp, crate::policy::user::address_projection).await?;
            let v = Arc::new(StoredUser {
                projection,
                version,
            });
            dir.users.insert(key, v.clone());
            Ok(Some(v))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(GatewayError::UpstreamInvalid("the backend refused the gateway's lookup").into()),
    }
}

/// The stored group with `id`, or `None`.
pub async fn group<S>(inner: &S, origin: &Origin, id: &str) -> Result<Option<Value>, BoxError>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = BoxError> + Clone,
{
    let resp = call(
        inner,
        origin.request(Method::GET, get_op(ResourceType::Group, id), "", None),
    )
    .await?;
    match resp.status() {
        StatusCode::OK => Ok(Some(json_of(resp).await?.1)),
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(GatewayError::UpstreamInvalid("the backend refused the gateway's lookup").into()),
    }
}
