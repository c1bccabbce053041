//! PATCH (RFC 7644 §3.5.2) analysis for Users: simulates every operation on the user's address
//! attributes (`userName`, `emails`) and judges the result, so neither a path, a filter, a
//! path-less value object (Entra's `{"emails[type eq \"work\"].value": …}`) nor a removal can
//! move a user out of the token's domains. Operations the gateway cannot interpret are refused.

use super::user::{
    address_attr, folds_into, get_ci, is_user_urn, strip_user_urn, unknown_member, AddressAttr,
    Addresses, DomainPolicy, OutOfScope, GROUP_URN, MEMBER_SUB_ATTRS, USER_URN,
};
use serde_json::{Map, Value};

/// Why a PATCH is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchDenial {
    /// The request is not a PATCH the gateway can read (400).
    Invalid(String),
    /// The result, or a value written, would be out of scope (403).
    OutOfScope(OutOfScope),
}

/// The PATCH operation kinds; `op` is compared case-insensitively (Entra sends `Replace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOpKind {
    Add,
    Replace,
    Remove,
}

/// One operation, parsed.
#[derive(Debug, Clone)]
pub struct PatchOp<'a> {
    pub kind: PatchOpKind,
    pub path: Option<&'a str>,
    pub value: Option<&'a Value>,
}

/// Parses the `Operations` of a PatchOp body (member names case-insensitive).
pub fn parse_ops(body: &Value) -> Result<Vec<PatchOp<'_>>, String> {
    let obj = body
        .as_object()
        .ok_or("the PATCH body must be a JSON object")?;
    if let Some(k) = unknown_member(obj, &["schemas", "Operations"]) {
        return Err(format!("unknown PATCH member {k:?}"));
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or("the PATCH body needs an \"Operations\" array")?;
    if ops.is_empty() {
        return Err("\"Operations\" must not be empty".into());
    }
    ops.iter()
        .map(|op| {
            let o = op.as_object().ok_or("each operation must be an object")?;
            let kind = match get_ci(o, "op")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("add") => PatchOpKind::Add,
                Some("replace") => PatchOpKind::Replace,
                Some("remove") => PatchOpKind::Remove,
                _ => return Err("each operation needs \"op\": add, replace or remove".to_owned()),
            };
            let path = match get_ci(o, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => return Err("\"path\" must be a string".into()),
            };
            for k in o.keys() {
                if !["op", "path", "value"]
                    .iter()
                    .any(|n| k.eq_ignore_ascii_case(n))
                {
                    return Err(format!("unknown operation member {k:?}"));
                }
            }
            Ok(PatchOp {
                kind,
                path,
                value: get_ci(o, "value"),
            })
        })
        .collect()
}

/// A parsed attribute path: `attr`, `attr.sub`, `attr[filter]`, `attr[filter].sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath<'a> {
    pub attr: &'a str,
    pub filter: Option<&'a str>,
    pub sub: Option<&'a str>,
}

/// Parses a PATCH path, with or without the core User URN. Extension URNs parse to their
/// attribute name after the URN's last `:` (they never name core address attributes).
pub fn parse_path(path: &str) -> Result<AttrPath<'_>, String> {
    let invalid = || {
        format!("invalid path {path:?}: the gateway reads only attr, attr.sub, attr[filter] and attr[filter].sub")
    };
    let p = strip_user_urn(path).unwrap_or(path);
    if p.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("urn:")) {
        // An extension attribute (`urn:…:enterprise:2.0:User:manager.value`): never a core
        // address attribute, provided it is written plainly (no spaces, brackets or quotes
        // another parser might read differently).
        let plain = p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'$'));
        // Nor a spelling of a core URN that a backend folding names would read as one.
        return if plain && !folds_into(p, USER_URN) && !folds_into(p, GROUP_URN) {
            Ok(AttrPath {
                attr: "",
                filter: None,
                sub: Some(p),
            })
        } else {
            Err(invalid())
        };
    }
    let end = p.find(['.', '[']).unwrap_or(p.len());
    let attr = &p[..end];
    if !is_attr_name(attr) {
        return Err(invalid());
    }
    let rest = &p[end..];
    let (filter, rest) = if let Some(r) = rest.strip_prefix('[') {
        let close = r.rfind(']').ok_or_else(invalid)?;
        (Some(&r[..close]), &r[close + 1..])
    } else {
        (None, rest)
    };
    let sub = match rest.strip_prefix('.') {
        Some(s) if is_attr_name(s) => Some(s),
        Some(_) => return Err(invalid()),
        None if rest.is_empty() => None,
        None => return Err(invalid()),
    };
    Ok(AttrPath { attr, filter, sub })
}

