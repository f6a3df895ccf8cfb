//! Reader of torch.save files (zip + pickle), for the reference checkpoints and ImageNet weights.
//!
//! libtorch's own loader behind tch (`Tensor::loadz_multi`, `VarStore::load`) reads only flat
//! dicts of tensors, but the reference checkpoints nest two state dicts next to an epoch number.
//! So this module reads the zip archive that `torch.save` writes (PyTorch ≥ 1.6) itself: it runs
//! the subset of the pickle machine that torch uses, rebuilds the tensors from the archive's
//! storages, and flattens nested containers into dotted names. No Python is involved.
//!
//! Layout of such an archive (the folder is the file's stem: `checkpoint/`, `archive/`, …):
//! `<folder>/data.pkl` (the pickled object), `<folder>/data/<key>` (one entry of raw
//! little-endian bytes per storage, referenced from the pickle by persistent ids),
//! `<folder>/byteorder` and `<folder>/version`.

use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// Everything a torch.save file held, flattened: nested dicts become dotted names.
#[derive(Debug)]
pub struct TorchFile {
    /// Tensors by dotted name, in file order: `backbone.base.conv1.weight`, `classifier.W`, …
    pub tensors: Vec<(String, Tensor)>,
    /// Integer / float / bool / string leaves by dotted name (`epoch` → 80).
    pub scalars: BTreeMap<String, Scalar>,
}

/// A leaf of the pickled object that is not a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Python's `None` (an unset option, say).
    None,
}

