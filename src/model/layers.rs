//! The two layers the ResNet needs beyond what libtorch computes directly: a bias-free
//! convolution and a BatchNorm that can report the statistics of its *input* (DeepInversion
//! matches them to the running statistics, docs/method.md §7).

use super::params::Scope;
use crate::dist::Group;
use tch::Kind;
use tch::Tensor;

/// How the ResNet trunk computes; parameters, BatchNorm statistics, the head and every
/// loss stay float32 and checkpoints NCHW whatever it is.
///
/// Both choices travel with the activations rather than through every call: the model
/// prepares its input ([`Compute::prepare`]), each convolution takes its weight to the
/// input's type and layout, each BatchNorm normalises in float32 and hands back the type
/// it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compute {
    /// Mixed precision: convolutions, ReLUs and residual sums in bfloat16 (`--amp`).
    pub amp: bool,
    /// channels_last (NHWC) activations and weights, the layout cuDNN's and oneDNN's fast
    /// convolutions run in (`--memory-format nhwc`).
    pub nhwc: bool,
}

impl Compute {
    /// `x` (N×3×H×W float32) typed and laid out as the trunk computes.
    pub fn prepare(self, x: &Tensor) -> Tensor {
        let x = if self.amp {
            x.to_kind(Kind::BFloat16)
        } else {
            x.shallow_clone()
        };
        if self.nhwc {
            channels_last(&x)
        } else {
            x
        }
    }
}

/// `x` (4-D) with channels_last strides: the same N×C×H×W tensor, C varying fastest in
/// memory. tch has no memory-format argument; permuting to NHWC, making that contiguous
/// and permuting back gives exactly PyTorch's `to(memory_format=torch.channels_last)`.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether a 4-D tensor is laid out channels_last (and has more than one channel, where
/// the layouts differ).
pub fn is_channels_last(x: &Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    size.len() == 4 && size[1] > 1 && stride[1] == 1
}

/// Bias-free 2-D convolution, Kaiming-normal (fan_out, relu) initialised as torchvision.
pub struct Conv2d {
    weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(s: &mut Scope, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> Self {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let weight = s.trainable("weight", Scope::normal(&[cout, cin, k, k], std));
        Self {
            weight,
            stride,
            padding,
        }
    }

    /// The weight follows the input's type ([`Compute::amp`]: a bfloat16 copy whose
    /// gradient flows back to the float32 weight) and layout ([`Compute::nhwc`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut weight = if x.kind() == self.weight.kind() {
            self.weight.shallow_clone()
        } else {
            self.weight.to_kind(x.kind())
        };
        if is_channels_last(x) {
            weight = channels_last(&weight);
        }
        x.conv2d(
            &weight,
            None::<Tensor>,
            [self.stride],
            [self.padding],
            [1],
            1,
        )
    }
}

