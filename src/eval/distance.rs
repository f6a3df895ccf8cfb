//! Every distance of evaluation in one place: the reference's cosine and Euclidean
//! ranking distances (whole matrices through libtorch, or block by block from the GEMM
//! kernel of the `gemm` crate for streamed scoring), re-ranking's squared distances and
//! their float16 arithmetic. Numerics follow the reference's numpy/torch calls; the
//! fixtures in tests/fixtures pin them.

use crate::tensor::unit_rows;
use anyhow::{ensure, Context, Result};
use half::f16;
use rayon::prelude::*;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// Distance between features, as the reference's `pairwise_distance` computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `1 / (1 + cos)` of L2-normalised features: the reference's cosine ranking distance
    /// (monotone in 1 − cos, in [0.5, ∞)).
    Cosine,
    /// `sqrt(max(‖x‖² + ‖y‖² − 2x·y, 1e-12))`, the reference's `euclidean_dist`.
    Euclidean,
}

impl Distance {
    /// The distance from a dot product `dot` (of unit rows for the cosine) and the two
    /// squared norms (unused by the cosine), with the float32 operations, in the order, of
    /// [`f_distances`].
    /// NaN stays NaN (`f32::max` would hide it; `clamp_min` does not).
    #[inline]
    pub(crate) fn of_dot(self, dot: f32, x_sq: f32, y_sq: f32) -> f32 {
        if dot.is_nan() {
            return f32::NAN;
        }
        match self {
            Distance::Cosine => 1.0 / (dot.max(-1.0) + 1.0),
            Distance::Euclidean => {
                let d = x_sq + y_sq - dot * 2.0;
                if d.is_nan() {
                    d
                } else {
                    d.max(1e-12).sqrt()
                }
            }
        }
    }
}

