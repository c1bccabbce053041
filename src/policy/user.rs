//! What counts as a user's email addresses, and whether a user is inside a token's domains.
//!
//! A user's addresses are `userName` when it looks like an address (contains `@`) and every
//! `emails[].value`, whatever the letter case of the attribute names and whether they are
//! written bare or with the core schema URN. A user is in scope when it has at least one address
//! and every address is valid and admitted; a user with no address only when the tenant allows
//! it. Anything the gateway cannot read (an `emails` that is a number, a `value` that is an
//! object) puts the user out of scope. Pure functions over parsed JSON.

use super::domain::DomainSet;
use crate::scim::json::{is_reserved_name, Keep, Key};
use serde_json::{Map, Value};

/// The core User schema URN, which may qualify attribute names.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// The core attributes that carry addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressAttr {
    UserName,
    Emails,
}

/// Classifies an attribute name (`emails`, `EMAILS`, `urn:…:core:2.0:User:emails`).
pub fn address_attr(name: &str) -> Option<AddressAttr> {
    let bare = strip_user_urn(name).unwrap_or(name);
    if bare.eq_ignore_ascii_case("userName") {
        Some(AddressAttr::UserName)
    } else if bare.eq_ignore_ascii_case("emails") {
        Some(AddressAttr::Emails)
    } else {
        None
    }
}

/// The core Group schema URN.
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// `urn:…:core:2.0:User:attr` or `urn:…:core:2.0:Group:attr` → `attr` (case-insensitive on
/// the URN).
pub fn strip_user_urn(name: &str) -> Option<&str> {
    [USER_URN, GROUP_URN].into_iter().find_map(|urn| {
        let n = urn.len();
        let hit = name.len() > n + 1
            && name.is_char_boundary(n)
            && name[..n].eq_ignore_ascii_case(urn)
            && name.as_bytes()[n] == b':';
        hit.then(|| &name[n + 1..])
    })
}

/// Whether `key` is a core schema URN itself (an object of core attributes may sit under it).
pub fn is_user_urn(key: &str) -> bool {
    key.eq_ignore_ascii_case(USER_URN) || key.eq_ignore_ascii_case(GROUP_URN)
}

/// The sub-attributes of an `emails` item (RFC 7643 §4.1.2).
pub const EMAIL_SUB_ATTRS: &[&str] = &["value", "display", "type", "primary"];

/// The sub-attributes of a Group's `members` item (RFC 7643 §4.2).
pub const MEMBER_SUB_ATTRS: &[&str] = &["value", "display", "type", "$ref"];

/// The first member of `obj` not named in `known` (ASCII case-insensitive). Where the gateway
/// reads an object by its member names, nothing else may appear: a backend that folds names
/// (scim2-models before 0.8 drops `_`, `-` and other punctuation, the last duplicate winning)
/// reads `va_lue` as `value` and `Oper_ations` as `Operations`.
pub fn unknown_member<'a>(obj: &'a Map<String, Value>, known: &[&str]) -> Option<&'a str> {
    obj.keys()
        .map(String::as_str)
        .find(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
}

/// A name as a folding backend reads it: ASCII letters and digits only, lower-cased.
fn folded(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase())
}

/// How many letters and digits a string has: its length folded.
const fn folded_len(s: &str) -> usize {
    let (b, mut i, mut n) = (s.as_bytes(), 0, 0);
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The shortest folded core URN: a shorter name cannot fold into one.
const FOLDED_URN_MIN: usize = if folded_len(USER_URN) < folded_len(GROUP_URN) {
    folded_len(USER_URN)
} else {
    folded_len(GROUP_URN)
};

/// Whether `name`, folded, begins with `known` folded: what a folding backend would take for
/// `known` or something under it.
pub(crate) fn folds_into(name: &str, known: &str) -> bool {
    let mut n = folded(name);
    folded(known).all(|k| n.next() == Some(k))
}

/// Whether a member name a reader of addresses (or members) does not take for `userName`,
/// `emails`, `members` or a core schema URN is one a folding backend would: `e_mails`,
/// `user-Name`, `urn:…:core:2.0:User_`. Where the gateway reads addresses or members, such a
/// name makes the object unreadable.
pub fn folded_alias(name: &str) -> bool {
    // Every name this looks for folds to a word beginning with `u`, `e` or `m` (`username`,
    // `emails`, `members`, `urn…`), so a name that begins with any other letter or digit folds
    // into none of them: most names (`displayName`, `name`, `active`, …) are settled here.
    if name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() && !matches!(b | 0x20, b'u' | b'e' | b'm'))
    {
        return false;
    }
    if name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        // Most names (`givenName`, `value`, …): folded, such a name is itself lower-cased, so
        // it matches `userName`, `emails` or `members` folded only when it is one of them in
        // another case (not an alias). Only a core URN spelled without its punctuation is one.
        return name.len() >= FOLDED_URN_MIN
            && (folds_into(name, USER_URN) || folds_into(name, GROUP_URN));
    }
    let bare = match strip_user_urn(name) {
        Some(bare) => bare,
        None if is_user_urn(name) => return false,
        None if folds_into(name, USER_URN) || folds_into(name, GROUP_URN) => return true,
        None => name,
    };
    ["userName", "emails", "members"]
        .iter()
        .any(|a| !bare.eq_ignore_ascii_case(a) && folded(bare).eq(folded(a)))
}

