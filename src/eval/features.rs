//! Features of a split, as the reference evaluates them: the model in eval mode, test
//! transform, no flip averaging, `embedding` (or `global`).

use crate::data::{ImageStore, TestLoader};
use crate::model::{to_input, ReidModel};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;

/// Which output serves as the feature (`--output-feature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFeature {
    Embedding,
    Global,
}

crate::named_values!(OutputFeature { Embedding => "embedding", Global => "global" });

/// N×D features of every image in `store`, in order, on the model's device.
pub fn extract(
    model: &ReidModel,
    store: &Arc<ImageStore>,
    batch_size: usize,
    feature: OutputFeature,
    what: &str,
) -> Result<Tensor> {
    let mut loader = TestLoader::new(store.clone(), batch_size);
    loader.pin = Some(model.device()).filter(|d| d.is_cuda());
    let pb = crate::progress::bar(store.len() as u64, what.to_string());
    let mut parts = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for batch in loader.batches() {
            let batch = batch?;
            let n = batch.size()[0] as u64;
            let out = model.forward(&to_input(&batch, model.device()), false);
            parts.push(match feature {
                OutputFeature::Embedding => out.embedding,
                OutputFeature::Global => out.global,
            });
            pb.inc(n);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(Tensor::cat(&parts, 0))
}
