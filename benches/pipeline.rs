//! Pipeline benchmark (`make bench`): how fast `agd synth` renders, how many training
//! images per second the loader delivers at 256×128 with full augmentation, and how many
//! a ResNet-50 training step consumes on the same machine. The loader must stay well
//! ahead of the model (goal: ≥ 3×).
//!
//! Sizes can be reduced for a quick look: `AGD_BENCH_STEPS` (model steps, default 3).

use agd::data::synth::{self, Style, SynthConfig};
use agd::data::{ImageStore, LoaderConfig, ReidDataset, TrainLoader, TrainTransform};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();

    // 1. agd synth: 250 + 250 identities × 10 images at 128×64 (+ distractors, junk).
    let cfg = SynthConfig {
        ids: 250,
        test_ids: 250,
        images_per_id: 10,
        cameras: 6,
        height: 128,
        width: 64,
        seed: 0,
        style: Style::Street,
        distractors: 0,
        junk: 0,
    };
    let start = Instant::now();
    let s = synth::generate(&tmp.path().join("bench"), &cfg)?;
    let secs = start.elapsed().as_secs_f64();
    let n = s.train_images + s.query_images + s.gallery_images;
    rows.push(vec![
        "agd synth 128×64".to_string(),
        format!("{n} images"),
        format!("{secs:.2} s"),
        format!("{:.0} img/s", n as f64 / secs),
    ]);

    // 2. Loader: decode the training split at 256×128, then one epoch of P×K batches
    //    with the full training transform (flip, pad, crop, normalise, erasing).
    let d = ReidDataset::load(tmp.path(), "bench")?;
    let start = Instant::now();
    let store = Arc::new(ImageStore::load(&d.train, 256, 128, "decode")?);
    let secs = start.elapsed().as_secs_f64();
    rows.push(vec![
        "decode + resize to 256×128 (once)".into(),
        format!("{} images", d.train.len()),
        format!("{secs:.2} s"),
        format!("{:.0} img/s", d.train.len() as f64 / secs),
    ]);
    let loader = TrainLoader::new(
        Arc::new(d.train.clone()),
        store,
        LoaderConfig::new(64, 1, TrainTransform::default(), 0),
        0,
    )?;
    let start = Instant::now();
    let mut images = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        images += batch.views[0].size()[0] as usize;
    }
    let secs = start.elapsed().as_secs_f64();
    let loader_rate = images as f64 / secs;
    rows.push(vec![
        "loader, training transform 256×128".into(),
        format!("{images} images"),
        format!("{secs:.2} s"),
        format!("{loader_rate:.0} img/s"),
    ]);

    // 3. ResNet-50 training step (forward, backward, SGD) at 256×128, batch 32, CPU.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tch::vision::resnet::resnet50(&vs.root(), 751);
    let mut opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: true,
    }
    .build(&vs, 0.01)?;
    let x = Tensor::randn([32, 3, 256, 128], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(751, [32], (Kind::Int64, Device::Cpu));
    let mut step = || {
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    };
    step(); // warm-up: allocations, kernels
    let steps = env_usize("AGD_BENCH_STEPS", 3).max(1);
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    let model_rate = 32.0 / secs;
    rows.push(vec![
        format!(
            "ResNet-50 train step, batch 32 ({} threads)",
            tch::get_num_threads()
        ),
        format!("{steps} steps"),
        format!("{secs:.2} s/step"),
        format!("{model_rate:.1} img/s"),
    ]);

    println!(
        "{}",
        agd::report::table(["benchmark", "work", "time", "rate"], rows)
    );
    println!(
        "loader delivers {:.0}× the images per second that ResNet-50 training consumes (goal ≥ 3×)",
        loader_rate / model_rate
    );
    Ok(())
}
