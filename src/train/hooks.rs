//! What the training loop does around its steps, as hooks ([`Hook`]), in the manner of
//! fast-reid's `HookBase`: progress and `log.txt`, periodic evaluation, checkpoints,
//! `metrics.csv` and its picture. The loop ([`super::fit::fit`]) only steps and runs them
//! in order; a new side effect (a distributed run's rank-0 writer, TensorBoard) is one more
//! hook.

use super::fit::{EpochEval, FitConfig};
use super::metrics_csv::{self, MetricsCsv};
use super::optimizer::Optimizer;
use super::parallel::{Ranks, Replicas};
use crate::eval::{features::OutputFeature, TestSet};
use crate::logging::Logger;
use crate::model::ReidModel;
use crate::progress::Progress;
use anyhow::Result;
use std::path::PathBuf;

/// What a hook sees after every step.
pub struct StepEnd<'a> {
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done in this epoch (1-based) and the epoch's number of steps.
    pub step: usize,
    pub steps: usize,
    pub names: &'a [&'static str],
    /// The step's loss terms, in `names`' order.
    pub losses: &'a [f64],
    pub lr: f64,
    pub images_per_second: f64,
}

/// What hooks see, and add to, at the end of an epoch.
pub struct EpochEnd<'a> {
    pub epoch: usize,
    pub epochs: usize,
    pub lr: f64,
    pub names: &'a [&'static str],
    /// The epoch's mean of every loss term.
    pub means: Vec<f64>,
    pub steps: usize,
    pub images_per_second: f64,
    pub seconds: f64,
    pub model: &'a ReidModel,
    pub opt: &'a Optimizer,
    /// The evaluation, on the epochs the evaluation hook evaluates (set by it, read by the
    /// hooks after it).
    pub eval: Option<EpochEval>,
}

/// Something done around the loop's steps. Every method does nothing unless a hook says
/// otherwise; an error ends the run.
pub trait Hook {
    /// Before the first epoch, with the names of the step's loss terms.
    fn before_train(&mut self, _names: &[&'static str]) -> Result<()> {
        Ok(())
    }
    fn before_epoch(&mut self, _epoch: usize, _epochs: usize, _steps: usize) -> Result<()> {
        Ok(())
    }
    fn after_step(&mut self, _end: &StepEnd) -> Result<()> {
        Ok(())
    }
    fn after_epoch(&mut self, _end: &mut EpochEnd) -> Result<()> {
        Ok(())
    }
}

/// The hooks of a run, run in order.
pub struct Hooks<'a>(pub Vec<Box<dyn Hook + 'a>>);

impl<'a> Hooks<'a> {
    /// What every training stage does: progress and the log, evaluation every
    /// `evaluate_every` epochs and at the last, a checkpoint every epoch (numbered every
    /// `save_freq`), a `metrics.csv` row, and `curves.png` redrawn.
    ///
    /// In a data-parallel run (`ranks`), the ranks check that their models are still one
    /// after every epoch and share the evaluation's feature extraction; rank 0 alone
    /// shows progress, scores and writes (the others log to their own `log-rank<r>.txt`).
    pub fn standard(
        cfg: &'a FitConfig,
        test_sets: &'a [TestSet],
        log: &'a Logger,
        ranks: Option<&'a Ranks>,
    ) -> Self {
        let csv = cfg.logs_dir.join(metrics_csv::FILE);
        let writes = ranks.is_none_or(|r| r.rank() == 0);
        let mut hooks: Vec<Box<dyn Hook + 'a>> = vec![Box::new(Progressing {
            log,
            bar: None,
            shows: writes,
        })];
        if let Some(ranks) = ranks {
            hooks.push(Box::new(Replicas {
                ranks,
                log,
                exchanged: 0.0,
            }));
        }
        hooks.push(Box::new(Evaluating {
            test_sets,
            every: cfg.evaluate_every,
            batch_size: cfg.eval_batch_size,
            log,
            ranks: ranks.map(|r| &*r.group),
        }));
        if !writes {
            return Self(hooks);
        }
        hooks.extend::<[Box<dyn Hook + 'a>; 3]>([
            Box::new(Checkpointing { cfg }),
            Box::new(Metrics {
                csv: csv.clone(),
                columns: Vec::new(),
                test_sets,
            }),
            Box::new(Curves {
                csv,
                png: cfg.logs_dir.join("curves.png"),
                log,
            }),
        ]);
        Self(hooks)
    }

    /// Runs `f` on every hook, in order, stopping at the first error.
    pub fn each(&mut self, mut f: impl FnMut(&mut dyn Hook) -> Result<()>) -> Result<()> {
        self.0.iter_mut().try_for_each(|h| f(h.as_mut()))
    }
}

/// The terms of a step or an epoch, `name value` each.
fn terms(names: &[&str], values: &[f64], decimals: usize) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n} {v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The epoch's bar (its ETA) and every step in `log.txt`; the epoch's means in the log
/// and on the terminal.
struct Progressing<'a> {
    log: &'a Logger,
    bar: Option<Progress<'a>>,
    /// Whether the terminal shows the bar (the only process, or rank 0).
    shows: bool,
}

