//! One policy for "the model a checkpoint holds", used wherever a run starts from a
//! checkpoint (`--resume`, `--previous`, `--teacher`, `--ckpt`): the checkpoint decides
//! every value it can tell; what the user asked for only fills the gaps, and a request
//! that contradicts the checkpoint is an error naming both values. Users then never repeat
//! a training run's shape (`--last-stride 1`) to every later stage.

use super::checkpoint::Checkpoint;
use super::{Compute, Depth, ModelConfig, Pooling, ReidModel};
use crate::error::{Error, Setting};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::Device;

/// The model shape a run asks for (docs/method.md §3); `None` leaves a value to the checkpoint, or to
/// the reference's default for a fresh model. The same flags for every stage: a stage that
/// starts from a checkpoint needs them only for the reference's files, which do not record
/// last stride and pooling, and a value that contradicts the checkpoint is an error.
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// ResNet depth [default: the checkpoint's; 50 for a new model].
    #[arg(long, value_enum)]
    pub depth: Option<Depth>,
    /// Embedding width; must equal the backbone's feature width [default: the
    /// checkpoint's; for a new model its backbone's, 2048 for 50 and 512 for 34].
    #[arg(long)]
    pub embedding: Option<i64>,
    /// Stride of layer4 [default: the checkpoint's, else 2].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=2))]
    pub last_stride: Option<i64>,
    /// Global pooling of layer4 [default: the checkpoint's, else avg].
    #[arg(long = "last-pooling", value_enum)]
    pub pooling: Option<Pooling>,
}

/// The reference's model: ResNet-50, last stride 2, average pooling.
pub const DEFAULT_DEPTH: Depth = Depth::R50;
pub const DEFAULT_LAST_STRIDE: i64 = 2;
pub const DEFAULT_POOLING: Pooling = Pooling::Avg;

/// A requested value that the checkpoint contradicts. Typed so that callers can tell it
/// from an unreadable file; the CLI names the flag that carried the request.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe(self.setting.name()))]
pub struct Contradiction {
    pub path: PathBuf,
    pub what: &'static str,
    pub setting: Setting,
    pub saved: String,
    pub asked: String,
}

impl Contradiction {
    /// The message, with the request called `setting` (its name, or the CLI's flag).
    pub fn describe(&self, setting: &str) -> String {
        format!(
            "{}: the checkpoint holds a model with {} {}, but {setting} {} was given (leave it out: the checkpoint decides)",
            self.path.display(),
            self.what,
            self.saved,
            self.asked
        )
    }
}

impl ModelChoice {
    /// A fresh model's shape: the values asked for, the reference's defaults for the rest
    /// (the embedding defaults to the backbone's feature width, which it must equal).
    pub fn fresh(&self, classes: i64) -> ModelConfig {
        let depth = self.depth.unwrap_or(DEFAULT_DEPTH);
        ModelConfig {
            depth,
            last_stride: self.last_stride.unwrap_or(DEFAULT_LAST_STRIDE),
            pooling: self.pooling.unwrap_or(DEFAULT_POOLING),
            embedding: self.embedding.unwrap_or(depth.feature_width()),
            classes,
        }
    }

    /// The shape of the model `ck` holds. Depth, classes and embedding come from its
    /// tensors (or agd's metadata); last stride and pooling from agd's metadata. The
    /// reference's `.pth.tar` files (and the Paddle reproduction's `.pdparams`) do not record
    /// those two and their tensors cannot tell them, so there the choice decides (default:
    /// the reference's 2 and avg).
    pub fn for_checkpoint(&self, ck: &Checkpoint) -> Result<ModelConfig> {
        let classes = ck.classes()?;
        let depth = agree(
            ck,
            "backbone",
            Setting::Depth,
            ck.depth(),
            self.depth,
            |d| (format!("ResNet-{}", d.number()), d.number().to_string()),
        )?;
        let saved_embedding = ck.tensors.get("backbone.bn.weight").map(|t| t.size()[0]);
        let embedding = agree(
            ck,
            "embedding",
            Setting::Embedding,
            saved_embedding,
            self.embedding,
            |e| (e.to_string(), e.to_string()),
        )?;
        let (saved_stride, saved_pooling) = ck.recorded_stride_and_pooling();
        let last_stride = agree(
            ck,
            "last stride",
            Setting::LastStride,
            saved_stride,
            self.last_stride,
            |s| (s.to_string(), s.to_string()),
        )?;
        let pooling = agree(
            ck,
            "pooling",
            Setting::LastPooling,
            saved_pooling,
            self.pooling,
            |p| (p.name().to_string(), p.name().to_string()),
        )?;
        let fresh = Self {
            depth,
            last_stride,
            pooling,
            embedding,
        }
        .fresh(classes);
        // A value the checkpoint decided is no flag's fault: say where it came from, so
        // the user is not told to change a flag they never gave.
        if let Err(e) = fresh.validate() {
            if let Some(b) = Error::as_bad_setting(&e) {
                let from_checkpoint = match b.setting {
                    Setting::Embedding => saved_embedding.is_some(),
                    Setting::LastStride => saved_stride.is_some(),
                    Setting::Depth => ck.depth().is_some(),
                    _ => false,
                };
                if from_checkpoint {
                    return Err(Unbuildable {
                        path: ck.path.clone(),
                        setting: b.setting,
                        value: b.value.clone(),
                        reason: b.reason.clone(),
                    }
                    .into());
                }
            }
            return Err(e);
        }
        Ok(fresh)
    }
}

