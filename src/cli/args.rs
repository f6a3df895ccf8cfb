//! Flags of every subcommand, named and defaulted as in the reference scripts (SPEC §1).
//! Groups shared by several subcommands are flattened; where the reference's defaults
//! differ between scripts (train vs incremental), [`super::command`] overrides them.

use crate::data::synth::Style;
pub use crate::eval::features::OutputFeature;
use crate::inversion::optim::WARMUP;
use crate::inversion::store::DreamFormat;
pub use crate::model::{ComputeChoice, MemoryFormat};
pub use crate::model::{Depth, Pooling};
pub use crate::train::optimizer::OptimizerKind;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use std::path::PathBuf;

/// A library enum as a flag value: the library knows no command line, so its names (as
/// the reference's scripts spell them) are given here.
pub trait FlagValue: Copy + Send + Sync + 'static {
    /// Every value with its name and any other accepted spellings.
    const ALL: &'static [(Self, &'static str, &'static [&'static str])];
}

/// clap's parser of a [`FlagValue`]: the names are listed in `--help` and in errors.
pub fn flag_value<T: FlagValue>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        T::ALL
            .iter()
            .map(|(_, name, aliases)| PossibleValue::new(*name).aliases(aliases.iter().copied())),
    )
    .map(|given: String| {
        T::ALL
            .iter()
            .find(|(_, name, aliases)| *name == given || aliases.contains(&given.as_str()))
            .map(|(v, _, _)| *v)
            .expect("PossibleValuesParser accepts only listed names")
    })
}

impl FlagValue for DreamFormat {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] = &[
        (DreamFormat::Jpeg, DreamFormat::Jpeg.name(), &["jpeg"]),
        (DreamFormat::Png, DreamFormat::Png.name(), &[]),
    ];
}

impl FlagValue for Depth {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] =
        &[(Depth::R34, "34", &[]), (Depth::R50, "50", &[])];
}

// Where the library has a name for a value (checkpoint metadata, rendered plans), the flag
// uses the same one.
impl FlagValue for Pooling {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] = &[
        (Pooling::Avg, Pooling::Avg.name(), &[]),
        (Pooling::Max, Pooling::Max.name(), &[]),
    ];
}

impl FlagValue for OptimizerKind {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] = &[
        (OptimizerKind::Sgd, OptimizerKind::Sgd.name(), &["sgd"]),
        (OptimizerKind::Adam, OptimizerKind::Adam.name(), &["adam"]),
    ];
}

impl FlagValue for OutputFeature {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] = &[
        (
            OutputFeature::Embedding,
            OutputFeature::Embedding.name(),
            &[],
        ),
        (OutputFeature::Global, OutputFeature::Global.name(), &[]),
    ];
}

impl FlagValue for Style {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] =
        &[(Style::Street, "street", &[]), (Style::Mall, "mall", &[])];
}

/// `-g/--gpu`.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// GPU ids as in the reference (`-g 0`); the first one is used. `-g cpu` or no id: CPU.
    /// Without CUDA agd falls back to the CPU.
    #[arg(short = 'g', long = "gpu", num_args = 0.., default_values_t = ["0".to_string()])]
    pub gpu: Vec<String>,
}

/// Where data is and how images are shaped.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Folder holding one folder per dataset (`<data-root>/<dataset>/…`).
    #[arg(long, value_name = "PATH", default_value = "data")]
    pub data_root: PathBuf,
    /// Input height.
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    /// Input width.
    #[arg(long, default_value_t = 128)]
    pub width: usize,
}

/// Random erasing of the training transform.
#[derive(Args, Clone, Debug)]
pub struct AugmentArgs {
    /// Random-erasing probability.
    #[arg(long, default_value_t = 0.5)]
    pub re: f64,
    /// Largest erased area fraction.
    #[arg(long, default_value_t = 0.4)]
    pub re_area: f64,
    /// Accepted for the reference's scripts; images are always preloaded.
    #[arg(long, hide = true)]
    pub preload: bool,
}

/// The ReID model's shape (SPEC §3).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Global pooling of layer4.
    #[arg(long, value_parser = flag_value::<Pooling>(), default_value = "avg")]
    pub last_pooling: Pooling,
    /// Stride of layer4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=2))]
    pub last_stride: i64,
    /// ResNet depth.
    #[arg(long, value_parser = flag_value::<Depth>(), default_value = "50")]
    pub depth: Depth,
    /// Embedding width; must equal the backbone's feature width (2048 for 50, 512 for 34).
    #[arg(long, default_value_t = 2048)]
    pub embedding: i64,
}

