//! SCIM query parameters (RFC 7644 §3.4.2) as the gateway reads and re-writes them for
//! domain-scoped tokens: parsed strictly (known names only, compared case-insensitively, no
//! duplicates, valid UTF-8), widened so the backend always returns the attributes the gateway
//! needs to judge a user, and re-encoded, so the query that is checked is the query forwarded.

use super::user::{address_attr, get_ci, is_user_urn, strip_user_urn, AddressAttr};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Characters left as they are in a re-encoded query value (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The most resources the gateway returns in one list response when the client names no count.
pub const DEFAULT_PAGE: usize = 100;
/// The most resources one list response may carry.
pub const MAX_PAGE: usize = 1000;

/// A parsed list or retrieval query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScimQuery {
    pub filter: Option<String>,
    pub attributes: Vec<String>,
    pub excluded: Vec<String>,
    pub start_index: Option<usize>,
    pub count: Option<usize>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
}

const NAMES: [&str; 7] = [
    "filter",
    "attributes",
    "excludedAttributes",
    "startIndex",
    "count",
    "sortBy",
    "sortOrder",
];

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_index(name: &str, v: &str) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| format!("{name} must be a non-negative integer"))
}

impl ScimQuery {
    /// Parses a URL query string.
    pub fn from_query(q: Option<&str>) -> Result<Self, String> {
        let mut out = ScimQuery::default();
        let mut seen = [false; NAMES.len()];
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| "the query string is not valid UTF-8".to_owned())
            };
            let (k, v) = (decode(k)?, decode(v)?);
            out.set(&k, Value::String(v), &mut seen)?;
        }
        Ok(out)
    }

    /// Parses a `POST /.search` body (a SearchRequest).
    pub fn from_search(body: &Value) -> Result<Self, String> {
        let obj = body
            .as_object()
            .ok_or("the search body must be a JSON object")?;
        let mut out = ScimQuery::default();
        let mut seen = [false; NAMES.len()];
        for (k, v) in obj {
            if k.eq_ignore_ascii_case("schemas") {
                continue;
            }
            out.set(k, v.clone(), &mut seen)?;
        }
        Ok(out)
    }

    fn set(&mut self, name: &str, v: Value, seen: &mut [bool; NAMES.len()]) -> Result<(), String> {
        let i = NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unsupported query parameter {name:?}"))?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!(
                "query parameter {:?} appears more than once",
                NAMES[i]
            ));
        }
        let text = |v: &Value| -> Result<String, String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("{} must be a string", NAMES[i])),
            }
        };
        let list = |v: &Value| -> Result<Vec<String>, String> {
            match v {
                Value::Array(items) => items.iter().map(text).collect(),
                other => Ok(split_list(&text(other)?)),
            }
        };
        match i {
            0 => self.filter = Some(text(&v)?),
            1 => self.attributes = list(&v)?,
            2 => self.excluded = list(&v)?,
            3 => self.start_index = Some(parse_index("startIndex", &text(&v)?)?.max(1)),
            4 => self.count = Some(parse_index("count", &text(&v)?)?),
            5 => self.sort_by = Some(text(&v)?),
            _ => self.sort_order = Some(text(&v)?),
        }
        if !self.attributes.is_empty() && !self.excluded.is_empty() {
            return Err("attributes and excludedAttributes cannot be combined".into());
        }
        // A backend folding names would read `e_mails` as `emails`: excluding it there would
        // take the addresses out of the answer the gateway judges.
        if let Some(a) = self
            .attributes
            .iter()
            .chain(&self.excluded)
            .chain(&self.sort_by)
            .find(|a| folded_name(a))
        {
            return Err(format!(
                "attribute {a:?} is a spelling of another attribute; write it as the schema does"
            ));
        }
        Ok(())
    }

    /// The client's page: start index (1-based) and count (bounded).
    pub fn page(&self) -> (usize, usize) {
        (
            self.start_index.unwrap_or(1),
            self.count.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
        )
    }

    /// Which address attributes the client did not ask for but the gateway must fetch: these
    /// are stripped from what the client receives.
    pub fn hidden_address_attrs(&self) -> Vec<AddressAttr> {
        let mut hidden = Vec::new();
        for attr in [AddressAttr::UserName, AddressAttr::Emails] {
            let requested = self.attributes.is_empty()
                || self.attributes.iter().any(|a| names(a).contains(&attr));
            let excluded = self.excluded.iter().any(|a| names(a).contains(&attr));
            if !requested || excluded {
                hidden.push(attr);
            }
        }
        hidden
    }

    /// Whether the query carries list parameters (which a write or a retrieval cannot take).
    pub fn has_list_params(&self) -> bool {
        self.filter.is_some()
            || self.start_index.is_some()
            || self.count.is_some()
            || self.sort_by.is_some()
            || self.sort_order.is_some()
    }

    /// The client's query re-encoded canonically, exactly as parsed (for Groups).
    pub fn canonical_query(&self) -> String {
        let mut q = String::new();
        let mut push = |k: &str, v: &str| push_param(&mut q, k, v);
        if let Some(f) = &self.filter {
            push("filter", f);
        }
        if let Some(s) = &self.sort_by {
            push("sortBy", s);
        }
        if let Some(s) = &self.sort_order {
            push("sortOrder", s);
        }
        if !self.attributes.is_empty() {
            push("attributes", &self.attributes.join(","));
        }
        if !self.excluded.is_empty() {
            push("excludedAttributes", &self.excluded.join(","));
        }
        if let Some(n) = self.start_index {
            push("startIndex", &n.to_string());
        }
        if let Some(n) = self.count {
            push("count", &n.to_string());
        }
        q
    }

    /// The attribute selection sent to the backend: the client's, widened to include
    /// `userName` and `emails`.
    fn backend_selection(&self) -> (Vec<String>, Vec<String>) {
        let mut attrs = self.attributes.clone();
        if !attrs.is_empty() {
            // Always ask for the whole attributes, whatever sub-attributes the client named.
            attrs.push("userName".to_owned());
            attrs.push("emails".to_owned());
        }
        let excluded = self
            .excluded
            .iter()
            .filter(|a| names(a).is_empty())
            .cloned()
            .collect();
        (attrs, excluded)
    }

    /// A backend query string for one page (`start`, `count`) or, with `page = None`, for a
    /// single-resource retrieval.
    pub fn backend_query(&self, page: Option<(usize, usize)>) -> String {
        let (attrs, excluded) = self.backend_selection();
        let mut q = String::new();
        let mut push = |k: &str, v: &str| push_param(&mut q, k, v);
        if page.is_some() {
            if let Some(f) = &self.filter {
                push("filter", f);
            }
            if let Some(s) = &self.sort_by {
                push("sortBy", s);
            }
            if let Some(s) = &self.sort_order {
                push("sortOrder", s);
            }
        }
        if !attrs.is_empty() {
            push("attributes", &attrs.join(","));
        }
        if !excluded.is_empty() {
            push("excludedAttributes", &excluded.join(","));
        }
        if let Some((start, count)) = page {
            push("startIndex", &start.to_string());
            push("count", &count.to_string());
        }
        q
    }

    /// A backend SearchRequest body for one page.
    pub fn backend_search(&self, start: usize, count: usize) -> Value {
        let (attrs, excluded) = self.backend_selection();
        let mut m = Map::new();
        m.insert(
            "schemas".into(),
            Value::from(vec!["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]),
        );
        if let Some(f) = &self.filter {
            m.insert("filter".into(), Value::from(f.as_str()));
        }
        if let Some(s) = &self.sort_by {
            m.insert("sortBy".into(), Value::from(s.as_str()));
        }
        if let Some(s) = &self.sort_order {
            m.insert("sortOrder".into(), Value::from(s.as_str()));
        }
        if !attrs.is_empty() {
            m.insert("attributes".into(), Value::from(attrs));
        }
        if !excluded.is_empty() {
            m.insert("excludedAttributes".into(), Value::from(excluded));
        }
        m.insert("startIndex".into(), Value::from(start));
        m.insert("count".into(), Value::from(count));
        Value::Object(m)
    }
}

/// Appends `k=v` to a query string, percent-encoding the value.
fn push_param(q: &mut String, k: &str, v: &str) {
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(k);
    q.push('=');
    q.extend(utf8_percent_encode(v, QUERY_VALUE));
}

/// Whether an attribute path in `attributes`, `excludedAttributes` or `sortBy` is not ASCII, or
/// names (before any sub-attribute) something a folding backend reads as `userName`, `emails`,
/// `members` or a core schema URN.
fn folded_name(a: &str) -> bool {
    let bare = crate::policy::user::strip_user_urn(a).unwrap_or(a);
    let attr = bare.split('.').next().unwrap_or(bare);
    !a.is_ascii() || crate::policy::user::folded_alias(a) || crate::policy::user::folded_alias(attr)
}

/// The address attributes an `attributes`/`excludedAttributes` entry names: `emails`,
/// `emails.value`, `urn:…:core:2.0:User:emails`, or the core User URN itself (both).
fn names(a: &str) -> &'static [AddressAttr] {
    let a = a.trim();
    if is_user_urn(a) {
        return &[AddressAttr::UserName, AddressAttr::Emails];
    }
    let bare = strip_user_urn(a).unwrap_or(a);
    if bare
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
    {
        return &[];
    }
    match address_attr(bare.split(['.', '[']).next().unwrap_or(bare)) {
        Some(AddressAttr::UserName) => &[AddressAttr::UserName],
        Some(AddressAttr::Emails) => &[AddressAttr::Emails],
        None => &[],
    }
}

