//! Checkpoints: `<logs-dir>/checkpoint.safetensors`, tensors named as the reference's state
//! dicts (`backbone.base.conv1.weight`, `backbone.bn.running_mean`, `classifier.W`), plus
//! the optimiser state, with the model's shape, the finished epoch and the run's arguments
//! as metadata. The reference's `checkpoint.pth.tar` and the PaddlePaddle reproduction's
//! `checkpoint.pdparams` are read too, without Python.

use super::pth::{PaddleFile, TorchFile};
use super::{Depth, ModelConfig, Pooling, ReidModel};
use crate::bad_setting;
use crate::error::{AboutExt, Setting};
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// File name of the latest checkpoint in a logs folder.
pub const LATEST: &str = "checkpoint.safetensors";
/// The reference's file name, accepted wherever a logs folder is given.
pub const REFERENCE: &str = "checkpoint.pth.tar";
/// The PaddlePaddle reproduction's file name, accepted wherever a logs folder is given.
pub const PADDLE: &str = "checkpoint.pdparams";

/// A tensor's bytes in the form safetensors writes.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store a {other:?} tensor in safetensors"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => bail!("unsupported safetensors dtype {other:?}"),
    })
}

fn to_bytes(t: &Tensor) -> Result<Bytes> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind())?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, numel);
    Ok(Bytes {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

fn from_view(view: &TensorView) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(
        view.data(),
        &shape,
        kind_of(view.dtype())?,
    )?)
}

/// `tensors` and `metadata` serialised as safetensors.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes = tensors
        .iter()
        .map(|(n, t)| to_bytes(t).map(|b| (n.clone(), b)))
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    Ok(safetensors::serialize(
        bytes.iter().map(|(n, b)| (n.as_str(), b)),
        Some(meta),
    )?)
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let data = safetensors_bytes(tensors, metadata)
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    crate::io::write_atomic(path, &data)
}

/// safetensors files start with an 8-byte header length and a JSON header.
fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

/// The formats a checkpoint or weights file may come in.
enum Format {
    Safetensors,
    /// torch.save's zip (or its legacy pickle, which its reader refuses by name).
    Torch,
    /// paddle.save's bare pickle.
    Paddle,
}

/// The format of a file, from its content alone: a checkpoint renamed, or Paddle weights
/// saved as `.pth`, still load.
fn format_of(path: &Path, bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        bail!("{}: empty file (0 bytes), not a checkpoint", path.display());
    }
    if is_safetensors(bytes) {
        Ok(Format::Safetensors)
    } else if super::pth::is_torch(bytes) {
        Ok(Format::Torch)
    } else if super::pth::is_paddle(bytes) {
        Ok(Format::Paddle)
    } else {
        bail!(
            "{}: neither safetensors, torch.save nor paddle.save ({} bytes of something \
             else), not a checkpoint",
            path.display(),
            bytes.len()
        )
    }
}

/// What a file is, from its first bytes, so that a wrong file is named for what it is
/// rather than for the first thing a reader failed to find in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Empty,
    Safetensors,
    /// A zip archive (torch.save since PyTorch 1.6) or a pickle (legacy torch.save,
    /// paddle.save).
    TorchSave,
    /// Neither of the formats agd reads.
    Other,
}

impl FileKind {
    pub fn of(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            FileKind::Empty
        } else if is_safetensors(bytes) {
            FileKind::Safetensors
        } else if super::pth::is_torch(bytes) || super::pth::is_paddle(bytes) {
            FileKind::TorchSave
        } else {
            FileKind::Other
        }
    }
}

/// The `format` metadata of feature files (`agd evaluate --save-features`).
pub const FEATURES_FORMAT: &str = "agd-features";
/// The `format` metadata of agd's checkpoints.
pub const CHECKPOINT_FORMAT: &str = "agd-reid";

/// Tensors and metadata of safetensors bytes read from `path`.
pub fn parse_safetensors(
    path: &Path,
    bytes: &[u8],
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| from_view(&v).map(|t| (n, t)))
        .collect::<Result<HashMap<_, _>>>()
        .with_context(|| format!("{}: unreadable tensor", path.display()))?;
    Ok((tensors, metadata))
}

