//! The one training loop of `train`, `incremental` and `incremental-x`: epochs, the lr
//! schedule, progress, checkpoints (every epoch, numbered every `save_freq`), resume,
//! periodic evaluation, `log.txt`, `metrics.csv` and its picture `curves.png`. Each
//! subcommand supplies its step.

pub use super::checkpoint::{restore, save_checkpoint};
use super::metrics_csv::{self, MetricsCsv};
use super::optimizer::Optimizer;
use super::schedule::learning_rate;
use crate::eval::{features::OutputFeature, TestSet};
use crate::logging::Logger;
use crate::model::ReidModel;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
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
}

/// Evaluation results of one epoch on the named test sets.
pub type EpochEval = Vec<(String, crate::eval::metrics::Metrics)>;

fn bar(len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:25.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_prefix(format!("{epoch}/{epochs}"));
    pb
}

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

/// Runs epochs `start_epoch..=epochs`; `batches(e)` yields the batches of epoch e (0-based
/// for the data streams). Returns the last evaluation, if any.
pub fn fit<S, I>(
    cfg: &FitConfig,
    model: &ReidModel,
    opt: &mut Optimizer,
    step: &mut S,
    mut batches: impl FnMut(u64) -> I,
    test_sets: &[TestSet],
    log: &Logger,
) -> Result<Option<EpochEval>>
where
    S: Step,
    I: ExactSizeIterator<Item = Result<S::Batch>>,
{
    let names = step.loss_names();
    let csv = cfg.logs_dir.join(metrics_csv::FILE);
    let columns = MetricsCsv::columns(&names, test_sets.iter().map(|t| t.name.as_str()));
    let mut last_eval = None;
    for epoch in cfg.start_epoch..=cfg.epochs {
        let lr = learning_rate(cfg.base_lr, epoch, cfg.warmup, &cfg.milestones);
        opt.set_lr(lr);
        let iter = batches(epoch as u64 - 1);
        let pb = bar(iter.len() as u64, epoch, cfg.epochs);
        let start = Instant::now();
        let (mut sums, mut steps, mut images) = (vec![0.0; names.len()], 0usize, 0usize);
        let len = iter.len();
        let every = read_every(model.device());
        let mut pending: Vec<Vec<Tensor>> = Vec::new();
        for (i, batch) in iter.enumerate() {
            let batch = batch?;
            images += step.batch_images(&batch);
            pending.push(step.step(model, opt, batch)?);
            if pending.len() < every && i + 1 < len {
                continue;
            }
            for losses in read_losses(&std::mem::take(&mut pending))? {
                if let Some((name, value)) = names.iter().zip(&losses).find(|(_, l)| !l.is_finite())
                {
                    anyhow::bail!(
                        "epoch {epoch} step {}: the {name} loss is {value}; training stopped, \
                         and the last checkpoint saved (epoch {}) is kept: try a lower learning rate",
                        steps + 1,
                        epoch - 1
                    );
                }
                for (s, l) in sums.iter_mut().zip(&losses) {
                    *s += l;
                }
                steps += 1;
                let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
                let terms: Vec<String> = names
                    .iter()
                    .zip(&losses)
                    .map(|(n, l)| format!("{n} {l:.3}"))
                    .collect();
                let terms = terms.join(" ");
                log.record(format!(
                    "epoch {epoch}/{} step {steps}/{len}: {terms}",
                    cfg.epochs
                ));
                pb.set_message(format!("{terms} lr {lr:.2e} {rate:.1} img/s"));
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        let means: Vec<f64> = sums.iter().map(|s| s / steps.max(1) as f64).collect();
        let terms: Vec<String> = names
            .iter()
            .zip(&means)
            .map(|(n, l)| format!("{n} {l:.4}"))
            .collect();
        log.line(format!(
            "epoch {epoch}/{}: {} lr {lr:.2e} ({steps} steps, {:.1} img/s, {:.1} s)",
            cfg.epochs,
            terms.join(" "),
            images as f64 / start.elapsed().as_secs_f64().max(1e-9),
            start.elapsed().as_secs_f64()
        ));
        let mut row = vec![Some(epoch as f64), Some(lr)];
        row.extend(means.iter().map(|&m| Some(m)));
        let evaluate =
            cfg.evaluate_every > 0 && (epoch % cfg.evaluate_every == 0 || epoch == cfg.epochs);
        if evaluate && !test_sets.is_empty() {
            let mut results = Vec::new();
            for t in test_sets {
                let m = t.evaluate(model, cfg.eval_batch_size, OutputFeature::Embedding)?;
                log.line(format!(
                    "  {}: mAP {:.1}%  rank-1 {:.1}%  rank-5 {:.1}%  rank-10 {:.1}%  ({} queries)",
                    t.name,
                    100.0 * m.map,
                    100.0 * m.rank(1),
                    100.0 * m.rank(5),
                    100.0 * m.rank(10),
                    m.valid_queries
                ));
                row.extend([Some(m.map), Some(m.rank(1))]);
                results.push((t.name.clone(), m));
            }
            last_eval = Some(results);
        } else {
            row.extend(vec![None; 2 * test_sets.len()]);
        }
        save_checkpoint(
            cfg,
            model,
            opt,
            epoch,
            cfg.save_freq > 0 && epoch % cfg.save_freq == 0,
        )?;
        MetricsCsv::record(&csv, &columns, row)?;
        // A picture is a convenience: failing to draw it must not end a training run.
        let curves = cfg.logs_dir.join("curves.png");
        if let Err(err) = crate::plot::training_curves(&csv, &curves) {
            log.line(format!("warning: no curves.png this epoch: {err:#}"));
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
