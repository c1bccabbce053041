//! Path normalisation, tenant routing and SCIM endpoint classification: from a raw request path
//! to the tenant and the one operation it names. Pure functions, no I/O.

use http::Method;
use std::borrow::Cow;

/// Why a path cannot be routed. Each maps to one SCIM status in `scim::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the request path is malformed: {0}")]
    BadPath(&'static str),
    #[error("no SCIM endpoint at this path")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0} is not supported by this gateway")]
    NotImplemented(&'static str),
}

/// Normalises a request path once (RFC 3986 §6.2.2): percent-encoded unreserved characters are
/// decoded, other escapes upper-cased, dot segments resolved, empty segments (repeated and
/// trailing slashes) removed. Encodings that different servers read differently (`%2F`, `%5C`,
/// `%00`, backslashes, `;` path parameters, control characters) are refused outright, so the
/// path that is checked is exactly the path the backend will see.
pub fn normalize_path(raw: &str) -> Result<String, RouteError> {
    if !raw.starts_with('/') {
        return Err(RouteError::BadPath("it must start with '/'"));
    }
    let decoded = decode_path(raw)?;
    // Most paths are already normal: one copy, no segment list.
    if is_normal(&decoded) {
        return Ok(decoded.into_owned());
    }
    let mut out: Vec<&str> = Vec::with_capacity(8);
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Whether a decoded path (starting with `/`) is already normal: `/` alone, or segments that
/// are neither empty (no `//`, no trailing slash) nor `.` nor `..`. One pass over the bytes.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b == b"/" {
        return true;
    }
    let mut start = 1;
    for i in 1..=b.len() {
        if i == b.len() || b[i] == b'/' {
            if matches!(&b[start..i], b"" | b"." | b"..") {
                return false;
            }
            start = i + 1;
        }
    }
    true
}

/// Checks every byte and decodes the percent-escapes of unreserved characters (upper-casing the
/// others); borrowed when there is no escape.
fn decode_path(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    let bytes = raw.as_bytes();
    let mut decoded: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(RouteError::BadPath("truncated percent-encoding"))?;
                let v = hex_pair(hex).ok_or(RouteError::BadPath("invalid percent-encoding"))?;
                let d = decoded.get_or_insert_with(|| {
                    let mut d = String::with_capacity(raw.len());
                    d.push_str(&raw[..i]);
                    d
                });
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    d.push(v as char);
                } else if matches!(v, b'/' | b'\\' | b';') || v < 0x20 || v == 0x7f {
                    return Err(RouteError::BadPath(
                        "encoded '/', '\\', ';' or control character",
                    ));
                } else {
                    d.push('%');
                    d.push(HEX[(v >> 4) as usize] as char);
                    d.push(HEX[(v & 0xf) as usize] as char);
                }
                i += 3;
            }
            b'\\' | b';' => return Err(RouteError::BadPath("'\\' or ';' in path")),
            b if b < 0x21 || b == 0x7f => {
                return Err(RouteError::BadPath("control character or space in path"))
            }
            b if b >= 0x80 => {
                return Err(RouteError::BadPath(
                    "non-ASCII byte in path; percent-encode it",
                ))
            }
            _ => {
                if let Some(d) = decoded.as_mut() {
                    d.push(b as char);
                }
                i += 1;
            }
        }
    }
    Ok(decoded.map_or(Cow::Borrowed(raw), Cow::Owned))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(h[0])? << 4 | d(h[1])?)
}

/// The strip of path after a tenant's prefix, when `path` lies under `prefix`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// SCIM resource types the gateway understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    User,
    Group,
}

/// The endpoint a request names, in canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Resource(ResourceType),
    Bulk,
    ServiceProviderConfig,
    ResourceTypes,
    Schemas,
}

impl Endpoint {
    /// The canonical path segment forwarded to the backend.
    pub fn canonical(self) -> &'static str {
        match self {
            Endpoint::Resource(ResourceType::User) => "Users",
            Endpoint::Resource(ResourceType::Group) => "Groups",
            Endpoint::Bulk => "Bulk",
            Endpoint::ServiceProviderConfig => "ServiceProviderConfig",
            Endpoint::ResourceTypes => "ResourceTypes",
            Endpoint::Schemas => "Schemas",
        }
    }

    fn from_segment(seg: &str) -> Option<Self> {
        const ALL: [Endpoint; 6] = [
            Endpoint::Resource(ResourceType::User),
            Endpoint::Resource(ResourceType::Group),
            Endpoint::Bulk,
            Endpoint::ServiceProviderConfig,
            Endpoint::ResourceTypes,
            Endpoint::Schemas,
        ];
        ALL.into_iter()
            .find(|e| e.canonical().eq_ignore_ascii_case(seg))
    }
}