/// Removes the address attributes the client did not ask for from a resource.
pub fn strip_attrs(resource: &mut Value, hidden: &[AddressAttr]) {
    if hidden.is_empty() {
        return;
    }
    if let Value::Object(o) = resource {
        o.retain(|k, _| !address_attr(k).is_some_and(|a| hidden.contains(&a)));
        for (k, v) in o.iter_mut() {
            if is_user_urn(k) {
                if let Value::Object(inner) = v {
                    inner.retain(|k, _| !address_attr(k).is_some_and(|a| hidden.contains(&a)));
                }
            }
        }
    }
}

/// The `Resources` of a ListResponse and its `totalResults`.
pub fn list_resources(body: &mut Value) -> Option<(Vec<Value>, usize)> {
    let obj = body.as_object_mut()?;
    let total = get_ci(obj, "totalResults")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let key = obj
        .keys()
        .find(|k| k.eq_ignore_ascii_case("Resources"))
        .cloned();
    let resources = match key.and_then(|k| obj.remove(&k)) {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return None,
    };
    Some((resources, total))
}

/// A backend ListResponse read without building its tree: the `Resources` as raw JSON texts
/// (borrowed from `body`) and `totalResults` (0 when absent or not a count). `None` when the body
/// is not one JSON object, `Resources` is neither an array nor null, or either member appears
/// twice in any letter case: a page two readers could read differently is not read at all.
pub fn raw_list_resources(body: &[u8]) -> Option<(Vec<&RawValue>, usize)> {
    struct Page;
    impl<'de> serde::de::Visitor<'de> for Page {
        type Value = Option<(Vec<&'de RawValue>, usize)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a ListResponse")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut resources: Option<Option<Vec<&'de RawValue>>> = None;
            let mut total: Option<usize> = None;
            let mut twice = false;
            while let Some(crate::scim::json::Key(k)) = map.next_key()? {
                if k.eq_ignore_ascii_case("Resources") {
                    twice |= resources.is_some();
                    resources = Some(map.next_value()?);
                } else if k.eq_ignore_ascii_case("totalResults") {
                    twice |= total.is_some();
                    let v: Value = map.next_value()?;
                    total = Some(v.as_u64().unwrap_or(0) as usize);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok((!twice).then(|| (resources.flatten().unwrap_or_default(), total.unwrap_or(0))))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let page = serde::Deserializer::deserialize_map(&mut de, Page).ok()?;
    de.end().ok()?;
    page
}

/// A ListResponse over exactly the resources the token may see, written from their texts.
pub fn list_response(resources: &[Box<RawValue>], total: usize, start: usize) -> Vec<u8> {
    let len: usize = resources.iter().map(|r| r.get().len() + 1).sum();
    let mut out = Vec::with_capacity(len + 160);
    out.extend_from_slice(
        br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":"#,
    );
    out.extend_from_slice(
        format!(
            r#"{total},"startIndex":{start},"itemsPerPage":{},"Resources":["#,
            resources.len()
        )
        .as_bytes(),
    );
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}
