//! The serde `Deserializer` over node trees: values decoded from YAML nodes, with every error
//! placed at its node's position and field path.

use serde::de::{self, DeserializeSeed, Visitor};

use super::error::{one_of, DecodeError};
use super::node::{Node, Resolved, Scalar, Value};
use super::path::{Breadcrumb, FieldPath};

/// Deserializes `node` as a `T`; errors carry the position and the path below `base`.
pub fn decode<T: de::DeserializeOwned>(node: &Node, base: &FieldPath) -> Result<T, DecodeError> {
    let crumb = Breadcrumb::Root(base);
    T::deserialize(NodeDeserializer { node, crumb }).map_err(|e| e.at(node.mark, crumb))
}

struct NodeDeserializer<'de, 'p> {
    node: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de> NodeDeserializer<'de, '_> {
    fn fail<T>(&self, error: DecodeError) -> Result<T, DecodeError> {
        Err(error.at(self.node.mark, self.crumb))
    }

    fn unexpected(&self) -> de::Unexpected<'de> {
        match &self.node.value {
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => de::Unexpected::Unit,
                Resolved::Bool(b) => de::Unexpected::Bool(b),
                Resolved::Int(i) => de::Unexpected::Signed(i),
                Resolved::UInt(u) => de::Unexpected::Unsigned(u),
                Resolved::Float(f) => de::Unexpected::Float(f),
                Resolved::Str => de::Unexpected::Str(&s.text),
            },
        }
    }

    fn type_error<T>(&self, expected: &dyn de::Expected) -> Result<T, DecodeError> {
        self.fail(de::Error::invalid_type(self.unexpected(), expected))
    }

    fn resolved(&self) -> Option<Resolved> {
        self.node.as_scalar().map(Scalar::resolve)
    }

    fn deserialize_integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.resolved() {
            Some(Resolved::Int(i)) => visitor.visit_i64(i),
            Some(Resolved::UInt(u)) => visitor.visit_u64(u),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e: DecodeError| e.at(self.node.mark, self.crumb))
    }

    fn deserialize_float<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.resolved() {
            Some(Resolved::Int(i)) => visitor.visit_f64(i as f64),
            Some(Resolved::UInt(u)) => visitor.visit_f64(u as f64),
            Some(Resolved::Float(f)) => visitor.visit_f64(f),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e: DecodeError| e.at(self.node.mark, self.crumb))
    }
}

macro_rules! forward_integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.deserialize_integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de, '_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqReader {
                items: items.iter().enumerate(),
                crumb,
            }),
            Value::Map(entries) => visitor.visit_map(MapReader::new(entries, crumb)),
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::UInt(u) => visitor.visit_u64(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str => visitor.visit_borrowed_str(&s.text),
            },
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.resolved() {
            Some(Resolved::Bool(b)) => visitor
                .visit_bool(b)
                .map_err(|e: DecodeError| e.at(self.node.mark, self.crumb)),
            _ => self.type_error(&visitor),
        }
    }

    forward_integer!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_float(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_float(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    /// Any scalar but null is accepted as a string, as written: `PORT: 8080` gives "8080".
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => visitor
                .visit_borrowed_str(&s.text)
                .map_err(|e: DecodeError| e.at(self.node.mark, self.crumb)),
            _ => self.type_error(&"a string"),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.type_error(&visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.type_error(&visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            self.type_error(&visitor)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    /// An empty value (`key:` with nothing after it) reads as an empty sequence.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqReader {
                items: items.iter().enumerate(),
                crumb,
            }),
            _ if self.node.is_null() => visitor.visit_seq(SeqReader {
                items: [].iter().enumerate(),
                crumb,
            }),
            _ => return self.type_error(&"a sequence (a list)"),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    /// An empty value reads as an empty mapping.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapReader::new(entries, crumb)),
            _ if self.node.is_null() => visitor.visit_map(MapReader::new(&[], crumb)),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_map(visitor)
    }

    /// Unit variants are scalars (`restart: always`); others a one-key mapping (`{every: 5m}`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => {
                visitor.visit_enum(de::value::StrDeserializer::<DecodeError>::new(&s.text))
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumReader { key, value, crumb })
            }
            Value::Map(entries) if entries.len() > 1 => {
                let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
                return self.fail(DecodeError::new(format!(
                    "expected exactly one of {}, found {}",
                    one_of(variants),
                    one_of(&keys)
                )));
            }
            _ => return self.type_error(&format!("one of {}", one_of(variants)).as_str()),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

struct SeqReader<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    crumb: Breadcrumb<'p>,
}

impl<'de> de::SeqAccess<'de> for SeqReader<'de, '_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DecodeError> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        let crumb = Breadcrumb::Index(&self.crumb, index);
        seed.deserialize(NodeDeserializer { node, crumb })
            .map(Some)
            .map_err(|e| e.at(node.mark, crumb))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapReader<'de, 'p> {
    entries: &'de [(Node, Node)],
    next: usize,
    crumb: Breadcrumb<'p>,
}

