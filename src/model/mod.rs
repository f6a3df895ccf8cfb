//! The ReID model (docs/method.md §3): ResNet backbone, BN head, classifier, and their checkpoints.
//!
//! One forward serves training, evaluation and inversion: it returns `embedding`, `global`,
//! the four `maps` and the logits, and can also report every BatchNorm's input statistics.

pub mod backbone;
pub mod checkpoint;
pub mod choice;
pub mod layers;
pub mod params;
pub mod pth;

pub use backbone::Depth;
pub use choice::{ComputeChoice, MemoryFormat, ModelChoice};
pub use layers::{BnStat, Compute, Norms};
pub use params::{Group, Params, Role};

use crate::bad_setting;
use crate::error::Setting;
use anyhow::{bail, Result};
use backbone::Base;
use layers::BatchNorm;
use params::Scope;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A model's place in a data-parallel run: the ranks, and whether its training-mode
/// BatchNorms see the global batch (synchronised, the default) or each rank's rows
/// (`--local-bn`).
#[derive(Clone)]
pub struct DataParallel {
    pub group: Arc<crate::dist::Group>,
    pub sync_bn: bool,
}

/// Global pooling of layer4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    Avg,
    Max,
}

// The flag's and the checkpoint metadata's spelling.
crate::named_values!(Pooling { Avg => "avg", Max => "max" });

/// The smallest image side the ResNet takes: its stem and stages halve each side five
/// times, so from 16 pixels down layer3 and layer4 see a single position, and below
/// that the stride-2 stages compute on padding alone (a 1×1 input trains on NaN).
pub const MIN_SIDE: usize = 16;

/// Checks an input size against [`MIN_SIDE`], naming the setting that is too small.
pub fn validate_input_size(height: usize, width: usize) -> Result<()> {
    for (setting, side) in [(Setting::Height, height), (Setting::Width, width)] {
        if side < MIN_SIDE {
            bad_setting!(
                setting,
                side,
                "images must be at least {MIN_SIDE}×{MIN_SIDE} pixels for the ResNet"
            );
        }
    }
    Ok(())
}

/// The model's shape: everything a checkpoint must agree with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    pub depth: Depth,
    pub last_stride: i64,
    pub pooling: Pooling,
    pub embedding: i64,
    pub classes: i64,
}

impl ModelConfig {
    /// The embedding is the BN-normalised global feature, so it must have its width.
    pub fn validate(&self) -> Result<()> {
        let width = self.depth.feature_width();
        if self.embedding != width {
            bad_setting!(
                Setting::Embedding,
                self.embedding,
                "ResNet-{} produces {width}-d features; the embedding must be {width}",
                self.depth.number()
            );
        }
        if !(1..=2).contains(&self.last_stride) {
            bad_setting!(Setting::LastStride, self.last_stride, "must be 1 or 2");
        }
        if self.classes < 1 {
            bail!(
                "a classifier needs at least one class (got {})",
                self.classes
            );
        }
        Ok(())
    }
}

/// What one forward pass returns.
pub struct Output {
    /// BN-normalised global feature (evaluation and distillation use it).
    pub embedding: Tensor,
    /// Pooled layer4 feature (the triplet loss uses it).
    pub global: Tensor,
    /// Outputs of layer1..layer4.
    pub maps: Vec<Tensor>,
    /// embedding · Wᵀ.
    pub logits: Tensor,
}

/// Backbone (`backbone.base.*`, `backbone.bn.*`) and classifier (`classifier.W`).
pub struct ReidModel {
    pub config: ModelConfig,
    /// How the trunk computes (precision, memory layout); not part of the checkpoint.
    pub compute: Compute,
    pub params: Params,
    /// Set in a data-parallel run ([`ReidModel::forward_batches`]); not part of the
    /// checkpoint.
    pub parallel: Option<DataParallel>,
    base: Base,
    head: BatchNorm,
    classifier: Tensor,
}

impl ReidModel {
    /// A freshly initialised model (Kaiming convolutions, BN 1/0, classifier N(0, 0.001)).
    pub fn new(config: ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let mut params = Params::new(device);
        let base = Base::new(
            &mut Scope::root(&mut params, "backbone.base", Group::Base),
            config.depth,
            config.last_stride,
        );
        let head = BatchNorm::new(
            &mut Scope::root(&mut params, "backbone.bn", Group::Head),
            config.embedding,
        );
        let classifier = Scope::root(&mut params, "classifier", Group::Classifier).trainable(
            "W",
            Scope::normal(&[config.classes, config.embedding], 0.001),
        );
        Ok(Self {
            config,
            compute: Compute::default(),
            params,
            parallel: None,
            base,
            head,
            classifier,
        })
    }

    pub fn device(&self) -> Device {
        self.params.device
    }

