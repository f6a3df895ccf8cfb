//! The incremental steps (docs/method.md §5, §6): new data plus images of the old identities
//! (dreamed, or real exemplars for the upper bound), with the old model's geometry on them
//! distilled into the student ([`IncrementalStep`]); and the baseline that distils on the
//! new batch alone ([`NewDataStep`], docs/method.md §4 last paragraph).
//!
//! Each step serves both subcommands: `incremental` sees one view and distils from the
//! teacher's outputs on it; `incremental-x` sees `peers` views and, on view i, mixes the
//! distillation from the teacher's view i (weight `cross_factor`) with the mean over the
//! teacher's other views.

use super::fit::{shards, Step};
use super::optimizer::Optimizer;
use crate::data::Batch;
use crate::dist::Shard;
use crate::loss::distill::{DistillInput, Distillation};
use crate::loss::BaseLoss;
use crate::model::{to_input, Output, ReidModel};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// Rows `start..start + len` of every output (the new or the dreamed half of a forward).
fn rows(out: &Output, start: i64, len: i64) -> Output {
    Output {
        embedding: out.embedding.narrow(0, start, len),
        global: out.global.narrow(0, start, len),
        maps: out.maps.iter().map(|m| m.narrow(0, start, len)).collect(),
        logits: out.logits.narrow(0, start, len),
    }
}

/// How the teachers' views are weighted for the student's view i.
#[derive(Clone, Copy, Debug)]
pub enum Views {
    /// `incremental`: one view, the teacher's output on the same images.
    Single,
    /// `incremental-x`: `cross_factor`·d(same view) + (1 − cross_factor)·mean d(other views).
    Augmented { cross_factor: f64 },
}

impl Views {
    /// The mix of `peers` views per sample: augmented with `cross_factor` (incremental-x),
    /// else single. Checked here ([`Views::check`]).
    pub fn new(peers: usize, cross_factor: Option<f64>) -> Result<Self> {
        Self::check(peers, cross_factor.is_some())?;
        Ok(match cross_factor {
            Some(cross_factor) => Views::Augmented { cross_factor },
            None => Views::Single,
        })
    }

    /// The one rule on the number of views (`--peers`): augmented distillation mixes at
    /// least 2, anything else sees 1.
    pub fn check(peers: usize, augmented: bool) -> Result<()> {
        if augmented && peers < 2 {
            crate::bad_setting!(
                crate::error::Setting::Peers,
                peers,
                "augmented distillation needs at least 2 views"
            );
        }
        if !augmented && peers != 1 {
            crate::bad_setting!(
                crate::error::Setting::Peers,
                peers,
                "one view per sample: only augmented distillation (incremental-x) takes several"
            );
        }
        Ok(())
    }
}

/// Wall-clock time of one step's phases, summed over the views
/// (`benches/incremental_step.rs` compares them with PyTorch's).
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// The teacher's forward on every dreamed view.
    pub teacher: Duration,
    /// The student's forward and the losses.
    pub forward: Duration,
    pub backward: Duration,
    /// `zero_grad` and the optimiser step.
    pub optimizer: Duration,
}

pub struct IncrementalStep {
    /// The task-1 model: frozen, evaluated in eval mode.
    pub old: ReidModel,
    pub distillation: Distillation,
    /// Classes of the new task: dreamed pids are shifted past them (new rows come first).
    pub new_classes: i64,
    pub views: Views,
}

/// The teacher's outputs on every view of `batch` (eval mode, no graph kept), whole
/// batches in a data-parallel run (`shards`).
fn teacher(
    old: &ReidModel,
    views: &[Tensor],
    shards: &[&Shard],
    maps: bool,
) -> Result<Vec<Output>> {
    tch::no_grad(|| {
        views
            .iter()
            .map(|x| old.forward_batches(x, false, shards, maps))
            .collect()
    })
}

/// A batch's views on `device`, each copied there once: the old model and the student
/// both read them (and the student's new ⊕ dreamed input is concatenated there).
fn uploaded(batch: &Batch, device: Device) -> Vec<Tensor> {
    batch.views.iter().map(|x| to_input(x, device)).collect()
}

