//! How far a set of images is from the teacher's training statistics: DeepInversion's BN
//! loss (`agd::inversion::bn`, unscaled by `r_feature`) of batches of dreamed images, next
//! to the same number for batches of the teacher's real training images (the level dreams
//! can hope to reach). Dreams far above it also shift the student's BatchNorm running
//! statistics when the incremental step forwards them with the new task's images. And the
//! teacher's top-1 on each set as read from disk: what the dreams still say about their
//! identities after JPEG encoding.
//!
//! `cargo run --release --example bn_gap -- TEACHER DATA_ROOT DATASET DREAMED_DIR [BS H W]`
//! (TEACHER: a checkpoint or its logs folder; batches of BS = 40 images at 64×32 unless given).

use agd::data::dataset::{Dreamed, ReidDataset};
use agd::data::images::ImageStore;
use agd::data::transforms::test_into;
use agd::error::Setting;
use agd::inversion::bn::bn_statistics_loss;
use agd::model::checkpoint::{self, Checkpoint};
use agd::model::{ModelChoice, ReidModel};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// Over batches of `bs` (in `order`): the mean first-layer and all-layer BN loss, the
/// teacher's top-1 on the images' labels, and the number of batches.
fn gap(
    model: &ReidModel,
    store: &ImageStore,
    labels: &[i64],
    order: &[usize],
    bs: usize,
) -> (f64, f64, f64, usize) {
    let (h, w) = (store.height, store.width);
    let (mut first, mut all, mut correct, mut n) = (0.0, 0.0, 0.0, 0);
    for chunk in order.chunks_exact(bs) {
        let mut buf = vec![0f32; bs * 3 * h * w];
        for (k, &i) in chunk.iter().enumerate() {
            test_into(
                store.image(i),
                h,
                w,
                &mut buf[k * 3 * h * w..(k + 1) * 3 * h * w],
            );
        }
        let x = Tensor::from_slice(&buf).view([bs as i64, 3, h as i64, w as i64]);
        let (out, stats) = tch::no_grad(|| model.forward_with_bn_stats(&x, false));
        first += bn_statistics_loss(&stats[..1], 1.0).double_value(&[]);
        all += bn_statistics_loss(&stats, 10.0).double_value(&[]);
        let y = Tensor::from_slice(&chunk.iter().map(|&i| labels[i]).collect::<Vec<_>>());
        correct += out
            .logits
            .argmax(1, false)
            .eq_tensor(&y)
            .sum(tch::Kind::Float)
            .double_value(&[]);
        n += 1;
    }
    let images = (n * bs) as f64;
    (first / n as f64, all / n as f64, correct / images, n)
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bn_gap TEACHER DATA_ROOT DATASET DREAMED_DIR [BS HEIGHT WIDTH]";
    if args.len() < 4 {
        bail!(usage);
    }
    let num = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{usage}: {v}"))
        })
    };
    let (bs, h, w) = (num(4, 40)?, num(5, 64)?, num(6, 32)?);
    if bs == 0 {
        bail!("{usage}: BS must be at least 1");
    }
    let ck = Checkpoint::load(&checkpoint::resolve(
        &PathBuf::from(&args[0]),
        Setting::Teacher,
    )?)?;
    let model = ReidModel::from_checkpoint(&ck, &ModelChoice::default(), Device::Cpu)?;
    let data = ReidDataset::load(&PathBuf::from(&args[1]), &args[2])?;
    let dreamed = Dreamed::load(&PathBuf::from(&args[3]), usize::MAX)?;
    let real = ImageStore::load(&data.train, h, w, "real")?;
    let dreams = ImageStore::load(&dreamed.records, h, w, "dreamed")?;
    // Batches spread over identities as the inversion's are: a stride coprime to n through
    // the pid-sorted list visits every image once.
    let spread = |n: usize| -> Vec<usize> {
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let stride = (7..).find(|&s| gcd(s, n) == 1).unwrap_or(1);
        (0..n).map(|k| (k * stride) % n).collect()
    };
    let pids =
        |records: &[agd::data::dataset::Record]| records.iter().map(|r| r.pid).collect::<Vec<_>>();
    for (what, n) in [("real training", real.len()), ("dreamed", dreams.len())] {
        if n < bs {
            bail!("{n} {what} images: fewer than one batch of BS = {bs}; give a smaller BS");
        }
    }
    println!("images   batches  first BN layer  all layers (×10 first)  teacher top-1");
    for (name, store, labels) in [
        ("real", &real, pids(&data.train)),
        ("dreamed", &dreams, pids(&dreamed.records)),
    ] {
        let (first, all, top1, n) = gap(&model, store, &labels, &spread(store.len()), bs);
        println!(
            "{name:<8} {n:>7}  {first:>14.3}  {all:>22.3}  {:>12.1}%",
            100.0 * top1
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    agd::cli::exit_code(run())
}
