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