/// A model shape read from a checkpoint that no model can have (an embedding narrower
/// than the backbone's features, a last stride of 3). Unlike a [`BadSetting`] it names no
/// flag: the value came from the file, and no flag can change it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: the checkpoint's {setting} {value} (read from the checkpoint, no flag gave it): {reason}",
    path.display()
)]
pub struct Unbuildable {
    pub path: PathBuf,
    pub setting: Setting,
    pub value: String,
    pub reason: String,
}

/// The checkpoint's value where it has one (a differing request is a [`Contradiction`]),
/// else the request. `show` gives a value as the checkpoint is described and as the flag
/// spells it.
fn agree<T: PartialEq + Copy>(
    ck: &Checkpoint,
    what: &'static str,
    setting: Setting,
    saved: Option<T>,
    asked: Option<T>,
    show: impl Fn(T) -> (String, String),
) -> Result<Option<T>> {
    match (saved, asked) {
        (Some(s), Some(a)) if s != a => Err(Error::from(Contradiction {
            path: ck.path.clone(),
            what,
            setting,
            saved: show(s).0,
            asked: show(a).1,
        })
        .into()),
        (Some(s), _) => Ok(Some(s)),
        (None, a) => Ok(a),
    }
}

impl ReidModel {
    /// The model `ck` holds, shaped by [`ModelChoice::for_checkpoint`], with its weights.
    pub fn from_checkpoint(ck: &Checkpoint, choice: &ModelChoice, device: Device) -> Result<Self> {
        let mut model = Self::new(choice.for_checkpoint(ck)?, device)?;
        model.load_checkpoint(ck)?;
        Ok(model)
    }
}

/// Memory layout of the trunk's activations and convolution weights (`--memory-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryFormat {
    Nchw,
    /// channels_last.
    Nhwc,
}

crate::named_values!(MemoryFormat {
    Nchw => "nchw",
    Nhwc => "nhwc" | "channels_last" | "channels-last",
});

/// How a run asks its models to compute (`--amp`, `--memory-format`), the same for every
/// stage that runs a model; [`ComputeChoice::on`] resolves it for the run's device.
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeChoice {
    /// Mixed precision: the ResNet trunk in bfloat16; BatchNorm statistics, the head and
    /// the losses in float32. Not in the reference (it computes in float32).
    #[arg(long)]
    pub amp: bool,
    /// Activation layout of the trunk [default: nhwc on CUDA, nchw on the CPU, where NHWC
    /// is faster only by a few percent at most and NCHW is the reference's].
    #[arg(long, value_enum)]
    pub memory_format: Option<MemoryFormat>,
}

impl ComputeChoice {
    /// What the models compute in on `device`.
    pub fn on(self, device: Device) -> Compute {
        Compute {
            amp: self.amp,
            nhwc: match self.memory_format {
                Some(m) => m == MemoryFormat::Nhwc,
                None => device.is_cuda(),
            },
        }
    }
}

impl Compute {
    /// A log line naming how the trunk computes, when it is not the float32 NCHW default.
    pub fn describe(self) -> Option<String> {
        (self.amp || self.nhwc).then(|| {
            format!(
                "compute: trunk in {}, {} activations",
                if self.amp {
                    "bfloat16 (BN statistics and losses float32)"
                } else {
                    "float32"
                },
                if self.nhwc {
                    "channels_last (NHWC)"
                } else {
                    "NCHW"
                }
            )
        })
    }
}
