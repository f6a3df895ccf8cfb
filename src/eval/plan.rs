//! The plan of `agd evaluate` (SPEC §8), defaulted as the reference's `evaluate.py`.

use super::features::OutputFeature;
use crate::model::ModelChoice;
use crate::stage::Argv;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub struct EvalPlan {
    /// `-g` values: GPU ids, or `cpu`.
    pub gpu: Vec<String>,
    pub data_root: PathBuf,
    pub height: usize,
    pub width: usize,
    /// Datasets; `a+b` evaluates both query sets against the union gallery.
    pub datasets: Vec<String>,
    pub batch_size: usize,
    /// Checkpoint file, logs folder, or with `recursive` a tree of them.
    pub ckpt: PathBuf,
    pub recursive: bool,
    /// Shapes the model where a checkpoint does not say (the reference's files).
    pub model: ModelChoice,
    pub output_feature: OutputFeature,
    pub re_ranking: bool,
    /// Re-rank all queries in one graph instead of the reference's chunks of 1024.
    pub one_shot: bool,
    /// Append results to `eval.txt` beside each checkpoint.
    pub output: bool,
    /// Print results as JSON instead of tables.
    pub json: bool,
    /// Write features and labels to this safetensors file (per dataset when several).
    pub save_features: Option<PathBuf>,
    /// Evaluate a feature file instead of checkpoints.
    pub features: Option<PathBuf>,
    /// Rank-list pictures of the first `rank_list_n` queries go here.
    pub rank_list: Option<PathBuf>,
    pub rank_list_n: usize,
}

pub const DEFAULT_CKPT: &str = "logs";

impl Default for EvalPlan {
    fn default() -> Self {
        Self {
            gpu: vec!["0".into()],
            data_root: "data".into(),
            height: 256,
            width: 128,
            datasets: ["market", "duke", "msmt17"].map(String::from).to_vec(),
            batch_size: 128,
            ckpt: DEFAULT_CKPT.into(),
            recursive: false,
            model: ModelChoice::default(),
            output_feature: OutputFeature::Embedding,
            re_ranking: false,
            one_shot: false,
            output: false,
            json: false,
            save_features: None,
            features: None,
            rank_list: None,
            rank_list_n: 10,
        }
    }
}

impl EvalPlan {
    pub fn argv(&self) -> Argv {
        let d = Self::default();
        let mut argv = Argv::new("evaluate");
        argv.list("-g", &self.gpu, &d.gpu)
            .path("--ckpt", &self.ckpt, DEFAULT_CKPT)
            .switch("--recursive", self.recursive)
            .path("--data-root", &self.data_root, "data")
            .list("--dataset", &self.datasets, &d.datasets)
            .differs("--height", &self.height, &d.height)
            .differs("--width", &self.width, &d.width)
            .differs("-b", &self.batch_size, &d.batch_size)
            .differs(
                "--output-feature",
                &self.output_feature.name(),
                &d.output_feature.name(),
            )
            .switch("--re-ranking", self.re_ranking)
            .switch("--one-shot", self.one_shot)
            .switch("--output", self.output)
            .switch("--json", self.json)
            .opt_path("--save-features", self.save_features.as_deref())
            .opt_path("--features", self.features.as_deref())
            .opt_path("--rank-list", self.rank_list.as_deref())
            .differs("--rank-list-n", &self.rank_list_n, &d.rank_list_n);
        crate::train::plan::render_model(&mut argv, &self.model);
        argv
    }
}