/// Finds a member of a JSON object by case-insensitive name.
pub fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The addresses found in a user, or the fact that something could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub values: Vec<String>,
    /// An address-bearing attribute had a shape the gateway cannot interpret.
    pub unreadable: bool,
}

impl Addresses {
    pub fn push_user_name(&mut self, v: &Value) {
        match v {
            // A look-alike `@` counts too: it is then refused as an invalid address.
            Value::String(s) if s.contains(['@', '\u{FF20}', '\u{FE6B}']) => {
                self.values.push(s.clone())
            }
            Value::String(_) | Value::Null => {}
            _ => self.unreadable = true,
        }
    }

    /// Adds the addresses of an `emails` value: an array of objects with `value`, a lone object,
    /// or (leniently) bare strings.
    pub fn push_emails(&mut self, v: &Value) {
        match v {
            Value::Null => {}
            Value::Array(items) => items.iter().for_each(|i| self.push_email_item(i)),
            Value::Object(_) => self.push_email_item(v),
            _ => self.unreadable = true,
        }
    }

    fn push_email_item(&mut self, item: &Value) {
        match item {
            Value::Object(o) => {
                if unknown_member(o, EMAIL_SUB_ATTRS).is_some() {
                    self.unreadable = true;
                }
                for (k, v) in o {
                    if k.eq_ignore_ascii_case("value") {
                        match v {
                            Value::String(s) => self.values.push(s.clone()),
                            Value::Null => {}
                            _ => self.unreadable = true,
                        }
                    }
                }
            }
            Value::String(s) => self.values.push(s.clone()),
            Value::Null => {}
            _ => self.unreadable = true,
        }
    }
}

/// Collects every address of a User resource.
pub fn user_addresses(user: &Value) -> Addresses {
    let mut out = Addresses::default();
    match user {
        Value::Object(obj) => collect(obj, &mut out, true),
        _ => out.unreadable = true,
    }
    out
}

fn collect(obj: &Map<String, Value>, out: &mut Addresses, top: bool) {
    for (k, v) in obj {
        match address_attr(k) {
            Some(AddressAttr::UserName) => out.push_user_name(v),
            Some(AddressAttr::Emails) => out.push_emails(v),
            None if top && is_user_urn(k) => match v {
                Value::Object(inner) => collect(inner, out, false),
                Value::Null => {}
                _ => out.unreadable = true,
            },
            None if folded_alias(k) => out.unreadable = true,
            None => {}
        }
    }
}