/// Statistics of one BatchNorm layer's input on a batch, with its running statistics.
pub struct BnStat {
    pub mean: Tensor,
    /// Biased variance, as BatchNorm normalises with.
    pub var: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

/// Per-channel mean and biased variance of N×C(×H×W) input, differentiable.
///
/// DeepInversion needs them at every BatchNorm of every iteration, so they come from sums
/// over each (sample, channel) row, which is contiguous. libtorch's `var_mean` over dims
/// (0, 2, 3) walks strided memory with Welford updates and measured over ten times slower
/// (ResNet-50 activations at 256×128).
///
/// The variance is the mean square of the input shifted by its detached mean, not
/// E[x²] − E[x]²: in float32 that difference cancels catastrophically when |mean| ≫ std
/// (relative error 3e-3 to 5e-3 at |mean|/std = 100, 3e-5 to 5e-5 at 10, against a float64
/// two-pass variance), and activations after a ReLU with a large offset do reach such
/// ratios. Shifted, the error stays ~2e-7 whatever the ratio. The shift needs no gradient:
/// the derivative of E[(x − s)²] − (E[x] − s)² with respect to s is zero at any s, and the
/// correction term (E[x] − s)² is exactly zero for s = the same float mean, so it is
/// omitted. The price is one temporary the size of the input (x − s) and one more
/// elementwise pass over it per BatchNorm. On a shared 2-core machine (load ~15) the
/// moments alone, forward and backward over ResNet-50's BN inputs at batch 16, took a
/// median 25.2 s against 21.7 s before (+16%, runs spread 19–45 s: noise dominates). The
/// `invert` bench (33.9 s per iteration before the change) did not finish its rerun after
/// it under that load, so the cost per whole iteration is not measured yet.
///
/// On CUDA, `var_mean` is one kernel (a parallel Welford pass, stable without the shift),
/// where the CPU-measured slowness does not hold: [`channel_moments_fused`] runs there.
fn channel_moments(x: &Tensor) -> (Tensor, Tensor) {
    if x.device().is_cuda() {
        return channel_moments_fused(x);
    }
    let size = x.size();
    if is_channels_last(x) {
        // NHWC rows would be copied by the reshape below; reduce over N, H, W in place
        // (C is the contiguous dimension: each reduction reads memory in order).
        let dims = [0i64, 2, 3];
        let mean = x.mean_dim(&dims[..], false, None::<Kind>);
        let centered = x - mean.detach().reshape([1, size[1], 1, 1]);
        let var = centered.square().mean_dim(&dims[..], false, None::<Kind>);
        return (mean, var);
    }
    let rows = x.reshape([size[0], size[1], -1]);
    let count = (size[0] * rows.size()[2]) as f64;
    let sum = |t: Tensor, dim: i64| t.sum_dim_intlist(&[dim][..], false, None::<Kind>);
    let mean = sum(sum(rows.shallow_clone(), 2), 0) / count;
    let centered = &rows - mean.detach().reshape([1, size[1], 1]);
    let var = sum(centered.norm_scalaropt_dim(2.0, [2], false).square(), 0) / count;
    (mean, var)
}

/// [`channel_moments`] as libtorch's single `var_mean` (biased, over every dimension but C).
fn channel_moments_fused(x: &Tensor) -> (Tensor, Tensor) {
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let (var, mean) = x.var_mean_correction(&dims[..], 0, false);
    (mean, var)
}

/// BatchNorm over channels of N×C(×H×W) input (momentum 0.1, eps 1e-5, as PyTorch).
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm {
    pub const MOMENTUM: f64 = 0.1;
    pub const EPS: f64 = 1e-5;

    /// Weight 1, bias 0, both trained. That includes the ReID head's (docs/method.md §3): the
    /// reference's constructor freezes its bias, but every trainer calls
    /// `requires_grad_(True)` on the whole network each epoch, so the bias does train.
    pub fn new(s: &mut Scope, channels: i64) -> Self {
        let ones = || Tensor::ones([channels], (Kind::Float, tch::Device::Cpu));
        let zeros = || Tensor::zeros([channels], (Kind::Float, tch::Device::Cpu));
        let weight = s.trainable("weight", ones());
        let bias = s.trainable("bias", zeros());
        Self {
            weight,
            bias,
            running_mean: s.buffer("running_mean", zeros()),
            running_var: s.buffer("running_var", ones()),
            num_batches_tracked: s.buffer(
                "num_batches_tracked",
                Tensor::zeros([], (Kind::Int64, tch::Device::Cpu)),
            ),
        }
    }

    /// Normalises `x`; in training mode with batch statistics (updating the running ones),
    /// over every rank's rows when `norms.sync` names the ranks. When `norms.stats` is
    /// given, the input's mean and biased variance are appended to it.
    ///
    /// Input in a lower precision ([`Compute::amp`]) is normalised in float32 (statistics
    /// and running averages in float32, as autocast runs BatchNorm) and returned in its
    /// own type.
    pub fn forward(&self, x: &Tensor, norms: &mut Norms) -> Tensor {
        if x.kind() != Kind::Float && x.kind() != Kind::Double {
            let y = self.forward(&x.to_kind(Kind::Float), norms);
            return y.to_kind(x.kind());
        }
        if let Some(stats) = norms.stats.as_deref_mut() {
            let (mean, var) = channel_moments(x);
            stats.push(BnStat {
                mean,
                var,
                running_mean: self.running_mean.shallow_clone(),
                running_var: self.running_var.shallow_clone(),
            });
        }
        if norms.train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
            if let (Some(group), None) = (norms.sync, &norms.failed) {
                match self.synchronised(x, group) {
                    Ok(y) => return y,
                    Err(e) => norms.failed = Some(e),
                }
            }
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            norms.train,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )
    }

