//! The pickle machine, independent of torch: it turns a pickle's bytes into a [`Value`] tree.
//!
//! What a pickle means beyond Python's own containers depends on who wrote it, so the machine
//! leaves that to a [`Resolver`]: the host format's persistent ids (torch's storages), its
//! functions (torch's `_rebuild_tensor_v2`), and its BUILD states. Whatever the resolver makes
//! travels through the tree as [`Value::Host`], and whatever no one recognises stays an
//! [`Object`] whose arguments and attributes can still be named when flattening.
//!
//! The same seam reads numpy arrays, which a Paddle `.pdparams` file (a plain pickle of a
//! dict of arrays, not in a zip) holds: `super::paddle`'s resolver
//! - answers `Resolver::reduce` for `numpy.core.multiarray._reconstruct` and
//!   `numpy._core.multiarray._reconstruct` (numpy ≥ 2) with an empty array, a
//!   `Value::Host` with interior mutability (`Rc<RefCell<…>>`: the memo shares it);
//! - fills it in `Resolver::build` from the state `(version, shape, dtype, is_fortran, data)`,
//!   whose `data` comes as [`Value::Bytes`] and whose `dtype` is an [`Object`] of class
//!   `numpy.dtype` (its `args` name the type, its `state` tuple the byte order);
//! - hands [`super::flatten::flatten`] a leaf function that turns those arrays into tensors.

use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A value that a [`Resolver`] puts in the tree (a torch storage or tensor, say).
pub(crate) trait Host: Clone {
    /// For error messages: "a tensor", "a storage".
    fn describe(&self) -> String;
}

/// What a [`Resolver`] makes of a REDUCE.
pub(crate) enum Reduced<H> {
    /// The call's result.
    Value(Value<H>),
    /// Call this callable with these arguments instead (a wrapper such as torch's
    /// `_rebuild_from_type_v2`, which only forwards to another function).
    Call(Value<H>, Value<H>),
    /// Not the resolver's: the machine handles it (Python's dicts) or keeps an [`Object`].
    Unknown,
}

/// The host format's part of unpickling; see the module's documentation.
pub(crate) trait Resolver {
    type Host: Host;

    /// BINPERSID: the object a persistent id stands for. Plain pickles have none.
    fn persistent_load(&mut self, pid: &Value<Self::Host>) -> Result<Value<Self::Host>> {
        bail!("unexpected persistent id {}", pid.describe())
    }

    /// REDUCE of the global `name` (`module.name`) with `args` (usually a tuple).
    fn reduce(&mut self, name: &str, args: &Value<Self::Host>) -> Result<Reduced<Self::Host>>;

    /// BUILD of a host value with `state`; `false` leaves it to the machine, which ignores
    /// a state without host values in it and refuses any other.
    fn build(&mut self, _target: &Self::Host, _state: &Value<Self::Host>) -> Result<bool> {
        Ok(false)
    }
}

/// An instance of a class the reader does not know, kept so its attributes can still be
/// named.
pub(crate) struct Object<H> {
    /// `module.name` of the class or function that made it.
    pub(crate) class: Rc<str>,
    pub(crate) args: Value<H>,
    /// What BUILD set: usually a dict of attributes.
    pub(crate) state: Value<H>,
    /// What SETITEMS / APPENDS added (instances of dict and list subclasses).
    pub(crate) items: Vec<Pair<H>>,
    pub(crate) elements: Vec<Value<H>>,
}

/// A dict entry, key and value.
pub(crate) type Pair<H> = (Value<H>, Value<H>);

/// A pickled value. Containers are shared (`Rc`), as in Python, so that a memo reference
/// sees later additions.
#[derive(Clone)]
pub(crate) enum Value<H> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// `bytes` (numpy arrays keep their data in one); skipped when flattening.
    Bytes(Rc<[u8]>),
    /// A leaf with no use here (integers wider than 64 bits): skipped when flattening.
    Opaque(&'static str),
    Tuple(Rc<[Value<H>]>),
    List(Rc<RefCell<Vec<Value<H>>>>),
    Dict(Rc<RefCell<Vec<Pair<H>>>>),
    /// A class or function, by `module.name`.
    Global(Rc<str>),
    /// What the [`Resolver`] made.
    Host(H),
    Object(Rc<RefCell<Object<H>>>),
}

