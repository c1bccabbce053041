//! Strict JSON parsing for request bodies: the gateway must read a body exactly as any backend
//! would, so anything two parsers could read differently is refused. Duplicate keys at any
//! depth (one parser keeps the first, another the last), keys that differ only in ASCII letter
//! case (SCIM attribute names are case-insensitive, so `path` and `PATH` in one object are
//! ambiguous), non-ASCII keys (SCIM attribute names are ASCII; this rules out Unicode case-folding
//! tricks), member names serde_json reserves ([`is_reserved_name`]), nesting deeper than a
//! bound, invalid UTF-8 and trailing data are errors.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

/// Nesting bound for request bodies. SCIM resources nest three or four levels; Bulk adds two.
pub const MAX_DEPTH: usize = 32;

/// Whether a member name is one serde_json gives a meaning of its own: with its `raw_value`
/// feature, an object whose one member is `$serde_json::private::RawValue` reads as the JSON in
/// that member's string (and `…::Number` as a number, with `arbitrary_precision`). A backend
/// reading bodies that way would store what the gateway saw as a string, so no body may use
/// them, and a stored user that does is unreadable.
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with("$serde_json::private::")
}

/// How much of a value a strict parse builds. Every value is read and checked alike, whatever
/// is kept of it, so what is refused never depends on the choice.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    /// The whole value.
    Whole,
    /// Nothing: the value is checked, then stands as `null`.
    Omit,
    /// For an object: every member name, and of each member's value what the function says for
    /// its name. Any other value whole.
    Select(fn(&str) -> Keep),
}

/// Parses `bytes` as one JSON value, refusing duplicate keys and nesting beyond `max_depth`.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, serde_json::Error> {
    parse_strict_keeping(bytes, max_depth, Keep::Whole)
}

/// [`parse_strict`], building only what `keep` asks for: the same bodies are refused, with the
/// same error. A decision that reads only the kept parts answers as on the whole body, without
/// the cost of building (and dropping) the rest of its tree.
pub fn parse_strict_keeping(
    bytes: &[u8],
    max_depth: usize,
    keep: Keep,
) -> Result<Value, serde_json::Error> {
    // Text checked whole up front (a fast pass) is parsed without serde_json checking each
    // string's UTF-8 again. Bytes that are not UTF-8 are parsed as bytes, only so that the
    // error is serde_json's own, with its line and column: such a body never parses (outside
    // a string a non-ASCII byte is a syntax error).
    match std::str::from_utf8(bytes) {
        Ok(text) => strict(serde_json::Deserializer::from_str(text), max_depth, keep),
        Err(_) => strict(serde_json::Deserializer::from_slice(bytes), max_depth, keep),
    }
}

