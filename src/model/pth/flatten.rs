//! Nested containers → dotted names: `{'backbone': {'base.conv1.weight': t}}` gives
//! `backbone.base.conv1.weight`, because that is how agd (and a state dict) names parameters.
//!
//! Only the leaves are format-specific: the caller's `leaf` function turns each host value
//! into what it keeps (a torch tensor here; a numpy array, for a Paddle reader) or refuses it.

use super::unpickle::{Host, Pair, Value, MAX_DEPTH, MAX_VISITS};
use super::Scalar;
use crate::model::params::join;
use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, HashSet};

/// The flattened object: host leaves in file order, scalars by name.
pub(crate) struct Flat<T> {
    pub(crate) leaves: Vec<(String, T)>,
    pub(crate) scalars: BTreeMap<String, Scalar>,
}

/// Flattens `root`. Lists and tuples name their elements by index (`param_groups.0.lr`), dict
/// keys that are ints, bools or None by their Python spelling, objects of unknown classes
/// through their pickled attributes (`args.lr` for an `argparse.Namespace`). What cannot be
/// named (a `torch.device`, bytes) is skipped, unless it holds a host value: then this fails
/// rather than lose it. Two values under one name fail too.
pub(crate) fn flatten<H: Host, T>(
    root: &Value<H>,
    leaf: impl FnMut(&str, &H) -> Result<T>,
) -> Result<Flat<T>> {
    let mut f = Flattener {
        flat: Flat {
            leaves: Vec::new(),
            scalars: BTreeMap::new(),
        },
        leaf,
        names: HashSet::new(),
        budget: MAX_VISITS,
    };
    f.value("", root, 0)?;
    Ok(f.flat)
}

/// A name for error messages: the top level has none.
pub(crate) fn shown(name: &str) -> &str {
    if name.is_empty() {
        "<top level>"
    } else {
        name
    }
}

struct Flattener<T, L> {
    flat: Flat<T>,
    leaf: L,
    names: HashSet<String>,
    /// Values left to visit (see [`MAX_VISITS`]).
    budget: usize,
}

impl<T, L> Flattener<T, L> {
    fn value<H: Host>(&mut self, name: &str, v: &Value<H>, depth: usize) -> Result<()>
    where
        L: FnMut(&str, &H) -> Result<T>,
    {
        if depth > MAX_DEPTH {
            bail!("{}: nested more than {MAX_DEPTH} levels deep", shown(name));
        }
        self.budget = self.budget.checked_sub(1).ok_or_else(|| {
            anyhow!(
                "{}: more than {MAX_VISITS} values (containers shared in a loop?)",
                shown(name)
            )
        })?;
        let d = depth + 1;
        match v {
            Value::Host(h) => {
                let kept = (self.leaf)(name, h)?;
                self.claim(name)?;
                self.flat.leaves.push((name.to_owned(), kept));
            }
            Value::None => self.scalar(name, Scalar::None)?,
            Value::Bool(b) => self.scalar(name, Scalar::Bool(*b))?,
            Value::Int(i) => self.scalar(name, Scalar::Int(*i))?,
            Value::Float(f) => self.scalar(name, Scalar::Float(*f))?,
            Value::Str(s) => self.scalar(name, Scalar::Str(s.to_string()))?,
            Value::Dict(items) => self.items(name, &items.borrow(), d)?,
            Value::List(items) => self.elements(name, &items.borrow(), d)?,
            Value::Tuple(items) => self.elements(name, items, d)?,
            Value::Object(o) => {
                let o = o.borrow();
                let made_by = format!("a value made by {}", o.class);
                match &o.state {
                    Value::Dict(attrs) => self.items(name, &attrs.borrow(), d)?,
                    // `(dict, slots)` from classes with __slots__.
                    Value::Tuple(parts) if parts.len() == 2 => {
                        for part in parts.iter() {
                            match part {
                                Value::Dict(attrs) => self.items(name, &attrs.borrow(), d)?,
                                other => self.skip(name, other, &made_by)?,
                            }
                        }
                    }
                    other => self.skip(name, other, &made_by)?,
                }
                self.items(name, &o.items, d)?;
                self.elements(name, &o.elements, d)?;
                self.skip(name, &o.args, &made_by)?;
            }
            Value::Opaque(what) => self.scalar(name, Scalar::Opaque(what))?,
            Value::Global(_) | Value::Bytes(_) => {}
        }
        Ok(())
    }

    fn items<H: Host>(&mut self, name: &str, items: &[Pair<H>], depth: usize) -> Result<()>
    where
        L: FnMut(&str, &H) -> Result<T>,
    {
        for (k, v) in items {
            let key = match k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
                Value::None => "None".to_owned(),
                other => {
                    let what = format!("a value under a key that is {}", other.describe());
                    self.skip(name, v, &what)?;
                    continue;
                }
            };
            self.value(&join(name, &key), v, depth)?;
        }
        Ok(())
    }

    fn elements<H: Host>(&mut self, name: &str, items: &[Value<H>], depth: usize) -> Result<()>
    where
        L: FnMut(&str, &H) -> Result<T>,
    {
        for (i, v) in items.iter().enumerate() {
            self.value(&join(name, &i.to_string()), v, depth)?;
        }
        Ok(())
    }

    /// Passes over a value with no name to give it, unless a host value would be lost with it.
    fn skip<H: Host>(&mut self, name: &str, v: &Value<H>, what: &str) -> Result<()> {
        if v.holds_host(0, &mut self.budget) {
            bail!(
                "{}: {what} holds tensors that this reader cannot rebuild",
                shown(name)
            );
        }
        Ok(())
    }

    fn scalar(&mut self, name: &str, s: Scalar) -> Result<()> {
        self.claim(name)?;
        self.flat.scalars.insert(name.to_owned(), s);
        Ok(())
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_owned()) {
            bail!("{}: two values flatten to this name", shown(name));
        }
        Ok(())
    }
}
