//! Losses of docs/method.md §4. Each works in the dtype of its inputs, so the fixture tests can run
//! them in float64 against the reference's golden values.

pub mod distill;

use tch::{Kind, Reduction, Tensor};

/// euclid(x, y) = sqrt(clamp(|x|² + |y|² − 2x·y, min 1e-12)), all pairs (N×M).
pub fn euclid(x: &Tensor, y: &Tensor) -> Tensor {
    let xx = x
        .pow_tensor_scalar(2)
        .sum_dim_intlist(1, true, None::<Kind>);
    let yy = y
        .pow_tensor_scalar(2)
        .sum_dim_intlist(1, true, None::<Kind>)
        .tr();
    (xx + yy - x.mm(&y.tr()) * 2.0).clamp_min(1e-12).sqrt()
}

/// Cross-entropy on logits, no label smoothing.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_loss(targets, None::<Tensor>, Reduction::Mean, -100, 0.0)
}

/// TriHard+ with soft margin 0 on `global` (docs/method.md §4): for each anchor the hardest positive
/// (itself included) and hardest negative under `euclid`;
/// t = (|g_p|² − |g_n|² + 2 g_a·g_n − 2 g_a·g_p) / (d_ap + d_an), loss = mean log(1 + eᵗ).
/// t equals d_ap − d_an, but the gradient flows through this exact expression, as the
/// reference's does.
pub fn triplet(global: &Tensor, pids: &Tensor) -> Tensor {
    let dist = euclid(global, global);
    let pids = pids.to_device(global.device());
    let same = pids.unsqueeze(0).eq_tensor(&pids.unsqueeze(1));
    let (p_idx, n_idx) = tch::no_grad(|| {
        let d = dist.detach();
        let p = d
            .masked_fill(&same.logical_not(), f64::NEG_INFINITY)
            .argmax(1, true);
        let n = d.masked_fill(&same, f64::INFINITY).argmin(1, true);
        (p, n)
    });
    let d_ap = dist.gather(1, &p_idx, false).squeeze_dim(1);
    let d_an = dist.gather(1, &n_idx, false).squeeze_dim(1);
    let xp = global.index_select(0, &p_idx.squeeze_dim(1));
    let xn = global.index_select(0, &n_idx.squeeze_dim(1));
    let sq = |t: &Tensor| {
        t.pow_tensor_scalar(2)
            .sum_dim_intlist(1, false, None::<Kind>)
    };
    let dot = |a: &Tensor, b: &Tensor| (a * b).sum_dim_intlist(1, false, None::<Kind>);
    let t = (sq(&xp) - sq(&xn) + dot(global, &xn) * 2.0 - dot(global, &xp) * 2.0) / (d_ap + d_an);
    t.softplus().mean(None::<Kind>)
}

/// The base loss of every training step: CE on logits + triplet on global features.
pub struct BaseLoss {
    pub ce: Tensor,
    pub triplet: Tensor,
}

impl BaseLoss {
    pub fn new(logits: &Tensor, global: &Tensor, pids: &Tensor) -> Self {
        Self {
            ce: cross_entropy(logits, pids),
            triplet: triplet(global, pids),
        }
    }

    pub fn total(&self) -> Tensor {
        &self.ce + &self.triplet
    }
}
