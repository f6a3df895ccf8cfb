//! The base training step (docs/method.md §1 `train`): cross-entropy + triplet on one view.

use super::fit::{reported, Step};
use super::optimizer::Optimizer;
use crate::data::Batch;
use crate::loss::BaseLoss;
use crate::model::{to_input, ReidModel};
use anyhow::Result;

pub struct BaseStep;

impl Step for BaseStep {
    type Batch = Batch;

    fn loss_names(&self) -> Vec<&'static str> {
        vec!["ce", "triplet"]
    }

    fn batch_images(&self, batch: &Batch) -> usize {
        batch.indices.len()
    }

    /// With several views (`--peers`), each view's loss is back-propagated divided by the
    /// number of views and one optimiser step follows, as the reference's X trainer does;
    /// the reported losses are the last view's.
    fn step(
        &mut self,
        model: &ReidModel,
        opt: &mut Optimizer,
        batch: Batch,
    ) -> Result<Vec<tch::Tensor>> {
        let device = model.device();
        let pids = batch.pids.to_device(device);
        let views = batch.views.len() as f64;
        let shards = super::fit::shards(&[&batch]);
        opt.zero_grad();
        let mut last = Vec::new();
        for view in &batch.views {
            let out = model.forward_batches(&to_input(view, device), true, &shards, false)?;
            let loss = BaseLoss::new(&out.logits, &out.global, &pids);
            (loss.total() / views).f_backward()?;
            last = reported(&[&loss.ce, &loss.triplet]);
        }
        opt.step()?;
        Ok(last)
    }
}
