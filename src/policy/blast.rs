//! Which requests are destructive enough to count against a token's blast-radius caps:
//! deleting a user, deactivating one (`active: false`), and removing every member of a group
//! (a `replace` with no members, a `remove` of `members` without a filter or value, a PUT with
//! no members, or deleting the group). Pure functions over parsed bodies.

use super::patch::{parse_ops, parse_path, PatchOpKind};
use super::route::{Endpoint, OpKind, Operation, ResourceType};
use super::user::{get_ci, is_user_urn, strip_user_urn};
use crate::ratelimit::Blast;
use serde_json::Value;

fn is_attr(name: &str, attr: &str) -> bool {
    strip_user_urn(name)
        .unwrap_or(name)
        .eq_ignore_ascii_case(attr)
}

/// Whether a value for `active` is anything but an unmistakable true: backends read `"false"`,
/// `0` or `"off"` as false, so all of them count against the cap.
fn not_true(v: &Value) -> bool {
    !matches!(v, Value::Bool(true))
        && !matches!(v, Value::String(s) if s.eq_ignore_ascii_case("true"))
}

fn sets_inactive(key: &str, v: &Value) -> bool {
    (is_attr(key, "active") && not_true(v))
        || (is_user_urn(key)
            && v.as_object()
                .is_some_and(|o| o.iter().any(|(k, v)| sets_inactive(k, v))))
}

fn empty_members(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// The destructive effect of one operation, if any.
pub fn classify(op: &Operation, body: Option<&Value>) -> Option<Blast> {
    match (op.endpoint, op.kind) {
        (Endpoint::Resource(ResourceType::User), OpKind::Delete) => Some(Blast::Delete),
        (Endpoint::Resource(ResourceType::User), OpKind::Replace) => body
            .and_then(Value::as_object)
            .is_some_and(|o| o.iter().any(|(k, v)| sets_inactive(k, v)))
            .then_some(Blast::Deactivate),
        (Endpoint::Resource(ResourceType::User), OpKind::Patch) => {
            let ops = parse_ops(body?).ok()?;
            ops.iter()
                .any(|o| match (o.kind, o.path, o.value) {
                    (PatchOpKind::Remove, _, _) => false,
                    (_, Some(p), Some(v)) => sets_inactive(p.trim(), v),
                    (_, None, Some(Value::Object(m))) => m.iter().any(|(k, v)| sets_inactive(k, v)),
                    _ => false,
                })
                .then_some(Blast::Deactivate)
        }
        (Endpoint::Resource(ResourceType::Group), OpKind::Delete) => Some(Blast::GroupWipe),
        (Endpoint::Resource(ResourceType::Group), OpKind::Replace) => body
            .and_then(Value::as_object)
            .is_some_and(|o| empty_members(get_ci(o, "members")))
            .then_some(Blast::GroupWipe),
        (Endpoint::Resource(ResourceType::Group), OpKind::Patch) => {
            let ops = parse_ops(body?).ok()?;
            ops.iter()
                .any(|o| {
                    let members = |p: &str| {
                        parse_path(p).is_ok_and(|p| {
                            p.attr.eq_ignore_ascii_case("members") && p.filter.is_none()
                        })
                    };
                    match (o.kind, o.path, o.value) {
                        (PatchOpKind::Remove, Some(p), v) => members(p) && empty_members(v),
                        (PatchOpKind::Replace, Some(p), v) => members(p) && empty_members(v),
                        (PatchOpKind::Replace, None, Some(Value::Object(m))) => m
                            .iter()
                            .any(|(k, v)| is_attr(k, "members") && empty_members(Some(v))),
                        _ => false,
                    }
                })
                .then_some(Blast::GroupWipe)
        }
        _ => None,
    }
}
