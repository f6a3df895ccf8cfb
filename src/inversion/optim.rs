//! The image optimiser of DeepInversion (docs/method.md §7): Adam (betas 0.5/0.9, eps 1e-8) on the
//! image tensor with PyTorch's update rule, and the per-stage warm-up + cosine learning rate.
//! One Adam runs through both stages of a batch: its moments and step count carry over
//! from the pooled stage to the full-size one, as the reference's single optimiser does.

use crate::train::optimizer::adam_update;
use tch::Tensor;

/// Adam's coefficients for the images (the reference's, not the training optimiser's).
pub const BETAS: (f64, f64) = (0.5, 0.9);
pub const EPS: f64 = 1e-8;
/// The reference's warm-up of each stage's learning rate, in iterations (hard-coded there).
pub const WARMUP: usize = 100;

/// lr at iteration `it` (0-based) of a stage of `iters` iterations: linear warm-up over
/// `warmup` iterations, then a half cosine down to 0 at the stage's end. A stage no longer
/// than its warm-up never leaves it (and ends at the full rate), as in the reference.
pub fn stage_lr(base: f64, it: usize, iters: usize, warmup: usize) -> f64 {
    if it < warmup {
        base * (it + 1) as f64 / warmup as f64
    } else {
        let (e, es) = ((it - warmup) as f64, (iters - warmup) as f64);
        0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
    }
}

/// Adam state for one tensor, updated in place (no weight decay, no amsgrad).
pub struct Adam {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: i32,
}

impl Adam {
    pub fn new(like: &Tensor) -> Self {
        Self {
            exp_avg: like.zeros_like(),
            exp_avg_sq: like.zeros_like(),
            steps: 0,
        }
    }

    pub fn steps(&self) -> i32 {
        self.steps
    }

    /// One step of the shared Adam rule ([`adam_update`]) with the images' coefficients.
    pub fn step(&mut self, param: &Tensor, grad: &Tensor, lr: f64) {
        self.steps += 1;
        let moments = (&mut self.exp_avg, &mut self.exp_avg_sq);
        adam_update(param, grad, moments, self.steps.into(), lr, BETAS, EPS);
    }
}
