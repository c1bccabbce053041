//! Bearer tokens scimgate issues: their format (prefix, 256-bit secret, checksum), the hashed
//! index the gateway validates against, and the token file the CLI edits.

pub(crate) mod file;
mod format;
mod store;
pub mod usage;

pub use file::{update_tokens_file, write_tokens_file};
pub use format::{generate, hash, hint, looks_like_token, PREFIX};
pub use store::{parse_domains, AuthFailure, Builder, Entry, TokenIndex, TokenRef};

#[cfg(test)]
mod tests;
