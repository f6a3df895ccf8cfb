//! `agd train`: the base model on task 1 (SPEC §1).

use super::args::{LoopArgs, TrainArgs};
use crate::data::{Erasing, ImageStore, LoaderConfig, ReidDataset, TrainLoader, TrainTransform};
use crate::eval::TestSet;
use crate::logging::Logger;
use crate::model::checkpoint::{resolve, Checkpoint};
use crate::model::{ModelConfig, ReidModel};
use crate::train::base::BaseStep;
use crate::train::fit::{fit, EpochEval, FitConfig};
use crate::train::optimizer::Optimizer;
use anyhow::{bail, Result};
use std::sync::Arc;
use tch::Device;

/// The seed of the run: `--seed`, or one drawn now and logged so the run can be repeated.
pub fn seed(given: Option<u64>, log: &Logger) -> u64 {
    let seed = given.unwrap_or_else(|| rand::random::<u32>() as u64);
    if given.is_none() {
        log.line(format!(
            "no --seed given: using seed {seed} (pass -s {seed} to repeat this run)"
        ));
    }
    tch::manual_seed(seed as i64);
    seed
}

impl LoopArgs {
    pub fn model_config(&self, classes: i64) -> ModelConfig {
        ModelConfig {
            depth: self.model.depth,
            last_stride: self.model.last_stride,
            pooling: self.model.last_pooling,
            embedding: self.model.embedding,
            classes,
        }
    }

    pub fn loader_config(&self, seed: u64) -> LoaderConfig {
        let erasing = Erasing {
            probability: self.augment.re,
            max_area: self.augment.re_area,
        };
        LoaderConfig::new(
            self.batch_size,
            self.peers,
            TrainTransform { erasing },
            seed,
        )
    }

    pub fn fit_config(&self, start_epoch: usize, args: String) -> FitConfig {
        FitConfig {
            logs_dir: self.logs_dir.clone(),
            epochs: self.epochs,
            start_epoch,
            base_lr: self.learning_rate,
            warmup: self.warmup,
            milestones: self.epochs_decay.clone(),
            evaluate_every: self.evaluate,
            save_freq: self.save_freq,
            eval_batch_size: 128,
            args,
        }
    }

    /// Checks that do not need data, so mistakes surface before minutes of loading.
    pub fn validate(&self) -> Result<()> {
        crate::train::schedule::validate(self.warmup, &self.epochs_decay)?;
        if self.epochs == 0 {
            bail!("--epochs 0: nothing to train");
        }
        if !(0.0..=1.0).contains(&self.augment.re) {
            bail!("--re {}: a probability must be in [0, 1]", self.augment.re);
        }
        if !(Erasing::MIN_AREA..=1.0).contains(&self.augment.re_area) {
            bail!(
                "--re-area {}: must be in [{}, 1]",
                self.augment.re_area,
                Erasing::MIN_AREA
            );
        }
        Ok(())
    }
}

/// Continues a run from `--resume`: weights, optimiser state, next epoch.
pub fn resume(
    run: &LoopArgs,
    model: &mut ReidModel,
    opt: &mut Optimizer,
    log: &Logger,
) -> Result<usize> {
    let Some(path) = &run.resume else {
        return Ok(1);
    };
    let ck = Checkpoint::load(&resolve(path, "--resume")?)?;
    model.load_checkpoint(&ck)?;
    if let Some(kind) = ck.metadata.get("optimizer") {
        if kind != opt.kind.name() {
            bail!(
                "--resume {}: saved with --optimizer {kind}, this run uses {}",
                ck.path.display(),
                opt.kind.name()
            );
        }
    }
    let steps = ck
        .metadata
        .get("optimizer_steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    opt.load_state(|n| ck.tensors.get(n).map(|t| t.shallow_clone()), steps)?;
    log.line(format!(
        "resumed from {} after epoch {}",
        ck.path.display(),
        ck.epoch
    ));
    Ok(ck.epoch + 1)
}

/// Records the command line at the top of a run's log.
pub fn log_command(log: &Logger, subcommand: &str) {
    log.line(format!(
        "agd {subcommand} {}",
        std::env::args().skip(2).collect::<Vec<_>>().join(" ")
    ));
}

/// What every training subcommand does first: check the flags, open the log (recording
/// the command line), pick the device, seed the run.
pub fn start(r: &LoopArgs, subcommand: &str) -> Result<(Device, Logger, u64)> {
    r.validate()?;
    let device = crate::device::select(&r.device.gpu)?;
    let log = Logger::open(&r.logs_dir, true)?;
    log_command(&log, subcommand);
    let seed = seed(r.seed, &log);
    Ok((device, log, seed))
}

/// The line a training log starts with: the data it learns from and the device.
pub fn describe(dataset: &ReidDataset, device: Device) -> String {
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

/// The test sets a run evaluates on (none when `--evaluate 0`).
pub fn test_sets(r: &LoopArgs, datasets: &[&ReidDataset]) -> Result<Vec<TestSet>> {
    if r.evaluate == 0 {
        return Ok(Vec::new());
    }
    datasets
        .iter()
        .map(|d| TestSet::load(d, r.data.height, r.data.width))
        .collect()
}

/// What every training subcommand does last: the final evaluation as a table, and where
/// the checkpoint is.
pub fn finish(r: &LoopArgs, result: Option<EpochEval>, log: &Logger) {
    if let Some(results) = result {
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
    log.line(format!(
        "checkpoint: {}",
        r.logs_dir.join(crate::model::checkpoint::LATEST).display()
    ));
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let r = &args.run;
    let (device, log, seed) = start(r, "train")?;
    let dataset = ReidDataset::load(&r.data.data_root, &r.dataset)?;
    log.line(describe(&dataset, device));
    let mut model = ReidModel::new(r.model_config(dataset.num_train_ids as i64), device)?;
    let mut opt = Optimizer::new(&model, r.optimizer);
    let start_epoch = resume(r, &mut model, &mut opt, &log)?;
    if start_epoch == 1 {
        let note = model.load_imagenet(args.pretrained.as_deref())?;
        log.line(note);
    }
    if start_epoch > r.epochs {
        log.line(format!("all {} epochs are done already", r.epochs));
        return Ok(());
    }
    let (h, w) = (r.data.height, r.data.width);
    let store = Arc::new(ImageStore::load(&dataset.train, h, w, "train")?);
    let test_sets = test_sets(r, &[&dataset])?;
    let loader = TrainLoader::new(
        Arc::new(dataset.train.clone()),
        store,
        r.loader_config(seed),
        0,
    )?;
    let fit_cfg = r.fit_config(start_epoch, format!("{r:?}"));
    let result = fit(
        &fit_cfg,
        &model,
        &mut opt,
        &mut BaseStep,
        |e| loader.epoch(e),
        &test_sets,
        &log,
    )?;
    finish(r, result, &log);
    Ok(())
}
