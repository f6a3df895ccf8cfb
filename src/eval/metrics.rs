//! mAP and CMC of a query × gallery distance matrix, with the reference protocol (SPEC §8).
//!
//! Per query, gallery items sharing both its identity and its camera are dropped (they are
//! the same shot seen again, not a retrieval); a query with no remaining match is skipped.
//! AP is scikit-learn's `average_precision_score(y_true, -distance)`: tied distances form
//! one threshold, so a match tied with non-matches is credited with the precision of the
//! whole tied group. CMC is open-reid's "first match" curve (`first_match_break=True`,
//! `single_gallery_shot=False`), with ties broken by gallery index (a stable sort).

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::cmp::Ordering;
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

impl Labels<'_> {
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
    let nq = query.len("query")?;
    let ng = gallery.len("gallery")?;
    let expected = nq
        .checked_mul(ng)
        .with_context(|| format!("{nq} queries × {ng} gallery items overflows"))?;
    ensure!(
        dist.len() == expected,
        "distance matrix has {} entries, expected {nq} queries × {ng} gallery items = {expected}",
        dist.len()
    );
    let no_valid = || {
        anyhow::anyhow!(
            "no query has a match in the gallery outside its own camera \
             ({nq} queries, {ng} gallery items)"
        )
    };
    if nq == 0 || ng == 0 {
        return Err(no_valid());
    }

    let scores: Vec<Option<QueryScore>> = dist
        .par_chunks(ng)
        .zip(query.pids.par_iter().zip(query.cams.par_iter()))
        .enumerate()
        .map(|(i, (row, (&pid, &cam)))| {
            if let Some(j) = row.iter().position(|d| d.is_nan()) {
                bail!("distance of query {i} to gallery item {j} is NaN");
            }
            Ok(score_query(row, pid, cam, gallery))
        })
        .collect::<Result<_>>()?;

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
    if valid == 0 {
        return Err(no_valid());
    }
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
/// Needs no sort of the gallery: only the P match distances are sorted, and each kept
/// item is placed among them by binary search, O(G log P).
fn score_query(row: &[f32], pid: i64, cam: i64, gallery: Labels) -> Option<QueryScore> {
    let kept = |j: usize| gallery.pids[j] != pid || gallery.cams[j] != cam;

    // Matches, and the first one in stable (distance, index) order.
    let mut positives = Vec::new();
    let mut first: Option<(f32, usize)> = None;
    for (j, &d) in row.iter().enumerate() {
        if gallery.pids[j] == pid && kept(j) {
            positives.push(d);
            if first.is_none_or(|(fd, _)| d < fd) {
                first = Some((d, j));
            }
        }
    }
    let (first_d, first_j) = first?;

    // Distinct match distances (ascending), each with the number of matches up to it.
    positives.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    let mut groups: Vec<(f32, usize)> = Vec::new();
    for (n, &d) in positives.iter().enumerate() {
        match groups.last_mut() {
            // `==` (not bit equality) so that -0.0 and 0.0 tie, as in numpy.
            Some((t, tp)) if *t == d => *tp = n + 1,
            _ => groups.push((d, n + 1)),
        }
    }

    // Kept items per group (distance in (previous, this]), and items ranked before the
    // first match: strictly closer, or tied with it but earlier in the gallery.
    let mut bucket = vec![0usize; groups.len()];
    let mut before_first = 0usize;
    for (j, &d) in row.iter().enumerate() {
        if !kept(j) {
            continue;
        }
        let t = groups.partition_point(|&(x, _)| x < d);
        if let Some(b) = bucket.get_mut(t) {
            *b += 1;
        }
        if d < first_d || (d == first_d && j < first_j) {
            before_first += 1;
        }
    }

    // sklearn: AP = Σ_t (R_t − R_{t−1}) · P_t over distinct thresholds; only thresholds
    // holding a match move recall, so the others can be left out.
    let total = positives.len() as f64;
    let mut retrieved = 0usize;
    let mut prev_tp = 0usize;
    let mut ap = 0.0;
    for (&(_, tp), &b) in groups.iter().zip(&bucket) {
        retrieved += b;
        ap += (tp - prev_tp) as f64 / total * (tp as f64 / retrieved as f64);
        prev_tp = tp;
    }
    Some(QueryScore {
        ap,
        first_match: before_first,
    })
}

/// Distance between features, as the reference's `pairwise_distance` computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `1 / (1 + cos)` of L2-normalised features: the reference's cosine ranking distance
    /// (monotone in 1 − cos, in [0.5, ∞)).
    Cosine,
    /// `sqrt(max(‖x‖² + ‖y‖² − 2x·y, 1e-12))`, the reference's `euclidean_dist`.
    Euclidean,
}

/// Q×G distances (f32, CPU, contiguous) of Q×D query and G×D gallery features on any
/// device.
///
/// # Panics
/// On features that are not two matrices of the same width, like tch's own operations;
/// [`f_distances`] returns the error instead.
pub fn distances(query: &Tensor, gallery: &Tensor, kind: Distance) -> Tensor {
    f_distances(query, gallery, kind).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`distances`], with bad input as an error.
///
/// Computes in float64 when either side is float64 (the golden values are float64), else
/// in float32 as the reference does. Normalisation divides by `max(‖x‖, 1e-12)` so a zero
/// feature is at distance 1 from everything instead of NaN; any other feature gets the
/// reference's value. Cosines rounded below −1 are clamped: the reference's `1 / (1 + cos)`
/// would turn them into large negative distances and rank opposite features first.
pub fn f_distances(query: &Tensor, gallery: &Tensor, kind: Distance) -> Result<Tensor> {
    let (qs, gs) = (query.size(), gallery.size());
    ensure!(
        qs.len() == 2 && gs.len() == 2 && qs[1] == gs[1],
        "features must be Q×D and G×D matrices of the same width, got query {qs:?} and gallery {gs:?}"
    );
    let work = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let q = query.f_to_kind(work)?;
    let g = gallery.f_to_device(q.device())?.f_to_kind(work)?;
    let d = match kind {
        Distance::Cosine => {
            let unit = |x: &Tensor| -> Result<Tensor> {
                let norm = x
                    .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
                    .f_clamp_min(1e-12)?;
                Ok(x.f_div(&norm)?)
            };
            let cos = unit(&q)?.f_mm(&unit(&g)?.f_tr()?)?;
            cos.f_clamp_min(-1.0)?.f_add_scalar(1.0)?.f_reciprocal()?
        }
        Distance::Euclidean => {
            let qq = q
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), true, work)?;
            let gg = g
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), true, work)?
                .f_tr()?;
            let cross = q.f_mm(&g.f_tr()?)?;
            qq.f_add(&gg)?
                .f_sub(&cross.f_mul_scalar(2.0)?)?
                .f_clamp_min(1e-12)?
                .f_sqrt()?
        }
    };
    Ok(d.f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?)
}

/// [`f_distances`] as the row-major Q×G slice that [`evaluate`] takes.
pub fn distance_matrix(query: &Tensor, gallery: &Tensor, kind: Distance) -> Result<Vec<f32>> {
    let d = f_distances(query, gallery, kind)?;
    Vec::<f32>::try_from(d.f_reshape([-1])?).context("reading the distance matrix")
}
