//! Incremental-step benchmark (`cargo bench --bench incremental_step`): one step of
//! `agd incremental` (GD: `configs/res-triangle.yaml`, factor 3) with ResNet-50 at 256×128
//! on the CPU, in agd and in PyTorch on the same machine with the same threads, and the
//! ratio. Goal: agd at least as fast (ratio ≥ 1).
//!
//! The step is the reference's `InversionIncrementalTrainer.train_step` (docs/method.md §5), on a
//! batch of 32 new images (P×K = 8×4, Market's 751 classes) and 32 dreamed images (8×4
//! of MSMT17's 1,041 old classes): the old model's forward on the dreamed half (eval mode,
//! no gradient), one student forward over the 64 images (train mode; classifier of
//! 751 + 1,041 = 1,792 rows), CE + triplet on both halves + 3 · res-triangle on the dreamed
//! half, backward, SGD step. agd's side is `IncrementalStep` itself, as `agd incremental`
//! runs it; models have random weights (the student a copy of the old model, its classifier
//! expanded), the images are random, and the pids are P×K.
//!
//! The PyTorch side is `benches/reference/incremental_step.py --serve`, the reference's step
//! re-stated in plain torch.nn (its losses as it writes them, its `Networks` forward and
//! optimiser groups), run with `$VIRTUAL_ENV/bin/python` (else `python3`); without an
//! importable torch it is skipped, and agd's side still reported. The two sides' steps
//! alternate (agd, PyTorch, agd, …): on a shared machine, load from elsewhere then slows
//! both alike. Each side times its phases (teacher forward, student forward + losses,
//! backward, optimiser), which locates a gap when there is one. Both sides' losses on the
//! first step are printed: not equal (different random weights and images) but of the same
//! size, so one sees that both compute the same step.
//!
//! `AGD_BENCH_STEPS`: timed steps per side (default 3; the median is reported), after one
//! warm-up step each. Peak memory is about 8 GB per side.

mod common;

use agd::data::Batch;
use agd::loss::distill::Distillation;
use agd::model::ReidModel;
use agd::train::incremental::{IncrementalStep, Views};
use agd::train::optimizer::{Optimizer, OptimizerKind};
use anyhow::{Context, Result};
use common::{Phases, Reference, Timing};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Images per half (new, dreamed).
const HALF: i64 = 32;
/// Identities per half (P); K = HALF / IDS.
const IDS: i64 = 8;
/// Market-1501's training identities: the new task.
const NEW_CLASSES: i64 = 751;
/// MSMT17's training identities: the old model's classes.
const OLD_CLASSES: i64 = 1041;
const HEIGHT: i64 = 256;
const WIDTH: i64 = 128;

/// The table's rows and the reference script's JSON keys: the step, then its phases.
const PHASES: &Phases = &[
    ("incremental step (median)", "seconds_per_step"),
    ("  teacher forward (32 dreamed)", "teacher"),
    ("  student forward (64) + losses", "forward"),
    ("  backward", "backward"),
    ("  optimiser (zero_grad + SGD)", "optimizer"),
];

/// IDS identities of `classes` × K samples each, shuffled.
fn pk_pids(classes: i64, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids = rand::seq::index::sample(&mut rng, classes as usize, IDS as usize);
    let mut pids: Vec<i64> = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(id as i64, (HALF / IDS) as usize))
        .collect();
    pids.shuffle(&mut rng);
    Tensor::from_slice(&pids)
}

/// One view of HALF random images with P×K pids, as the loader hands a batch over.
fn batch(classes: i64, seed: u64) -> Batch {
    Batch {
        views: vec![Tensor::randn(
            [HALF, 3, HEIGHT, WIDTH],
            (Kind::Float, Device::Cpu),
        )],
        pids: pk_pids(classes, seed),
        cameras: Tensor::zeros([HALF], (Kind::Int64, Device::Cpu)),
        indices: (0..HALF as usize).collect(),
        shard: None,
    }
}

/// The same batch again (the step takes its batch by value); tensors are shared.
fn share(b: &Batch) -> Batch {
    Batch {
        views: b.views.iter().map(Tensor::shallow_clone).collect(),
        pids: b.pids.shallow_clone(),
        cameras: b.cameras.shallow_clone(),
        indices: b.indices.clone(),
        shard: None,
    }
}

