//! The one training loop of `train`, `incremental` and `incremental-x`: epochs, the lr
//! schedule and the steps. Each subcommand supplies its step; what happens around the
//! steps (progress and `log.txt`, periodic evaluation, checkpoints, `metrics.csv` and its
//! picture `curves.png`) are hooks ([`super::hooks`]), as in fast-reid's trainer.

pub use super::checkpoint::{restore, save_checkpoint};
pub use super::hooks::{EpochEnd, Hook, Hooks, StepEnd};
use super::optimizer::Optimizer;
use super::schedule::learning_rate;
use crate::model::ReidModel;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

/// One optimisation step of a subcommand, on its kind of batch.
pub trait Step {
    type Batch;
    /// Names of the loss terms the step reports (`ce`, `triplet`, …).
    fn loss_names(&self) -> Vec<&'static str>;
    /// Images the batch holds (for images/s).
    fn batch_images(&self, batch: &Self::Batch) -> usize;
    /// Forward, backward, optimiser step; returns the loss terms as 0-d tensors on the
    /// model's device (detached), which the loop reads when it chooses ([`read_every`]).
    fn step(
        &mut self,
        model: &ReidModel,
        opt: &mut Optimizer,
        batch: Self::Batch,
    ) -> Result<Vec<Tensor>>;
}

/// The splits of a step's batches among the ranks of a data-parallel run (none in one
/// process), for [`ReidModel::forward_batches`].
pub fn shards<'a>(batches: &[&'a crate::data::Batch]) -> Vec<&'a crate::dist::Shard> {
    batches.iter().filter_map(|b| b.shard.as_ref()).collect()
}

/// A step's loss terms as [`Step::step`] returns them.
pub fn reported(terms: &[&Tensor]) -> Vec<Tensor> {
    terms.iter().map(|t| t.detach()).collect()
}

/// Steps between two reads of the losses on `device`. Reading a loss waits for the GPU to
/// finish the step; on CUDA the loop reads ten steps' losses in one copy, so the host
/// queues the next steps meanwhile (a non-finite loss still stops the run, up to ten steps
/// later, before any checkpoint). On the CPU every step is read: nothing runs ahead.
pub fn read_every(device: tch::Device) -> usize {
    if device.is_cuda() {
        10
    } else {
        1
    }
}

/// Where a run writes and how long it goes.
pub struct FitConfig {
    pub logs_dir: PathBuf,
    pub epochs: usize,
    /// First epoch to run (1-based; > 1 when resuming).
    pub start_epoch: usize,
    pub base_lr: f64,
    pub warmup: usize,
    pub milestones: Vec<usize>,
    pub evaluate_every: usize,
    pub save_freq: usize,
    pub eval_batch_size: usize,
    /// Arguments of the run, stored in every checkpoint.
    pub args: String,
    /// How many ranks' batches make one step's images (`--local-bn`: each rank's batch is
    /// its own share; 1 otherwise), so that images/s is the whole run's.
    pub batch_shares: usize,
}

/// Evaluation results of one epoch on the named test sets.
pub type EpochEval = Vec<(String, crate::eval::metrics::Metrics)>;

/// The values of several steps' loss terms, read from the device in one copy.
fn read_losses(pending: &[Vec<Tensor>]) -> Result<Vec<Vec<f64>>> {
    let Some(first) = pending.first() else {
        return Ok(Vec::new());
    };
    let terms = first.len();
    if terms == 0 {
        return Ok(vec![Vec::new(); pending.len()]);
    }
    let all: Vec<Tensor> = pending
        .iter()
        .flatten()
        .map(|t| t.to_kind(tch::Kind::Double))
        .collect();
    let values = Vec::<f64>::try_from(Tensor::stack(&all, 0).to_device(tch::Device::Cpu))?;
    Ok(values.chunks(terms).map(<[f64]>::to_vec).collect())
}

/// One epoch's running sums, as its steps' losses are read.
struct Epoch {
    epoch: usize,
    batches: usize,
    sums: Vec<f64>,
    steps: usize,
    images: usize,
    start: Instant,
}

