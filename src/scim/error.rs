//! The request boundary's error type and its single mapping to SCIM error responses
//! (RFC 7644 §3.12): `application/scim+json` with `schemas`, `status`, `detail` and, where one
//! applies, `scimType`; RFC 6750 `WWW-Authenticate` on every 401.

use crate::policy::route::RouteError;
use crate::policy::scope::Scope;
use crate::token::AuthFailure;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::borrow::Cow;

/// Every way a request can fail at the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthFailure),
    #[error("too many failed authentication attempts")]
    AuthThrottled,
    /// A rate limit or blast-radius cap refused the request.
    #[error("{detail}")]
    RateLimited {
        reason: &'static str,
        detail: &'static str,
        retry_after: u64,
        /// `RateLimit-Policy` and `RateLimit` header values.
        headers: Option<(String, String)>,
    },
    /// A concurrency bound refused the request.
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded { reason: &'static str },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed { allow: &'static str },
    #[error("the token belongs to another tenant")]
    TenantMismatch,
    #[error("the token lacks the {0} scope")]
    MissingScope(Scope),
    /// A policy refusal (domain scoping and the like) with a stable reason code.
    #[error("{detail}")]
    Forbidden {
        reason: &'static str,
        detail: Cow<'static, str>,
    },
    /// A resource the token may not see: answered exactly like a missing one.
    #[error("resource outside the token's scope ({reason})")]
    Hidden { reason: &'static str },
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("{detail}")]
    BadRequest {
        reason: &'static str,
        scim_type: Option<&'static str>,
        detail: Cow<'static, str>,
    },
    /// The client's `If-Match` names no version the user has (RFC 7644 §3.14).
    #[error("the user has changed since the version the If-Match header names")]
    PreconditionFailed,
    #[error("the client did not send the request in time")]
    RequestTimeout,
    #[error("the backend is unreachable: {0}")]
    UpstreamUnavailable(String),
    #[error("the backend did not answer in time")]
    UpstreamTimeout,
    #[error("the backend's response could not be used: {0}")]
    UpstreamInvalid(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// The detail every 401 carries, whatever the cause: the client learns nothing about which
/// tokens exist.
const UNAUTHENTICATED: &str = "The bearer token is missing, invalid, expired or revoked.";

impl GatewayError {
    pub fn bad_request(reason: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::BadRequest {
            reason,
            scim_type: None,
            detail: detail.into(),
        }
    }

    pub fn invalid_syntax(detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::BadRequest {
            reason: "invalid_body",
            scim_type: Some("invalidSyntax"),
            detail: detail.into(),
        }
    }

    pub fn forbidden(reason: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError::Forbidden {
            reason,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Auth(_) => StatusCode::UNAUTHORIZED,
            AuthThrottled | RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Route(RouteError::BadPath(_)) => StatusCode::BAD_REQUEST,
            Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            Route(RouteError::MethodNotAllowed) | MethodNotAllowed { .. } => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            Route(RouteError::NotImplemented(_)) => StatusCode::NOT_IMPLEMENTED,
            TenantMismatch | MissingScope(_) | Forbidden { .. } => StatusCode::FORBIDDEN,
            Hidden { .. } => StatusCode::NOT_FOUND,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BadRequest { .. } => StatusCode::BAD_REQUEST,
            PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UpstreamUnavailable(_) | UpstreamInvalid(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable reason code for the log.
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Auth(f) => f.reason(),
            AuthThrottled => "auth_throttled",
            RateLimited { reason, .. } | Overloaded { reason } => reason,
            Route(RouteError::BadPath(_)) => "bad_path",
            Route(RouteError::NotFound) => "unknown_path",
            Route(RouteError::MethodNotAllowed) | MethodNotAllowed { .. } => "method_not_allowed",
            Route(RouteError::NotImplemented(_)) => "not_implemented",
            TenantMismatch => "tenant_mismatch",
            MissingScope(_) => "scope_denied",
            Forbidden { reason, .. } | Hidden { reason } | BadRequest { reason, .. } => reason,
            BodyTooLarge(_) => "body_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            PreconditionFailed => "precondition_failed",
            RequestTimeout => "request_timeout",
            UpstreamUnavailable(_) => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamInvalid(_) => "upstream_invalid",
            Internal(_) => "internal",
        }
    }

    /// Whether this is a policy refusal (logged as `deny`) rather than a failure.
    pub fn is_policy_decision(&self) -> bool {
        use GatewayError::*;
        !matches!(
            self,
            UpstreamUnavailable(_) | UpstreamTimeout | UpstreamInvalid(_) | Internal(_)
        )
    }

    fn scim_type(&self) -> Option<&'static str> {
        match self {
            GatewayError::BadRequest { scim_type, .. } => *scim_type,
            GatewayError::BodyTooLarge(_) => Some("tooLarge"),
            GatewayError::Route(RouteError::BadPath(_)) => Some("invalidPath"),
            _ => None,
        }
    }

    /// What the client is told. 401s are identical whatever the cause, hidden resources read
    /// like missing ones, and backend failures do not describe the backend.
    fn client_detail(&self) -> Cow<'_, str> {
        use GatewayError::*;
        match self {
            Auth(_) => UNAUTHENTICATED.into(),
            Hidden { .. } => "Resource not found.".into(),
            UpstreamUnavailable(_) => "The SCIM service behind the gateway is unavailable.".into(),
            UpstreamInvalid(_) => {
                "The SCIM service behind the gateway sent an unusable response.".into()
            }
            other => other.to_string().into(),
        }
    }

    /// The SCIM error response for this error: the one place errors become responses.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut resp = error_response(status, self.scim_type(), &self.client_detail());
        let headers = resp.headers_mut();
        match self {
            GatewayError::Auth(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="scimgate", error="invalid_token""#),
                );
            }
            GatewayError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::AuthThrottled => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            GatewayError::Overloaded { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::RateLimited {
                retry_after,
                headers: rl,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                if let Some((policy, status)) = rl {
                    if let (Ok(p), Ok(s)) =
                        (HeaderValue::from_str(policy), HeaderValue::from_str(status))
                    {
                        headers.insert(RATELIMIT_POLICY.clone(), p);
                        headers.insert(RATELIMIT.clone(), s);
                    }
                }
            }
            _ => {}
        }
        resp
    }
}

/// A SCIM error body with the given status, optional `scimType` and detail.
pub fn error_response(
    status: StatusCode,
    scim_type: Option<&str>,
    detail: &str,
) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        schemas: [&'a str; 1],
        status: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        scim_type: Option<&'a str>,
        detail: &'a str,
    }
    let body = serde_json::to_vec(&Body {
        schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"],
        status: status.as_str(),
        scim_type,
        detail,
    })
    .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::SCIM_JSON),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
