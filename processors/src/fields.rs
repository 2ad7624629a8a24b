//! Reading only the fields the rules name from a raw JSON record, in one pass and without a
//! DOM: a [`FieldPlan`] (the dotted paths every processor of a sub-topology needs, as a tree)
//! drives serde_json's own parser, and each wanted value is kept as a [`Field`] that borrows
//! from the record's text; everything else is parsed — so the record is validated exactly as
//! `serde_json::from_str::<Value>` would, with the same error messages and the same recursion
//! limit — and dropped at once.
//!
//! What a path finds follows `serde_json::Value` lookups: a later duplicate key replaces the
//! earlier value (with everything below it), and a path through something that is not an
//! object finds nothing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A wanted value, as found.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Null,
    Bool(bool),
    Number(Number),
    /// Borrowed from the record's text, or decoded when it had escapes.
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Field<'_> {
    /// What a message calls this kind of value.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Number(_) => "a number",
            Field::Str(_) => "a string",
            Field::Array => "an array",
            Field::Object => "an object",
        }
    }
}

/// The dotted paths to read, as a tree; each path has an index into the values.
#[derive(Debug, Clone, Default)]
pub struct FieldPlan {
    root: Node,
    paths: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// (key, the path's index if a path ends here, the paths below)
    children: Vec<(String, Option<usize>, Node)>,
    /// Every index at or below this node (cleared when a duplicate key replaces it).
    below: Vec<usize>,
}

impl Node {
    fn child(&self, key: &str) -> Option<usize> {
        self.children.iter().position(|(k, _, _)| k == key)
    }
}

impl FieldPlan {
    /// The index of `path` (`location.street.number`), adding it when new.
    pub fn add(&mut self, path: &str) -> usize {
        if let Some(i) = self.paths.iter().position(|p| p == path) {
            return i;
        }
        let index = self.paths.len();
        self.paths.push(path.to_owned());
        let mut node = &mut self.root;
        let keys: Vec<&str> = path.split('.').collect();
        for (depth, key) in keys.iter().enumerate() {
            node.below.push(index);
            let at = match node.child(key) {
                Some(at) => at,
                None => {
                    node.children.push(((*key).to_owned(), None, Node::default()));
                    node.children.len() - 1
                }
            };
            let entry = &mut node.children[at];
            if depth == keys.len() - 1 {
                entry.1 = Some(index);
                entry.2.below.push(index);
            }
            node = &mut entry.2;
        }
        index
    }

    /// The index of a path added before.
    pub fn index(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Reads `text`: `Ok(None)` for an object, with `values[i]` the value at path `i` (or
    /// `None`); `Ok(Some(kind))` when the record is not an object; `Err` exactly when
    /// `serde_json::from_str::<Value>` fails, with its error.
    pub fn read<'a>(
        &self,
        text: &'a str,
        values: &mut Vec<Option<Field<'a>>>,
    ) -> Result<Option<&'static str>, serde_json::Error> {
        values.clear();
        values.resize(self.paths.len(), None);
        let mut de = serde_json::Deserializer::from_str(text);
        let kind = Root {
            node: &self.root,
            values,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(kind)
    }
}

/// The record itself: an object read with the plan, or the kind of what it is instead.
struct Root<'p, 'v, 'a> {
    node: &'p Node,
    values: &'v mut Vec<Option<Field<'a>>>,
}

impl<'de> DeserializeSeed<'de> for Root<'_, '_, 'de> {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Root<'_, '_, 'de> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // as serde_json's Value: a float it cannot hold is null
        Ok(Some(if Number::from_f64(v).is_some() {
            "a number"
        } else {
            "null"
        }))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Some("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_object(self.node, self.values, map)?;
        Ok(None)
    }
}

