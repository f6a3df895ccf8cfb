//! mAP and CMC of a query × gallery distance matrix, with the reference protocol (docs/method.md §8).
//!
//! Per query, gallery items sharing both its identity and its camera are dropped (they are
//! the same shot seen again, not a retrieval); a query with no remaining match is skipped.
//! AP is scikit-learn's `average_precision_score(y_true, -distance)`: tied distances form
//! one threshold, so a match tied with non-matches is credited with the precision of the
//! whole tied group. CMC is open-reid's "first match" curve (`first_match_break=True`,
//! `single_gallery_shot=False`), with ties broken by gallery index (a stable sort).

pub use super::distance::{distance_matrix, distances, f_distances, Distance};
use super::distance::{feature_width, similarities, Operand};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// The CMC ranks reported by the reference (1..=20).
pub const DEFAULT_TOPK: usize = 20;

/// Retrieval quality of one query set against one gallery.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    /// Mean average precision over the valid queries.
    pub map: f64,
    /// `cmc[k - 1]`: fraction of valid queries whose first match is within the top k.
    pub cmc: Vec<f64>,
    /// Queries with at least one match outside their own camera (the ones averaged).
    pub valid_queries: usize,
    /// All queries, valid or not.
    pub total_queries: usize,
}

impl Metrics {
    /// CMC at rank `k` (1-based). Rank 0 is 0 (nothing retrieved); a rank beyond the
    /// evaluated `topk` is unknown and gives NaN rather than a misleading number.
    pub fn rank(&self, k: usize) -> f64 {
        match k {
            0 => 0.0,
            k => self.cmc.get(k - 1).copied().unwrap_or(f64::NAN),
        }
    }
}

/// Identity labels of one side.
#[derive(Clone, Copy, Debug)]
pub struct Labels<'a> {
    pub pids: &'a [i64],
    pub cams: &'a [i64],
}

impl<'a> Labels<'a> {
    /// One side's person ids and camera ids, index-aligned with its features.
    pub const fn new(pids: &'a [i64], cams: &'a [i64]) -> Self {
        Self { pids, cams }
    }

    fn len(&self, side: &str) -> Result<usize> {
        ensure!(
            self.pids.len() == self.cams.len(),
            "{side} labels disagree: {} pids but {} cams",
            self.pids.len(),
            self.cams.len()
        );
        Ok(self.pids.len())
    }
}

/// What one valid query contributes.
struct QueryScore {
    ap: f64,
    /// 0-based rank of the first match among the kept gallery items.
    first_match: usize,
}

/// Metrics from a Q×G distance matrix (row-major f32, smaller = closer).
///
/// Errors on shape mismatches, on NaN distances (they have no rank), and when no query has
/// a match in the gallery outside its own camera (the reference raises there too).
/// Infinite distances are ordinary, tied, extremes.
pub fn evaluate(dist: &[f32], query: Labels, gallery: Labels, topk: usize) -> Result<Metrics> {
    let (nq, ng) = sides(query, gallery)?;
    let expected = nq
        .checked_mul(ng)
        .with_context(|| format!("{nq} queries × {ng} gallery items overflows"))?;
    ensure!(
        dist.len() == expected,
        "distance matrix has {} entries, expected {nq} queries × {ng} gallery items = {expected}",
        dist.len()
    );
    let identities = Identities::new(gallery);
    let scores = score_rows(dist, 0, ng, query, &identities)?;
    summarise(&scores, nq, ng, topk)
}

/// Scores of the queries whose distance rows (`ng` wide) `rows` holds, the first being
/// query `first`.
fn score_rows(
    rows: &[f32],
    first: usize,
    ng: usize,
    query: Labels,
    gallery: &Identities,
) -> Result<Vec<Option<QueryScore>>> {
    rows.par_chunks(ng)
        .enumerate()
        .map(|(r, row)| score_row(first + r, row, query, gallery))
        .collect()
}

/// Most query rows per similarity block in [`evaluate_features`]: 1,024 × 15,913 gallery
/// items is 65 MB, and blocks this tall keep the GEMM at full speed.
const BLOCK_ROWS: usize = 1024;

