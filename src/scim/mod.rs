//! SCIM protocol pieces the gateway needs: error responses (RFC 7644 §3.12), strict JSON body
//! parsing, and rewriting of the backend's URLs to the gateway's public ones.

pub mod error;
pub mod etag;
pub mod json;
pub mod rewrite;

/// `application/scim+json`, the media type of every body the gateway writes.
pub const SCIM_JSON: &str = "application/scim+json";
