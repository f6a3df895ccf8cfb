//! The learning-rate schedule of docs/method.md §3, set at the start of each epoch.

use crate::error::Setting;

/// Learning rate of epoch `epoch` (1-based): linear warm-up over the first `warmup` epochs,
/// then ×0.1 at every milestone ≤ epoch.
///
/// The reference's scheduler counts the warm-up from the epoch a run *started* at, so a
/// run resumed during warm-up gets other rates than an uninterrupted one; agd always counts
/// from epoch 1, so a resumed run reproduces the uninterrupted one.
pub fn learning_rate(base: f64, epoch: usize, warmup: usize, milestones: &[usize]) -> f64 {
    if epoch < warmup {
        base * epoch as f64 / warmup as f64
    } else {
        let decays = milestones.iter().filter(|&&m| epoch >= m).count();
        base * 0.1f64.powi(decays as i32)
    }
}

/// The reference asserts that the first milestone comes after the warm-up.
pub fn validate(warmup: usize, milestones: &[usize]) -> anyhow::Result<()> {
    if let Some(&first) = milestones.first() {
        if first <= warmup {
            crate::bad_setting!(
                Setting::EpochsDecay,
                first,
                "the first decay epoch must come after the {warmup} warm-up epochs"
            );
        }
    }
    Ok(())
}
