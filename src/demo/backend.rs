//! A small in-memory SCIM backend: enough of RFC 7644 (create, get, list with an `eq` filter,
//! `.search`, replace, simple PATCH, delete, ServiceProviderConfig) for the demo, unit tests
//! and benchmarks. The end-to-end tests use the real `scim2-server` instead.

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The backend's state: resources by type and id, and the credential it demands.
pub struct MemoryScim {
    credential: String,
    base: String,
    next: AtomicU64,
    store: Mutex<BTreeMap<(&'static str, String), Value>>,
}

impl MemoryScim {
    /// `base` is the SCIM root path, e.g. `/scim/v2`.
    pub fn new(base: &str, credential: &str) -> Arc<Self> {
        Arc::new(MemoryScim {
            credential: credential.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            next: AtomicU64::new(1),
            store: Mutex::new(BTreeMap::new()),
        })
    }

    /// Number of stored resources of a type (`Users`, `Groups`).
    pub fn count(&self, kind: &str) -> usize {
        self.store
            .lock()
            .map(|s| s.keys().filter(|(k, _)| *k == kind).count())
            .unwrap_or(0)
    }

    /// Every stored resource of a type.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        self.store
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|((k, _), _)| *k == kind)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Handles one request (body already read).
    pub fn handle(
        &self,
        method: &Method,
        path_and_query: &str,
        host: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, Option<Value>, Option<String>) {
        if authorization != Some(self.credential.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "bad credential");
        }
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let Some(rest) = path.strip_prefix(&self.base) else {
            return error(StatusCode::NOT_FOUND, "unknown path");
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let kind: &'static str = match segs.first().copied() {
            Some("Users") => "Users",
            Some("Groups") => "Groups",
            Some("ServiceProviderConfig") => {
                return (StatusCode::OK, Some(service_provider_config()), None);
            }
            _ => return error(StatusCode::NOT_FOUND, "unknown endpoint"),
        };
        let body: Option<Value> = if body.is_empty() {
            None
        } else {
            serde_json::from_slice(body).ok()
        };
        let location = |id: &str| format!("http://{host}{}/{kind}/{id}", self.base);
        let Ok(mut store) = self.store.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
        };
        match (method.as_str(), segs.get(1).copied()) {
            ("POST", None) => {
                let Some(Value::Object(mut obj)) = body else {
                    return error(StatusCode::BAD_REQUEST, "invalid body");
                };
                let id = format!("{:016x}", self.next.fetch_add(1, Ordering::Relaxed));
                obj.insert("id".into(), json!(id));
                obj.insert("meta".into(), meta(kind, &location(&id)));
                let v = Value::Object(obj);
                store.insert((kind, id.clone()), v.clone());
                (StatusCode::CREATED, Some(v), Some(location(&id)))
            }
            ("GET", None) => {
                let filter = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("filter="))
                    .map(|f| {
                        percent_encoding::percent_decode_str(&f.replace('+', " "))
                            .decode_utf8_lossy()
                            .into_owned()
                    });
                let found: Vec<Value> = store
                    .iter()
                    .filter(|((k, _), v)| {
                        *k == kind && filter.as_deref().is_none_or(|f| matches_eq(v, f))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (StatusCode::OK, Some(list(found)), None)
            }
            ("POST", Some(".search")) => {
                let filter = body
                    .as_ref()
                    .and_then(|b| b.get("filter"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let found: Vec<Value> = store
                    .iter()
                    .filter(|((k, _), v)| {
                        *k == kind && filter.as_deref().is_none_or(|f| matches_eq(v, f))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (StatusCode::OK, Some(list(found)), None)
            }
            ("GET", Some(id)) => match store.get(&(kind, id.to_owned())) {
                Some(v) => (StatusCode::OK, Some(v.clone()), None),
                None => error(StatusCode::NOT_FOUND, "not found"),
            },
            ("PUT", Some(id)) => {
                let Some(Value::Object(mut obj)) = body else {
                    return error(StatusCode::BAD_REQUEST, "invalid body");
                };
                if !store.contains_key(&(kind, id.to_owned())) {
                    return error(StatusCode::NOT_FOUND, "not found");
                }
                obj.insert("id".into(), json!(id));
                obj.insert("meta".into(), meta(kind, &location(id)));
                let v = Value::Object(obj);
                store.insert((kind, id.to_owned()), v.clone());
                (StatusCode::OK, Some(v), None)
            }
            ("PATCH", Some(id)) => {
                let Some(current) = store.get_mut(&(kind, id.to_owned())) else {
                    return error(StatusCode::NOT_FOUND, "not found");
                };
                let ops = body
                    .as_ref()
                    .and_then(|b| b.get("Operations"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for op in ops {
                    apply_patch(current, &op);
                }
                (StatusCode::OK, Some(current.clone()), None)
            }
            ("DELETE", Some(id)) => match store.remove(&(kind, id.to_owned())) {
                Some(_) => (StatusCode::NO_CONTENT, None, None),
                None => error(StatusCode::NOT_FOUND, "not found"),
            },
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    /// Serves the backend on `listener` (plain HTTP/1.1) until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.respond(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let (status, value, location) = self.handle(&parts.method, pq, host, auth, &body);
        let bytes = value
            .map(|v| serde_json::to_vec(&v).unwrap_or_default())
            .unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = status;
        if status != StatusCode::NO_CONTENT {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/scim+json"),
            );
        }
        if let Some(l) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, l);
        }
        resp
    }
}

/// Starts a backend on a free loopback port; returns its state and SCIM root URL.
pub async fn spawn(base: &str, credential: &str) -> std::io::Result<(Arc<MemoryScim>, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let scim = MemoryScim::new(base, credential);
    tokio::spawn(scim.clone().serve(listener));
    Ok((scim, addr))
}

fn error(status: StatusCode, detail: &str) -> (StatusCode, Option<Value>, Option<String>) {
    (
        status,
        Some(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": status.as_str(), "detail": detail}),
        ),
        None,
    )
}

fn meta(kind: &str, location: &str) -> Value {
    json!({"resourceType": kind.trim_end_matches('s'), "location": location, "version": "W/\"1\""})
}

fn list(found: Vec<Value>) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": found.len(),
        "startIndex": 1,
        "itemsPerPage": found.len(),
        "Resources": found,
    })
}