/// Reads a safetensors file: its tensors by name and its metadata.
pub fn read_safetensors(
    path: &Path,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_safetensors(path, &bytes)
}

/// The epoch a safetensors checkpoint's metadata records, read from its header alone
/// (a few KB, not the 100 MB of weights); None when the file is not one of agd's.
pub fn recorded_epoch(path: &Path) -> Option<usize> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header["__metadata__"]["epoch"].as_str()?.parse().ok()
}

/// The most epochs a checkpoint may say it ran: the reference's are 90 at most.
const MAX_EPOCHS: i64 = 1_000_000;

/// The `epoch` a torch or paddle checkpoint saved (`None` without one), refused when it is
/// not a number of epochs: read as 0, a resumed run would start over without a word.
fn saved_epoch(path: &Path, saved: Option<&crate::model::pth::Scalar>) -> Result<Option<i64>> {
    use crate::model::pth::Scalar;
    let shown = match saved {
        None => return Ok(None),
        Some(Scalar::Int(e)) if (0..=MAX_EPOCHS).contains(e) => return Ok(Some(*e)),
        Some(Scalar::Int(e)) => e.to_string(),
        Some(Scalar::Str(s)) => format!("{s:?}"),
        Some(Scalar::Float(f)) => f.to_string(),
        Some(Scalar::Bool(b)) => if *b { "True" } else { "False" }.to_string(),
        Some(Scalar::None) => "None".to_string(),
        Some(Scalar::Opaque(what)) => what.to_string(),
    };
    bail!(
        "{}: its `epoch` is {shown}, not a number of epochs (a whole number from 0 to {MAX_EPOCHS})",
        path.display()
    )
}

/// A loaded checkpoint, whichever format it came in.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    /// Epochs finished when it was written.
    pub epoch: usize,
    pub metadata: BTreeMap<String, String>,
}

/// The checkpoint that `setting` (a checkpoint to resume, the previous model, the
/// teacher, …) names: a file, or a logs folder standing for its latest checkpoint (agd's,
/// else the reference's, else the Paddle reproduction's).
pub fn resolve(path: &Path, setting: Setting) -> Result<PathBuf> {
    if path.is_dir() {
        for name in [LATEST, REFERENCE, PADDLE] {
            let candidate = path.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        bad_setting!(
            setting,
            path.display(),
            "folder holds no {LATEST}, {REFERENCE} or {PADDLE}"
        );
    }
    if !path.is_file() {
        bad_setting!(setting, path.display(), "no such checkpoint file or folder");
    }
    Ok(path.to_path_buf())
}

impl Checkpoint {
    /// Loads a checkpoint file: safetensors, a torch.save file such as the reference's, or a
    /// paddle.save file such as the Paddle reproduction's.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        match format_of(path, &bytes)? {
            Format::Safetensors => {}
            Format::Torch => {
                drop(bytes);
                let file = TorchFile::load(path)?;
                let epoch = saved_epoch(path, file.scalars.get("epoch"))?;
                return Ok(Self::reference(path, epoch, file.tensors));
            }
            Format::Paddle => {
                let file = PaddleFile::from_bytes(path, &bytes)?;
                drop(bytes);
                let epoch = saved_epoch(path, file.scalars.get("epoch"))?;
                return Ok(Self::reference(path, epoch, file.torch_tensors()));
            }
        }
        let (tensors, metadata) = parse_safetensors(path, &bytes)?;
        if metadata.get("format").map(String::as_str) == Some(FEATURES_FORMAT)
            || tensors.contains_key("query_features")
        {
            bail!(
                "{}: a feature file (query and gallery features, as evaluation writes them), \
                 not a model checkpoint",
                path.display()
            );
        }
        let epoch = metadata
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .with_context(|| format!("{}: no `epoch` in its metadata", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            epoch,
            metadata,
        })
    }

    /// The reference's `{backbone, classifier, epoch}` (the Paddle reproduction's too, its
    /// names already torch's); its `epoch` is the next one to run, so one fewer is finished.
    fn reference(path: &Path, saved_epoch: Option<i64>, tensors: Vec<(String, Tensor)>) -> Self {
        let epoch = saved_epoch.map(|e| (e - 1).max(0) as usize).unwrap_or(0);
        Self {
            path: path.to_path_buf(),
            tensors: tensors.into_iter().collect(),
            epoch,
            metadata: BTreeMap::new(),
        }
    }

    /// The model shape this checkpoint holds, as far as its tensors tell: classes and
    /// embedding from `classifier.W`, depth from the tensor names.
    pub fn classes(&self) -> Result<i64> {
        let w = self.tensors.get("classifier.W").with_context(|| {
            format!(
                "{}: no classifier.W (not a ReID checkpoint)",
                self.path.display()
            )
        })?;
        Ok(w.size()[0])
    }

    /// Last stride and pooling as the checkpoint's metadata records them (agd's do; the
    /// reference's and the Paddle reproduction's files do not).
    pub fn recorded_stride_and_pooling(&self) -> (Option<i64>, Option<Pooling>) {
        let stride = self
            .metadata
            .get("last_stride")
            .and_then(|s| s.parse().ok());
        let pooling = self
            .metadata
            .get("last_pooling")
            .and_then(|p| Pooling::from_name(p));
        (stride, pooling)
    }

    pub fn depth(&self) -> Option<Depth> {
        if let Some(d) = self.metadata.get("depth").and_then(|d| d.parse().ok()) {
            return Depth::from_number(d);
        }
        let has_conv3 = self
            .tensors
            .contains_key("backbone.base.layer1.0.conv3.weight");
        self.tensors
            .contains_key("backbone.base.conv1.weight")
            .then_some(if has_conv3 { Depth::R50 } else { Depth::R34 })
    }
}

