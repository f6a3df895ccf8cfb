//! Plans of the training stages: `agd train` ([`BasePlan`]), `agd incremental` and
//! `agd incremental-x` ([`IncrementalPlan`]). Plain values, defaulted as the reference's
//! scripts default them (`main.py` for the base model, `main_incremental*.py` for the
//! incremental steps), each able to render the command line that reruns it.

use super::optimizer::OptimizerKind;
use crate::bad_setting;
use crate::data::{Erasing, LoaderConfig, TrainTransform};
use crate::error::Setting;
use crate::model::checkpoint::Pretrained;
use crate::model::ModelChoice;
use crate::options::{self, AugmentOptions, Setup};
use crate::stage::StagePlan;
use anyhow::{Context, Result};
use clap::{Args, Command};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The reference scripts' training defaults that several plans state: `agd train`'s
/// (`main.py`), the incremental steps' (`main_incremental*.py`), and `agd sequence`, which
/// runs both.
pub mod reference {
    pub const EPOCHS: usize = 90;
    pub const EPOCHS_DECAY: usize = 61;
    pub const INCREMENTAL_EPOCHS: usize = 80;
    pub const INCREMENTAL_EPOCHS_DECAY: usize = 41;
    pub const LEARNING_RATE: f64 = 0.01;
    pub const EVALUATE: usize = 10;
    /// Views of each sample in augmented distillation (`incremental-x`).
    pub const VIEWS: usize = 2;
}

/// The training loop shared by every training stage. Its defaults are `main.py`'s (the
/// base model); the incremental steps' differ where [`LoopPlan::incremental_defaults`]
/// says.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopPlan {
    #[command(flatten)]
    pub setup: Setup,
    /// Dataset name (a folder under --data-root).
    #[arg(long, default_value = "msmt17")]
    pub dataset: String,
    /// Batch size (P identities × 4 images).
    #[arg(short = 'b', long, default_value_t = 128)]
    pub batch_size: usize,
    /// Checkpoint (file or logs folder) to continue from.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Number of epochs.
    #[arg(long, default_value_t = reference::EPOCHS)]
    pub epochs: usize,
    /// Epochs at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [reference::EPOCHS_DECAY])]
    pub epochs_decay: Vec<usize>,
    /// Where checkpoints and logs go.
    #[arg(long, value_name = "PATH", default_value = "logs")]
    pub logs_dir: PathBuf,
    /// Keep a numbered checkpoint every this many epochs.
    #[arg(long, default_value_t = 1000)]
    pub save_freq: usize,
    #[arg(long, value_enum, default_value = "SGD")]
    pub optimizer: OptimizerKind,
    /// Warm-up epochs.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = reference::LEARNING_RATE)]
    pub learning_rate: f64,
    /// Evaluate every this many epochs (0: never).
    #[arg(long, default_value_t = reference::EVALUATE)]
    pub evaluate: usize,
    /// Independently augmented views of each sample.
    #[arg(long, default_value_t = 1)]
    pub peers: usize,
    #[command(flatten)]
    pub augment: AugmentOptions,
    #[command(flatten)]
    pub model: ModelChoice,
    #[command(flatten)]
    pub dist: crate::dist::DistOptions,
    /// In a data-parallel run, BatchNorm statistics and the losses (hard mining, the
    /// distillations) within each rank's share of the batch, and the gradients averaged:
    /// fast-reid's cheaper way. By default they span the whole batch, as one process.
    #[arg(long)]
    pub local_bn: bool,
}

crate::default_from_flags!(LoopPlan);

impl LoopPlan {
    /// `main_incremental*.py`'s defaults, where they differ from `main.py`'s. The
    /// incremental subcommands' flags default to these ([`options::with_defaults`]).
    pub fn incremental_defaults(augmented: bool) -> Self {
        Self {
            dataset: "market".into(),
            batch_size: 64,
            epochs: reference::INCREMENTAL_EPOCHS,
            epochs_decay: vec![reference::INCREMENTAL_EPOCHS_DECAY],
            save_freq: 100,
            warmup: 0,
            peers: if augmented { reference::VIEWS } else { 1 },
            ..Self::default()
        }
    }

    pub fn loader_config(&self, seed: u64) -> LoaderConfig {
        let erasing = Erasing {
            probability: self.augment.re,
            max_area: self.augment.re_area,
        };
        LoaderConfig::new(
            self.batch_size,
            self.peers,
            TrainTransform { erasing },
            seed,
        )
    }

