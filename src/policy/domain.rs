//! Email domains: normalising a domain, parsing the policy's domain patterns, and deciding
//! whether an address is inside a token's domains. Pure functions, no I/O.

use std::borrow::Cow;
use std::fmt;

/// Normalises a domain to its comparable form: IDNA ASCII (UTS #46, which also lower-cases and
/// maps full-width dots), one trailing dot removed, and every label checked to be a valid host
/// label. Anything else (`_`, `@`, empty labels, literals like `[1.2.3.4]`) is `None`: a domain
/// we cannot put in canonical form can never match a policy.
///
/// Borrowed when the domain is already in that form, which is what a backend stores: this runs
/// for every address of every user the gateway judges.
pub fn normalize_domain(raw: &str) -> Option<Cow<'_, str>> {
    if raw.is_empty() || raw.len() > 253 {
        return None;
    }
    if let Some(verdict) = lower_case_host(raw) {
        return verdict.map(Cow::Borrowed);
    }
    // Past the one-pass check, the name needs mapping: lower-casing or IDNA.
    let mut ascii = if plain_ascii_host(raw) {
        // UTS #46 maps such a name to its lower case and nothing else: skip the IDNA machinery.
        raw.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(raw).ok()?
    };
    if ascii.ends_with('.') {
        ascii.pop();
    }
    if ascii.is_empty() || ascii.len() > 253 {
        return None;
    }
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return None;
        }
    }
    Some(Cow::Owned(ascii))
}

/// The common case in one pass: a name of lower-case letters, digits, hyphens and dots with
/// no Punycode label, which normalises to itself (less one trailing dot) when every label is
/// valid. `None` when the full path must decide (upper case, any other character, `xn--`).
fn lower_case_host(raw: &str) -> Option<Option<&str>> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let b = name.as_bytes();
    let mut valid = true;
    let mut start = 0;
    for i in 0..=b.len() {
        if i < b.len() && b[i] != b'.' {
            if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'-') {
                return None;
            }
            continue;
        }
        let label = &b[start..i];
        if label.starts_with(b"xn--") {
            return None;
        }
        valid &= label.len() <= 63
            && matches!((label.first(), label.last()), (Some(f), Some(l)) if *f != b'-' && *l != b'-');
        start = i + 1;
    }
    Some(valid.then_some(name))
}

/// Letters, digits, hyphens and dots only, and no label in Punycode (`xn--`, which IDNA
/// decodes and validates): a name IDNA would only lower-case.
fn plain_ascii_host(raw: &str) -> bool {
    raw.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !raw
            .split('.')
            .any(|l| l.len() >= 4 && l.as_bytes()[..4].eq_ignore_ascii_case(b"xn--"))
}

/// The normalised domain of an email address, or `None` when the value is not a syntactically
/// valid address. The domain is what follows the last `@`. Whitespace, control characters and
/// the characters that let one string carry several addresses or a display name (`,;<>()"` outside
/// the local part's quotes are not parsed here, so they are refused anywhere) make the value
/// invalid: a value we cannot read unambiguously is never in scope.
pub fn email_domain(value: &str) -> Option<Cow<'_, str>> {
    if value.len() > 320 {
        return None;
    }
    let at = value.rfind('@')?;
    let (local, domain) = (&value[..at], &value[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.is_empty() {
        return None;
    }
    let refused = if value.is_ascii() {
        value.bytes().any(forbidden_ascii)
    } else {
        value.chars().any(forbidden)
    };
    if refused {
        return None;
    }
    normalize_domain(domain)
}

/// The characters [`email_domain`] refuses anywhere in an address.
fn forbidden(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, ',' | ';' | '<' | '>' | '(' | ')' | '[' | ']' | '\\' | '"')
        || c == '\u{FF20}' // full-width commercial at
        || c == '\u{FE6B}' // small commercial at
}

/// The characters [`email_domain`] refuses, for ASCII text: controls, space and the
/// separators (the same as its `char` test, byte by byte; a test compares the two).
fn forbidden_ascii(b: u8) -> bool {
    b <= b' '
        || b == 0x7f
        || matches!(
            b,
            b',' | b';' | b'<' | b'>' | b'(' | b')' | b'[' | b']' | b'\\' | b'"'
        )
}

/// One entry of a `domains:` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// `*`: every domain.
    Any,
    /// `acme.com`: exactly that domain.
    Exact(Box<str>),
    /// `*.acme.io`: every subdomain of `acme.io`, at any depth, but not `acme.io` itself
    /// (list it separately to admit it).
    Subdomains(Box<str>),
}

