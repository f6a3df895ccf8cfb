//! Evaluation (docs/method.md §8): features, distances, mAP and CMC.

pub mod distance;
pub mod features;
pub mod features_file;
pub mod metrics;
pub mod plan;
pub mod ranklist;
pub mod rerank;
mod run;
pub mod union;

pub use plan::EvalPlan;
pub use run::{run, table, CheckpointsFailed, EvalRow, OnRows};

use crate::data::{ImageStore, Record, ReidDataset};
use crate::model::ReidModel;
use anyhow::Result;
use features::OutputFeature;
use metrics::{Distance, Labels, Metrics};
use std::sync::Arc;

/// Query and gallery of one dataset, decoded once for repeated evaluation.
pub struct TestSet {
    pub name: String,
    pub query: Vec<Record>,
    pub gallery: Vec<Record>,
    query_images: Arc<ImageStore>,
    gallery_images: Arc<ImageStore>,
}

fn labels(records: &[Record]) -> (Vec<i64>, Vec<i64>) {
    records.iter().map(|r| (r.pid, r.camera)).unzip()
}

impl TestSet {
    pub fn load(dataset: &ReidDataset, height: usize, width: usize) -> Result<Self> {
        Ok(Self {
            name: dataset.name.clone(),
            query_images: Arc::new(ImageStore::load(&dataset.query, height, width, "query")?),
            gallery_images: Arc::new(ImageStore::load(
                &dataset.gallery,
                height,
                width,
                "gallery",
            )?),
            query: dataset.query.clone(),
            gallery: dataset.gallery.clone(),
        })
    }

    /// mAP and CMC of `model` on this set: cosine distance of the chosen features.
    pub fn evaluate(
        &self,
        model: &ReidModel,
        batch_size: usize,
        feature: OutputFeature,
    ) -> Result<Metrics> {
        self.evaluate_among(model, batch_size, feature, None)?
            .ok_or_else(|| anyhow::anyhow!("the evaluation returned no metrics"))
    }

    /// [`TestSet::evaluate`] in a data-parallel run (`ranks`): every rank extracts its
    /// share of the features, and rank 0 scores them (the others get `None`).
    pub fn evaluate_among(
        &self,
        model: &ReidModel,
        batch_size: usize,
        feature: OutputFeature,
        ranks: Option<&crate::dist::Group>,
    ) -> Result<Option<Metrics>> {
        let (q, g) = (&self.query_images, &self.gallery_images);
        let q = features::extract(model, q, batch_size, feature, "query", ranks)?;
        let g = features::extract(model, g, batch_size, feature, "gallery", ranks)?;
        if ranks.is_some_and(|r| r.rank() != 0) {
            return Ok(None);
        }
        let (qp, qc) = labels(&self.query);
        let (gp, gc) = labels(&self.gallery);
        metrics::evaluate_features(
            &q,
            &g,
            Distance::Cosine,
            Labels::new(&qp, &qc),
            Labels::new(&gp, &gc),
            20,
        )
        .map(Some)
    }
}
