//! The object inside a review, decoded straight from the request body.
//!
//! kube-core's `DynamicObject` would type `metadata` (dropping fields that
//! k8s-openapi does not know) and keep `managedFields` and `status`, which are often
//! most of the bytes and are never recorded. [`RawObject`] keeps the JSON as the
//! apiserver sent it, except those two, which it skips while parsing instead of
//! building and then throwing them away.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// An object from a review, as raw JSON without `status` and `metadata.managedFields`.
#[derive(Debug, Clone, Default)]
pub struct RawObject(pub Value);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(Pruning {
                depth: Depth::Object,
            })
            .map(Self)
    }
}

#[derive(Clone, Copy)]
enum Depth {
    /// The object: skip `status`.
    Object,
    /// Its metadata: skip `managedFields`.
    Metadata,
}

struct Pruning {
    depth: Depth,
}

impl<'de> DeserializeSeed<'de> for Pruning {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruning {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match (self.depth, key.as_str()) {
                (Depth::Object, "status") | (Depth::Metadata, "managedFields") => {
                    map.next_value::<IgnoredAny>()?;
                }
                (Depth::Object, "metadata") => {
                    let meta = map.next_value_seed(Pruning {
                        depth: Depth::Metadata,
                    })?;
                    out.insert(key, meta);
                }
                _ => {
                    out.insert(key, map.next_value::<Value>()?);
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Anything that is not a map is kept as it is; the manifest step rejects it.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_managed_fields_are_skipped_and_the_rest_kept_as_sent() {
        let object: RawObject = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"X","metadata":{"name":"a","managedFields":[{"manager":"m"}],"futureField":{"x":1}},"spec":{"status":"kept"},"status":{"phase":"gone"}}"#,
        )
        .unwrap();
        assert_eq!(
            object.0,
            serde_json::json!({"apiVersion":"v1","kind":"X","metadata":{"name":"a","futureField":{"x":1}},"spec":{"status":"kept"}})
        );
        let none: Option<RawObject> = serde_json::from_str("null").unwrap();
        assert!(none.is_none());
    }
}
