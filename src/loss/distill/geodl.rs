//! GeoDL (docs/method.md §4, the reference's `GFK` in `reid/loss/distillation.py`): the student's
//! embeddings are pulled towards the teacher's along the geodesic flow between the two
//! batches' PCA subspaces, as in GeoDL (Simon et al., "On Learning the Geodesic Path for
//! Incremental Learning", CVPR 2021), which builds on the geodesic flow kernel (Gong et al.,
//! CVPR 2012).
//!
//! With a = L2-normalise(f_S), b = L2-normalise(f_T) (B × D):
//! 1. P_s = the first B − 2 left singular vectors of aᵀ, each sample (column) centred; padded
//!    with 60 columns R of an orthonormal basis of the null space of P_sᵀ. P_t likewise from
//!    b, without padding.
//! 2. HOGSVD of the pair (A, Bm) = (P_sᵀP_t, Rᵀ P_t): S = (M₀ M₁⁻¹ + M₁ M₀⁻¹)/2 with
//!    M = XᵀX and the "inverse" Z·Z of a one-iteration Newton–Schulz inverse square root Z
//!    (the reference's approximation, kept: it is what its numbers are), V = the left singular
//!    vectors of S, then V₁ = AV and V₂ = −BmV with their columns scaled to unit norm; Γ = the
//!    column norms of AV.
//! 3. θ = acos(clamp(Γ, −1, 1)) and the reference's block formula
//!    G = P_s [V₁ 0; 0 V₂] [B₁ B₂; B₂ B₄] [V₁ 0; 0 V₂]ᵀ P_sᵀ, with the diagonal blocks
//!    B₁ = ½(1 + sin 2θ/(2θ + ε)), B₂ = ½(cos 2θ − 1)/(2θ + ε), B₄ = ½(1 − sin 2θ/(2θ + ε)),
//!    ε = 1e-12.
//! 4. loss = mean_i (a_i − b_i)ᵀ G (a_i − b_i), with G detached (the reference computes it
//!    under `.detach()`): gradients reach the student through a only.
//!
//! G is never formed: with W = P_s [V₁ 0; 0 V₂] = [W₁ W₂] (D × 2(B−2)) it is W M Wᵀ, so the
//! quadratic form is that of the small middle matrix on (qW₁, qW₂) — the same number, without
//! a D × D matrix per step.

use crate::tensor::unit_rows;
use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// Columns of the null-space basis that pad the student's PCA subspace (the reference's
/// `num_nullspacedim`).
pub const NULL_SPACE_COLUMNS: i64 = 60;

/// The reference keeps B − 2 principal directions of each batch.
const DROPPED_DIRECTIONS: i64 = 2;

/// Newton–Schulz iterations of the reference's inverse square root.
const NEWTON_SCHULZ_ITERATIONS: usize = 1;

/// The unweighted GeoDL loss of the student's embeddings `student` (B × D) against the
/// teacher's `teacher` (detached). `basis`: the null-space basis to pad the student's PCA
/// subspace with; `None` computes one ([`null_space_basis`]).
pub(super) fn geodl(student: &Tensor, teacher: &Tensor, basis: Option<&Tensor>) -> Result<Tensor> {
    let (batch, width) = (student.size()[0], student.size()[1]);
    let directions = batch - DROPPED_DIRECTIONS;
    ensure!(
        directions >= 1,
        "GeoDL distillation keeps B − 2 principal directions of the batch, so it needs at least \
         3 samples; got {batch}"
    );
    ensure!(
        width >= directions + NULL_SPACE_COLUMNS,
        "GeoDL distillation needs embeddings of at least B + {} = {} dimensions for a batch of \
         B = {batch} (a PCA subspace of B − 2 = {directions} directions padded with \
         {NULL_SPACE_COLUMNS} null-space columns), but they have {width}",
        NULL_SPACE_COLUMNS - DROPPED_DIRECTIONS,
        directions + NULL_SPACE_COLUMNS
    );
    let a = unit_rows(student)?;
    let b = unit_rows(&teacher.detach())?;
    let kernel = tch::no_grad(|| Kernel::fit(&a.detach(), &b, basis, directions))?;
    Ok(kernel.quadratic_form(&(a - b)).mean(None::<Kind>))
}

/// The geodesic flow kernel G = W M Wᵀ in factored form: W = [W₁ W₂], M the 2×2 block matrix
/// of the diagonals `b1`, `b2` (both off-diagonal blocks), `b4`.
struct Kernel {
    w1: Tensor,
    w2: Tensor,
    b1: Tensor,
    b2: Tensor,
    b4: Tensor,
}

impl Kernel {
    /// The kernel between the student's normalised embeddings `a` and the teacher's `b`.
    fn fit(a: &Tensor, b: &Tensor, basis: Option<&Tensor>, directions: i64) -> Result<Self> {
        let source = principal_directions(a, directions);
        let null = match basis {
            Some(r) => given_basis(r, &source)?,
            None => null_space_basis(&source),
        };
        let target = principal_directions(b, directions);
        let cos_source = source.tr().mm(&target);
        let cos_null = null.tr().mm(&target);

        // HOGSVD of (cos_source, cos_null): the shared right basis V of both.
        let m0 = cos_source.tr().mm(&cos_source);
        let m1 = cos_null.tr().mm(&cos_null);
        let s = (m0.mm(&approximate_inverse(&m1)) + m1.mm(&approximate_inverse(&m0))) / 2.0;
        let (v, _, _) = s.svd(true, true);
        let (v1, gamma) = unit_columns(&cos_source.mm(&v));
        let (v2, _sigma) = unit_columns(&cos_null.mm(&v));
        let v2 = -v2;

        let theta = gamma.clamp(-1.0, 1.0).acos();
        let two_theta = &theta * 2.0;
        let denominator = &two_theta + 1e-12;
        let sinc = two_theta.sin() / &denominator;
        Ok(Self {
            w1: source.mm(&v1),
            w2: null.mm(&v2),
            b1: (&sinc + 1.0) * 0.5,
            b2: (two_theta.cos() - 1.0) * 0.5 / &denominator,
            b4: (-sinc + 1.0) * 0.5,
        })
    }

