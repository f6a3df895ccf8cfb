//! `agd incremental` and `agd incremental-x` (SPEC §5, §6): the student starts as the old
//! model with its classifier expanded by the new classes and learns the new task while the
//! old model's geometry on the dreamed images is distilled into it.

use super::args::{IncrementalArgs, LoopArgs};
use super::train::{describe, finish, resume, start, test_sets};
use crate::data::{Dreamed, ImageStore, PairedLoader, Record, ReidDataset, TrainLoader};
use crate::logging::Logger;
use crate::loss::distill::Distillation;
use crate::model::checkpoint::{resolve, Checkpoint};
use crate::model::ReidModel;
use crate::train::base::BaseStep;
use crate::train::fit::fit;
use crate::train::incremental::{IncrementalStep, Views};
use crate::train::optimizer::Optimizer;
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use tch::Device;

/// The distillation config and how views are mixed, checked before any data is read.
fn distillation(args: &IncrementalArgs, augmented: bool) -> Result<Option<(Distillation, Views)>> {
    let r = &args.run;
    if args.finetune {
        if augmented {
            bail!("--finetune: the fine-tuning baseline has no views to mix; use `agd incremental --finetune`");
        }
        if r.peers != 1 {
            bail!("--peers {}: fine-tuning sees one view", r.peers);
        }
        return Ok(None);
    }
    let example = if augmented {
        "inverXion"
    } else {
        "res-triangle"
    };
    let path = args.algo_config.as_ref().with_context(|| {
        format!("--algo-config is required: a distillation config such as configs/{example}.yaml (or --finetune for the baseline without distillation)")
    })?;
    let config = Distillation::load(path)?;
    let views = if augmented {
        if r.peers < 2 {
            bail!(
                "--peers {}: augmented distillation needs at least 2 views",
                r.peers
            );
        }
        let cross_factor = config.cross_factor.with_context(|| {
            format!(
                "{}: incremental-x needs `cross_factor` under `distillation` (e.g. configs/inverXion.yaml)",
                path.display()
            )
        })?;
        Views::Augmented { cross_factor }
    } else {
        if r.peers != 1 {
            bail!(
                "--peers {}: agd incremental sees one view; use agd incremental-x for several",
                r.peers
            );
        }
        Views::Single
    };
    Ok(Some((config, views)))
}

/// The old model as `--previous` holds it, built from the model flags: a checkpoint that
/// does not fit them is an error naming the flag.
fn old_model(r: &LoopArgs, previous: &Checkpoint, device: Device) -> Result<ReidModel> {
    let mut model = ReidModel::new(r.model_config(previous.classes()?), device)?;
    model
        .load_checkpoint(previous)
        .context("--previous does not match the model flags")?;
    Ok(model)
}

/// Dreamed pids are the old model's class indices: any beyond its classifier is an error.
fn check_dreamed(dreamed: &Dreamed, old_classes: i64) -> Result<()> {
    if let Some(r) = dreamed.records.iter().find(|r| r.pid >= old_classes) {
        bail!(
            "{}: pid {} but the old model (--previous) has only {old_classes} classes",
            r.path.display(),
            r.pid
        );
    }
    Ok(())
}

pub fn run(args: &IncrementalArgs, augmented: bool) -> Result<()> {
    let r = &args.run;
    let subcommand = if augmented {
        "incremental-x"
    } else {
        "incremental"
    };
    let plan = distillation(args, augmented)?;
    let previous = Checkpoint::load(&resolve(&args.previous, "--previous")?)?;
    let (device, log, seed) = start(r, subcommand)?;
    let dataset = ReidDataset::load(&r.data.data_root, &r.dataset)?;
    log.line(describe(&dataset, device));
    let old = old_model(r, &previous, device)?;
    let old_classes = old.config.classes;
    let new_classes = dataset.num_train_ids as i64;
    let mut model = old_model(r, &previous, device)?;
    model.expand_classifier(new_classes);
    log.line(format!(
        "student: {} (epoch {}) with {old_classes} old classes + {new_classes} new",
        previous.path.display(),
        previous.epoch
    ));
    let mut opt = Optimizer::new(&model, r.optimizer);
    let start_epoch = resume(r, &mut model, &mut opt, &log)?;
    if start_epoch > r.epochs {
        log.line(format!("all {} epochs are done already", r.epochs));
        return Ok(());
    }
    let old_dataset = match &args.old_dataset {
        Some(name) => Some(ReidDataset::load(&r.data.data_root, name)?),
        None => None,
    };
    let mut evaluated = vec![&dataset];
    evaluated.extend(old_dataset.as_ref());
    let test_sets = test_sets(r, &evaluated)?;
    let new_loader = loader(r, &dataset.train, seed, 0, "train")?;
    let fit_cfg = r.fit_config(start_epoch, format!("{args:?}"));
    let result = match plan {
        None => {
            log.line("fine-tuning baseline: new data only, no dreamed images, no distillation");
            fit(
                &fit_cfg,
                &model,
                &mut opt,
                &mut BaseStep,
                |e| new_loader.epoch(e),
                &test_sets,
                &log,
            )?
        }
        Some((distillation, views)) => {
            let dreamed = Dreamed::load(&args.inversion_dir, args.exemplars)?;
            check_dreamed(&dreamed, old_classes)?;
            log_plan(&log, &dreamed, &distillation, views);
            let paired = PairedLoader {
                new: new_loader,
                dreamed: loader(r, &dreamed.records, seed, 1, "dreamed")?,
            };
            let mut step = IncrementalStep {
                old,
                distillation,
                new_classes,
                views,
            };
            fit(
                &fit_cfg,
                &model,
                &mut opt,
                &mut step,
                |e| paired.epoch(e),
                &test_sets,
                &log,
            )?
        }
    };
    finish(r, result, &log);
    Ok(())
}

/// A P×K training loader over `records`, its images decoded once at the run's size.
fn loader(
    r: &LoopArgs,
    records: &[Record],
    seed: u64,
    stream_id: u64,
    what: &str,
) -> Result<TrainLoader> {
    let store = ImageStore::load(records, r.data.height, r.data.width, what)?;
    TrainLoader::new(
        Arc::new(records.to_vec()),
        Arc::new(store),
        r.loader_config(seed),
        stream_id,
    )
}

fn log_plan(log: &Logger, dreamed: &Dreamed, distillation: &Distillation, views: Views) {
    let mix = match views {
        Views::Single => String::new(),
        Views::Augmented { cross_factor } => format!(", cross factor {cross_factor}"),
    };
    log.line(format!(
        "dreamed: {} images of {} old ids from {}; distillation {} × {}{mix}",
        dreamed.records.len(),
        dreamed.num_ids,
        dreamed.dir.display(),
        distillation.type_name(),
        distillation.factor
    ));
}
