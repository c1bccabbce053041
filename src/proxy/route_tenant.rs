//! Routes the normalised path to a tenant by prefix, classifies the SCIM operation, and
//! requires the token to belong to that tenant.

use super::{Authenticated, NormalizedPath, Routed, Snapshot};
use crate::policy::route::{allowed_methods, classify, RouteError};
use crate::scim::error::GatewayError;
use http::Request;
use tower::filter::{FilterLayer, Predicate};

#[derive(Clone, Copy)]
pub struct RouteTenant;

pub fn layer() -> FilterLayer<RouteTenant> {
    FilterLayer::new(RouteTenant)
}

impl<B> Predicate<Request<B>> for RouteTenant {
    type Request = Request<B>;
    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, crate::BoxError> {
        let ext = req.extensions();
        let (Some(snapshot), Some(path), Some(token)) = (
            ext.get::<Snapshot>(),
            ext.get::<NormalizedPath>(),
            ext.get::<Authenticated>(),
        ) else {
            return Err(GatewayError::Internal("routing before authentication").into());
        };
        let (tenant, rest) = snapshot
            .0
            .route(&path.0)
            .ok_or(GatewayError::Route(RouteError::NotFound))?;
        super::access_log::record(&req, |r| r.tenant = Some(tenant.id.clone()));
        if tenant.id != *token.0.tenant() {
            return Err(GatewayError::TenantMismatch.into());
        }
        let op = classify(req.method(), rest).map_err(|e| match e {
            RouteError::MethodNotAllowed => GatewayError::MethodNotAllowed {
                allow: allowed_methods(rest),
            },
            other => GatewayError::from(other),
        })?;
        let canonical = op.endpoint.canonical();
        let spelled = rest.split('/').find(|s| !s.is_empty()).unwrap_or("");
        super::access_log::record(&req, |r| {
            r.operation = Some(op.kind.as_str());
            r.resource_type = Some(canonical);
            r.target_id = op.id.as_deref().map(str::to_owned);
            if spelled != canonical {
                r.normalizations.push("endpoint_case");
            }
        });
        let routed = Routed {
            tenant: tenant.clone(),
            op,
        };
        req.extensions_mut().insert(routed);
        Ok(req)
    }
}
