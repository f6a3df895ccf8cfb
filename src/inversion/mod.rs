//! DeepInversion (docs/method.md §7): images of the old identities optimised out of the frozen task-1
//! model alone. Starting from noise, a batch of images is pushed by Adam until the teacher
//! classifies them as their target identities while every BatchNorm sees the activation
//! statistics it recorded in training; image priors keep them smooth. A batch runs two
//! stages (2×2 average-pooled images, then full size) and keeps the full-size images of its
//! lowest-loss iteration.
//!
//! The teacher is frozen ([`ReidModel::freeze`]) and the backward pass asks for the images'
//! gradient only, so no weight gradient is ever computed — the reference computes and
//! discards them every iteration.

pub mod bn;
pub mod fidelity;
pub mod optim;
pub mod plan;
pub mod prior;
mod run;
pub mod shard;
pub mod store;

pub use plan::InvertPlan;
pub use run::run;

use crate::data::transforms::{MEAN, STD};
use crate::model::ReidModel;
use anyhow::{bail, Result};
use optim::{stage_lr, Adam, WARMUP};
use prior::{ImagePrior, PriorWeights};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The loss's coefficients, named and defaulted as the reference's `inversion.py`.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    /// BN statistics loss coefficient.
    #[arg(long, default_value_t = 0.01)]
    pub r_feature: f64,
    /// Extra weight of the first BN layer's statistics.
    #[arg(long, default_value_t = 10.0)]
    pub first_bn_multiplier: f64,
    /// Weight of the cross-entropy on the targets.
    #[arg(long, default_value_t = 1.0)]
    pub main_loss_multiplier: f64,
    #[command(flatten)]
    pub prior: PriorWeights,
}

crate::default_from_flags!(Coefficients);

/// The optimisation of one batch: the two stages' lengths, each stage's warm-up, and the
/// base learning rate.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// Iterations on 2×2-pooled images (hard-coded 2000 in the reference).
    #[arg(long, default_value_t = 2000)]
    pub low_res_iters: usize,
    /// Iterations at full size (hard-coded 1000 in the reference).
    #[arg(long, default_value_t = 1000)]
    pub full_res_iters: usize,
    /// Learning-rate warm-up of each stage, in iterations (hard-coded 100 in the
    /// reference); then a half cosine to 0 at the stage's end.
    // Short stages need a short warm-up: a 100-iteration stage with the reference's
    // 100-iteration warm-up ends at the full rate and never settles.
    #[arg(long, default_value_t = WARMUP,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub warmup_iters: usize,
    /// Roll the images by a random offset of up to this many pixels each iteration (half
    /// as many at low resolution) before the teacher sees them. Not in the reference:
    /// DeepInversion's own code jitters; 0 keeps the reference's method.
    // So no pixel can satisfy the teacher at one position only.
    #[arg(long, default_value_t = 0)]
    pub jitter: usize,
    /// Run the low-resolution stage on images of F×F blocks of one colour, seen at full
    /// size, instead of 2×2-pooled images: only a layout of colours can satisfy the
    /// teacher there. Not in the reference; 0 keeps its stage.
    // [`Stage::Blocks`]; the full-size stage refines the layout.
    #[arg(long, value_name = "F", default_value_t = 0)]
    pub coarse: usize,
    /// Adam learning rate on the images.
    #[arg(long, default_value_t = 0.2)]
    pub lr: f64,
}

crate::default_from_flags!(Stages);

/// Which stage an iteration belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The teacher sees the images 2×2 average-pooled.
    LowRes,
    /// `--coarse F`: the images are F×F blocks of one colour ([`Inverter::dream`] makes
    /// them so at the stage's start) and the teacher sees them at full size, through
    /// F×F average pooling and nearest upsampling: every pixel of a block gets the same
    /// gradient, so Adam moves the block as one and the images stay blocks.
    Blocks(i64),
    /// The teacher sees the images as they are; only here are images kept.
    FullRes,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::LowRes => "low-res",
            Stage::Blocks(_) => "coarse",
            Stage::FullRes => "full-res",
        }
    }
}

/// The loss of one iteration and its parts, as the progress bar shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReport {
    /// main_loss_multiplier·CE + BN + prior: what is minimised and what picks the best step.
    pub total: f64,
    /// Cross-entropy of the teacher's logits against the targets (unweighted).
    pub ce: f64,
    /// r_feature · the BatchNorm statistics loss.
    pub bn: f64,
    /// The weighted image priors.
    pub prior: f64,
    /// Fraction of the batch the teacher classifies as its target.
    pub accuracy: f64,
}

/// Where an iteration is, for progress reports.
#[derive(Clone, Copy, Debug)]
pub struct Iteration {
    pub stage: Stage,
    /// 0-based within the stage.
    pub iteration: usize,
    pub stage_iters: usize,
    pub lr: f64,
    pub report: StepReport,
}