/// RFC 7643 §2.1 ATTRNAME: `ALPHA *(nameChar)`, nameChar = `-` / `_` / DIGIT / ALPHA (and `$`
/// for `$ref`). Anything else — spaces, operators, quotes — is refused, not guessed at.
pub fn is_attr_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'$')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// One email entry of the simulated user.
#[derive(Debug, Clone, Default)]
struct Email {
    value: Option<Value>,
    typ: Option<String>,
    display: Option<String>,
    primary: Option<bool>,
}

impl Email {
    fn from_value(v: &Value) -> Email {
        match v {
            Value::Object(o) => Email {
                value: get_ci(o, "value").cloned(),
                typ: get_ci(o, "type").and_then(Value::as_str).map(str::to_owned),
                display: get_ci(o, "display")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                primary: get_ci(o, "primary").and_then(Value::as_bool),
            },
            other => Email {
                value: Some(other.clone()),
                ..Email::default()
            },
        }
    }

    fn merge(&mut self, v: &Value) {
        let new = Email::from_value(v);
        if new.value.is_some() {
            self.value = new.value;
        }
        if new.typ.is_some() {
            self.typ = new.typ;
        }
    }
}

/// A filter on `emails` the simulation can evaluate: `value|type|display eq "…"`,
/// `primary eq true|false`. Anything else is `None`: assume it matches every entry.
fn email_filter(filter: &str) -> Option<impl Fn(&Email) -> bool + '_> {
    let mut parts = filter.trim().splitn(3, ' ');
    let (attr, op, lit) = (parts.next()?, parts.next()?, parts.next()?.trim());
    if !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let attr = attr.to_ascii_lowercase();
    let text = lit.strip_prefix('"').and_then(|l| l.strip_suffix('"'));
    if text.is_some_and(|t| t.contains(['"', '\\'])) {
        return None;
    }
    let boolean = match lit {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    if !matches!(attr.as_str(), "value" | "type" | "display" | "primary") {
        return None;
    }
    if attr == "primary" && boolean.is_none() || attr != "primary" && text.is_none() {
        return None;
    }
    Some(move |e: &Email| match attr.as_str() {
        "value" => {
            matches!((&e.value, text), (Some(Value::String(v)), Some(t)) if v.eq_ignore_ascii_case(t))
        }
        "type" => matches!((&e.typ, text), (Some(v), Some(t)) if v.eq_ignore_ascii_case(t)),
        "display" => matches!((&e.display, text), (Some(v), Some(t)) if v.eq_ignore_ascii_case(t)),
        _ => e.primary.unwrap_or(false) == boolean.unwrap_or(false),
    })
}

/// The user's address attributes under simulation.
#[derive(Debug, Clone, Default)]
struct Sim {
    user_name: Option<Value>,
    emails: Vec<Email>,
    /// Every address value the PATCH writes: each must be in scope on its own, whether or not
    /// the simulation can tell where it lands.
    written: Addresses,
    unreadable: bool,
}

impl Sim {
    fn from_user(user: &Value) -> Sim {
        let mut sim = Sim::default();
        if let Value::Object(o) = user {
            sim.load(o, true);
        }
        // A stored user the gateway cannot read stays unreadable whatever the PATCH writes:
        // the simulation would start from a guess.
        sim.unreadable |= super::user::user_addresses(user).unreadable;
        sim
    }

    fn load(&mut self, o: &Map<String, Value>, top: bool) {
        for (k, v) in o {
            match address_attr(k) {
                Some(AddressAttr::UserName) => {
                    // A stored user naming userName twice (top level and URN object, or two
                    // spellings) has no one value to simulate on.
                    self.unreadable |= self.user_name.is_some();
                    self.user_name = Some(v.clone());
                }
                Some(AddressAttr::Emails) => match v {
                    Value::Array(items) => self.emails.extend(items.iter().map(Email::from_value)),
                    Value::Null => {}
                    other => self.emails.push(Email::from_value(other)),
                },
                None if top && is_user_urn(k) => {
                    if let Value::Object(inner) = v {
                        self.load(inner, false);
                    }
                }
                None => {}
            }
        }
    }

    fn write(&mut self, v: &Value, attr: AddressAttr) {
        match attr {
            AddressAttr::UserName => self.written.push_user_name(v),
            AddressAttr::Emails => self.written.push_emails(v),
        }
    }