impl Epoch {
    /// Adds one step's losses; a non-finite one ends the run before any checkpoint.
    fn add(&mut self, names: &[&'static str], losses: &[f64]) -> Result<()> {
        if let Some((name, value)) = names.iter().zip(losses).find(|(_, l)| !l.is_finite()) {
            anyhow::bail!(
                "epoch {} step {}: the {name} loss is {value}; training stopped, and the last \
                 checkpoint saved (epoch {}) is kept: try a lower learning rate",
                self.epoch,
                self.steps + 1,
                self.epoch - 1
            );
        }
        for (s, l) in self.sums.iter_mut().zip(losses) {
            *s += l;
        }
        self.steps += 1;
        Ok(())
    }

    fn images_per_second(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Runs epochs `start_epoch..=epochs` of `step`; `batches(e)` yields the batches of epoch e
/// (0-based for the data streams). Everything the loop does besides stepping (progress,
/// evaluation, checkpoints, `metrics.csv`, curves) is a hook's ([`Hooks::standard`]), run
/// in order after every step and epoch. Returns the last evaluation, if any.
pub fn fit<S, I>(
    cfg: &FitConfig,
    model: &ReidModel,
    opt: &mut Optimizer,
    step: &mut S,
    mut batches: impl FnMut(u64) -> I,
    hooks: &mut Hooks,
) -> Result<Option<EpochEval>>
where
    S: Step,
    I: ExactSizeIterator<Item = Result<S::Batch>>,
{
    let names = step.loss_names();
    hooks.each(|h| h.before_train(&names))?;
    let mut last_eval = None;
    for epoch in cfg.start_epoch..=cfg.epochs {
        let lr = learning_rate(cfg.base_lr, epoch, cfg.warmup, &cfg.milestones);
        opt.set_lr(lr);
        let iter = batches(epoch as u64 - 1);
        let mut e = Epoch {
            epoch,
            batches: iter.len(),
            sums: vec![0.0; names.len()],
            steps: 0,
            images: 0,
            start: Instant::now(),
        };
        hooks.each(|h| h.before_epoch(epoch, cfg.epochs, e.batches))?;
        let every = read_every(model.device());
        let mut pending: Vec<Vec<Tensor>> = Vec::new();
        for (i, batch) in iter.enumerate() {
            let batch = batch?;
            e.images += step.batch_images(&batch) * cfg.batch_shares.max(1);
            pending.push(step.step(model, opt, batch)?);
            if pending.len() < every && i + 1 < e.batches {
                continue;
            }
            for losses in read_losses(&std::mem::take(&mut pending))? {
                e.add(&names, &losses)?;
                let end = StepEnd {
                    epoch,
                    epochs: cfg.epochs,
                    step: e.steps,
                    steps: e.batches,
                    names: &names,
                    losses: &losses,
                    lr,
                    images_per_second: e.images_per_second(),
                };
                hooks.each(|h| h.after_step(&end))?;
            }
        }
        let mut end = EpochEnd {
            epoch,
            epochs: cfg.epochs,
            lr,
            names: &names,
            means: e.sums.iter().map(|s| s / e.steps.max(1) as f64).collect(),
            steps: e.steps,
            images_per_second: e.images_per_second(),
            seconds: e.start.elapsed().as_secs_f64(),
            model,
            opt,
            eval: None,
        };
        hooks.each(|h| h.after_epoch(&mut end))?;
        if end.eval.is_some() {
            last_eval = end.eval;
        }
    }
    Ok(last_eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_steps_losses_are_read_in_one_copy_in_step_order() {
        let step = |a: f64, b: f32| vec![Tensor::from(a), Tensor::from(b)];
        let pending = vec![step(1.5, 2.0), step(f64::NAN, 4.0), step(5.0, -6.5)];
        let got = read_losses(&pending).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], [1.5, 2.0]);
        assert!(got[1][0].is_nan() && got[1][1] == 4.0);
        assert_eq!(got[2], [5.0, -6.5]);
        assert!(read_losses(&[]).unwrap().is_empty());
        assert_eq!(read_every(tch::Device::Cpu), 1);
        assert_eq!(read_every(tch::Device::Cuda(0)), 10);
    }
}
