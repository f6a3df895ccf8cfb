//! The plan of `agd invert` (SPEC §7), defaulted as the reference's `main_inversion.py`.

use super::shard::Shard;
use super::store::DreamFormat;
use super::{Coefficients, Stages};
use crate::bad_setting;
use crate::error::Setting;
use crate::model::{ComputeChoice, ModelChoice};
use crate::stage::Argv;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub struct InvertPlan {
    /// `-g` values: GPU ids, or `cpu`.
    pub gpu: Vec<String>,
    pub seed: Option<u64>,
    /// Images optimised together.
    pub bs: usize,
    /// Where dreamed images go; with `resume`, the same folder.
    pub generation_dir: PathBuf,
    /// Images per identity.
    pub shots: usize,
    /// Most batches this run generates (a resumed run counts its own).
    pub iters: usize,
    /// A generation folder to complete (counts what is there): `generation_dir` itself.
    pub resume: Option<PathBuf>,
    /// The task-1 checkpoint (file or logs folder).
    pub teacher: PathBuf,
    pub model: ModelChoice,
    pub coefficients: Coefficients,
    pub stages: Stages,
    pub height: usize,
    pub width: usize,
    /// How the kept images are written (the reference: JPEG).
    pub format: DreamFormat,
    /// Only this shard of the identities (`--shard K/N`; not in the reference).
    pub shard: Option<Shard>,
    /// How the teacher computes (`--amp`, `--memory-format`; not in the reference).
    pub compute: ComputeChoice,
}

pub const DEFAULT_GENERATION_DIR: &str = "generations";
pub const DEFAULT_TEACHER: &str = "logs/msmt17";

impl Default for InvertPlan {
    fn default() -> Self {
        Self {
            gpu: vec!["0".into()],
            seed: None,
            bs: 64,
            generation_dir: DEFAULT_GENERATION_DIR.into(),
            shots: 10,
            iters: 320,
            resume: None,
            teacher: DEFAULT_TEACHER.into(),
            model: ModelChoice::default(),
            coefficients: Coefficients::default(),
            stages: Stages::default(),
            height: 256,
            width: 128,
            format: DreamFormat::Jpeg,
            shard: None,
            compute: ComputeChoice::default(),
        }
    }
}

/// The flags of the inversion's schedule and loss weights that differ from the
/// reference's defaults (shared by `agd invert` and `agd sequence`).
pub fn render_dreaming(argv: &mut Argv, s: &Stages, c: &Coefficients) {
    let (ds, dc) = (Stages::default(), Coefficients::default());
    argv.differs("--low-res-iters", &s.low_res_iters, &ds.low_res_iters)
        .differs("--full-res-iters", &s.full_res_iters, &ds.full_res_iters)
        .differs("--warmup-iters", &s.warmup_iters, &ds.warmup_iters)
        .differs("--jitter", &s.jitter, &ds.jitter)
        .differs("--coarse", &s.coarse, &ds.coarse)
        .differs("--lr", &s.lr, &ds.lr)
        .differs("--r-feature", &c.r_feature, &dc.r_feature)
        .differs(
            "--first-bn-multiplier",
            &c.first_bn_multiplier,
            &dc.first_bn_multiplier,
        )
        .differs(
            "--main-loss-multiplier",
            &c.main_loss_multiplier,
            &dc.main_loss_multiplier,
        )
        .differs("--tv-l1", &c.prior.tv_l1, &dc.prior.tv_l1)
        .differs("--tv-l2", &c.prior.tv_l2, &dc.prior.tv_l2)
        .differs("--l2", &c.prior.l2, &dc.prior.l2);
}

impl InvertPlan {
    /// Checks that need no file, so a mistyped number fails at once.
    pub fn validate(&self) -> Result<()> {
        if self.shots == 0 {
            bad_setting!(
                Setting::Shots,
                0,
                "at least one image per identity is needed"
            );
        }
        if self.bs == 0 {
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
        if self.stages.full_res_iters == 0 {
            bad_setting!(
                Setting::FullResIters,
                0,
                "images are kept from the full-size stage, which needs at least one iteration"
            );
        }
        let coarse = self.stages.coarse;
        if coarse == 1 || coarse > self.height.min(self.width) {
            bad_setting!(
                Setting::Coarse,
                coarse,
                "expected 0 (the reference's 2×2-pooled stage) or a block size from 2 to the \
                 image's smaller side ({})",
                self.height.min(self.width)
            );
        }
        if self.stages.warmup_iters == 0 {
            bad_setting!(
                Setting::WarmupIters,
                0,
                "a stage warms up for at least one iteration"
            );
        }
        crate::model::validate_input_size(self.height, self.width)?;
        if !(self.stages.lr > 0.0 && self.stages.lr.is_finite()) {
            bad_setting!(
                Setting::ImageLr,
                self.stages.lr,
                "must be a positive number"
            );
        }
        let c = &self.coefficients;
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

    pub fn argv(&self) -> Argv {
        let d = Self::default();
        // The command line's generation folder defaults to the folder it resumes.
        let implied = self
            .resume
            .as_ref()
            .map_or(DEFAULT_GENERATION_DIR.into(), |r| r.to_string_lossy());
        let mut argv = Argv::new("invert");
        argv.list("-g", &self.gpu, &d.gpu)
            .opt("-s", self.seed)
            .path("--teacher", &self.teacher, DEFAULT_TEACHER)
            .path("--generation-dir", &self.generation_dir, &implied)
            .opt_path("--resume", self.resume.as_deref())
            .differs("--shots", &self.shots, &d.shots)
            .differs("--bs", &self.bs, &d.bs)
            .differs("--iters", &self.iters, &d.iters);
        render_dreaming(&mut argv, &self.stages, &self.coefficients);
        argv.differs("--height", &self.height, &d.height)
            .differs("--width", &self.width, &d.width)
            .differs("--dream-format", &self.format, &d.format)
            .opt("--shard", self.shard);
        self.compute.render(&mut argv);
        crate::train::plan::render_model(&mut argv, &self.model);
        argv
    }
}