/// `attr eq "value"` on a top-level string attribute, case-insensitively on the name.
fn matches_eq(v: &Value, filter: &str) -> bool {
    let mut it = filter.splitn(3, ' ');
    let (Some(attr), Some(op), Some(val)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    if !op.eq_ignore_ascii_case("eq") {
        return false;
    }
    let want = val.trim_matches('"');
    v.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)))
        .and_then(|(_, v)| v.as_str())
        .is_some_and(|s| s.eq_ignore_ascii_case(want))
}

fn apply_patch(target: &mut Value, op: &Value) {
    let kind = op
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let path = op.get("path").and_then(Value::as_str);
    let value = op.get("value").cloned().unwrap_or(Value::Null);
    let Some(obj) = target.as_object_mut() else {
        return;
    };
    match (kind.as_str(), path) {
        ("add" | "replace", None) => {
            if let Value::Object(m) = value {
                merge(obj, m);
            }
        }
        ("add" | "replace", Some(p)) => {
            obj.insert(p.to_owned(), value);
        }
        ("remove", Some(p)) => {
            obj.remove(p);
        }
        _ => {}
    }
}

fn merge(obj: &mut Map<String, Value>, m: Map<String, Value>) {
    for (k, v) in m {
        obj.insert(k, v);
    }
}

fn service_provider_config() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": 200},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "OAuth Bearer Token", "description": "Bearer token"}],
    })
}
