//! Decoding an NDJSON batch line without a `serde_json::Value` of the whole line: a batch
//! line is a PUT body (or a DELETE body) plus the routing fields `op`, `doc_id` and
//! `idempotency_key`, in any order. The body's own strict decoder
//! ([`PutBody`](super::dto::PutBody), the DELETE body) reads the line through [`Without`],
//! which hides the routing fields from it, so it refuses unknown fields exactly as it does
//! for a PUT or DELETE request.
//!
//! - [`body_with_head`]: one pass, the body decoded while the routing fields are taken out;
//!   for a line that turns out to be a well-formed put (nearly every line).
//! - [`head`] then [`body`]: two passes, the routing fields first (everything else skipped),
//!   then the body that `op` names; for every other line (a delete, a refused line), so
//!   that each is answered as if its routing fields had been read first.
//!
//! Decoding the line into a `Value` first and the body from that `Value` cost a tree node
//! per vector component (3,072 numbers for 8 chunks of 384 dimensions); skipping the vectors
//! in a first pass costs about as much as parsing them (serde_json checks every digit).

use std::fmt;

use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, Error as _, IgnoredAny, IntoDeserializer,
    MapAccess, Visitor,
};

/// The routing fields of a batch line (each has its slot in [`LineHead`]).
pub const ROUTING_FIELDS: &[&str] = &["op", "doc_id", "idempotency_key"];

/// A routing field as it was sent: absent, or any JSON value (checked by the caller, so that
/// `"op": null` is "not a string" rather than "missing").
#[derive(Debug, Default, PartialEq)]
pub struct Field(pub Option<serde_json::Value>);

/// The routing fields of a line.
#[derive(Debug, Default)]
pub struct LineHead {
    /// `put` or `delete`.
    pub op: Field,
    /// The document.
    pub doc_id: Field,
    /// Optional idempotency key.
    pub idempotency_key: Field,
}

impl LineHead {
    /// The name and slot of routing field `key`; `None` for any other key.
    fn slot(&mut self, key: &str) -> Option<(&'static str, &mut Field)> {
        match key {
            "op" => Some(("op", &mut self.op)),
            "doc_id" => Some(("doc_id", &mut self.doc_id)),
            "idempotency_key" => Some(("idempotency_key", &mut self.idempotency_key)),
            _ => None,
        }
    }
}

/// Reads a line's routing fields; everything else is skipped.
///
/// # Errors
/// The line is not one JSON object, or gives a routing field twice.
pub fn head(line: &[u8]) -> Result<LineHead, serde_json::Error> {
    body_with_head::<AnyObject>(line).map(|(_, head)| head)
}

/// Decodes `T` from a line, without its routing fields.
///
/// # Errors
/// What `T`'s decoder refuses (an unknown field, a missing or mistyped one), a routing field
/// given twice, or trailing characters after the object.
pub fn body<T: DeserializeOwned>(line: &[u8]) -> Result<T, serde_json::Error> {
    body_with_head(line).map(|(value, _)| value)
}

/// Decodes `T` from a line in one pass, taking its routing fields out as they come.
///
/// # Errors
/// As [`body`]; after an error the routing fields are incomplete (the line was not read to
/// its end): use [`head`] and [`body`] instead.
pub fn body_with_head<T: DeserializeOwned>(
    line: &[u8],
) -> Result<(T, LineHead), serde_json::Error> {
    let mut head = LineHead::default();
    let mut de = serde_json::Deserializer::from_slice(line);
    let value = T::deserialize(Without {
        inner: &mut de,
        head: &mut head,
    })?;
    de.end()?;
    Ok((value, head))
}

/// Any JSON object, its fields skipped: what [`head`] decodes beside the routing fields.
struct AnyObject;

impl<'de> serde::Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnyObject, D::Error> {
        d.deserialize_map(AnyObject)
    }
}

impl<'de> Visitor<'de> for AnyObject {
    type Value = AnyObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch line (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(AnyObject)
    }
}

/// A deserializer of a JSON object that takes the routing fields out into `head` before its
/// visitor sees the entries. Structs are read from objects only (serde_json would also take
/// an array of the fields' values in order).
struct Without<'c, D> {
    inner: D,
    head: &'c mut LineHead,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Without<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(WithoutVisitor {
            inner: visitor,
            head: self.head,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct enum identifier
        ignored_any
    }
}

/// Hands the inner visitor the map without the routing fields; anything else (not an
/// object) goes to the inner visitor's refusal, with its own expectation in the message.
struct WithoutVisitor<'c, V> {
    inner: V,
    head: &'c mut LineHead,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for WithoutVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(WithoutMap {
            inner: map,
            head: self.head,
        })
    }
}