/// Model flags of a stage that starts from a checkpoint (`incremental`, `invert`,
/// `evaluate`): the checkpoint decides every value it records, so these are only needed
/// for the reference's files, which do not record last stride and pooling. A value that
/// contradicts the checkpoint is an error.
#[derive(Args, Clone, Debug)]
pub struct CheckpointModelArgs {
    /// Global pooling of layer4 [default: the checkpoint's, else avg].
    #[arg(long, value_parser = flag_value::<Pooling>())]
    pub last_pooling: Option<Pooling>,
    /// Stride of layer4 [default: the checkpoint's, else 2].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=2))]
    pub last_stride: Option<i64>,
    /// ResNet depth [default: the checkpoint's].
    #[arg(long, value_parser = flag_value::<Depth>())]
    pub depth: Option<Depth>,
    /// Embedding width [default: the checkpoint's].
    #[arg(long)]
    pub embedding: Option<i64>,
}

/// The training loop shared by `train` (model flags [`ModelArgs`]), `incremental` and
/// `incremental-x` (model flags [`CheckpointModelArgs`]). Defaults are `train`'s; the
/// incremental subcommands override theirs.
#[derive(Args, Clone, Debug)]
pub struct LoopArgs<M: Args> {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of every random stream; without it a seed is drawn and logged.
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Dataset name (a folder under --data-root).
    #[arg(long, default_value = "msmt17")]
    pub dataset: String,
    /// Batch size (P identities × 4 images).
    #[arg(short = 'b', long, default_value_t = 128)]
    pub batch_size: usize,
    /// Checkpoint (file or logs folder) to continue from.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Number of epochs.
    #[arg(long, default_value_t = 90)]
    pub epochs: usize,
    /// Epochs at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [61])]
    pub epochs_decay: Vec<usize>,
    /// Where checkpoints and logs go.
    #[arg(long, value_name = "PATH", default_value = "logs")]
    pub logs_dir: PathBuf,
    /// Keep a numbered checkpoint every this many epochs.
    #[arg(long, default_value_t = 1000)]
    pub save_freq: usize,
    #[arg(long, value_parser = flag_value::<OptimizerKind>(), default_value = "SGD")]
    pub optimizer: OptimizerKind,
    /// Warm-up epochs.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    /// Evaluate every this many epochs (0: never).
    #[arg(long, default_value_t = 10)]
    pub evaluate: usize,
    /// Independently augmented views of each sample.
    #[arg(long, default_value_t = 1)]
    pub peers: usize,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub augment: AugmentArgs,
    #[command(flatten)]
    pub model: M,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Deterministic ATen and cuDNN algorithms and cuDNN's benchmark off, so a seeded GPU
    /// run and its resume repeat (slower; README, GPU). Without it the benchmark is on.
    #[arg(long)]
    pub deterministic: bool,
}

/// How the models compute: every stage that runs one takes these.
#[derive(Args, Clone, Copy, Debug)]
pub struct ComputeArgs {
    /// Mixed precision: the ResNet trunk in bfloat16; BatchNorm statistics, the head and
    /// the losses in float32. Not in the reference.
    #[arg(long)]
    pub amp: bool,
    /// Activation layout of the trunk [default: nhwc on CUDA, nchw on the CPU].
    #[arg(long, value_parser = flag_value::<MemoryFormat>())]
    pub memory_format: Option<MemoryFormat>,
}

impl ComputeArgs {
    pub fn choice(self) -> ComputeChoice {
        ComputeChoice {
            amp: self.amp,
            memory_format: self.memory_format,
        }
    }
}

impl FlagValue for MemoryFormat {
    const ALL: &'static [(Self, &'static str, &'static [&'static str])] = &[
        (MemoryFormat::Nchw, MemoryFormat::Nchw.name(), &[]),
        (
            MemoryFormat::Nhwc,
            MemoryFormat::Nhwc.name(),
            &["channels_last", "channels-last"],
        ),
    ];
}

/// `agd train`.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: LoopArgs<ModelArgs>,
    /// ImageNet weights for the ResNet (safetensors, torch .pth/.pt or Paddle .pdparams
    /// state dict with torchvision names), or `none` for random initialisation; default: a
    /// `resnet<depth>*` file in backbone_weights/, and an error when there is none.
    #[arg(long, value_name = "FILE|none")]
    pub pretrained: Option<PathBuf>,
}

