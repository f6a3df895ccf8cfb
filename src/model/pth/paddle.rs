//! Reader of `paddle.save` files (`.pdparams`), for the PaddlePaddle reproduction's
//! checkpoints and Paddle's ImageNet weights, without Python.
//!
//! Such a file is a plain pickle (protocol 2–4, no zip around it) of a dict whose values are
//! numpy arrays, in one of two shapes, both read here:
//! - a flat state dict (`paddle.save(layer.state_dict())`) is `name → ndarray`, plus a
//!   `StructuredToParameterName@@` entry (structured name → Paddle's internal variable name),
//!   which is dropped: it is bookkeeping, not data;
//! - anything else, such as the reproduction's `{'backbone': …, 'classifier': …, 'epoch': 7}`,
//!   pickles each tensor as `builtins.tuple(((param_name, ndarray),))`, the pair that
//!   `paddle.load` turns back into one tensor; so does this reader.
//!
//! The arrays come through `numpy.core.multiarray._reconstruct` in the files of Paddle 2.x
//! (numpy 1) and `numpy._core.multiarray._reconstruct` in those of Paddle 3.x (numpy 2).
//! Protocol 2 pickles bytes as `_codecs.encode(text, 'latin1')` and builtins as
//! `__builtin__`, which are decoded too; numpy scalars (an epoch saved as `np.int64`) become
//! plain numbers.
//!
//! Names stay as the file has them (`bn1._mean`); [`PaddleFile::torch_tensors`] gives
//! torch's (`bn1.running_mean`), which is what agd's model is named after.

use super::flatten::{flatten, shown};
use super::unpickle::{Host, Object, Reduced, Resolver, Unpickler, Value, MAX_DEPTH};
use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// Paddle 2.x's map from structured names to internal parameter names: not data.
const STRUCTURED_NAMES: &str = "StructuredToParameterName@@";
/// What Paddle writes when it splits an array over 4 GB into slices (protocol 2 and 3).
const SPLIT_ARRAYS: &str = "UnpackBigParamInfor@@";

/// Whether `head` (a file's first bytes) is a pickle that neither torch format claims: a
/// `paddle.save` file. torch.save's files are zips (`PK`), and its legacy pickles open with
/// torch's magic number, so the three never meet.
pub fn is_paddle(head: &[u8]) -> bool {
    head.len() >= 2
        && head[0] == 0x80
        && (2..=5).contains(&head[1])
        && !super::archive::is_legacy(head)
}

/// The format of `paddle.save`.
#[derive(Debug)]
pub enum Paddle {}

/// Everything a `paddle.save` file held.
pub type PaddleFile = super::StateFile<Paddle>;

impl super::StateFile<Paddle> {
    /// Reads a `paddle.save` file. Errors name the file.
    pub fn load(path: &Path) -> Result<PaddleFile> {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::from_bytes(path, &bytes)
    }

    /// Reads the bytes of a `paddle.save` file read from `path` (which errors name).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<PaddleFile> {
        let shown_path = path.display();
        if !is_paddle(bytes) {
            bail!("{shown_path}: not a paddle.save file (not a pickle of protocol 2–5)");
        }
        let value = Unpickler::new(bytes, "pickle", &mut NumpyResolver)
            .run()
            .map_err(|e| anyhow!("{shown_path}: {e:#}"))?;
        let Value::Dict(_) = &value else {
            bail!(
                "{shown_path}: holds {}, expected a dict of arrays (a state dict or a \
                 checkpoint dict)",
                value.describe()
            );
        };
        tidy(&value, 0, &mut HashSet::new()).map_err(|e| anyhow!("{shown_path}: {e:#}"))?;
        let flat = flatten(&value, leaf).map_err(|e| anyhow!("{shown_path}: {e:#}"))?;
        Ok(PaddleFile::from_flat(flat))
    }

    /// The tensors under torch's names: Paddle's BatchNorm buffers `_mean` / `_variance`
    /// are torch's `running_mean` / `running_var`; every other name (torchvision's layout,
    /// which the reproduction and Paddle's model zoo keep) is the same.
    pub fn torch_tensors(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .map(|(n, t)| (torch_name(n), t.shallow_clone()))
            .collect()
    }
}

