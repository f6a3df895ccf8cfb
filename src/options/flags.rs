//! A plan as flag values: every leaf field of a (nested) struct, named by its field, with
//! its value written as a user would type it on the command line. Floats and integers are
//! written with `Display`, as clap writes a `default_value_t`, so a value and its default
//! compare as the strings they are on the command line.

use serde::ser::{self, Impossible, Serialize};
use std::fmt;

/// A field's value as flag values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// `None`: the flag is not given.
    Absent,
    /// The value (a list has several; a switch is `true` or `false`).
    Values(Vec<String>),
}

/// The leaf fields of `value`, in field order; nested structs (flattened groups) give
/// their own fields, under their own names, as clap flattens them.
pub fn leaves<T: Serialize + ?Sized>(value: &T) -> Vec<(&'static str, Leaf)> {
    let mut out = Vec::new();
    // A plan is a struct; anything else has no named fields to give.
    if let Ok(Tree::Group(fields)) = value.serialize(Node) {
        flatten(fields, &mut out);
    }
    out
}

fn flatten(fields: Vec<(&'static str, Tree)>, out: &mut Vec<(&'static str, Leaf)>) {
    for (name, tree) in fields {
        match tree {
            Tree::Group(inner) => flatten(inner, out),
            Tree::Absent => out.push((name, Leaf::Absent)),
            Tree::Values(v) => out.push((name, Leaf::Values(v))),
        }
    }
}

/// What one value serialises to.
enum Tree {
    Absent,
    Values(Vec<String>),
    Group(Vec<(&'static str, Tree)>),
}

#[derive(Debug)]
pub struct NotAFlag(String);

impl fmt::Display for NotAFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAFlag {}

impl ser::Error for NotAFlag {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotAFlag(msg.to_string())
    }
}

fn not_a_flag<T>(what: &str) -> Result<T, NotAFlag> {
    Err(NotAFlag(format!("{what} is not a flag value")))
}

/// The serialiser of one value into a [`Tree`].
struct Node;

fn one(s: impl ToString) -> Result<Tree, NotAFlag> {
    Ok(Tree::Values(vec![s.to_string()]))
}

impl ser::Serializer for Node {
    type Ok = Tree;
    type Error = NotAFlag;
    type SerializeSeq = List;
    type SerializeTuple = Impossible<Tree, NotAFlag>;
    type SerializeTupleStruct = Impossible<Tree, NotAFlag>;
    type SerializeTupleVariant = Impossible<Tree, NotAFlag>;
    type SerializeMap = Impossible<Tree, NotAFlag>;
    type SerializeStruct = Group;
    type SerializeStructVariant = Impossible<Tree, NotAFlag>;

    fn serialize_bool(self, v: bool) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_i8(self, v: i8) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_i16(self, v: i16) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_i32(self, v: i32) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_i64(self, v: i64) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_u16(self, v: u16) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_u32(self, v: u32) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_u64(self, v: u64) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_f64(self, v: f64) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_char(self, v: char) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_str(self, v: &str) -> Result<Tree, NotAFlag> {
        one(v)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Tree, NotAFlag> {
        not_a_flag("bytes")
    }
    fn serialize_none(self) -> Result<Tree, NotAFlag> {
        Ok(Tree::Absent)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Tree, NotAFlag> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Tree, NotAFlag> {
        Ok(Tree::Absent)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Tree, NotAFlag> {
        Ok(Tree::Absent)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Tree, NotAFlag> {
        one(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Tree, NotAFlag> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Tree, NotAFlag> {
        not_a_flag("an enum with data")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<List, NotAFlag> {
        Ok(List(Vec::new()))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotAFlag> {
        not_a_flag("a tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotAFlag> {
        not_a_flag("a tuple")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotAFlag> {
        not_a_flag("an enum with data")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotAFlag> {
        not_a_flag("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Group, NotAFlag> {
        Ok(Group(Vec::new()))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotAFlag> {
        not_a_flag("an enum with data")
    }
}

/// The values of a list flag.
struct List(Vec<String>);

impl List {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NotAFlag> {
        match v.serialize(Node)? {
            Tree::Values(values) => self.0.extend(values),
            Tree::Absent => {}
            Tree::Group(_) => return not_a_flag("a struct in a list"),
        }
        Ok(())
    }
}

impl ser::SerializeSeq for List {
    type Ok = Tree;
    type Error = NotAFlag;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NotAFlag> {
        self.push(v)
    }
    fn end(self) -> Result<Tree, NotAFlag> {
        Ok(Tree::Values(self.0))
    }
}

/// The fields of a struct.
struct Group(Vec<(&'static str, Tree)>);

impl ser::SerializeStruct for Group {
    type Ok = Tree;
    type Error = NotAFlag;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), NotAFlag> {
        // A path that is not UTF-8 cannot be serialised; its flag is still given, with
        // the path as `Path::display` writes it, so the line says which flag was set.
        let tree = v
            .serialize(Node)
            .unwrap_or_else(|e| Tree::Values(vec![format!("<{e}>")]));
        self.0.push((name, tree));
        Ok(())
    }
    fn end(self) -> Result<Tree, NotAFlag> {
        Ok(Tree::Group(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Inner {
        lr: f64,
        on: bool,
    }

    #[derive(Serialize)]
    struct Outer {
        name: String,
        ids: Vec<usize>,
        none: Option<u8>,
        inner: Inner,
        small: f64,
    }

    #[test]
    fn nested_fields_become_named_flag_values_written_as_display_writes_them() {
        let v = Outer {
            name: "a b".into(),
            ids: vec![1, 2],
            none: None,
            inner: Inner {
                lr: 0.0003,
                on: true,
            },
            small: 1e-5,
        };
        let values = |v: &[&str]| Leaf::Values(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            leaves(&v),
            vec![
                ("name", values(&["a b"])),
                ("ids", values(&["1", "2"])),
                ("none", Leaf::Absent),
                ("lr", values(&["0.0003"])),
                ("on", values(&["true"])),
                ("small", values(&["0.00001"])),
            ]
        );
    }
}