/// `agd incremental` and `agd incremental-x`.
#[derive(Args, Clone, Debug)]
pub struct IncrementalArgs {
    #[command(flatten)]
    pub run: LoopArgs<CheckpointModelArgs>,
    /// The task-1 checkpoint (file or logs folder).
    #[arg(long, value_name = "PATH", default_value = "logs/msmt17")]
    pub previous: PathBuf,
    /// Folder of dreamed images (`<pid>_<anything>.jpg`).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "data/generations_r50_msmt17"
    )]
    pub inversion_dir: PathBuf,
    /// Images per old identity: dreamed ones from --inversion-dir, or real ones with
    /// --exemplar-dataset.
    #[arg(long, default_value_t = 40)]
    pub exemplars: usize,
    /// Real training images of the old task's dataset (a folder under --data-root, labelled
    /// as `agd train --dataset NAME` labelled them) in place of dreamed images, --exemplars
    /// per identity chosen by --seed: the upper bound a data-free method is compared with.
    // Defaults are not conflicts in clap: only an --inversion-dir given too is refused.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["inversion_dir", "finetune"])]
    pub exemplar_dataset: Option<String>,
    /// Distil on the new batch alone (the reference's IncrementalTrainer): the old model
    /// and the student see only the new images, no dreamed or real old ones. The data-free
    /// baseline without dreaming (how LwF and PODNet were first run); needs --algo-config.
    #[arg(
        long,
        conflicts_with_all = ["inversion_dir", "exemplars", "exemplar_dataset", "finetune"]
    )]
    pub new_data_distillation: bool,
    /// Distillation config (YAML, see configs/).
    #[arg(long, value_name = "PATH")]
    pub algo_config: Option<PathBuf>,
    /// Also evaluate on the old task's dataset when its data is available.
    #[arg(long, value_name = "NAME")]
    pub old_dataset: Option<String>,
    /// The forgetting baseline (the reference's `main_finetune.py`): learn the new task
    /// from the old model with no dreamed images and no distillation.
    #[arg(long)]
    pub finetune: bool,
}

/// The inversion's loss weights and schedule, named and defaulted as the reference's
/// `main_inversion.py` (`agd invert` and `agd sequence` share them).
#[derive(Args, Clone, Debug)]
pub struct InversionWeightsArgs {
    /// BN statistics loss coefficient.
    #[arg(long, default_value_t = 0.01)]
    pub r_feature: f64,
    /// Extra weight of the first BN layer's statistics.
    #[arg(long, default_value_t = 10.0)]
    pub first_bn_multiplier: f64,
    /// Total-variation L1 coefficient.
    #[arg(long, default_value_t = 0.0)]
    pub tv_l1: f64,
    /// Total-variation L2 coefficient.
    #[arg(long, default_value_t = 0.0001)]
    pub tv_l2: f64,
    /// Image L2 coefficient.
    #[arg(long, default_value_t = 0.00001)]
    pub l2: f64,
    /// Adam learning rate on the images.
    #[arg(long, default_value_t = 0.2)]
    pub lr: f64,
    /// Weight of the cross-entropy on the targets.
    #[arg(long, default_value_t = 1.0)]
    pub main_loss_multiplier: f64,
    /// Iterations on 2×2-pooled images (hard-coded 2000 in the reference).
    #[arg(long, default_value_t = 2000)]
    pub low_res_iters: usize,
    /// Iterations at full size (hard-coded 1000 in the reference).
    #[arg(long, default_value_t = 1000)]
    pub full_res_iters: usize,
    /// Learning-rate warm-up of each stage, in iterations (hard-coded 100 in the
    /// reference); then a half cosine to 0 at the stage's end.
    #[arg(long, default_value_t = WARMUP,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub warmup_iters: usize,
    /// Roll the images by a random offset of up to this many pixels each iteration (half
    /// as many at low resolution) before the teacher sees them. Not in the reference:
    /// DeepInversion's own code jitters; 0 keeps the reference's method.
    #[arg(long, default_value_t = 0)]
    pub jitter: usize,
    /// Run the low-resolution stage on images of F×F blocks of one colour, seen at full
    /// size, instead of 2×2-pooled images: only a layout of colours can satisfy the
    /// teacher there. Not in the reference; 0 keeps its stage.
    #[arg(long, value_name = "F", default_value_t = 0)]
    pub coarse: usize,
    /// How dreamed images are saved: `jpg`, the reference's (PIL's defaults: quality 75,
    /// 4:2:0), or `png`, lossless. Not in the reference: a short inversion's dreams lose
    /// most of what the teacher sees in them to 4:2:0 JPEG.
    #[arg(long, value_parser = flag_value::<DreamFormat>(), default_value = "jpg")]
    pub dream_format: DreamFormat,
}