/// Metrics of features ranked by `kind`: the numbers of [`evaluate`] on
/// [`distance_matrix`], without ever holding the Q×G matrix.
///
/// On the CPU in float32 the similarities come block by block from one GEMM and each
/// block's rows are turned into the reference's distances and scored while in cache; the
/// distances are the same float32 operations [`f_distances`] applies, so only the GEMM's
/// summation order (as between any two BLAS libraries) differs. Float64 features (the
/// golden fixtures) and features on a GPU are scored in blocks of query rows by
/// [`f_distances`] on their device: MSMT17's 11,659 × 82,161 matrix is 3.8 GB per float
/// copy, so no device ever holds Q×G.
pub fn evaluate_features(
    query: &Tensor,
    gallery: &Tensor,
    kind: Distance,
    query_labels: Labels,
    gallery_labels: Labels,
    topk: usize,
) -> Result<Metrics> {
    let dim = feature_width(query, gallery)?;
    let on_cpu = query.device() == Device::Cpu && gallery.device() == Device::Cpu;
    let double = query.kind() == Kind::Double || gallery.kind() == Kind::Double;
    let (nq, ng) = sides(query_labels, gallery_labels)?;
    ensure!(
        query.size()[0] as usize == nq && gallery.size()[0] as usize == ng,
        "{} query and {} gallery features, but {nq} query and {ng} gallery labels",
        query.size()[0],
        gallery.size()[0]
    );
    if !on_cpu || double {
        return evaluate_on_device([query, gallery], kind, [query_labels, gallery_labels], topk);
    }
    let q = Operand::new(query, kind)?;
    let g = Operand::new(gallery, kind)?;
    let identities = Identities::new(gallery_labels);

    // Equal blocks: a short last block would run the GEMM below its speed.
    let block_rows = nq.div_ceil(nq.div_ceil(BLOCK_ROWS));
    let mut block = vec![0f32; block_rows * ng];
    let mut scores = Vec::with_capacity(nq);
    for start in (0..nq).step_by(block_rows) {
        let rows = block_rows.min(nq - start);
        let block = &mut block[..rows * ng];
        similarities(
            &q.data[start * dim..(start + rows) * dim],
            rows,
            &g.data,
            ng,
            dim,
            block,
        );
        let part: Vec<Option<QueryScore>> = block
            .par_chunks_mut(ng)
            .enumerate()
            .map(|(r, row)| {
                let i = start + r;
                match kind {
                    Distance::Cosine => {
                        for d in row.iter_mut() {
                            *d = kind.of_dot(*d, 0.0, 0.0);
                        }
                    }
                    Distance::Euclidean => {
                        for (d, &gsq) in row.iter_mut().zip(&g.sq) {
                            *d = kind.of_dot(*d, q.sq[i], gsq);
                        }
                    }
                }
                score_row(i, row, query_labels, &identities)
            })
            .collect::<Result<_>>()?;
        scores.extend(part);
    }
    summarise(&scores, nq, ng, topk)
}

/// [`evaluate`] on [`distance_matrix`], one block of [`BLOCK_ROWS`] query rows at a time:
/// each block's distances are [`f_distances`]'s (rows are normalised one by one, so a
/// block's rows are the full matrix's), computed on the features' device, then copied to
/// the host and scored there.
fn evaluate_on_device(
    [query, gallery]: [&Tensor; 2],
    kind: Distance,
    [query_labels, gallery_labels]: [Labels; 2],
    topk: usize,
) -> Result<Metrics> {
    let (nq, ng) = (query_labels.pids.len(), gallery_labels.pids.len());
    let identities = Identities::new(gallery_labels);
    let mut scores = Vec::with_capacity(nq);
    for start in (0..nq).step_by(BLOCK_ROWS) {
        let rows = BLOCK_ROWS.min(nq - start);
        let block = f_distances(
            &query.f_narrow(0, start as i64, rows as i64)?,
            gallery,
            kind,
        )?;
        let block = Vec::<f32>::try_from(block.f_reshape([-1])?)
            .context("reading a block of the distance matrix")?;
        scores.extend(score_rows(&block, start, ng, query_labels, &identities)?);
    }
    summarise(&scores, nq, ng, topk)
}

/// Numbers of queries and gallery items, once their pids and cameras agree and neither
/// side is empty.
fn sides(query: Labels, gallery: Labels) -> Result<(usize, usize)> {
    let (nq, ng) = (query.len("query")?, gallery.len("gallery")?);
    ensure!(nq > 0 && ng > 0, no_valid_query(nq, ng));
    Ok((nq, ng))
}

fn no_valid_query(nq: usize, ng: usize) -> String {
    format!(
        "no query has a match in the gallery outside its own camera \
         ({nq} queries, {ng} gallery items)"
    )
}

/// One query's score from its distance row, refusing NaN distances.
fn score_row(
    i: usize,
    row: &[f32],
    query: Labels,
    gallery: &Identities,
) -> Result<Option<QueryScore>> {
    // A branch-free scan first: NaN is an error, so it is rare.
    if row.iter().fold(false, |nan, d| nan | d.is_nan()) {
        let j = row.iter().position(|d| d.is_nan()).unwrap_or_default();
        bail!("distance of query {i} to gallery item {j} is NaN");
    }
    Ok(score_query(row, query.pids[i], query.cams[i], gallery))
}

/// Gallery items by identity (with their cameras), so that a query finds its matches and
/// its ignored same-camera shots without scanning the gallery.
struct Identities {
    items: std::collections::HashMap<i64, Vec<(usize, i64)>>,
}