impl<H: Host> Value<H> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Opaque(what) => (*what).into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {g}"),
            Value::Host(h) => h.describe(),
            Value::Object(o) => format!("a {} object", o.borrow().class),
        }
    }

    /// The elements of a tuple (a REDUCE's arguments); nothing for any other value.
    pub(crate) fn tuple_items(&self) -> &[Value<H>] {
        match self {
            Value::Tuple(items) => items,
            _ => &[],
        }
    }

    pub(crate) fn int(&self, what: &str) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("{what}: expected an int, found {}", other.describe()),
        }
    }

    pub(crate) fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(items) => items.iter().map(|v| v.int(what)).collect(),
            Value::List(items) => items.borrow().iter().map(|v| v.int(what)).collect(),
            other => bail!(
                "{what}: expected a tuple of ints, found {}",
                other.describe()
            ),
        }
    }

    pub(crate) fn str(&self, what: &str) -> Result<Rc<str>> {
        match self {
            Value::Str(s) => Ok(s.clone()),
            other => bail!("{what}: expected a string, found {}", other.describe()),
        }
    }

    /// Whether a host value (a tensor, a storage) lies anywhere inside: such a value must
    /// never be skipped. `budget` counts the values left to visit (see [`MAX_VISITS`]).
    pub(crate) fn holds_host(&self, depth: usize, budget: &mut usize) -> bool {
        if depth > MAX_DEPTH || *budget == 0 {
            // Past anything torch writes: assume the worst, so nothing is dropped.
            return true;
        }
        *budget -= 1;
        let d = depth + 1;
        match self {
            Value::Host(_) => true,
            Value::Tuple(items) => items.iter().any(|v| v.holds_host(d, budget)),
            Value::List(items) => items.borrow().iter().any(|v| v.holds_host(d, budget)),
            Value::Dict(items) => items
                .borrow()
                .iter()
                .any(|(k, v)| k.holds_host(d, budget) || v.holds_host(d, budget)),
            Value::Object(o) => {
                let o = o.borrow();
                o.args.holds_host(d, budget)
                    || o.state.holds_host(d, budget)
                    || o.items
                        .iter()
                        .any(|(k, v)| k.holds_host(d, budget) || v.holds_host(d, budget))
                    || o.elements.iter().any(|v| v.holds_host(d, budget))
            }
            _ => false,
        }
    }
}

/// Nesting deeper than this is refused (no torch file comes close; it guards the
/// recursion).
pub(crate) const MAX_DEPTH: usize = 128;

/// The most values one walk over the unpickled object visits. Containers shared through the
/// memo can make a small pickle a huge tree; a real checkpoint has a few thousand values.
pub(crate) const MAX_VISITS: usize = 1 << 21;

/// The pickle machine, for the opcodes torch.save emits (protocol 2, and 3–5 as met in
/// practice).
pub(crate) struct Unpickler<'a, R: Resolver> {
    data: &'a [u8],
    /// What error messages call the pickle (`data.pkl`).
    label: &'a str,
    pos: usize,
    stack: Vec<Value<R::Host>>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value<R::Host>>,
    resolver: &'a mut R,
}

impl<'a, R: Resolver> Unpickler<'a, R> {
    pub(crate) fn new(data: &'a [u8], label: &'a str, resolver: &'a mut R) -> Self {
        Unpickler {
            data,
            label,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            resolver,
        }
    }

