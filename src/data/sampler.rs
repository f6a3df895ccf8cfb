//! The reference's identity sampler (docs/method.md §2): every batch holds exactly K samples of
//! each of its P distinct identities, which the triplet and geometric losses rely on.

use super::rng::{stream, tag};
use super::Record;
use crate::bad_setting;
use crate::error::Setting;
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;

/// P×K batches of indices into a record list, reproducible from (seed, epoch).
#[derive(Clone, Debug)]
pub struct IdentitySampler {
    /// Sample indices of each pid, in order of first appearance of the pid.
    groups: Vec<(i64, Vec<usize>)>,
    /// K: samples per identity in a batch.
    pub instances: usize,
    /// P: identities per batch.
    pub ids_per_batch: usize,
    seed: u64,
    /// Separates this sampler's random stream from another one's under the same seed.
    stream_id: u64,
}

impl IdentitySampler {
    /// `batch_size` must be a multiple of `instances` (K, 4 in the reference), and there
    /// must be at least P = batch/K identities.
    pub fn new(
        records: &[Record],
        batch_size: usize,
        instances: usize,
        seed: u64,
        stream_id: u64,
    ) -> Result<Self> {
        if instances == 0 || batch_size == 0 || !batch_size.is_multiple_of(instances) {
            bad_setting!(
                Setting::BatchSize,
                batch_size,
                "must be a positive multiple of {instances} (the samples per identity in a P×K batch)"
            );
        }
        let mut order: Vec<i64> = Vec::new();
        let mut by_pid: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            let entry = by_pid.entry(r.pid).or_default();
            if entry.is_empty() {
                order.push(r.pid);
            }
            entry.push(i);
        }
        let ids_per_batch = batch_size / instances;
        if order.len() < ids_per_batch {
            bad_setting!(
                Setting::BatchSize,
                batch_size,
                "needs {ids_per_batch} identities per batch but the data has only {}",
                order.len()
            );
        }
        let groups = order
            .into_iter()
            .map(|pid| {
                let idx = by_pid.remove(&pid).unwrap_or_default();
                (pid, idx)
            })
            .collect();
        Ok(Self {
            groups,
            instances,
            ids_per_batch,
            seed,
            stream_id,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.instances * self.ids_per_batch
    }

    /// The batches of `epoch` (each P·K indices, identity-grouped in chunks of K).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = stream(self.seed, &[tag::SAMPLER, self.stream_id, epoch]);
        let k = self.instances;
        // Each pid's chunks of K, in the order they will be used.
        let mut chunks: Vec<std::collections::VecDeque<Vec<usize>>> = self
            .groups
            .iter()
            .map(|(_, idx)| {
                let mut idx = if idx.len() < k {
                    (0..k).map(|_| idx[rng.gen_range(0..idx.len())]).collect()
                } else {
                    idx.clone()
                };
                idx.shuffle(&mut rng);
                idx.chunks_exact(k).map(<[usize]>::to_vec).collect()
            })
            .collect();
        let mut available: Vec<usize> = (0..self.groups.len()).collect();
        let mut batches = Vec::new();
        while available.len() >= self.ids_per_batch {
            let picked: Vec<usize> = available
                .choose_multiple(&mut rng, self.ids_per_batch)
                .copied()
                .collect();
            let mut batch = Vec::with_capacity(self.batch_size());
            for g in picked {
                batch.extend(chunks[g].pop_front().expect("available pid has a chunk"));
                if chunks[g].is_empty() {
                    available.retain(|&a| a != g);
                }
            }
            batches.push(batch);
        }
        batches
    }
}

/// The reference's quirk: a batch is stably ordered by camera.
pub fn order_by_camera(batch: &mut [usize], records: &[Record]) {
    batch.sort_by_key(|&i| records[i].camera);
}