impl DomainPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(DomainPattern::Any);
        }
        let (wild, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if rest.contains('*') {
            return Err(format!(
                "invalid domain pattern {raw:?}: a wildcard may only lead, as in \"*.acme.io\""
            ));
        }
        let norm = normalize_domain(rest)
            .ok_or_else(|| format!("invalid domain pattern {raw:?}: not a valid domain name"))?
            .into_owned();
        Ok(if wild {
            DomainPattern::Subdomains(norm.into())
        } else {
            DomainPattern::Exact(norm.into())
        })
    }

    /// Whether a normalised domain is inside this pattern.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(d) => **d == *domain,
            DomainPattern::Subdomains(suffix) => is_strict_subdomain(domain, suffix),
        }
    }

    /// Whether every domain `other` admits is admitted by `self` (used to keep a token's
    /// domains inside its tenant's).
    pub fn covers(&self, other: &DomainPattern) -> bool {
        match (self, other) {
            (DomainPattern::Any, _) => true,
            (_, DomainPattern::Any) => false,
            (DomainPattern::Exact(a), DomainPattern::Exact(b)) => a == b,
            (DomainPattern::Exact(_), DomainPattern::Subdomains(_)) => false,
            (DomainPattern::Subdomains(s), DomainPattern::Exact(d)) => is_strict_subdomain(d, s),
            (DomainPattern::Subdomains(s), DomainPattern::Subdomains(t)) => {
                s == t || is_strict_subdomain(t, s)
            }
        }
    }
}

fn is_strict_subdomain(domain: &str, suffix: &str) -> bool {
    domain.len() > suffix.len() + 1
        && domain.ends_with(suffix)
        && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.'
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

/// The domains a token (or tenant) admits. Shared, not copied, between the tokens that have
/// the same list: a clone is a reference count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    patterns: std::sync::Arc<[DomainPattern]>,
}

impl DomainSet {
    pub fn new(patterns: Vec<DomainPattern>) -> Self {
        DomainSet {
            patterns: patterns.into(),
        }
    }

    /// Identifies the shared list (not its contents): sets cloned from one another share it.
    pub(crate) fn identity(&self) -> usize {
        std::sync::Arc::as_ptr(&self.patterns) as *const () as usize
    }

    /// True when the set admits every domain, so no user needs to be inspected.
    pub fn is_unrestricted(&self) -> bool {
        self.patterns.contains(&DomainPattern::Any)
    }

    pub fn patterns(&self) -> &[DomainPattern] {
        &self.patterns
    }

