//! DeepInversion's image priors (docs/method.md §7): total variation over the four neighbour
//! directions, in an L1 and an L2 (Frobenius) flavour, and the mean L2 norm of the images.
//! They keep the dreamed images smooth and bounded; the statistics loss alone would let
//! high-frequency noise satisfy the teacher.

use tch::Tensor;

/// Weights of the three priors in the total.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorWeights {
    /// Total-variation L1 coefficient.
    #[arg(long, default_value_t = 0.0)]
    pub tv_l1: f64,
    /// Total-variation L2 coefficient.
    #[arg(long, default_value_t = 0.0001)]
    pub tv_l2: f64,
    /// Image L2 coefficient.
    #[arg(long, default_value_t = 0.00001)]
    pub l2: f64,
}

/// The priors of one batch, each a scalar tensor on the batch's graph.
pub struct ImagePrior {
    /// Σ over the four directions of mean |Δ|.
    pub tv_l1: Tensor,
    /// Σ over the four directions of ‖Δ‖ (Frobenius over the whole batch).
    pub tv_l2: Tensor,
    /// mean over images of ‖x_i‖₂.
    pub l2: Tensor,
}

/// Neighbouring-pixel differences of N×C×H×W images: right, down, down-left
/// (anti-diagonal) and down-right (diagonal), in the reference's order and signs.
fn differences(x: &Tensor) -> [Tensor; 4] {
    let (h, w) = (x.size()[2], x.size()[3]);
    let rows = |start, len| x.narrow(2, start, len);
    let cols = |t: &Tensor, start, len| t.narrow(3, start, len);
    [
        cols(x, 0, w - 1) - cols(x, 1, w - 1),
        rows(0, h - 1) - rows(1, h - 1),
        cols(&rows(1, h - 1), 0, w - 1) - cols(&rows(0, h - 1), 1, w - 1),
        cols(&rows(0, h - 1), 0, w - 1) - cols(&rows(1, h - 1), 1, w - 1),
    ]
}

impl ImagePrior {
    /// The priors of `x` (N×C×H×W, any float kind; the result keeps it).
    pub fn of(x: &Tensor) -> Self {
        let d = differences(x);
        let sum = |f: &dyn Fn(&Tensor) -> Tensor| {
            d.iter()
                .map(f)
                .reduce(|a, b| a + b)
                .expect("four differences")
        };
        let tv_l1 = sum(&|t| t.abs().mean(t.kind()));
        let tv_l2 = sum(&|t| t.norm());
        let l2 = x
            .flatten(1, -1)
            .norm_scalaropt_dim(2.0, [1], false)
            .mean(x.kind());
        Self { tv_l1, tv_l2, l2 }
    }

    /// tv_l1·w.tv_l1 + tv_l2·w.tv_l2 + l2·w.l2. Terms of weight 0 stay off the graph, so
    /// the backward pass does not run through them.
    pub fn total(&self, w: &PriorWeights) -> Tensor {
        [
            (&self.tv_l1, w.tv_l1),
            (&self.tv_l2, w.tv_l2),
            (&self.l2, w.l2),
        ]
        .into_iter()
        .filter(|(_, weight)| *weight != 0.0)
        .map(|(t, weight)| t * weight)
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| self.l2.zeros_like())
    }
}
