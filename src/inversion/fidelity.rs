//! Do the dreams carry their identities? A number that needs no model: for each dreamed
//! image, the training identity whose colour histogram is nearest (top-1 over all
//! identities), counted when it is the identity the image was dreamed for. The teacher
//! classifying its own dreams correctly says little (it does so on noise); a colour layout
//! that matches the identity's clothing is what a person sees in the contact sheet, and
//! what distillation on the dreams can carry over to real images. The same number for the
//! real training images (each against the other images of the identities, leave-one-out)
//! is the ceiling; 1 / identities is chance.

use crate::data::dataset::{Dreamed, ReidDataset};
use crate::data::images::ImageStore;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

/// Levels per channel of the joint RGB histogram: 4 × 4 × 4 = 64 bins, coarse enough for
/// the colour of a garment to fall in one bin across cameras' colour responses.
pub const LEVELS: usize = 4;
const BINS: usize = LEVELS * LEVELS * LEVELS;

/// The part of a pedestrian crop the histogram counts: rows h/8..15h/16, columns
/// w/4..3w/4, where the person stands. The whole crop's histogram is dominated by the
/// background, which changes with the camera: on the demo's task A, real images find their
/// own identity 32% of the time from the whole crop and 81% from this part.
fn person_region(height: usize, width: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    (height / 8..height * 15 / 16, width / 4..width * 3 / 4)
}

/// The identity-histogram match of one set of images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct IdentityMatch {
    /// Fraction of the images whose nearest identity histogram is their own identity's.
    pub top1: f64,
    pub images: usize,
}

/// Dreamed images against the ceiling of real ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HistogramReport {
    pub identities: usize,
    /// 1 / identities.
    pub chance: f64,
    pub dreamed: IdentityMatch,
    /// Real training images, each against the histograms of the identities without it.
    pub real: IdentityMatch,
}

/// The normalised joint RGB histogram of the person region of one `height`×`width` image's
/// HWC bytes.
pub fn colour_histogram(pixels: &[u8], height: usize, width: usize) -> [f64; BINS] {
    let mut h = [0.0; BINS];
    let level = |v: u8| v as usize * LEVELS / 256;
    let (rows, cols) = person_region(height, width);
    let mut n = 0usize;
    for y in rows {
        for x in cols.clone() {
            let p = &pixels[(y * width + x) * 3..][..3];
            h[(level(p[0]) * LEVELS + level(p[1])) * LEVELS + level(p[2])] += 1.0;
            n += 1;
        }
    }
    h.map(|c| c / n.max(1) as f64)
}

fn l1(a: &[f64; BINS], b: &[f64; BINS]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
}

/// Per identity 0..ids: the sum of its images' histograms and their count.
struct Prototypes {
    sums: Vec<[f64; BINS]>,
    counts: Vec<usize>,
}

impl Prototypes {
    fn new(histograms: &[[f64; BINS]], pids: &[i64], ids: usize) -> Self {
        let mut sums = vec![[0.0; BINS]; ids];
        let mut counts = vec![0; ids];
        for (h, &pid) in histograms.iter().zip(pids) {
            let k = pid as usize;
            sums[k].iter_mut().zip(h).for_each(|(s, x)| *s += x);
            counts[k] += 1;
        }
        Self { sums, counts }
    }

    /// The identity whose mean histogram is nearest `h`; with `leave_out`, `h` is one of
    /// that identity's images and is taken out of its mean first.
    fn nearest(&self, h: &[f64; BINS], leave_out: Option<usize>) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for (k, (sum, &count)) in self.sums.iter().zip(&self.counts).enumerate() {
            let (sum, count) = match leave_out {
                Some(own) if own == k => {
                    let mut s = *sum;
                    s.iter_mut().zip(h).for_each(|(s, x)| *s -= x);
                    (s, count - 1)
                }
                _ => (*sum, count),
            };
            if count == 0 {
                continue;
            }
            let mean = sum.map(|s| s / count as f64);
            let d = l1(h, &mean);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, k));
            }
        }
        best.map(|(_, k)| k)
    }
}

