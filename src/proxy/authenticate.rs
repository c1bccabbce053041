//! Authenticates the bearer token: `Authorization: Bearer <token>` (scheme case-insensitive),
//! or, for Okta's "Header" mode, a bare value that carries scimgate's prefix and a valid
//! checksum. Never from the query string or the body. Fails closed: no token, no request.

use super::{Authenticated, Snapshot};
use crate::scim::error::GatewayError;
use crate::token::{looks_like_token, AuthFailure};
use http::{header, HeaderMap, Request};
use tower::filter::{FilterLayer, Predicate};

#[derive(Clone, Copy)]
pub struct Authenticate;

pub fn layer() -> FilterLayer<Authenticate> {
    FilterLayer::new(Authenticate)
}

/// Extracts the presented credential, refusing anything ambiguous (two headers, junk).
pub fn credential(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    if value.is_empty() {
        return Err(AuthFailure::Missing);
    }
    if let Some((scheme, rest)) = value.split_once(' ') {
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = rest.trim_start();
            return if token.is_empty() {
                Err(AuthFailure::Missing)
            } else {
                Ok(token)
            };
        }
        return Err(AuthFailure::Malformed);
    }
    if looks_like_token(value) {
        Ok(value)
    } else {
        Err(AuthFailure::Malformed)
    }
}

impl<B> Predicate<Request<B>> for Authenticate {
    type Request = Request<B>;
    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, crate::BoxError> {
        let snapshot = req
            .extensions()
            .get::<Snapshot>()
            .ok_or(GatewayError::Internal("no policy snapshot"))?;
        let result = credential(req.headers())
            .and_then(|tok| snapshot.0.tokens.validate(tok, super::unix_now()));
        let entry = match result {
            Ok(entry) => entry,
            Err(failure) => return Err(GatewayError::Auth(failure).into()),
        };
        super::access_log::record(&req, |r| {
            r.token_id = Some(entry.clone());
        });
        req.extensions_mut().insert(Authenticated(entry));
        Ok(req)
    }
}