/// Paddle's name of a parameter → torch's.
pub fn torch_name(name: &str) -> String {
    for (paddle, torch) in [("_mean", "running_mean"), ("_variance", "running_var")] {
        if let Some(stem) = name.strip_suffix(paddle) {
            if stem.is_empty() || stem.ends_with('.') {
                return format!("{stem}{torch}");
            }
        }
    }
    name.to_owned()
}

/// A numpy array as the pickle builds it: `_reconstruct` makes it empty and BUILD fills it,
/// so it is shared (the memo may hold it in between).
#[derive(Clone)]
pub(super) struct Array(Rc<RefCell<Option<Tensor>>>);

impl Host for Array {
    fn describe(&self) -> String {
        "a numpy array".into()
    }
}

/// The flattener's leaf function: arrays become their tensors.
fn leaf(name: &str, a: &Array) -> Result<Tensor> {
    match &*a.0.borrow() {
        // One array pickled under two names stays one tensor, as numpy's memo gives it.
        Some(t) => Ok(t.shallow_clone()),
        None => bail!(
            "{}: a numpy array that the pickle never gave its data",
            shown(name)
        ),
    }
}

/// Turns `(param_name, array)` pairs into their array and drops Paddle's bookkeeping entries,
/// in place, in every dict and list. Each container is visited once, so loops end.
fn tidy(v: &Value<Array>, depth: usize, seen: &mut HashSet<usize>) -> Result<()> {
    if depth > MAX_DEPTH {
        // The flattener refuses it, naming where.
        return Ok(());
    }
    let children: Vec<Value<Array>> = match v {
        Value::Dict(d) => {
            if !seen.insert(Rc::as_ptr(d) as *const () as usize) {
                return Ok(());
            }
            let mut items = d.borrow_mut();
            if items.iter().any(|(k, _)| is_key(k, SPLIT_ARRAYS)) {
                bail!(
                    "{SPLIT_ARRAYS}: arrays split into slices (paddle.save with protocol 2 or 3 \
                     of a parameter over 4 GB) are not supported; re-save with protocol 4"
                );
            }
            items.retain(|(k, _)| !is_key(k, STRUCTURED_NAMES));
            for (_, value) in items.iter_mut() {
                unwrap_named(value);
            }
            items.iter().map(|(_, value)| value.clone()).collect()
        }
        Value::List(l) => {
            if !seen.insert(Rc::as_ptr(l) as *const () as usize) {
                return Ok(());
            }
            let mut items = l.borrow_mut();
            for value in items.iter_mut() {
                unwrap_named(value);
            }
            items.clone()
        }
        Value::Tuple(items) => items.to_vec(),
        _ => return Ok(()),
    };
    for child in &children {
        tidy(child, depth + 1, seen)?;
    }
    Ok(())
}

fn is_key(k: &Value<Array>, name: &str) -> bool {
    matches!(k, Value::Str(s) if &**s == name)
}

/// `(param_name, array)`, Paddle's pickled tensor, → the array.
fn unwrap_named(v: &mut Value<Array>) {
    if let Value::Tuple(items) = v {
        if let [Value::Str(_), array @ Value::Host(_)] = &items[..] {
            *v = array.clone();
        }
    }
}

/// numpy's part of unpickling: arrays, dtypes, scalars, and protocol 2's bytes.
struct NumpyResolver;

impl Resolver for NumpyResolver {
    type Host = Array;

