//! The image optimiser of DeepInversion (SPEC §7): Adam (betas 0.5/0.9, eps 1e-8) on the
//! image tensor with PyTorch's update rule, and the per-stage warm-up + cosine learning rate.
//! One Adam runs through both stages of a batch: its moments and step count carry over
//! from the pooled stage to the full-size one, as the reference's single optimiser does.

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

    /// param ← param − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε), as torch.optim.Adam.
    pub fn step(&mut self, param: &Tensor, grad: &Tensor, lr: f64) {
        let (b1, b2) = BETAS;
        self.steps += 1;
        tch::no_grad(|| {
            let _ = self.exp_avg.lerp_(grad, 1.0 - b1);
            let _ = self
                .exp_avg_sq
                .g_mul_scalar_(b2)
                .addcmul_(&(grad * (1.0 - b2)), grad);
            let bc1 = 1.0 - b1.powi(self.steps);
            let bc2 = 1.0 - b2.powi(self.steps);
            let mut denom = self.exp_avg_sq.sqrt();
            let _ = denom.g_div_scalar_(bc2.sqrt()).g_add_scalar_(EPS);
            let update = (&self.exp_avg / &denom) * (-lr / bc1);
            let _ = param.shallow_clone().g_add_(&update);
        });
    }
}
