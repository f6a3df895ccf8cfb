//! The plan of `agd evaluate` (docs/method.md §8), defaulted as the reference's `evaluate.py`.

use super::features::OutputFeature;
use crate::bad_setting;
use crate::dist::DistOptions;
use crate::error::Setting;
use crate::model::checkpoint::CHECKPOINT_EXTENSIONS;
use crate::model::ModelChoice;
use crate::options::{DataOptions, DeviceOptions};
use crate::stage::StagePlan;
use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPlan {
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Checkpoint file, or a logs folder (its checkpoint), or with --recursive a tree.
    #[arg(short = 'c', long, value_name = "PATH", default_value = DEFAULT_CKPT)]
    pub ckpt: PathBuf,
    /// Evaluate every checkpoint under --ckpt; one that fails does not stop the others,
    /// but is named at the end (with --json, as a `{checkpoint, error}` row) and the exit
    /// code is non-zero.
    #[arg(long, conflicts_with = "features")]
    pub recursive: bool,
    #[command(flatten)]
    pub data: DataOptions,
    /// Datasets to evaluate; `a+b` evaluates both query sets against the union gallery;
    /// `aUb` is one dataset made of a and b (the reference's mode `U`), also inside `+`.
    // Named as the flag (`--dataset`, the reference's) where it is one, so a config key and
    // an error name it as the flag does.
    #[serde(rename = "dataset")]
    #[arg(id = "dataset", long = "dataset", num_args = 1..,
          default_values_t = ["market".to_string(), "duke".to_string(), "msmt17".to_string()])]
    pub datasets: Vec<String>,
    #[arg(short = 'b', long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "embedding")]
    pub output_feature: OutputFeature,
    /// k-reciprocal re-ranking.
    #[arg(short = 'r', long)]
    pub re_ranking: bool,
    /// Re-rank all queries in one graph instead of the reference's chunks of 1024.
    #[arg(long, requires = "re_ranking")]
    pub one_shot: bool,
    /// Append results to eval.txt beside each checkpoint.
    #[arg(short = 'o', long, conflicts_with = "features")]
    pub output: bool,
    /// Write each query set's features and labels to this safetensors file. Several query
    /// sets (several datasets, or `a+b`) get one file each, named by appending the query
    /// set to the stem: `F-a.safetensors`, and `F-a-in-a+b.safetensors` for a's queries
    /// against the union gallery of a+b. The folder must exist.
    // [`EvalPlan::feature_path`].
    #[arg(long, value_name = "FILE")]
    pub save_features: Option<PathBuf>,
    /// Evaluate a feature file written by --save-features; no model or images needed.
    #[arg(long, value_name = "FILE", conflicts_with = "save_features")]
    pub features: Option<PathBuf>,
    /// Write rank-list pictures (query, then its top-10 gallery images framed green or
    /// red) into this folder, one subfolder per query set: `DIR/a`, and `DIR/a-in-a+b`
    /// for a's queries against the union gallery of a+b.
    // [`EvalPlan::rank_list_dir`].
    #[arg(long, value_name = "DIR", conflicts_with = "features")]
    pub rank_list: Option<PathBuf>,
    /// Queries to draw rank lists for (at least 1).
    #[arg(long, default_value_t = 10)]
    pub rank_list_n: usize,
    /// Shapes the model where a checkpoint does not say (the reference's files).
    #[command(flatten)]
    pub model: ModelChoice,
    /// Data-parallel extraction: every rank extracts a share, rank 0 scores.
    #[command(flatten)]
    pub dist: DistOptions,
}

pub const DEFAULT_CKPT: &str = "logs";

crate::default_from_flags!(EvalPlan);

impl StagePlan for EvalPlan {
    const SUBCOMMAND: &'static str = "evaluate";
}