/// factor · the distillation term of docs/method.md §5/§6 for the student's view `i`.
///
/// The teacher side is the old model with its classifier (always-be-dreaming applies that
/// classifier to the student's embeddings).
fn mixed_distill(
    distillation: &Distillation,
    views: Views,
    old_classifier: &Tensor,
    student: &Output,
    teachers: &[Output],
    i: usize,
    pids: &Tensor,
) -> Result<Tensor> {
    let s = DistillInput::from(student);
    let d = |t: &Output| {
        let teacher = DistillInput::from(t).with_classifier(old_classifier);
        distillation.loss(&s, &teacher, pids)
    };
    let term = match views {
        Views::Single => d(&teachers[i])?,
        Views::Augmented { cross_factor } => {
            let mut others = Vec::with_capacity(teachers.len() - 1);
            for (j, t) in teachers.iter().enumerate() {
                if j != i {
                    others.push(d(t)?);
                }
            }
            let mean_others = Tensor::stack(&others, 0).mean(None::<tch::Kind>);
            d(&teachers[i])? * cross_factor + mean_others * (1.0 - cross_factor)
        }
    };
    Ok(term * distillation.factor)
}

/// One view's loss and the terms it reports: CE + triplet on `out` (labels `pids`) plus
/// factor · the distillation of `student` (rows of `out`, labels `distill_pids`) from the
/// teachers, mixed for the student's view `i` ([`mixed_distill`]).
fn view_loss(
    (distillation, views, old): (&Distillation, Views, &ReidModel),
    (out, student): (&Output, &Output),
    teachers: &[Output],
    i: usize,
    (pids, distill_pids): (&Tensor, &Tensor),
) -> Result<(Tensor, Vec<Tensor>)> {
    let base = BaseLoss::new(&out.logits, &out.global, pids);
    let distill = mixed_distill(
        distillation,
        views,
        old.classifier(),
        student,
        teachers,
        i,
        distill_pids,
    )?;
    let reported = super::fit::reported(&[&base.ce, &base.triplet, &distill]);
    Ok((base.total() + distill, reported))
}

/// A batch's views fit the step's mix (the loader gives every sample `--peers` views).
fn check_views(mix: Views, views: usize) -> Result<()> {
    Views::check(views, matches!(mix, Views::Augmented { .. }))
}

impl IncrementalStep {
    /// [`Step::step`] that also reports how long each phase took.
    ///
    /// Per view: one student forward over new ⊕ dreamed in train mode (BN statistics span
    /// both halves), CE + triplet on both halves, factor · distillation on the dreamed
    /// half; each view's loss is back-propagated divided by the number of views, then one
    /// optimiser step. The reported losses are the last view's, as the reference's.
    pub fn step_timed(
        &mut self,
        model: &ReidModel,
        opt: &mut Optimizer,
        (new, dreamed): (Batch, Batch),
    ) -> Result<(Vec<Tensor>, Phases)> {
        let views = new.views.len();
        if views != dreamed.views.len() {
            bail!(
                "new batch has {views} views, dreamed batch {}",
                dreamed.views.len()
            );
        }
        check_views(self.views, views)?;
        let mut phases = Phases::default();
        let device = model.device();
        let n_new = new.indices.len() as i64;
        let n_dreamed = dreamed.indices.len() as i64;
        // Host labels for the residual pairs, device labels for CE and triplet.
        let dreamed_pids = &dreamed.pids + self.new_classes;
        let pids = Tensor::cat(&[&new.pids, &dreamed_pids], 0).to_device(device);
        let t = Instant::now();
        let (new_views, dreamed_views) = (uploaded(&new, device), uploaded(&dreamed, device));
        let maps = self.distillation.reads_maps();
        let teachers = teacher(&self.old, &dreamed_views, &shards(&[&dreamed]), maps)?;
        let both = shards(&[&new, &dreamed]);
        phases.teacher = t.elapsed();
        let t = Instant::now();
        opt.zero_grad();
        phases.optimizer = t.elapsed();
        let mut reported = Vec::new();
        for (i, (x, x_dreamed)) in new_views.iter().zip(&dreamed_views).enumerate() {
            let t = Instant::now();
            let input = Tensor::cat(&[x, x_dreamed], 0);
            let out = model.forward_batches(&input, true, &both, maps)?;
            let student = rows(&out, n_new, n_dreamed);
            let step = (&self.distillation, self.views, &self.old);
            let labels = (&pids, &dreamed_pids);
            let (loss, terms) = view_loss(step, (&out, &student), &teachers, i, labels)?;
            phases.forward += t.elapsed();
            let t = Instant::now();
            (loss / views as f64).f_backward()?;
            phases.backward += t.elapsed();
            reported = terms;
        }
        let t = Instant::now();
        opt.step()?;
        phases.optimizer += t.elapsed();
        Ok((reported, phases))
    }
}