    /// Runs the pickle to its STOP; errors name the opcode and its byte offset.
    pub(crate) fn run(mut self) -> Result<Value<R::Host>> {
        let label = self.label;
        loop {
            let at = self.pos;
            let op = self
                .byte()
                .map_err(|_| anyhow!("{label}: ends at byte {at} without a STOP opcode"))?;
            self.step(op)
                .with_context(|| format!("{label}: opcode {} at byte {at}", opcode_name(op)))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len());
        let end = end.ok_or_else(|| anyhow!("truncated pickle"))?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn usize_len(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n).map_err(|_| anyhow!("length {n} does not fit in memory"))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("truncated pickle (no end of line)"))?;
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).map_err(|_| anyhow!("global name is not UTF-8"))
    }

    fn string(&mut self, n: usize) -> Result<Value<R::Host>> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into()))
    }

    fn bytes(&mut self, n: usize) -> Result<Value<R::Host>> {
        Ok(Value::Bytes(self.take(n)?.into()))
    }

    fn push(&mut self, v: Value<R::Host>) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value<R::Host>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn top(&self) -> Result<&Value<R::Host>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow");
        }
        self.stack
            .last()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<R::Host>>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK to close"))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn get(&self, key: u32) -> Result<Value<R::Host>> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| anyhow!("memo {key} read before it was written"))
    }

    fn put(&mut self, key: u32) -> Result<()> {
        let top = self.top()?.clone();
        self.memo.insert(key, top);
        Ok(())
    }

    /// Executes opcode `op`, reading its operands from the data. One function despite its
    /// length: one match arm per opcode reads like the pickle spec's opcode table, and
    /// splitting it would scatter the VM state (stack, marks, memo) across helpers.
    fn step(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    bail!("pickle protocol {proto} is newer than 5");
                }
            }
            0x95 => {
                self.u64()?; // FRAME: only a read-ahead hint.
            }
            b'.' => {}
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?.clone();
                self.push(top);
            }
            // Memo.
            b'q' => {
                let k = self.byte()?;
                self.put(k.into())?;
            }
            b'r' => {
                let k = self.u32()?;
                self.put(k)?;
            }
            0x94 => {
                let k = u32::try_from(self.memo.len())?;
                self.put(k)?;
            }
            b'h' => {
                let k = self.byte()?;
                let v = self.get(k.into())?;
                self.push(v);
            }
            b'j' => {
                let k = self.u32()?;
                let v = self.get(k)?;
                self.push(v);
            }
            // Constants.
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                let n = self.byte()?;
                let v = self.long(n.into())?;
                self.push(v);
            }
            0x8b => {
                let n = u32::from_le_bytes(self.take(4)?.try_into()?);
                let v = self.long(n as usize)?;
                self.push(v);
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                self.push(Value::Float(v));
            }
            0x8c | b'U' => {
                let n = self.byte()?;
                let v = self.string(n.into())?;
                self.push(v);
            }
            b'X' => {
                let n = self.u32()?;
                let v = self.string(n as usize)?;
                self.push(v);
            }
            b'T' => {
                let n = i32::from_le_bytes(self.take(4)?.try_into()?);
                let n = usize::try_from(n).map_err(|_| anyhow!("negative string length"))?;
                let v = self.string(n)?;
                self.push(v);
            }
            0x8d => {
                let n = self.u64()?;
                let n = self.usize_len(n)?;
                let v = self.string(n)?;
                self.push(v);
            }
            b'C' => {
                let n = self.byte()?;
                let v = self.bytes(n.into())?;
                self.push(v);
            }
            b'B' => {
                let n = self.u32()?;
                let v = self.bytes(n as usize)?;
                self.push(v);
            }
            0x8e => {
                let n = self.u64()?;
                let n = self.usize_len(n)?;
                let v = self.bytes(n)?;
                self.push(v);
            }
            // Containers.
            b'}' => self.push(Value::Dict(Default::default())),
            b']' => self.push(Value::List(Default::default())),
            0x8f => self.push(Value::List(Default::default())),
            b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))));
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items.into()));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items.into()));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                    bail!("pickle stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items.into()));
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.set_items(pairs)?;
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            // Objects.
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(format!("{module}.{name}").into()));
            }
            0x93 => {
                let name = self.pop()?.str("STACK_GLOBAL name")?;
                let module = self.pop()?.str("STACK_GLOBAL module")?;
                self.push(Value::Global(format!("{module}.{name}").into()));
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.resolver.persistent_load(&pid)?;
                self.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(&callable, args)?;
                self.push(v);
            }
            0x81 => {
                let args = self.pop()?;
                let class = self.pop()?;
                self.push(new_object(&class, args));
            }
            0x92 => {
                self.pop()?; // NEWOBJ_EX keyword arguments: no class met here uses them.
                let args = self.pop()?;
                let class = self.pop()?;
                self.push(new_object(&class, args));
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?.clone();
                match &target {
                    Value::Object(o) => o.borrow_mut().state = state,
                    Value::Host(h) if self.resolver.build(h, &state)? => {}
                    // An OrderedDict's attributes (a state dict's `_metadata`): not data.
                    _ if !state.holds_host(0, &mut MAX_VISITS.clone()) => {}
                    other => bail!("BUILD of {} with tensors in its state", other.describe()),
                }
            }
            _ => bail!("unsupported pickle opcode"),
        }
        Ok(())
    }

    /// LONG1 / LONG4: a little-endian two's-complement integer of `n` bytes.
    fn long(&mut self, n: usize) -> Result<Value<R::Host>> {
        let bytes = self.take(n)?;
        let Some(&last) = bytes.last() else {
            return Ok(Value::Int(0));
        };
        let fill = if last & 0x80 != 0 { 0xff } else { 0 };
        if bytes.len() > 8 && bytes[8..].iter().any(|&b| b != fill) {
            return Ok(Value::Opaque("an integer wider than 64 bits"));
        }
        let mut le = [fill; 8];
        let n = bytes.len().min(8);
        le[..n].copy_from_slice(&bytes[..n]);
        let v = i64::from_le_bytes(le);
        if bytes.len() > 8 && (v < 0) != (fill == 0xff) {
            return Ok(Value::Opaque("an integer wider than 64 bits"));
        }
        Ok(Value::Int(v))
    }

    fn set_items(&mut self, pairs: Vec<Pair<R::Host>>) -> Result<()> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(pairs),
            Value::Object(o) => o.borrow_mut().items.extend(pairs),
            other => bail!("SETITEMS on {}", other.describe()),
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value<R::Host>>) -> Result<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().elements.extend(items),
            other => bail!("APPENDS on {}", other.describe()),
        }
        Ok(())
    }

    /// REDUCE: the resolver's functions, Python's dicts; anything else becomes an
    /// [`Object`].
    fn call(&mut self, callable: &Value<R::Host>, args: Value<R::Host>) -> Result<Value<R::Host>> {
        let Value::Global(name) = callable else {
            return Ok(object("<call>".into(), args));
        };
        match self.resolver.reduce(name, &args)? {
            Reduced::Value(v) => return Ok(v),
            Reduced::Call(callable, args) => return self.call(&callable, args),
            Reduced::Unknown => {}
        }
        let argv = args.tuple_items();
        match &**name {
            "collections.OrderedDict" | "builtins.dict" => {
                // `OrderedDict([(k, v), …])`; torch's own form is `OrderedDict()` + SETITEMS.
                let mut pairs = Vec::new();
                if let Some(Value::List(items)) = argv.first() {
                    for item in items.borrow().iter() {
                        match item {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                pairs.push((kv[0].clone(), kv[1].clone()))
                            }
                            other => bail!("{name} of {}", other.describe()),
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(pairs))))
            }
            // Protocol 0/1 instances: `_reconstructor(cls, base, state)`.
            "copyreg._reconstructor" => match argv.first() {
                Some(class @ Value::Global(_)) => Ok(new_object(class, Value::None)),
                _ => Ok(object(name.clone(), args)),
            },
            _ => Ok(object(name.clone(), args)),
        }
    }
}