struct WithoutMap<'c, A> {
    inner: A,
    head: &'c mut LineHead,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            match self.head.slot(&key) {
                None => return seed.deserialize(key.into_deserializer()).map(Some),
                Some((name, Field(Some(_)))) => return Err(A::Error::duplicate_field(name)),
                Some((_, slot)) => *slot = Field(Some(self.inner.next_value()?)),
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        title: String,
        #[serde(default)]
        chunks: Vec<Vec<f32>>,
    }

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn routing_fields_anywhere_are_read_and_hidden_from_the_body() {
        let line =
            br#"{"title":"t","op":"put","chunks":[[1.5,2]],"doc_id":"a/b","idempotency_key":"k"}"#;
        let h = head(line).expect("head");
        assert_eq!(h.op, Field(Some(json!("put"))));
        assert_eq!(h.doc_id, Field(Some(json!("a/b"))));
        assert_eq!(h.idempotency_key, Field(Some(json!("k"))));
        let b: Strict = body(line).expect("body");
        assert_eq!(
            b,
            Strict {
                title: "t".into(),
                chunks: vec![vec![1.5, 2.0]]
            }
        );
    }

    #[test]
    fn a_put_line_decodes_as_the_put_body_it_carries() {
        let put = json!({
            "title": "T", "source_type": "pdf", "business_tag": "b",
            "attributes": {"lang": "en", "n": [1, 2.5, {"deep": null}]},
            "blob": {"content_base64": "aGk=", "content_type": "text/plain"},
            "chunks": [{"text": "x", "vector": [0.1, -2e-3, 3, 1e38]}],
            "expected_version": 4
        });
        let mut line = put.clone();
        line["op"] = json!("put");
        line["doc_id"] = json!("d");
        line["idempotency_key"] = json!("k");
        let direct: crate::api::dto::PutBody =
            serde_json::from_slice(&bytes(put)).expect("PUT body");
        let via_line: crate::api::dto::PutBody = body(&bytes(line)).expect("batch line");
        assert_eq!(format!("{direct:?}"), format!("{via_line:?}"));
    }

    #[test]
    fn one_pass_takes_the_routing_fields_out_as_they_come() {
        let line = br#"{"doc_id":"a","title":"t","op":"put","chunks":[[1]],"idempotency_key":"k"}"#;
        let (b, h): (Strict, LineHead) = body_with_head(line).expect("one pass");
        assert_eq!(b.title, "t");
        assert_eq!(h.op, Field(Some(json!("put"))));
        assert_eq!(h.doc_id, Field(Some(json!("a"))));
        assert_eq!(h.idempotency_key, Field(Some(json!("k"))));
        let twice = body_with_head::<Strict>(br#"{"op":"put","title":"t","op":"delete"}"#);
        assert!(twice
            .expect_err("routing field twice")
            .to_string()
            .contains("duplicate field `op`"));
        // As the two passes refuse it too.
        assert!(head(br#"{"op":"put","title":"t","op":"delete"}"#).is_err());
    }

    #[test]
    fn every_routing_field_has_its_slot() {
        let mut h = LineHead::default();
        for f in ROUTING_FIELDS {
            assert_eq!(h.slot(f).map(|(name, _)| name), Some(*f));
        }
        assert!(h.slot("title").is_none());
    }

    #[test]
    fn absent_and_null_routing_fields_differ() {
        let h = head(br#"{"op":null}"#).expect("head");
        assert_eq!(h.op, Field(Some(serde_json::Value::Null)));
        assert_eq!(h.doc_id, Field(None));
    }

    #[test]
    fn an_escaped_key_is_the_key_it_spells() {
        let line = br#"{"\u006fp":"put","title":"t"}"#;
        assert_eq!(head(line).expect("head").op, Field(Some(json!("put"))));
        let b: Strict = body(line).expect("escaped routing key hidden too");
        assert_eq!(b.title, "t");
    }

    #[test]
    fn the_body_decoder_still_refuses_what_it_refuses() {
        let unknown = body::<Strict>(&bytes(json!({"op": "put", "title": "t", "extra": 1})));
        assert!(unknown
            .expect_err("unknown field")
            .to_string()
            .contains("unknown field `extra`"));
        let missing = body::<Strict>(&bytes(json!({"op": "put", "doc_id": "a"})));
        assert!(missing
            .expect_err("missing field")
            .to_string()
            .contains("missing field `title`"));
        let mistyped = body::<Strict>(&bytes(json!({"title": "t", "chunks": [["x"]]})));
        assert!(mistyped.is_err());
        let twice = body::<Strict>(br#"{"title":"a","title":"b"}"#);
        assert!(twice
            .expect_err("duplicate")
            .to_string()
            .contains("duplicate field `title`"));
        assert!(
            body::<Strict>(br#"{"title":"t"} x"#).is_err(),
            "trailing text"
        );
    }

    #[test]
    fn a_line_that_is_not_an_object_is_refused_by_both_passes() {
        for line in [&b"[1,2]"[..], b"\"put\"", b"12", b"{", b"{\"op\":\"put\""] {
            assert!(head(line).is_err(), "{line:?}");
            assert!(body::<Strict>(line).is_err(), "{line:?}");
        }
    }
}
