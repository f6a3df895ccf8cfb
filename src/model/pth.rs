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
use std::io::{BufReader, Read};
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
    None,
}

impl TorchFile {
    /// Reads a torch.save file. Every tensor comes back on the CPU, contiguous and owning its
    /// memory; views of one storage are rebuilt as separate tensors with the right values.
    ///
    /// Lists and tuples flatten with their indices as name parts (`param_groups.0.lr`), objects
    /// of unknown classes through their pickled attributes (`args.lr` for an
    /// `argparse.Namespace`). What cannot be named (a `torch.device`, a `torch.Size`) is skipped,
    /// unless it holds a tensor: then loading fails rather than losing it.
    pub fn load(path: &Path) -> Result<TorchFile> {
        let shown = path.display();
        let mut file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
        let len = file
            .metadata()
            .with_context(|| format!("{shown}: cannot read its size"))?
            .len();
        let mut head = Vec::with_capacity(64);
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .with_context(|| format!("{shown}: cannot read"))?;
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
        // Reopen rather than seek back, so the zip reader owns a fresh, buffered handle.
        let file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
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
        let mut flat = Flattener::default();
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

/// A storage named by a persistent id: the entry `data/<key>`, read as elements of `kind`.
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
    fn holds_tensor(&self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            // Deeper than anything torch writes: assume the worst, so nothing is dropped.
            return true;
        }
        let d = depth + 1;
        match self {
            Value::Tensor(_) | Value::Storage(_) => true,
            Value::Tuple(items) => items.iter().any(|v| v.holds_tensor(d)),
            Value::List(items) => items.borrow().iter().any(|v| v.holds_tensor(d)),
            Value::Dict(items) => items
                .borrow()
                .iter()
                .any(|(k, v)| k.holds_tensor(d) || v.holds_tensor(d)),
            Value::Object(o) => {
                let o = o.borrow();
                o.args.holds_tensor(d)
                    || o.state.holds_tensor(d)
                    || o.items
                        .iter()
                        .any(|(k, v)| k.holds_tensor(d) || v.holds_tensor(d))
                    || o.elements.iter().any(|v| v.holds_tensor(d))
            }
            _ => false,
        }
    }
}

/// Nesting deeper than this is refused (no torch file comes close; it guards the recursion).
const MAX_DEPTH: usize = 128;

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
            let op = self.byte()?;
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
                    _ if !state.holds_tensor(0) => {}
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
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                if argv.len() < 4 {
                    bail!("{name} with {} arguments, expected at least 4", argv.len());
                }
                let Value::Storage(storage) = &argv[0] else {
                    bail!("{name} of {}, expected a storage", argv[0].describe());
                };
                let offset = argv[1].int("storage offset")?;
                let size = argv[2].ints("tensor size")?;
                let stride = argv[3].ints("tensor stride")?;
                let t = self.tensor(storage, offset, &size, &stride)?;
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
    fn tensor(
        &mut self,
        storage: &StorageRef,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor> {
        let bytes = self.archive.storage(&storage.key)?;
        let kind = storage.kind;
        let elt = kind.elt_size_in_bytes();
        let key = &storage.key;
        if bytes.len() % elt != 0 {
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
        let mut out = Tensor::f_empty(size, (kind, Device::Cpu))?;
        if numel == 0 {
            return Ok(out);
        }
        // The last element the view reaches must lie inside the storage.
        let last = size.iter().zip(stride).try_fold(offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
        if !last.is_some_and(|last| last < available) {
            bail!(
                "tensor of size {size:?}, stride {stride:?} and offset {offset} reaches past \
                 the {available} elements of storage data/{key}"
            );
        }
        // SAFETY: every element the view addresses, offset + Σ i_k·stride_k with
        // i_k < size_k, is at most `last`, checked above to lie inside `bytes`; the view lives
        // only until the copy below, while `bytes` is held.
        let view = unsafe {
            Tensor::f_from_blob(
                bytes.as_ptr().add(offset as usize * elt),
                size,
                stride,
                kind,
                Device::Cpu,
            )?
        };
        out.f_copy_(&view)?;
        Ok(out)
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if items.len() % 2 != 0 {
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

/// A readable name for an opcode in error messages.
fn opcode_name(op: u8) -> String {
    let name = match op {
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
#[derive(Default)]
struct Flattener {
    tensors: Vec<(String, Tensor)>,
    scalars: BTreeMap<String, Scalar>,
    names: HashSet<String>,
}

impl Flattener {
    fn value(&mut self, name: &str, v: &Value, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("{name}: nested more than {MAX_DEPTH} levels deep");
        }
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
                match &o.state {
                    Value::Dict(attrs) => self.items(name, &attrs.borrow(), d)?,
                    // `(dict, slots)` from classes with __slots__.
                    Value::Tuple(parts) if parts.len() == 2 => {
                        for part in parts.iter() {
                            match part {
                                Value::Dict(attrs) => self.items(name, &attrs.borrow(), d)?,
                                other => self.skip(name, other, &o.class)?,
                            }
                        }
                    }
                    other => self.skip(name, other, &o.class)?,
                }
                self.items(name, &o.items, d)?;
                self.elements(name, &o.elements, d)?;
                self.skip(name, &o.args, &o.class)?;
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
        if v.holds_tensor(0) {
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
