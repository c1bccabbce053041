//! Requires the token to hold the scope the operation needs (403 otherwise). Discovery
//! endpoints need only a valid token.

use super::{Authenticated, Routed};
use crate::policy::scope::authorize;
use crate::scim::error::GatewayError;
use http::Request;
use tower::filter::{FilterLayer, Predicate};

#[derive(Clone, Copy)]
pub struct AuthorizeScope;

pub fn layer() -> FilterLayer<AuthorizeScope> {
    FilterLayer::new(AuthorizeScope)
}

impl<B> Predicate<Request<B>> for AuthorizeScope {
    type Request = Request<B>;
    fn check(&mut self, req: Request<B>) -> Result<Request<B>, crate::BoxError> {
        let ext = req.extensions();
        let (Some(token), Some(routed)) = (ext.get::<Authenticated>(), ext.get::<Routed>()) else {
            return Err(GatewayError::Internal("scope check before routing").into());
        };
        authorize(token.0.scopes(), &routed.op).map_err(GatewayError::MissingScope)?;
        Ok(req)
    }
}