    /// Whether a normalised domain is admitted.
    pub fn admits_domain(&self, domain: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(domain))
    }

    /// Whether an email address is valid and its domain admitted.
    pub fn admits_address(&self, address: &str) -> bool {
        match email_domain(address) {
            Some(d) => self.admits_domain(&d),
            None => false,
        }
    }

    /// Whether every pattern of `other` lies inside this set.
    pub fn covers(&self, other: &DomainPattern) -> bool {
        self.patterns.iter().any(|p| p.covers(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `normalize_domain` computed before its fast path: always through IDNA.
    fn through_idna(raw: &str) -> Option<String> {
        if raw.is_empty() || raw.len() > 253 {
            return None;
        }
        let ascii = idna::domain_to_ascii(raw).ok()?;
        let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
        let ok = !ascii.is_empty()
            && ascii.len() <= 253
            && ascii.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        ok.then(|| ascii.to_owned())
    }

    /// The ASCII fast path answers exactly as IDNA does, on every string of up to five
    /// characters over an alphabet with both cases, digits, hyphens, dots and Punycode prefixes,
    /// and on longer hand-picked names.
    #[test]
    fn the_ascii_fast_path_agrees_with_idna() {
        let alphabet = ["a", "Z", "0", "-", ".", "xn--", "XN--", "x", "ß", "_"];
        let mut inputs = crate::test_util::concatenations(&alphabet, 5);
        inputs.extend(
            [
                "ACME.COM.",
                "Mail.Acme.Com",
                "xn--bcher-kva.de",
                "XN--BCHER-KVA.DE",
                "xn--invalid-.com",
                "xn--.com",
                "ab--cd.com",
                "a.b.c.d.e.f.g",
                "acme.com..",
                &"a".repeat(63),
                &format!("{}.com", "a".repeat(64)),
                &format!("{}.com", "a.".repeat(126)),
            ]
            .map(String::from),
        );
        assert!(inputs.len() > 100_000);
        for raw in &inputs {
            assert_eq!(
                normalize_domain(raw).as_deref(),
                through_idna(raw).as_deref(),
                "{raw:?}"
            );
        }
    }

    fn set(p: &[&str]) -> DomainSet {
        DomainSet::new(p.iter().map(|s| DomainPattern::parse(s).unwrap()).collect())
    }

    #[test]
    fn normalises_case_trailing_dot_and_idna() {
        assert_eq!(normalize_domain("ACME.com.").as_deref(), Some("acme.com"));
        assert_eq!(
            normalize_domain("bücher.de").as_deref(),
            Some("xn--bcher-kva.de")
        );
        assert_eq!(
            normalize_domain("acme\u{FF0E}com").as_deref(),
            Some("acme.com")
        );
        assert_eq!(normalize_domain("acme..com"), None);
        assert_eq!(normalize_domain("ac_me.com"), None);
        assert_eq!(normalize_domain("[10.0.0.1]"), None);
        assert_eq!(normalize_domain(""), None);
        assert_eq!(normalize_domain("-acme.com"), None);
    }

    #[test]
    fn email_domain_takes_the_last_at_and_refuses_ambiguity() {
        let cases: &[(&str, Option<&str>)] = &[
            ("bob@acme.com", Some("acme.com")),
            ("Bob@ACME.COM", Some("acme.com")),
            ("bob@acme.com.", Some("acme.com")),
            ("bob@evil.com@acme.com", Some("acme.com")),
            ("bob@acme.com@evil.com", Some("evil.com")),
            ("bob", None),
            ("@acme.com", None),
            ("bob@", None),
            (" bob@acme.com", None),
            ("bob@acme.com ", None),
            ("bob@evil.com,alice@acme.com", None),
            ("Bob <bob@evil.com>", None),
            ("bob@acme.com\u{0}", None),
            ("bob\u{FF20}evil.com", None),
            ("bob@evil.com\u{FF20}acme.com", None),
            ("\"bob@evil.com\"@acme.com", None),
            ("bob@xn--bcher-kva.de", Some("xn--bcher-kva.de")),
            ("bob@bücher.de", Some("xn--bcher-kva.de")),
        ];
        for (input, want) in cases {
            assert_eq!(email_domain(input).as_deref(), *want, "input {input:?}");
        }
    }

    #[test]
    fn the_ascii_refusal_agrees_with_the_char_refusal() {
        for b in 0..=0x7f_u8 {
            assert_eq!(forbidden_ascii(b), forbidden(char::from(b)), "{b:#04x}");
        }
    }

    #[test]
    fn patterns_match_as_documented() {
        let s = set(&["acme.com", "*.acme.io"]);
        assert!(s.admits_address("a@acme.com"));
        assert!(s.admits_address("a@ACME.COM."));
        assert!(!s.admits_address("a@sub.acme.com"));
        assert!(s.admits_address("a@eu.acme.io"));
        assert!(s.admits_address("a@x.eu.acme.io"));
        assert!(!s.admits_address("a@acme.io"));
        assert!(!s.admits_address("a@acme.io.evil.com"));
        assert!(!s.admits_address("a@evilacme.io"));
        assert!(!s.admits_address("a@evil.com"));
        assert!(set(&["*"]).admits_address("a@anything.example"));
        assert!(!set(&["*"]).admits_address("not-an-address"));
    }

    #[test]
    fn pattern_parsing_refuses_odd_wildcards() {
        assert!(DomainPattern::parse("a.*.com").is_err());
        assert!(DomainPattern::parse("**.com").is_err());
        assert!(DomainPattern::parse("*acme.com").is_err());
        assert!(DomainPattern::parse("").is_err());
        assert_eq!(
            DomainPattern::parse("*.ACME.io").unwrap(),
            DomainPattern::Subdomains("acme.io".into())
        );
    }

    #[test]
    fn coverage_keeps_tokens_inside_tenants() {
        let tenant = set(&["acme.com", "*.acme.io"]);
        let p = |s| DomainPattern::parse(s).unwrap();
        assert!(tenant.covers(&p("acme.com")));
        assert!(tenant.covers(&p("eu.acme.io")));
        assert!(tenant.covers(&p("*.eu.acme.io")));
        assert!(tenant.covers(&p("*.acme.io")));
        assert!(!tenant.covers(&p("acme.io")));
        assert!(!tenant.covers(&p("*.acme.com")));
        assert!(!tenant.covers(&p("*")));
        assert!(set(&["*"]).covers(&p("*")));
    }
}