impl Step for IncrementalStep {
    /// (new-task batch, dreamed batch) with the same number of views.
    type Batch = (Batch, Batch);

    fn loss_names(&self) -> Vec<&'static str> {
        vec!["ce", "triplet", "distill"]
    }

    fn batch_images(&self, (new, dreamed): &(Batch, Batch)) -> usize {
        (new.indices.len() + dreamed.indices.len()) * new.views.len()
    }

    /// See [`IncrementalStep::step_timed`].
    fn step(
        &mut self,
        model: &ReidModel,
        opt: &mut Optimizer,
        batch: (Batch, Batch),
    ) -> Result<Vec<Tensor>> {
        self.step_timed(model, opt, batch).map(|(losses, _)| losses)
    }
}

/// Distillation on the new batch alone (the reference's `IncrementalTrainer`): the old
/// model and the student both see the new images x and nothing else, so no image of the
/// old task, dreamed or real, is needed. Per view i: S = student(x_i) in train mode,
/// T_j = old(x_j) for every view j; loss_i = CE(z_S, y) + triplet(g_S, y) + factor ·
/// distill(S, T, y), mixed over the teacher's views as in `incremental-x`; each view's loss
/// is back-propagated divided by the number of views, then one optimiser step.
///
/// Labels y are the new classes 0..n−1, which come first in the expanded classifier, so
/// `hinton`'s "last C classes" of the student's logits are exactly the old classes whose
/// probabilities the old model gives on the same new images.
pub struct NewDataStep {
    /// The task-1 model: frozen, evaluated in eval mode.
    pub old: ReidModel,
    pub distillation: Distillation,
    pub views: Views,
}

impl Step for NewDataStep {
    type Batch = Batch;

    fn loss_names(&self) -> Vec<&'static str> {
        vec!["ce", "triplet", "distill"]
    }

    fn batch_images(&self, batch: &Batch) -> usize {
        batch.indices.len() * batch.views.len()
    }

    /// The reported losses are the last view's, as the reference's.
    fn step(
        &mut self,
        model: &ReidModel,
        opt: &mut Optimizer,
        batch: Batch,
    ) -> Result<Vec<Tensor>> {
        let views = batch.views.len();
        check_views(self.views, views)?;
        let device = model.device();
        let pids = batch.pids.to_device(device);
        let inputs = uploaded(&batch, device);
        // The residual pairs are listed from the host pids (no wait for the device).
        let host_pids = &batch.pids;
        let maps = self.distillation.reads_maps();
        let shards = shards(&[&batch]);
        let teachers = teacher(&self.old, &inputs, &shards, maps)?;
        opt.zero_grad();
        let mut reported = Vec::new();
        for (i, x) in inputs.iter().enumerate() {
            let out = model.forward_batches(x, true, &shards, maps)?;
            let step = (&self.distillation, self.views, &self.old);
            let labels = (&pids, host_pids);
            let (loss, terms) = view_loss(step, (&out, &out), &teachers, i, labels)?;
            (loss / views as f64).f_backward()?;
            reported = terms;
        }
        opt.step()?;
        Ok(reported)
    }
}