fn strict<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    max_depth: usize,
    keep: Keep,
) -> Result<Value, serde_json::Error> {
    let names = RefCell::new(Vec::new());
    let v = Strict {
        depth: 0,
        max_depth,
        keep,
        names: &names,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

#[derive(Clone, Copy)]
struct Strict<'s, 'de> {
    depth: usize,
    max_depth: usize,
    keep: Keep,
    /// The member names of the objects being read, innermost last: one buffer for the whole
    /// body, so the duplicate check allocates nothing per object and borrows unescaped names.
    names: &'s RefCell<Vec<Cow<'de, str>>>,
}

impl Strict<'_, '_> {
    fn deeper<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= self.max_depth {
            return Err(E::custom(format_args!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        Ok(Strict {
            depth: self.depth + 1,
            ..self
        })
    }

    fn omit(self) -> bool {
        matches!(self.keep, Keep::Omit)
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_, 'de> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name, borrowed from the input unless it had escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Strict<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::Bool(v)
        })
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::Number(v.into())
        })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::Number(v.into())
        })
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("non-finite number"))?;
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::Number(n)
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::String(v.to_owned())
        })
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(if self.omit() {
            Value::Null
        } else {
            Value::String(v)
        })
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let omit = self.omit();
        let inner = Strict {
            keep: if omit { Keep::Omit } else { Keep::Whole },
            ..self.deeper()?
        };
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            if !omit {
                out.push(v);
            }
        }
        Ok(if omit { Value::Null } else { Value::Array(out) })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let omit = self.omit();
        let mut out = Map::new();
        let start = self.names.borrow().len();
        // Small objects (nearly all of SCIM) compare in place; large ones switch to a set.
        let mut folded: Option<HashSet<String>> = None;
        while let Some(Key(key)) = map.next_key::<Key>()? {
            if !key.is_ascii() {
                return Err(A::Error::custom(format_args!("non-ASCII key {key:?}")));
            }
            if is_reserved_name(&key) {
                return Err(A::Error::custom(format_args!("reserved key {key:?}")));
            }
            // A control character (C strings end at NUL) or a prototype setter (JavaScript
            // object merges) means something else to some backends than the name says.
            if key.bytes().any(|b| b.is_ascii_control()) || key == "__proto__" {
                return Err(A::Error::custom(format_args!("key {key:?} is refused")));
            }
            let duplicate = {
                let names = self.names.borrow();
                let seen = &names[start..];
                match &mut folded {
                    Some(set) => !set.insert(key.to_ascii_lowercase()),
                    None if seen.len() < 16 => seen.iter().any(|k| k.eq_ignore_ascii_case(&key)),
                    None => {
                        let mut set: HashSet<String> =
                            seen.iter().map(|k| k.to_ascii_lowercase()).collect();
                        let dup = !set.insert(key.to_ascii_lowercase());
                        folded = Some(set);
                        dup
                    }
                }
            };
            if duplicate {
                return Err(A::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let keep = match self.keep {
                Keep::Whole => Keep::Whole,
                Keep::Omit => Keep::Omit,
                Keep::Select(select) => select(&key),
            };
            let name = (!omit).then(|| String::from(&*key));
            self.names.borrow_mut().push(key);
            let v = map.next_value_seed(Strict { keep, ..inner })?;
            if let Some(name) = name {
                out.insert(name, v);
            }
        }
        self.names.borrow_mut().truncate(start);
        Ok(if omit {
            Value::Null
        } else {
            Value::Object(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_parsers_disagree_on() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#, MAX_DEPTH).is_err());
        assert!(parse_strict(
            br#"{"x":{"emails":[{"value":"a","value":"b"}]}}"#,
            MAX_DEPTH
        )
        .is_err());
        assert!(parse_strict(b"{\"a\":\"\xff\"}", MAX_DEPTH).is_err());
        assert!(parse_strict(br#"{"a":1} {"b":2}"#, MAX_DEPTH).is_err());
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert!(parse_strict(deep.as_bytes(), MAX_DEPTH).is_err());
        let ok = "[".repeat(10) + &"]".repeat(10);
        assert!(parse_strict(ok.as_bytes(), MAX_DEPTH).is_ok());
        assert_eq!(
            parse_strict(br#"{"a":[1,2.5,"x",null,true]}"#, MAX_DEPTH).unwrap()["a"][2],
            "x"
        );
    }

    #[test]
    fn names_serde_json_reserves_are_refused_however_written() {
        for body in [
            &br#"{"$serde_json::private::RawValue": "\"a@acme.com\""}"#[..],
            br#"{"emails": [{"$serde_json::private::RawValue": "{\"value\": \"x@evil.com\"}"}]}"#,
            br#"{"emails": [{"\u0024serde_json::private::RawValue": "{}"}]}"#,
            br#"{"a": {"$serde_json::private::Number": "1"}}"#,
        ] {
            let e = parse_strict(body, MAX_DEPTH).unwrap_err().to_string();
            assert!(e.contains("reserved key"), "{e}");
        }
        assert!(parse_strict(br#"{"$serde_json::public": 1, "$ref": "x"}"#, MAX_DEPTH).is_ok());
    }

    #[test]
    fn keys_differing_in_case_or_non_ascii_are_refused() {
        assert!(parse_strict(br#"{"path":"a","PATH":"b"}"#, MAX_DEPTH).is_err());
        assert!(parse_strict(br#"{"email\u017f":1}"#, MAX_DEPTH).is_err());
        assert!(parse_strict(
            br#"{"emails":[{"value":"b\u00fccher@acme.com"}]}"#,
            MAX_DEPTH
        )
        .is_ok());
    }

    #[test]
    fn large_objects_are_checked_as_strictly_as_small_ones() {
        let keys: Vec<String> = (0..20).map(|i| format!("\"k{i}\":{i}")).collect();
        let ok = format!("{{{}}}", keys.join(","));
        assert!(parse_strict(ok.as_bytes(), MAX_DEPTH).is_ok());
        for dup in ["\"k3\":0", "\"K3\":0", "\"k19\":0", "\"K19\":0"] {
            let bad = format!("{{{},{dup}}}", keys.join(","));
            assert!(parse_strict(bad.as_bytes(), MAX_DEPTH).is_err(), "{dup}");
        }
    }

    #[test]
    fn keeping_less_builds_less_and_refuses_the_same_bodies() {
        fn pick(name: &str) -> Keep {
            match name {
                "keep" => Keep::Whole,
                "in" => Keep::Select(pick),
                _ => Keep::Omit,
            }
        }
        let body =
            br#"{"keep": {"a": [1, "x"]}, "drop": {"b": "y"}, "in": {"keep": 1, "drop": [2]}}"#;
        assert_eq!(
            parse_strict_keeping(body, MAX_DEPTH, Keep::Select(pick)).unwrap(),
            serde_json::json!({"keep": {"a": [1, "x"]}, "drop": null, "in": {"keep": 1, "drop": null}})
        );
        assert_eq!(
            parse_strict_keeping(body, MAX_DEPTH, Keep::Omit).unwrap(),
            Value::Null
        );
        let deep = format!(r#"{{"drop": {}{}}}"#, "[".repeat(40), "]".repeat(40));
        let wide: Vec<String> = (0..20).map(|i| format!(r#""k{i}": {i}"#)).collect();
        let wide = format!(r#"{{"drop": {{{}, "K7": 0}}}}"#, wide.join(", "));
        for bad in [
            &br#"{"drop": {"a": 1, "A": 2}}"#[..],
            br#"{"drop": [{"a": 1, "\u0061": 2}]}"#,
            b"{\"drop\": \"\xff\"}",
            br#"{"drop": "\ud800"}"#,
            br#"{"drop": 1e999}"#,
            br#"{"in": {"drop": {"x": 1, "x": 2}}}"#,
            br#"{"keep": 1} {}"#,
            br#"{"drop": [{"$serde_json::private::RawValue": "{}"}]}"#,
            deep.as_bytes(),
            wide.as_bytes(),
        ] {
            let whole = parse_strict(bad, MAX_DEPTH).unwrap_err().to_string();
            for keep in [Keep::Omit, Keep::Select(pick)] {
                let e = parse_strict_keeping(bad, MAX_DEPTH, keep).unwrap_err();
                assert_eq!(e.to_string(), whole, "{}", String::from_utf8_lossy(bad));
            }
        }
    }

    /// Text that is not UTF-8 is refused with serde_json's own error, where it would report it.
    #[test]
    fn bytes_that_are_not_utf8_are_refused_where_serde_json_finds_them() {
        for bad in [
            &b"{\"userName\": \"a\xffb\"}"[..],
            b"{\"user\xc3Name\": 1}",
            b"{\"a\": 1}\xff",
            b"\xef\xbb\xbf{}",
            b"{\"a\": \xe2\x80}",
            b"{\n\"emails\": [\"\xed\xa0\x80\"]}",
        ] {
            let ours = parse_strict(bad, MAX_DEPTH).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn escaped_keys_are_compared_after_unescaping() {
        assert!(parse_strict(br#"{"userName":"a","user\u004eame":"b"}"#, MAX_DEPTH).is_err());
    }
}
