//! The training stages as library functions: [`run_base`] (`agd train`) and
//! [`run_incremental`] (`agd incremental`, `agd incremental-x`). Each opens its logs
//! folder, records the command line that reproduces it, and runs the one loop
//! ([`super::fit::fit`]) with its step.

use super::base::BaseStep;
use super::fit::{fit, EpochEval, FitConfig, Hooks};
use super::incremental::{IncrementalStep, NewDataStep, Views};
use super::optimizer::Optimizer;
use super::parallel::Ranks;
use super::plan::{BasePlan, IncrementalPlan, Learning, LoopPlan, OldImages};
use crate::bad_setting;
use crate::data::{Dreamed, Exemplars, ImageStore, PairedLoader, Record, ReidDataset, TrainLoader};
use crate::error::{AboutExt, Setting};
use crate::eval::TestSet;
use crate::logging::Logger;
use crate::loss::distill::Distillation;
use crate::model::checkpoint::{resolve, Checkpoint, LATEST};
use crate::model::ReidModel;
use crate::stage::{open_log, Argv, StagePlan};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use tch::Device;

/// What every training stage does once its inputs are read: pick the device, open the log
/// (recording the command line), seed the run, keep freed memory.
///
/// In a data-parallel run rank 0 claims the logs folder and the others then log beside it
/// (`log-rank<r>.txt`); a rank that fails here stops them all. Every rank takes rank 0's
/// seed.
fn start<P: StagePlan>(
    r: &LoopPlan,
    plan: &P,
    adopt: bool,
    ranks: Option<&Ranks>,
) -> Result<(Device, Logger, u64)> {
    let (device, determinism) = match ranks {
        Some(ranks) => (ranks.device, ranks.determinism.clone()),
        None => r.setup.device.select()?,
    };
    let log = match ranks {
        None => open_log(&r.logs_dir, plan, adopt, true)?,
        Some(ranks) if ranks.rank() == 0 => {
            ranks
                .group
                .all_ok(open_log(&r.logs_dir, plan, adopt, true))?
        }
        Some(ranks) => {
            ranks.group.all_ok(Ok(()))?;
            Logger::open_rank(&r.logs_dir, ranks.rank())?
        }
    };
    if let Some(note) = determinism {
        log.line(note);
    }
    crate::alloc::retain_freed_memory();
    let seed = match ranks {
        Some(ranks) => ranks.seed(r.setup.seed, &log, device)?,
        None => crate::stage::seed(r.setup.seed, &log),
    };
    Ok((device, log, seed))
}

/// How the run's models compute, logged when it is not float32 NCHW.
fn compute(r: &LoopPlan, device: Device, log: &Logger) -> crate::model::Compute {
    let c = r.setup.device.compute.on(device);
    if let Some(line) = c.describe() {
        log.line(line);
    }
    c
}

/// The checkpoint `resume` names, read before anything is written.
fn resumed(r: &LoopPlan) -> Result<Option<Checkpoint>> {
    r.resume
        .as_ref()
        .map(|path| Checkpoint::load(&resolve(path, Setting::Resume)?))
        .transpose()
}