impl Hook for Progressing<'_> {
    fn before_epoch(&mut self, epoch: usize, epochs: usize, steps: usize) -> Result<()> {
        if !self.shows {
            return Ok(());
        }
        self.bar = Some(Progress::new(
            self.log,
            steps as u64,
            format!("epoch {epoch}/{epochs}"),
        ));
        Ok(())
    }

    fn after_step(&mut self, s: &StepEnd) -> Result<()> {
        let terms = terms(s.names, s.losses, 3);
        self.log.record(format!(
            "epoch {}/{} step {}/{}: {terms}",
            s.epoch, s.epochs, s.step, s.steps
        ));
        if let Some(bar) = &self.bar {
            bar.tick(format!(
                "{terms} lr {:.2e} {:.1} img/s",
                s.lr, s.images_per_second
            ));
        }
        Ok(())
    }

    fn after_epoch(&mut self, e: &mut EpochEnd) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        self.log.line(format!(
            "epoch {}/{}: {} lr {:.2e} ({} steps, {:.1} img/s, {:.1} s)",
            e.epoch,
            e.epochs,
            terms(e.names, &e.means, 4),
            e.lr,
            e.steps,
            e.images_per_second,
            e.seconds
        ));
        Ok(())
    }
}

/// Evaluation on the test sets every `every` epochs and at the last (never with 0).
struct Evaluating<'a> {
    test_sets: &'a [TestSet],
    every: usize,
    batch_size: usize,
    log: &'a Logger,
    ranks: Option<&'a crate::dist::Group>,
}

impl Hook for Evaluating<'_> {
    fn after_epoch(&mut self, e: &mut EpochEnd) -> Result<()> {
        let due = self.every > 0 && (e.epoch.is_multiple_of(self.every) || e.epoch == e.epochs);
        if !due || self.test_sets.is_empty() {
            return Ok(());
        }
        let mut results = Vec::new();
        for t in self.test_sets {
            let feature = OutputFeature::Embedding;
            let Some(m) = t.evaluate_among(e.model, self.batch_size, feature, self.ranks)? else {
                continue; // scored by rank 0
            };
            self.log.line(format!(
                "  {}: mAP {:.1}%  rank-1 {:.1}%  rank-5 {:.1}%  rank-10 {:.1}%  ({} queries)",
                t.name,
                100.0 * m.map,
                100.0 * m.rank(1),
                100.0 * m.rank(5),
                100.0 * m.rank(10),
                m.valid_queries
            ));
            results.push((t.name.clone(), m));
        }
        e.eval = (!results.is_empty()).then_some(results);
        Ok(())
    }
}

/// The checkpoint, every epoch; a numbered copy every `save_freq` epochs.
struct Checkpointing<'a> {
    cfg: &'a FitConfig,
}

impl Hook for Checkpointing<'_> {
    fn after_epoch(&mut self, e: &mut EpochEnd) -> Result<()> {
        let numbered = self.cfg.save_freq > 0 && e.epoch.is_multiple_of(self.cfg.save_freq);
        super::checkpoint::save_checkpoint(self.cfg, e.model, e.opt, e.epoch, numbered)
    }
}

/// One `metrics.csv` row per epoch: lr, the loss means, and mAP and rank-1 of every test
/// set on the epochs that evaluate.
struct Metrics<'a> {
    csv: PathBuf,
    columns: Vec<String>,
    test_sets: &'a [TestSet],
}

impl Hook for Metrics<'_> {
    fn before_train(&mut self, names: &[&'static str]) -> Result<()> {
        let tests = self.test_sets.iter().map(|t| t.name.as_str());
        self.columns = MetricsCsv::columns(names, tests);
        Ok(())
    }

    fn after_epoch(&mut self, e: &mut EpochEnd) -> Result<()> {
        let mut row = vec![Some(e.epoch as f64), Some(e.lr)];
        row.extend(e.means.iter().map(|&m| Some(m)));
        match &e.eval {
            Some(results) => {
                row.extend(
                    results
                        .iter()
                        .flat_map(|(_, m)| [Some(m.map), Some(m.rank(1))]),
                );
            }
            None => row.extend(vec![None; 2 * self.test_sets.len()]),
        }
        MetricsCsv::record(&self.csv, &self.columns, row)
    }
}

/// `curves.png`, redrawn from `metrics.csv` every epoch. A picture is a convenience:
/// failing to draw it does not end a training run.
struct Curves<'a> {
    csv: PathBuf,
    png: PathBuf,
    log: &'a Logger,
}

impl Hook for Curves<'_> {
    fn after_epoch(&mut self, _: &mut EpochEnd) -> Result<()> {
        if let Err(err) = crate::plot::training_curves(&self.csv, &self.png) {
            self.log
                .line(format!("warning: no curves.png this epoch: {err:#}"));
        }
        Ok(())
    }
}
