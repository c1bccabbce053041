//! Keeps every request inside the token's email domains, on the way in and on the way out.
//!
//! In: bodies are parsed strictly; a created or replaced user must be in scope; the stored user
//! behind a PUT, PATCH or DELETE must be in scope (else 404, as if missing); a PATCH is
//! simulated and its result judged; group writes may only add (or remove) in-scope users;
//! every Bulk operation is judged as if sent alone. Out: a single user outside the scope is a
//! 404; lists and searches are paged through by the gateway so only in-scope users are
//! returned and `totalResults` counts only them; group members outside the scope are removed;
//! `/ServiceProviderConfig` advertises what the token may do. In `report_only` mode every
//! refusal is logged as `would_deny` and the request proceeds untouched.

use super::access_log::RecordHandle;
use super::directory::{self, Directory, Origin, StoredUser};
use super::{Authenticated, GatewayResponse, Routed, Snapshot};
use crate::config::Mode;
use crate::policy::bulk::{parse_bulk, MAX_OPERATIONS};
use crate::policy::patch::{group_member_changes, judge_user_patch, PatchDenial};
use crate::policy::query::{
    list_resources, list_response, raw_list_resources, strip_attrs, ScimQuery,
};
use crate::policy::route::{Endpoint, OpKind, Operation, ResourceType};
use crate::policy::scope::authorize;
use crate::policy::user::{
    address_projection, check_attribute_names, folded_alias, get_ci, scan_user_addresses,
    unknown_member, user_write_member, AddressAttr, DomainPolicy, OutOfScope, GROUP_ATTRS,
    MEMBER_SUB_ATTRS, USER_ATTRS,
};
use crate::scim::error::GatewayError;
use crate::scim::json::{parse_strict_keeping, Keep, MAX_DEPTH};
use crate::token::TokenRef;
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The request headers that make a request conditional (RFC 9110 §13.1).
const CONDITIONS: [header::HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Backend page size when the gateway pages through a list.
const SCAN_PAGE: usize = 200;
/// The most resources the gateway scans for one list request (400 `tooMany` beyond).
const MAX_SCAN: usize = 20_000;

/// The stack below this layer, which the gateway's own lookups go through too.
pub trait Inner:
    Service<Request<Bytes>, Response = GatewayResponse, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Inner for S where
    S: Service<
            Request<Bytes>,
            Response = GatewayResponse,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

#[derive(Clone, Default)]
pub struct EnforceDomainsLayer {
    dir: Arc<Directory>,
}

pub fn layer() -> EnforceDomainsLayer {
    EnforceDomainsLayer::default()
}

impl<S> Layer<S> for EnforceDomainsLayer {
    type Service = EnforceDomains<S>;
    fn layer(&self, inner: S) -> EnforceDomains<S> {
        EnforceDomains {
            inner,
            dir: self.dir.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EnforceDomains<S> {
    inner: S,
    dir: Arc<Directory>,
}

impl<S> Service<Request<Bytes>> for EnforceDomains<S>
where
    S: Inner,
{
    type Response = GatewayResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let inner = self.inner.clone();
        let dir = self.dir.clone();
        Box::pin(async move { enforce(inner, dir, req).await })
    }
}

/// The stored user a write was judged on, if it names one, and whether that was the cached copy.
#[derive(Default)]
struct JudgedOn {
    user: Option<Arc<StoredUser>>,
    cached: bool,
}

/// Everything one request is judged by.
struct Ctx<S> {
    inner: S,
    dir: Arc<Directory>,
    origin: Origin,
    token: TokenRef,
    report_only: bool,
    record: Option<RecordHandle>,
    max_body: usize,
    limiters: Arc<crate::ratelimit::Limits>,
    blast_cfg: crate::config::BlastRadiusSection,
}

impl<S> Ctx<S>
where
    S: Inner,
{
    fn policy(&self) -> DomainPolicy<'_> {
        DomainPolicy {
            domains: self.token.domains(),
            allow_users_without_email: self.origin.tenant.allow_users_without_email,
        }
    }

    /// Applies a verdict: an error in enforce mode; a `would_deny` note in report-only mode.
    fn verdict(&self, r: Result<(), GatewayError>) -> Result<(), GatewayError> {
        match r {
            Err(e) if self.report_only => {
                tracing::info!(reason = e.reason(), "report_only: request would be denied");
                if let Some(rec) = &self.record {
                    rec.update(|r| {
                        r.decision = Some("would_deny");
                        r.reason = Some(e.reason());
                    });
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn forward(&self, req: Request<Bytes>) -> Result<GatewayResponse, BoxError> {
        directory::call(&self.inner, req).await
    }

    /// The stored user `id` if it is in scope; otherwise the same 404 a missing user gets.
    ///
    /// Writes are judged on the stored user as it is now: a user who left the scope a moment
    /// ago must not be changed. So the user is read afresh, unless `cached_ok` (the write will
    /// be pinned to the version it is judged on, and the backend refuses it if the user has
    /// changed since) and the cached copy has a version and is in scope.
    async fn owned_user(&self, id: &str, cached_ok: bool) -> Result<JudgedOn, BoxError> {
        if cached_ok {
            if let Some(u) = self.dir.cached(&self.origin.tenant, id) {
                if u.version.is_some() && self.policy().judge_user(&u.projection).is_ok() {
                    return Ok(JudgedOn {
                        user: Some(u),
                        cached: true,
                    });
                }
            }
        }
        let user = directory::user(&self.dir, &self.inner, &self.origin, id, true).await?;
        let visible = match &user {
            Some(u) => self
                .policy()
                .judge_user(&u.projection)
                .map_err(|e| e.reason()),
            None => Err("resource_missing"),
        };
        if let Err(reason) = visible {
            self.verdict(Err(GatewayError::Hidden { reason }))?;
        }
        Ok(JudgedOn {
            user,
            cached: false,
        })
    }

    /// Whether `id` names a user this token may see.
    async fn visible_user(&self, id: &str) -> Result<bool, BoxError> {
        Ok(
            match directory::user(&self.dir, &self.inner, &self.origin, id, false).await? {
                Some(u) => self.policy().judge_user(&u.projection).is_ok(),
                None => false,
            },
        )
    }

    /// Members may only be in-scope users (or users this Bulk request creates).
    async fn check_members(
        &self,
        ids: &[String],
        created: &HashSet<String>,
    ) -> Result<(), BoxError> {
        for id in ids {
            if created.contains(id) {
                continue;
            }
            if !self.visible_user(id).await? {
                self.verdict(Err(GatewayError::forbidden(
                    "member_out_of_scope",
                    "a group member is not a user within the token's domains",
                )))?;
            }
        }
        Ok(())
    }

    /// A change that would drop members it does not name is allowed only when the group has no
    /// members outside the scope.
    async fn check_no_hidden_members(&self, group_id: &str) -> Result<(), BoxError> {
        let Some(group) = directory::group(&self.inner, &self.origin, group_id).await? else {
            return Ok(());
        };
        let hidden = || {
            GatewayError::forbidden(
                "group_has_hidden_members",
                "the group has members outside the token's domains; add or remove members by id instead",
            )
        };
        // A member the gateway cannot read counts as hidden.
        let Some(ids) = member_ids(&group) else {
            return self.verdict(Err(hidden())).map_err(Into::into);
        };
        for id in ids {
            if !self.visible_user(&id).await? {
                self.verdict(Err(hidden()))?;
                break;
            }
        }
        Ok(())
    }

    fn judge_new_user(&self, body: &Value) -> Result<(), GatewayError> {
        self.verdict(
            self.policy()
                .judge_user(body)
                .map_err(|e| out_of_scope(e, "the user is not within the token's domains")),
        )
    }

    /// Judges one write as if it were sent alone. `created` holds `bulkId:…` references to
    /// resources earlier operations of the same Bulk request create. Answers with the stored
    /// user a user PUT, PATCH or DELETE was judged on; `cached_ok` as for [`Self::owned_user`].
    async fn check_write(
        &self,
        op: &Operation,
        body: Option<&Value>,
        created: &HashSet<String>,
        cached_ok: bool,
    ) -> Result<JudgedOn, BoxError> {
        let id = op.id.as_deref();
        let fresh = id.is_some_and(|i| created.contains(i));
        let mut judged = JudgedOn::default();
        match (op.endpoint, op.kind) {
            (Endpoint::Resource(ResourceType::User), OpKind::Create) => {
                let body = body.ok_or(missing_body())?;
                check_attribute_names(body, USER_ATTRS).map_err(unknown_attribute)?;
                self.judge_new_user(body)?;
            }
            (Endpoint::Resource(ResourceType::User), OpKind::Replace) => {
                let body = body.ok_or(missing_body())?;
                check_attribute_names(body, USER_ATTRS).map_err(unknown_attribute)?;
                if !fresh {
                    judged = self.owned_user(id.unwrap_or_default(), cached_ok).await?;
                }
                self.judge_new_user(body)?;
            }
            (Endpoint::Resource(ResourceType::User), OpKind::Patch) => {
                let body = body.ok_or(missing_body())?;
                if !fresh {
                    judged = self.owned_user(id.unwrap_or_default(), cached_ok).await?;
                }
                let none = Value::Object(Default::default());
                let current = judged.user.as_deref().map_or(&none, |u| &u.projection);
                match judge_user_patch(current, body, &self.policy()) {
                    Ok(()) => {}
                    Err(PatchDenial::Invalid(d)) => {
                        return Err(GatewayError::BadRequest {
                            reason: "patch_uninterpretable",
                            scim_type: Some("invalidSyntax"),
                            detail: d.into(),
                        }
                        .into())
                    }
                    Err(PatchDenial::OutOfScope(e)) => self.verdict(Err(out_of_scope(
                        e,
                        "the change would take the user outside the token's domains",
                    )))?,
                }
            }
            (Endpoint::Resource(ResourceType::User), OpKind::Delete) if !fresh => {
                judged = self.owned_user(id.unwrap_or_default(), cached_ok).await?;
            }
            (Endpoint::Resource(ResourceType::Group), OpKind::Create | OpKind::Replace) => {
                let body = body.ok_or(missing_body())?;
                check_attribute_names(body, GROUP_ATTRS).map_err(unknown_attribute)?;
                let mut members = Vec::new();
                for m in member_lists(body) {
                    members.extend(collect_member_values(m)?);
                }
                self.check_members(&members, created).await?;
                if op.kind == OpKind::Replace && !fresh {
                    self.check_no_hidden_members(id.unwrap_or_default()).await?;
                }
            }
            (Endpoint::Resource(ResourceType::Group), OpKind::Patch) => {
                let changes = group_member_changes(body.ok_or(missing_body())?).map_err(|d| {
                    GatewayError::BadRequest {
                        reason: "patch_uninterpretable",
                        scim_type: Some("invalidSyntax"),
                        detail: d.into(),
                    }
                })?;
                self.check_members(&changes.added, created).await?;
                self.check_members(&changes.removed, created).await?;
                if changes.removes_unnamed && !fresh {
                    self.check_no_hidden_members(id.unwrap_or_default()).await?;
                }
            }
            (Endpoint::Resource(ResourceType::Group), OpKind::Delete) if !fresh => {
                self.check_no_hidden_members(id.unwrap_or_default()).await?;
            }
            _ => {}
        }
        Ok(judged)
    }

    /// A user PUT, PATCH or DELETE pinned to the version of the user it is judged on
    /// (`upstream.conditional_writes`): the backend gets `If-Match` with that version and
    /// refuses the write (412) if the user has changed since, so no change lands on a user the
    /// judgement did not see. A write judged on the cached copy that the backend does not
    /// accept (412, or any other refusal) is judged again on a fresh read and sent once more.
    /// The client's own `If-Match` is evaluated here against the version judged; only the
    /// gateway's goes to the backend.
    async fn pinned_write(
        &self,
        op: &Operation,
        body: Option<&Value>,
        mut req: Request<Bytes>,
    ) -> Result<GatewayResponse, BoxError> {
        let client: Vec<HeaderValue> = req
            .headers()
            .get_all(header::IF_MATCH)
            .iter()
            .cloned()
            .collect();
        req.headers_mut().remove(header::IF_MATCH);
        // With a condition of its own, the client means the user as stored now; and a 412 its
        // other conditions cause must not read as the cached copy being out of date.
        let conditional = CONDITIONS.iter().any(|h| req.headers().contains_key(h));
        let mut cached_ok = client.is_empty() && !conditional;
        let none = HashSet::new();
        // A refusal of the write judged on the cached copy, and the version that copy had.
        let mut refused: Option<(GatewayResponse, HeaderValue)> = None;
        for attempt in 0..2 {
            let judged = self.check_write(op, body, &none, cached_ok).await?;
            if attempt == 0 {
                self.charge_blast([(op, body)])?;
            }
            let version = judged.user.as_ref().and_then(|u| u.version.clone());
            if let (Some((first, at)), Some(now)) = (refused.take(), &version) {
                if first.status() != StatusCode::PRECONDITION_FAILED && at == *now {
                    // The user is as the cached copy had it, and in scope: the backend's
                    // refusal stands, and the write is not sent again.
                    return Ok(first);
                }
            }
            let mut sent = req.clone();
            match version {
                Some(v) => {
                    if !client.is_empty() {
                        let allowed =
                            crate::scim::etag::if_match_allows(&client, &v).map_err(|e| {
                                GatewayError::bad_request("bad_if_match", e.to_string())
                            })?;
                        if !allowed {
                            return Err(GatewayError::PreconditionFailed.into());
                        }
                    }
                    sent.headers_mut().insert(header::IF_MATCH, v);
                }
                // A backend that gave no version gets the client's condition as it came.
                None => {
                    for v in &client {
                        sent.headers_mut().append(header::IF_MATCH, v.clone());
                    }
                }
            }
            let resp = self.forward(sent).await?;
            if attempt == 0 {
                let result = match (judged.cached, resp.status().is_success()) {
                    (true, true) => "cached",
                    (true, false) => "rejudged",
                    (false, _) => "read",
                };
                crate::metrics::METRICS
                    .pinned_writes
                    .get_or_create(&crate::metrics::ResultLabels { result })
                    .inc();
            }
            if judged.cached && !resp.status().is_success() {
                // The cached copy may be out of date (the user changed, or is gone, and the
                // backend may say something else before it looks at the condition): judge the
                // user as it is now, so the answer is what a fresh judgement gives. A hidden
                // user and a deleted one alike read as missing, and the backend's own words
                // reach the client only about a user a fresh read found in scope.
                self.invalidate(op);
                cached_ok = false;
                refused = judged
                    .user
                    .as_ref()
                    .and_then(|u| u.version.clone())
                    .map(|v| (resp, v));
                continue;
            }
            return Ok(resp);
        }
        Err(GatewayError::Internal("a pinned write retried past its bound").into())
    }

    /// Charges the token's blast-radius caps for destructive operations (429 beyond).
    fn charge_blast<'v>(
        &self,
        ops: impl IntoIterator<Item = (&'v Operation, Option<&'v Value>)>,
    ) -> Result<(), GatewayError> {
        for (op, body) in ops {
            let Some(kind) = crate::policy::blast::classify(op, body) else {
                continue;
            };
            let Some(slot) = self.limiters.blast(kind, self.token.id(), &self.blast_cfg) else {
                continue;
            };
            if let crate::ratelimit::Decision::Deny { retry_after } = slot.check(1) {
                tracing::warn!(
                    token_id = self.token.id(),
                    reason = kind.reason(),
                    "blast-radius cap reached"
                );
                return Err(GatewayError::RateLimited {
                    reason: kind.reason(),
                    detail: "this token reached its cap on destructive operations for now",
                    retry_after: retry_after.as_secs().max(1),
                    headers: None,
                });
            }
        }
        Ok(())
    }

    fn invalidate(&self, op: &Operation) {
        if let (Endpoint::Resource(ResourceType::User), Some(id)) = (op.endpoint, op.id.as_deref())
        {
            self.dir.invalidate(&self.origin.tenant, id);
        }
    }

    /// A group filter that mentions `members` is evaluated by the backend over every member,
    /// hidden ones included, so it could reveal them. Only `members[value eq "id"]`,
    /// `members.value eq "id"` and `members eq "id"` naming a user this token may see are
    /// allowed; any other mention of `members` is refused.
    async fn check_member_filter(&self, filter: &str) -> Result<(), BoxError> {
        let lower = filter.to_ascii_lowercase();
        let mut rest = lower.as_str();
        let mut offset = 0;
        while let Some(i) = rest.find("members") {
            let start = offset + i + "members".len();
            let tail = &filter[start..];
            // The bracket form must hold exactly one comparison: `members[value eq "id"]`.
            let id = [
                (r#"[value eq ""#, "]"),
                (r#".value eq ""#, ""),
                (r#" eq ""#, ""),
            ]
            .iter()
            .find_map(|(p, close)| {
                let t = tail.get(..p.len())?;
                let after = &tail[p.len()..];
                let (id, rest) = after.split_once('"')?;
                (t.eq_ignore_ascii_case(p) && rest.starts_with(close)).then_some(id)
            });
            match id {
                Some(id) if !id.contains('\\') && self.visible_user(id).await? => {}
                _ => {
                    return Err(GatewayError::BadRequest {
                        reason: "member_filter_refused",
                        scim_type: Some("invalidFilter"),
                        detail: "filters on group members may only test for a member by id (members[value eq \"id\"])".into(),
                    }
                    .into())
                }
            }
            offset = start;
            rest = &lower[offset..];
        }
        Ok(())
    }

    /// Removes the members this token may not see from a group resource.
    async fn filter_members(&self, group: &mut Value) -> Result<bool, BoxError> {
        let Some(obj) = group.as_object_mut() else {
            return Ok(false);
        };
        // Every list, however spelled (`members`, `Members`, `urn:…:Group:members`, or under
        // the Group URN): a client reading another one than the gateway filtered would see
        // members it may not.
        // A name a folding client would read as `members` or a core URN is not the gateway's to
        // judge: it goes.
        let before = obj.len();
        obj.retain(|k, _| is_members(k) || crate::policy::user::is_user_urn(k) || !folded_alias(k));
        let mut dropped = obj.len() != before;
        for (k, v) in obj.iter_mut() {
            if is_members(k) {
                dropped |= self.filter_member_list(v).await?;
            } else if crate::policy::user::is_user_urn(k) {
                if let Value::Object(inner) = v {
                    for (k, v) in inner.iter_mut() {
                        if is_members(k) {
                            dropped |= self.filter_member_list(v).await?;
                        }
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// Keeps the members this token may see: groups, and users within its domains. A member
    /// the gateway cannot read (no string `value`, a name besides value, display, type and
    /// `$ref`) is dropped, as is a list that is not one.
    async fn filter_member_list(&self, list: &mut Value) -> Result<bool, BoxError> {
        let members = match list {
            Value::Null => return Ok(false),
            Value::Array(members) => members,
            other => {
                *other = Value::Array(Vec::new());
                return Ok(true);
            }
        };
        let mut kept = Vec::with_capacity(members.len());
        let mut dropped = false;
        for m in members.drain(..) {
            let Some(o) = m
                .as_object()
                .filter(|o| unknown_member(o, MEMBER_SUB_ATTRS).is_none())
            else {
                dropped = true;
                continue;
            };
            let is_group = get_ci(o, "type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("Group"));
            let keep = match get_ci(o, "value").and_then(Value::as_str) {
                Some(id) if !is_group => self.visible_user(id).await?,
                Some(_) => true,
                None => false,
            };
            if keep {
                kept.push(m);
            } else {
                dropped = true;
            }
        }
        *members = kept;
        Ok(dropped)
    }
}

fn out_of_scope(e: OutOfScope, detail: &'static str) -> GatewayError {
    GatewayError::forbidden(e.reason(), detail)
}

fn unknown_attribute(detail: String) -> GatewayError {
    GatewayError::BadRequest {
        reason: "unknown_attribute",
        scim_type: Some("invalidSyntax"),
        detail: detail.into(),
    }
}

fn missing_body() -> GatewayError {
    GatewayError::invalid_syntax("this operation needs a JSON body")
}

/// Whether a member name is `members` (bare or qualified with the Group URN, any letter case).
fn is_members(name: &str) -> bool {
    crate::policy::user::strip_user_urn(name)
        .unwrap_or(name)
        .eq_ignore_ascii_case("members")
}

/// Every `members` list in a Group body, however it is spelled: `members`, `MEMBERS`,
/// `urn:…:core:2.0:Group:members`, or nested under the Group URN.
fn member_lists(body: &Value) -> Vec<&Value> {
    fn walk<'a>(o: &'a serde_json::Map<String, Value>, top: bool, out: &mut Vec<&'a Value>) {
        for (k, v) in o {
            if is_members(k) {
                out.push(v);
            } else if top && crate::policy::user::is_user_urn(k) {
                if let Value::Object(inner) = v {
                    walk(inner, false, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Value::Object(o) = body {
        walk(o, true, &mut out);
    }
    out
}

fn collect_member_values(v: &Value) -> Result<Vec<String>, GatewayError> {
    let items = match v {
        Value::Array(a) => a.as_slice(),
        Value::Null => &[],
        _ => return Err(GatewayError::invalid_syntax("members must be an array")),
    };
    items
        .iter()
        .map(|m| {
            if let Some(k) = m
                .as_object()
                .and_then(|o| unknown_member(o, MEMBER_SUB_ATTRS))
            {
                return Err(GatewayError::invalid_syntax(format!(
                    "unknown member attribute {k:?}: a member may only name value, display, type and $ref"
                )));
            }
            m.as_object()
                .and_then(|o| get_ci(o, "value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| GatewayError::invalid_syntax("each member needs a string \"value\""))
        })
        .collect()
}

/// The user ids in every members list of a stored group (groups among the members are not
/// users), or `None` when a member cannot be read.
fn member_ids(group: &Value) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    for list in member_lists(group) {
        let items = match list {
            Value::Null => continue,
            Value::Array(items) => items,
            _ => return None,
        };
        for m in items {
            let o = m
                .as_object()
                .filter(|o| unknown_member(o, MEMBER_SUB_ATTRS).is_none())?;
            let is_group = get_ci(o, "type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("Group"));
            let id = get_ci(o, "value").and_then(Value::as_str)?;
            if !is_group {
                ids.push(id.to_owned());
            }
        }
    }
    Some(ids)
}

fn json_response(
    status: StatusCode,
    v: &Value,
    template: Option<&http::response::Parts>,
) -> GatewayResponse {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = GatewayResponse::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Some(t) = template {
        for (k, v) in t.headers.iter() {
            if k != header::CONTENT_LENGTH {
                resp.headers_mut().append(k.clone(), v.clone());
            }
        }
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::scim::SCIM_JSON),
    );
    resp
}

fn bad_query(detail: String) -> GatewayError {
    GatewayError::BadRequest {
        reason: "bad_query",
        scim_type: Some("invalidValue"),
        detail: detail.into(),
    }
}

async fn enforce<S>(
    inner: S,
    dir: Arc<Directory>,
    mut req: Request<Bytes>,
) -> Result<GatewayResponse, BoxError>
where
    S: Inner,
{
    let ext = req.extensions();
    let (Some(routed), Some(token), Some(snapshot)) = (
        ext.get::<Routed>().cloned(),
        ext.get::<Authenticated>().map(|a| a.0.clone()),
        ext.get::<Snapshot>().map(|s| s.0.clone()),
    ) else {
        return Err(GatewayError::Internal("domain check before routing").into());
    };
    let op = routed.op.clone();
    let ctx = Ctx {
        origin: Origin::of(&req, routed.tenant.clone()),
        record: ext.get::<RecordHandle>().cloned(),
        report_only: routed.tenant.mode == Mode::ReportOnly,
        token,
        inner,
        dir,
        max_body: snapshot.limits.max_body_bytes,
        limiters: snapshot.limiters.clone(),
        blast_cfg: snapshot.rate_limits.blast_radius,
    };

    // Bodies are read strictly for every token: what the gateway reads is what the backend reads.
    let wants_body = matches!(
        op.kind,
        OpKind::Create | OpKind::Replace | OpKind::Patch | OpKind::Search | OpKind::Bulk
    );
    let body: Option<Value> = if req.body().is_empty() {
        if wants_body {
            return Err(missing_body().into());
        }
        None
    } else if !wants_body {
        return Err(GatewayError::bad_request(
            "unexpected_body",
            "this operation takes no request body",
        )
        .into());
    } else {
        Some(
            parse_strict_keeping(req.body(), MAX_DEPTH, body_keep(&op))
                .map_err(|e| GatewayError::invalid_syntax(format!("invalid JSON body: {e}")))?,
        )
    };

    if op.endpoint == Endpoint::ServiceProviderConfig {
        let resp = ctx.forward(req).await?;
        return advertise(resp, &ctx).await;
    }
    if op.kind == OpKind::Bulk {
        if req.uri().query().is_some_and(|q| !q.is_empty()) {
            return Err(bad_query("/Bulk takes no query parameters".into()).into());
        }
        let body = body.as_ref().ok_or(missing_body())?;
        let ops = parse_bulk(body, MAX_OPERATIONS).map_err(|d| GatewayError::BadRequest {
            reason: "bulk_invalid",
            scim_type: Some("invalidSyntax"),
            detail: d.into(),
        })?;
        for b in &ops {
            authorize(ctx.token.scopes(), &b.op).map_err(GatewayError::MissingScope)?;
        }
        // A Bulk request costs one unit per operation; the first was charged on the way in.
        let extra = (ops.len() as u32).saturating_sub(1);
        if extra > 0 {
            if let Some(slot) = &ctx.token.rate() {
                crate::proxy::rate_limit::charge(slot, extra)?;
            }
            if let Some(slot) = &ctx.origin.tenant.rate {
                crate::proxy::rate_limit::charge(slot, extra)?;
            }
        }
        if !ctx.policy().unrestricted() {
            let mut created = HashSet::new();
            for b in &ops {
                // One refused operation fails the whole request before anything is forwarded.
                ctx.check_write(&b.op, b.data, &created, false).await?;
                if let (true, Some(id)) = (b.method == Method::POST, b.bulk_id) {
                    created.insert(format!("bulkId:{id}"));
                }
            }
        }
        ctx.charge_blast(ops.iter().map(|b| (&b.op, b.data)))?;
        let touched: Vec<Operation> = ops.iter().map(|b| b.op.clone()).collect();
        let resp = ctx.forward(req).await?;
        touched.iter().for_each(|o| ctx.invalidate(o));
        return Ok(resp);
    }
    if ctx.policy().unrestricted() || op.resource_type().is_none() {
        ctx.charge_blast([(&op, body.as_ref())])?;
        let resp = ctx.forward(req).await?;
        ctx.invalidate(&op);
        return Ok(resp);
    }

    // The query is parsed strictly and re-encoded: the parameters the gateway read are the
    // parameters the backend gets, and nothing else.
    let query = ScimQuery::from_query(req.uri().query()).map_err(bad_query)?;
    let users = op.endpoint == Endpoint::Resource(ResourceType::User);
    let is_list = matches!(op.kind, OpKind::List | OpKind::Search);
    if !is_list && query.has_list_params() {
        return Err(
            bad_query("filter, sorting and paging parameters only apply to lists".into()).into(),
        );
    }
    let forwarded = if users {
        query.backend_query(None)
    } else {
        query.canonical_query()
    };
    if !(users && is_list) {
        set_query(&mut req, &forwarded)?;
    }

    let empty = HashSet::new();
    match (op.endpoint, op.kind) {
        (_, OpKind::Create | OpKind::Replace | OpKind::Patch | OpKind::Delete) => {
            let pinned =
                users && op.kind != OpKind::Create && ctx.origin.tenant.upstream.conditional_writes;
            let resp = if pinned {
                ctx.pinned_write(&op, body.as_ref(), req).await?
            } else {
                ctx.check_write(&op, body.as_ref(), &empty, false).await?;
                ctx.charge_blast([(&op, body.as_ref())])?;
                ctx.forward(req).await?
            };
            // The answer to a pinned PUT or PATCH is the whole user at its new version (no
            // `attributes` trimmed it): the next write may be judged on it. Its cache entry is
            // then replaced (or dropped) by `post_write_check`.
            let remember = op
                .id
                .as_deref()
                .filter(|_| pinned && op.kind != OpKind::Delete && forwarded.is_empty());
            if remember.is_none() {
                ctx.invalidate(&op);
            }
            if users && op.id.is_some() && resp.status() == StatusCode::NOT_FOUND {
                // The user went missing after it was judged: the gateway's own 404, whose body
                // is the same whether a user is hidden or absent, not the backend's.
                ctx.invalidate(&op);
                if !ctx.report_only {
                    return Err(GatewayError::Hidden {
                        reason: "resource_missing",
                    }
                    .into());
                }
            }
            if users && matches!(op.kind, OpKind::Create | OpKind::Replace | OpKind::Patch) {
                return post_write_check(&ctx, resp, remember).await;
            }
            if !users && resp.status().is_success() && !ctx.report_only {
                // A group written back to the client shows only the members it may see, as
                // the gateway read them: the checked tree, never the backend's text (which
                // could name `members` twice).
                let (parts, bytes) = split(resp).await;
                if let Ok(mut group) = serde_json::from_slice::<Value>(&bytes) {
                    ctx.filter_members(&mut group).await?;
                    return Ok(json_response(parts.status, &group, Some(&parts)));
                }
                return Ok(GatewayResponse::from_parts(parts, Full::new(bytes)));
            }
            Ok(resp)
        }
        (Endpoint::Resource(ResourceType::User), OpKind::Get) => {
            let q = query;
            // A conditional GET answers 304 or 412 before the gateway can judge the user, which
            // would tell a hidden user from a missing one: the conditions are not forwarded.
            for h in CONDITIONS {
                req.headers_mut().remove(h);
            }
            let resp = ctx.forward(req).await?;
            let status = resp.status();
            if status != StatusCode::OK && !status.is_server_error() && !ctx.report_only {
                // Whatever else the backend says about this id reads exactly like a missing user.
                return Err(GatewayError::Hidden {
                    reason: "resource_missing",
                }
                .into());
            }
            if resp.status() != StatusCode::OK {
                return Ok(resp);
            }
            let (parts, bytes) = split(resp).await;
            // The addresses are read from the text itself; no document tree is built unless
            // attributes must be removed from the answer.
            let addresses = scan_user_addresses(&bytes)
                .map_err(|_| GatewayError::UpstreamInvalid("the backend's user is not JSON"))?;
            match ctx.policy().judge(&addresses) {
                Ok(()) => {}
                Err(e) => {
                    ctx.verdict(Err(GatewayError::Hidden { reason: e.reason() }))?;
                    return Ok(GatewayResponse::from_parts(parts, Full::new(bytes)));
                }
            }
            let hidden = q.hidden_address_attrs();
            if hidden.is_empty() {
                // The checked bytes go back as they came: no re-serialisation.
                return Ok(GatewayResponse::from_parts(parts, Full::new(bytes)));
            }
            let mut user = parse_json(&bytes, "the backend's user is not JSON")?;
            strip_attrs(&mut user, &hidden);
            Ok(json_response(StatusCode::OK, &user, Some(&parts)))
        }
        (Endpoint::Resource(ResourceType::User), OpKind::List | OpKind::Search) => {
            let q = match (op.kind, &body) {
                (OpKind::Search, Some(b)) => ScimQuery::from_search(b).map_err(bad_query)?,
                _ => query,
            };
            if ctx.report_only {
                return report_only_list(&ctx, req).await;
            }
            list_users(&ctx, &q, op.kind == OpKind::Search).await
        }
        (Endpoint::Resource(ResourceType::Group), OpKind::Get | OpKind::List | OpKind::Search) => {
            let single = op.kind == OpKind::Get;
            let filter = match (op.kind, &body) {
                (OpKind::Search, Some(b)) => ScimQuery::from_search(b).map_err(bad_query)?.filter,
                _ => query.filter.clone(),
            };
            if let Some(f) = &filter {
                ctx.check_member_filter(f).await?;
            }
            let resp = ctx.forward(req).await?;
            if resp.status() != StatusCode::OK {
                return Ok(resp);
            }
            let (parts, bytes) = split(resp).await;
            let mut v = parse_json(&bytes, "the backend's group is not JSON")?;
            let mut dropped = false;
            if single {
                dropped |= ctx.filter_members(&mut v).await?;
            } else if let Some(rs) = v.as_object_mut().and_then(|o| {
                let k = o
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case("Resources"))
                    .cloned()?;
                o.get_mut(&k)?.as_array_mut()
            }) {
                for g in rs.iter_mut() {
                    dropped |= ctx.filter_members(g).await?;
                }
            }
            if dropped && ctx.report_only {
                ctx.verdict(Err(GatewayError::forbidden(
                    "member_out_of_scope",
                    "hidden group members",
                )))?;
                return Ok(GatewayResponse::from_parts(parts, Full::new(bytes)));
            }
            Ok(json_response(StatusCode::OK, &v, Some(&parts)))
        }
        _ => ctx.forward(req).await,
    }
}

/// What of a request body the gateway builds: a User create or replace is judged on a few of
/// its members ([`user_write_member`]); anything else is read whole.
fn body_keep(op: &Operation) -> Keep {
    match (op.endpoint, op.kind) {
        (Endpoint::Resource(ResourceType::User), OpKind::Create | OpKind::Replace) => {
            Keep::Select(user_write_member)
        }
        _ => Keep::Whole,
    }
}

/// A buffered response's head and body bytes.
async fn split(resp: GatewayResponse) -> (http::response::Parts, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts, bytes)
}

/// A backend body the gateway must read to decide; unreadable is a 502, never a pass.
fn parse_json(bytes: &[u8], what: &'static str) -> Result<Value, GatewayError> {
    serde_json::from_slice(bytes).map_err(|_| GatewayError::UpstreamInvalid(what))
}

/// Makes `query` the query the backend gets (the forwarded path is written from the routed
/// operation, not from this URI). The scheme and authority stay: the public URL of the
/// answer's locations is built from the authority when there is no `Host` (HTTP/2).
fn set_query(req: &mut Request<Bytes>, query: &str) -> Result<(), GatewayError> {
    let current = req.uri().query();
    if (current == Some(query) && !query.is_empty()) || (current.is_none() && query.is_empty()) {
        return Ok(());
    }
    let pq = if query.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{query}")
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(pq).map_err(|_| bad_query("unusable query".into()))?,
    );
    *req.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| bad_query("unusable query".into()))?;
    Ok(())
}

/// After a user write the backend answers with the stored user. If the backend's reading of
/// the write differed from the gateway's and the user is now outside the token's domains, the
/// write cannot be undone, but the client is not shown the user and the log says so loudly.
///
/// With `remember` (the id of a user written by a pinned write) and an `ETag` on the answer,
/// the answer is read as the projection writes are judged on, judged, and cached at that
/// version for the next write.
async fn post_write_check<S>(
    ctx: &Ctx<S>,
    resp: GatewayResponse,
    remember: Option<&str>,
) -> Result<GatewayResponse, BoxError>
where
    S: Inner,
{
    let forget = || {
        if let Some(id) = remember {
            ctx.dir.invalidate(&ctx.origin.tenant, id);
        }
    };
    if !resp.status().is_success() || ctx.report_only {
        forget();
        return Ok(resp);
    }
    let (parts, bytes) = split(resp).await;
    if bytes.is_empty() {
        forget();
    } else {
        let unreadable =
            || GatewayError::UpstreamInvalid("the backend's answer to a write is not JSON");
        let version = parts
            .headers
            .get(header::ETAG)
            .filter(|v| crate::scim::etag::is_entity_tag(v));
        let judged = match (remember, version) {
            (Some(id), Some(version)) => {
                let projection = address_projection(&bytes).map_err(|_| {
                    forget();
                    unreadable()
                })?;
                let judged = ctx.policy().judge_user(&projection);
                if judged.is_ok() {
                    let user = StoredUser {
                        projection,
                        version: Some(version.clone()),
                    };
                    ctx.dir.remember(&ctx.origin.tenant, id, user);
                } else {
                    forget();
                }
                judged
            }
            // An answer the gateway cannot read is not passed on: it could hold any user.
            _ => {
                forget();
                ctx.policy()
                    .judge(&scan_user_addresses(&bytes).map_err(|_| unreadable())?)
            }
        };
        if let Err(e) = judged {
            tracing::error!(
                reason = e.reason(),
                tenant = &*ctx.origin.tenant.id,
                token_id = ctx.token.id(),
                "the backend stored a user outside the token's domains after a write the gateway allowed"
            );
            return Err(GatewayError::UpstreamInvalid(
                "the stored user is outside the token's domains",
            )
            .into());
        }
    }
    Ok(GatewayResponse::from_parts(parts, Full::new(bytes)))
}

/// Report-only: the backend's list goes back untouched; what enforce mode would have hidden is
/// logged as `would_deny`.
async fn report_only_list<S>(ctx: &Ctx<S>, req: Request<Bytes>) -> Result<GatewayResponse, BoxError>
where
    S: Inner,
{
    let resp = ctx.forward(req).await?;
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (parts, bytes) = split(resp).await;
    if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
        if let Some((resources, _)) = list_resources(&mut v) {
            if resources
                .iter()
                .any(|r| ctx.policy().judge_user(r).is_err())
            {
                ctx.verdict(Err(GatewayError::Hidden {
                    reason: "domain_out_of_scope",
                }))?;
            }
        }
    }
    Ok(GatewayResponse::from_parts(parts, Full::new(bytes)))
}

/// Pages through the backend and returns only the users this token may see, with
/// `totalResults`, `startIndex` and `itemsPerPage` computed over them alone.
async fn list_users<S>(
    ctx: &Ctx<S>,
    q: &ScimQuery,
    search: bool,
) -> Result<GatewayResponse, BoxError>
where
    S: Inner,
{
    let (start, count) = q.page();
    let hidden: Vec<AddressAttr> = q.hidden_address_attrs();
    let policy = ctx.policy();
    let mut visible = Vec::new();
    let mut out_of_scope = false;
    let mut next = 1usize;
    let mut scanned = 0usize;
    loop {
        let req = if search {
            let body = serde_json::to_vec(&q.backend_search(next, SCAN_PAGE)).unwrap_or_default();
            let op = Operation {
                endpoint: Endpoint::Resource(ResourceType::User),
                kind: OpKind::Search,
                id: None,
            };
            ctx.origin.request(Method::POST, op, "", Some(body))
        } else {
            let op = Operation {
                endpoint: Endpoint::Resource(ResourceType::User),
                kind: OpKind::List,
                id: None,
            };
            ctx.origin.request(
                Method::GET,
                op,
                &q.backend_query(Some((next, SCAN_PAGE))),
                None,
            )
        };
        let resp = ctx.forward(req).await?;
        if resp.status() != StatusCode::OK {
            // The backend's own error (an invalid filter, say) carries no user data.
            return Ok(resp);
        }
        // Read without a tree: each user's addresses are scanned from its text, and the users
        // shown are passed on as the backend wrote them.
        let (_, page) = split(resp).await;
        let (resources, total) = raw_list_resources(&page).ok_or(GatewayError::UpstreamInvalid(
            "the backend's list response is not a ListResponse with a Resources array",
        ))?;
        let n = resources.len();
        for r in resources {
            let in_scope =
                scan_user_addresses(r.get().as_bytes()).is_ok_and(|a| policy.judge(&a).is_ok());
            if !in_scope {
                out_of_scope = true;
            } else if hidden.is_empty() {
                visible.push(r.to_owned());
            } else {
                let mut v = parse_json(r.get().as_bytes(), "a listed user is not JSON")?;
                strip_attrs(&mut v, &hidden);
                visible.push(serde_json::value::to_raw_value(&v)?);
            }
        }
        scanned += n;
        next += n;
        if n == 0 || scanned >= total {
            break;
        }
        if scanned >= MAX_SCAN {
            return Err(GatewayError::BadRequest {
                reason: "too_many_results",
                scim_type: Some("tooMany"),
                detail: "the filter matches more users than the gateway will scan; narrow it"
                    .into(),
            }
            .into());
        }
    }
    if out_of_scope && ctx.report_only {
        ctx.verdict(Err(GatewayError::Hidden {
            reason: "domain_out_of_scope",
        }))?;
    }
    let total = visible.len();
    let page = visible.get(start - 1..).unwrap_or_default();
    let page = &page[..count.min(page.len())];
    let mut resp = GatewayResponse::new(Full::new(Bytes::from(list_response(page, total, start))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::scim::SCIM_JSON),
    );
    Ok(resp)
}

/// Rewrites `/ServiceProviderConfig` so it describes what this token may do through the gateway.
async fn advertise<S>(resp: GatewayResponse, ctx: &Ctx<S>) -> Result<GatewayResponse, BoxError>
where
    S: Inner,
{
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (parts, bytes) = split(resp).await;
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(GatewayError::UpstreamInvalid(
            "the backend's ServiceProviderConfig is not JSON",
        )
        .into());
    };
    if let Some(obj) = v.as_object_mut() {
        let backend = obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("bulk"))
            .map(|(_, b)| b.clone());
        let backend_ok = backend
            .as_ref()
            .and_then(|b| b.get("supported"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let backend_max = backend
            .as_ref()
            .and_then(|b| b.get("maxOperations"))
            .and_then(Value::as_u64)
            .unwrap_or(MAX_OPERATIONS as u64) as usize;
        let allowed = backend_ok
            && ctx
                .token
                .scopes()
                .contains(crate::policy::scope::Scope::Bulk);
        obj.retain(|k, _| !k.eq_ignore_ascii_case("bulk"));
        obj.insert(
            "bulk".into(),
            serde_json::json!({
                "supported": allowed,
                "maxOperations": if allowed { backend_max.min(MAX_OPERATIONS) } else { 0 },
                "maxPayloadSize": if allowed { ctx.max_body } else { 0 },
            }),
        );
    }
    Ok(json_response(StatusCode::OK, &v, Some(&parts)))
}