    /// Checks that need no data, so mistakes surface before minutes of loading.
    pub fn validate(&self) -> Result<()> {
        super::schedule::validate(self.warmup, &self.epochs_decay)?;
        if self.epochs == 0 {
            bad_setting!(Setting::Epochs, 0, "nothing to train");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bad_setting!(
                Setting::LearningRate,
                self.learning_rate,
                "must be a positive number"
            );
        }
        crate::model::validate_input_size(self.setup.data.size.height, self.setup.data.size.width)?;
        let k = crate::data::INSTANCES;
        if self.batch_size == 0 || !self.batch_size.is_multiple_of(k) {
            bad_setting!(
                Setting::BatchSize,
                self.batch_size,
                "must be a positive multiple of {k} (the samples per identity in a P×K batch)"
            );
        }
        if self.peers == 0 {
            bad_setting!(Setting::Peers, 0, "a sample needs at least one view");
        }
        if !(0.0..=1.0).contains(&self.augment.re) {
            bad_setting!(
                Setting::RandomErasing,
                self.augment.re,
                "a probability must be in [0, 1]"
            );
        }
        if !(Erasing::MIN_AREA..=1.0).contains(&self.augment.re_area) {
            bad_setting!(
                Setting::RandomErasingArea,
                self.augment.re_area,
                "must be in [{}, 1]",
                Erasing::MIN_AREA
            );
        }
        Ok(())
    }
}

/// `agd train`: the base model on task 1 (docs/method.md §1).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BasePlan {
    #[command(flatten)]
    pub run: LoopPlan,
    /// ImageNet weights for the ResNet (safetensors, torch .pth/.pt or Paddle .pdparams
    /// state dict with torchvision names), or `none` for random initialisation; default: a
    /// `resnet<depth>*` file in backbone_weights/, and an error when there is none.
    #[arg(long, value_name = "FILE|none", default_value = "", hide_default_value = true,
          value_parser = Pretrained::from_flag)]
    pub pretrained: Pretrained,
}

crate::default_from_flags!(BasePlan);

impl StagePlan for BasePlan {
    const SUBCOMMAND: &'static str = "train";
}

/// How task 2 is learnt.
#[derive(Clone, Debug, PartialEq)]
pub enum Learning {
    /// The forgetting baseline (`main_finetune.py`): new data only.
    Finetune,
    /// Distillation of the old model on the new batch alone (the reference's
    /// `IncrementalTrainer`): no images of the old task at all, dreamed or real. The
    /// data-free baseline without dreaming, as LwF and PODNet were first run.
    NewData {
        /// The distillation config (`--algo-config`).
        algo_config: PathBuf,
    },
    /// Distillation of the old model on images of the old identities (dreamed, or real
    /// exemplars for the upper bound) paired with every new batch, with a `--algo-config`.
    Distill {
        algo_config: PathBuf,
        old_images: OldImages,
        /// Images used per old identity (dreamed or real: one meaning for both).
        exemplars: usize,
    },
}

/// Where the images of the old identities come from.
#[derive(Clone, Debug, PartialEq)]
pub enum OldImages {
    /// Dreamed from the old model (`--inversion-dir`): the data-free method.
    Dreamed(PathBuf),
    /// Real training images of the old task's dataset (`--exemplar-dataset`), labelled as
    /// `agd train --dataset NAME` labelled them: the upper bound a data-free method is
    /// compared with.
    Real(String),
}

/// `agd incremental` / `agd incremental-x` (docs/method.md §5, §6): the flags as given; how the new
/// task is learnt follows from them ([`IncrementalPlan::learning`]).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncrementalPlan {
    #[command(flatten)]
    pub run: LoopPlan,
    /// Augmented distillation across the views (`incremental-x`, AGD): the subcommand, not
    /// a flag.
    #[arg(skip)]
    #[serde(default)]
    pub augmented: bool,
    /// The task-1 checkpoint (file or logs folder).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PREVIOUS)]
    pub previous: PathBuf,
    /// Distillation config (YAML, see configs/).
    #[arg(long, value_name = "PATH")]
    pub algo_config: Option<PathBuf>,
    /// The forgetting baseline (the reference's `main_finetune.py`): learn the new task
    /// from the old model with no dreamed images and no distillation.
    #[arg(long)]
    pub finetune: bool,
    /// Distil on the new batch alone (the reference's IncrementalTrainer): the old model
    /// and the student see only the new images, no dreamed or real old ones. The data-free
    /// baseline without dreaming (how LwF and PODNet were first run); needs --algo-config.
    #[arg(
        long,
        conflicts_with_all = ["inversion_dir", "exemplars", "exemplar_dataset", "finetune"]
    )]
    pub new_data_distillation: bool,
    /// Folder of dreamed images (`<pid>_<anything>.jpg`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_INVERSION_DIR)]
    pub inversion_dir: PathBuf,
    /// Real training images of the old task's dataset (a folder under --data-root, labelled
    /// as `agd train --dataset NAME` labelled them) in place of dreamed images, --exemplars
    /// per identity chosen by --seed: the upper bound a data-free method is compared with.
    // Defaults are not conflicts in clap: only an --inversion-dir given too is refused.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["inversion_dir", "finetune"])]
    pub exemplar_dataset: Option<String>,
    /// Images per old identity: dreamed ones from --inversion-dir, or real ones with
    /// --exemplar-dataset.
    #[arg(long, default_value_t = DEFAULT_EXEMPLARS)]
    pub exemplars: usize,
    /// Also evaluate on the old task's dataset when its data is available.
    #[arg(long, value_name = "NAME")]
    pub old_dataset: Option<String>,
}