/// Collects every address of a User resource straight from its JSON text, without building a
/// document tree: the same addresses as [`user_addresses`] over the parsed value (duplicate
/// member names included, which a tree would collapse to the last), or the JSON error.
///
/// Stricter than the tree in three ways: text that is not UTF-8 is refused (members the scan
/// skips are not otherwise decoded); an address attribute named twice in one object (in any
/// spelling) makes the user unreadable, since a backend keeping only one of them could store a
/// user with no address where the scan saw one; and so does a member name serde_json reserves
/// ([`is_reserved_name`]) in the user, its URN object or its emails.
pub fn scan_user_addresses(json: &[u8]) -> Result<Addresses, serde_json::Error> {
    let json = match std::str::from_utf8(json) {
        Ok(text) => text,
        Err(e) => return Err(serde::de::Error::custom(format!("invalid UTF-8: {e}"))),
    };
    let mut out = Addresses::default();
    // From the checked text, so serde_json does not check each string's UTF-8 again.
    let mut de = serde_json::Deserializer::from_str(json);
    serde::de::DeserializeSeed::deserialize(
        Scan {
            out: &mut out,
            role: Role::Top,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(out)
}

/// The address-bearing part of a stored User, read from its JSON text: `userName`, `emails` and
/// the core-schema URN object's own address attributes, every other member skipped unparsed.
/// Judging it ([`DomainPolicy::judge_user`]) or simulating a PATCH on it
/// ([`crate::policy::patch::judge_user_patch`]) answers as on the whole document, for a fraction
/// of the cost of its tree (and of the memory, in the gateway's user cache).
///
/// Text that is not UTF-8 is an error. Where a tree would keep one of two same-named members
/// and [`scan_user_addresses`] (which GET and lists use) reads both, the user projects to an
/// unreadable one: an address attribute named twice in one object (in any spelling), `value`
/// twice in one email, or the core schema URN's object twice. So does a member name serde_json
/// reserves ([`is_reserved_name`]) where the scan looks. The projection is thus never judged
/// more leniently than the scan judges the same text, in one reading of it. Values are read as
/// written: serde_json's own `Value` would unwrap a reserved member, which the scan does not.
pub fn address_projection(json: &[u8]) -> Result<Value, serde_json::Error> {
    let json = match std::str::from_utf8(json) {
        Ok(text) => text,
        Err(e) => return Err(serde::de::Error::custom(format!("invalid UTF-8: {e}"))),
    };
    let unreadable = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(json);
    let v = serde::de::DeserializeSeed::deserialize(
        Project {
            top: true,
            unreadable: &unreadable,
        },
        &mut de,
    )?;
    de.end()?;
    if unreadable.get() || user_addresses(&v).unreadable {
        return Ok(serde_json::json!({ "userName": OTHER }));
    }
    Ok(v)
}

/// Keeps the address attributes of an object (and, at the top, of the URN object in it).
#[derive(Clone, Copy)]
struct Project<'f> {
    top: bool,
    /// Set when the text holds what the projection cannot stand for: a member it keeps named
    /// twice in one object, or a reserved member name.
    unreadable: &'f std::cell::Cell<bool>,
}

/// What stands for a value that is neither an object nor null: readers of the projection only
/// ask whether a member is an object, null, or something else.
const OTHER: Value = Value::Bool(false);

impl<'de> serde::de::DeserializeSeed<'de> for Project<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Project<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a SCIM User")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(OTHER)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(OTHER)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(OTHER)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(OTHER)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(OTHER)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(OTHER)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // userName, emails and (at the top) the URN object, already met in this object.
        let mut seen = [false; 3];
        while let Some(Key(k)) = map.next_key::<Key>()? {
            if is_reserved_name(&k) {
                self.unreadable.set(true);
            }
            let attr = address_attr(&k);
            let slot = match attr {
                Some(AddressAttr::UserName) => 0,
                Some(AddressAttr::Emails) => 1,
                None if self.top && is_user_urn(&k) => 2,
                None => {
                    if folded_alias(&k) {
                        self.unreadable.set(true);
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(&mut seen[slot], true) {
                self.unreadable.set(true);
            }
            let v = match attr {
                Some(AddressAttr::UserName) => map.next_value_seed(Literal {
                    part: Part::Other,
                    unreadable: self.unreadable,
                })?,
                Some(AddressAttr::Emails) => map.next_value_seed(Literal {
                    part: Part::Emails,
                    unreadable: self.unreadable,
                })?,
                None => map.next_value_seed(Project { top: false, ..self })?,
            };
            out.insert(k.into_owned(), v);
        }
        Ok(Value::Object(out))
    }
}

/// A kept value, read into a tree exactly as written (unlike serde_json's `Value`, which would
/// unwrap a reserved member), noting what the projection cannot stand for: `value` twice in
/// one email, or a reserved member name.
#[derive(Clone, Copy)]
struct Literal<'f> {
    part: Part,
    unreadable: &'f std::cell::Cell<bool>,
}

/// Where a [`Literal`] stands within a kept attribute.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `emails` itself.
    Emails,
    /// One element of `emails` (or a lone object in its place).
    EmailItem,
    Other,
}

