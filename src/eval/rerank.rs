//! k-reciprocal re-ranking (Zhong et al. 2017) as the reference applies it (docs/method.md §8).
//!
//! The reference builds dense (Q+G)² matrices: distances, a full argsort, the k-reciprocal
//! encodings `V` and their query expansion, then walks inverted lists for the Jaccard
//! distance. Every quantity it reads from them is local, so this module computes the same
//! numbers without any (Q+G)² matrix:
//!
//! * only the `max(k1 + 1, k2)` nearest neighbours of each item (and its row maximum) are
//!   kept, found by streaming GEMM blocks through a bounded selection;
//! * `V` and its query expansion are sparse (a few dozen non-zeros per row);
//! * the Jaccard distance is computed only for query rows × gallery columns.
//!
//! The reference scales its distances as `transpose(dist / max(dist, axis=0))`: for a
//! symmetric matrix that is each row divided by its own maximum, the one number per item
//! kept here.
//!
//! Gallery–gallery neighbours are computed once and shared by all query chunks: a gallery
//! item's nearest neighbours in a chunk's graph are the nearest of (its nearest gallery
//! items ∪ its nearest chunk queries), and its row maximum is the larger of the two maxima,
//! so sharing them changes nothing. Everything that depends on which queries are in the
//! graph (k-reciprocal sets, `V`, expansion) is recomputed per chunk, as the reference does.
//!
//! The reference keeps `V`, its expansion and the Jaccard sums in float16. Plain float32
//! moves re-ranked distances by up to ~2e-3, enough to swap near-tied gallery items and
//! change CMC, so this module rounds to float16 at the same steps (values stay `f32`); the
//! remaining differences come from GEMM rounding and argsort ties.

use super::distance::{half, half64, PairwiseRows, Side};
use crate::progress;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::ops::Range;
use tch::Tensor;

/// Queries per re-ranking graph in the reference's evaluation loop.
pub const REFERENCE_CHUNK: usize = 1024;

/// Gallery rows per GEMM strip when collecting gallery–gallery neighbours: large enough for
/// an efficient GEMM, small enough that a strip (rows × gallery) stays a few tens of MB.
const STRIP_ROWS: usize = 512;

/// Columns one rayon task scans when selecting per-column neighbours from a row-major
/// block: a few cache lines per row, so the column-wise walk stays cache-friendly.
const COLUMN_STRIPE: usize = 32;

/// Re-ranking parameters (the reference's defaults: k1 = 20, k2 = 6, λ = 0.3).
#[derive(Clone, Copy, Debug)]
pub struct RerankParams {
    /// Neighbourhood size of the k-reciprocal sets (k1/2, rounded half to even, for the
    /// expansion candidates).
    pub k1: usize,
    /// Neighbours averaged by the local query expansion (1 disables it).
    pub k2: usize,
    /// Weight of the original distance in the final one; `1 − lambda` weighs Jaccard.
    pub lambda: f64,
}

