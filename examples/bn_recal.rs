//! Whether BatchNorm's running statistics are what a model lost: re-estimates every
//! BatchNorm's running mean and variance of a checkpoint on the real training images of
//! one or more datasets (train-mode forwards without gradients, nothing else changes) and
//! writes the result as a new checkpoint for `agd evaluate`. An incremental step forwards
//! the dreamed batch with the new task's images, so the student's running statistics
//! span both; re-estimating them on the new task's images alone (or on both tasks' real
//! images) and evaluating again tells how much of the loss on either task is those
//! statistics, not the weights.
//!
//! `cargo run --release --example bn_recal -- CHECKPOINT OUT DATA_ROOT DATASET [DATASET ...]`
//! (64×32 inputs, batches of 32, 200 batches).

use agd::data::dataset::ReidDataset;
use agd::data::images::ImageStore;
use agd::data::rng::stream;
use agd::data::transforms::test_into;
use agd::error::Setting;
use agd::model::checkpoint::{self, write_safetensors, Checkpoint};
use agd::model::{ModelChoice, ReidModel};
use anyhow::{bail, Result};
use rand::Rng;
use std::path::PathBuf;
use tch::{Device, Tensor};

const BATCH: usize = 32;
/// With BatchNorm's momentum of 0.1, 200 batches leave 0.9^200 ≈ 1e-9 of the old values.
const BATCHES: usize = 200;
const HEIGHT: usize = 64;
const WIDTH: usize = 32;

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: bn_recal CHECKPOINT OUT DATA_ROOT DATASET [DATASET ...]");
    }
    let source = checkpoint::resolve(&PathBuf::from(&args[0]), Setting::Checkpoint)?;
    let out = PathBuf::from(&args[1]);
    if out.exists() {
        bail!("{}: already exists; give a new file", out.display());
    }
    let ck = Checkpoint::load(&source)?;
    let model = ReidModel::from_checkpoint(&ck, &ModelChoice::default(), Device::Cpu)?;
    let mut stores = Vec::new();
    for name in &args[3..] {
        let data = ReidDataset::load(&PathBuf::from(&args[2]), name)?;
        stores.push(ImageStore::load(&data.train, HEIGHT, WIDTH, name)?);
    }
    // Every training image of every dataset, as (store, index): one draw picks any of them.
    let images: Vec<(usize, usize)> = (stores.iter().enumerate())
        .flat_map(|(s, store)| (0..store.len()).map(move |i| (s, i)))
        .collect();
    let total = images.len();
    if total < BATCH {
        bail!("{total} training images in all: fewer than one batch of {BATCH}");
    }
    let mut rng = stream(1, &[]);
    let plane = 3 * HEIGHT * WIDTH;
    for _ in 0..BATCHES {
        let mut buf = vec![0f32; BATCH * plane];
        for k in 0..BATCH {
            let (store, i) = images[rng.gen_range(0..total)];
            test_into(
                stores[store].image(i),
                HEIGHT,
                WIDTH,
                &mut buf[k * plane..(k + 1) * plane],
            );
        }
        let x = Tensor::from_slice(&buf).view([BATCH as i64, 3, HEIGHT as i64, WIDTH as i64]);
        tch::no_grad(|| model.forward(&x, true));
    }
    write_safetensors(&out, &model.state(), &ck.metadata)?;
    println!(
        "{}: running statistics from {BATCHES} batches of {BATCH} of {} ({total} images)",
        out.display(),
        args[3..].join(" + ")
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    agd::cli::exit_code(run())
}