impl<'de, 'p> MapReader<'de, 'p> {
    fn new(entries: &'de [(Node, Node)], crumb: Breadcrumb<'p>) -> Self {
        MapReader {
            entries,
            next: 0,
            crumb,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapReader<'de, '_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DecodeError> {
        let Some((key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let text = match key.as_scalar() {
            Some(s) => s.text.as_str(),
            None => {
                let error = DecodeError::new("expected a plain key, found a mapping or sequence used as a key".into());
                return Err(error.at(key.mark, self.crumb));
            }
        };
        let crumb = Breadcrumb::Key(&self.crumb, text);
        if let Some((earlier, _)) = self.entries[..self.next]
            .iter()
            .find(|(k, _)| k.as_scalar().is_some_and(|s| s.text == text))
        {
            let message = format!("duplicate key `{text}` (first given at line {})", earlier.mark.line);
            return Err(DecodeError::new(message).at(key.mark, crumb));
        }
        seed.deserialize(NodeDeserializer { node: key, crumb })
            .map(Some)
            .map_err(|e| e.at(key.mark, crumb))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DecodeError> {
        let (key, value) = &self.entries[self.next];
        self.next += 1;
        let text = key.as_scalar().map(|s| s.text.as_str()).unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, text);
        seed.deserialize(NodeDeserializer { node: value, crumb })
            .map_err(|e| e.at(value.mark, crumb))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

struct EnumReader<'de, 'p> {
    key: &'de Node,
    value: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de, 'p> de::EnumAccess<'de> for EnumReader<'de, 'p> {
    type Error = DecodeError;
    type Variant = VariantReader<'de, 'p>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), DecodeError> {
        let crumb = self.crumb;
        let variant = seed
            .deserialize(NodeDeserializer { node: self.key, crumb })
            .map_err(|e| e.at(self.key.mark, crumb))?;
        Ok((
            variant,
            VariantReader {
                key: self.key,
                value: self.value,
                crumb,
            },
        ))
    }
}

struct VariantReader<'de, 'p> {
    key: &'de Node,
    value: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de> de::VariantAccess<'de> for VariantReader<'de, '_> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        seed.deserialize(NodeDeserializer {
            node: self.value,
            crumb,
        })
        .map_err(|e| e.at(self.value.mark, crumb))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        de::Deserializer::deserialize_seq(
            NodeDeserializer {
                node: self.value,
                crumb,
            },
            visitor,
        )
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        de::Deserializer::deserialize_map(
            NodeDeserializer {
                node: self.value,
                crumb,
            },
            visitor,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::source::yaml::{parse_documents, Mark};

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        ratio: Option<f64>,
    }

    fn one(text: &str) -> Node {
        let (mut docs, error) = parse_documents(text);
        assert!(error.is_none(), "{error:?}");
        docs.remove(0).root
    }

    #[test]
    fn decodes_with_positions() {
        let node = one("name: web\ncount: 3\ntags: [a, b]\nenv: {PORT: 8080, DEBUG: true}\nratio: 0.5\n");
        let sample: Sample = decode(&node, &FieldPath::default()).unwrap();
        assert_eq!(sample.count, 3);
        assert_eq!(sample.env["PORT"], "8080");
        assert_eq!(sample.env["DEBUG"], "true");
        assert_eq!(sample.ratio, Some(0.5));
    }

    #[test]
    fn type_error_names_line_column_and_path() {
        let node = one("name: web\ntags:\n  - a\n  - [nested]\n");
        let error = decode::<Sample>(&node, &FieldPath::from("spec")).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(4, 5)));
        assert_eq!(error.path.unwrap().to_string(), "spec.tags[1]");
        assert_eq!(error.message, "expected a string, found a sequence");
    }

    #[test]
    fn unknown_field_points_at_the_key_and_suggests() {
        let node = one("name: web\ncuont: 3\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(2, 1)));
        assert_eq!(error.path.unwrap().to_string(), "cuont");
        assert!(
            error
                .message
                .starts_with("unknown field `cuont` (did you mean `count`?)"),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_field_names_the_field() {
        let node = one("count: 3\n");
        let error = decode::<Sample>(&node, &FieldPath::from("spec")).unwrap_err();
        assert_eq!(error.path.unwrap().to_string(), "spec.name");
        assert_eq!(error.message, "missing required field `name`");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let node = one("name: a\nname: b\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(2, 1)));
        assert!(error.message.contains("duplicate key `name` (first given at line 1)"));
    }

    #[test]
    fn negative_into_unsigned_is_rejected() {
        let node = one("name: a\ncount: -1\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(
            error.message,
            "expected a whole number of at least 0, found integer `-1`"
        );
    }
}
