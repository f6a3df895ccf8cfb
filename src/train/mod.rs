//! Training: the learning-rate schedule, the optimiser, the one loop that serves
//! `train`, `incremental` and `incremental-x` (each supplies only its step), and those
//! stages as library functions over their plans.

pub mod base;
pub mod checkpoint;
pub mod fit;
pub mod hooks;
pub mod incremental;
pub mod metrics_csv;
pub mod optimizer;
pub mod parallel;
pub mod plan;
mod run;
pub mod schedule;

pub use plan::{BasePlan, IncrementalPlan, Learning, LoopPlan, OldImages};
pub use run::{run_base, run_incremental};