/// Defaults of the reference's `main_incremental.py` for these paths.
pub const DEFAULT_PREVIOUS: &str = "logs/msmt17";
pub const DEFAULT_INVERSION_DIR: &str = "data/generations_r50_msmt17";
pub const DEFAULT_EXEMPLARS: usize = 40;

impl IncrementalPlan {
    /// The defaults of `agd incremental` (`augmented`: `agd incremental-x`).
    pub fn defaults(augmented: bool) -> Self {
        Self {
            augmented,
            ..options::parse_defaults(Self::subcommand_of(augmented))
        }
    }

    /// The subcommand with its reference defaults (`main_incremental*.py`'s).
    pub fn subcommand_of(augmented: bool) -> Command {
        let name = if augmented {
            "incremental-x"
        } else {
            "incremental"
        };
        Self::with_reference_defaults(Self::augment_args(Command::new(name)), augmented)
    }

    /// `command` (the CLI's subcommand, or [`Self::subcommand_of`]'s) with the defaults of
    /// [`LoopPlan::incremental_defaults`] where they differ from `agd train`'s.
    pub fn with_reference_defaults(command: Command, augmented: bool) -> Command {
        options::with_defaults(command, &LoopPlan::incremental_defaults(augmented))
    }

    /// How the new task is learnt, from the flags.
    pub fn learning(&self) -> Result<Learning> {
        if self.finetune {
            return Ok(Learning::Finetune);
        }
        let example = if self.augmented {
            "inverXion"
        } else {
            "res-triangle"
        };
        let algo_config = self.algo_config.clone().with_context(|| {
            format!("--algo-config is required: a distillation config such as configs/{example}.yaml (or --finetune for the baseline without distillation)")
        })?;
        if self.new_data_distillation {
            return Ok(Learning::NewData { algo_config });
        }
        let old_images = match &self.exemplar_dataset {
            Some(name) => OldImages::Real(name.clone()),
            None => OldImages::Dreamed(self.inversion_dir.clone()),
        };
        Ok(Learning::Distill {
            algo_config,
            old_images,
            exemplars: self.exemplars,
        })
    }

    /// The flags given with `--finetune` that it does not use (it learns from the new data
    /// alone): printed and kept in the run's `log.txt`, where a reader of the run looks for
    /// why a flag had no effect.
    pub fn warnings(&self) -> Vec<String> {
        if !self.finetune {
            return Vec::new();
        }
        let mut ignored = Vec::new();
        if let Some(c) = &self.algo_config {
            ignored.push(format!("--algo-config {}", c.display()));
        }
        if self.inversion_dir != Path::new(DEFAULT_INVERSION_DIR) {
            ignored.push(format!("--inversion-dir {}", self.inversion_dir.display()));
        }
        if self.exemplars != DEFAULT_EXEMPLARS {
            ignored.push(format!("--exemplars {}", self.exemplars));
        }
        ignored
            .into_iter()
            .map(|flag| format!("--finetune learns from the new data alone: ignoring {flag}"))
            .collect()
    }
}

impl StagePlan for IncrementalPlan {
    const SUBCOMMAND: &'static str = "incremental";

    fn command(&self) -> Command {
        Self::subcommand_of(self.augmented)
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{try_parse_from, Command};

    fn incremental(args: &[&str]) -> super::IncrementalPlan {
        let argv = ["agd", "incremental"].iter().chain(args);
        match try_parse_from(argv).unwrap().command {
            Command::Incremental(plan) => plan,
            _ => unreachable!("an incremental command line"),
        }
    }

    #[test]
    fn flags_finetuning_does_not_use_are_reported() {
        let plan = incremental(&[
            "--finetune",
            "--algo-config",
            "x.yaml",
            "--inversion-dir",
            "d",
        ]);
        let ignoring =
            |flag: &str| format!("--finetune learns from the new data alone: ignoring {flag}");
        assert_eq!(
            plan.warnings(),
            [
                ignoring("--algo-config x.yaml"),
                ignoring("--inversion-dir d")
            ]
        );
        assert!(incremental(&["--finetune"]).warnings().is_empty());
        assert!(
            incremental(&["--algo-config", "x.yaml", "--inversion-dir", "d"])
                .warnings()
                .is_empty()
        );
    }
}