/// agd's step through the library: `IncrementalStep` with the models and optimiser as
/// `agd incremental` sets them up.
struct AgdStep {
    step: IncrementalStep,
    model: ReidModel,
    opt: Optimizer,
    new: Batch,
    dreamed: Batch,
}

impl AgdStep {
    fn new() -> Result<Self> {
        tch::manual_seed(0);
        let config = common::resnet50(OLD_CLASSES);
        let old = ReidModel::new(config, Device::Cpu)?;
        // The student starts as a copy of the old model, then gets the new classes' rows.
        let mut model = ReidModel::new(config, Device::Cpu)?;
        tch::no_grad(|| {
            for e in model.params.entries() {
                let from = old.params.get(&e.name).expect("same architecture");
                e.tensor.shallow_clone().copy_(from);
            }
        });
        model.expand_classifier(NEW_CLASSES);
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/res-triangle.yaml");
        let distillation = Distillation::load(&config)?;
        let mut opt = Optimizer::new(&model, OptimizerKind::Sgd);
        opt.set_lr(0.01);
        Ok(Self {
            step: IncrementalStep {
                old,
                distillation,
                new_classes: NEW_CLASSES,
                views: Views::Single,
            },
            model,
            opt,
            new: batch(NEW_CLASSES, 0),
            dreamed: batch(OLD_CLASSES, 1),
        })
    }

    /// One step: its timing and the loss terms it reports (CE, triplet, factor · distill).
    fn step(&mut self) -> Result<(Timing, Vec<f64>)> {
        let batch = (share(&self.new), share(&self.dreamed));
        let t = Instant::now();
        let (losses, phases) = self
            .step
            .step_timed(&self.model, &mut self.opt, batch)
            .context("agd's incremental step")?;
        let total = t.elapsed().as_secs_f64();
        let timing = Timing(vec![
            total,
            phases.teacher.as_secs_f64(),
            phases.forward.as_secs_f64(),
            phases.backward.as_secs_f64(),
            phases.optimizer.as_secs_f64(),
        ]);
        Ok((timing, losses.iter().map(|t| t.double_value(&[])).collect()))
    }
}

/// Both sides' loss terms on their first step, side by side.
fn print_losses(agd: &[f64], reference: Option<&serde_json::Value>) {
    let names = [
        ("cross-entropy", "ce"),
        ("triplet", "triplet"),
        ("3 · res-triangle", "distill"),
    ];
    let mut rows = Vec::new();
    for (i, (name, key)) in names.iter().enumerate() {
        let theirs = reference
            .and_then(|v| v[key].as_f64())
            .map_or("–".to_string(), |x| format!("{x:.4}"));
        rows.push(vec![name.to_string(), format!("{:.4}", agd[i]), theirs]);
    }
    let total =
        |v: &serde_json::Value| -> Option<f64> { names.iter().map(|(_, k)| v[k].as_f64()).sum() };
    rows.push(vec![
        "loss".into(),
        format!("{:.4}", agd.iter().sum::<f64>()),
        reference
            .and_then(total)
            .map_or("–".to_string(), |x| format!("{x:.4}")),
    ]);
    println!(
        "{}",
        agd::report::table(["step 1 losses (random weights)", "agd", "PyTorch"], rows)
    );
}

fn main() -> Result<()> {
    // The same allocator setting `agd` makes at start-up, so this measures its step.
    agd::alloc::retain_freed_memory();
    let steps = common::env_usize("AGD_BENCH_STEPS", 3).max(1);
    let threads = tch::get_num_threads() as i64;
    println!(
        "ResNet-50 incremental step (GD, res-triangle × 3), {HALF} new + {HALF} dreamed at \
         {HEIGHT}×{WIDTH}, {OLD_CLASSES} old + {NEW_CLASSES} new classes, CPU, {threads} \
         threads: 1 warm-up + {steps} timed steps per side, alternating"
    );
    common::print_load();

    let mut agd = AgdStep::new()?;
    let mut reference = Reference::start("incremental_step.py", threads, &[]);
    let runs = common::alternate(
        steps,
        PHASES,
        || agd.step(),
        &mut reference,
        |losses: &Vec<f64>, theirs| print_losses(losses, theirs),
    )?;
    drop(agd);
    runs.report(
        "ResNet-50 incremental step",
        PHASES,
        2 * HALF,
        &reference,
        1.0,
    );
    Ok(())
}
