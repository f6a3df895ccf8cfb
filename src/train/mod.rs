//! Training: the learning-rate schedule, the optimiser, and the one loop that serves
//! `train`, `incremental` and `incremental-x`.

pub mod optimizer;
pub mod schedule;
