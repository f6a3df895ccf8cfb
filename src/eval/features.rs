//! Features of a split, as the reference evaluates them: the model in eval mode, test
//! transform, no flip averaging, `embedding` (or `global`).

use crate::data::{ImageStore, TestLoader};
use crate::dist::Group;
use crate::model::{to_input, ReidModel};
use anyhow::Result;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Which output serves as the feature (`--output-feature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFeature {
    Embedding,
    Global,
}

crate::named_values!(OutputFeature { Embedding => "embedding", Global => "global" });

/// N×D features of every image in `store`, in order, on the model's device. In a
/// data-parallel run (`group`), each rank extracts its share of the batches (batch `b`
/// by rank `b mod world`, so every batch is the one a single process would run) and the
/// ranks exchange them: every rank returns all N rows, on the CPU.
pub fn extract(
    model: &ReidModel,
    store: &Arc<ImageStore>,
    batch_size: usize,
    feature: OutputFeature,
    what: &str,
    group: Option<&Group>,
) -> Result<Tensor> {
    let mut loader = TestLoader::new(store.clone(), batch_size);
    loader.pin = Some(model.device()).filter(|d| d.is_cuda());
    loader.share = group.map(|g| (g.rank(), g.world()));
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
            pb.inc(n * group.map_or(1, |g| g.world() as u64));
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    match group {
        None => Ok(Tensor::cat(&parts, 0)),
        Some(g) => gathered(g, &loader, &parts),
    }
}

/// Every rank's batches (`parts`, this rank's share of `loader`'s) in record order. Each
/// rank's rows are padded to the largest share, so that one all-gather carries them.
fn gathered(group: &Group, loader: &TestLoader, parts: &[Tensor]) -> Result<Tensor> {
    let ranges = loader.ranges();
    let world = group.world();
    let bs = loader.batch_size as i64;
    let per_rank = ranges.len().div_ceil(world) as i64;
    let dim = parts.first().map_or(0, |p| p.size()[1]);
    // A rank whose share is empty (fewer batches than ranks) learns the width from the
    // others.
    let widths = group.all_gather(&Tensor::from_slice(&[dim]))?;
    let dim = i64::try_from(widths.max())?;
    let mine = Tensor::zeros([per_rank * bs, dim], (Kind::Float, Device::Cpu));
    let mut row = 0;
    for p in parts {
        let n = p.size()[0];
        mine.narrow(0, row, n)
            .copy_(&p.to_kind(Kind::Float).to_device(Device::Cpu));
        row += bs;
    }
    let all = group.all_gather(&mine)?;
    let rows: Vec<i64> = ranges
        .iter()
        .enumerate()
        .flat_map(|(b, r)| {
            let (rank, slot) = ((b % world) as i64, (b / world) as i64);
            let first = (rank * per_rank + slot) * bs;
            (0..r.len() as i64).map(move |i| first + i)
        })
        .collect();
    Ok(all.index_select(0, &Tensor::from_slice(&rows)))
}
