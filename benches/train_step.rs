//! Training-step benchmark (`cargo bench --bench train_step`): one ResNet-50 training step
//! at 256×128, batch 32 (P×K = 8×4), on the CPU, in agd and in PyTorch on the same machine
//! with the same threads, and the ratio. Goal: agd at least as fast (ratio ≥ 1). Also the
//! startup of `agd train` to its first step on a tiny synthetic dataset (goal: < 5 s).
//!
//! The PyTorch side is `benches/reference/train_step.py --serve`, run with
//! `$VIRTUAL_ENV/bin/python` (else `python3`); without an importable torch it is skipped,
//! and agd's side still reported. The two sides' steps alternate (agd, PyTorch, agd, …):
//! on a shared machine, load from elsewhere then slows both alike instead of whichever
//! side happened to run during it. Each side also times its phases (forward + loss,
//! backward, optimiser), which locates a gap when there is one.
//!
//! Then the optimiser step alone under its two layouts, per-parameter tensors and one flat
//! buffer per group (`Optimizer::flat`, what `agd train` uses on CUDA), on ResNet-50's gradients.
//!
//! `AGD_BENCH_STEPS`: timed steps per side (default 3; the median is reported), after one
//! warm-up step each.

mod common;

use agd::loss::BaseLoss;
use agd::model::ReidModel;
use agd::train::optimizer::{Optimizer, OptimizerKind};
use anyhow::{bail, Context, Result};
use common::{Phases, Reference, Timing};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 32;
const IDS: i64 = 8;
const CLASSES: i64 = 751;
const HEIGHT: i64 = 256;
const WIDTH: i64 = 128;

/// The table's rows and the reference script's JSON keys: the step, then its phases.
const PHASES: &Phases = &[
    ("train step (median)", "seconds_per_step"),
    ("  forward + loss", "forward"),
    ("  backward", "backward"),
    ("  optimiser (zero_grad + SGD)", "optimizer"),
];

/// 8 identities × 4 samples, shuffled: the triplet loss needs positives in the batch.
fn pk_pids() -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids = rand::seq::index::sample(&mut rng, CLASSES as usize, IDS as usize);
    let mut pids: Vec<i64> = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(id as i64, (BATCH / IDS) as usize))
        .collect();
    pids.shuffle(&mut rng);
    Tensor::from_slice(&pids)
}

/// agd's step through the library: model, losses and optimiser as `agd train` uses them.
struct AgdStep {
    model: ReidModel,
    opt: Optimizer,
    x: Tensor,
    pids: Tensor,
}

impl AgdStep {
    fn new() -> Result<Self> {
        tch::manual_seed(0);
        let cfg = common::resnet50(CLASSES);
        let model = ReidModel::new(cfg, Device::Cpu)?;
        let mut opt = Optimizer::for_device(&model, OptimizerKind::Sgd);
        opt.set_lr(0.01);
        Ok(Self {
            model,
            opt,
            x: Tensor::randn([BATCH, 3, HEIGHT, WIDTH], (Kind::Float, Device::Cpu)),
            pids: pk_pids(),
        })
    }

    fn step(&mut self) -> Timing {
        let t0 = Instant::now();
        self.opt.zero_grad();
        let ta = Instant::now();
        let out = self.model.forward(&self.x, true);
        let loss = BaseLoss::new(&out.logits, &out.global, &self.pids).total();
        let t1 = Instant::now();
        loss.backward();
        let t2 = Instant::now();
        self.opt.step().unwrap();
        let t3 = Instant::now();
        Timing(vec![
            (t3 - t0).as_secs_f64(),
            (t1 - ta).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            ((ta - t0) + (t3 - t2)).as_secs_f64(),
        ])
    }
}

/// Median seconds of one SGD `step()` of ResNet-50 under each optimiser layout
/// (per-parameter, flat), the two alternating, with gradients from one backward.
fn optimizer_layouts(steps: usize) -> Result<(f64, f64)> {
    let mut medians = [Vec::new(), Vec::new()];
    let mut setups = Vec::new();
    for flat in [false, true] {
        tch::manual_seed(0);
        let cfg = common::resnet50(CLASSES);
        let model = ReidModel::new(cfg, Device::Cpu)?;
        let mut opt = if flat {
            Optimizer::flat(&model, OptimizerKind::Sgd)
        } else {
            Optimizer::new(&model, OptimizerKind::Sgd)
        };
        opt.set_lr(1e-6);
        let x = Tensor::randn([8, 3, 64, 32], (Kind::Float, Device::Cpu));
        let pids = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 3, 3]);
        let out = model.forward(&x, true);
        BaseLoss::new(&out.logits, &out.global, &pids)
            .total()
            .backward();
        opt.step().unwrap(); // warm-up: the momentum buffers exist from here on
        setups.push((model, opt));
    }
    for _ in 0..steps {
        for (i, (_, opt)) in setups.iter_mut().enumerate() {
            let t = Instant::now();
            opt.step().unwrap();
            medians[i].push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut medians[0]), median(&mut medians[1])))
}