/// Model metadata written into every checkpoint.
pub fn model_metadata(config: &ModelConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".into(), CHECKPOINT_FORMAT.into()),
        ("depth".into(), config.depth.number().to_string()),
        ("classes".into(), config.classes.to_string()),
        ("embedding".into(), config.embedding.to_string()),
        ("last_stride".into(), config.last_stride.to_string()),
        ("last_pooling".into(), config.pooling.name().into()),
    ])
}

impl ReidModel {
    /// Copies the checkpoint's model tensors into this model. Every tensor of the model
    /// must be present with its shape, except BatchNorm counters; anything else is an
    /// error naming the tensor and both shapes.
    pub fn load_checkpoint(&mut self, ck: &Checkpoint) -> Result<()> {
        // The model's values are what a caller asked for: a mismatch names the setting.
        if let Some(depth) = ck.depth() {
            if depth != self.config.depth {
                bad_setting!(
                    Setting::Depth,
                    self.config.depth.number(),
                    "{}: the checkpoint is a ResNet-{}, the model a ResNet-{}",
                    ck.path.display(),
                    depth.number(),
                    self.config.depth.number()
                );
            }
        }
        let flags = model_metadata(&self.config);
        for (key, what, setting) in [
            ("last_stride", "last stride", Setting::LastStride),
            ("last_pooling", "pooling", Setting::LastPooling),
        ] {
            match ck.metadata.get(key) {
                Some(saved) if *saved != flags[key] => bad_setting!(
                    setting,
                    &flags[key],
                    "{}: the checkpoint was trained with {what} {saved}",
                    ck.path.display()
                ),
                _ => {}
            }
        }
        let classes = ck.classes()?;
        if classes != self.config.classes {
            bail!(
                "{}: checkpoint has {classes} classes, the model {}",
                ck.path.display(),
                self.config.classes
            );
        }
        tch::no_grad(|| -> Result<()> {
            for e in self.params.entries() {
                let Some(src) = ck.tensors.get(&e.name) else {
                    if e.name.ends_with("num_batches_tracked") {
                        continue;
                    }
                    bail!("{}: missing tensor {}", ck.path.display(), e.name);
                };
                if src.size() != e.tensor.size() {
                    let hint = if e.name == "backbone.bn.weight" {
                        " (the embedding width)"
                    } else {
                        ""
                    };
                    bail!(
                        "{}: {} has shape {:?}, the model expects {:?}{hint}",
                        ck.path.display(),
                        e.name,
                        src.size(),
                        e.tensor.size()
                    );
                }
                e.tensor
                    .shallow_clone()
                    .copy_(&src.to_kind(e.tensor.kind()));
            }
            Ok(())
        })
    }

