//! What made a run folder. Every stage that writes a folder (train, incremental,
//! incremental-x, invert, sequence, demo) records there, when it claims the folder, its
//! kind (the subcommand) and its recipe (the flags that decide what the folder holds), and
//! refuses a folder whose record names another kind or recipe, with one error naming both.
//! A demo run into a finished sequence, a sequence resumed with another `--method`, an
//! inversion with another sharding plan: each would mix its files with another run's and
//! report them as its own.
//!
//! The recipe is what the folder's results are of, as the plan's flags say it: the data,
//! the model, the method and what it learns from ([`WHAT_IS_MADE`]), as the command line
//! that reproduces the run writes them (values off their defaults). How long or how fast
//! a run goes (its epochs, learning rate, batch size, seed, device) is not part of it: a
//! run resumed with more epochs or a lower learning rate continues the same results, as
//! the reference's `--resume` does.
//!
//! A folder where a run made nothing yet (a run that failed on its inputs leaves only its
//! log) is claimed afresh by the next run, whatever made it: fixing a flag and running
//! again must work.

use crate::error::{Error, Setting};
use crate::logging::Hold;
use crate::stage::{off_default, StagePlan};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The record in a run folder (hidden, beside the folder's lock).
pub const RECORD: &str = ".agd-run.json";

/// The plan fields (clap's argument ids) that say what a run folder's results are of:
/// the data, the model, the method, and the models and images it learns from. A dreams
/// folder's number of shards is part of it too ([`Recipe::sharded`]); its image format
/// is checked from its files.
pub const WHAT_IS_MADE: &[&str] = &[
    // The data, and the size of its images.
    "dataset",
    "datasets",
    "unseen",
    "height",
    "width",
    // The model.
    "depth",
    "embedding",
    "last_stride",
    "pooling",
    "pretrained",
    // The method, and what it learns from.
    "method",
    "peers",
    "previous",
    "algo_config",
    "finetune",
    "new_data_distillation",
    "inversion_dir",
    "exemplar_dataset",
    "exemplars",
    "old_dataset",
    "teacher",
];

/// A run folder's kind and recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// The subcommand that made the folder (`train`, `incremental-x`, `demo`, …).
    pub kind: String,
    /// Flag → value as typed (`on` for a switch), for the flags off their default.
    pub flags: BTreeMap<String, String>,
}

impl Recipe {
    /// A recipe of kind `kind` with no flag yet.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            flags: BTreeMap::new(),
        }
    }

    /// The recipe of a stage's plan: its kind is the plan's subcommand, its flags those of
    /// [`WHAT_IS_MADE`].
    pub fn of<P: StagePlan>(plan: &P) -> Self {
        let command = plan.command();
        let mut recipe = Self::new(command.get_name());
        recipe.add_flags(&command, plan, Some(WHAT_IS_MADE));
        recipe
    }

    /// Adds the flags of `values`' fields that differ from `command`'s defaults (`only`
    /// those fields, when given).
    pub fn add_flags<T: Serialize + ?Sized>(
        &mut self,
        command: &clap::Command,
        values: &T,
        only: Option<&[&str]>,
    ) {
        for (arg, values) in off_default(command, values) {
            let id = arg.get_id().as_str();
            if only.is_some_and(|fields| !fields.contains(&id)) {
                continue;
            }
            let flag = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => id.to_string(),
            };
            let value = if values.is_empty() {
                "on".to_string()
            } else {
                values.join(" ")
            };
            self.flags.insert(flag, value);
        }
    }

    /// Adds one entry.
    pub fn with(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.flags.insert(key.into(), value.to_string());
        self
    }

    /// The recipe of a folder that shards of `count` dream together (`--shard K/<count>`),
    /// or that one unsharded run dreams (`None`): a folder holds one sharding plan.
    pub fn sharded(self, count: Option<usize>) -> Self {
        match count {
            Some(n) => self.with("--shard", format!("K/{n}")),
            None => self,
        }
    }

    /// Claims `dir` (which exists, and which the caller holds as `hold` says) for a run
    /// of this recipe: writes the record into a folder that has none, and refuses a folder
    /// recorded with another kind or recipe. A folder with files but no record was made by
    /// an earlier agd or another tool, and is refused unless `adopt` (the run continues
    /// what the folder holds: `--resume` of its own checkpoint or dreams). A folder whose
    /// runs made nothing yet is claimed afresh by a run that holds it alone.
    ///
    /// `folder` is the setting that named `dir`, which the error names as the way out.
    pub fn claim(&self, dir: &Path, folder: Setting, adopt: bool, hold: Hold) -> Result<()> {
        let path = dir.join(RECORD);
        let refuse = |found: Option<Recipe>, entry: Option<String>| -> Result<()> {
            Err(Error::from(OtherRun {
                dir: dir.to_path_buf(),
                folder,
                found,
                asked: self.clone(),
                entry,
            })
            .into())
        };
        let text = || Ok::<_, anyhow::Error>(serde_json::to_string_pretty(self)? + "\n");
        let found = match read(&path)? {
            Some(found) if found == *self => return Ok(()),
            Some(found) => found,
            None => {
                if let (false, Some(entry)) = (adopt, first_product(dir)?) {
                    return refuse(None, Some(entry));
                }
                if crate::io::create_atomic(&path, text()?.as_bytes())? {
                    return Ok(());
                }
                // Another run of the folder (a shard starting beside this one) recorded
                // it first.
                match read(&path)? {
                    Some(found) if found == *self => return Ok(()),
                    found => found.with_context(|| format!("{} vanished", path.display()))?,
                }
            }
        };
        if hold == Hold::Exclusive && first_product(dir)?.is_none() {
            return crate::io::write_atomic(&path, text()?.as_bytes());
        }
        refuse(Some(found), None)
    }
}

