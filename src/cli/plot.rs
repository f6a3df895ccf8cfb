//! `agd plot`: redraws `curves.png` from `metrics.csv`, for runs trained before pictures
//! existed, runs whose picture failed, or a picture elsewhere (`-o`).

use super::args::PlotArgs;
use anyhow::{bail, Result};

pub fn run(args: &PlotArgs) -> Result<()> {
    if args.output.is_some() && args.logs_dirs.len() > 1 {
        bail!("-o/--output names one picture: give one logs folder with it");
    }
    if let Some(out) = &args.output {
        // Before reading anything: the extension decides the format.
        if let Err(e) = crate::plot::picture_format(out) {
            bail!("-o/--output {}: {e}", out.display());
        }
    }
    for dir in &args.logs_dirs {
        let csv = dir.join("metrics.csv");
        if !csv.is_file() {
            bail!(
                "{} has no metrics.csv: not the logs folder of a training run",
                dir.display()
            );
        }
        let out = args
            .output
            .clone()
            .unwrap_or_else(|| dir.join("curves.png"));
        crate::plot::training_curves(&csv, &out)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
