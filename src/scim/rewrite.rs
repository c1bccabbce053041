//! Rewriting the backend's absolute URLs (`Location`, `meta.location`, `$ref`) to the gateway's
//! public prefix, so clients never learn the backend's address.

use memchr::memmem;

/// Replaces every occurrence of `from` that starts a JSON string and ends at a path boundary
/// with `to`. Returns `None` when nothing matched, so the common case copies nothing.
pub fn rewrite_body(body: &[u8], from: &str, to: &str) -> Option<Vec<u8>> {
    let needle = from.as_bytes();
    let finder = memmem::Finder::new(needle);
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    let mut pos = 0;
    while let Some(i) = finder.find(&body[pos..]) {
        let start = pos + i;
        let end = start + needle.len();
        pos = end;
        let starts_string = start > 0 && body[start - 1] == b'"';
        let at_boundary = matches!(body.get(end), Some(b'/' | b'"' | b'?' | b'#'));
        if !(starts_string && at_boundary) {
            continue;
        }
        let buf = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
        buf.extend_from_slice(&body[last..start]);
        buf.extend_from_slice(to.as_bytes());
        last = end;
    }
    let mut buf = out?;
    buf.extend_from_slice(&body[last..]);
    Some(buf)
}

/// Rewrites a `Location`-style header value that points under `from`.
pub fn rewrite_url(value: &str, from: &str, to: &str) -> Option<String> {
    let rest = value.strip_prefix(from)?;
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None;
    }
    Some(format!("{to}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "http://10.0.0.5:8080/acme/v2";
    const TO: &str = "https://gw.example/acme/scim/v2";

    #[test]
    fn rewrites_locations_and_refs_only_at_string_starts() {
        let body = br#"{"meta":{"location":"http://10.0.0.5:8080/acme/v2/Users/1"},"members":[{"$ref":"http://10.0.0.5:8080/acme/v2/Users/2"}],"note":"see http://10.0.0.5:8080/acme/v2/x","other":"http://10.0.0.5:8080/acme/v22/Users"}"#;
        let out = String::from_utf8(rewrite_body(body, FROM, TO).unwrap()).unwrap();
        assert!(out.contains(r#""location":"https://gw.example/acme/scim/v2/Users/1""#));
        assert!(out.contains(r#""$ref":"https://gw.example/acme/scim/v2/Users/2""#));
        assert!(out.contains("see http://10.0.0.5:8080/acme/v2/x"));
        assert!(out.contains("http://10.0.0.5:8080/acme/v22/Users"));
        assert!(rewrite_body(b"{\"a\":1}", FROM, TO).is_none());
    }

    #[test]
    fn rewrites_header_urls_at_a_boundary() {
        assert_eq!(
            rewrite_url("http://10.0.0.5:8080/acme/v2/Users/1", FROM, TO).as_deref(),
            Some("https://gw.example/acme/scim/v2/Users/1")
        );
        assert_eq!(rewrite_url("http://10.0.0.5:8080/acme/v22", FROM, TO), None);
        assert_eq!(rewrite_url("http://other/acme/v2", FROM, TO), None);
    }
}
