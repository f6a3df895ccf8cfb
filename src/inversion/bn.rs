//! The feature-statistics loss of DeepInversion (docs/method.md §7): every BatchNorm's running mean
//! and variance describe what the teacher saw in training, so images whose activations
//! reproduce those statistics look, to the teacher, like its training data.

use crate::model::BnStat;
use tch::{Kind, Tensor};

/// Σ_l m_l·(‖running_var_l − var_l‖₂ + ‖running_mean_l − mean_l‖₂) over the BatchNorm
/// inputs of one forward pass (module order: the backbone's 2-D layers, then the embedding
/// BatchNorm1d), with m = `first_bn_multiplier` for the first layer and 1 for the others.
/// Running statistics are constants; the gradient flows into the batch's statistics.
/// Not yet scaled by `r_feature`. No layers: 0.
///
/// All layers at once, in a dozen kernels whatever the depth (ResNet-50 has 54 BatchNorms,
/// and one norm per statistic per layer was ~320 small kernels per iteration, forward and
/// as many backward, which leave a GPU idle): every layer's channels are concatenated,
/// squared differences summed per layer with one `index_add`, and the square roots weighted.
pub fn bn_statistics_loss(stats: &[BnStat], first_bn_multiplier: f64) -> Tensor {
    let Some(first) = stats.first() else {
        return Tensor::from(0f32);
    };
    let device = first.mean.device();
    let cat =
        |pick: fn(&BnStat) -> &Tensor| Tensor::cat(&stats.iter().map(pick).collect::<Vec<_>>(), 0);
    let dvar = cat(|s| &s.running_var).detach() - cat(|s| &s.var);
    let dmean = cat(|s| &s.running_mean).detach() - cat(|s| &s.mean);
    // Each channel's layer, built on the host (an upload, never a wait for the device).
    let layer_of: Vec<i64> = stats
        .iter()
        .enumerate()
        .flat_map(|(l, s)| std::iter::repeat_n(l as i64, s.mean.size()[0] as usize))
        .collect();
    let layer_of = Tensor::from_slice(&layer_of).to_device(device);
    let squares = Tensor::stack(&[dvar.square(), dmean.square()], 0);
    let per_layer = Tensor::zeros([2, stats.len() as i64], (squares.kind(), device))
        .index_add(1, &layer_of, &squares);
    let norms = sqrt_zero_safe(&per_layer).sum_dim_intlist(0, false, None::<Kind>);
    let mut weights = vec![1f32; stats.len()];
    weights[0] = first_bn_multiplier as f32;
    let weights = Tensor::from_slice(&weights)
        .to_device(device)
        .to_kind(norms.kind());
    (norms * weights).sum(None::<Kind>)
}

/// √x with the gradient `‖·‖₂` has at zero (0, not √'s infinity, which would turn an image
/// whose layer already matches into NaN): zeros are routed around the square root.
fn sqrt_zero_safe(x: &Tensor) -> Tensor {
    let positive = x.gt(0.0);
    let safe = x.where_self(&positive, &x.ones_like());
    safe.sqrt().where_self(&positive, &x.zeros_like())
}