    fn apply(
        &mut self,
        kind: PatchOpKind,
        path: Option<&str>,
        value: Option<&Value>,
        depth: usize,
    ) -> Result<(), String> {
        let Some(path) = path.filter(|p| !is_user_urn(p.trim())) else {
            // No path: the value is an object whose keys are attributes or paths.
            if kind == PatchOpKind::Remove {
                return Err("a remove operation needs a path".into());
            }
            let Some(Value::Object(obj)) = value else {
                return Err("an operation without a path needs an object value".into());
            };
            if depth > 2 {
                return Err("nested path-less values are too deep".into());
            }
            for (k, v) in obj {
                self.apply(kind, Some(k), Some(v), depth + 1)?;
            }
            return Ok(());
        };
        let p = parse_path(path)?;
        if !p.attr.is_empty() && !super::user::allowed_attr(p.attr, super::user::USER_ATTRS) {
            return Err(format!("unknown attribute {:?} in path {path:?}", p.attr));
        }
        let attr = match address_attr(p.attr) {
            Some(a) => a,
            None => return Ok(()),
        };
        match (attr, kind) {
            (AddressAttr::UserName, _) if p.filter.is_some() || p.sub.is_some() => Err(format!(
                "invalid path {path:?}: userName has no sub-attributes"
            )),
            (AddressAttr::UserName, PatchOpKind::Remove) => {
                self.user_name = None;
                Ok(())
            }
            (AddressAttr::UserName, _) => {
                let v = value.ok_or("add and replace need a value")?;
                self.write(v, attr);
                self.user_name = Some(v.clone());
                Ok(())
            }
            (AddressAttr::Emails, _) => self.apply_emails(kind, &p, value),
        }
    }

    fn apply_emails(
        &mut self,
        kind: PatchOpKind,
        p: &AttrPath<'_>,
        value: Option<&Value>,
    ) -> Result<(), String> {
        let sub = p.sub.map(str::to_ascii_lowercase);
        let sub_is_value = sub.as_deref() == Some("value");
        let matcher = p.filter.map(email_filter);
        let matches = |e: &Email| match &matcher {
            None => true,
            Some(None) => true, // a filter we cannot evaluate may match anything
            Some(Some(f)) => f(e),
        };
        if kind == PatchOpKind::Remove {
            match (&sub, value) {
                (None, Some(v)) if p.filter.is_none() => {
                    // Entra-style: remove the listed entries.
                    let gone: Vec<Email> = match v {
                        Value::Array(items) => items.iter().map(Email::from_value).collect(),
                        other => vec![Email::from_value(other)],
                    };
                    self.emails.retain(|e| {
                        !gone.iter().any(|g| match (&g.value, &e.value) {
                            (Some(Value::String(a)), Some(Value::String(b))) => {
                                a.eq_ignore_ascii_case(b)
                            }
                            _ => false,
                        })
                    });
                }
                (None, _) => {
                    if matches!(matcher, Some(None)) {
                        self.emails.clear();
                    } else {
                        self.emails.retain(|e| !matches(e));
                    }
                }
                (Some(_), _) if sub_is_value => {
                    for e in self.emails.iter_mut().filter(|e| matches(e)) {
                        e.value = None;
                    }
                }
                // A backend folding names could read `val_ue` as `value`.
                (Some(s), _) if !["type", "primary", "display"].contains(&s.as_str()) => {
                    return Err(format!("unknown emails sub-attribute {s:?}"));
                }
                (Some(_), _) => {}
            }
            return Ok(());
        }
        let v = value.ok_or("add and replace need a value")?;
        // Some backends create the entry a filter names when none matches (Entra's
        // `emails[value eq "x"].type`): every address-like literal in the filter counts as
        // written.
        if let Some(f) = p.filter {
            for lit in f.split('"').skip(1).step_by(2) {
                if lit.contains(['@', '\u{FF20}', '\u{FE6B}']) {
                    self.written.values.push(lit.to_owned());
                }
            }
        }
        match (&sub, p.filter) {
            (None, None) => {
                self.write(v, AddressAttr::Emails);
                let new: Vec<Email> = match v {
                    Value::Array(items) => items.iter().map(Email::from_value).collect(),
                    Value::Null => vec![],
                    other => vec![Email::from_value(other)],
                };
                if kind == PatchOpKind::Replace {
                    self.emails = new;
                } else {
                    self.emails.extend(new);
                }
            }
            (None, Some(_)) => {
                if !v.is_object() {
                    return Err("a filtered emails value must be an object".into());
                }
                self.write(v, AddressAttr::Emails);
                for e in self.emails.iter_mut().filter(|e| matches(e)) {
                    e.merge(v);
                }
            }
            (Some(_), _) if sub_is_value => {
                self.written.push_emails(&Value::Array(vec![v.clone()]));
                for e in self.emails.iter_mut().filter(|e| matches(e)) {
                    e.value = Some(v.clone());
                }
            }
            (Some(s), _) => {
                let known = ["type", "primary", "display"];
                if !known.contains(&s.as_str()) {
                    return Err(format!("unknown emails sub-attribute {s:?}"));
                }
                for e in self.emails.iter_mut().filter(|e| matches(e)) {
                    if s == "type" {
                        e.typ = v.as_str().map(str::to_owned);
                    }
                }
            }
        }
        Ok(())
    }

