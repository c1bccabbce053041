//! Normalises the request path once; later layers check, and `forward` sends, exactly this path.

use super::NormalizedPath;
use crate::policy::route::normalize_path;
use crate::scim::error::GatewayError;
use http::Request;
use tower::filter::{FilterLayer, Predicate};

#[derive(Clone, Copy)]
pub struct NormalizePath;

pub fn layer() -> FilterLayer<NormalizePath> {
    FilterLayer::new(NormalizePath)
}

impl<B> Predicate<Request<B>> for NormalizePath {
    type Request = Request<B>;
    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, crate::BoxError> {
        let path = normalize_path(req.uri().path()).map_err(GatewayError::from)?;
        if let Some(q) = req.uri().query() {
            if q.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'#') {
                return Err(GatewayError::bad_request(
                    "bad_query",
                    "the query string is malformed",
                )
                .into());
            }
        }
        let changed = path != req.uri().path();
        super::access_log::record(&req, |r| {
            r.path = Some(path.clone());
            if changed {
                r.normalizations.push("path_normalized");
            }
        });
        req.extensions_mut().insert(NormalizedPath(path));
        Ok(req)
    }
}