    fn reduce(&mut self, name: &str, args: &Value<Array>) -> Result<Reduced<Array>> {
        let argv = args.tuple_items();
        Ok(match name {
            // `_reconstruct(ndarray, (0,), b'b')`: an empty array that BUILD fills in.
            "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => {
                Reduced::Value(Value::Host(Array(Rc::new(RefCell::new(None)))))
            }
            // `scalar(dtype, bytes)`: a numpy scalar such as `np.int64(5)`.
            "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" => {
                let [Value::Object(dtype), Value::Bytes(data)] = argv else {
                    bail!("{name} of {}, expected (dtype, bytes)", args.describe());
                };
                Reduced::Value(numpy_scalar(&Dtype::of(&dtype.borrow())?, data)?)
            }
            // How paddle.save pickles a tensor outside a flat state dict:
            // `tuple(((param_name, ndarray),))`, i.e. the pair itself.
            "builtins.tuple" | "__builtin__.tuple" => match argv {
                [Value::Tuple(items)] => Reduced::Value(Value::Tuple(items.clone())),
                [Value::List(items)] => Reduced::Value(Value::Tuple(items.borrow().clone().into())),
                [] => Reduced::Value(Value::Tuple(Rc::from(Vec::new()))),
                _ => bail!("{name} of {}", args.describe()),
            },
            // How it pickles a bare DenseTensor: `eval('data', {'data': ndarray})`. Only
            // that form is taken: nothing is evaluated.
            "builtins.eval" | "__builtin__.eval" => match argv {
                [Value::Str(code), Value::Dict(scope)] if &**code == "data" => {
                    let scope = scope.borrow();
                    match scope.iter().find(|(k, _)| is_key(k, "data")) {
                        Some((_, array @ Value::Host(_))) => Reduced::Value(array.clone()),
                        _ => bail!("{name}('data', …) without an array under 'data'"),
                    }
                }
                _ => bail!(
                    "{name} of {}: only paddle.save's eval('data', {{'data': array}}) is read",
                    args.describe()
                ),
            },
            // Protocol 2 has no bytes opcode: `_codecs.encode(text, 'latin1')`.
            "_codecs.encode" => match argv {
                [Value::Str(text), Value::Str(codec)]
                    if matches!(&**codec, "latin1" | "latin-1" | "iso-8859-1") =>
                {
                    let bytes = text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)))
                        .collect::<Result<Vec<u8>, _>>()
                        .map_err(|_| anyhow!("{name}: text outside latin-1"))?;
                    Reduced::Value(Value::Bytes(bytes.into()))
                }
                [Value::Str(_)] => bail!("{name} without a codec"),
                _ => Reduced::Unknown,
            },
            _ => Reduced::Unknown,
        })
    }

    /// `ndarray.__setstate__((version, shape, dtype, is_fortran, data))`.
    fn build(&mut self, target: &Array, state: &Value<Array>) -> Result<bool> {
        let items = state.tuple_items();
        let (shape, dtype, fortran, data) = match items {
            [_, shape, dtype, fortran, data] | [shape, dtype, fortran, data] => {
                (shape, dtype, fortran, data)
            }
            _ => bail!(
                "numpy array state is {} of {} items, expected (version, shape, dtype, \
                 is_fortran, data)",
                state.describe(),
                items.len()
            ),
        };
        let shape = shape.ints("array shape")?;
        let Value::Object(dtype) = dtype else {
            bail!(
                "array dtype is {}, expected a numpy.dtype",
                dtype.describe()
            );
        };
        let dtype = Dtype::of(&dtype.borrow())?;
        let Value::Bytes(data) = data else {
            bail!(
                "array of dtype {} holds {} instead of raw bytes (an array of Python objects?); \
                 this reader loads numeric arrays only",
                dtype.name,
                data.describe()
            );
        };
        let fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
        let tensor = dtype.tensor(&shape, fortran, data)?;
        *target.0.borrow_mut() = Some(tensor);
        Ok(true)
    }
}

/// A numpy dtype as pickled: `dtype('f4', False, True)` with the state
/// `(3, '<', None, None, None, -1, -1, 0)`, whose second item is the byte order.
struct Dtype {
    /// `f4`, `i8`, … as numpy names it.
    name: String,
    kind: Kind,
    big_endian: bool,
}

