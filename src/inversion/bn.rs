//! The feature-statistics loss of DeepInversion (SPEC §7): every BatchNorm's running mean
//! and variance describe what the teacher saw in training, so images whose activations
//! reproduce those statistics look, to the teacher, like its training data.

use crate::model::BnStat;
use tch::Tensor;

/// Σ_l m_l·(‖running_var_l − var_l‖₂ + ‖running_mean_l − mean_l‖₂) over the BatchNorm
/// inputs of one forward pass (module order: the backbone's 2-D layers, then the embedding
/// BatchNorm1d), with m = `first_bn_multiplier` for the first layer and 1 for the others.
/// Running statistics are constants; the gradient flows into the batch's statistics.
/// Not yet scaled by `r_feature`. No layers: 0.
pub fn bn_statistics_loss(stats: &[BnStat], first_bn_multiplier: f64) -> Tensor {
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let var = (s.running_var.detach() - &s.var).norm();
            let mean = (s.running_mean.detach() - &s.mean).norm();
            let m = if i == 0 { first_bn_multiplier } else { 1.0 };
            (var + mean) * m
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::from(0f32))
}