/// `x` (N×3×H×W) averaged over each f×f block, at full size: the block means, repeated.
/// Edge blocks of a size not divisible by f are averaged over the pixels they hold.
fn blocks(x: &Tensor, f: i64) -> Tensor {
    let size = x.size();
    x.avg_pool2d([f, f], [f, f], [0, 0], true, false, None::<i64>)
        // Scale f maps output pixel i to block i / f, also for a partial last block.
        .upsample_nearest2d([size[2], size[3]], f as f64, f as f64)
}

/// The per-channel range of a normalised image: [−m_c/s_c, (1 − m_c)/s_c], shaped 1×3×1×1.
fn channel_range(device: Device) -> (Tensor, Tensor) {
    let bound = |f: fn(f64, f64) -> f64| {
        let v: Vec<f32> = (0..3)
            .map(|c| f(MEAN[c] as f64, STD[c] as f64) as f32)
            .collect();
        Tensor::from_slice(&v).view([1, 3, 1, 1]).to_device(device)
    };
    (bound(|m, s| -m / s), bound(|m, s| (1.0 - m) / s))
}

/// Normalised images back to [0, 1]: x·s_c + m_c, clamped.
pub fn denormalize(images: &Tensor) -> Tensor {
    let shape = |v: [f32; 3]| {
        Tensor::from_slice(&v)
            .view([1, 3, 1, 1])
            .to_device(images.device())
    };
    (images.detach().to_kind(Kind::Float) * shape(STD) + shape(MEAN)).clamp(0.0, 1.0)
}

/// One batch being dreamed: the images (a leaf in normalised space), their targets, Adam's
/// state and the best full-size images so far.
pub struct DreamBatch {
    pub images: Tensor,
    pub targets: Tensor,
    adam: Adam,
    best: Option<(f64, Tensor)>,
}

impl DreamBatch {
    /// N(0, 1) noise of shape targets×3×height×width (the normalised space), on `device`.
    pub fn new(targets: &[i64], height: usize, width: usize, device: Device) -> Self {
        let shape = [targets.len() as i64, 3, height as i64, width as i64];
        Self::from_images(
            Tensor::randn(shape, (Kind::Float, device)),
            Tensor::from_slice(targets).to_device(device),
        )
    }

    /// Like [`DreamBatch::new`], with the noise drawn from `rng` (Box–Muller on the CPU)
    /// instead of torch's global generator: the starting images of a batch are then a
    /// function of the batch's own random stream, so batch b starts the same whether the
    /// run dreaming it was resumed or not, and on any device.
    pub fn seeded(
        targets: &[i64],
        height: usize,
        width: usize,
        device: Device,
        rng: &mut impl Rng,
    ) -> Self {
        let n = targets.len() * 3 * height * width;
        let mut noise = Vec::with_capacity(n + 1);
        while noise.len() < n {
            let u1 = 1.0 - rng.gen::<f64>(); // (0, 1]: the logarithm stays finite
            let u2 = rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
            noise.extend([(r * cos) as f32, (r * sin) as f32]);
        }
        noise.truncate(n);
        let shape = [targets.len() as i64, 3, height as i64, width as i64];
        Self::from_images(
            Tensor::from_slice(&noise).view(shape).to_device(device),
            Tensor::from_slice(targets).to_device(device),
        )
    }

    /// A batch starting from given images (normalised, N×3×H×W).
    pub fn from_images(images: Tensor, targets: Tensor) -> Self {
        let images = images.detach().set_requires_grad(true);
        Self {
            adam: Adam::new(&images),
            images,
            targets,
            best: None,
        }
    }

    /// The kept images (normalised) and their loss, once a full-size iteration ran.
    pub fn best(&self) -> Option<(f64, &Tensor)> {
        self.best.as_ref().map(|(l, t)| (*l, t))
    }
}

/// A frozen teacher and the loss's coefficients.
pub struct Inverter<'a> {
    teacher: &'a ReidModel,
    pub coefficients: Coefficients,
    range: (Tensor, Tensor),
}

impl<'a> Inverter<'a> {
    /// Freezes `teacher`: from here on only images receive gradients.
    pub fn new(teacher: &'a ReidModel, coefficients: Coefficients) -> Self {
        teacher.freeze();
        Self {
            teacher,
            coefficients,
            range: channel_range(teacher.device()),
        }
    }