/// Reads an object's members: wanted keys are kept or descended into, the rest skipped.
fn read_object<'de, A: MapAccess<'de>>(
    node: &Node,
    values: &mut Vec<Option<Field<'de>>>,
    mut map: A,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key_seed(KeySeed(node))? {
        match key {
            None => {
                map.next_value::<Skip>()?;
            }
            Some(at) => {
                let (_, index, below) = &node.children[at];
                // a later duplicate key replaces everything the earlier one held
                for i in &below.below {
                    values[*i] = None;
                }
                let field = map.next_value_seed(ValueSeed {
                    node: below,
                    values,
                })?;
                if let Some(i) = index {
                    values[*i] = Some(field);
                }
            }
        }
    }
    Ok(())
}

/// A key: the position of the wanted child it names, if any.
struct KeySeed<'p>(&'p Node);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v))
    }
}

/// A wanted value: kept as a [`Field`]; an object with wanted paths below is descended into.
struct ValueSeed<'p, 'v, 'a> {
    node: &'p Node,
    values: &'v mut Vec<Option<Field<'a>>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, 'de> {
    type Value = Field<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, 'de> {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Field::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(v).map_or(Field::Null, Field::Number))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Field::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_object(self.node, self.values, map)?;
        Ok(Field::Object)
    }
}

/// A value nobody wants: parsed through `deserialize_any`, as a `Value` would be (the same
/// checks and recursion limit; serde's `IgnoredAny` takes a laxer path), and dropped.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(paths: &[&str]) -> FieldPlan {
        let mut p = FieldPlan::default();
        for path in paths {
            p.add(path);
        }
        p
    }

    #[test]
    fn reads_only_the_wanted_paths_borrowing_the_text() {
        let p = plan(&["name.first", "name.last", "email", "location.street.number", "dob.age"]);
        let text = r#"{"name":{"title":"Ms","first":"Ana","last":"Li\u00e9"},"email":"a@b.co",
            "location":{"street":{"number":12,"name":"x"}},"dob":{"age":31.5},"extra":[1,{"a":null}]}"#;
        let mut v = Vec::new();
        assert_eq!(p.read(text, &mut v).unwrap(), None);
        assert_eq!(v[0], Some(Field::Str(Cow::Borrowed("Ana"))));
        assert!(matches!(&v[0], Some(Field::Str(Cow::Borrowed(_)))));
        assert_eq!(v[1], Some(Field::Str(Cow::Owned("Lié".into()))));
        assert_eq!(v[2], Some(Field::Str("a@b.co".into())));
        assert_eq!(v[3], Some(Field::Number(12.into())));
        assert_eq!(
            v[4],
            Some(Field::Number(Number::from_f64(31.5).unwrap()))
        );
    }

    #[test]
    fn lookups_follow_value_semantics() {
        let p = plan(&["name.first", "name.last", "name"]);
        let mut v = Vec::new();
        // a later duplicate replaces the whole earlier value
        p.read(r#"{"name":{"first":"a","last":"b"},"name":{"last":"c"}}"#, &mut v)
            .unwrap();
        assert_eq!(v[0], None);
        assert_eq!(v[1], Some(Field::Str("c".into())));
        assert_eq!(v[2], Some(Field::Object));
        // through something that is not an object: nothing
        p.read(r#"{"name":"x"}"#, &mut v).unwrap();
        assert_eq!((v[0].clone(), v[2].clone()), (None, Some(Field::Str("x".into()))));
        // not an object at all
        assert_eq!(p.read("[1,2]", &mut v).unwrap(), Some("an array"));
        assert_eq!(p.read(" 7 ", &mut v).unwrap(), Some("a number"));
        assert_eq!(p.read("null", &mut v).unwrap(), Some("null"));
    }

    #[test]
    fn errors_are_serde_json_value_errors() {
        let p = plan(&["name.first"]);
        let mut v = Vec::new();
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        for text in [
            "{\"name\": {\"first\": \"Ann\"",
            "",
            "{} trailing",
            "{\"name\":\"\\ud800\"}",
            &deep,
            "{\"a\":1e400}",
            "{\"a\":\"tab\there\"}",
        ] {
            let want = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            let got = p.read(text, &mut v).unwrap_err();
            assert_eq!(got.to_string(), want.to_string(), "{text:?}");
        }
    }
}