impl Default for RerankParams {
    fn default() -> Self {
        Self {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

/// Where each gallery item's nearest gallery items are selected: the one step whose input
/// is G² (MSMT17: 82,161² distances, 27 GB in float32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Distance strips copied to the host and scanned there, computing only the symmetric
    /// half of the gallery–gallery GEMM: fastest on the CPU, where the strips already are.
    Host,
    /// Each strip sorted where the features are, and only its nearest neighbours and row
    /// maximum copied to the host: on a GPU, copying every strip would cost more than the
    /// whole (full, not half) GEMM. The same neighbours as [`Selection::Host`]: a stable
    /// sort gives ties to the smaller index, as the host's selection does.
    Device,
}

impl Selection {
    /// [`Selection::Device`] for features on CUDA, [`Selection::Host`] otherwise.
    pub fn for_device(device: tch::Device) -> Self {
        if device.is_cuda() {
            Self::Device
        } else {
            Self::Host
        }
    }
}

/// Re-ranked Q×G distances (row-major f32) for raw features q (Q×D) and g (G×D), all
/// queries in one graph.
pub fn rerank(q: &Tensor, g: &Tensor, p: RerankParams) -> Result<Vec<f32>> {
    let nq = q.size().first().copied().unwrap_or(0).max(1) as usize;
    rerank_chunked(q, g, p, nq)
}

/// The reference's way: queries in chunks of `chunk` (1024), each chunk re-ranked against
/// the whole gallery.
///
/// Each chunk is its own graph of (chunk queries + all gallery items), so a query's
/// re-ranked distances depend on which other queries share its chunk; with `chunk ≥ Q`
/// this is [`rerank`]. Features may live on any device (the GEMMs run there) and be of any
/// floating kind; float64 features get float64 distances before the neighbour selection.
pub fn rerank_chunked(q: &Tensor, g: &Tensor, p: RerankParams, chunk: usize) -> Result<Vec<f32>> {
    rerank_selecting(q, g, p, chunk, Selection::for_device(q.device()))
}

/// [`rerank_chunked`] with the gallery neighbours selected as `selection` says (both run
/// on every device; the choice only moves where the work is done).
///
/// One function because it follows the k-reciprocal algorithm's steps in their published
/// order (docs/method.md §8), after checking its inputs, sharing their intermediate
/// matrices.
pub fn rerank_selecting(
    q: &Tensor,
    g: &Tensor,
    p: RerankParams,
    chunk: usize,
    selection: Selection,
) -> Result<Vec<f32>> {
    let _no_grad = tch::no_grad_guard();
    let (qs, gs) = (q.size(), g.size());
    ensure!(
        qs.len() == 2 && gs.len() == 2 && qs[1] == gs[1],
        "re-ranking needs Q×D query and G×D gallery features of the same width, \
         got query {qs:?} and gallery {gs:?}"
    );
    let (nq, ng, dim) = (qs[0] as usize, gs[0] as usize, qs[1] as usize);
    ensure!(
        nq > 0 && ng > 0,
        "re-ranking needs at least one query and one gallery item, got {nq} queries and \
         {ng} gallery items"
    );
    ensure!(dim > 0, "re-ranking needs features of width at least 1");
    ensure!(chunk > 0, "the query chunk size must be at least 1");
    ensure!(
        p.k1 > 0 && p.k2 > 0,
        "k1 and k2 must be at least 1, got k1 = {} and k2 = {}",
        p.k1,
        p.k2
    );
    ensure!(
        p.lambda.is_finite() && (0.0..=1.0).contains(&p.lambda),
        "lambda must be within [0, 1], got {}",
        p.lambda
    );
    let chunk = chunk.min(nq);
    // The smallest graph is the last chunk's; k1 and k2 must fit in every graph.
    let last_chunk = nq - (nq - 1) / chunk * chunk;
    let smallest = last_chunk + ng;
    ensure!(
        p.k1 <= smallest && p.k2 <= smallest,
        "k1 = {} and k2 = {} must not exceed the {smallest} items of the smallest re-ranking \
         graph ({last_chunk} queries + {ng} gallery items)",
        p.k1,
        p.k2
    );
    ensure!(
        nq + ng <= u32::MAX as usize,
        "too many items to re-rank: {}",
        nq + ng
    );

    let (qw, gw) = super::distance::working_precision(q, g)?;
    for (x, side) in [(&qw, "query"), (&gw, "gallery")] {
        let finite = x.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
        ensure!(finite, "{side} features contain NaN or infinite values");
    }
    let qside = Side::new(&qw)?;
    let gside = Side::new(&gw)?;
    let feats = PairwiseRows::new(&qw, &gw, dim)?;
    let list_len = (p.k1 + 1).max(p.k2);

    let strips = ng.div_ceil(STRIP_ROWS);
    let chunks = nq.div_ceil(chunk);
    let bar = progress::bar((strips + chunks) as u64, "re-ranking");

    let gallery = match selection {
        Selection::Host => gallery_neighbours(&gside, list_len, &bar)?,
        Selection::Device => gallery_neighbours_on_device(&gside, list_len, &bar)?,
    };
    let mut out = vec![0f32; nq * ng];
    for (ci, rows) in out.chunks_mut(chunk * ng).enumerate() {
        let start = ci * chunk;
        let queries = start..start + rows.len() / ng;
        rerank_chunk(&qside, &gside, &feats, &gallery, queries, rows, p)
            .with_context(|| format!("re-ranking query chunk {}", ci + 1))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `(distance, index)` order: ties go to the smaller index, so selections are deterministic
/// whatever order candidates arrive in.
fn closer(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The `cap` nearest candidates seen so far, ascending, plus the largest distance seen.
#[derive(Clone)]
struct Nearest {
    items: Vec<(f32, u32)>,
    cap: usize,
    max: f32,
}

impl Nearest {
    fn new(cap: usize) -> Self {
        Self {
            items: Vec::with_capacity(cap + 1),
            cap,
            max: f32::NEG_INFINITY,
        }
    }

    #[inline]
    fn push(&mut self, d: f32, i: u32) {
        if d > self.max {
            self.max = d;
        }
        if self.items.len() == self.cap {
            if !closer((d, i), self.items[self.cap - 1]) {
                return;
            }
            self.items.pop();
        }
        let at = self.items.partition_point(|&e| closer(e, (d, i)));
        self.items.insert(at, (d, i));
    }

    /// Every distance of one row, item `j` being `first + j`.
    fn scan_row(&mut self, row: &[f32], first: u32) {
        for (j, &d) in row.iter().enumerate() {
            self.push(d, first + j as u32);
        }
    }
}

/// Offers columns `skip..` of a row-major `width`-wide block to those columns' selections
/// (`columns[0]` is column `skip`), row `r` being item `first + r`.
fn scan_columns(block: &[f32], width: usize, skip: usize, first: u32, columns: &mut [Nearest]) {
    columns
        .par_chunks_mut(COLUMN_STRIPE)
        .enumerate()
        .for_each(|(s, stripe)| {
            let c0 = skip + s * COLUMN_STRIPE;
            let c1 = c0 + stripe.len();
            for (r, row) in block.chunks_exact(width).enumerate() {
                for (top, &d) in stripe.iter_mut().zip(&row[c0..c1]) {
                    top.push(d, first + r as u32);
                }
            }
        });
}

/// Each gallery item's nearest gallery items and largest gallery distance.
///
/// The gallery–gallery matrix is symmetric, so each strip of rows is multiplied only with
/// itself and the rows after it, and its block feeds both the strip's rows and (read down
/// the columns) the later rows: half the GEMM work of the full matrix.
fn gallery_neighbours(g: &Side, cap: usize, bar: &indicatif::ProgressBar) -> Result<Vec<Nearest>> {
    let ng = g.x.size()[0] as usize;
    let cap = cap.min(ng);
    let mut tops = vec![Nearest::new(cap); ng];
    let mut block = Vec::new();
    for s0 in (0..ng).step_by(STRIP_ROWS) {
        let s1 = (s0 + STRIP_ROWS).min(ng);
        let width = ng - s0;
        block.resize((s1 - s0) * width, 0f32);
        g.distances(s0..s1, g, s0..ng, &mut block)?;
        let (before, rest) = tops.split_at_mut(s1);
        before[s0..s1]
            .par_iter_mut()
            .zip(block.par_chunks(width))
            .for_each(|(top, row)| top.scan_row(row, s0 as u32));
        if s1 < ng {
            // Columns right of the strip's own square: rows s1.. see the strip's rows.
            scan_columns(&block, width, s1 - s0, s0 as u32, rest);
        }
        bar.inc(1);
    }
    Ok(tops)
}

/// [`gallery_neighbours`] selected on the features' device: each strip of rows against the
/// whole gallery, stably sorted there; only the `cap` nearest and the row maxima come back.
fn gallery_neighbours_on_device(
    g: &Side,
    cap: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Nearest>> {
    let ng = g.x.size()[0] as usize;
    let cap = cap.min(ng);
    let mut tops = Vec::with_capacity(ng);
    for s0 in (0..ng).step_by(STRIP_ROWS) {
        let s1 = (s0 + STRIP_ROWS).min(ng);
        let block = g.block(s0..s1, g, 0..ng)?;
        let (sorted, order) = block.f_sort_stable(true, 1, false)?;
        let host = |t: Tensor| t.f_narrow(1, 0, cap as i64)?.f_to_device(tch::Device::Cpu);
        let dist = Vec::<f32>::try_from(host(sorted)?.f_reshape([-1])?)?;
        let index = Vec::<i64>::try_from(host(order)?.f_reshape([-1])?)?;
        let max = Vec::<f32>::try_from(
            block
                .f_amax([1i64].as_slice(), false)?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        for (r, row_max) in max.into_iter().enumerate() {
            let row = r * cap..(r + 1) * cap;
            tops.push(Nearest {
                items: dist[row.clone()]
                    .iter()
                    .zip(&index[row])
                    .map(|(&d, &i)| (d, i as u32))
                    .collect(),
                cap,
                max: row_max,
            });
        }
        bar.inc(1);
    }
    Ok(tops)
}

/// Round half to even, as numpy's `around` rounds k1/2.
fn half_rounded(k: usize) -> usize {
    let h = k / 2;
    if k % 2 == 1 && h % 2 == 1 {
        h + 1
    } else {
        h
    }
}

/// One re-ranking graph: the chunk's queries (items 0..c) and the gallery (items c..).
struct Graph<'a> {
    feats: &'a PairwiseRows,
    /// First query of the chunk (global numbering).
    start: usize,
    c: usize,
    /// Each item's neighbours, ascending: `len` per item.
    nbr: Vec<u32>,
    dist: Vec<f32>,
    len: usize,
    /// Each item's largest distance in the graph (the reference's row scaling).
    max: Vec<f32>,
}

impl Graph<'_> {
    fn items(&self) -> usize {
        self.max.len()
    }

    fn neighbours(&self, i: usize, k: usize) -> &[u32] {
        &self.nbr[i * self.len..i * self.len + k.min(self.len)]
    }

    fn global(&self, i: usize) -> usize {
        if i < self.c {
            self.start + i
        } else {
            self.feats.nq + (i - self.c)
        }
    }

    /// The reference's scaled distance of item `i` to item `x`.
    fn scaled(&self, i: usize, x: usize) -> f32 {
        let row = i * self.len..(i + 1) * self.len;
        let d = match self.nbr[row.clone()].iter().position(|&n| n as usize == x) {
            Some(at) => self.dist[row.start + at],
            None => self.feats.distance(self.global(i), self.global(x)),
        };
        d / scale(self.max[i])
    }

    /// Items among the first `k` neighbours of `i` that have `i` among their first `k`.
    fn reciprocal(&self, i: usize, k: usize) -> Vec<u32> {
        self.neighbours(i, k)
            .iter()
            .copied()
            .filter(|&f| self.neighbours(f as usize, k).contains(&(i as u32)))
            .collect()
    }
}

/// A row maximum usable as a divisor: a graph whose items all coincide (maximum ≤ 0) is
/// left unscaled instead of producing NaN.
fn scale(max: f32) -> f32 {
    if max > 0.0 {
        max
    } else {
        1.0
    }
}

/// Sparse row: (item, value), ascending items.
type SparseRow = Vec<(u32, f32)>;

/// Re-ranks queries `queries` against the whole gallery, writing their rows of the result.
fn rerank_chunk(
    qside: &Side,
    gside: &Side,
    feats: &PairwiseRows,
    gallery: &[Nearest],
    queries: Range<usize>,
    out: &mut [f32],
    p: RerankParams,
) -> Result<()> {
    let (c, ng) = (queries.len(), gallery.len());
    let n = c + ng;
    let len = (p.k1 + 1).max(p.k2).min(n);

    // Query rows: distances to the gallery land directly in `out`, to the chunk aside.
    qside.distances(queries.clone(), gside, 0..ng, out)?;
    let mut qq = vec![0f32; c * c];
    qside.distances(queries.clone(), qside, queries.clone(), &mut qq)?;
    let query_tops: Vec<Nearest> = out
        .par_chunks(ng)
        .zip(qq.par_chunks(c))
        .map(|(to_gallery, to_chunk)| {
            let mut top = Nearest::new(len);
            top.scan_row(to_chunk, 0);
            top.scan_row(to_gallery, c as u32);
            top
        })
        .collect();
    drop(qq);

    // Gallery rows: their nearest chunk queries, merged with their nearest gallery items.
    let mut from_queries = vec![Nearest::new(len.min(c)); ng];
    scan_columns(out, ng, 0, 0, &mut from_queries);
    let gallery_tops: Vec<Nearest> = from_queries
        .into_par_iter()
        .zip(gallery.par_iter())
        .map(|(mut top, shared)| {
            top.cap = len;
            for &(d, j) in &shared.items {
                top.push(d, c as u32 + j);
            }
            top.max = top.max.max(shared.max);
            top
        })
        .collect();

    let mut graph = Graph {
        feats,
        start: queries.start,
        c,
        nbr: Vec::with_capacity(n * len),
        dist: Vec::with_capacity(n * len),
        len,
        max: Vec::with_capacity(n),
    };
    for top in query_tops.iter().chain(&gallery_tops) {
        if top.items.len() != len {
            bail!(
                "neighbour selection kept {} of {len} items",
                top.items.len()
            );
        }
        graph.nbr.extend(top.items.iter().map(|&(_, i)| i));
        graph.dist.extend(top.items.iter().map(|&(d, _)| d));
        graph.max.push(top.max);
    }
    drop((query_tops, gallery_tops));

    let v = encodings(&graph, p.k1);
    let v = expand(&graph, &v, p.k2);
    jaccard_into(&graph, &v, out, p.lambda);
    Ok(())
}

/// The k-reciprocal encodings `V`: each item's k-reciprocal set, grown by the sets of its
/// members that mostly agree with it, weighted by exp(−scaled distance), normalised.
fn encodings(graph: &Graph, k1: usize) -> Vec<SparseRow> {
    let n = graph.items();
    let half = half_rounded(k1) + 1;
    let halves: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| graph.reciprocal(i, half))
        .collect();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let recip = graph.reciprocal(i, k1 + 1);
            let mut set = recip.clone();
            for &cand in &recip {
                let theirs = &halves[cand as usize];
                let shared = theirs.iter().filter(|x| recip.contains(x)).count();
                // The reference's float comparison `len(∩) > 2/3 * len(candidate set)`.
                if shared as f64 > 2.0 / 3.0 * theirs.len() as f64 {
                    set.extend_from_slice(theirs);
                }
            }
            set.sort_unstable();
            set.dedup();
            let weights: Vec<f64> = set
                .iter()
                .map(|&x| (-graph.scaled(i, x as usize) as f64).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            set.into_iter()
                .zip(weights)
                .map(|(x, w)| (x, half64(w / total)))
                .collect()
        })
        .collect()
}

/// Local query expansion: each row becomes the mean of the rows of its `k2` nearest items
/// (itself included); `k2 = 1` leaves `V` as it is, as in the reference.
fn expand(graph: &Graph, v: &[SparseRow], k2: usize) -> Vec<SparseRow> {
    if k2 == 1 {
        return v.to_vec();
    }
    (0..graph.items())
        .into_par_iter()
        .map(|i| {
            let rows = graph.neighbours(i, k2);
            let mut all: Vec<(u32, f32)> = rows
                .iter()
                .flat_map(|&r| v[r as usize].iter().copied())
                .collect();
            // Stable: equal items keep the neighbours' order, the reference's summation order.
            all.sort_by_key(|&(x, _)| x);
            let mut merged: SparseRow = Vec::with_capacity(all.len());
            for (x, w) in all {
                match merged.last_mut() {
                    Some((y, s)) if *y == x => *s += w,
                    _ => merged.push((x, w)),
                }
            }
            // numpy's float16 mean: a float32 sum and quotient, rounded to float16.
            let count = rows.len() as f32;
            for (_, s) in &mut merged {
                *s = half(*s / count);
            }
            merged
        })
        .collect()
}

/// Final distances of the chunk's queries to the gallery, in place over their original
/// (unscaled) distances in `out`: (1 − λ)·Jaccard + λ·scaled original.
///
/// Jaccard of two encodings is Σmin / Σmax = m / (2 − m) with m = Σmin, since every row
/// sums to 1; m is gathered through inverted lists of the gallery rows, so only the pairs
/// that share a non-zero column are ever touched.
fn jaccard_into(graph: &Graph, v: &[SparseRow], out: &mut [f32], lambda: f64) {
    let (c, n) = (graph.c, graph.items());
    let jaccard_weight = half64(1.0 - lambda);
    let lambda = lambda as f32;
    let ng = n - c;
    // Inverted lists (CSR) over all columns, holding gallery rows only.
    let mut offsets = vec![0usize; n + 1];
    for row in &v[c..] {
        for &(x, _) in row {
            offsets[x as usize + 1] += 1;
        }
    }
    for x in 0..n {
        offsets[x + 1] += offsets[x];
    }
    let mut fill = offsets.clone();
    let mut entries = vec![(0u32, 0f32); offsets[n]];
    for (j, row) in v[c..].iter().enumerate() {
        for &(x, w) in row {
            entries[fill[x as usize]] = (j as u32, w);
            fill[x as usize] += 1;
        }
    }

    out.par_chunks_mut(ng)
        .zip(&v[..c])
        .enumerate()
        .for_each_init(
            || vec![0f32; ng],
            |acc, (i, (row, enc))| {
                acc.fill(0.0);
                for &(x, w) in enc {
                    let x = x as usize;
                    for &(j, u) in &entries[offsets[x]..offsets[x + 1]] {
                        let a = &mut acc[j as usize];
                        *a = half(*a + w.min(u));
                    }
                }
                let s = scale(graph.max[i]);
                for (d, &m) in row.iter_mut().zip(acc.iter()) {
                    // Every step in float16, as numpy evaluates `1 - m / (2 - m)` and its
                    // product with the (float16-converted) weight `1 − λ`.
                    let jaccard = half(1.0 - half(m / half(2.0 - m)));
                    *d = half(jaccard * jaccard_weight) + lambda * (*d / s);
                }
            },
        );
}