    /// Training-mode BatchNorm whose statistics are those of every rank's rows together
    /// (synchronised BatchNorm): the mean and the biased variance of the global batch, so
    /// forward and backward equal one process's over the whole batch up to the order of
    /// summation. Running statistics move as PyTorch's do, with the unbiased variance of
    /// the global batch.
    ///
    /// One exchange each way, as torch's SyncBatchNorm: every rank contributes its count,
    /// channel sums and sums of squares about its own mean (a two-pass variance, not
    /// E[x²] − E[x]², which cancels in float32: see [`channel_moments`]) as its row of a
    /// world × (2C + 1) table that a sum over ranks fills in ([`Group::sum_with_gradient`],
    /// whose gradient is the sum of the ranks' gradients); the global variance is then
    /// Chan's combination of the ranks' parts, stable whatever the means.
    fn synchronised(&self, x: &Tensor, group: &Group) -> anyhow::Result<Tensor> {
        let c = x.size()[1];
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; x.dim()];
        shape[1] = c;
        let local = (x.numel() as i64 / c.max(1)) as f64;
        let (kind, device) = (x.kind(), x.device());
        let sums = x.sum_dim_intlist(&dims[..], false, kind);
        let local_mean = &sums / local.max(1.0);
        let squares = (x - local_mean.view(shape.as_slice()))
            .square()
            .sum_dim_intlist(&dims[..], false, kind);
        let count = Tensor::from_slice(&[local]).to_kind(kind).to_device(device);
        let own = Tensor::cat(&[count, sums, squares], 0).unsqueeze(0);
        let (world, rank) = (group.world() as i64, group.rank() as i64);
        let mut rows: Vec<Tensor> = (0..world)
            .map(|_| Tensor::zeros([1, 2 * c + 1], (kind, device)))
            .collect();
        rows[rank as usize] = own;
        let table = group.sum_with_gradient(&Tensor::cat(&rows, 0))?;
        let counts = table.narrow(1, 0, 1); // world × 1
        let n = counts.sum(kind).double_value(&[]);
        let rank_sums = table.narrow(1, 1, c);
        let rank_squares = table.narrow(1, 1 + c, c);
        let mean = rank_sums.sum_dim_intlist(&[0i64][..], false, kind) / n;
        let rank_means = &rank_sums / counts.clamp_min(1.0);
        let spread = (rank_means - mean.unsqueeze(0)).square() * &counts;
        let var = (rank_squares + spread).sum_dim_intlist(&[0i64][..], false, kind) / n;
        let scale = (&var + Self::EPS).rsqrt() * &self.weight;
        tch::no_grad(|| {
            let m = Self::MOMENTUM;
            let unbiased = var.detach() * (n / (n - 1.0).max(1.0));
            let mut rm = self.running_mean.shallow_clone();
            let mut rv = self.running_var.shallow_clone();
            let _ = rm.g_mul_scalar_(1.0 - m).g_add_(&(mean.detach() * m));
            let _ = rv.g_mul_scalar_(1.0 - m).g_add_(&(unbiased * m));
        });
        let centered = x - mean.view(shape.as_slice());
        Ok(centered * scale.view(shape.as_slice()) + self.bias.view(shape.as_slice()))
    }
}