    fn addresses(&self) -> Addresses {
        let mut a = Addresses {
            unreadable: self.unreadable,
            ..Addresses::default()
        };
        if let Some(u) = &self.user_name {
            a.push_user_name(u);
        }
        for e in &self.emails {
            match &e.value {
                Some(Value::String(s)) => a.values.push(s.clone()),
                Some(Value::Null) | None => {}
                Some(_) => a.unreadable = true,
            }
        }
        a
    }
}

/// Judges a PATCH of `current` (the stored user, already known to be in scope).
pub fn judge_user_patch(
    current: &Value,
    body: &Value,
    policy: &DomainPolicy<'_>,
) -> Result<(), PatchDenial> {
    let ops = parse_ops(body).map_err(PatchDenial::Invalid)?;
    let mut sim = Sim::from_user(current);
    for op in &ops {
        sim.apply(op.kind, op.path, op.value, 0)
            .map_err(PatchDenial::Invalid)?;
    }
    if sim.written.unreadable {
        return Err(PatchDenial::OutOfScope(OutOfScope::Unreadable));
    }
    if !sim
        .written
        .values
        .iter()
        .all(|v| policy.domains.admits_address(v))
    {
        return Err(PatchDenial::OutOfScope(OutOfScope::Domain));
    }
    policy
        .judge(&sim.addresses())
        .map_err(PatchDenial::OutOfScope)
}

/// The member ids a Group PATCH adds (`add`/`replace` of `members`, with or without a path)
/// and whether it may remove members it does not name (a `replace` of all members, or a
/// `remove` without a value filter).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemberChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub removes_unnamed: bool,
}

/// Analyses a Group PATCH for membership changes.
pub fn group_member_changes(body: &Value) -> Result<MemberChanges, String> {
    let ops = parse_ops(body)?;
    let mut out = MemberChanges::default();
    for op in &ops {
        member_op(op.kind, op.path, op.value, &mut out, 0)?;
    }
    Ok(out)
}

fn member_ids(v: &Value, into: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| member_ids(i, into)),
        Value::Object(o) if unknown_member(o, MEMBER_SUB_ATTRS).is_some() => {
            Err("a member may only name value, display, type and $ref".into())
        }
        Value::Object(o) => match get_ci(o, "value") {
            Some(Value::String(s)) => {
                into.push(s.clone());
                Ok(())
            }
            _ => Err("each member needs a string \"value\"".into()),
        },
        Value::Null => Ok(()),
        _ => Err("members must be objects with a \"value\"".into()),
    }
}

fn member_op(
    kind: PatchOpKind,
    path: Option<&str>,
    value: Option<&Value>,
    out: &mut MemberChanges,
    depth: usize,
) -> Result<(), String> {
    let Some(path) = path.filter(|p| !is_user_urn(p.trim())) else {
        if kind == PatchOpKind::Remove {
            return Err("a remove operation needs a path".into());
        }
        let Some(Value::Object(obj)) = value else {
            return Err("an operation without a path needs an object value".into());
        };
        if depth > 1 {
            return Err("nested path-less values are too deep".into());
        }
        for (k, v) in obj {
            member_op(kind, Some(k), Some(v), out, depth + 1)?;
        }
        return Ok(());
    };
    let p = parse_path(path)?;
    if !p.attr.is_empty() && !super::user::allowed_attr(p.attr, super::user::GROUP_ATTRS) {
        return Err(format!("unknown attribute {:?} in path {path:?}", p.attr));
    }
    if !p.attr.eq_ignore_ascii_case("members") {
        return Ok(());
    }
    match kind {
        PatchOpKind::Add | PatchOpKind::Replace => {
            if p.filter.is_some() || p.sub.is_some() {
                return Err("changing members through a filter or sub-attribute is not supported; add or remove whole members".into());
            }
            if kind == PatchOpKind::Replace {
                out.removes_unnamed = true;
            }
            member_ids(value.unwrap_or(&Value::Null), &mut out.added)
        }
        PatchOpKind::Remove => {
            match (p.filter, value) {
                (None, Some(v)) => member_ids(v, &mut out.removed)?,
                (Some(f), _) => match member_value_filter(f) {
                    Some(id) => out.removed.push(id),
                    None => out.removes_unnamed = true,
                },
                (None, None) => out.removes_unnamed = true,
            }
            Ok(())
        }
    }
}

/// `value eq "id"` → `id`.
fn member_value_filter(f: &str) -> Option<String> {
    let mut parts = f.trim().splitn(3, ' ');
    let (a, op, lit) = (parts.next()?, parts.next()?, parts.next()?);
    if !a.eq_ignore_ascii_case("value") || !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let id = lit.trim().strip_prefix('"')?.strip_suffix('"')?;
    (!id.contains(['"', '\\'])).then(|| id.to_owned())
}
