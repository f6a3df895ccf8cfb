//! The demo's identity-histogram number for any generation folder: whether dreamed images
//! carry the colours of the identities they were dreamed for (`agd::inversion::fidelity`).
//!
//! `cargo run --release --example dream_fidelity -- DATA_ROOT DATASET DREAMED_DIR [H W]`
//! (the teacher's task, its training images read at H×W, 64×32 unless given).

use anyhow::{Context, Result};
use std::path::PathBuf;

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: dream_fidelity DATA_ROOT DATASET DREAMED_DIR [HEIGHT WIDTH]";
    let [root, dataset, dreamed] = [0, 1, 2].map(|i| args.get(i).cloned());
    let (Some(root), Some(dataset), Some(dreamed)) = (root, dataset, dreamed) else {
        anyhow::bail!(usage);
    };
    let size = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{usage}: {v}"))
        })
    };
    let report = agd::inversion::fidelity::measure(
        &PathBuf::from(root),
        &dataset,
        &PathBuf::from(dreamed),
        size(3, 64)?,
        size(4, 32)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    agd::cli::exit_code(run())
}