/// `agd invert` (SPEC §7).
#[derive(Args, Clone, Debug)]
pub struct InvertArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Images optimised together.
    #[arg(long, default_value_t = 64)]
    pub bs: usize,
    /// Where dreamed images go [default: the --resume folder, else generations].
    #[arg(long, value_name = "PATH")]
    pub generation_dir: Option<PathBuf>,
    /// Images per identity.
    #[arg(long, default_value_t = 10)]
    pub shots: usize,
    /// Most batches this run generates.
    #[arg(long, default_value_t = 320)]
    pub iters: usize,
    /// A generation folder to complete: counts what is there and writes the missing
    /// images into it.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub model: CheckpointModelArgs,
    /// The task-1 checkpoint (file or logs folder).
    #[arg(long, value_name = "PATH", default_value = "logs/msmt17")]
    pub teacher: PathBuf,
    #[command(flatten)]
    pub weights: InversionWeightsArgs,
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    /// Dream only shard K of N of the identities (e.g. `--shard 2/4`), so N processes or
    /// GPUs fill one generation folder; each keeps its log in `<folder>/shard-K-of-N/`.
    /// Not in the reference.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::inversion::shard::Shard>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `agd evaluate` (SPEC §8).
#[derive(Args, Clone, Debug)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Datasets to evaluate; `a+b` evaluates both query sets against the union gallery;
    /// `aUb` is one dataset made of a and b (the reference's mode `U`), also inside `+`.
    #[arg(long, num_args = 1.., default_values_t = ["market".to_string(), "duke".to_string(), "msmt17".to_string()])]
    pub dataset: Vec<String>,
    #[arg(short = 'b', long, default_value_t = 128)]
    pub batch_size: usize,
    /// Checkpoint file, or a logs folder (its checkpoint), or with --recursive a tree.
    #[arg(short = 'c', long, value_name = "PATH", default_value = "logs")]
    pub ckpt: PathBuf,
    /// k-reciprocal re-ranking.
    #[arg(short = 'r', long)]
    pub re_ranking: bool,
    /// Append results to eval.txt beside each checkpoint.
    #[arg(short = 'o', long, conflicts_with = "features")]
    pub output: bool,
    /// Evaluate every checkpoint under --ckpt; one that fails does not stop the others,
    /// but is named at the end (with --json, as a `{checkpoint, error}` row) and the exit
    /// code is non-zero.
    #[arg(long, conflicts_with = "features")]
    pub recursive: bool,
    #[arg(long, value_parser = flag_value::<OutputFeature>(), default_value = "embedding")]
    pub output_feature: OutputFeature,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Re-rank all queries in one graph instead of the reference's chunks of 1024.
    #[arg(long, requires = "re_ranking")]
    pub one_shot: bool,
    /// Write each query set's features and labels to this safetensors file. Several query
    /// sets (several datasets, or `a+b`) get one file each, named by appending the query
    /// set to the stem: `F-a.safetensors`, and `F-a-in-a+b.safetensors` for a's queries
    /// against the union gallery of a+b. The folder must exist.
    #[arg(long, value_name = "FILE")]
    pub save_features: Option<PathBuf>,
    /// Evaluate a feature file written by --save-features; no model or images needed.
    #[arg(long, value_name = "FILE", conflicts_with = "save_features")]
    pub features: Option<PathBuf>,
    /// Write rank-list pictures (query, then its top-10 gallery images framed green or
    /// red) into this folder, one subfolder per query set: `DIR/a`, and `DIR/a-in-a+b`
    /// for a's queries against the union gallery of a+b.
    #[arg(long, value_name = "DIR", conflicts_with = "features")]
    pub rank_list: Option<PathBuf>,
    /// Queries to draw rank lists for (at least 1).
    #[arg(long, default_value_t = 10)]
    pub rank_list_n: usize,
    #[command(flatten)]
    pub model: CheckpointModelArgs,
}

