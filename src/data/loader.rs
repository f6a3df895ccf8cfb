//! Batches assembled ahead of the model. A producer thread per stream builds batches (the
//! samples of a batch in parallel with rayon) and hands them over a bounded channel, so the
//! model never waits for data and memory stays bounded by the prefetch depth.
//!
//! Every random draw comes from a stream keyed by (seed, loader, epoch, batch, position,
//! view) — see [`super::rng`] — so batches do not depend on thread timing, and a run
//! resumed at epoch e sees exactly the batches an uninterrupted run sees.

use super::rng::{stream, tag};
use super::sampler::{order_by_camera, IdentitySampler};
use super::transforms::{test_into, TrainTransform};
use super::{ImageStore, Record};
use crate::bad_setting;
use crate::dist::Shard;
use crate::error::Setting;
use anyhow::{anyhow, bail, Result};
use rayon::prelude::*;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use tch::Tensor;

/// Samples per identity in a P×K batch (the reference's `num_instances`).
pub const INSTANCES: usize = 4;

/// What a training loader needs besides its data.
#[derive(Clone, Copy, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub instances: usize,
    pub transform: TrainTransform,
    /// Independently augmented views of every sample (`--peers`; 1 for plain training).
    pub peers: usize,
    pub seed: u64,
    /// Batches built ahead of the consumer.
    pub prefetch: usize,
    /// The CUDA device batches are copied to, if any: they are then built in page-locked
    /// memory, so that the copy runs asynchronously (`non_blocking`) and the GPU does not
    /// wait for a pageable staging copy. None on the CPU, where pinning has no meaning
    /// (and a CPU-only libtorch refuses it).
    pub pin: Option<tch::Device>,
    /// A data-parallel run's share of every batch; `None` builds them whole.
    pub share: Option<Share>,
}

/// A data-parallel rank's share of every batch: every rank draws the same batches and
/// builds the images of its run of their identities ([`Shard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub rank: usize,
    pub world: usize,
    /// The batch keeps the whole batch's labels and its [`Shard`], for outputs gathered
    /// across the ranks (the default); else it is this rank's samples alone, labels and
    /// all (`--local-bn`: losses and BatchNorm within each rank).
    pub whole: bool,
}

impl LoaderConfig {
    /// P×K batches of `batch_size` with K = [`INSTANCES`], `peers` views, and the default
    /// prefetch depth.
    pub fn new(batch_size: usize, peers: usize, transform: TrainTransform, seed: u64) -> Self {
        Self {
            batch_size,
            instances: INSTANCES,
            transform,
            peers,
            seed,
            prefetch: 4,
            pin: None,
            share: None,
        }
    }
}

/// `data` as an N×3×H×W tensor, in page-locked memory when `pin` names a CUDA device.
fn images(data: &[f32], n: usize, h: usize, w: usize, pin: Option<tch::Device>) -> Tensor {
    let t = Tensor::from_slice(data).view([n as i64, 3, h as i64, w as i64]);
    match pin {
        Some(device) if device.is_cuda() => t.pin_memory(device),
        _ => t,
    }
}

/// One training batch of B samples: `peers` views of the same samples, same order. In a
/// data-parallel run the views hold this rank's rows only (those `shard` names); the
/// labels and indices are always the whole batch's.
pub struct Batch {
    /// One float tensor per view: B×3×H×W, or this rank's rows of them.
    pub views: Vec<Tensor>,
    /// B labels (int64).
    pub pids: Tensor,
    /// B cameras (int64).
    pub cameras: Tensor,
    /// The samples' indices in the loader's record list.
    pub indices: Vec<usize>,
    /// Which rows each rank holds, in a data-parallel run.
    pub shard: Option<Shard>,
}