    /// qᵢᵀ G qᵢ for every row qᵢ of `q` (B × D).
    fn quadratic_form(&self, q: &Tensor) -> Tensor {
        let (u, w) = (q.mm(&self.w1), q.mm(&self.w2));
        let terms = &u * &u * &self.b1 + &u * &w * &self.b2 * 2.0 + &w * &w * &self.b4;
        terms.sum_dim_intlist(1, false, None::<Kind>)
    }
}

/// The first `k` left singular vectors of xᵀ (D × B) with each column (each sample) centred:
/// the reference's `train_pca_tall` on the transposed batch.
fn principal_directions(x: &Tensor, k: i64) -> Tensor {
    let data = x.tr();
    let centred = &data - data.mean_dim(0, true, None::<Kind>);
    let (u, _, _) = centred.svd(true, true);
    u.narrow(1, 0, k)
}

/// An orthonormal basis (D × [`NULL_SPACE_COLUMNS`]) of the null space of Pᵀ, P = `source`
/// (D × k, orthonormal columns). The reference takes scipy's `null_space`, whose columns are
/// whatever its LAPACK returns for a degenerate singular subspace; this takes the first
/// [`NULL_SPACE_COLUMNS`] coordinate axes, projected off P and orthonormalised (QR), which
/// depends on the subspace alone: the loss then does not depend on the order of the batch or
/// on the signs its SVD picked.
fn null_space_basis(source: &Tensor) -> Tensor {
    let width = source.size()[0];
    let axes = Tensor::eye_m(width, NULL_SPACE_COLUMNS, (source.kind(), source.device()));
    let projected = &axes - source.mm(&source.tr().mm(&axes));
    let (q, _) = Tensor::linalg_qr(&projected, "reduced");
    q
}

/// How far (largest element) a given basis may be from orthonormal, and from orthogonal to
/// the student's PCA subspace: loose enough for a basis computed in float32 (the reference's
/// golden values), tight enough to catch one that is no such basis at all.
const BASIS_TOLERANCE: f64 = 1e-3;

/// A caller's null-space basis, checked to be one for the student's subspace `source`.
fn given_basis(basis: &Tensor, source: &Tensor) -> Result<Tensor> {
    let width = source.size()[0];
    ensure!(
        basis.size() == [width, NULL_SPACE_COLUMNS],
        "GeoDL distillation: the null-space basis must be D × {NULL_SPACE_COLUMNS} = {width} × \
         {NULL_SPACE_COLUMNS}, got {:?}",
        basis.size()
    );
    let r = basis.to_device(source.device()).to_kind(source.kind());
    let eye = Tensor::eye(NULL_SPACE_COLUMNS, (r.kind(), r.device()));
    let off_orthonormal = (r.tr().mm(&r) - eye).abs().max().double_value(&[]);
    let off_null = source.tr().mm(&r).abs().max().double_value(&[]);
    ensure!(
        off_orthonormal <= BASIS_TOLERANCE && off_null <= BASIS_TOLERANCE,
        "GeoDL distillation: the given null-space basis is not an orthonormal basis of the null \
         space of the student's PCA subspace (|RᵀR − I| up to {off_orthonormal:.2e}, |PᵀR| up \
         to {off_null:.2e}; at most {BASIS_TOLERANCE:e} allowed)"
    );
    Ok(r)
}

/// The reference's "inverse" of a symmetric positive matrix: Z·Z, Z its inverse square root by
/// [`NEWTON_SCHULZ_ITERATIONS`] coupled Newton–Schulz iterations on M/‖M‖_F, rescaled. With one
/// iteration this is only a rough inverse; the reference uses it as is.
fn approximate_inverse(m: &Tensor) -> Tensor {
    let z = inverse_square_root(m, NEWTON_SCHULZ_ITERATIONS);
    z.mm(&z)
}

/// M^(−1/2) by `iterations` coupled Newton–Schulz steps (Y → M^(1/2), Z → M^(−1/2) of the
/// Frobenius-normalised M), as the reference's `sqrt_newton_schulz_minus`.
fn inverse_square_root(m: &Tensor, iterations: usize) -> Tensor {
    let n = m.size()[0];
    let norm = m.square().sum(None::<Kind>).sqrt();
    let eye = Tensor::eye(n, (m.kind(), m.device()));
    let mut y = m / &norm;
    let mut z = eye.copy();
    for _ in 0..iterations {
        let t = (&eye * 3.0 - z.mm(&y)) * 0.5;
        y = y.mm(&t);
        z = t.mm(&z);
    }
    z / norm.sqrt()
}

/// The columns of `x` scaled to unit norm, and their norms (the HOGSVD's U and Σ).
fn unit_columns(x: &Tensor) -> (Tensor, Tensor) {
    let norms = x.norm_scalaropt_dim(2, [0i64].as_slice(), false);
    (x / norms.unsqueeze(0), norms)
}
