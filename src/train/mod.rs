//! Training: the learning-rate schedule, the optimiser, and the one loop that serves
//! `train`, `incremental` and `incremental-x` (each supplies only its step).

pub mod base;
pub mod fit;
pub mod incremental;
pub mod optimizer;
pub mod schedule;
