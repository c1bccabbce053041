//! Reads the live policy once per request and attaches it, so every later layer judges the
//! request by the same snapshot even if a reload lands mid-request.

use super::Snapshot;
use crate::policy::PolicyHandle;
use http::Request;
use tower::filter::{FilterLayer, Predicate};

#[derive(Clone)]
pub struct SnapshotPolicy(PolicyHandle);

pub fn layer(policy: PolicyHandle) -> FilterLayer<SnapshotPolicy> {
    FilterLayer::new(SnapshotPolicy(policy))
}

impl<B> Predicate<Request<B>> for SnapshotPolicy {
    type Request = Request<B>;
    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, crate::BoxError> {
        let policy = self.0.load_full();
        super::access_log::record(&req, |r| {
            r.policy_version = Some(policy.version.clone());
            r.audit = policy.audit.clone();
        });
        req.extensions_mut().insert(Snapshot(policy));
        Ok(req)
    }
}
