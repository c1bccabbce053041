//! Strict JSON parsing for request bodies: the gateway must read a body exactly as any backend
//! would, so anything two parsers could read differently is refused. Duplicate keys at any
//! depth (one parser keeps the first, another the last), keys that differ only in ASCII letter
//! case (SCIM attribute names are case-insensitive, so `path` and `PATH` in one object are
//! ambiguous), non-ASCII keys (SCIM attribute names are ASCII; this rules out Unicode case-folding
//! tricks), nesting deeper than a bound, invalid UTF-8 and trailing data are errors.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Nesting bound for request bodies. SCIM resources nest three or four levels; Bulk adds two.
pub const MAX_DEPTH: usize = 32;

/// Parses `bytes` as one JSON value, refusing duplicate keys and nesting beyond `max_depth`.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict {
        depth: 0,
        max_depth,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
    max_depth: usize,
}

impl Strict {
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
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Map::new();
        // Small objects (nearly all of SCIM) compare in place; large ones switch to a set.
        let mut folded: Option<std::collections::HashSet<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if !key.is_ascii() {
                return Err(A::Error::custom(format_args!("non-ASCII key {key:?}")));
            }
            let duplicate = match &mut folded {
                Some(set) => !set.insert(key.to_ascii_lowercase()),
                None if out.len() < 16 => out.keys().any(|k| k.eq_ignore_ascii_case(&key)),
                None => {
                    let mut set: std::collections::HashSet<String> =
                        out.keys().map(|k| k.to_ascii_lowercase()).collect();
                    let dup = !set.insert(key.to_ascii_lowercase());
                    folded = Some(set);
                    dup
                }
            };
            if duplicate {
                return Err(A::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
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
    fn escaped_keys_are_compared_after_unescaping() {
        assert!(parse_strict(br#"{"userName":"a","user\u004eame":"b"}"#, MAX_DEPTH).is_err());
    }
}
