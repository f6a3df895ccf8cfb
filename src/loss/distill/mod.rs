//! Distillation losses of docs/method.md §4: the maths. Their YAML config (`--algo-config`) is read into
//! the [`Distillation`] defined here by `config.rs` (`Distillation::load`), kept apart so that
//! the schema and its error messages can change without touching a loss; it also says how to
//! add a type.
//!
//! Each loss compares the student's outputs with the old model's (the teacher's) on the same
//! images; the trainers weight it by `factor` (and, in `incremental-x`, mix the same-view and
//! cross-view teachers by `cross_factor`, docs/method.md §6). The teacher's tensors are detached here, so
//! a loss is differentiable w.r.t. the student only, whatever the caller did.
//!
//! Numerics follow the reference's PyTorch calls (`cosine_embedding_loss`'s 1e-12 on the
//! squared norms, `F.normalize`'s 1e-12 on the norm, `torch.pdist`), so the golden fixtures
//! match in float64.

mod config;
mod geodl;

pub use config::TYPES;
pub use geodl::NULL_SPACE_COLUMNS;

use crate::model::Output;
use crate::tensor::unit_rows;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use tch::{Kind, Reduction, Tensor};

/// What a distillation loss looks at, for the student or the teacher on the same images.
pub struct DistillInput<'a> {
    pub embedding: &'a Tensor,
    pub logits: &'a Tensor,
    /// layer1..layer4 outputs (`podnet` only).
    pub maps: &'a [Tensor],
    /// The model's classifier weight (classes × embedding), `always-be-dreaming` only: it
    /// applies the teacher's (the old model's) classifier to the student's embeddings.
    pub classifier: Option<&'a Tensor>,
    /// `GeoDL` only, on the student: an orthonormal basis (D × [`NULL_SPACE_COLUMNS`]) of
    /// the null space of the student's PCA subspace, to pad that subspace with. Any such
    /// basis is as valid, and the reference's depends on its LAPACK, so its golden values
    /// record the one it used and their test passes it here; `None` computes one.
    pub null_space_basis: Option<&'a Tensor>,
}

impl<'a> From<&'a Output> for DistillInput<'a> {
    fn from(out: &'a Output) -> Self {
        Self {
            embedding: &out.embedding,
            logits: &out.logits,
            maps: &out.maps,
            classifier: None,
            null_space_basis: None,
        }
    }
}

impl<'a> DistillInput<'a> {
    /// The same outputs, with the classifier weight of the model that produced them.
    pub fn with_classifier(self, classifier: &'a Tensor) -> Self {
        Self {
            classifier: Some(classifier),
            ..self
        }
    }
}

/// How `podnet` pools a squared feature map (B×C×H×W) into one vector per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collapse {
    /// Sums over H and over W, concatenated (PODNet's "spatial" pooling): C·(W + H) values.
    Spatial,
    /// Sum over channels: H·W values.
    Channel,
    /// Sum over H: C·W values.
    Vertical,
    /// Sum over W: C·H values.
    Horizon,
    /// Mean over H and W: C values.
    Global,
    /// The whole map, flattened.
    NoPooling,
}

// The config's names: the `collapse` setting is read by them, and `name` reports them.
crate::names!(Collapse {
    Spatial => "spatial",
    Channel => "channel",
    Vertical => "vertical",
    Horizon => "horizon",
    Global => "global",
    NoPooling => "none",
});

impl Collapse {
    fn apply(self, map: &Tensor) -> Tensor {
        let bs = map.size()[0];
        match self {
            Collapse::Spatial => Tensor::cat(
                &[
                    map.sum_dim_intlist(2, false, None::<Kind>)
                        .reshape([bs, -1]),
                    map.sum_dim_intlist(3, false, None::<Kind>)
                        .reshape([bs, -1]),
                ],
                1,
            ),
            Collapse::Channel => map
                .sum_dim_intlist(1, false, None::<Kind>)
                .reshape([bs, -1]),
            Collapse::Vertical => map
                .sum_dim_intlist(2, false, None::<Kind>)
                .reshape([bs, -1]),
            Collapse::Horizon => map
                .sum_dim_intlist(3, false, None::<Kind>)
                .reshape([bs, -1]),
            Collapse::Global => map
                .mean_dim([2i64, 3].as_slice(), false, None::<Kind>)
                .reshape([bs, -1]),
            Collapse::NoPooling => map.reshape([bs, -1]),
        }
    }
}