    /// The model's tensors with their checkpoint names, in module order.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.tensor.shallow_clone()))
            .collect()
    }
}

/// Tensors of a flat state dict file (safetensors, torch.save or paddle.save), by name; a
/// Paddle file's under torch's names (`bn1._mean` → `bn1.running_mean`).
fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match format_of(path, &bytes)? {
        Format::Safetensors => Ok(parse_safetensors(path, &bytes)?.0.into_iter().collect()),
        Format::Torch => Ok(TorchFile::load(path)?.tensors),
        Format::Paddle => Ok(PaddleFile::from_bytes(path, &bytes)?.torch_tensors()),
    }
}

/// Where a fresh model's ResNet weights come from. The reference always starts from
/// ImageNet weights and stops when their file is missing; so does agd, unless random
/// initialisation is asked for: a 90-epoch run from random weights by oversight is lost
/// time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pretrained {
    /// A `resnet<depth>*` file in `backbone_weights/` (the reference's layout); none
    /// there is an error.
    #[default]
    Found,
    /// Random initialisation.
    Random,
    /// This file (safetensors, a torch `.pth`/`.pt` or a Paddle `.pdparams` state dict with
    /// torchvision names).
    File(PathBuf),
}

/// Where [`Pretrained::Found`] looks, and the reference's file names there.
pub const BACKBONE_WEIGHTS: &str = "backbone_weights";
const TORCHVISION_FILES: [(Depth, &str); 2] = [
    (Depth::R50, "resnet50-19c8e357.pth"),
    (Depth::R34, "resnet34-333f7ec4.pth"),
];
/// The endings of the checkpoint files agd reads and writes (safetensors, the
/// reference's `.pth.tar`, the Paddle reproduction's `.pdparams`): what `--recursive`
/// looks for after `checkpoint`.
pub const CHECKPOINT_EXTENSIONS: [&str; 3] = [".safetensors", ".pth.tar", ".pdparams"];

/// The extensions [`Pretrained::Found`] takes in [`BACKBONE_WEIGHTS`]; `.pdparams` is how the
/// Paddle reproduction keeps the same weights (`resnet50-19c8e357.pdparams`).
const WEIGHT_EXTENSIONS: [&str; 4] = [".safetensors", ".pth", ".pt", ".pdparams"];

/// The `--pretrained` value that asks for random initialisation.
pub const RANDOM_INIT: &str = "none";

impl Pretrained {
    /// What `--pretrained` asks for: `none` random initialisation, an empty value the
    /// default file, anything else this file.
    pub fn from_flag(value: &str) -> Result<Self, std::convert::Infallible> {
        Ok(match value {
            "" => Pretrained::Found,
            RANDOM_INIT => Pretrained::Random,
            path => Pretrained::File(path.into()),
        })
    }

    /// The flag's value: none for the default file.
    fn flag(&self) -> Option<String> {
        match self {
            Pretrained::Found => None,
            Pretrained::Random => Some(RANDOM_INIT.to_string()),
            Pretrained::File(p) => Some(p.display().to_string()),
        }
    }
}

/// As the flag: absent (null) for the default file, `none`, or the file's path.
impl serde::Serialize for Pretrained {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.flag(), s)
    }
}

impl<'de> serde::Deserialize<'de> for Pretrained {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let flag = <Option<String> as serde::Deserialize>::deserialize(d)?;
        Ok(Pretrained::from_flag(flag.as_deref().unwrap_or("")).unwrap_or_default())
    }
}

