//! Readers of torch.save files (zip + pickle), for the reference checkpoints and ImageNet
//! weights, and of paddle.save files (a bare pickle of numpy arrays), for the PaddlePaddle
//! reproduction's.
//!
//! libtorch's own loader behind tch (`Tensor::loadz_multi`, `VarStore::load`) reads only flat
//! dicts of tensors, but the reference checkpoints nest two state dicts next to an epoch number.
//! So this module reads the zip archive that `torch.save` writes (PyTorch ≥ 1.6) itself: it runs
//! the subset of the pickle machine that torch uses, rebuilds the tensors from the archive's
//! storages, and flattens nested containers into dotted names. No Python is involved.
//!
//! Maintained crates were weighed and do not fit: candle-core's `pickle` reads only a flat
//! state dict (or one key of the top-level dict), skips with a message on stderr what it cannot
//! read, and checks neither the byte order nor the legacy format; serde-pickle has no
//! persistent ids, which is how torch refers to storages.
//!
//! The parts (only `torch` knows torch; `unpickle` and `flatten` serve any pickle):
//! - `archive`: the zip container and its storages;
//! - `unpickle`: a pickle machine with no torch in it, which asks a resolver about the
//!   globals and persistent ids of the format at hand (its documentation says how a numpy
//!   reader, for Paddle's `.pdparams`, plugs in);
//! - `torch`: that resolver for torch.save (storages and `_rebuild_*` functions → tensors);
//! - `flatten`: nested containers → dotted names and scalars;
//! - `paddle`: the resolver for paddle.save's numpy arrays, and [`PaddleFile`].
//!
//! The formats are told apart by content, not by extension: safetensors by its JSON header
//! (in `checkpoint`), torch.save by its zip, its legacy format by torch's magic number, and
//! paddle.save as any other pickle ([`is_paddle`]).

mod archive;
pub(crate) mod flatten;
mod paddle;
mod torch;
pub(crate) mod unpickle;

pub use paddle::{is_paddle, torch_name, PaddleFile};

/// Whether `head` (a file's first bytes) opens a torch.save file: a zip archive, or the
/// legacy format (which [`TorchFile::load`] refuses with the command that converts it).
pub fn is_torch(head: &[u8]) -> bool {
    head.starts_with(archive::ZIP_MAGIC) || archive::is_legacy(head)
}

use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use tch::Tensor;

/// Everything a state file held, flattened: nested dicts become dotted names. One type for
/// both formats agd reads; `F` says which it was read from ([`TorchFile`], [`PaddleFile`]),
/// each with its own `load`.
#[derive(Debug)]
pub struct StateFile<F> {
    /// Tensors by dotted name, in file order, named as in the file:
    /// `backbone.base.conv1.weight`, `classifier.W`, `backbone.base.bn1._mean`, …
    pub tensors: Vec<(String, Tensor)>,
    /// Integer / float / bool / string leaves by dotted name (`epoch` → 80).
    pub scalars: BTreeMap<String, Scalar>,
    format: PhantomData<F>,
}

/// The format of `torch.save`.
#[derive(Debug)]
pub enum Torch {}

/// Everything a torch.save file held.
pub type TorchFile = StateFile<Torch>;

impl<F> StateFile<F> {
    fn from_flat(flat: flatten::Flat<Tensor>) -> Self {
        Self {
            tensors: flat.leaves,
            scalars: flat.scalars,
            format: PhantomData,
        }
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

/// A leaf of the pickled object that is not a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Python's `None` (an unset option, say).
    None,
    /// A value this reader keeps only as what it is (`an integer wider than 64 bits`).
    Opaque(&'static str),
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
        let mut archive = archive::Archive::open(path)?;
        let value = archive
            .pickle()
            .and_then(|pickle| {
                let mut resolver = torch::TorchResolver {
                    archive: &mut archive,
                };
                unpickle::Unpickler::new(&pickle, "data.pkl", &mut resolver).run()
            })
            .map_err(|e| anyhow!("{shown}: {e:#}"))?;
        let flat = flatten::flatten(&value, torch::leaf).map_err(|e| anyhow!("{shown}: {e:#}"))?;
        Ok(TorchFile::from_flat(flat))
    }
}