/// What `podnet` compares the pooled (L2-normalised) map vectors with. The reference
/// accepts all four names but only `cosine` runs there (the others index the pooled tensors
/// as if they were output dicts and crash); here they apply the same-named loss to the
/// pooled vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodnetCriterion {
    Cosine,
    Triangle,
    ResTriangle,
    SimResTriangle,
}

// The config's names: the `criterion` setting is read by them, and `name` reports them.
crate::names!(PodnetCriterion {
    Cosine => "cosine",
    Triangle => "triangle",
    ResTriangle => "res-triangle",
    SimResTriangle => "sim-res-triangle",
});

/// The distillation loss of a config's `type`, with its `config` settings.
#[derive(Clone, Debug, PartialEq)]
pub enum DistillKind {
    Cosine,
    Triangle,
    /// Geometric Distillation (GD).
    ResTriangle,
    /// simple Geometric Distillation (simGD).
    SimRes,
    L1,
    L2,
    /// Distances between all pairs of embeddings (`torch.pdist` with this `p`), optionally
    /// of the L2-normalised embeddings.
    Relation {
        normalize: bool,
        p: f64,
    },
    /// KL of the softened old-class probabilities (LwF / iCaRL), at temperature `T`.
    Hinton {
        temperature: f64,
    },
    /// Pooled feature-map distillation (PODNet): embedding_factor · cos-loss(embeddings) +
    /// attention_factor · mean over the maps of criterion(pooled student, pooled teacher).
    Podnet {
        collapse: Collapse,
        criterion: PodnetCriterion,
        embedding_factor: f64,
        attention_factor: f64,
    },
    No,
    /// Geodesic-flow-kernel distillation (the reference's `GFK`, after GeoDL): the
    /// student's embedding differences from the teacher's, measured by the kernel of the
    /// geodesic flow between the two batches' PCA subspaces (see `geodl.rs`).
    GeoDL,
    /// GeoDL plus LUCIR's cosine embedding distillation:
    /// geodl_factor · GeoDL + cosine_factor · cos-loss.
    GeoDLxLUCIR {
        geodl_factor: f64,
        cosine_factor: f64,
    },
    /// Always Be Dreaming (Smith et al. 2021): MSE between the old classifier applied to
    /// the student's embeddings and the old model's logits on the same (dreamed) images.
    AlwaysBeDreaming,
}

/// The `distillation` section of an `--algo-config` file (read by `Distillation::load` or
/// `Distillation::parse`, in `config.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Distillation {
    pub kind: DistillKind,
    /// Weight of the distillation term in the training loss.
    pub factor: f64,
    /// `incremental-x`: weight of the same-view teacher (the other views share 1 − this).
    pub cross_factor: Option<f64>,
    /// The file has a top-level `co_distillation` section (the reference's
    /// `co_distillation.yaml`): accepted, but not used, as the reference's
    /// `main_incremental.py` never reads it; the trainers log that.
    pub unused_co_distillation: bool,
}

impl Distillation {
    /// Whether the term reads the feature maps (`podnet`): a data-parallel run then
    /// exchanges them too.
    pub fn reads_maps(&self) -> bool {
        matches!(self.kind, DistillKind::Podnet { .. })
    }

