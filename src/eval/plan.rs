//! The plan of `agd evaluate` (SPEC §8), defaulted as the reference's `evaluate.py`.

use super::features::OutputFeature;
use crate::bad_setting;
use crate::error::Setting;
use crate::model::{ComputeChoice, ModelChoice};
use crate::stage::Argv;
use anyhow::Result;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct EvalPlan {
    /// `-g` values: GPU ids, or `cpu`.
    pub gpu: Vec<String>,
    pub data_root: PathBuf,
    pub height: usize,
    pub width: usize,
    /// Datasets; `a+b` evaluates both query sets against the union gallery; `aUb` is one
    /// dataset made of a and b (all queries, one set, against both galleries).
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
    /// Write features and labels to this safetensors file; with several query sets (several
    /// datasets, or the parts of `a+b`) one file each, named by [`EvalPlan::feature_path`].
    pub save_features: Option<PathBuf>,
    /// Evaluate a feature file instead of checkpoints.
    pub features: Option<PathBuf>,
    /// Rank-list pictures of the first `rank_list_n` queries go here, one subfolder per
    /// query set ([`EvalPlan::rank_list_dir`]).
    pub rank_list: Option<PathBuf>,
    pub rank_list_n: usize,
    /// How the model computes (`--amp`, `--memory-format`; not in the reference).
    pub compute: ComputeChoice,
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
            compute: ComputeChoice::default(),
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
        self.compute.render(&mut argv);
        crate::train::plan::render_model(&mut argv, &self.model);
        argv
    }
}

/// The name of one query set's outputs (feature file, rank-list folder): the dataset's own
/// name, or `a-in-a+b` for dataset a's queries against the union gallery of `a+b`, so the
/// outputs of `--dataset a a+b` never overwrite each other.
pub fn query_set_name(spec: &str, part: &str) -> String {
    if spec.contains('+') {
        format!("{part}-in-{spec}")
    } else {
        part.to_string()
    }
}

impl EvalPlan {
    /// The plan of one checkpoint among several (`recursive`): its feature files and rank
    /// lists are named after the checkpoint (its path under `ckpt`, `/` as `_`, without
    /// the extension), so one checkpoint's outputs never overwrite another's:
    /// `f-logs_a_checkpoint-epoch1.safetensors`, `<rank_list>/logs_a_checkpoint-epoch1/a`.
    pub fn for_one_of_several(&self, checkpoint: &Path) -> EvalPlan {
        let relative = checkpoint.strip_prefix(&self.ckpt).unwrap_or(checkpoint);
        let mut id = relative.to_string_lossy().replace(['/', '\\'], "_");
        for ext in crate::model::checkpoint::CHECKPOINT_EXTENSIONS {
            if let Some(stem) = id.strip_suffix(ext) {
                id = stem.to_string();
            }
        }
        EvalPlan {
            save_features: self.save_features.as_ref().map(|f| suffixed(f, &id)),
            rank_list: self.rank_list.as_ref().map(|dir| dir.join(&id)),
            ..self.clone()
        }
    }

    /// Where the features of `part`'s queries within `spec` go: `save_features` itself
    /// when one dataset is evaluated alone; otherwise the query set's name
    /// ([`query_set_name`]) is appended to the file's stem (`f-a.safetensors`,
    /// `f-a-in-a+b.safetensors`).
    pub fn feature_path(&self, spec: &str, part: &str) -> Option<PathBuf> {
        let base = self.save_features.as_ref()?;
        if self.datasets.len() == 1 && !spec.contains('+') {
            return Some(base.clone());
        }
        Some(suffixed(base, &query_set_name(spec, part)))
    }

    /// The folder of the rank-list pictures of `part`'s queries within `spec`:
    /// `<rank_list>/a`, `<rank_list>/a-in-a+b`.
    pub fn rank_list_dir(&self, spec: &str, part: &str) -> Option<PathBuf> {
        Some(self.rank_list.as_ref()?.join(query_set_name(spec, part)))
    }

    /// Refuses a plan that cannot work, before any image is decoded or checkpoint read: a
    /// size or count of zero (libtorch would abort with a backtrace deep in the first
    /// forward pass), a dataset named twice, and outputs that could only fail once the
    /// whole evaluation is done.
    pub fn validate(&self) -> Result<()> {
        for (setting, value) in [
            (Setting::Height, self.height),
            (Setting::Width, self.width),
            (Setting::BatchSize, self.batch_size),
        ] {
            if value == 0 {
                bad_setting!(setting, value, "must be at least 1");
            }
        }
        if self.rank_list.is_some() && self.rank_list_n == 0 {
            bad_setting!(
                Setting::RankListN,
                self.rank_list_n,
                "must be at least 1: no rank list would be drawn"
            );
        }
        if self.features.is_some() {
            // A feature file is scored as it is: no model, no images, nothing to write.
            if let Some(f) = &self.save_features {
                bad_setting!(
                    Setting::SaveFeatures,
                    f.display(),
                    "a feature file is evaluated without a model: there are no features to write"
                );
            }
            if let Some(d) = &self.rank_list {
                bad_setting!(
                    Setting::RankList,
                    d.display(),
                    "a feature file holds no images to draw"
                );
            }
            return Ok(());
        }
        if self.datasets.is_empty() {
            bad_setting!(Setting::Dataset, "", "no dataset to evaluate");
        }
        let mut specs = HashSet::new();
        for spec in &self.datasets {
            if !specs.insert(spec) {
                bad_setting!(
                    Setting::Dataset,
                    spec,
                    "listed twice: its results and files would repeat"
                );
            }
            let mut parts = HashSet::new();
            for part in spec.split('+') {
                for member in crate::eval::union::members(&self.data_root, part) {
                    if member.is_empty() {
                        bad_setting!(
                            Setting::DatasetPart,
                            spec,
                            "empty name in a `+` or `U` combination"
                        );
                    }
                    if !parts.insert(member) {
                        bad_setting!(
                            Setting::DatasetPart,
                            spec,
                            "`{member}` appears twice: the union gallery would hold its gallery twice"
                        );
                    }
                }
            }
        }
        if let Some(dir) = &self.rank_list {
            // The folder is created as needed; what exists on its way must be folders.
            if let Some(blocker) = dir.ancestors().find(|a| a.exists() && !a.is_dir()) {
                bad_setting!(
                    Setting::RankList,
                    dir.display(),
                    "{} exists and is not a folder",
                    blocker.display()
                );
            }
        }
        if let Some(base) = &self.save_features {
            for spec in &self.datasets {
                for part in spec.split('+') {
                    let path = self.feature_path(spec, part).expect("save_features is set");
                    check_destination(base, &path)?;
                }
            }
        }
        Ok(())
    }
}

/// `file` with `-suffix` appended to its stem: `f.safetensors` → `f-a.safetensors`.
fn suffixed(file: &Path, suffix: &str) -> PathBuf {
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    let ext = file
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    file.with_file_name(format!("{stem}-{suffix}{ext}"))
}

/// A feature file can be written at `path` (derived from the `base` the plan names):
/// its folder exists and it is not itself a folder.
fn check_destination(base: &Path, path: &Path) -> Result<()> {
    let derived = if path == base {
        String::new()
    } else {
        format!("{}: ", path.display())
    };
    if path.is_dir() {
        bad_setting!(
            Setting::SaveFeatures,
            base.display(),
            "{derived}is a folder; give a file name"
        );
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bad_setting!(
            Setting::SaveFeatures,
            base.display(),
            "{derived}folder {} does not exist",
            folder.display()
        );
    }
    Ok(())
}