impl<'de> serde::de::DeserializeSeed<'de> for Literal<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Literal<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = Literal {
            part: if self.part == Part::Emails {
                Part::EmailItem
            } else {
                Part::Other
            },
            ..self
        };
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let email = matches!(self.part, Part::Emails | Part::EmailItem);
        let inner = Literal {
            part: Part::Other,
            ..self
        };
        let mut out = Map::new();
        let mut value_seen = false;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            if is_reserved_name(&k)
                || (email
                    && k.eq_ignore_ascii_case("value")
                    && std::mem::replace(&mut value_seen, true))
            {
                self.unreadable.set(true);
            }
            out.insert(k.into_owned(), map.next_value_seed(inner)?);
        }
        Ok(Value::Object(out))
    }
}

/// Where in a User the scanner stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The resource itself.
    Top,
    /// The object under the core schema URN.
    UrnObject,
    UserName,
    Emails,
    /// One element of `emails` (or a lone object in its place).
    EmailItem,
    /// `emails[].value`.
    EmailValue,
}

struct Scan<'o> {
    out: &'o mut Addresses,
    role: Role,
}

impl<'de> serde::de::DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Scan<'_> {
    /// A value of a shape this role cannot hold.
    fn unreadable<E>(self) -> Result<(), E> {
        self.out.unreadable = true;
        Ok(())
    }
}