impl TorchFile {
    /// Reads a torch.save file. Every tensor comes back on the CPU (whatever device it was saved
    /// from), contiguous and owning its memory: views of one storage become separate tensors
    /// with the views' values. Only one tensor object pickled under two names (tied weights)
    /// stays one tensor under both, as `torch.load` gives it.
    ///
    /// Lists and tuples flatten with their indices as name parts (`param_groups.0.lr`), objects
    /// of unknown classes through their pickled attributes (`args.lr` for an
    /// `argparse.Namespace`). What cannot be named (a `torch.device`, a `torch.Size`) is skipped,
    /// unless it holds a tensor: then loading fails rather than losing it.
    pub fn load(path: &Path) -> Result<TorchFile> {
        let shown = path.display();
        let mut file = File::open(path).map_err(|e| anyhow!("{shown}: cannot open: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| anyhow!("{shown}: cannot read its size: {e}"))?
            .len();
        let mut head = Vec::with_capacity(64);
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .map_err(|e| anyhow!("{shown}: cannot read: {e}"))?;
        if !head.starts_with(ZIP_MAGIC) {
            if is_legacy(&head) {
                let p = path.to_string_lossy();
                bail!(
                    "{p}: legacy torch.save format; re-save it with PyTorch ≥ 1.6: \
                     python -c \"import torch; torch.save(torch.load('{p}'), '{p}')\""
                );
            }
            bail!("{shown}: not a torch.save file");
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| anyhow!("{shown}: cannot read: {e}"))?;
        let zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| anyhow!("{shown}: corrupt or truncated zip archive ({e})"))?;
        let mut archive = Archive {
            zip,
            root: String::new(),
            file_len: len,
            storages: HashMap::new(),
        };
        let value = archive
            .open()
            .and_then(|pickle| Unpickler::new(&pickle, &mut archive).run())
            .map_err(|e| anyhow!("{shown}: {e:#}"))?;
        let mut flat = Flattener::new();
        flat.value("", &value, 0)
            .map_err(|e| anyhow!("{shown}: {e:#}"))?;
        Ok(TorchFile {
            tensors: flat.tensors,
            scalars: flat.scalars,
        })
    }

    /// The tensor stored under a dotted name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The integer stored under a dotted name (`epoch`); `None` if absent or not an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.scalars.get(name) {
            Some(Scalar::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The pre-1.6 format opens with a pickled magic number, 0x1950a86a20f9469cfc6c, as a LONG1.
fn is_legacy(head: &[u8]) -> bool {
    const MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    head.first() == Some(&0x80) && head.windows(MAGIC.len()).any(|w| w == MAGIC)
}

/// The zip archive, and the storages already read from it (each is read once, however many
/// tensors view it).
struct Archive {
    zip: zip::ZipArchive<BufReader<File>>,
    /// The folder holding `data.pkl`, with its trailing `/`.
    root: String,
    /// Caps allocations, so that a corrupt size field cannot ask for terabytes.
    file_len: u64,
    storages: HashMap<String, Rc<Vec<u8>>>,
}

impl Archive {
    /// Finds the archive folder, checks the byte order, and returns the pickle's bytes.
    fn open(&mut self) -> Result<Vec<u8>> {
        // Like torch's own reader: the folder is that of the first entry.
        if self.zip.is_empty() {
            bail!("empty zip archive: not a torch.save file");
        }
        let first = self
            .zip
            .by_index_raw(0)
            .map(|f| f.name().to_owned())
            .map_err(|e| anyhow!("corrupt zip archive ({e})"))?;
        let folder = first.split('/').next().unwrap_or_default();
        self.root = format!("{folder}/");
        if !self.has(&self.entry("data.pkl")) {
            bail!("zip archive without a top-level */data.pkl: not a torch.save file");
        }
        let byteorder = self.entry("byteorder");
        if self.has(&byteorder) {
            let order = self.read(&byteorder)?;
            match order.as_slice() {
                b"little" => {}
                b"big" => bail!(
                    "written on a big-endian machine; only little-endian files are supported \
                     (re-save it on a little-endian one)"
                ),
                other => bail!(
                    "entry '{byteorder}' holds '{}', not 'little' or 'big'",
                    String::from_utf8_lossy(other)
                ),
            }
        }
        self.read(&self.entry("data.pkl"))
    }

    fn has(&self, name: &str) -> bool {
        self.zip.file_names().any(|n| n == name)
    }

    fn entry(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut f = match self.zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => bail!("missing entry '{name}'"),
            Err(e) => bail!("entry '{name}': {e} (corrupt archive?)"),
        };
        let mut buf = Vec::with_capacity(f.size().min(self.file_len) as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| anyhow!("entry '{name}': {e} (truncated or corrupt archive?)"))?;
        Ok(buf)
    }

    fn storage(&mut self, key: &str) -> Result<Rc<Vec<u8>>> {
        if let Some(bytes) = self.storages.get(key) {
            return Ok(bytes.clone());
        }
        let bytes = Rc::new(self.read(&self.entry(&format!("data/{key}")))?);
        self.storages.insert(key.to_owned(), bytes.clone());
        Ok(bytes)
    }
}

/// A storage named by a persistent id: the entry `data/<key>`, of elements of `kind`, the type
/// its class names (bytes for an untyped storage, which `_rebuild_tensor_v3` gives a dtype).
struct StorageRef {
    key: String,
    kind: Kind,
}

/// An instance of a class the reader does not know, kept so its attributes can still be named.
struct Object {
    /// `module.name` of the class or function that made it.
    class: Rc<str>,
    args: Value,
    /// What BUILD set: usually a dict of attributes.
    state: Value,
    /// What SETITEMS / APPENDS added (instances of dict and list subclasses).
    items: Vec<(Value, Value)>,
    elements: Vec<Value>,
}

/// A pickled value. Containers are shared (`Rc`), as in Python, so that a memo reference sees
/// later additions.
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// A leaf with no use here (bytes, integers wider than 64 bits): skipped when flattening.
    Opaque(&'static str),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function, by `module.name`.
    Global(Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<Tensor>),
    Object(Rc<RefCell<Object>>),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Opaque(what) => (*what).into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {g}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(o) => format!("a {} object", o.borrow().class),
        }
    }

