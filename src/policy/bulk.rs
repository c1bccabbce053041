//! Bulk requests (RFC 7644 §3.7): parsing the operations so each can be judged as if it had
//! been sent alone, within the advertised `maxOperations`.

use super::route::{classify, normalize_path, OpKind, Operation};
use super::user::{get_ci, unknown_member};
use http::Method;
use serde_json::Value;

/// The gateway's Bulk limits, advertised in `/ServiceProviderConfig`.
pub const MAX_OPERATIONS: usize = 100;

/// One Bulk operation, classified like a standalone request.
#[derive(Debug, Clone)]
pub struct BulkOp<'a> {
    pub method: Method,
    pub op: Operation,
    pub bulk_id: Option<&'a str>,
    pub data: Option<&'a Value>,
}

/// Parses and classifies every operation; any operation the gateway cannot read fails the
/// whole request.
pub fn parse_bulk(body: &Value, max_operations: usize) -> Result<Vec<BulkOp<'_>>, String> {
    let obj = body
        .as_object()
        .ok_or("the Bulk body must be a JSON object")?;
    if let Some(k) = unknown_member(obj, &["schemas", "Operations", "failOnErrors"]) {
        return Err(format!("unknown Bulk member {k:?}"));
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or("the Bulk body needs an \"Operations\" array")?;
    if ops.len() > max_operations {
        return Err(format!(
            "{} operations exceed maxOperations ({max_operations})",
            ops.len()
        ));
    }
    let mut targets = std::collections::HashSet::new();
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let o = op
                .as_object()
                .ok_or_else(|| format!("Operations[{i}] must be an object"))?;
            if let Some(k) = unknown_member(o, &["method", "bulkId", "version", "path", "data"]) {
                return Err(format!("Operations[{i}]: unknown member {k:?}"));
            }
            let method = get_ci(o, "method")
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
                .and_then(|m| match m.as_str() {
                    "POST" => Some(Method::POST),
                    "PUT" => Some(Method::PUT),
                    "PATCH" => Some(Method::PATCH),
                    "DELETE" => Some(Method::DELETE),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!("Operations[{i}].method must be POST, PUT, PATCH or DELETE")
                })?;
            let path = get_ci(o, "path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("Operations[{i}].path is required"))?;
            if path.contains(['?', '#']) {
                return Err(format!("Operations[{i}].path must not carry a query"));
            }
            let norm = normalize_path(path).map_err(|e| format!("Operations[{i}].path: {e}"))?;
            let op = classify(&method, &norm).map_err(|e| format!("Operations[{i}]: {e}"))?;
            if op.resource_type().is_none()
                || !matches!(op.kind, OpKind::Create | OpKind::Replace | OpKind::Patch | OpKind::Delete)
            {
                return Err(format!("Operations[{i}] must create, replace, patch or delete a User or Group"));
            }
            // Each operation is judged against the stored resource, so two operations on one
            // resource could add up to what neither may do alone.
            if let Some(id) = &op.id {
                if !targets.insert((op.endpoint, id.clone())) {
                    return Err(format!("Operations[{i}] targets a resource an earlier operation changes; send one operation per resource"));
                }
            }
            let bulk_id = match get_ci(o, "bulkId") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => return Err(format!("Operations[{i}].bulkId must be a string")),
            };
            if method == Method::POST && bulk_id.is_none() {
                return Err(format!("Operations[{i}]: a POST needs a bulkId"));
            }
            Ok(BulkOp {
                method,
                op,
                bulk_id,
                data: get_ci(o, "data"),
            })
        })
        .collect()
}