impl<'de> serde::de::Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a SCIM User")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        match self.role {
            Role::Top => self.unreadable(),
            _ => Ok(()),
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        match self.role {
            // A look-alike `@` counts too: it is then refused as an invalid address.
            Role::UserName if v.contains(['@', '\u{FF20}', '\u{FE6B}']) => {
                self.out.values.push(v.to_owned())
            }
            Role::UserName => {}
            Role::EmailItem | Role::EmailValue => self.out.values.push(v.to_owned()),
            Role::Top | Role::UrnObject | Role::Emails => self.out.unreadable = true,
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.unreadable()
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.unreadable()
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.unreadable()
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.unreadable()
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.role == Role::Emails {
            while seq
                .next_element_seed(Scan {
                    out: &mut *self.out,
                    role: Role::EmailItem,
                })?
                .is_some()
            {}
        } else {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            self.out.unreadable = true;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let role = self.role;
        if matches!(role, Role::UserName | Role::EmailValue) {
            self.out.unreadable = true;
        }
        // Address attributes (userName, emails, value) already met in this object.
        let mut seen = [false; 3];
        while let Some(Key(k)) = map.next_key::<Key>()? {
            // A reader that unwraps it would see a value the scan cannot; one that folds
            // names could read an unknown email member as `value`.
            if is_reserved_name(&k)
                || (matches!(role, Role::Emails | Role::EmailItem)
                    && !EMAIL_SUB_ATTRS.iter().any(|n| n.eq_ignore_ascii_case(&k)))
            {
                self.out.unreadable = true;
            }
            let inner = match role {
                Role::Top | Role::UrnObject => match address_attr(&k) {
                    Some(AddressAttr::UserName) => Some(Role::UserName),
                    Some(AddressAttr::Emails) => Some(Role::Emails),
                    None if role == Role::Top && is_user_urn(&k) => Some(Role::UrnObject),
                    None => {
                        if folded_alias(&k) {
                            self.out.unreadable = true;
                        }
                        None
                    }
                },
                Role::Emails | Role::EmailItem if k.eq_ignore_ascii_case("value") => {
                    Some(Role::EmailValue)
                }
                _ => None,
            };
            let slot = match inner {
                Some(Role::UserName) => Some(0),
                Some(Role::Emails) => Some(1),
                Some(Role::EmailValue) => Some(2),
                _ => None,
            };
            if let Some(i) = slot {
                if std::mem::replace(&mut seen[i], true) {
                    self.out.unreadable = true;
                }
            }
            match inner {
                Some(role) => map.next_value_seed(Scan {
                    out: &mut *self.out,
                    role,
                })?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Why a user is out of scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfScope {
    /// An address is invalid or outside the token's domains.
    Domain,
    /// The user has no address and the tenant does not admit such users.
    NoAddress,
    /// An address-bearing attribute could not be read.
    Unreadable,
}

impl OutOfScope {
    pub fn reason(self) -> &'static str {
        match self {
            OutOfScope::Domain => "domain_out_of_scope",
            OutOfScope::NoAddress => "user_without_email",
            OutOfScope::Unreadable => "user_unreadable",
        }
    }
}

/// The domain policy one request is judged by.
#[derive(Debug, Clone, Copy)]
pub struct DomainPolicy<'a> {
    pub domains: &'a DomainSet,
    pub allow_users_without_email: bool,
}

impl DomainPolicy<'_> {
    /// True when nothing needs inspecting: the token admits every domain.
    pub fn unrestricted(&self) -> bool {
        self.domains.is_unrestricted()
    }

    /// Judges a set of addresses.
    pub fn judge(&self, a: &Addresses) -> Result<(), OutOfScope> {
        if a.unreadable {
            return Err(OutOfScope::Unreadable);
        }
        if a.values.is_empty() {
            return if self.allow_users_without_email || self.unrestricted() {
                Ok(())
            } else {
                Err(OutOfScope::NoAddress)
            };
        }
        if a.values.iter().all(|v| self.domains.admits_address(v)) {
            Ok(())
        } else {
            Err(OutOfScope::Domain)
        }
    }

    /// Judges a User resource.
    pub fn judge_user(&self, user: &Value) -> Result<(), OutOfScope> {
        self.judge(&user_addresses(user))
    }
}

/// What a User create or replace is judged on, for [`crate::scim::json::parse_strict_keeping`]:
/// every member name ([`check_attribute_names`]), the address attributes
/// ([`DomainPolicy::judge_user`]) and `active` ([`crate::policy::blast::classify`]) whole, and
/// the core schema URN's object selected the same way. Other values are checked, not built:
/// those decisions never read them.
pub fn user_write_member(name: &str) -> Keep {
    if is_user_urn(name) {
        Keep::Select(user_write_member)
    } else if address_attr(name).is_some()
        || strip_user_urn(name)
            .unwrap_or(name)
            .eq_ignore_ascii_case("active")
    {
        Keep::Whole
    } else {
        Keep::Omit
    }
}

/// The core User attributes (RFC 7643 §4.1), lower-cased. Domain-scoped tokens may write no
/// other name outside a schema-URN extension: a backend that also accepts aliases (pydantic's
/// `user_name`, say) would otherwise store an address the gateway never saw.
pub const USER_ATTRS: &[&str] = &[
    "schemas",
    "id",
    "externalid",
    "meta",
    "username",
    "name",
    "displayname",
    "nickname",
    "profileurl",
    "title",
    "usertype",
    "preferredlanguage",
    "locale",
    "timezone",
    "active",
    "password",
    "emails",
    "phonenumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509certificates",
];

/// The core Group attributes (RFC 7643 §4.2), lower-cased.
pub const GROUP_ATTRS: &[&str] = &[
    "schemas",
    "id",
    "externalid",
    "meta",
    "displayname",
    "members",
];

/// Whether an attribute name (bare or core-URN-qualified) is allowed: a listed core attribute,
/// or an extension schema URN written plainly.
pub fn allowed_attr(name: &str, allowed: &[&str]) -> bool {
    if let Some(bare) = strip_user_urn(name) {
        return is_listed(bare, allowed);
    }
    if name
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
    {
        // Not a core URN as written, so not a folded spelling of one either.
        return name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
            && !folds_into(name, USER_URN)
            && !folds_into(name, GROUP_URN);
    }
    is_listed(name, allowed)
}

/// Whether `name` is one of `lower` (lower-cased names) in any letter case: lower-cased once
/// into a stack buffer, then compared byte for byte, most entries settled by their length.
fn is_listed(name: &str, lower: &[&str]) -> bool {
    let mut buf = [0u8; 32];
    let Some(folded) = buf.get_mut(..name.len()) else {
        // Longer than any attribute name listed.
        return lower.iter().any(|a| a.eq_ignore_ascii_case(name));
    };
    folded.copy_from_slice(name.as_bytes());
    folded.make_ascii_lowercase();
    lower.iter().any(|a| a.as_bytes() == &*folded)
}

/// Refuses a resource body with a top-level name outside `allowed` (the core schema URN's own
/// object is checked the same way).
pub fn check_attribute_names(body: &Value, allowed: &[&str]) -> Result<(), String> {
    let Value::Object(o) = body else {
        return Err("the body must be a JSON object".into());
    };
    for (k, v) in o {
        if is_user_urn(k) {
            let Value::Object(inner) = v else {
                return Err(format!("{k:?} must hold an object"));
            };
            if let Some(bad) = inner
                .keys()
                .find(|k| !allowed.iter().any(|a| a.eq_ignore_ascii_case(k)))
            {
                return Err(format!("unknown attribute {bad:?}"));
            }
        } else if !allowed_attr(k, allowed) {
            return Err(format!("unknown attribute {k:?}"));
        }
    }
    Ok(())
}