fn histograms(store: &ImageStore) -> Vec<[f64; BINS]> {
    (0..store.len())
        .map(|i| colour_histogram(store.image(i), store.height, store.width))
        .collect()
}

fn top1(hits: usize, images: usize) -> IdentityMatch {
    IdentityMatch {
        top1: hits as f64 / images.max(1) as f64,
        images,
    }
}

/// The report over images already decoded: `real` with identities `real_pids` in 0..ids,
/// `dreamed` with the identities they were dreamed for.
pub fn histogram_match(
    real: &ImageStore,
    real_pids: &[i64],
    dreamed: &ImageStore,
    dreamed_pids: &[i64],
    ids: usize,
) -> HistogramReport {
    let real_h = histograms(real);
    let prototypes = Prototypes::new(&real_h, real_pids, ids);
    let real_hits = real_h
        .iter()
        .zip(real_pids)
        .filter(|(h, &pid)| prototypes.nearest(h, Some(pid as usize)) == Some(pid as usize))
        .count();
    let dreamed_hits = histograms(dreamed)
        .iter()
        .zip(dreamed_pids)
        .filter(|(h, &pid)| prototypes.nearest(h, None) == Some(pid as usize))
        .count();
    HistogramReport {
        identities: ids,
        chance: 1.0 / ids.max(1) as f64,
        dreamed: top1(dreamed_hits, dreamed_pids.len()),
        real: top1(real_hits, real_pids.len()),
    }
}

/// The report of the dreams in `dreamed_dir` against the training images of
/// `data_root/dataset` (the task the teacher learnt), both read at `height`×`width`.
pub fn measure(
    data_root: &Path,
    dataset: &str,
    dreamed_dir: &Path,
    height: usize,
    width: usize,
) -> Result<HistogramReport> {
    let data = ReidDataset::load(data_root, dataset)?;
    let dreams = Dreamed::load(dreamed_dir, usize::MAX)?;
    let ids = data.num_train_ids;
    if let Some(r) = dreams.records.iter().find(|r| r.pid as usize >= ids) {
        bail!(
            "{}: identity {}, but {dataset} has {ids} training identities",
            r.path.display(),
            r.pid
        );
    }
    let pids = |records: &[crate::data::Record]| records.iter().map(|r| r.pid).collect::<Vec<_>>();
    let real = ImageStore::load(&data.train, height, width, "histograms (real)")?;
    let dreamed = ImageStore::load(&dreams.records, height, width, "histograms (dreamed)")?;
    Ok(histogram_match(
        &real,
        &pids(&data.train),
        &dreamed,
        &pids(&dreams.records),
        ids,
    ))
}

/// The same question for the eye: one row per identity (the first `ids`), its first
/// `real_per_id` training images of `data_root/dataset`, a blank cell, then its dreams in
/// `dreamed_dir`, each drawn `height`×`width`. The inversion's own contact sheet shows the
/// dreams alone (`agd invert` has no real data); beside the people they were dreamed for,
/// whether they carry their clothing colours can be judged at a glance.
pub fn beside_real_sheet(
    data_root: &Path,
    dataset: &str,
    dreamed_dir: &Path,
    ids: usize,
    real_per_id: usize,
    (height, width): (u32, u32),
) -> Result<image::RgbImage> {
    let data = ReidDataset::load(data_root, dataset)?;
    let dreams = Dreamed::load(dreamed_dir, usize::MAX)?;
    let decode = |r: &crate::data::Record| {
        crate::data::images::decode_resized(&r.path, height as usize, width as usize)
    };
    let blank = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let rows = (0..ids.min(data.num_train_ids) as i64)
        .map(|pid| {
            let of = |r: &&crate::data::Record| r.pid == pid;
            let real = data.train.iter().filter(of).take(real_per_id).map(decode);
            let dreamed = dreams.records.iter().filter(of).map(decode);
            real.chain(std::iter::once(Ok(blank.clone())))
                .chain(dreamed)
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    Ok(crate::data::images::grid(&rows, cols, height, width))
}
