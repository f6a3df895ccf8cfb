//! Small tensor helpers shared across modules, so each exists once.

use anyhow::Result;
use tch::Tensor;

/// Rows divided by `max(‖x‖, 1e-12)` (`F.normalize`): a zero row stays zero instead of NaN.
pub fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

extern "C" {
    fn agd_randn_seeded(
        shape: *const i64,
        ndim: std::os::raw::c_int,
        seed: u64,
    ) -> *mut torch_sys::C_tensor;
}

/// Standard normal float64 values on the CPU, as `tch::manual_seed(seed)` then
/// `Tensor::randn` give them, from a generator of their own: the global generator is
/// shared by every thread, and another thread seeding or drawing between the two calls
/// changes the values (tests run in parallel threads).
pub fn randn_seeded(shape: &[i64], seed: u64) -> Result<Tensor> {
    // SAFETY: `shape` outlives the call; the shim returns a tensor it allocated with
    // `new`, whose ownership tch takes, or null.
    let raw = unsafe { agd_randn_seeded(shape.as_ptr(), shape.len() as _, seed) };
    anyhow::ensure!(!raw.is_null(), "randn of shape {shape:?} failed");
    Ok(unsafe { Tensor::from_ptr(raw) })
}