    fn int(&self, what: &str) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("{what}: expected an int, found {}", other.describe()),
        }
    }

    fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(items) => items.iter().map(|v| v.int(what)).collect(),
            Value::List(items) => items.borrow().iter().map(|v| v.int(what)).collect(),
            other => bail!(
                "{what}: expected a tuple of ints, found {}",
                other.describe()
            ),
        }
    }

    fn str(&self, what: &str) -> Result<Rc<str>> {
        match self {
            Value::Str(s) => Ok(s.clone()),
            other => bail!("{what}: expected a string, found {}", other.describe()),
        }
    }

    /// Whether a tensor or storage lies anywhere inside: such a value must never be skipped.
    /// `budget` counts the values left to visit (see [`MAX_VISITS`]).
    fn holds_tensor(&self, depth: usize, budget: &mut usize) -> bool {
        if depth > MAX_DEPTH || *budget == 0 {
            // Past anything torch writes: assume the worst, so nothing is dropped.
            return true;
        }
        *budget -= 1;
        let d = depth + 1;
        match self {
            Value::Tensor(_) | Value::Storage(_) => true,
            Value::Tuple(items) => items.iter().any(|v| v.holds_tensor(d, budget)),
            Value::List(items) => items.borrow().iter().any(|v| v.holds_tensor(d, budget)),
            Value::Dict(items) => items
                .borrow()
                .iter()
                .any(|(k, v)| k.holds_tensor(d, budget) || v.holds_tensor(d, budget)),
            Value::Object(o) => {
                let o = o.borrow();
                o.args.holds_tensor(d, budget)
                    || o.state.holds_tensor(d, budget)
                    || o.items
                        .iter()
                        .any(|(k, v)| k.holds_tensor(d, budget) || v.holds_tensor(d, budget))
                    || o.elements.iter().any(|v| v.holds_tensor(d, budget))
            }
            _ => false,
        }
    }
}

/// Nesting deeper than this is refused (no torch file comes close; it guards the recursion).
const MAX_DEPTH: usize = 128;

/// The most values one walk over the unpickled object visits. Containers shared through the
/// memo can make a small pickle a huge tree; a real checkpoint has a few thousand values.
const MAX_VISITS: usize = 1 << 21;