impl Pretrained {
    /// The weights file to load into a fresh ResNet of `depth`; `None` for random
    /// initialisation. A missing default file is an error naming what was looked for.
    pub fn weights(&self, depth: Depth) -> Result<Option<PathBuf>> {
        match self {
            Pretrained::Random => Ok(None),
            Pretrained::File(p) => Ok(Some(p.clone())),
            Pretrained::Found => match default_imagenet(depth) {
                Some(p) => Ok(Some(p)),
                None => {
                    let torchvision = TORCHVISION_FILES
                        .iter()
                        .find(|(d, _)| *d == depth)
                        .map_or("", |(_, f)| f);
                    let paddle = torchvision.replace(".pth", ".pdparams");
                    Err(anyhow::anyhow!(
                        "no ImageNet weights for ResNet-{0}: {BACKBONE_WEIGHTS}/ holds no \
                         resnet{0}*.safetensors, .pth, .pt or .pdparams (torchvision's file is \
                         {BACKBONE_WEIGHTS}/{torchvision}, the Paddle reproduction's \
                         {BACKBONE_WEIGHTS}/{paddle}); give a weights file, or `none` to start \
                         from random initialisation",
                        depth.number()
                    ))
                    .about(Setting::Pretrained)
                }
            },
        }
    }
}

/// The default ImageNet weights: a `resnet<depth>*` safetensors/.pth/.pt/.pdparams file in
/// `backbone_weights/`.
fn default_imagenet(depth: Depth) -> Option<PathBuf> {
    imagenet_in(Path::new(BACKBONE_WEIGHTS), depth)
}

/// The first (by name) `resnet<depth>*` weights file in `dir`.
fn imagenet_in(dir: &Path, depth: Depth) -> Option<PathBuf> {
    let prefix = format!("resnet{}", depth.number());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            name.starts_with(&prefix) && WEIGHT_EXTENSIONS.iter().any(|x| name.ends_with(x))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

impl ReidModel {
    /// Loads ImageNet weights (torchvision names: `conv1.weight`, `layer1.0.bn1.bias`, …,
    /// which Paddle's model zoo shares but for BatchNorm's `_mean` / `_variance`) from `path`
    /// into the ResNet base where names and shapes match; `fc.*` is skipped (the ReID model
    /// has no such layer, and Paddle stores its weight transposed anyway).
    /// Returns a line for the log saying what was loaded.
    pub fn load_imagenet(&mut self, path: &Path) -> Result<String> {
        let depth = self.config.depth;
        let tensors = read_state_dict(path).about_value(Setting::Pretrained, path.display())?;
        let mut loaded = 0;
        tch::no_grad(|| -> Result<()> {
            for (name, src) in &tensors {
                let name = name.strip_prefix("module.").unwrap_or(name);
                if name.starts_with("fc.") {
                    continue;
                }
                let full = format!("backbone.base.{name}");
                let Some(dst) = self.params.get(&full) else {
                    continue;
                };
                if dst.size() != src.size() {
                    bad_setting!(
                        Setting::Pretrained,
                        path.display(),
                        "{name} has shape {:?}, ResNet-{} expects {:?}",
                        src.size(),
                        depth.number(),
                        dst.size()
                    );
                }
                dst.shallow_clone().copy_(&src.to_kind(dst.kind()));
                loaded += 1;
            }
            Ok(())
        })?;
        if loaded == 0 {
            bad_setting!(
                Setting::Pretrained,
                path.display(),
                "no tensor with torchvision ResNet names (conv1.weight, layer1.0.conv1.weight, …)"
            );
        }
        Ok(format!(
            "ImageNet weights: {loaded} tensors from {}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_weights_may_be_paddle_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(imagenet_in(dir.path(), Depth::R34), None);
        for name in [
            "resnet34-333f7ec4.pdparams.part",
            "resnet50-19c8e357.pdparams",
            "notes",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(imagenet_in(dir.path(), Depth::R34), None);
        assert_eq!(
            imagenet_in(dir.path(), Depth::R50),
            Some(dir.path().join("resnet50-19c8e357.pdparams"))
        );
        std::fs::write(dir.path().join("resnet34-333f7ec4.pdparams"), b"").unwrap();
        assert_eq!(
            imagenet_in(dir.path(), Depth::R34),
            Some(dir.path().join("resnet34-333f7ec4.pdparams"))
        );
    }
}