/// `agd synth`: a Market-style dataset of rendered people.
#[derive(Args, Clone, Debug)]
pub struct SynthArgs {
    /// Folder that receives `<dataset>/`.
    #[arg(long, value_name = "PATH", default_value = "data")]
    pub data_root: PathBuf,
    /// Name of the dataset folder.
    #[arg(long, default_value = "synth")]
    pub dataset: String,
    /// Training identities.
    #[arg(long, default_value_t = 100)]
    pub ids: usize,
    /// Query/gallery identities (disjoint from training ones); default: --ids.
    #[arg(long)]
    pub test_ids: Option<usize>,
    /// Images per identity.
    #[arg(long, default_value_t = 12)]
    pub images_per_id: usize,
    /// Cameras.
    #[arg(long, default_value_t = 6)]
    pub cameras: usize,
    /// Gallery images of nobody in particular (pid 0).
    #[arg(long, default_value_t = 100)]
    pub distractors: usize,
    /// Junk gallery images (pid -1, ignored by evaluation).
    #[arg(long, default_value_t = 50)]
    pub junk: usize,
    #[arg(long, default_value_t = 128)]
    pub height: u32,
    #[arg(long, default_value_t = 64)]
    pub width: u32,
    #[arg(short = 's', long, default_value_t = 0)]
    pub seed: u64,
    /// Visual world: two styles make two different tasks.
    #[arg(long, value_parser = flag_value::<Style>(), default_value = "street")]
    pub style: Style,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agd demo`: the pipeline, as far as it exists, on synthetic data.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Run folder (data, logs, results).
    #[arg(long, value_name = "PATH", default_value = "logs/demo")]
    pub out: PathBuf,
    /// Small sizes for CI (a few seconds per stage).
    #[arg(long)]
    pub quick: bool,
    /// Identities per task (default 40; 8 with --quick).
    #[arg(long)]
    pub ids: Option<usize>,
    /// Epochs of the base model on task A (default 12; 2 with --quick).
    #[arg(long)]
    pub base_epochs: Option<usize>,
    /// Epochs of every run on task B (default 6; 1 with --quick).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Dreamed images per task-A identity (default 6; 4 with --quick).
    #[arg(long)]
    pub shots: Option<usize>,
    /// Inversion iterations of the low-resolution stage (default 200; 4 with --quick).
    #[arg(long)]
    pub low_res_iters: Option<usize>,
    /// Inversion iterations at full size (default 1; 4 with --quick).
    #[arg(long)]
    pub full_res_iters: Option<usize>,
    /// Warm-up iterations of each inversion stage (default 10; with --quick 100, the
    /// reference's).
    #[arg(long)]
    pub warmup_iters: Option<usize>,
    /// `agd invert --coarse F`: the low-resolution stage on F×F blocks (default 4; with
    /// --quick 0, the reference's 2×2-pooled stage).
    #[arg(long, value_name = "F")]
    pub coarse: Option<usize>,
    /// `agd invert --jitter N`: the teacher sees the dreams rolled by up to N pixels
    /// (default 4; with --quick 0, the reference's none).
    #[arg(long, value_name = "N")]
    pub jitter: Option<usize>,
    #[arg(short = 's', long, default_value_t = 1)]
    pub seed: u64,
    /// Random-erasing probability of every training stage (the base and task B's four
    /// runs), as `agd train --re` (whose default is the reference's 0.5). The demo's 0:
    /// erasing a patch of a 64×32 image, and of each view of a dream, costs more than it
    /// regularises (README: the five seeds' margins over fine-tuning with and without).
    #[arg(long, default_value_t = 0.0)]
    pub re: f64,
    /// Run the whole demo once per seed (e.g. `--seeds 1,2,3,4,5`), each into
    /// `<out>/seed-<k>`, and write `<out>/seeds.{md,json}`: task A's margins over
    /// fine-tuning per seed, their mean, and on how many seeds each distillation won.
    #[arg(long, value_name = "SEEDS", value_delimiter = ',', num_args = 1.., conflicts_with = "seed")]
    pub seeds: Option<Vec<u64>>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `agd plot`: redraws the training curves of finished or running runs.
#[derive(Args, Clone, Debug)]
pub struct PlotArgs {
    /// Logs folders of training runs (each holds a `metrics.csv`).
    #[arg(value_name = "LOGS_DIR", required = true, num_args = 1..)]
    pub logs_dirs: Vec<PathBuf>,
    /// Write the picture here instead of `<LOGS_DIR>/curves.png` (one folder only); PNG,
    /// or JPEG for a `.jpg`/`.jpeg` name.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The base model's shape in `agd sequence`: `agd train`'s flags, except that the
/// embedding width follows the depth unless given (`--depth 34` alone asks for a valid
/// model).
#[derive(Args, Clone, Debug)]
pub struct BaseModelArgs {
    /// Global pooling of layer4.
    #[arg(long, value_parser = flag_value::<Pooling>(), default_value = "avg")]
    pub last_pooling: Pooling,
    /// Stride of layer4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=2))]
    pub last_stride: i64,
    /// ResNet depth.
    #[arg(long, value_parser = flag_value::<Depth>(), default_value = "50")]
    pub depth: Depth,
    /// Embedding width; must equal the backbone's feature width [default: that width,
    /// 2048 for 50, 512 for 34].
    #[arg(long)]
    pub embedding: Option<i64>,
}

/// The inversion flags of `agd sequence`, named and defaulted as `agd invert`'s.
#[derive(Args, Clone, Debug)]
pub struct DreamingArgs {
    /// Images optimised together.
    #[arg(long, default_value_t = 64)]
    pub bs: usize,
    /// Images dreamed per identity.
    #[arg(long, default_value_t = 10)]
    pub shots: usize,
    /// Most batches an inversion generates.
    #[arg(long, default_value_t = 320)]
    pub iters: usize,
    #[command(flatten)]
    pub weights: InversionWeightsArgs,
}

/// `agd sequence`: lifelong learning over several datasets. The stages' flags keep their
/// names and reference defaults; where `train` and `incremental` default differently
/// (batch size, warm-up) a flag sets both and its absence keeps each stage's own.
#[derive(Args, Clone, Debug)]
pub struct SequenceArgs {
    /// Datasets to learn, in this order (folders under --data-root); the first trains the
    /// base model.
    #[arg(long, num_args = 1.., required = true, value_name = "NAME")]
    pub datasets: Vec<String>,
    /// Datasets never learnt, evaluated after every step (generalisation).
    #[arg(long, num_args = 0.., value_name = "NAME")]
    pub unseen: Vec<String>,
    /// How each new dataset is learnt: agd (configs/inverXion.yaml, incremental-x with
    /// --peers views), gd (res-triangle), simgd (sim-res-triangle), finetune (no
    /// distillation), or a distillation config's path (incremental-x when it has
    /// `cross_factor`, else incremental).
    #[arg(
        long,
        value_name = "agd|gd|simgd|finetune|CONFIG",
        default_value = "agd"
    )]
    pub method: String,
    /// Where every step's folder and the results go.
    #[arg(long, value_name = "PATH", default_value = "logs/sequence")]
    pub logs_dir: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of every stage; without it each stage draws and logs one.
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Epochs of the base model on the first dataset.
    #[arg(long, default_value_t = 90)]
    pub base_epochs: usize,
    /// Epochs of the base model at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [61])]
    pub base_epochs_decay: Vec<usize>,
    /// Epochs of every incremental step.
    #[arg(long, default_value_t = 80)]
    pub epochs: usize,
    /// Epochs of an incremental step at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [41])]
    pub epochs_decay: Vec<usize>,
    /// Batch size of every training stage (P identities × 4 images) [default: 128 for the
    /// base model, 64 for the incremental steps].
    #[arg(short = 'b', long)]
    pub batch_size: Option<usize>,
    /// Warm-up epochs of every training stage [default: 10 for the base model, 0 for the
    /// incremental steps].
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, value_parser = flag_value::<OptimizerKind>(), default_value = "SGD")]
    pub optimizer: OptimizerKind,
    /// Base learning rate of every training stage.
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    /// Training stages evaluate every this many epochs (0: never; every step's model is
    /// evaluated on all datasets seen so far anyway).
    #[arg(long, default_value_t = 10)]
    pub evaluate: usize,
    /// Views of each sample for an augmented method (AGD); the others see one.
    #[arg(long, default_value_t = 2)]
    pub peers: usize,
    #[command(flatten)]
    pub augment: AugmentArgs,
    /// The base model's shape; every later stage reads it from the checkpoints.
    #[command(flatten)]
    pub model: BaseModelArgs,
    /// ImageNet weights of the base model's ResNet, or `none` (as `agd train`).
    #[arg(long, value_name = "FILE|none")]
    pub pretrained: Option<PathBuf>,
    /// Dreamed images used per old identity.
    #[arg(long, default_value_t = 40)]
    pub exemplars: usize,
    #[command(flatten)]
    pub dreaming: DreamingArgs,
}
