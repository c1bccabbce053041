//! The token format: `scimgate_` + 43 base62 characters (256 bits from the OS random source) +
//! 6 base62 characters of CRC-32 over everything before them.
//!
//! The prefix lets secret scanners recognise a leaked token; the checksum lets the gateway refuse
//! a mistyped or made-up token without touching the index.

use sha2::{Digest, Sha256};

/// Recognisable prefix of every scimgate token.
pub const PREFIX: &str = "scimgate_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Generates a new secret token. 43 base62 characters, each drawn uniformly by rejection
/// sampling, carry 256.03 bits of entropy.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(TOKEN_LEN);
    out.push_str(PREFIX);
    let mut buf = [0u8; 64];
    while out.len() < PREFIX.len() + BODY_LEN {
        getrandom::fill(&mut buf)?;
        for b in buf {
            // 248 = 4 × 62: bytes at or above it would bias the draw.
            if b < 248 && out.len() < PREFIX.len() + BODY_LEN {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    let check = crc32fast::hash(out.as_bytes());
    out.extend(base62_fixed(check).map(char::from));
    Ok(out)
}

/// The checksum's fixed-width base62 digits, on the stack: checked on every request.
fn base62_fixed(mut v: u32) -> [u8; CHECK_LEN] {
    let mut digits = [b'0'; CHECK_LEN];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(v % 62) as usize];
        v /= 62;
    }
    digits
}

/// Whether `s` has the shape of a scimgate token and its checksum is right.
pub fn looks_like_token(s: &str) -> bool {
    if s.len() != TOKEN_LEN || !s.is_ascii() || !s.starts_with(PREFIX) {
        return false;
    }
    let (head, check) = s.split_at(TOKEN_LEN - CHECK_LEN);
    if !head[PREFIX.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric())
    {
        return false;
    }
    base62_fixed(crc32fast::hash(head.as_bytes())) == check.as_bytes()
}

/// SHA-256 of the whole token: what the token file stores and the index is keyed by.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The non-secret hint an operator sees: the last four characters.
pub fn hint(token: &str) -> String {
    token[token.len().saturating_sub(4)..].to_owned()
}
