//! Evaluation (SPEC §8): features, distances, mAP and CMC.

pub mod metrics;