/// The pickle machine, for the opcodes torch.save emits (protocol 2, and 3–5 as met in
/// practice).
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    archive: &'a mut Archive,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], archive: &'a mut Archive) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            archive,
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self
                .byte()
                .map_err(|_| anyhow!("data.pkl: ends at byte {at} without a STOP opcode"))?;
            self.step(op)
                .with_context(|| format!("data.pkl: opcode {} at byte {at}", opcode_name(op)))?;
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

    fn string(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into()))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow");
        }
        self.stack
            .last()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK to close"))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn get(&self, key: u32) -> Result<Value> {
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
                self.take(n.into())?;
                self.push(Value::Opaque("bytes"));
            }
            b'B' => {
                let n = self.u32()?;
                self.take(n as usize)?;
                self.push(Value::Opaque("bytes"));
            }
            0x8e => {
                let n = self.u64()?;
                let n = self.usize_len(n)?;
                self.take(n)?;
                self.push(Value::Opaque("bytes"));
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
                let storage = persistent_storage(&pid)?;
                self.push(Value::Storage(Rc::new(storage)));
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
                match self.top()? {
                    Value::Object(o) => o.borrow_mut().state = state,
                    // An OrderedDict's attributes (a state dict's `_metadata`): not data.
                    _ if !state.holds_tensor(0, &mut MAX_VISITS.clone()) => {}
                    other => bail!("BUILD of {} with tensors in its state", other.describe()),
                }
            }
            _ => bail!("unsupported pickle opcode"),
        }
        Ok(())
    }

    /// LONG1 / LONG4: a little-endian two's-complement integer of `n` bytes.
    fn long(&mut self, n: usize) -> Result<Value> {
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

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(pairs),
            Value::Object(o) => o.borrow_mut().items.extend(pairs),
            other => bail!("SETITEMS on {}", other.describe()),
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().elements.extend(items),
            other => bail!("APPENDS on {}", other.describe()),
        }
        Ok(())
    }

    /// REDUCE: the functions torch pickles tensors and dicts with; anything else becomes an
    /// [`Object`].
    fn call(&mut self, callable: &Value, args: Value) -> Result<Value> {
        let Value::Global(name) = callable else {
            return Ok(object("<call>".into(), args));
        };
        let argv: &[Value] = match &args {
            Value::Tuple(items) => items,
            _ => &[],
        };
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
            // (storage, offset, size, stride, requires_grad, hooks[, metadata]); v3, for dtypes
            // without a storage class (float8), views untyped bytes and adds the dtype.
            "torch._utils._rebuild_tensor_v2"
            | "torch._utils._rebuild_tensor"
            | "torch._utils._rebuild_tensor_v3" => {
                let v3 = name.ends_with("_v3");
                let wanted = if v3 { 7 } else { 4 };
                if argv.len() < wanted {
                    bail!("{name} with {} arguments, expected {wanted}", argv.len());
                }
                let Value::Storage(storage) = &argv[0] else {
                    bail!("{name} of {}, expected a storage", argv[0].describe());
                };
                let kind = match &argv[wanted - 1] {
                    _ if !v3 => storage.kind,
                    Value::Global(dtype) => dtype_kind(dtype)
                        .ok_or_else(|| anyhow!("unsupported tensor dtype {dtype}"))?,
                    other => bail!("{name} with dtype {}", other.describe()),
                };
                let offset = argv[1].int("storage offset")?;
                let size = argv[2].ints("tensor size")?;
                let stride = argv[3].ints("tensor stride")?;
                let t = self.tensor(&storage.key, kind, offset, &size, &stride)?;
                Ok(Value::Tensor(Rc::new(t)))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match argv.first() {
                    Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                    Some(other) => bail!("{name} of {}, expected a tensor", other.describe()),
                    None => bail!("{name} without arguments"),
                }
            }
            // A tensor subclass, or a tensor with Python attributes: keep the tensor.
            "torch._tensor._rebuild_from_type_v2" => {
                if argv.len() < 3 {
                    bail!("{name} with {} arguments, expected 4", argv.len());
                }
                self.call(&argv[0], argv[2].clone())
            }
            // Protocol 0/1 instances: `_reconstructor(cls, base, state)`.
            "copyreg._reconstructor" => match argv.first() {
                Some(class @ Value::Global(_)) => Ok(new_object(class, Value::None)),
                _ => Ok(object(name.clone(), args)),
            },
            _ => Ok(object(name.clone(), args)),
        }
    }

    /// Rebuilds a tensor as a strided view of a storage, copied into memory of its own.
    /// `offset` and `stride` count elements of `kind`.
    fn tensor(
        &mut self,
        key: &str,
        kind: Kind,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor> {
        let bytes = self.archive.storage(key)?;
        let elt = kind.elt_size_in_bytes();
        if !bytes.len().is_multiple_of(elt) {
            bail!(
                "storage data/{key} has {} bytes, not a whole number of {kind:?} elements",
                bytes.len()
            );
        }
        let available = (bytes.len() / elt) as i64;
        if size.len() != stride.len() {
            bail!("tensor of size {size:?} with stride {stride:?}");
        }
        if offset < 0 || size.iter().chain(stride).any(|&x| x < 0) {
            bail!("tensor of size {size:?}, stride {stride:?} and offset {offset}");
        }
        let numel = size
            .iter()
            .try_fold(1i64, |n, &s| n.checked_mul(s))
            .ok_or_else(|| anyhow!("tensor of size {size:?} is too large"))?;
        if numel == 0 {
            return Ok(Tensor::f_empty(size, (kind, Device::Cpu))?);
        }
        // The last element the view reaches must lie inside the storage (checked before
        // allocating, so that a corrupt size cannot ask for more memory than the file holds).
        let last = size.iter().zip(stride).try_fold(offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
        if last.is_none_or(|last| last >= available) {
            bail!(
                "tensor of size {size:?}, stride {stride:?} and offset {offset} reaches past \
                 the {available} elements of storage data/{key}"
            );
        }
        let mut out = Tensor::f_empty(size, (kind, Device::Cpu))?;
        let start = offset as usize * elt;
        if is_row_major(size, stride) {
            // The common case, copied here rather than by libtorch's `copy_`, whose worker
            // threads only slow a plain memcpy down on a busy machine.
            let src = &bytes[start..start + numel as usize * elt];
            // SAFETY: `out` was just allocated, contiguous, with `numel` elements of `kind`:
            // exactly `src.len()` bytes, which cannot overlap `bytes`.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), out.data_ptr() as *mut u8, src.len());
            }
            return Ok(out);
        }
        // SAFETY: every element the view addresses, offset + Σ i_k·stride_k with
        // i_k < size_k, is at most `last`, checked above to lie inside `bytes`; the view lives
        // only until the copy below, while `bytes` is held.
        let view = unsafe {
            Tensor::f_from_blob(bytes.as_ptr().add(start), size, stride, kind, Device::Cpu)?
        };
        out.f_copy_(&view)?;
        Ok(out)
    }
}

