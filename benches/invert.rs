//! DeepInversion iteration benchmark (`cargo bench --bench invert`): one full-size
//! iteration of `agd invert` — ResNet-50 teacher at 256×128, eval mode, forward with the
//! BatchNorm statistics, loss, backward into the images, Adam step, clamp, best-loss copy —
//! against the reference's iteration restated in PyTorch (`benches/reference/invert.py`:
//! forward hooks, weights requiring gradients as in the reference), on the same CPU threads.
//! Goal: agd ≥ 1.3× faster.
//!
//! The two sides' iterations alternate (agd, PyTorch, agd, …) so that load from elsewhere
//! on a shared machine slows both alike. The PyTorch side runs with `$VIRTUAL_ENV/bin/python`
//! (else `python3`); without an importable torch it is skipped and agd's side still reported.
//!
//! `AGD_BENCH_STEPS`: timed iterations per side (default 3; the median is reported), after
//! one warm-up iteration each. `AGD_BENCH_BATCH`: images per batch (default 16; the
//! reference's 64 needs about four times as long and ~4 GB per side).

mod common;

use agd::inversion::optim::{stage_lr, WARMUP};
use agd::inversion::{Coefficients, DreamBatch, Inverter, Stage};
use agd::model::ReidModel;
use anyhow::Result;
use common::{env_usize, Phases, Reference, Timing};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// MSMT17's training identities: the teacher the reference inverts.
const CLASSES: i64 = 1041;
const HEIGHT: i64 = 256;
const WIDTH: i64 = 128;
/// Length of the full-size stage, for the lr schedule (the reference's 1000).
const STAGE_ITERS: usize = 1000;

/// The table's rows and the script's keys. agd times the iteration as a whole (its phases
/// run inside one library call), so its phase cells stay empty.
const PHASES: &Phases = &[
    ("iteration (median)", "seconds_per_step"),
    ("  forward + loss", "forward"),
    ("  backward", "backward"),
    ("  Adam + clip + best copy", "optimizer"),
];

/// agd's iteration through the library, exactly as `agd invert` runs it.
struct AgdSide {
    teacher: ReidModel,
    batch: DreamBatch,
    it: usize,
}

impl AgdSide {
    fn new(batch: i64) -> Result<Self> {
        tch::manual_seed(0);
        let cfg = common::resnet50(CLASSES);
        let teacher = ReidModel::new(cfg, Device::Cpu)?;
        let targets: Vec<i64> = (0..batch).map(|i| (i * 16) % CLASSES).collect();
        let images = Tensor::randn([batch, 3, HEIGHT, WIDTH], (Kind::Float, Device::Cpu));
        Ok(Self {
            teacher,
            batch: DreamBatch::from_images(images, Tensor::from_slice(&targets)),
            it: 0,
        })
    }

    /// One iteration (flip on every other one, as the PyTorch side).
    fn step(&mut self) -> Timing {
        let inverter = Inverter::new(&self.teacher, Coefficients::default());
        let t0 = Instant::now();
        let lr = stage_lr(0.2, self.it, STAGE_ITERS, WARMUP);
        inverter.step(
            &mut self.batch,
            Stage::FullRes,
            lr,
            (0, 0),
            self.it % 2 == 1,
        );
        self.it += 1;
        let mut t = vec![f64::NAN; PHASES.len()];
        t[0] = t0.elapsed().as_secs_f64();
        Timing(t)
    }
}

fn main() -> Result<()> {
    // The same allocator setting `agd invert` makes at start-up, so this measures its
    // iteration.
    agd::alloc::retain_freed_memory();
    let steps = env_usize("AGD_BENCH_STEPS", 3).max(1);
    let batch = env_usize("AGD_BENCH_BATCH", 16).max(1) as i64;
    let threads = tch::get_num_threads() as i64;
    println!(
        "DeepInversion iteration, ResNet-50 teacher ({CLASSES} classes), batch {batch} at \
         {HEIGHT}×{WIDTH}, CPU, {threads} threads: 1 warm-up + {steps} timed iterations per \
         side, alternating"
    );
    common::print_load();
    let mut agd = AgdSide::new(batch)?;
    let extra = [
        "--batch",
        &batch.to_string(),
        "--classes",
        &CLASSES.to_string(),
    ]
    .map(str::to_string);
    let mut reference = Reference::start("invert.py", threads, &extra);
    let runs = common::alternate(
        steps,
        PHASES,
        || Ok((agd.step(), ())),
        &mut reference,
        |_, _| {},
    )?;
    drop(agd);
    runs.report("ResNet-50 inversion", PHASES, batch, &reference, 1.3);
    Ok(())
}