/// A name for a checkpoint's outputs, from its path (a file with one of the checkpoint
/// extensions, as a recursive search finds them), that no other such path is given: two
/// checkpoints never share a feature file or a rank-list folder. The path with `/` written
/// `_`, and `_`, `%` and `\` escaped as `%5F`, `%25` and `%5C` (any byte of a path that is
/// not UTF-8 as `%XX`), so that `a/b_c` and `a_b/c` stay apart; agd's `.safetensors` is
/// left out, the reference's `.pth.tar` and Paddle's `.pdparams` are written `%pth` and
/// `%pd` (no escape makes those: `p` is not a hex digit), so `checkpoint.safetensors` and
/// `checkpoint.pdparams` stay apart too.
fn checkpoint_id(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    // Markers in CHECKPOINT_EXTENSIONS' order: .safetensors, .pth.tar, .pdparams.
    let (stem, marker) = CHECKPOINT_EXTENSIONS
        .iter()
        .zip(["", "%pth", "%pd"])
        .find_map(|(ext, marker)| bytes.strip_suffix(ext.as_bytes()).map(|s| (s, marker)))
        .unwrap_or((bytes, ""));
    let mut id = String::new();
    let escape = |id: &mut String, b: u8| id.push_str(&format!("%{b:02X}"));
    match std::str::from_utf8(stem) {
        Ok(text) => {
            for c in text.chars() {
                match c {
                    '/' => id.push('_'),
                    '_' | '%' | '\\' => escape(&mut id, c as u8),
                    c => id.push(c),
                }
            }
        }
        // Not UTF-8: every byte outside ASCII escaped (a UTF-8 path keeps its characters,
        // so the two kinds of names never meet).
        Err(_) => {
            for &b in stem {
                match b {
                    b'/' => id.push('_'),
                    b'_' | b'%' | b'\\' => escape(&mut id, b),
                    b if b.is_ascii() => id.push(b as char),
                    b => escape(&mut id, b),
                }
            }
        }
    }
    id.push_str(marker);
    id
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
    /// lists are named after the checkpoint ([`checkpoint_id`] of its path under `ckpt`),
    /// so one checkpoint's outputs never overwrite another's:
    /// `f-logs_a_checkpoint-epoch1.safetensors`, `<rank_list>/logs_a_checkpoint-epoch1/a`.
    pub fn for_one_of_several(&self, checkpoint: &Path) -> EvalPlan {
        let relative = checkpoint.strip_prefix(&self.ckpt).unwrap_or(checkpoint);
        let id = checkpoint_id(relative);
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
    ///
    /// Long because it is a list of independent checks, each with its own message.
    pub fn validate(&self) -> Result<()> {
        for (setting, value) in [
            (Setting::Height, self.data.size.height),
            (Setting::Width, self.data.size.width),
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
                for member in crate::eval::union::members(&self.data.data_root, part) {
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

#[cfg(test)]
mod tests {
    use super::checkpoint_id;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// Every way two checkpoint paths could once share an output name (issue 36, item 4),
    /// and the names that stay as they were.
    #[test]
    fn checkpoint_output_names_are_injective() {
        #[allow(unused_mut)]
        let mut paths: Vec<PathBuf> = [
            // Extensions.
            "checkpoint.safetensors",
            "checkpoint.pdparams",
            "checkpoint.pth.tar",
            "checkpoint.pdparams.safetensors",
            "checkpoint.pth.tar.pdparams",
            // Separators and the characters that stood for them.
            "a/b_c/checkpoint.safetensors",
            "a_b/c/checkpoint.safetensors",
            "a_b_c/checkpoint.safetensors",
            "a\\b/checkpoint.safetensors",
            "a/b/checkpoint.safetensors",
            // Escapes and markers written out literally.
            "a%5Fb/checkpoint.safetensors",
            "a_b/checkpoint.safetensors",
            "x%pd.safetensors",
            "x.pdparams",
            "x%25pd.pdparams",
            "x%pd.pdparams",
            // The character lossy conversion makes of a byte that is not UTF-8.
            "\u{FFFD}/checkpoint.safetensors",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            for bytes in [
                &b"\xff/checkpoint.safetensors"[..],
                b"\xfe/checkpoint.safetensors",
            ] {
                paths.push(std::ffi::OsStr::from_bytes(bytes).into());
            }
        }
        let mut seen: HashMap<String, &PathBuf> = HashMap::new();
        for p in &paths {
            let id = checkpoint_id(p);
            if let Some(other) = seen.insert(id.clone(), p) {
                panic!(
                    "{} and {} share the name {id}",
                    other.display(),
                    p.display()
                );
            }
        }
        assert_eq!(
            checkpoint_id("logs/a/checkpoint-epoch1.safetensors".as_ref()),
            "logs_a_checkpoint-epoch1"
        );
        assert_eq!(
            checkpoint_id("run/checkpoint.pdparams".as_ref()),
            "run_checkpoint%pd"
        );
    }
}
