//! The plan of `agd invert` (docs/method.md §7), defaulted as the reference's `inversion.py`.

use super::shard::Shard;
use super::store::DreamFormat;
use super::{Coefficients, Stages};
use crate::bad_setting;
use crate::dist::DistOptions;
use crate::error::Setting;
use crate::model::ModelChoice;
use crate::options::{DeviceOptions, ImageSize};
use crate::stage::StagePlan;
use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvertPlan {
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Seed of every random stream; without it a seed is drawn and logged.
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// The task-1 checkpoint (file or logs folder).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TEACHER)]
    pub teacher: PathBuf,
    /// Where dreamed images go [default: the --resume folder, else generations].
    #[arg(long, value_name = "PATH")]
    pub generation_dir: Option<PathBuf>,
    /// A dreams folder to complete: counts what is there and writes the missing
    /// images into it.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub dreaming: Dreaming,
    #[command(flatten)]
    pub size: ImageSize,
    /// Dream only shard K of N of the identities (e.g. `--shard 2/4`), so N processes or
    /// GPUs fill one dreams folder; each keeps its log in `<folder>/shard-K-of-N/`.
    /// Not in the reference.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub model: ModelChoice,
    /// Several ranks under one launch deal the shards: rank r dreams shard r + 1 of N.
    #[command(flatten)]
    pub dist: DistOptions,
}

/// What is dreamed and how, named and defaulted as the reference's `inversion.py`
/// (`agd invert` and `agd sequence` share it).
#[derive(Args, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dreaming {
    /// Images per identity.
    #[arg(long, default_value_t = 10)]
    pub shots: usize,
    /// Images optimised together.
    #[arg(long, default_value_t = 64)]
    pub bs: usize,
    /// Most batches a run generates (a resumed run counts its own).
    #[arg(long, default_value_t = 320)]
    pub iters: usize,
    #[command(flatten)]
    pub stages: Stages,
    #[command(flatten)]
    pub coefficients: Coefficients,
    /// How dreamed images are saved: `jpg`, the reference's (PIL's defaults: quality 75,
    /// 4:2:0), or `png`, lossless. Not in the reference: a short inversion's dreams lose
    /// most of what the teacher sees in them to 4:2:0 JPEG.
    #[arg(long, value_enum, default_value = "jpg")]
    pub dream_format: DreamFormat,
}

crate::default_from_flags!(Dreaming);

pub const DEFAULT_GENERATION_DIR: &str = "generations";
pub const DEFAULT_TEACHER: &str = "logs/msmt17";

crate::default_from_flags!(InvertPlan);

impl StagePlan for InvertPlan {
    const SUBCOMMAND: &'static str = "invert";
    const FOLDER: Setting = Setting::GenerationDir;
}

impl InvertPlan {
    /// Where the dreamed images go: `--generation-dir`, else the folder `--resume`
    /// completes (the library refuses two different ones), else `generations`.
    pub fn generation_dir(&self) -> PathBuf {
        self.generation_dir
            .clone()
            .or_else(|| self.resume.clone())
            .unwrap_or_else(|| DEFAULT_GENERATION_DIR.into())
    }

    /// Checks that need no file, so a mistyped number fails at once.
    pub fn validate(&self) -> Result<()> {
        if self.dreaming.shots == 0 {
            bad_setting!(
                Setting::Shots,
                0,
                "at least one image per identity is needed"
            );
        }
        if self.dreaming.bs == 0 {
            bad_setting!(
                Setting::InversionBatch,
                0,
                "a batch needs at least one image"
            );
        }
        if let Some(s) = self.shard {
            if Shard::new(s.index, s.count).is_none() {
                bad_setting!(Setting::Shard, s, "expected K/N with 1 ≤ K ≤ N, e.g. 1/4");
            }
        }
        if self.dreaming.stages.full_res_iters == 0 {
            bad_setting!(
                Setting::FullResIters,
                0,
                "images are kept from the full-size stage, which needs at least one iteration"
            );
        }
        let coarse = self.dreaming.stages.coarse;
        if coarse == 1 || coarse > self.size.height.min(self.size.width) {
            bad_setting!(
                Setting::Coarse,
                coarse,
                "expected 0 (the reference's 2×2-pooled stage) or a block size from 2 to the \
                 image's smaller side ({})",
                self.size.height.min(self.size.width)
            );
        }
        if self.dreaming.stages.warmup_iters == 0 {
            bad_setting!(
                Setting::WarmupIters,
                0,
                "a stage warms up for at least one iteration"
            );
        }
        crate::model::validate_input_size(self.size.height, self.size.width)?;
        if !(self.dreaming.stages.lr > 0.0 && self.dreaming.stages.lr.is_finite()) {
            bad_setting!(
                Setting::ImageLr,
                self.dreaming.stages.lr,
                "must be a positive number"
            );
        }
        let c = &self.dreaming.coefficients;
        let coefficients = [
            (Setting::RFeature, c.r_feature),
            (Setting::FirstBnMultiplier, c.first_bn_multiplier),
            (Setting::TvL1, c.prior.tv_l1),
            (Setting::TvL2, c.prior.tv_l2),
            (Setting::L2, c.prior.l2),
            (Setting::MainLossMultiplier, c.main_loss_multiplier),
        ];
        for (setting, v) in coefficients {
            if !(v >= 0.0 && v.is_finite()) {
                bad_setting!(setting, v, "must be a non-negative number");
            }
        }
        Ok(())
    }
}
