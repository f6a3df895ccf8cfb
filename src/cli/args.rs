//! Flags of the subcommands that are not a library stage's plan (`synth`, `demo`, `plot`)
//! and of how results are printed (`evaluate --json`). The stages' flags are their plans'
//! fields ([`crate::options`]).

use crate::data::synth::Style;
use crate::eval::EvalPlan;
use crate::options::DeviceOptions;
use clap::Args;
use std::path::PathBuf;

/// `agd evaluate`: the stage's plan, and how its results are printed.
#[derive(Args, Clone, Debug)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub plan: EvalPlan,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
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
    #[arg(long, value_enum, default_value = "street")]
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
    pub device: DeviceOptions,
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