    fn forward_impl(&self, x: &Tensor, norms: &mut Norms) -> Output {
        let maps = self.base.forward(&self.compute.prepare(x), norms);
        // Whatever the trunk computed in, the pooled feature, the head and the losses are
        // float32.
        let maps: Vec<Tensor> = match self.compute.amp {
            true => maps.iter().map(|m| m.to_kind(Kind::Float)).collect(),
            false => maps,
        };
        let last = &maps[3];
        let global = match self.config.pooling {
            Pooling::Avg => last.adaptive_avg_pool2d([1, 1]),
            Pooling::Max => last.adaptive_max_pool2d([1, 1]).0,
        }
        .flatten(1, -1);
        let embedding = self.head.forward(&global, norms);
        let logits = embedding.mm(&self.classifier.tr());
        Output {
            embedding,
            global,
            maps,
            logits,
        }
    }

    /// Forward in training (batch statistics) or evaluation mode.
    pub fn forward(&self, x: &Tensor, train: bool) -> Output {
        self.forward_impl(
            x,
            &mut Norms {
                train,
                ..Norms::default()
            },
        )
    }

    /// The forward of a training step over batches split among ranks: `x` holds this
    /// rank's rows of each batch (the rows `shards` name, batch after batch), and the
    /// outputs are the whole batches', as one process computes them
    /// ([`crate::dist::gather_rows`]): BatchNorm statistics over every rank's rows (unless
    /// `--local-bn`), and this rank's rows alone carrying the graph. The feature maps are
    /// exchanged only when `maps` asks for them (they are large, and only `podnet` reads
    /// them); otherwise there are none. Outside a data-parallel run it is
    /// [`ReidModel::forward`].
    pub fn forward_batches(
        &self,
        x: &Tensor,
        train: bool,
        shards: &[&crate::dist::Shard],
        maps: bool,
    ) -> Result<Output> {
        let Some(dp) = &self.parallel else {
            return Ok(self.forward(x, train));
        };
        let mut norms = Norms {
            train,
            sync: dp.sync_bn.then_some(&*dp.group),
            ..Norms::default()
        };
        let out = self.forward_impl(x, &mut norms);
        if let Some(e) = norms.failed {
            return Err(e.context("synchronised BatchNorm"));
        }
        let gather = |t: &Tensor| crate::dist::gather_rows(&dp.group, t, shards);
        // The three row outputs in one exchange.
        let widths = [&out.embedding, &out.global, &out.logits].map(|t| t.size()[1]);
        let rows = gather(&Tensor::cat(&[&out.embedding, &out.global, &out.logits], 1))?;
        let [embedding, global, logits]: [Tensor; 3] = rows
            .split_with_sizes(widths, 1)
            .try_into()
            .map_err(|_| anyhow::anyhow!("the gathered outputs do not split back"))?;
        Ok(Output {
            embedding,
            global,
            maps: match maps {
                true => out.maps.iter().map(gather).collect::<Result<_>>()?,
                false => Vec::new(),
            },
            logits,
        })
    }

    /// Forward that also returns every BatchNorm's input statistics, in module order
    /// (the 2-D layers of the backbone, then the embedding BatchNorm1d).
    pub fn forward_with_bn_stats(&self, x: &Tensor, train: bool) -> (Output, Vec<BnStat>) {
        let mut stats = Vec::new();
        let out = self.forward_impl(
            x,
            &mut Norms {
                train,
                stats: Some(&mut stats),
                ..Norms::default()
            },
        );
        (out, stats)
    }

    /// Prepends `n` fresh classes (N(0, 0.001) rows): W' = [new; old], so new-task classes
    /// are 0..n−1 and the old ones follow (docs/method.md §3).
    pub fn expand_classifier(&mut self, n: i64) {
        let fresh = Scope::normal(&[n, self.config.embedding], 0.001).to_device(self.device());
        tch::no_grad(|| {
            let expanded = Tensor::cat(&[fresh, self.classifier.detach()], 0);
            self.classifier.set_data(&expanded);
        });
        self.config.classes += n;
    }

    /// Stops every trainable tensor from requiring gradients: a frozen teacher (DeepInversion,
    /// distillation) then costs no weight gradients in backward passes through it.
    pub fn freeze(&self) {
        for e in self.params.entries() {
            if matches!(e.role, Role::Trainable(_)) {
                let _ = e.tensor.shallow_clone().set_requires_grad(false);
            }
        }
    }

    /// The classifier weight (classes × embedding).
    pub fn classifier(&self) -> &Tensor {
        &self.classifier
    }

    /// Number of trainable scalars of the ResNet base (torchvision's count without `fc`).
    pub fn base_parameter_count(&self) -> i64 {
        self.params.count_trainable("backbone.base.")
    }
}

/// Puts `t` in float32 on `device` (how every image tensor enters the model).
pub fn to_input(t: &Tensor, device: Device) -> Tensor {
    // Asynchronous from the loader's page-locked batches (libtorch keeps their memory
    // until the copy is done); from pageable memory the copy is synchronous as before.
    t.to_device_(device, Kind::Float, true, false)
}
