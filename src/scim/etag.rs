//! `If-Match` against a resource version (RFC 9110 §13.1.1, RFC 7644 §3.14), for writes the
//! gateway pins to the version it judged: the client's own condition is evaluated here, so the
//! backend only ever gets the gateway's.

use http::HeaderValue;

/// Why an `If-Match` header cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the If-Match header is not a list of entity tags or \"*\"")]
pub struct MalformedIfMatch;

/// Whether the `If-Match` header lines `values` let a write to a resource at `version` (its
/// `ETag`) proceed. SCIM versions are weak tags, so tags compare weakly: `W/"3"` matches
/// `"3"`. `*` matches any existing resource. A header that is not a list of entity tags is an
/// error, never a match.
pub fn if_match_allows<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    version: &HeaderValue,
) -> Result<bool, MalformedIfMatch> {
    let version = opaque(version.as_bytes()).ok_or(MalformedIfMatch)?;
    let mut allows = false;
    let mut any = false;
    for value in values {
        for tag in EntityTags::new(value.as_bytes()) {
            let tag = tag?;
            any = true;
            allows |= tag == b"*" || tag == version;
        }
    }
    if !any {
        return Err(MalformedIfMatch);
    }
    Ok(allows)
}

/// Whether a backend's `ETag` is an entity tag a write can be pinned to.
pub fn is_entity_tag(v: &HeaderValue) -> bool {
    opaque(v.as_bytes()).is_some()
}

/// The opaque tag of one entity tag (`"x"` or `W/"x"`), quotes included: what weak comparison
/// compares.
fn opaque(tag: &[u8]) -> Option<&[u8]> {
    let t = tag.strip_prefix(b"W/").unwrap_or(tag);
    let ok = t.len() >= 2
        && t[0] == b'"'
        && t[t.len() - 1] == b'"'
        && t[1..t.len() - 1].iter().all(|&c| is_etagc(c));
    ok.then_some(t)
}

/// `etagc = %x21 / %x23-7E / obs-text` (RFC 9110 §8.8.3).
fn is_etagc(c: u8) -> bool {
    c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80
}

/// The entity tags of one header line: `*`, or a comma-separated list (commas may also sit
/// inside a tag, so the list is read tag by tag, not split).
struct EntityTags<'a> {
    rest: &'a [u8],
    seen: bool,
    failed: bool,
}

impl<'a> EntityTags<'a> {
    fn new(line: &'a [u8]) -> Self {
        EntityTags {
            rest: line,
            seen: false,
            failed: false,
        }
    }
}

impl<'a> Iterator for EntityTags<'a> {
    type Item = Result<&'a [u8], MalformedIfMatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let skip = |r: &'a [u8]| {
            let n = r
                .iter()
                .take_while(|&&c| c == b' ' || c == b'\t' || c == b',')
                .count();
            &r[n..]
        };
        self.rest = skip(self.rest);
        if self.rest.is_empty() {
            return None;
        }
        let mut fail = || {
            self.failed = true;
            Some(Err(MalformedIfMatch))
        };
        if self.rest[0] == b'*' {
            let after = &self.rest[1..];
            if self.seen || !skip(after).is_empty() || after.contains(&b',') {
                // `*` stands alone (RFC 9110 §13.1.1).
                return fail();
            }
            self.rest = after;
            return Some(Ok(b"*"));
        }
        let start = if self.rest.starts_with(b"W/") { 2 } else { 0 };
        if self.rest.get(start) != Some(&b'"') {
            return fail();
        }
        let Some(close) = self.rest[start + 1..].iter().position(|&c| c == b'"') else {
            return fail();
        };
        let end = start + 1 + close + 1;
        let (tag, rest) = self.rest.split_at(end);
        if !rest.is_empty() && !matches!(rest[0], b' ' | b'\t' | b',') {
            return fail();
        }
        self.rest = rest;
        self.seen = true;
        match opaque(tag) {
            Some(t) => Some(Ok(t)),
            None => fail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(lines: &[&str], version: &str) -> Result<bool, MalformedIfMatch> {
        let values: Vec<HeaderValue> = lines
            .iter()
            .map(|l| HeaderValue::from_str(l).unwrap())
            .collect();
        if_match_allows(&values, &HeaderValue::from_str(version).unwrap())
    }

    #[test]
    fn tags_compare_weakly() {
        assert_eq!(allows(&[r#"W/"3""#], r#"W/"3""#), Ok(true));
        assert_eq!(allows(&[r#""3""#], r#"W/"3""#), Ok(true));
        assert_eq!(allows(&[r#"W/"3""#], r#""3""#), Ok(true));
        assert_eq!(allows(&[r#"W/"4""#], r#"W/"3""#), Ok(false));
        assert_eq!(allows(&[r#"W/"33""#], r#"W/"3""#), Ok(false));
    }

    #[test]
    fn any_tag_of_any_line_may_match() {
        assert_eq!(allows(&[r#"W/"1", W/"3""#], r#"W/"3""#), Ok(true));
        assert_eq!(allows(&[r#"W/"1""#, r#""3""#], r#"W/"3""#), Ok(true));
        assert_eq!(allows(&[r#"W/"1",W/"2""#], r#"W/"3""#), Ok(false));
        // A comma inside a tag is part of it.
        assert_eq!(allows(&[r#""a,b""#], r#""a,b""#), Ok(true));
        assert_eq!(allows(&[r#""a,b""#], r#""a""#), Ok(false));
    }

    #[test]
    fn star_matches_any_version() {
        assert_eq!(allows(&["*"], r#"W/"9""#), Ok(true));
        assert_eq!(allows(&[" * "], r#"W/"9""#), Ok(true));
    }

    #[test]
    fn what_is_not_a_list_of_tags_is_an_error() {
        for bad in [
            "",
            " ",
            "3",
            "W/3",
            r#""3"#,
            r#"w/"3""#,
            r#""3"x"#,
            r#"*, "3""#,
            r#""3", *"#,
            "**",
            r#"W/ "3""#,
        ] {
            assert_eq!(allows(&[bad], r#""3""#), Err(MalformedIfMatch), "{bad:?}");
        }
        // A version the backend wrote that is not a tag matches nothing.
        assert_eq!(allows(&["*"], "3"), Err(MalformedIfMatch));
    }
}