fn pairs<H>(items: Vec<Value<H>>) -> Result<Vec<Pair<H>>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of items for a dict");
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn object<H>(class: Rc<str>, args: Value<H>) -> Value<H> {
    Value::Object(Rc::new(RefCell::new(Object {
        class,
        args,
        state: Value::None,
        items: Vec::new(),
        elements: Vec::new(),
    })))
}

/// NEWOBJ `cls.__new__(cls, *args)`: a dict for OrderedDict, else an [`Object`].
fn new_object<H>(class: &Value<H>, args: Value<H>) -> Value<H> {
    match class {
        Value::Global(name) if &**name == "collections.OrderedDict" => {
            Value::Dict(Default::default())
        }
        Value::Global(name) => object(name.clone(), args),
        _ => object("<new>".into(), args),
    }
}

/// A readable name for an opcode in error messages.
///
/// Long because it is the opcode table.
fn opcode_name(op: u8) -> String {
    let name = match op {
        0x80 => "PROTO",
        0x95 => "FRAME",
        b'.' => "STOP",
        b'(' => "MARK",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        0x94 => "MEMOIZE",
        b'h' => "BINGET",
        b'j' => "LONG_BINGET",
        b'N' => "NONE",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'G' => "BINFLOAT",
        0x8c => "SHORT_BINUNICODE",
        b'U' => "SHORT_BINSTRING",
        b'X' => "BINUNICODE",
        b'T' => "BINSTRING",
        0x8d => "BINUNICODE8",
        b'C' => "SHORT_BINBYTES",
        b'B' => "BINBYTES",
        0x8e => "BINBYTES8",
        b'}' => "EMPTY_DICT",
        b']' => "EMPTY_LIST",
        0x8f => "EMPTY_SET",
        b')' => "EMPTY_TUPLE",
        b'd' => "DICT",
        b'l' => "LIST",
        0x91 => "FROZENSET",
        b't' => "TUPLE",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        b'a' => "APPEND",
        b'e' => "APPENDS",
        0x90 => "ADDITEMS",
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'b' => "BUILD",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "",
    };
    let shown = if op.is_ascii_graphic() {
        format!("0x{op:02x} '{}'", op as char)
    } else {
        format!("0x{op:02x}")
    };
    if name.is_empty() {
        shown
    } else {
        format!("{name} ({shown})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pth::flatten::flatten;
    use crate::model::pth::Scalar;

    /// `pickle.dumps({'layer': {'w': array([1., 2.], dtype=float32)}, 'step': 3},
    /// protocol=4)`, the shape of a Paddle `.pdparams` file. Written by Python with
    /// stand-ins for numpy's `ndarray` and `dtype` whose `__reduce__` return what numpy's
    /// do, as numpy is not at hand.
    const NUMPY_PICKLE: &[u8] =
        b"\x80\x04\x95\xac\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x05layer\x94}\x94\
        \x8c\x01w\x94\x8c\x15numpy.core.multiarray\x94\x8c\x0c_reconstruct\x94\
        \x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b\
        \x94\x87\x94R\x94(K\x01K\x02\x85\x94h\x07\x8c\x05dtype\x94\x93\x94\x8c\
        \x02f4\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\
        \xff\xff\xff\xffK\x00t\x94b\x89C\x08\x00\x00\x80?\x00\x00\x00@\x94t\x94b\
        s\x8c\x04step\x94K\x03u.";

    #[derive(Default)]
    struct Array {
        dtype: String,
        shape: Vec<i64>,
        data: Vec<u8>,
    }

    /// Shared and filled in place, as the memo may hold it before BUILD gives its data.
    #[derive(Clone)]
    struct Shared(Rc<RefCell<Array>>);

    impl Host for Shared {
        fn describe(&self) -> String {
            "an array".into()
        }
    }

    /// The seam the module's documentation describes, in its smallest form.
    struct Numpy;

    impl Resolver for Numpy {
        type Host = Shared;

        fn reduce(&mut self, name: &str, _args: &Value<Shared>) -> Result<Reduced<Shared>> {
            Ok(match name {
                "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => {
                    Reduced::Value(Value::Host(Shared(Default::default())))
                }
                _ => Reduced::Unknown,
            })
        }

        fn build(&mut self, target: &Shared, state: &Value<Shared>) -> Result<bool> {
            let [_, shape, Value::Object(dtype), _, Value::Bytes(data)] = state.tuple_items()
            else {
                bail!("array state {}", state.describe());
            };
            let mut a = target.0.borrow_mut();
            a.shape = shape.ints("array shape")?;
            let dtype_args = dtype.borrow().args.clone();
            a.dtype = dtype_args.tuple_items()[0].str("dtype")?.to_string();
            a.data = data.to_vec();
            Ok(true)
        }
    }

    #[test]
    fn a_resolver_plugs_numpy_arrays_in() {
        let value = Unpickler::new(NUMPY_PICKLE, "model.pdparams", &mut Numpy)
            .run()
            .unwrap();
        let flat = flatten(&value, |_, a: &Shared| Ok(a.0.clone())).unwrap();
        assert_eq!(flat.leaves.len(), 1);
        let (name, array) = &flat.leaves[0];
        assert_eq!(name, "layer.w");
        let array = array.borrow();
        assert_eq!((array.dtype.as_str(), &array.shape[..]), ("f4", &[2][..]));
        let values: Vec<f32> = array
            .data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [1.0, 2.0]);
        assert_eq!(flat.scalars.len(), 1);
        assert_eq!(flat.scalars["step"], Scalar::Int(3));
    }
}
