//! `cargo bench --bench data_parallel`: training images/s of one worker against two workers
//! (`--nproc-per-node 2`, Gloo on 127.0.0.1), each of one thread, on the CPU, with the
//! share of the two-worker epoch that the exchanges between the ranks took (the gathered
//! outputs, synchronised BatchNorm, the gradient all-reduce). One process on every core is
//! measured too, as the run a user has without data parallelism, and two workers with
//! `--local-bn` (no outputs or BatchNorm statistics exchanged).
//!
//! Each run is `agd train` as a whole process (ResNet-34 at 64×32, batch 32 of synthetic
//! people, two epochs); the second epoch's figures are read from its `log.txt`.
//!
//! Environment: `AGD_BENCH_EPOCHS` (default 2), `AGD_BENCH_BATCH` (default 32).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

fn agd(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agd"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().context("cannot run agd")?;
    if !out.status.success() {
        bail!(
            "agd {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn env_or(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

/// The last epoch's images/s, and the exchanges' share when the run logged one.
fn figures(logs: &Path) -> Result<(f64, Option<f64>)> {
    let log = std::fs::read_to_string(logs.join("log.txt"))?;
    let epoch = log
        .lines()
        .rfind(|l| l.starts_with("epoch ") && l.contains(" img/s"))
        .context("no epoch line in the log")?;
    let images = epoch
        .split(" img/s")
        .next()
        .and_then(|t| t.rsplit(", ").next())
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no img/s in {epoch:?}"))?;
    let share = log
        .lines()
        .rfind(|l| l.contains("exchanges between the ranks"))
        .and_then(|l| l.rsplit('(').next())
        .and_then(|t| t.trim_end_matches("%)").parse().ok());
    Ok((images, share))
}

fn main() -> Result<()> {
    let epochs = env_or("AGD_BENCH_EPOCHS", 2)?.to_string();
    let batch = env_or("AGD_BENCH_BATCH", 32)?.to_string();
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("data");
    let root_s = root.display().to_string();
    agd(
        &[
            "synth",
            "--data-root",
            &root_s,
            "--dataset",
            "s",
            "--ids",
            "32",
            "--images-per-id",
            "16",
            "--cameras",
            "3",
            "--seed",
            "1",
        ],
        &[],
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "agd train, ResNet-34 at 64×32, batch {batch}, epoch {epochs} of {epochs}; {cores} cores"
    );
    let cores_s = cores.to_string();
    let runs: [(&str, &[&str], &str); 4] = [
        ("1 worker, 1 thread", &[], "1"),
        ("2 workers, 1 thread each", &["--nproc-per-node", "2"], "1"),
        (
            "2 workers, --local-bn",
            &["--nproc-per-node", "2", "--local-bn"],
            "1",
        ),
        ("1 worker, every core", &[], &cores_s),
    ];
    let mut single = None;
    for (name, extra, threads) in runs {
        let logs = dir.path().join(name.replace([' ', ','], "-"));
        let logs_s = logs.display().to_string();
        let mut args = vec![
            "train",
            "-g",
            "cpu",
            "-s",
            "1",
            "--dataset",
            "s",
            "--data-root",
            &root_s,
            "--depth",
            "34",
            "--embedding",
            "512",
            "--height",
            "64",
            "--width",
            "32",
            "--pretrained",
            "none",
            "--warmup",
            "0",
            "--evaluate",
            "0",
            "-b",
            &batch,
            "--epochs",
            &epochs,
            "--logs-dir",
            &logs_s,
        ];
        args.extend(extra);
        agd(&args, &[("OMP_NUM_THREADS", threads)])?;
        let (images, share) = figures(&logs)?;
        let ratio = single.map_or(String::new(), |s: f64| format!("  ×{:.2}", images / s));
        let share = share.map_or(String::new(), |s| {
            format!("  exchanges {s:.0}% of the epoch")
        });
        println!("{name:>28}: {images:7.1} img/s{ratio}{share}");
        single.get_or_insert(images);
    }
    Ok(())
}
