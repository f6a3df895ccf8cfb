//! torch's part of unpickling: the [`Resolver`] that turns persistent ids into storages of the
//! [`Archive`] and torch's `_rebuild_*` functions into tensors, and the leaf function that
//! keeps those tensors when flattening.

use super::archive::Archive;
use super::flatten::shown;
use super::unpickle::{Host, Reduced, Resolver, Value};
use anyhow::{anyhow, bail, Result};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// A storage named by a persistent id: the entry `data/<key>`, of elements of `kind`, the type
/// its class names (bytes for an untyped storage, which `_rebuild_tensor_v3` gives a dtype).
pub(super) struct StorageRef {
    key: String,
    kind: Kind,
    /// Its elements, as the persistent id gives them (absent in very old files).
    numel: Option<i64>,
}

/// What torch adds to a pickle's values.
#[derive(Clone)]
pub(super) enum Torch {
    Storage(Rc<StorageRef>),
    /// Shared, so that one tensor pickled under two names (tied weights) stays one tensor.
    Tensor(Rc<Tensor>),
}

impl Host for Torch {
    fn describe(&self) -> String {
        match self {
            Torch::Storage(_) => "a storage".into(),
            Torch::Tensor(_) => "a tensor".into(),
        }
    }
}

/// The flattener's leaf function: tensors are kept; a storage outside any tensor is refused.
pub(super) fn leaf(name: &str, v: &Torch) -> Result<Tensor> {
    match v {
        // A tensor pickled twice (tied weights) keeps sharing its memory, as in torch.
        Torch::Tensor(t) => Ok(t.shallow_clone()),
        Torch::Storage(s) => bail!(
            "{}: a bare storage (data/{}) outside any tensor; this reader loads tensors only",
            shown(name),
            s.key
        ),
    }
}

/// Rebuilds tensors from the storages of `archive`.
pub(super) struct TorchResolver<'a> {
    pub(super) archive: &'a mut Archive,
}

impl Resolver for TorchResolver<'_> {
    type Host = Torch;

    /// `('storage', torch.FloatStorage, '<key>', '<location>', numel)`.
    fn persistent_load(&mut self, pid: &Value<Torch>) -> Result<Value<Torch>> {
        let Value::Tuple(items) = pid else {
            bail!("persistent id is {}, expected a tuple", pid.describe());
        };
        match &items[..] {
            [Value::Str(tag), Value::Global(class), key, rest @ ..] if &**tag == "storage" => {
                let kind = storage_kind(class)
                    .ok_or_else(|| anyhow!("unsupported storage type {class}"))?;
                let key = key.str("storage key")?.to_string();
                let numel = match rest.get(1) {
                    Some(n) => Some(n.int("storage size")?),
                    None => None,
                };
                Ok(Value::Host(Torch::Storage(Rc::new(StorageRef {
                    key,
                    kind,
                    numel,
                }))))
            }
            _ => bail!("unsupported persistent id (expected ('storage', type, key, …))"),
        }
    }

    /// The functions torch pickles tensors with.
    fn reduce(&mut self, name: &str, args: &Value<Torch>) -> Result<Reduced<Torch>> {
        let argv = args.tuple_items();
        match name {
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
                let Value::Host(Torch::Storage(storage)) = &argv[0] else {
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
                let t = self.tensor(storage, kind, offset, &size, &stride)?;
                Ok(Reduced::Value(Value::Host(Torch::Tensor(Rc::new(t)))))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match argv.first() {
                    Some(t @ Value::Host(Torch::Tensor(_))) => Ok(Reduced::Value(t.clone())),
                    Some(other) => bail!("{name} of {}, expected a tensor", other.describe()),
                    None => bail!("{name} without arguments"),
                }
            }
            // A tensor subclass, or a tensor with Python attributes: keep the tensor.
            "torch._tensor._rebuild_from_type_v2" => {
                if argv.len() < 3 {
                    bail!("{name} with {} arguments, expected 4", argv.len());
                }
                Ok(Reduced::Call(argv[0].clone(), argv[2].clone()))
            }
            _ => Ok(Reduced::Unknown),
        }
    }
}

impl TorchResolver<'_> {
    /// Rebuilds a tensor as a strided view of a storage, copied into memory of its own.
    /// `offset` and `stride` count elements of `kind`.
    ///
    /// Everything is checked against the sizes the file declares before the storage is
    /// inflated: the zip entry's size against the pickle's count of elements, and the view
    /// against the storage. A 1 MB file can declare a storage that inflates to gigabytes;
    /// one whose declarations disagree is refused without inflating it.
    fn tensor(
        &mut self,
        storage: &StorageRef,
        kind: Kind,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor> {
        let key = &storage.key;
        if size.len() != stride.len() {
            bail!(
                "tensor of size {size:?} with stride {stride:?}: one stride per dimension expected"
            );
        }
        if offset < 0 || size.iter().chain(stride).any(|&x| x < 0) {
            bail!(
                "tensor of size {size:?}, stride {stride:?} and offset {offset}: sizes, strides \
                 and offsets cannot be negative"
            );
        }
        let declared = self.archive.declared_size(key)?;
        if let Some(numel) = storage.numel {
            let bytes = numel.checked_mul(storage.kind.elt_size_in_bytes() as i64);
            if bytes != i64::try_from(declared).ok() {
                bail!(
                    "storage data/{key} holds {declared} bytes in the archive, but the pickle \
                     says {numel} {:?} elements: a corrupt or tampered file",
                    storage.kind
                );
            }
        }
        let elt = kind.elt_size_in_bytes();
        if !(declared as usize).is_multiple_of(elt) {
            bail!(
                "storage data/{key} has {declared} bytes, not a whole number of {kind:?} elements"
            );
        }
        let available = (declared / elt as u64) as i64;
        let numel = size
            .iter()
            .try_fold(1i64, |n, &s| n.checked_mul(s))
            .ok_or_else(|| anyhow!("tensor of size {size:?} is too large"))?;
        if numel == 0 {
            return Ok(Tensor::f_empty(size, (kind, Device::Cpu))?);
        }
        // The last element the view reaches must lie inside the storage.
        let last = size.iter().zip(stride).try_fold(offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
        if last.is_none_or(|last| last >= available) {
            bail!(
                "tensor of size {size:?}, stride {stride:?} and offset {offset} reaches past \
                 the {available} elements of storage data/{key}"
            );
        }
        let bytes = self.archive.storage(key)?;
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
