//! How a data-parallel run splits a P×K batch among its ranks, and puts the ranks' outputs
//! back together (docs/multi-gpu.md, "Same numbers as one process").
//!
//! Every rank draws the same global batch (the sampler's seed is shared) and keeps the rows
//! of whole identities: rank r the r-th of `world` equal runs of the batch's identities, in
//! order of first appearance. The losses then see the global batch again, in its own order:
//! every rank's rows are all-gathered and its own rows keep their graph, so hard mining and
//! the relational distillations see what one process sees, and each rank's backward pass
//! reaches its own rows only (the gradient all-reduce sums the ranks' parts).

use super::Group;
use crate::bad_setting;
use crate::error::Setting;
use anyhow::{bail, Result};
use tch::Tensor;

/// Which rows of one global batch each rank holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    /// Per rank, the batch positions it holds, in its local order.
    pub rows: Vec<Vec<usize>>,
}

impl Shard {
    /// The split of a batch with labels `pids` among `world` ranks, seen from `rank`: the
    /// identities, in order of first appearance, dealt in `world` equal runs. An error when
    /// they cannot be dealt equally (P not a multiple of the number of ranks).
    pub fn of(pids: &[i64], rank: usize, world: usize) -> Result<Self> {
        let mut ids: Vec<i64> = Vec::new();
        for &p in pids {
            if !ids.contains(&p) {
                ids.push(p);
            }
        }
        if world == 0 || !ids.len().is_multiple_of(world) {
            bad_setting!(
                Setting::BatchSize,
                pids.len(),
                "holds {} identities, which {world} ranks cannot share equally: choose a \
                 batch size whose identities (batch / 4) are a multiple of the number of ranks",
                ids.len()
            );
        }
        let per_rank = ids.len() / world;
        let owner = |p: i64| ids.iter().position(|&q| q == p).map_or(0, |i| i / per_rank);
        let mut rows = vec![Vec::new(); world];
        for (pos, &p) in pids.iter().enumerate() {
            rows[owner(p)].push(pos);
        }
        let sizes: Vec<usize> = rows.iter().map(Vec::len).collect();
        if sizes.iter().any(|&n| n != sizes[0]) {
            bad_setting!(
                Setting::BatchSize,
                pids.len(),
                "gives the ranks {sizes:?} rows: a P×K batch holds K images of every identity"
            );
        }
        Ok(Self { rank, rows })
    }

    /// The batch positions this rank holds.
    pub fn own(&self) -> &[usize] {
        &self.rows[self.rank]
    }

    fn world(&self) -> usize {
        self.rows.len()
    }
}

/// The outputs of several batches forwarded together, each rank its own rows of each
/// (`local`: the rows of `parts[0]`'s shard, then of `parts[1]`'s, …), as one process
/// computes them: the whole of `parts[0]`'s batch in its order, then the whole of
/// `parts[1]`'s. This rank's rows keep their graph; the others' are values.
pub fn gather_rows(group: &Group, local: &Tensor, parts: &[&Shard]) -> Result<Tensor> {
    let world = group.world();
    let rank = group.rank();
    if parts.iter().any(|s| s.world() != world || s.rank != rank) {
        bail!("a batch split for another run's ranks");
    }
    let length: usize = parts.iter().map(|s| s.own().len()).sum();
    if local.size().first() != Some(&(length as i64)) {
        bail!(
            "{length} rows of this rank's batches but {:?} outputs",
            local.size()
        );
    }
    let gathered = group.all_gather(&local.detach())?;
    let mut blocks: Vec<Tensor> = gathered.split(length as i64, 0);
    blocks[rank] = local.shallow_clone();
    let all = Tensor::cat(&blocks, 0);
    // Where each global row of each part sits in `all`.
    let mut index = Vec::new();
    let mut before = 0; // rows of earlier parts in every rank's block
    for shard in parts {
        let batch: usize = shard.rows.iter().map(Vec::len).sum();
        let mut at = vec![0i64; batch];
        for (k, rows) in shard.rows.iter().enumerate() {
            for (j, &pos) in rows.iter().enumerate() {
                at[pos] = (k * length + before + j) as i64;
            }
        }
        index.extend(at);
        before += shard.own().len();
    }
    let index = Tensor::from_slice(&index).to_device(all.device());
    Ok(all.index_select(0, &index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_identities_are_dealt_in_equal_runs() {
        // P = 4 identities × K = 2, ordered by camera (identities interleave).
        let pids = [7, 3, 7, 9, 3, 5, 9, 5];
        let s = Shard::of(&pids, 1, 2).unwrap();
        // 7 and 3 come first: rank 0; 9 and 5: rank 1.
        assert_eq!(s.rows, vec![vec![0, 1, 2, 4], vec![3, 5, 6, 7]]);
        assert_eq!(s.own(), [3, 5, 6, 7]);
        assert_eq!(
            Shard::of(&pids, 0, 1).unwrap().own(),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        let e = Shard::of(&pids, 0, 3).unwrap_err().to_string();
        assert!(e.contains("4 identities") && e.contains("3 ranks"), "{e}");
    }
}