    /// The config's `type`.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            DistillKind::Cosine => "cosine",
            DistillKind::Triangle => "triangle",
            DistillKind::ResTriangle => "res-triangle",
            DistillKind::SimRes => "sim-res",
            DistillKind::L1 => "l1",
            DistillKind::L2 => "l2",
            DistillKind::Relation { .. } => "relation",
            DistillKind::Hinton { .. } => "hinton",
            DistillKind::Podnet { .. } => "podnet",
            DistillKind::No => "no",
            DistillKind::GeoDL => "GeoDL",
            DistillKind::GeoDLxLUCIR { .. } => "GeoDLxLUCIR",
            DistillKind::AlwaysBeDreaming => "always-be-dreaming",
        }
    }

    /// The unweighted distillation loss (a scalar tensor) of student vs teacher on the same
    /// images with their pids. Errors (not panics) when the batch is not P×K (every row
    /// must have the same number of positives) for the residual-based types.
    ///
    /// `pids` are read on the host, where the same-identity pairs are listed: pass the
    /// batch's host pids (as the loader gives them), so that a GPU step never waits for the
    /// device to copy labels back. Pids on the device work too, at the cost of that wait.
    ///
    /// One function because it is one `match` over the config types, in docs/method.md §4's
    /// order, each arm that type's formula.
    pub fn loss(
        &self,
        student: &DistillInput,
        teacher: &DistillInput,
        pids: &Tensor,
    ) -> Result<Tensor> {
        let name = self.type_name();
        let embeddings = || -> Result<(&Tensor, Tensor)> {
            let (s, t) = (student.embedding, teacher.embedding);
            same_shape(name, "embedding", s, t)?;
            ensure!(
                s.dim() == 2 && s.size()[0] > 0,
                "{name} distillation: embeddings must be a non-empty B×D batch, got {:?}",
                s.size()
            );
            Ok((s, t.detach()))
        };
        let loss = match &self.kind {
            DistillKind::No => {
                Tensor::zeros([], (student.embedding.kind(), student.embedding.device()))
            }
            DistillKind::Cosine => {
                let (s, t) = embeddings()?;
                cos_loss(s, &t)
            }
            DistillKind::L1 => {
                let (s, t) = embeddings()?;
                (s - t)
                    .abs()
                    .sum_dim_intlist(1, false, None::<Kind>)
                    .mean(None::<Kind>)
            }
            DistillKind::L2 => {
                let (s, t) = embeddings()?;
                (s - t)
                    .pow_tensor_scalar(2)
                    .sum_dim_intlist(1, false, None::<Kind>)
                    .mean(None::<Kind>)
            }
            DistillKind::Triangle => {
                let (s, t) = embeddings()?;
                triangle(s, &t, pids).with_context(|| format!("{name} distillation"))?
            }
            DistillKind::ResTriangle => {
                let (s, t) = embeddings()?;
                res_triangle(s, &t, pids).with_context(|| format!("{name} distillation"))?
            }
            DistillKind::SimRes => {
                let (s, t) = embeddings()?;
                sim_res(s, &t, pids).with_context(|| format!("{name} distillation"))?
            }
            DistillKind::Relation { normalize, p } => {
                let (s, t) = embeddings()?;
                ensure!(
                    s.size()[0] >= 2,
                    "relation distillation compares pairs of samples; the batch has only one"
                );
                let (s, t) = if *normalize {
                    (unit_rows(s)?, unit_rows(&t)?)
                } else {
                    (s.shallow_clone(), t)
                };
                (s.pdist(*p) - t.pdist(*p)).abs().mean(None::<Kind>)
            }
            DistillKind::Hinton { temperature } => {
                hinton(student.logits, teacher.logits, *temperature)?
            }
            DistillKind::Podnet {
                collapse,
                criterion,
                embedding_factor,
                attention_factor,
            } => {
                let (s, t) = embeddings()?;
                let embedding_loss = cos_loss(s, &t);
                let maps = podnet_maps(student.maps, teacher.maps, *collapse, *criterion, pids)?;
                embedding_loss * *embedding_factor + maps * *attention_factor
            }
            DistillKind::GeoDL => {
                let (s, t) = embeddings()?;
                geodl::geodl(s, &t, student.null_space_basis)?
            }
            DistillKind::GeoDLxLUCIR {
                geodl_factor,
                cosine_factor,
            } => {
                let (s, t) = embeddings()?;
                geodl::geodl(s, &t, student.null_space_basis)? * *geodl_factor
                    + cos_loss(s, &t) * *cosine_factor
            }
            DistillKind::AlwaysBeDreaming => {
                always_be_dreaming(student.embedding, teacher.classifier, teacher.logits)?
            }
        };
        Ok(loss)
    }
}

/// Same-identity pairs of a batch (docs/method.md §4 "pairwise residuals").
pub struct Residuals {
    /// a_j − a_i for every pair i < j with y_i = y_j, pairs in row-major order of (i, j).
    pub a: Tensor,
    /// b_j − b_i for the same pairs.
    pub b: Tensor,
    /// y_j of every pair (the pair's identity), on the host like the pair list it labels.
    pub pids: Tensor,
}