impl Identities {
    fn new(gallery: Labels) -> Self {
        let mut items: std::collections::HashMap<i64, Vec<(usize, i64)>> = Default::default();
        for (j, (&pid, &cam)) in gallery.pids.iter().zip(gallery.cams).enumerate() {
            items.entry(pid).or_default().push((j, cam));
        }
        Self { items }
    }

    fn of(&self, pid: i64) -> &[(usize, i64)] {
        self.items.get(&pid).map_or(&[], Vec::as_slice)
    }
}

/// mAP over the valid queries and the CMC curve up to `topk`.
fn summarise(scores: &[Option<QueryScore>], nq: usize, ng: usize, topk: usize) -> Result<Metrics> {
    let mut ap_sum = 0.0;
    let mut valid = 0usize;
    let mut first_at = vec![0usize; topk];
    for s in scores.iter().flatten() {
        ap_sum += s.ap;
        valid += 1;
        if let Some(c) = first_at.get_mut(s.first_match) {
            *c += 1;
        }
    }
    ensure!(valid > 0, no_valid_query(nq, ng));
    let cmc = first_at
        .iter()
        .scan(0usize, |acc, &c| {
            *acc += c;
            Some(*acc as f64 / valid as f64)
        })
        .collect();
    Ok(Metrics {
        map: ap_sum / valid as f64,
        cmc,
        valid_queries: valid,
        total_queries: nq,
    })
}

/// AP and first-match rank of one query, or `None` when it has no match to find.
///
/// Needs no sort of the gallery: only the P matches are sorted. What AP needs of the other
/// items is, per distinct match distance t, how many kept items lie at or below t; with
/// few matches (the usual case) that is one branch-free, vectorised count over the row per
/// t, otherwise each item is placed among the matches by binary search, O(G log P).
fn score_query(row: &[f32], pid: i64, cam: i64, gallery: &Identities) -> Option<QueryScore> {
    // Matches, and the ignored same-camera shots of the query's identity.
    let (mut positives, mut ignored) = (Vec::new(), Vec::new());
    for &(j, c) in gallery.of(pid) {
        if c == cam {
            ignored.push((row[j], j));
        } else {
            positives.push((row[j], j));
        }
    }
    // The first match in stable (distance, index) order; positives are in gallery order.
    // `<` and `==` (not `total_cmp`) throughout, so that -0.0 and 0.0 tie, as in numpy.
    let (first_d, first_j) =
        positives
            .iter()
            .copied()
            .reduce(|first, x| if x.0 < first.0 { x } else { first })?;
    let before = |&(d, j): &(f32, usize)| d < first_d || (d == first_d && j < first_j);
    let before_first = count(row, |d| d < first_d)
        + row[..first_j].iter().filter(|&&d| d == first_d).count()
        - ignored.iter().filter(|x| before(x)).count();

    // Distinct match distances (ascending), each with the number of matches up to it.
    positives.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups: Vec<(f32, usize)> = Vec::new();
    for (n, &(d, _)) in positives.iter().enumerate() {
        match groups.last_mut() {
            Some((t, tp)) if *t == d => *tp = n + 1,
            _ => groups.push((d, n + 1)),
        }
    }

    // Kept items at or below each group's distance.
    let retrieved: Vec<usize> = if groups.len() <= COUNTING_PASSES {
        groups
            .iter()
            .map(|&(t, _)| {
                count(row, |d| d <= t) - ignored.iter().filter(|&&(d, _)| d <= t).count()
            })
            .collect()
    } else {
        let mut bucket = vec![0usize; groups.len()];
        for &d in row {
            if let Some(b) = bucket.get_mut(groups.partition_point(|&(x, _)| x < d)) {
                *b += 1;
            }
        }
        for &(d, _) in &ignored {
            if let Some(b) = bucket.get_mut(groups.partition_point(|&(x, _)| x < d)) {
                *b -= 1;
            }
        }
        bucket
            .iter()
            .scan(0, |acc, &b| {
                *acc += b;
                Some(*acc)
            })
            .collect()
    };

    // sklearn: AP = Σ_t (R_t − R_{t−1}) · P_t over distinct thresholds; only thresholds
    // holding a match move recall, so the others can be left out.
    let total = positives.len() as f64;
    let mut prev_tp = 0usize;
    let mut ap = 0.0;
    for (&(_, tp), &r) in groups.iter().zip(&retrieved) {
        ap += (tp - prev_tp) as f64 / total * (tp as f64 / r as f64);
        prev_tp = tp;
    }
    Some(QueryScore {
        ap,
        first_match: before_first,
    })
}

/// Items of `row` for which `pred` holds, counted branch-free in 32-bit lanes (a row has
/// far fewer than 2³² items), which the compiler vectorises 16 wide.
#[inline]
fn count(row: &[f32], pred: impl Fn(f32) -> bool) -> usize {
    row.iter().map(|&d| pred(d) as u32).sum::<u32>() as usize
}

/// Up to this many distinct match distances, counting passes over the row beat a binary
/// search per item (they vectorise and never mispredict).
const COUNTING_PASSES: usize = 48;