/// Whether a view with these sizes and strides is dense in row-major order, so its elements
/// are one run of the storage (dimensions of size 1 may have any stride).
fn is_row_major(size: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1i64;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
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

fn object(class: Rc<str>, args: Value) -> Value {
    Value::Object(Rc::new(RefCell::new(Object {
        class,
        args,
        state: Value::None,
        items: Vec::new(),
        elements: Vec::new(),
    })))
}

/// NEWOBJ `cls.__new__(cls, *args)`: a dict for OrderedDict, else an [`Object`].
fn new_object(class: &Value, args: Value) -> Value {
    match class {
        Value::Global(name) if &**name == "collections.OrderedDict" => {
            Value::Dict(Default::default())
        }
        Value::Global(name) => object(name.clone(), args),
        _ => object("<new>".into(), args),
    }
}

/// BINPERSID: `('storage', torch.FloatStorage, '<key>', '<location>', numel)`.
fn persistent_storage(pid: &Value) -> Result<StorageRef> {
    let Value::Tuple(items) = pid else {
        bail!("persistent id is {}, expected a tuple", pid.describe());
    };
    match &items[..] {
        [Value::Str(tag), Value::Global(class), key, ..] if &**tag == "storage" => {
            let kind =
                storage_kind(class).ok_or_else(|| anyhow!("unsupported storage type {class}"))?;
            let key = key.str("storage key")?.to_string();
            Ok(StorageRef { key, kind })
        }
        _ => bail!("unsupported persistent id (expected ('storage', type, key, …))"),
    }
}

/// The element type of a storage class; an untyped storage is plain bytes.
fn storage_kind(class: &str) -> Option<Kind> {
    let name = class.strip_prefix("torch.")?;
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        "UntypedStorage" | "storage.UntypedStorage" => Kind::Uint8,
        _ => return None,
    })
}

/// The element type of a `torch.<dtype>` global, as `_rebuild_tensor_v3` names it.
fn dtype_kind(dtype: &str) -> Option<Kind> {
    Some(match dtype.strip_prefix("torch.")? {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "complex64" | "cfloat" => Kind::ComplexFloat,
        "complex128" | "cdouble" => Kind::ComplexDouble,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2" => Kind::Float8e5m2,
        "float8_e4m3fnuz" => Kind::Float8e4m3fnuz,
        "float8_e5m2fnuz" => Kind::Float8e5m2fnuz,
        _ => return None,
    })
}

/// A readable name for an opcode in error messages.
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

/// Turns the unpickled value into dotted names.
struct Flattener {
    tensors: Vec<(String, Tensor)>,
    scalars: BTreeMap<String, Scalar>,
    names: HashSet<String>,
    /// Values left to visit (see [`MAX_VISITS`]).
    budget: usize,
}

impl Flattener {
    fn new() -> Self {
        Flattener {
            tensors: Vec::new(),
            scalars: BTreeMap::new(),
            names: HashSet::new(),
            budget: MAX_VISITS,
        }
    }

    fn value(&mut self, name: &str, v: &Value, depth: usize) -> Result<()> {
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
            Value::Tensor(t) => {
                self.claim(name)?;
                // A tensor pickled twice (tied weights) keeps sharing its memory, as in torch.
                self.tensors.push((name.to_owned(), t.shallow_clone()));
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
            Value::Storage(s) => bail!(
                "{}: a bare storage (data/{}) outside any tensor; this reader loads tensors only",
                shown(name),
                s.key
            ),
            Value::Global(_) | Value::Opaque(_) => {}
        }
        Ok(())
    }

    fn items(&mut self, name: &str, items: &[(Value, Value)], depth: usize) -> Result<()> {
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

    fn elements(&mut self, name: &str, items: &[Value], depth: usize) -> Result<()> {
        for (i, v) in items.iter().enumerate() {
            self.value(&join(name, &i.to_string()), v, depth)?;
        }
        Ok(())
    }

    /// Passes over a value with no name to give it, unless a tensor would be lost with it.
    fn skip(&mut self, name: &str, v: &Value, what: &str) -> Result<()> {
        if v.holds_tensor(0, &mut self.budget) {
            bail!(
                "{}: {what} holds tensors that this reader cannot rebuild",
                shown(name)
            );
        }
        Ok(())
    }

    fn scalar(&mut self, name: &str, s: Scalar) -> Result<()> {
        self.claim(name)?;
        self.scalars.insert(name.to_owned(), s);
        Ok(())
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_owned()) {
            bail!("{}: two values flatten to this name", shown(name));
        }
        Ok(())
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn shown(name: &str) -> &str {
    if name.is_empty() {
        "<top level>"
    } else {
        name
    }
}