impl Dtype {
    fn of(o: &Object<Array>) -> Result<Dtype> {
        if !o.class.ends_with("numpy.dtype") {
            bail!(
                "array dtype is a {} object, expected a numpy.dtype",
                o.class
            );
        }
        let name = match o.args.tuple_items().first() {
            Some(Value::Str(s)) => s.to_string(),
            _ => bail!("numpy.dtype of {}, expected a type code", o.args.describe()),
        };
        let order = match o.state.tuple_items().get(1) {
            Some(Value::Str(s)) => s.to_string(),
            _ => "|".to_owned(),
        };
        let kind = match name.as_str() {
            "f2" => Kind::Half,
            "f4" => Kind::Float,
            "f8" => Kind::Double,
            "i1" => Kind::Int8,
            "i2" => Kind::Int16,
            "i4" => Kind::Int,
            "i8" => Kind::Int64,
            "u1" => Kind::Uint8,
            "b1" => Kind::Bool,
            "c8" => Kind::ComplexFloat,
            "c16" => Kind::ComplexDouble,
            "u2" => bail!(
                "array of dtype uint16, which Paddle writes for bfloat16 tensors and torch \
                 cannot hold; re-save the tensor as float32"
            ),
            other => bail!("unsupported numpy dtype '{other}'"),
        };
        let big_endian = match order.as_str() {
            "<" | "|" | "=" => false,
            ">" => true,
            other => bail!("numpy dtype '{name}' with byte order '{other}'"),
        };
        Ok(Dtype {
            name,
            kind,
            big_endian,
        })
    }

    /// The array's bytes in the machine's (little-endian) order.
    fn little_endian<'a>(&self, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let elt = self.kind.elt_size_in_bytes();
        if !self.big_endian || elt == 1 {
            return data.into();
        }
        // A complex number swaps its two halves' bytes, not the pair's.
        let unit = if matches!(self.kind, Kind::ComplexFloat | Kind::ComplexDouble) {
            elt / 2
        } else {
            elt
        };
        let mut out = data.to_vec();
        for chunk in out.chunks_mut(unit) {
            chunk.reverse();
        }
        out.into()
    }

    /// A contiguous tensor of `shape` from the array's raw bytes.
    fn tensor(&self, shape: &[i64], fortran: bool, data: &[u8]) -> Result<Tensor> {
        if shape.iter().any(|&d| d < 0) {
            bail!("array of shape {shape:?}");
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .ok_or_else(|| anyhow!("array of shape {shape:?} is too large"))?;
        let want = numel.checked_mul(self.kind.elt_size_in_bytes());
        if want != Some(data.len()) {
            bail!(
                "array of shape {shape:?} and dtype {} holds {} bytes, expected {}",
                self.name,
                data.len(),
                want.map_or_else(|| "more than fit in memory".to_owned(), |w| w.to_string())
            );
        }
        let data = self.little_endian(data);
        if !fortran || shape.len() < 2 {
            return Ok(Tensor::f_from_data_size(&data, shape, self.kind)?);
        }
        // Column-major: the bytes are the transpose's, in row-major order.
        let reversed: Vec<i64> = shape.iter().rev().copied().collect();
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        Ok(Tensor::f_from_data_size(&data, &reversed, self.kind)?
            .f_permute(&dims)?
            .f_contiguous()?)
    }
}

/// A numpy scalar as a plain number.
fn numpy_scalar(dtype: &Dtype, data: &[u8]) -> Result<Value<Array>> {
    let t = dtype.tensor(&[], false, data)?;
    Ok(match dtype.kind {
        Kind::Bool => Value::Bool(t.f_int64_value(&[])? != 0),
        Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 | Kind::Uint8 => {
            Value::Int(t.f_int64_value(&[])?)
        }
        Kind::Half | Kind::Float | Kind::Double => Value::Float(t.f_double_value(&[])?),
        _ => bail!("numpy scalar of dtype {}", dtype.name),
    })
}
