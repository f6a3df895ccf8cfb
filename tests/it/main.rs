//! agd's integration tests: one binary (one link against libtorch instead of one per
//! file), one module per area, helpers shared through [`util`] — the layout ripgrep and
//! cargo use.

mod cli;
mod data;
mod distill;
mod evaluate;
mod faults;
mod fixtures;
mod incremental;
mod invert;
mod metrics;
mod model;
mod paddle;
mod parallel;
mod pipeline;
mod plot;
mod pth;
mod reference_checkpoint;
mod rerank;
mod sequence;
mod synth;
mod train;
mod util;