/// Runs `make` for every job on a producer thread, at most `prefetch` results ahead.
/// A panic while making a result (a bad image size, a bug) is caught and handed to the
/// consumer as that result's error, so a run stops with it instead of ending its epoch
/// early as if the data had run out.
fn spawn_stream<J, T>(
    prefetch: usize,
    jobs: impl Iterator<Item = J> + Send + 'static,
    make: impl Fn(J) -> Result<T> + Send + 'static,
) -> Receiver<Result<T>>
where
    T: Send + 'static,
{
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for job in jobs {
            let made = std::panic::catch_unwind(AssertUnwindSafe(|| make(job)))
                .map_err(|panic| anyhow!("the batch producer failed: {}", panic_text(&panic)))
                .and_then(|made| made);
            let failed = made.is_err();
            // The consumer hung up (end of epoch, error, Ctrl-C): stop quietly.
            if tx.send(made).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// The message of a caught panic (a `&str` or `String` payload, as `panic!` makes).
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A bounded iterator over a producer thread's results. A producer that fails, or that
/// stops before the promised number of results, yields an error: a consumer never
/// mistakes a dead producer for the end of the data.
pub struct Stream<T> {
    rx: Receiver<Result<T>>,
    remaining: usize,
    produced: usize,
}

impl<T> Stream<T> {
    fn new(rx: Receiver<Result<T>>, remaining: usize) -> Self {
        Self {
            rx,
            remaining,
            produced: 0,
        }
    }
}

impl<T> Iterator for Stream<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let item = match self.rx.recv() {
            Ok(made) => made,
            Err(_) => Err(anyhow!(
                "the batch producer stopped after {} batches, before the data ran out",
                self.produced
            )),
        };
        if item.is_err() {
            // Nothing follows an error.
            self.remaining = 0;
        }
        self.produced += 1;
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for Stream<T> {}

/// P×K training batches with the training transform, `peers` views each.
#[derive(Clone)]
pub struct TrainLoader {
    records: Arc<Vec<Record>>,
    store: Arc<ImageStore>,
    sampler: IdentitySampler,
    cfg: LoaderConfig,
    /// Distinguishes this loader's random streams from another loader's.
    stream_id: u64,
}

impl TrainLoader {
    pub fn new(
        records: Arc<Vec<Record>>,
        store: Arc<ImageStore>,
        cfg: LoaderConfig,
        stream_id: u64,
    ) -> Result<Self> {
        if records.len() != store.len() {
            bail!(
                "{} records but {} decoded images",
                records.len(),
                store.len()
            );
        }
        if cfg.peers == 0 {
            bad_setting!(Setting::Peers, 0, "at least one view per sample is needed");
        }
        let sampler =
            IdentitySampler::new(&records, cfg.batch_size, cfg.instances, cfg.seed, stream_id)?;
        if let Some(Share { world, .. }) = cfg.share {
            if !sampler.ids_per_batch.is_multiple_of(world) {
                bad_setting!(
                    Setting::BatchSize,
                    cfg.batch_size,
                    "holds {} identities, which {world} ranks cannot share equally: choose a \
                     batch size whose identities (batch / {}) are a multiple of the number of \
                     ranks",
                    sampler.ids_per_batch,
                    cfg.instances
                );
            }
        }
        Ok(Self {
            records,
            store,
            sampler,
            cfg,
            stream_id,
        })
    }

    /// Index batches of an epoch (0-based), ordered by camera within each batch.
    pub fn plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut batches = self.sampler.epoch(epoch);
        for b in &mut batches {
            order_by_camera(b, &self.records);
        }
        batches
    }

    /// Number of batches in an epoch.
    pub fn batches_in_epoch(&self, epoch: u64) -> usize {
        self.sampler.epoch(epoch).len()
    }

    /// Builds batch `batch` of `epoch` from its indices: samples in parallel; in a
    /// data-parallel run, this rank's share. A sample's augmentation depends on its place
    /// in the whole batch, never on the rank that builds it.
    pub fn build(&self, epoch: u64, batch: u64, indices: Vec<usize>) -> Result<Batch> {
        let (h, w) = (self.store.height, self.store.width);
        let size = 3 * h * w;
        let pids = |indices: &[usize]| -> Vec<i64> {
            indices.iter().map(|&i| self.records[i].pid).collect()
        };
        let (mut indices, mut shard) = (indices, None);
        if let Some(share) = self.cfg.share {
            let split = Shard::of(&pids(&indices), share.rank, share.world)?;
            if share.whole {
                shard = Some(split);
            } else {
                indices = split.own().iter().map(|&pos| indices[pos]).collect();
            }
        }
        let rows: Vec<usize> = match &shard {
            Some(s) => s.own().to_vec(),
            None => (0..indices.len()).collect(),
        };
        let n = rows.len();
        let views = (0..self.cfg.peers)
            .map(|view| {
                let mut data = vec![0f32; n * size];
                data.par_chunks_mut(size)
                    .zip(rows.par_iter())
                    .for_each(|(out, &pos)| {
                        let i = indices[pos];
                        let mut rng = stream(
                            self.cfg.seed,
                            &[
                                tag::AUGMENT,
                                self.stream_id,
                                epoch,
                                batch,
                                pos as u64,
                                view as u64,
                            ],
                        );
                        self.cfg
                            .transform
                            .apply_into(&mut rng, self.store.image(i), h, w, out);
                    });
                images(&data, n, h, w, self.cfg.pin)
            })
            .collect();
        let cams: Vec<i64> = indices.iter().map(|&i| self.records[i].camera).collect();
        Ok(Batch {
            views,
            pids: Tensor::from_slice(&pids(&indices)),
            cameras: Tensor::from_slice(&cams),
            indices,
            shard,
        })
    }

    /// The batches of `epoch`, built in the background.
    pub fn epoch(&self, epoch: u64) -> Stream<Batch> {
        let plan = self.plan(epoch);
        let remaining = plan.len();
        let this = self.clone();
        let rx = spawn_stream(
            self.cfg.prefetch,
            plan.into_iter().enumerate(),
            move |(b, idx)| this.build(epoch, b as u64, idx),
        );
        Stream::new(rx, remaining)
    }

    /// An endless stream of whole sampler passes, starting at the first batch of pass
    /// `first`. Pass p is shuffled and augmented with the random streams of epoch p, so
    /// distinct pass numbers are distinct shuffles, and a pass is the same whichever run
    /// (uninterrupted or resumed) draws it.
    pub fn passes(&self, first: u64) -> Stream<Batch> {
        let this = self.clone();
        let planner = self.clone();
        let jobs = (first..).flat_map(move |pass| {
            planner
                .plan(pass)
                .into_iter()
                .enumerate()
                .map(move |(b, idx)| (pass, b as u64, idx))
        });
        let rx = spawn_stream(self.cfg.prefetch, jobs, move |(pass, b, idx)| {
            this.build(pass, b, idx)
        });
        Stream::new(rx, usize::MAX)
    }
}

/// New-task batches paired with dreamed batches (docs/method.md §2, "Pairing"), as the reference
/// pairs them: every epoch begins a *fresh* pass of the dreamed loader (its
/// `iter(training_loader_prec)` at the start of the epoch), the i-th new batch of the epoch
/// goes with the i-th batch of that pass, and when the pass runs out within the epoch the
/// next pass begins. Whatever an epoch leaves of its last pass is never seen.
#[derive(Clone)]
pub struct PairedLoader {
    pub new: TrainLoader,
    pub dreamed: TrainLoader,
}

impl PairedLoader {
    /// The number of the dreamed pass that `epoch` begins: the count of passes begun by
    /// every earlier epoch (each begins one, and one more each time its pass runs out).
    /// Recomputed from the two samplers, so a resumed run needs no saved loader state and
    /// sees the passes an uninterrupted run sees; numbering passes consecutively keeps
    /// every pass of the run a distinct shuffle.
    pub fn first_dreamed_pass(&self, epoch: u64) -> u64 {
        (0..epoch).fold(0, |pass, e| {
            pass + self.dreamed_passes(pass, self.new.batches_in_epoch(e))
        })
    }

    /// Passes begun, from pass `first` on, to pair `batches` new batches: at least one (an
    /// epoch always begins a pass), and every pass holds at least one batch (the sampler
    /// refuses data with fewer than P identities), so this ends.
    fn dreamed_passes(&self, first: u64, batches: usize) -> u64 {
        let (mut covered, mut pass) = (self.dreamed.batches_in_epoch(first), first + 1);
        while covered < batches {
            covered += self.dreamed.batches_in_epoch(pass);
            pass += 1;
        }
        pass - first
    }

    /// The (new, dreamed) batch pairs of `epoch`.
    pub fn epoch(&self, epoch: u64) -> impl ExactSizeIterator<Item = Result<(Batch, Batch)>> {
        let dreamed = self.dreamed.passes(self.first_dreamed_pass(epoch));
        self.new
            .epoch(epoch)
            .zip(dreamed)
            .map(|(new, dreamed)| Ok((new?, dreamed?)))
    }
}

/// Test-transform batches over a whole split, in order (for feature extraction).
pub struct TestLoader {
    store: Arc<ImageStore>,
    pub batch_size: usize,
    pub prefetch: usize,
    /// As [`LoaderConfig::pin`].
    pub pin: Option<tch::Device>,
    /// `(rank, world)`: only batches `rank`, `rank + world`, … (a data-parallel run's
    /// share); every batch when `None`.
    pub share: Option<(usize, usize)>,
}

impl TestLoader {
    pub fn new(store: Arc<ImageStore>, batch_size: usize) -> Self {
        Self {
            store,
            batch_size: batch_size.max(1),
            prefetch: 4,
            pin: None,
            share: None,
        }
    }

    /// The images of each batch, as index ranges in record order.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        let (n, bs) = (self.store.len(), self.batch_size);
        (0..n)
            .step_by(bs)
            .map(|start| start..(start + bs).min(n))
            .collect()
    }

    /// B×3×H×W tensors covering every image once (or this rank's [`TestLoader::share`]
    /// of the batches), in record order.
    pub fn batches(&self) -> Stream<Tensor> {
        let (store, pin) = (self.store.clone(), self.pin);
        let (rank, world) = self.share.unwrap_or((0, 1));
        let jobs: Vec<_> = self
            .ranges()
            .into_iter()
            .skip(rank)
            .step_by(world.max(1))
            .collect();
        let count = jobs.len();
        let rx = spawn_stream(self.prefetch, jobs.into_iter(), move |range| {
            let (h, w) = (store.height, store.width);
            let size = 3 * h * w;
            let mut data = vec![0f32; range.len() * size];
            data.par_chunks_mut(size)
                .zip(range.clone().into_par_iter())
                .for_each(|(out, i)| test_into(store.image(i), h, w, out));
            Ok(images(&data, range.len(), h, w, pin))
        });
        Stream::new(rx, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_producer_is_an_error_not_the_end_of_the_data() {
        let rx = spawn_stream(2, 0..5u32, |i| {
            assert!(i != 2, "image {i} has no pixels");
            Ok(i)
        });
        let got: Vec<Result<u32>> = Stream::new(rx, 5).collect();
        assert_eq!(got.len(), 3, "nothing follows the error");
        assert_eq!(got[0].as_ref().unwrap(), &0);
        assert_eq!(got[1].as_ref().unwrap(), &1);
        let err = got[2].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("batch producer failed") && err.contains("image 2 has no pixels"),
            "{err}"
        );
    }

    #[test]
    fn a_producer_that_stops_early_is_an_error() {
        let rx = spawn_stream(2, 0..2u32, Ok);
        let got: Vec<Result<u32>> = Stream::new(rx, 4).collect();
        assert_eq!(got.len(), 3);
        let err = got[2].as_ref().unwrap_err().to_string();
        assert!(err.contains("stopped after 2 batches"), "{err}");
    }
}