/// A run writes its checkpoint into its logs folder every epoch, so it may start there only
/// when that folder holds no checkpoint or it continues that very one: a forgotten
/// `--resume` would replace a finished run's checkpoint with epoch 1 and erase its metrics.
/// Returns whether the run continues the folder's own checkpoint.
fn check_logs_dir(r: &LoopPlan, resumed: Option<&Checkpoint>) -> Result<bool> {
    let own = r.logs_dir.join(LATEST);
    if !own.is_file() {
        return Ok(false);
    }
    let same = |p: &std::path::Path| matches!((p.canonicalize(), own.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if resumed.is_some_and(|ck| same(&ck.path)) {
        return Ok(true);
    }
    Err(crate::error::Error::from(crate::error::AnotherRun {
        dir: r.logs_dir.clone(),
        epoch: crate::model::checkpoint::recorded_epoch(&own),
    })
    .into())
}

/// Continues a run from its checkpoint: weights, optimiser state, next epoch (1 without).
fn resume(
    ck: Option<&Checkpoint>,
    model: &mut ReidModel,
    opt: &mut Optimizer,
    log: &Logger,
) -> Result<usize> {
    let Some(ck) = ck else {
        return Ok(1);
    };
    let epoch = super::fit::restore(ck, model, opt)?;
    log.line(format!(
        "resumed from {} after epoch {}",
        ck.path.display(),
        epoch
    ));
    Ok(epoch + 1)
}

/// What a training stage hands the loop: its config, model, optimiser and hooks; each
/// way of learning then gives only its step and batches.
struct Training<'a> {
    cfg: &'a FitConfig,
    model: &'a ReidModel,
    opt: &'a mut Optimizer,
    hooks: Hooks<'a>,
}

impl<'a> Training<'a> {
    /// With the standard hooks ([`Hooks::standard`]).
    fn new(
        cfg: &'a FitConfig,
        model: &'a ReidModel,
        opt: &'a mut Optimizer,
        test_sets: &'a [TestSet],
        log: &'a Logger,
        ranks: Option<&'a Ranks>,
    ) -> Self {
        Self {
            cfg,
            model,
            opt,
            hooks: Hooks::standard(cfg, test_sets, log, ranks),
        }
    }

    fn fit<S, I>(
        &mut self,
        step: &mut S,
        batches: impl FnMut(u64) -> I,
    ) -> Result<Option<EpochEval>>
    where
        S: super::fit::Step,
        I: ExactSizeIterator<Item = Result<S::Batch>>,
    {
        fit(
            self.cfg,
            self.model,
            self.opt,
            step,
            batches,
            &mut self.hooks,
        )
    }
}

fn fit_config(r: &LoopPlan, start_epoch: usize, argv: &Argv, ranks: Option<&Ranks>) -> FitConfig {
    FitConfig {
        logs_dir: r.logs_dir.clone(),
        epochs: r.epochs,
        start_epoch,
        base_lr: r.learning_rate,
        warmup: r.warmup,
        milestones: r.epochs_decay.clone(),
        evaluate_every: r.evaluate,
        save_freq: r.save_freq,
        eval_batch_size: 128,
        args: argv.command_line(),
        batch_shares: match ranks {
            Some(r) if !r.synchronised => r.group.world(),
            _ => 1,
        },
    }
}

/// The line a training log starts with: the data it learns from and the device.
fn describe(dataset: &ReidDataset, device: Device) -> String {
    format!(
        "{}: {} training images of {} ids, {} query, {} gallery; device {}",
        dataset.name,
        dataset.train.len(),
        dataset.num_train_ids,
        dataset.query.len(),
        dataset.gallery.len(),
        crate::device::describe(device)
    )
}

/// The test sets a run evaluates on (none when `evaluate` is 0).
fn test_sets(r: &LoopPlan, datasets: &[&ReidDataset]) -> Result<Vec<TestSet>> {
    if r.evaluate == 0 {
        return Ok(Vec::new());
    }
    datasets
        .iter()
        .map(|d| TestSet::load(d, r.setup.data.size.height, r.setup.data.size.width))
        .collect()
}

/// What every training stage does last: the final evaluation as a table, and where the
/// checkpoint is; in a data-parallel run, every rank waits for the others to finish.
fn finish(
    r: &LoopPlan,
    eval: Option<EpochEval>,
    log: &Logger,
    ranks: Option<&Ranks>,
) -> Result<Option<EpochEval>> {
    if let Some(ranks) = ranks {
        ranks.group.close()?;
    }
    if let Some(results) = &eval {
        let table = crate::report::table(
            ["dataset", "mAP", "rank-1", "rank-5", "rank-10", "rank-20"],
            results.iter().map(|(name, m)| {
                let mut row = vec![name.clone(), format!("{:.1}%", 100.0 * m.map)];
                row.extend([1, 5, 10, 20].map(|k| format!("{:.1}%", 100.0 * m.rank(k))));
                row
            }),
        );
        log.line(table.to_string());
    }
    log.line(format!("checkpoint: {}", r.logs_dir.join(LATEST).display()));
    log.succeeded();
    Ok(eval)
}

fn all_done(r: &LoopPlan, log: &Logger) -> Option<EpochEval> {
    log.line(format!("all {} epochs are done already", r.epochs));
    log.succeeded();
    None
}

/// A P×K training loader over `records`, its images decoded once at the run's size, its
/// batches pinned for `device` when that is a GPU, and split among the ranks of a
/// data-parallel run.
fn loader(
    r: &LoopPlan,
    (device, ranks): (Device, Option<&Ranks>),
    records: &[Record],
    seed: u64,
    stream_id: u64,
    what: &str,
) -> Result<TrainLoader> {
    let store = ImageStore::load(
        records,
        r.setup.data.size.height,
        r.setup.data.size.width,
        what,
    )?;
    let mut cfg = r.loader_config(seed);
    cfg.pin = Some(device).filter(|d| d.is_cuda());
    cfg.share = ranks.map(Ranks::share);
    TrainLoader::new(Arc::new(records.to_vec()), Arc::new(store), cfg, stream_id)
}

/// `agd train`: the base model on task 1 (docs/method.md §1).
/// Returns the last evaluation (none when the plan does not evaluate).
pub fn run_base(plan: &BasePlan) -> Result<Option<EpochEval>> {
    let r = &plan.run;
    r.validate()?;
    let argv = plan.argv();
    let ranks = Ranks::join(r, &argv)?;
    let ranks = ranks.as_ref();
    let resumed = resumed(r)?;
    let continues = check_logs_dir(r, resumed.as_ref())?;
    // Read before the logs folder is created: a mistyped dataset leaves no folder behind.
    let dataset = ReidDataset::load(&r.setup.data.data_root, &r.dataset)?;
    let (device, log, seed) = start(r, plan, continues, ranks)?;
    log.line(describe(&dataset, device));
    let classes = dataset.num_train_ids as i64;
    // A resumed run is the model its checkpoint holds, whatever the flags left out.
    let config = match &resumed {
        Some(ck) => r.model.for_checkpoint(ck).about(Setting::Resume)?,
        None => r.model.fresh(classes),
    };
    let mut model = ReidModel::new(crate::model::ModelConfig { classes, ..config }, device)?;
    model.compute = compute(r, device, &log);
    let mut opt = Optimizer::for_device(&model, r.optimizer);
    let start_epoch = resume(resumed.as_ref(), &mut model, &mut opt, &log)?;
    if start_epoch == 1 {
        match plan.pretrained.weights(model.config.depth)? {
            Some(path) => log.line(model.load_imagenet(&path)?),
            None => log.line("no ImageNet weights, as asked: starting from random initialisation"),
        }
    }
    if start_epoch > r.epochs {
        return Ok(all_done(r, &log));
    }
    if let Some(ranks) = ranks {
        ranks.adopt(&mut model)?;
        opt.ranks = Some(ranks.reduce());
    }
    let loader = loader(r, (device, ranks), &dataset.train, seed, 0, "train")?;
    let test_sets = test_sets(r, &[&dataset])?;
    let cfg = fit_config(r, start_epoch, &argv, ranks);
    let mut training = Training::new(&cfg, &model, &mut opt, &test_sets, &log, ranks);
    let eval = training.fit(&mut BaseStep, |e| loader.epoch(e))?;
    finish(r, eval, &log, ranks)
}

/// The distillation config and how views are mixed, checked before any data is read.
fn distillation(
    plan: &IncrementalPlan,
    learning: &Learning,
) -> Result<Option<(Distillation, Views)>> {
    let r = &plan.run;
    let algo_config = match learning {
        Learning::Distill { algo_config, .. } | Learning::NewData { algo_config } => algo_config,
        Learning::Finetune => {
            if plan.augmented {
                bail!("the fine-tuning baseline has no views to mix: it is not an augmented (incremental-x) run");
            }
            Views::check(r.peers, false)?;
            return Ok(None);
        }
    };
    let config = Distillation::load(algo_config)?;
    let cross_factor = if plan.augmented {
        Some(config.cross_factor.with_context(|| {
            format!(
                "{}: incremental-x needs `cross_factor` under `distillation` (e.g. configs/inverXion.yaml)",
                algo_config.display()
            )
        })?)
    } else {
        None
    };
    let views = Views::new(r.peers, cross_factor)?;
    Ok(Some((config, views)))
}

/// Dreamed pids are the old model's class indices: any beyond its classifier is an error.
fn check_dreamed(dreamed: &Dreamed, old_classes: i64) -> Result<()> {
    if let Some(r) = dreamed.records.iter().find(|r| r.pid >= old_classes) {
        bail!(
            "{}: pid {} but the previous model has only {old_classes} classes",
            r.path.display(),
            r.pid
        );
    }
    Ok(())
}

/// The old model (the frozen teacher) and the student: the old model with its classifier
/// grown by the new classes.
fn old_and_student(
    previous: &Checkpoint,
    config: crate::model::ModelConfig,
    (device, compute): (Device, crate::model::Compute),
    new_classes: i64,
    log: &Logger,
) -> Result<(ReidModel, ReidModel)> {
    let load = || -> Result<ReidModel> {
        let mut m = ReidModel::new(config, device)?;
        m.compute = compute;
        m.load_checkpoint(previous).about(Setting::Previous)?;
        Ok(m)
    };
    let old = load()?;
    let mut student = load()?;
    student.expand_classifier(new_classes);
    log.line(format!(
        "student: {} (epoch {}) with {} old classes + {new_classes} new",
        previous.path.display(),
        previous.epoch,
        old.config.classes
    ));
    Ok((old, student))
}

/// The new dataset's test set, and the old task's when `--old-dataset` names it.
fn new_and_old_test_sets(
    r: &LoopPlan,
    dataset: &ReidDataset,
    old: Option<&str>,
) -> Result<Vec<TestSet>> {
    let old = old
        .map(|name| ReidDataset::load(&r.setup.data.data_root, name))
        .transpose()?;
    let mut evaluated = vec![dataset];
    evaluated.extend(old.as_ref());
    test_sets(r, &evaluated)
}

/// The loader of the old identities' images, dreamed or real (`exemplars` of each). Too
/// few old identities for P = batch/4 is about their source as much as the batch size: the
/// error names both.
fn old_loader(
    r: &LoopPlan,
    on: (Device, Option<&Ranks>),
    source: &OldImages,
    exemplars: usize,
    old_classes: i64,
    seed: u64,
    log: &Logger,
) -> Result<TrainLoader> {
    let records = old_images(r, source, exemplars, old_classes, seed, log)?;
    let (what, setting, value) = match source {
        OldImages::Dreamed(dir) => ("dreamed", Setting::InversionDir, dir.display().to_string()),
        OldImages::Real(name) => ("exemplars", Setting::ExemplarDataset, name.clone()),
    };
    loader(r, on, &records, seed, 1, what).about_value(setting, value)
}

/// The images of the old identities that every new batch is paired with, labelled with the
/// old model's classes; logged with where they come from.
fn old_images(
    r: &LoopPlan,
    source: &OldImages,
    exemplars: usize,
    old_classes: i64,
    seed: u64,
    log: &Logger,
) -> Result<Vec<Record>> {
    match source {
        OldImages::Dreamed(dir) => {
            let dreamed = Dreamed::load(dir, exemplars)?;
            check_dreamed(&dreamed, old_classes)?;
            log.line(format!(
                "dreamed: {} images of {} old ids from {}",
                dreamed.records.len(),
                dreamed.num_ids,
                dreamed.dir.display()
            ));
            Ok(dreamed.records)
        }
        OldImages::Real(name) => {
            let real = Exemplars::load(&r.setup.data.data_root, name, exemplars, seed)?;
            // Labels are the old classes only if the old model learnt this very dataset.
            if real.num_ids as i64 != old_classes {
                bad_setting!(
                    Setting::ExemplarDataset,
                    name,
                    "has {} training identities but the previous model has {old_classes} \
                     classes: the exemplars must come from the dataset it was trained on",
                    real.num_ids
                );
            }
            log.line(format!(
                "real exemplars (the upper bound, not data-free): {} training images of {} old ids \
                 from {name}, at most {exemplars} each",
                real.records.len(),
                real.num_ids
            ));
            Ok(real.records)
        }
    }
}

/// `agd incremental` / `agd incremental-x`: the student starts as the old model with its
/// classifier expanded by the new classes and learns the new task while the old model's
/// geometry on the dreamed images is distilled into it (docs/method.md §5, §6) — or, for the
/// baselines (docs/method.md §4 last paragraph), on real exemplars of the old task, on the new batch
/// alone, or not at all (fine-tuning).
/// Returns the last evaluation (none when the plan does not evaluate).
pub fn run_incremental(plan: &IncrementalPlan) -> Result<Option<EpochEval>> {
    let r = &plan.run;
    r.validate()?;
    let argv = plan.argv();
    let learning = plan.learning()?;
    let distill = distillation(plan, &learning)?;
    let ranks = Ranks::join(r, &argv)?;
    let ranks = ranks.as_ref();
    let previous = Checkpoint::load(&resolve(&plan.previous, Setting::Previous)?)?;
    let old_config = r.model.for_checkpoint(&previous).about(Setting::Previous)?;
    let resumed = resumed(r)?;
    let continues = check_logs_dir(r, resumed.as_ref())?;
    // Read before the logs folder is created: a mistyped dataset leaves no folder behind.
    let dataset = ReidDataset::load(&r.setup.data.data_root, &r.dataset)?;
    let (device, log, seed) = start(r, plan, continues, ranks)?;
    for warning in &plan.warnings() {
        log.line(format!("warning: {warning}"));
    }
    log.line(describe(&dataset, device));
    let compute = compute(r, device, &log);
    let new_classes = dataset.num_train_ids as i64;
    let on = (device, compute);
    let (mut old, mut model) = old_and_student(&previous, old_config, on, new_classes, &log)?;
    let old_classes = old.config.classes;
    let mut opt = Optimizer::for_device(&model, r.optimizer);
    let start_epoch = resume(resumed.as_ref(), &mut model, &mut opt, &log)?;
    if start_epoch > r.epochs {
        return Ok(all_done(r, &log));
    }
    if let Some(ranks) = ranks {
        ranks.adopt(&mut model)?;
        ranks.attach(&mut old);
        opt.ranks = Some(ranks.reduce());
    }
    let test_sets = new_and_old_test_sets(r, &dataset, plan.old_dataset.as_deref())?;
    let on = (device, ranks);
    let new_loader = loader(r, on, &dataset.train, seed, 0, "train")?;
    let cfg = fit_config(r, start_epoch, &argv, ranks);
    let mut training = Training::new(&cfg, &model, &mut opt, &test_sets, &log, ranks);
    let eval = match (distill, &learning) {
        (
            Some((distillation, views)),
            Learning::Distill {
                old_images: source,
                exemplars,
                ..
            },
        ) => {
            let paired = PairedLoader {
                new: new_loader,
                dreamed: old_loader(r, on, source, *exemplars, old_classes, seed, &log)?,
            };
            log_distillation(&log, &distillation, views);
            let mut step = IncrementalStep {
                old,
                distillation,
                new_classes,
                views,
            };
            training.fit(&mut step, |e| paired.epoch(e))?
        }
        (Some((distillation, views)), Learning::NewData { .. }) => {
            log.line("distillation on the new data only: no dreamed or real old images");
            log_distillation(&log, &distillation, views);
            let mut step = NewDataStep {
                old,
                distillation,
                views,
            };
            training.fit(&mut step, |e| new_loader.epoch(e))?
        }
        _ => {
            log.line("fine-tuning baseline: new data only, no dreamed images, no distillation");
            training.fit(&mut BaseStep, |e| new_loader.epoch(e))?
        }
    };
    finish(r, eval, &log, ranks)
}

fn log_distillation(log: &Logger, distillation: &Distillation, views: Views) {
    let mix = match views {
        Views::Single => String::new(),
        Views::Augmented { cross_factor } => format!(", cross factor {cross_factor}"),
    };
    log.line(format!(
        "distillation {} × {}{mix}",
        distillation.type_name(),
        distillation.factor
    ));
    if distillation.unused_co_distillation {
        log.line(
            "the config's top-level `co_distillation` section is not used: the reference's \
             main_incremental.py reads only its `distillation` section, and so does this run",
        );
    }
}
