//! A training run's checkpoint, both ways: [`save_checkpoint`] writes the model, the
//! optimiser's state and the run's metadata; [`restore`] reads them back for `--resume`.
//! One module, so the names and metadata keys written are the ones read.

use super::fit::FitConfig;
use super::optimizer::Optimizer;
use crate::error::Setting;
use crate::model::checkpoint::{model_metadata, safetensors_bytes, Checkpoint, LATEST};
use crate::model::ReidModel;
use anyhow::Result;

const OPTIMIZER: &str = "optimizer";
const OPTIMIZER_STEPS: &str = "optimizer_steps";

/// Saves model and optimiser state as `<logs>/checkpoint.safetensors` (and a numbered copy).
pub fn save_checkpoint(
    cfg: &FitConfig,
    model: &ReidModel,
    opt: &Optimizer,
    epoch: usize,
    numbered: bool,
) -> Result<()> {
    let mut tensors = model.state();
    // A non-finite model would replace the last good checkpoint with one that only
    // ever evaluates to NaN.
    if let Some((name, _)) = tensors.iter().find(|(_, t)| {
        t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false)
    }) {
        anyhow::bail!(
            "after epoch {epoch} the model's {name} is not finite: not saved, the last \
             checkpoint is kept (training diverged: try a lower learning rate)"
        );
    }
    tensors.extend(opt.state_tensors());
    let mut meta = model_metadata(&model.config);
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert(OPTIMIZER.into(), opt.kind.name().into());
    meta.insert(OPTIMIZER_STEPS.into(), opt.steps().to_string());
    meta.insert("args".into(), cfg.args.clone());
    let bytes = safetensors_bytes(&tensors, &meta)?;
    crate::io::write_atomic(&cfg.logs_dir.join(LATEST), &bytes)?;
    if numbered {
        let copy = cfg
            .logs_dir
            .join(format!("checkpoint-epoch{epoch}.safetensors"));
        crate::io::write_atomic(&copy, &bytes)?;
    }
    Ok(())
}

/// Loads what [`save_checkpoint`] wrote into `model` and `opt`; returns the epochs
/// finished. A checkpoint without optimiser state (the reference's) restarts the
/// optimiser's moments.
pub fn restore(ck: &Checkpoint, model: &mut ReidModel, opt: &mut Optimizer) -> Result<usize> {
    model.load_checkpoint(ck)?;
    if let Some(kind) = ck.metadata.get(OPTIMIZER) {
        if kind != opt.kind.name() {
            crate::bad_setting!(
                Setting::Optimizer,
                opt.kind.name(),
                "{} was saved with the {kind} optimizer",
                ck.path.display()
            );
        }
    }
    let steps = ck
        .metadata
        .get(OPTIMIZER_STEPS)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    opt.load_state(|n| ck.tensors.get(n).map(|t| t.shallow_clone()), steps)?;
    Ok(ck.epoch)
}
