//! scimgate: a TLS-terminating SCIM 2.0 gateway that enforces token, tenant, scope and
//! email-domain policy in front of a legacy SCIM service.
//!
//! A request flows through the tower stack built in [`proxy::stack`]; every decision lives in a
//! pure function under [`policy`], and every refusal becomes a SCIM error in [`scim::error`].

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod flusher;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod scim;
pub mod server;
pub mod shard;
pub mod telemetry;
pub mod tls;
pub mod token;

#[doc(hidden)]
pub mod test_util;

/// The boxed error type used between tower layers; [`scim::error::GatewayError`] travels in it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