/// The record of `path`, if there is one.
fn read(path: &Path) -> Result<Option<Recipe>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a run record agd can read", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The first (by name) of the files in `dir` that runs made: all but the folder's
/// bookkeeping (its lock, its record, its log, temporary files).
fn first_product(dir: &Path) -> Result<Option<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        let bookkeeping = [RECORD, crate::logging::LOCK, crate::logging::LOG];
        if !bookkeeping.contains(&name.as_str()) && !crate::io::is_temporary(&name) {
            names.push(name);
        }
    }
    Ok(names.into_iter().min())
}

/// A folder that another kind of run, another recipe, or something that is not an agd
/// run of this version made.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe(self.folder.name()))]
pub struct OtherRun {
    pub dir: PathBuf,
    /// The setting that named the folder.
    pub folder: Setting,
    /// The folder's record; `None` when it has none.
    pub found: Option<Recipe>,
    pub asked: Recipe,
    /// A file of an unrecorded folder.
    pub entry: Option<String>,
}

impl OtherRun {
    /// The message, with the folder's setting called `folder` (its name, or the CLI's
    /// flag).
    pub fn describe(&self, folder: &str) -> String {
        let dir = self.dir.display();
        let asked = &self.asked.kind;
        match &self.found {
            None => format!(
                "{dir} holds files that no agd run recorded ({}): an earlier agd or another \
                 tool made them, and this `agd {asked}` will not write among them; choose \
                 another {folder}",
                self.entry.as_deref().unwrap_or("?")
            ),
            Some(found) if found.kind != *asked => format!(
                "{dir} holds an `agd {}` run, and this is `agd {asked}`: choose another {folder}",
                found.kind
            ),
            Some(found) => format!(
                "{dir} holds an `agd {asked}` run made with other settings or by another agd \
                 ({}): repeat them to continue that run, or choose another {folder}",
                differences(found, &self.asked)
            ),
        }
    }
}

/// `--flag: A there, B here` for every flag on which two recipes differ.
fn differences(found: &Recipe, asked: &Recipe) -> String {
    let value = |r: &Recipe, k: &str| {
        r.flags
            .get(k)
            .cloned()
            .unwrap_or_else(|| "its default".to_string())
    };
    let mut keys: Vec<&String> = found.flags.keys().chain(asked.flags.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| found.flags.get(*k) != asked.flags.get(*k))
        .map(|k| format!("{k}: {} there, {} here", value(found, k), value(asked, k)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(kind: &str, flags: &[(&str, &str)]) -> Recipe {
        flags
            .iter()
            .fold(Recipe::new(kind), |r, (k, v)| r.with(*k, v))
    }

    #[test]
    fn a_folder_keeps_the_kind_and_recipe_that_claimed_it() {
        let dir = tempfile::tempdir().unwrap();
        let seq = recipe("sequence", &[("--method", "agd")]);
        let (logs, alone) = (Setting::LogsDir, Hold::Exclusive);
        seq.claim(dir.path(), logs, false, alone).unwrap();
        // A run that made nothing yet: the next run claims the folder afresh.
        let typo = recipe("sequence", &[("--method", "agdd")]);
        typo.claim(dir.path(), logs, false, alone).unwrap();
        seq.claim(dir.path(), logs, false, alone).unwrap();
        std::fs::create_dir(dir.path().join("step1-a")).unwrap();
        seq.claim(dir.path(), logs, false, alone).unwrap();
        let e = recipe("demo", &[])
            .claim(dir.path(), logs, false, alone)
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`agd sequence`") && m.contains("`agd demo`"),
            "{m}"
        );
        let e = recipe("sequence", &[("--method", "finetune"), ("--epochs", "3")])
            .claim(dir.path(), logs, false, alone)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--method: agd there, finetune here")
                && e.contains("--epochs: its default there, 3 here"),
            "{e}"
        );
    }

    #[test]
    fn a_folder_with_unrecorded_files_is_refused_unless_adopted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("checkpoint.pth.tar"), b"x").unwrap();
        let r = recipe("train", &[]);
        let (logs, alone) = (Setting::LogsDir, Hold::Exclusive);
        let e = r
            .claim(dir.path(), logs, false, alone)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checkpoint.pth.tar") && e.contains("no agd run"),
            "{e}"
        );
        r.claim(dir.path(), logs, true, alone).unwrap();
        r.claim(dir.path(), logs, false, alone).unwrap();
        // Shards hold a folder together: none of them claims it afresh.
        let other = recipe("invert", &[("--shard", "K/3")]);
        let empty = tempfile::tempdir().unwrap();
        recipe("invert", &[("--shard", "K/2")])
            .claim(empty.path(), logs, false, Hold::Shared)
            .unwrap();
        other
            .claim(empty.path(), logs, false, Hold::Shared)
            .unwrap_err();
    }
}