/// The pairwise residuals of two aligned batches. The batch must come from the P×K sampler:
/// every sample must have the same number of same-identity samples (the reference asserts
/// it), and at least two, or there is no pair to take a residual of.
pub fn pairwise_residuals(a: &Tensor, b: &Tensor, pids: &Tensor) -> Result<Residuals> {
    let y = pid_list(pids, a.size()[0])?;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for &p in &y {
        *counts.entry(p).or_default() += 1;
    }
    let (lo, hi) = (
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
    );
    if lo != hi {
        bail!(
            "the batch is not P×K: identities have between {lo} and {hi} samples in it \
             ({} identities, {} samples); residual distillation needs the same number for \
             every identity (the P×K sampler)",
            counts.len(),
            y.len()
        );
    }
    ensure!(
        hi >= 2,
        "every identity has a single sample in the batch, so there are no same-identity pairs \
         to take residuals of (K must be at least 2)"
    );
    let (mut first, mut second, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..y.len() {
        for j in i + 1..y.len() {
            if y[i] == y[j] {
                first.push(i as i64);
                second.push(j as i64);
                labels.push(y[j]);
            }
        }
    }
    // Only the pair indices travel to the device (an upload, which never waits for it).
    let device = a.device();
    let first = Tensor::from_slice(&first).to_device(device);
    let second = Tensor::from_slice(&second).to_device(device);
    Ok(Residuals {
        a: a.index_select(0, &second) - a.index_select(0, &first),
        b: b.index_select(0, &second) - b.index_select(0, &first),
        pids: Tensor::from_slice(&labels),
    })
}

/// The pids as a list, checked against the batch size.
fn pid_list(pids: &Tensor, batch: i64) -> Result<Vec<i64>> {
    ensure!(
        pids.dim() == 1 && pids.size()[0] == batch,
        "pids must be a vector of the batch size {batch}, got shape {:?}",
        pids.size()
    );
    Vec::<i64>::try_from(pids.to_device(tch::Device::Cpu).to_kind(Kind::Int64))
        .context("reading the pids")
}

/// cos-loss(a, b) = mean_i (1 − cos(a_i, b_i)), as `F.cosine_embedding_loss` with target 1
/// computes it (1e-12 added to each squared norm).
pub fn cos_loss(a: &Tensor, b: &Tensor) -> Tensor {
    let ones = Tensor::ones([a.size()[0]], (a.kind(), a.device()));
    Tensor::cosine_embedding_loss(a, b, &ones, 0.0, Reduction::Mean)
}

/// `triangle`: cos-loss(a, b) + 0.5·(1 − mean cos(ra, rb)) over the same-identity
/// residuals.
fn triangle(a: &Tensor, b: &Tensor, pids: &Tensor) -> Result<Tensor> {
    let r = pairwise_residuals(a, b, pids)?;
    let residual_cos = (unit_rows(&r.a)? * unit_rows(&r.b)?)
        .sum_dim_intlist(1, false, None::<Kind>)
        .mean(None::<Kind>);
    Ok(cos_loss(a, b) + (1.0 - residual_cos) * 0.5)
}

/// `res-triangle` (GD): `triangle` applied to the residuals, labelled by their identity.
/// Their own residuals need three samples per identity. Reference quirk, kept: a residual's
/// sign follows the batch order (a_j − a_i for i < j), and residuals of residuals mix those
/// signs, so unlike the other losses this one depends on how the batch is shuffled.
fn res_triangle(a: &Tensor, b: &Tensor, pids: &Tensor) -> Result<Tensor> {
    let r = pairwise_residuals(a, b, pids)?;
    triangle(&r.a, &r.b, &r.pids).context(
        "residuals of residuals need at least 3 samples per identity (K >= 3), all identities \
         with the same number",
    )
}

/// `sim-res` (simGD): cos-loss of the residuals.
fn sim_res(a: &Tensor, b: &Tensor, pids: &Tensor) -> Result<Tensor> {
    let r = pairwise_residuals(a, b, pids)?;
    Ok(cos_loss(&r.a, &r.b))
}

/// KL(softmax(z_T/T) ‖ softmax(z_S[:, last C]/T)), summed over classes and averaged over
/// the batch (`batchmean`), without a T² factor (the reference has none).
fn hinton(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    ensure!(
        student.dim() == 2 && teacher.dim() == 2 && student.size()[0] == teacher.size()[0],
        "hinton distillation: logits must be B×classes for both models, got student {:?} and \
         teacher {:?}",
        student.size(),
        teacher.size()
    );
    let (batch, width) = (student.size()[0], student.size()[1]);
    let old = teacher.size()[1];
    ensure!(batch > 0, "hinton distillation: the batch is empty");
    ensure!(
        width >= old,
        "hinton distillation: the student has {width} classes, fewer than the teacher's {old} \
         old classes"
    );
    // New classes come first (the classifier prepends them), so the old ones are the last C.
    let log_p = (student.narrow(1, width - old, old) / temperature).log_softmax(1, None::<Kind>);
    let q = (teacher.detach() / temperature).softmax(1, None::<Kind>);
    Ok(log_p.kl_div(&q, Reduction::Sum, false) / batch as f64)
}

/// Always Be Dreaming: MSE (mean over every element) between the old classifier applied to
/// the student's embeddings and the old model's logits. The classifier is the frozen old
/// model's, so it is detached like every teacher tensor: only the student learns.
fn always_be_dreaming(
    student: &Tensor,
    classifier: Option<&Tensor>,
    teacher_logits: &Tensor,
) -> Result<Tensor> {
    let name = "always-be-dreaming distillation";
    let w = classifier.with_context(|| {
        format!("{name} applies the old model's classifier to the student's embeddings, but the teacher's classifier was not given")
    })?;
    ensure!(
        student.dim() == 2 && student.size()[0] > 0,
        "{name}: embeddings must be a non-empty B×D batch, got {:?}",
        student.size()
    );
    let (batch, width) = (student.size()[0], student.size()[1]);
    ensure!(
        w.dim() == 2 && w.size()[1] == width,
        "{name}: the old classifier must be classes × {width} (the student's embedding width), got {:?}",
        w.size()
    );
    let classes = w.size()[0];
    ensure!(
        teacher_logits.size() == [batch, classes],
        "{name}: the old model's logits must be {batch} × {classes} (batch × old classes), got {:?}",
        teacher_logits.size()
    );
    let outdated = student.mm(&w.detach().tr());
    Ok(outdated.mse_loss(&teacher_logits.detach(), Reduction::Mean))
}

/// PODNet's map term: the mean over the maps of criterion(pool(S²), pool(T²)), where pool
/// is the collapse followed by L2 normalisation.
fn podnet_maps(
    student: &[Tensor],
    teacher: &[Tensor],
    collapse: Collapse,
    criterion: PodnetCriterion,
    pids: &Tensor,
) -> Result<Tensor> {
    ensure!(
        !student.is_empty() && student.len() == teacher.len(),
        "podnet distillation needs the same feature maps from both models, got {} student and \
         {} teacher maps",
        student.len(),
        teacher.len()
    );
    let mut total: Option<Tensor> = None;
    for (l, (s, t)) in student.iter().zip(teacher).enumerate() {
        same_shape("podnet", &format!("map {}", l + 1), s, t)?;
        ensure!(
            s.dim() == 4,
            "podnet distillation: map {} must be B×C×H×W, got {:?}",
            l + 1,
            s.size()
        );
        let pool = |m: &Tensor| unit_rows(&collapse.apply(&m.pow_tensor_scalar(2)));
        let (ps, pt) = (pool(s)?, pool(&t.detach())?);
        let loss = match criterion {
            PodnetCriterion::Cosine => cos_loss(&ps, &pt),
            PodnetCriterion::Triangle => triangle(&ps, &pt, pids)?,
            PodnetCriterion::ResTriangle => res_triangle(&ps, &pt, pids)?,
            PodnetCriterion::SimResTriangle => sim_res(&ps, &pt, pids)?,
        };
        total = Some(match total {
            None => loss,
            Some(sum) => sum + loss,
        });
    }
    Ok(total.unwrap() / student.len() as f64)
}

fn same_shape(name: &str, what: &str, s: &Tensor, t: &Tensor) -> Result<()> {
    ensure!(
        s.size() == t.size(),
        "{name} distillation: the student's {what} is {:?} but the teacher's is {:?}",
        s.size(),
        t.size()
    );
    Ok(())
}