/// How a forward pass runs its BatchNorms.
#[derive(Default)]
pub struct Norms<'a> {
    /// Batch statistics (training) or the running ones (evaluation).
    pub train: bool,
    /// Receives every BatchNorm's input statistics, in module order (DeepInversion).
    pub stats: Option<&'a mut Vec<BnStat>>,
    /// In training, the statistics of every rank's rows together (synchronised
    /// BatchNorm, [`BatchNorm::synchronised`]).
    pub sync: Option<&'a Group>,
    /// The first exchange that failed: the pass goes on with this rank's statistics, and
    /// its caller reports the error.
    pub failed: Option<anyhow::Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ranks (threads over a file store), each with half the batch, normalise and
    /// back-propagate as one BatchNorm over the whole batch does.
    #[test]
    fn synchronised_batchnorm_over_two_ranks_is_one_batchnorm_over_the_batch() {
        use crate::dist::{Group, Rendezvous};
        use crate::model::params::{Group as ParamGroup, Params, Scope};
        let cpu = (Kind::Double, tch::Device::Cpu);
        tch::manual_seed(5);
        let x = Tensor::randn([8, 4, 16, 8], cpu) * 2.0 + 1.0;
        let probe = Tensor::randn([8, 4, 16, 8], cpu);
        let norm = || {
            let mut params = Params::new(tch::Device::Cpu);
            let bn = BatchNorm::new(&mut Scope::root(&mut params, "bn", ParamGroup::Base), 4);
            for t in [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var] {
                let mut t = t.shallow_clone();
                tch::no_grad(|| t.set_data(&t.to_kind(Kind::Double)));
            }
            tch::no_grad(|| {
                bn.weight
                    .shallow_clone()
                    .copy_(&Tensor::from_slice(&[0.5f64, 1.0, 1.5, 2.0]));
            });
            bn
        };
        // One process.
        let bn = norm();
        let xs = x.detach().set_requires_grad(true);
        let y = bn
            .forward(
                &xs,
                &mut Norms {
                    train: true,
                    ..Norms::default()
                },
            )
            .relu_();
        let y = bn.forward(
            &y,
            &mut Norms {
                train: true,
                ..Norms::default()
            },
        );
        (&y * &probe).sum(Kind::Double).backward();
        let (y1, g1, w1) = (y.detach(), xs.grad(), bn.weight.grad());
        // Two ranks, rows 0..4 and 4..8.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store");
        let threads: Vec<_> = (0..2)
            .map(|rank| {
                let (x, probe, file) = (x.copy(), probe.copy(), file.clone());
                std::thread::spawn(move || {
                    let g = Group::join(
                        &Rendezvous::File(file),
                        rank,
                        2,
                        std::time::Duration::from_secs(60),
                    )
                    .unwrap();
                    let bn = norm();
                    let rows = |t: &Tensor| t.narrow(0, 4 * rank as i64, 4);
                    let xs = rows(&x).detach().set_requires_grad(true);
                    let mut norms = Norms {
                        train: true,
                        sync: Some(&g),
                        ..Norms::default()
                    };
                    let y = bn.forward(&xs, &mut norms).relu_();
                    let y = bn.forward(&y, &mut norms);
                    assert!(norms.failed.is_none());
                    (&y * rows(&probe)).sum(Kind::Double).backward();
                    let mut wg = bn.weight.grad();
                    g.all_reduce_sum(&mut wg).unwrap();
                    g.close().unwrap();
                    (y.detach(), xs.grad(), wg)
                })
            })
            .collect();
        let threads: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let y2 = Tensor::cat(&[&threads[0].0, &threads[1].0], 0);
        let g2 = Tensor::cat(&[&threads[0].1, &threads[1].1], 0);
        for (name, a, b) in [
            ("y", &y1, &y2),
            ("x grad", &g1, &g2),
            ("weight grad", &w1, &threads[0].2),
        ] {
            let err = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]);
            assert!(err <= 1e-12 * scale, "{name}: differs by {err} of {scale}");
        }
    }

    /// The moments CUDA takes (`var_mean`) and the CPU's shifted sums agree, in value and
    /// in the gradient inversion follows, for every input layout a BatchNorm sees.
    #[test]
    fn fused_moments_equal_the_shifted_sums() {
        tch::manual_seed(3);
        let cpu = (Kind::Float, tch::Device::Cpu);
        let nchw = Tensor::randn([4, 6, 5, 3], cpu) * 3.0 + 40.0;
        let inputs = [
            ("nchw", nchw.shallow_clone()),
            ("nhwc", channels_last(&nchw)),
            ("n×c", Tensor::randn([8, 6], cpu) - 2.0),
        ];
        for (layout, x) in inputs {
            let grads = |moments: fn(&Tensor) -> (Tensor, Tensor)| {
                let x = x.detach().set_requires_grad(true);
                let (mean, var) = moments(&x);
                let w = Tensor::arange(6, cpu) + 1.0;
                ((&mean * &w).sum(None::<Kind>) + (&var * w).sum(None::<Kind>)).backward();
                (mean.detach(), var.detach(), x.grad())
            };
            let (m0, v0, g0) = grads(channel_moments);
            let (m1, v1, g1) = grads(channel_moments_fused);
            for (name, a, b) in [("mean", &m0, &m1), ("var", &v0, &v1), ("grad", &g0, &g1)] {
                let err = (a - b).abs().max().double_value(&[]);
                let scale = a.abs().max().double_value(&[]).max(1.0);
                assert!(err <= 1e-5 * scale, "{layout} {name}: differs by {err}");
            }
        }
    }
}
