//! agd: Augmented Geometric Distillation (Lu et al., CVPR 2022) for data-free incremental
//! person re-identification, on libtorch through tch. See docs/method.md for what each part
//! computes; the layout follows the pipeline: `data` → (model, losses, training,
//! inversion, evaluation) → `cli`.

pub mod alloc;
pub mod cli;
pub mod data;
pub mod demo;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod inversion;
pub mod io;
pub mod logging;
pub mod loss;
pub mod model;
pub mod options;
pub mod plot;
pub mod progress;
pub mod record;
pub mod report;
pub mod sequence;
pub mod stage;
pub mod tensor;
pub mod train;
pub mod yaml;
