//! Everything between files on disk and batches on the device (docs/method.md §2): dataset layouts,
//! images decoded once into memory, the reference's transforms, the P×K identity sampler
//! and background loaders that assemble batches ahead of the model.

pub mod dataset;
pub mod images;
pub mod loader;
pub mod rng;
pub mod sampler;
pub mod synth;
pub mod transforms;

pub use dataset::{Dreamed, Exemplars, Record, ReidDataset};
pub use images::ImageStore;
pub use loader::{Batch, LoaderConfig, PairedLoader, Share, TestLoader, TrainLoader, INSTANCES};
pub use sampler::IdentitySampler;
pub use transforms::{Erasing, TrainTransform};