/// The common width D of Q×D query and G×D gallery features.
pub(crate) fn feature_width(query: &Tensor, gallery: &Tensor) -> Result<usize> {
    let (qs, gs) = (query.size(), gallery.size());
    ensure!(
        qs.len() == 2 && gs.len() == 2 && qs[1] == gs[1],
        "features must be Q×D and G×D matrices of the same width, got query {qs:?} and gallery {gs:?}"
    );
    Ok(qs[1] as usize)
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

/// Query and gallery features in the precision distances are computed in (float64 when
/// either is, else float32), the gallery on the query's device.
pub fn working_precision(query: &Tensor, gallery: &Tensor) -> Result<(Tensor, Tensor)> {
    let work = if query.kind() == Kind::Double || gallery.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let q = query.f_to_kind(work)?;
    let g = gallery.f_to_device(q.device())?.f_to_kind(work)?;
    Ok((q, g))
}

/// [`distances`], with bad input as an error.
///
/// Computes in float64 when either side is float64 (the golden values are float64), else
/// in float32 as the reference does. Normalisation divides by `max(‖x‖, 1e-12)` so a zero
/// feature is at distance 1 from everything instead of NaN; any other feature gets the
/// reference's value. Cosines rounded below −1 are clamped: the reference's `1 / (1 + cos)`
/// would turn them into large negative distances and rank opposite features first.
pub fn f_distances(query: &Tensor, gallery: &Tensor, kind: Distance) -> Result<Tensor> {
    feature_width(query, gallery)?;
    let (q, g) = working_precision(query, gallery)?;
    let work = q.kind();
    let d = match kind {
        Distance::Cosine => {
            let cos = unit_rows(&q)?.f_mm(&unit_rows(&g)?.f_tr()?)?;
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

/// Features as the GEMM reads them: row-major float32 (unit rows for the cosine), with
/// each row's squared norm for the Euclidean distance (empty for the cosine).
pub(crate) struct Operand {
    pub(crate) data: Vec<f32>,
    pub(crate) sq: Vec<f32>,
}

impl Operand {
    pub(crate) fn new(x: &Tensor, kind: Distance) -> Result<Self> {
        let x = x.f_to_kind(Kind::Float)?.f_contiguous()?;
        let dim = x.size()[1] as usize;
        let n = x.numel();
        if n == 0 {
            return Ok(Self {
                data: Vec::new(),
                sq: vec![0.0; x.size()[0] as usize],
            });
        }
        // SAFETY: `x` is a contiguous float32 CPU tensor of `n` elements, alive and not
        // written to while `src` is used below.
        let src = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, n) };
        let mut data = vec![0f32; n];
        let sq = match kind {
            Distance::Cosine => {
                // [`unit_rows`], copying on rayon's threads: the norm accumulated in
                // float64 and rounded, then a float32 division.
                data.par_chunks_mut(dim)
                    .zip(src.par_chunks(dim))
                    .for_each(|(row, x)| {
                        let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                        let norm = (norm as f32).max(1e-12);
                        row.iter_mut().zip(x).for_each(|(r, &v)| *r = v / norm);
                    });
                Vec::new()
            }
            Distance::Euclidean => {
                data.copy_from_slice(src);
                Vec::<f32>::try_from(x.f_square()?.f_sum_dim_intlist(
                    [1i64].as_slice(),
                    false,
                    Kind::Float,
                )?)?
            }
        };
        Ok(Self { data, sq })
    }
}

/// `out` (m × n, row-major) = `a` (m × D) · `b` (n × D)ᵀ, on all of rayon's threads.
pub(crate) fn similarities(a: &[f32], m: usize, b: &[f32], n: usize, dim: usize, out: &mut [f32]) {
    assert!(out.len() == m * n && a.len() == m * dim && b.len() == n * dim);
    // SAFETY: the three slices hold exactly the m×D, n×D and m×n elements the strides
    // below address (checked above), and `out` is borrowed mutably, so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            dim as isize,
            b.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// One side's features in the working kind, on their device, prepared for distance blocks.
pub(crate) struct Side {
    pub(crate) x: Tensor,
    /// Squared norms as an N×1 column.
    sq: Tensor,
}

/// Rows per GEMM when filling a distance block, so that torch's temporaries stay a few
/// tens of MB whatever the block's height.
const GEMM_ROWS: usize = 256;

impl Side {
    pub(crate) fn new(x: &Tensor) -> Result<Self> {
        let kind = x.kind();
        Ok(Self {
            x: x.shallow_clone(),
            sq: x
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), true, kind)?,
        })
    }

    /// Squared Euclidean distances of rows `a` of `self` to rows `b` of `other`, as the
    /// reference computes them (‖x‖² + ‖y‖² − 2x·y with one `addmm`, unclamped), into
    /// `out` (row-major f32).
    pub(crate) fn distances(
        &self,
        a: Range<usize>,
        other: &Side,
        b: Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        for (r, rows) in out[..a.len() * b.len()]
            .chunks_mut(GEMM_ROWS * b.len())
            .enumerate()
        {
            let a0 = a.start + r * GEMM_ROWS;
            self.block(a0..a0 + rows.len() / b.len(), other, b.clone())?
                .f_to_device(Device::Cpu)?
                .f_copy_data(rows, rows.len())?;
        }
        Ok(())
    }

    /// [`Side::distances`] as a float32 tensor on the features' device, in one GEMM.
    pub(crate) fn block(&self, a: Range<usize>, other: &Side, b: Range<usize>) -> Result<Tensor> {
        let (b0, bl) = (b.start as i64, b.len() as i64);
        let xb = other.x.f_narrow(0, b0, bl)?.f_tr()?;
        let sqb = other.sq.f_narrow(0, b0, bl)?.f_tr()?;
        let (a0, al) = (a.start as i64, a.len() as i64);
        // −2·x is exact, so this is the reference's `addmm_(1, −2, x, yᵀ)`.
        let xa = self.x.f_narrow(0, a0, al)?.f_mul_scalar(-2.0)?;
        let mut base = self.sq.f_narrow(0, a0, al)?.f_add(&sqb)?;
        Ok(base.f_addmm_(&xa, &xb)?.f_to_kind(Kind::Float)?)
    }
}

/// Query then gallery features as float32 on the CPU, for the few distances outside the
/// neighbour lists that the k-reciprocal weights need.
pub(crate) struct PairwiseRows {
    data: Vec<f32>,
    sq: Vec<f32>,
    dim: usize,
    /// Number of queries: gallery item `j` is row `nq + j`.
    pub(crate) nq: usize,
}

impl PairwiseRows {
    pub(crate) fn new(q: &Tensor, g: &Tensor, dim: usize) -> Result<Self> {
        let nq = q.size()[0] as usize;
        let mut data = vec![0f32; (nq + g.size()[0] as usize) * dim];
        let (qd, gd) = data.split_at_mut(nq * dim);
        for (x, dst) in [(q, qd), (g, gd)] {
            // A no-op conversion for CPU float32 features: copied straight into `data`.
            let x = x.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
            x.f_copy_data(dst, dst.len())?;
        }
        let sq = data.par_chunks(dim).map(|r| dot(r, r)).collect::<Vec<_>>();
        Ok(Self { data, sq, dim, nq })
    }

    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Squared distance of rows `a` and `b` (global numbering), in the reference's order of
    /// operations.
    pub(crate) fn distance(&self, a: usize, b: usize) -> f32 {
        (self.sq[a] + self.sq[b]) + -2.0 * dot(self.row(a), self.row(b))
    }
}

/// f32 dot product with independent lane accumulators, so the compiler vectorises it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `x` rounded to the nearest float16 value (ties to even), kept as f32: the reference's
/// float16 storage and arithmetic.
pub(crate) fn half(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// [`half`] straight from f64 with a single rounding, as numpy's float64 → float16 cast.
/// Not `f16::from_f64`: it drops the low 32 mantissa bits first (or goes through f32 with
/// F16C), so near-ties round wrong. Rounding to f32 *to odd* first is exact here: f32
/// keeps 13 more bits than f16, so the odd last bit only breaks exact-looking ties.
pub(crate) fn half64(x: f64) -> f32 {
    let y = x as f32;
    let to_odd = if y as f64 == x || y.to_bits() & 1 == 1 {
        y
    } else if (y as f64).abs() > x.abs() {
        f32::from_bits(y.to_bits() - 1)
    } else {
        f32::from_bits(y.to_bits() + 1)
    };
    half(to_odd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half64_rounds_once_from_f64() {
        let tie = 1.0 + 2f64.powi(-11);
        assert_eq!(half64(tie), 1.0, "a tie goes to even");
        // Just above the tie by less than f32 resolves: rounds up (`f16::from_f64` does not).
        assert_eq!(half64(tie + 2f64.powi(-40)), 1.0 + 2f32.powi(-10));
        assert_eq!(half64(tie - 2f64.powi(-40)), 1.0);
        assert_eq!(half(1.0 + 2f32.powi(-11)), 1.0);
    }
}
