//! Resource scopes (`users:read`, `users:write`, `groups:read`, `groups:write`, `bulk`) and the
//! pure decision of which scope a SCIM operation needs.

use super::route::{Endpoint, OpKind, Operation, ResourceType};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// One grant a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    GroupsRead,
    GroupsWrite,
    Bulk,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::GroupsRead,
        Scope::GroupsWrite,
        Scope::Bulk,
    ];
    /// What `scimgate token issue` grants when no `--scope` is given: what a provisioning
    /// client needs, without `bulk`.
    pub const PROVISIONING: [Scope; 4] = [
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::GroupsRead,
        Scope::GroupsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::GroupsRead => "groups:read",
            Scope::GroupsWrite => "groups:write",
            Scope::Bulk => "bulk",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope {s:?}; expected one of users:read, users:write, groups:read, groups:write, bulk")
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A token's scopes as a bit set: the check on the hot path is one AND.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

/// The scope an operation needs; `None` for discovery endpoints, which need only a valid token.
pub fn required_scope(op: &Operation) -> Option<Scope> {
    let write = matches!(
        op.kind,
        OpKind::Create | OpKind::Replace | OpKind::Patch | OpKind::Delete
    );
    match (op.endpoint, write) {
        (Endpoint::Resource(ResourceType::User), false) => Some(Scope::UsersRead),
        (Endpoint::Resource(ResourceType::User), true) => Some(Scope::UsersWrite),
        (Endpoint::Resource(ResourceType::Group), false) => Some(Scope::GroupsRead),
        (Endpoint::Resource(ResourceType::Group), true) => Some(Scope::GroupsWrite),
        (Endpoint::Bulk, _) => Some(Scope::Bulk),
        (Endpoint::ServiceProviderConfig | Endpoint::ResourceTypes | Endpoint::Schemas, _) => None,
    }
}

/// Whether `scopes` allow `op`; on refusal, the scope that was missing.
pub fn authorize(scopes: ScopeSet, op: &Operation) -> Result<(), Scope> {
    match required_scope(op) {
        Some(scope) if !scopes.contains(scope) => Err(scope),
        _ => Ok(()),
    }
}
