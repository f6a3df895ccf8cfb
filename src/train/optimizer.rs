//! SGD (momentum 0.9, Nesterov, weight decay 5e-4) and Adam over the model's three
//! parameter groups, with PyTorch's update rules. Written here rather than taken from
//! libtorch so that the optimiser state (momentum buffers, Adam moments) can be saved in
//! checkpoints: a resumed run must continue exactly where the killed one stopped.

use crate::model::{Group, ReidModel};
use anyhow::{bail, Result};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub const fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "SGD",
            OptimizerKind::Adam => "Adam",
        }
    }
}

pub const MOMENTUM: f64 = 0.9;
pub const WEIGHT_DECAY: f64 = 5e-4;
pub const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAM_EPS: f64 = 1e-8;

/// One torch.optim.Adam step (no weight decay, no amsgrad) on `param` and its moments
/// `(m, v)`, in place, at step count `step` (1 first), in torch's order of operations, so
/// that both of agd's Adams round as `torch.optim.Adam` does: training's
/// ([`Optimizer::step`]) and DeepInversion's image optimiser (`inversion::optim`).
/// param ← param − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
pub fn adam_update(
    param: &Tensor,
    grad: &Tensor,
    (exp_avg, exp_avg_sq): (&mut Tensor, &mut Tensor),
    step: i64,
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
) {
    tch::no_grad(|| {
        let _ = exp_avg.lerp_(grad, 1.0 - b1);
        let _ = exp_avg_sq
            .g_mul_scalar_(b2)
            .addcmul_(&(grad * (1.0 - b2)), grad);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        let mut denom = exp_avg_sq.sqrt();
        let _ = denom.g_div_scalar_(bc2.sqrt()).g_add_scalar_(eps);
        let update = (&*exp_avg / &denom) * (-lr / bc1);
        let _ = param.shallow_clone().g_add_(&update);
    });
}

struct Slot {
    name: String,
    param: Tensor,
    group: Group,
    /// SGD: momentum buffer. Adam: first moment.
    first: Option<Tensor>,
    /// Adam: second moment.
    second: Option<Tensor>,
}

pub struct Optimizer {
    pub kind: OptimizerKind,
    slots: Vec<Slot>,
    base_lr: f64,
    /// Adam's step count (bias correction).
    steps: i64,
}

impl Optimizer {
    pub fn new(model: &ReidModel, kind: OptimizerKind) -> Self {
        let slots = Group::ALL
            .iter()
            .flat_map(|&g| model.params.trainable(g).map(move |e| (g, e)))
            .map(|(group, e)| Slot {
                name: e.name.clone(),
                param: e.tensor.shallow_clone(),
                group,
                first: None,
                second: None,
            })
            .collect();
        Self {
            kind,
            slots,
            base_lr: 0.0,
            steps: 0,
        }
    }

    /// Sets the base rate; each group runs at base × its multiplier.
    pub fn set_lr(&mut self, lr: f64) {
        self.base_lr = lr;
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.steps += 1;
        let (kind, base, steps) = (self.kind, self.base_lr, self.steps);
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = base * s.group.lr_mult();
                match kind {
                    OptimizerKind::Sgd => {
                        let d_p = &grad + &s.param * WEIGHT_DECAY;
                        let buf = match s.first.take() {
                            None => d_p.copy(),
                            Some(mut b) => {
                                let _ = b.g_mul_scalar_(MOMENTUM).g_add_(&d_p);
                                b
                            }
                        };
                        let update = &d_p + &buf * MOMENTUM;
                        s.first = Some(buf);
                        let _ = s.param.g_add_(&(update * -lr));
                    }
                    OptimizerKind::Adam => {
                        let m = s.first.get_or_insert_with(|| grad.zeros_like());
                        let v = s.second.get_or_insert_with(|| grad.zeros_like());
                        adam_update(&s.param, &grad, (m, v), steps, lr, ADAM_BETAS, ADAM_EPS);
                    }
                }
            }
        });
    }

    /// State tensors for a checkpoint: `optimizer.<first|second>.<param name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            if let Some(t) = &s.first {
                out.push((format!("optimizer.first.{}", s.name), t.shallow_clone()));
            }
            if let Some(t) = &s.second {
                out.push((format!("optimizer.second.{}", s.name), t.shallow_clone()));
            }
        }
        out
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Restores state saved by [`Self::state_tensors`] (and the step count).
    pub fn load_state(
        &mut self,
        lookup: impl Fn(&str) -> Option<Tensor>,
        steps: i64,
    ) -> Result<()> {
        let device = self.slots.first().map(|s| s.param.device());
        for s in &mut self.slots {
            for (which, slot) in [("first", &mut s.first), ("second", &mut s.second)] {
                if let Some(t) = lookup(&format!("optimizer.{which}.{}", s.name)) {
                    if t.size() != s.param.size() {
                        bail!(
                            "optimizer state {which}.{}: shape {:?}, parameter has {:?}",
                            s.name,
                            t.size(),
                            s.param.size()
                        );
                    }
                    *slot = Some(t.to_device(device.unwrap_or(tch::Device::Cpu)));
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}