    /// One iteration: pool (low-res stage), roll by `shift` (rows, columns) and optionally
    /// flip the images, forward the teacher in eval mode, compute the loss, back-propagate
    /// into the images only, take an Adam step at `lr`, clamp every channel to its image
    /// range, and at full size keep the images if the loss is the lowest so far. Like the reference, the images kept are
    /// those after this iteration's update (the loss was measured before it).
    pub fn step(
        &self,
        batch: &mut DreamBatch,
        stage: Stage,
        lr: f64,
        shift: (i64, i64),
        flip: bool,
    ) -> StepReport {
        let c = &self.coefficients;
        let x = match stage {
            Stage::LowRes => {
                batch
                    .images
                    .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
            }
            Stage::Blocks(f) => blocks(&batch.images, f),
            Stage::FullRes => batch.images.shallow_clone(),
        };
        let x = if shift == (0, 0) {
            x
        } else {
            x.roll([shift.0, shift.1], [2, 3])
        };
        let x = if flip { x.flip([3]) } else { x };
        let (out, stats) = self.teacher.forward_with_bn_stats(&x, false);
        let ce = out.logits.cross_entropy_for_logits(&batch.targets);
        let bn = bn::bn_statistics_loss(&stats, c.first_bn_multiplier) * c.r_feature;
        let prior = ImagePrior::of(&x).total(&c.prior);
        let total = &ce * c.main_loss_multiplier + &bn + &prior;
        let grad = Tensor::run_backward(&[&total], &[&batch.images], false, false)
            .pop()
            .expect("one input, one gradient");
        let accuracy = out
            .logits
            .detach()
            .argmax(1, false)
            .eq_tensor(&batch.targets)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        // One device→host transfer for all five numbers.
        let parts = [&total, &ce, &bn, &prior, &accuracy].map(|t| t.detach().to_kind(Kind::Double));
        let v = Vec::<f64>::try_from(Tensor::stack(&parts, 0)).expect("five doubles");
        let report = StepReport {
            total: v[0],
            ce: v[1],
            bn: v[2],
            prior: v[3],
            accuracy: v[4],
        };
        drop((out, stats, x));
        batch.adam.step(&batch.images, &grad, lr);
        tch::no_grad(|| {
            let _ = batch
                .images
                .shallow_clone()
                .clamp_tensor_(Some(&self.range.0), Some(&self.range.1));
        });
        if stage == Stage::FullRes && batch.best.as_ref().is_none_or(|(l, _)| report.total < *l) {
            let images = batch.images.detach();
            match &mut batch.best {
                Some((l, kept)) => {
                    *l = report.total;
                    kept.copy_(&images);
                }
                None => batch.best = Some((report.total, images.copy())),
            }
        }
        report
    }

    /// Runs both stages on `batch` (flip decisions from `rng`, p 0.5 per iteration),
    /// reporting every iteration to `on_step`; returns the kept images (normalised).
    pub fn dream(
        &self,
        batch: &mut DreamBatch,
        stages: &Stages,
        rng: &mut impl Rng,
        mut on_step: impl FnMut(&Iteration),
    ) -> Result<Tensor> {
        let low_res = match stages.coarse {
            0 => Stage::LowRes,
            f => Stage::Blocks(f as i64),
        };
        for (stage, iters) in [
            (low_res, stages.low_res_iters),
            (Stage::FullRes, stages.full_res_iters),
        ] {
            if let (Stage::Blocks(f), true) = (stage, iters > 0) {
                // The starting noise, averaged over each block: the images become blocks.
                tch::no_grad(|| {
                    batch
                        .images
                        .shallow_clone()
                        .copy_(&blocks(&batch.images, f));
                });
            }
            // The roll's reach at this stage's resolution.
            let reach = match stage {
                Stage::LowRes => stages.jitter / 2,
                Stage::Blocks(_) | Stage::FullRes => stages.jitter,
            } as i64;
            for it in 0..iters {
                let lr = stage_lr(stages.lr, it, iters, stages.warmup_iters);
                // Offsets are drawn only when asked for: without jitter the stream, and
                // so every flip, is the reference's.
                let shift = if stages.jitter > 0 {
                    (rng.gen_range(-reach..=reach), rng.gen_range(-reach..=reach))
                } else {
                    (0, 0)
                };
                let flip = rng.gen::<f64>() > 0.5;
                let report = self.step(batch, stage, lr, shift, flip);
                on_step(&Iteration {
                    stage,
                    iteration: it,
                    stage_iters: iters,
                    lr,
                    report,
                });
            }
        }
        match batch.best() {
            Some((_, images)) => Ok(images.shallow_clone()),
            None if stages.full_res_iters == 0 => {
                crate::bad_setting!(
                    crate::error::Setting::FullResIters,
                    0,
                    "images are kept from the full-size stage only"
                )
            }
            None => bail!(
                "the loss was never finite in the full-size stage (it diverged); try a smaller image learning rate"
            ),
        }
    }

    /// Fraction of `images` (normalised) the teacher classifies as `targets`.
    pub fn accuracy(&self, images: &Tensor, targets: &Tensor) -> f64 {
        tch::no_grad(|| {
            let logits = self.teacher.forward(images, false).logits;
            logits
                .argmax(1, false)
                .eq_tensor(targets)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }
}