/// `agd train` end to end on 32 synthetic images of 8 ids (batch 32: exactly one step).
struct Startup {
    /// Process start to exit.
    total: f64,
    /// The epoch's seconds as `log.txt` reports them (loading batches and the one step).
    epoch: f64,
}

fn startup(bin: &Path) -> Result<Startup> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_str().context("temporary path is not UTF-8")?;
    let logs = tmp.path().join("logs");
    // The commands as one would type them, with the temporary folder as data root.
    let synth = Command::new(bin)
        .args(["synth", "--data-root", root])
        .args(
            "--dataset s --ids 8 --images-per-id 4 --cameras 2 --distractors 2 --junk 0".split(' '),
        )
        .output()?;
    if !synth.status.success() {
        bail!(
            "agd synth failed: {}",
            String::from_utf8_lossy(&synth.stderr)
        );
    }
    let start = Instant::now();
    let train = Command::new(bin)
        .args(["train", "--data-root", root, "--logs-dir"])
        .arg(&logs)
        .args(
            "-g cpu -s 1 --dataset s --depth 50 --height 256 --width 128 -b 32 --epochs 1 \
             --evaluate 0 --warmup 0 --epochs-decay 100 --pretrained none"
                .split_whitespace(),
        )
        .output()?;
    let total = start.elapsed().as_secs_f64();
    if !train.status.success() {
        bail!(
            "agd train failed: {}",
            String::from_utf8_lossy(&train.stderr)
        );
    }
    // The epoch line: "epoch 1/1: … (1 steps, 1.6 img/s, 20.4 s)".
    let log = std::fs::read_to_string(logs.join("log.txt"))?;
    let re = regex::Regex::new(r"epoch 1/1: .*\((\d+) steps, [\d.]+ img/s, ([\d.]+) s\)")?;
    let caps = re
        .captures(&log)
        .with_context(|| format!("no epoch line in log.txt:\n{log}"))?;
    if &caps[1] != "1" {
        bail!(
            "agd train ran {} steps, expected exactly 1:\n{log}",
            &caps[1]
        );
    }
    Ok(Startup {
        total,
        epoch: caps[2].parse()?,
    })
}

fn main() -> Result<()> {
    // The same allocator setting `agd` makes at start-up, so this measures its step.
    agd::alloc::retain_freed_memory();
    let steps = common::env_usize("AGD_BENCH_STEPS", 3).max(1);
    let threads = tch::get_num_threads() as i64;
    println!(
        "ResNet-50 training step, batch {BATCH} at {HEIGHT}×{WIDTH}, CPU, {threads} threads: \
         1 warm-up + {steps} timed steps per side, alternating"
    );
    common::print_load();

    let mut agd = AgdStep::new()?;
    let mut reference = Reference::start("train_step.py", threads, &[]);
    let runs = common::alternate(
        steps,
        PHASES,
        || Ok((agd.step(), ())),
        &mut reference,
        |_, _| {},
    )?;
    drop(agd);
    runs.report("ResNet-50 step", PHASES, BATCH, &reference, 1.0);
    drop(reference);

    let (per, flat) = optimizer_layouts(steps.max(10))?;
    let ms = |x: f64| format!("{:.1} ms", 1e3 * x);
    println!(
        "{}",
        agd::report::table(
            ["ResNet-50 SGD step (no zero_grad), median", "time"],
            [
                vec![
                    "per-parameter tensors (Optimizer::new)".to_string(),
                    ms(per)
                ],
                vec![
                    "one flat buffer per group (Optimizer::flat)".into(),
                    ms(flat)
                ],
                vec!["per-parameter / flat".into(), format!("{:.2}×", per / flat)],
            ]
        )
    );

    // Cargo builds the binary targets for benches too (and sets this path), so the
    // startup is always measured on the binary of the sources being benchmarked.
    let bin = Path::new(env!("CARGO_BIN_EXE_agd"));
    if !bin.exists() {
        println!(
            "startup not measured: {} is missing; run `make build` first",
            bin.display()
        );
        return Ok(());
    }
    let st = startup(bin)?;
    let s = |x: f64| format!("{x:.2} s");
    println!(
        "{}",
        agd::report::table(
            ["agd train, 32 synthetic images of 8 ids, batch 32", "time"],
            [
                vec!["process start → exit (1 step)".to_string(), s(st.total)],
                vec!["  the epoch (log.txt: 1 step)".into(), s(st.epoch)],
                vec![
                    "  startup to first step, + checkpoint and exit".into(),
                    s(st.total - st.epoch),
                ],
            ]
        )
    );
    println!(
        "startup to first step ≤ {:.2} s (goal < 5 s)",
        st.total - st.epoch
    );
    Ok(())
}