/// What the request does to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    List,
    Search,
    Get,
    Create,
    Replace,
    Patch,
    Delete,
    Bulk,
    Discovery,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::List => "list",
            OpKind::Search => "search",
            OpKind::Get => "get",
            OpKind::Create => "create",
            OpKind::Replace => "replace",
            OpKind::Patch => "patch",
            OpKind::Delete => "delete",
            OpKind::Bulk => "bulk",
            OpKind::Discovery => "discovery",
        }
    }
}

/// One classified SCIM operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub endpoint: Endpoint,
    pub kind: OpKind,
    /// The resource id (or discovery name) as it appears in the normalised path.
    pub id: Option<Box<str>>,
}

impl Operation {
    /// Appends the canonical path after the tenant root, e.g. `/Users/2819c223`.
    pub fn write_upstream_path(&self, out: &mut String) {
        out.push('/');
        out.push_str(self.endpoint.canonical());
        if self.kind == OpKind::Search {
            out.push_str("/.search");
        }
        if let Some(id) = &self.id {
            out.push('/');
            out.push_str(id);
        }
    }

    pub fn resource_type(&self) -> Option<ResourceType> {
        match self.endpoint {
            Endpoint::Resource(rt) => Some(rt),
            _ => None,
        }
    }
}

/// The methods `classify` accepts on `rest`, for the `Allow` header of a 405.
pub fn allowed_methods(rest: &str) -> &'static str {
    const CANDIDATES: [(Method, &str); 5] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
    ];
    let ok: Vec<&str> = CANDIDATES
        .iter()
        .filter(|(m, _)| !matches!(classify(m, rest), Err(RouteError::MethodNotAllowed)))
        .map(|(_, n)| *n)
        .collect();
    match ok.as_slice() {
        ["GET"] => "GET",
        ["POST"] => "POST",
        ["GET", "POST"] => "GET, POST",
        ["GET", "PUT", "PATCH", "DELETE"] => "GET, PUT, PATCH, DELETE",
        _ => "GET, POST, PUT, PATCH, DELETE",
    }
}

/// Classifies `method` on `rest`, the normalised path below a tenant's prefix.
pub fn classify(method: &Method, rest: &str) -> Result<Operation, RouteError> {
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let first = segs.next();
    let second = segs.next();
    let third = segs.next();
    let Some(first) = first else {
        return Err(if *method == Method::GET {
            RouteError::NotImplemented("a query across all resource types at the tenant root")
        } else {
            RouteError::MethodNotAllowed
        });
    };
    if first.eq_ignore_ascii_case(".search") && second.is_none() {
        return Err(if *method == Method::POST {
            RouteError::NotImplemented("POST /.search across all resource types")
        } else {
            RouteError::MethodNotAllowed
        });
    }
    if first.eq_ignore_ascii_case("Me") {
        return Err(RouteError::NotImplemented("the /Me endpoint"));
    }
    let endpoint = Endpoint::from_segment(first).ok_or(RouteError::NotFound)?;
    if third.is_some() {
        return Err(RouteError::NotFound);
    }
    let op = |kind, id: Option<&str>| Operation {
        endpoint,
        kind,
        id: id.map(Into::into),
    };
    let m = method;
    match (endpoint, second) {
        (Endpoint::Resource(_), None) => match *m {
            Method::GET => Ok(op(OpKind::List, None)),
            Method::POST => Ok(op(OpKind::Create, None)),
            _ => Err(RouteError::MethodNotAllowed),
        },
        (Endpoint::Resource(_), Some(s)) if s.eq_ignore_ascii_case(".search") => match *m {
            Method::POST => Ok(op(OpKind::Search, None)),
            _ => Err(RouteError::MethodNotAllowed),
        },
        (Endpoint::Resource(_), Some(id)) => {
            let kind = match *m {
                Method::GET => OpKind::Get,
                Method::PUT => OpKind::Replace,
                Method::PATCH => OpKind::Patch,
                Method::DELETE => OpKind::Delete,
                _ => return Err(RouteError::MethodNotAllowed),
            };
            Ok(op(kind, Some(id)))
        }
        (Endpoint::Bulk, None) => match *m {
            Method::POST => Ok(op(OpKind::Bulk, None)),
            _ => Err(RouteError::MethodNotAllowed),
        },
        (Endpoint::Bulk | Endpoint::ServiceProviderConfig, Some(_)) => Err(RouteError::NotFound),
        (_, id) => match *m {
            Method::GET => Ok(op(OpKind::Discovery, id)),
            _ => Err(RouteError::MethodNotAllowed),
        },
    }
}
