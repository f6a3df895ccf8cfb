//! Plans of the training stages: `agd train` ([`BasePlan`]), `agd incremental` and
//! `agd incremental-x` ([`IncrementalPlan`]). Plain values, defaulted as the reference's
//! scripts default them (`main.py` for the base model, `main_incremental*.py` for the
//! incremental steps), each able to render the command line that reruns it.

use super::optimizer::OptimizerKind;
use crate::bad_setting;
use crate::data::{Erasing, LoaderConfig, TrainTransform};
use crate::error::Setting;
use crate::model::checkpoint::Pretrained;
use crate::model::{ComputeChoice, Depth, ModelChoice, Pooling};
use crate::stage::Argv;
use anyhow::Result;
use std::path::PathBuf;

/// The training loop shared by every training stage.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopPlan {
    /// `-g` values: GPU ids, or `cpu`.
    pub gpu: Vec<String>,
    /// None: drawn and logged.
    pub seed: Option<u64>,
    pub data_root: PathBuf,
    pub dataset: String,
    pub height: usize,
    pub width: usize,
    pub batch_size: usize,
    /// A checkpoint (file or logs folder) to continue from.
    pub resume: Option<PathBuf>,
    pub epochs: usize,
    /// Epochs at which the learning rate is multiplied by 0.1.
    pub epochs_decay: Vec<usize>,
    pub logs_dir: PathBuf,
    /// Keep a numbered checkpoint every this many epochs.
    pub save_freq: usize,
    pub optimizer: OptimizerKind,
    pub warmup: usize,
    pub learning_rate: f64,
    /// Evaluate every this many epochs (0: never).
    pub evaluate: usize,
    /// Independently augmented views of each sample.
    pub peers: usize,
    /// Random-erasing probability and largest area.
    pub re: f64,
    pub re_area: f64,
    pub model: ModelChoice,
    /// `--amp`, `--memory-format`.
    pub compute: ComputeChoice,
    /// `--deterministic`: deterministic ATen and cuDNN algorithms, cuDNN benchmark off
    /// ([`crate::device::set_deterministic`]).
    pub deterministic: bool,
}

impl LoopPlan {
    /// `main.py`'s defaults (the base model).
    pub fn base_defaults() -> Self {
        Self {
            gpu: vec!["0".into()],
            seed: None,
            data_root: "data".into(),
            dataset: "msmt17".into(),
            height: 256,
            width: 128,
            batch_size: 128,
            resume: None,
            epochs: 90,
            epochs_decay: vec![61],
            logs_dir: "logs".into(),
            save_freq: 1000,
            optimizer: OptimizerKind::Sgd,
            warmup: 10,
            learning_rate: 0.01,
            evaluate: 10,
            peers: 1,
            re: 0.5,
            re_area: 0.4,
            model: ModelChoice::default(),
            compute: ComputeChoice::default(),
            deterministic: false,
        }
    }

    /// `main_incremental*.py`'s defaults, where they differ from `main.py`'s.
    pub fn incremental_defaults(augmented: bool) -> Self {
        Self {
            dataset: "market".into(),
            batch_size: 64,
            epochs: 80,
            epochs_decay: vec![41],
            save_freq: 100,
            warmup: 0,
            peers: if augmented { 2 } else { 1 },
            ..Self::base_defaults()
        }
    }

    pub fn loader_config(&self, seed: u64) -> LoaderConfig {
        let erasing = Erasing {
            probability: self.re,
            max_area: self.re_area,
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
        crate::model::validate_input_size(self.height, self.width)?;
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
        if !(0.0..=1.0).contains(&self.re) {
            bad_setting!(
                Setting::RandomErasing,
                self.re,
                "a probability must be in [0, 1]"
            );
        }
        if !(Erasing::MIN_AREA..=1.0).contains(&self.re_area) {
            bad_setting!(
                Setting::RandomErasingArea,
                self.re_area,
                "must be in [{}, 1]",
                Erasing::MIN_AREA
            );
        }
        Ok(())
    }

    /// The loop's flags that differ from `defaults`. For a `fresh` model (`agd train`),
    /// another depth also gets its embedding width spelt out: the flag's default is
    /// ResNet-50's 2048.
    fn render(&self, argv: &mut Argv, d: &Self, fresh: bool) {
        argv.list("-g", &self.gpu, &d.gpu)
            .opt("-s", self.seed)
            .path("--data-root", &self.data_root, "data")
            .differs("--dataset", &self.dataset, &d.dataset)
            .differs("--height", &self.height, &d.height)
            .differs("--width", &self.width, &d.width)
            .differs("-b", &self.batch_size, &d.batch_size)
            .opt_path("--resume", self.resume.as_deref())
            .differs("--epochs", &self.epochs, &d.epochs)
            .list("--epochs-decay", &self.epochs_decay, &d.epochs_decay)
            .path("--logs-dir", &self.logs_dir, "logs")
            .differs("--save-freq", &self.save_freq, &d.save_freq)
            .differs("--optimizer", &self.optimizer.name(), &d.optimizer.name())
            .differs("--warmup", &self.warmup, &d.warmup)
            .differs("--learning-rate", &self.learning_rate, &d.learning_rate)
            .differs("--evaluate", &self.evaluate, &d.evaluate)
            .differs("--peers", &self.peers, &d.peers)
            .differs("--re", &self.re, &d.re)
            .differs("--re-area", &self.re_area, &d.re_area)
            .switch("--deterministic", self.deterministic);
        self.compute.render(argv);
        let mut model = self.model;
        if fresh && model.embedding.is_none() {
            model.embedding = model.depth.map(Depth::feature_width);
        }
        render_model(argv, &model);
    }
}

/// The model flags a choice gives.
pub fn render_model(argv: &mut Argv, m: &ModelChoice) {
    argv.opt("--depth", m.depth.map(Depth::number))
        .opt("--embedding", m.embedding)
        .opt("--last-stride", m.last_stride)
        .opt("--last-pooling", m.pooling.map(Pooling::name));
}

/// The `--pretrained` value that asks for random initialisation.
pub const RANDOM_INIT: &str = "none";

/// `--pretrained` when the weights are not the ones found in `backbone_weights/`.
pub fn render_pretrained(argv: &mut Argv, pretrained: &Pretrained) {
    match pretrained {
        Pretrained::Found => {}
        Pretrained::Random => {
            argv.flag("--pretrained", RANDOM_INIT);
        }
        Pretrained::File(p) => {
            argv.flag("--pretrained", p.display());
        }
    }
}

/// `agd train`: the base model on task 1 (SPEC §1).
#[derive(Clone, Debug, PartialEq)]
pub struct BasePlan {
    pub run: LoopPlan,
    /// Where the fresh ResNet's weights come from.
    pub pretrained: Pretrained,
}

impl Default for BasePlan {
    fn default() -> Self {
        Self {
            run: LoopPlan::base_defaults(),
            pretrained: Pretrained::Found,
        }
    }
}

impl BasePlan {
    pub fn argv(&self) -> Argv {
        let mut argv = Argv::new("train");
        self.run.render(&mut argv, &LoopPlan::base_defaults(), true);
        render_pretrained(&mut argv, &self.pretrained);
        argv
    }
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

/// `agd incremental` / `agd incremental-x` (SPEC §5, §6).
#[derive(Clone, Debug, PartialEq)]
pub struct IncrementalPlan {
    pub run: LoopPlan,
    /// Augmented distillation across `peers` views (`incremental-x`, AGD).
    pub augmented: bool,
    /// The task-1 checkpoint (file or logs folder).
    pub previous: PathBuf,
    pub learning: Learning,
    /// Also evaluate on the old task's dataset.
    pub old_dataset: Option<String>,
    /// What the plan's maker dropped (flags `--finetune` does not use): printed and kept
    /// in the run's `log.txt`, where a reader of the run looks for why a flag had no effect.
    pub warnings: Vec<String>,
}

/// Defaults of the reference's `main_incremental.py` for these paths.
pub const DEFAULT_PREVIOUS: &str = "logs/msmt17";
pub const DEFAULT_INVERSION_DIR: &str = "data/generations_r50_msmt17";
pub const DEFAULT_EXEMPLARS: usize = 40;

impl IncrementalPlan {
    pub fn subcommand(&self) -> &'static str {
        if self.augmented {
            "incremental-x"
        } else {
            "incremental"
        }
    }

    pub fn argv(&self) -> Argv {
        let mut argv = Argv::new(self.subcommand());
        self.run.render(
            &mut argv,
            &LoopPlan::incremental_defaults(self.augmented),
            false,
        );
        argv.path("--previous", &self.previous, DEFAULT_PREVIOUS);
        match &self.learning {
            Learning::Finetune => {
                argv.switch("--finetune", true);
            }
            Learning::NewData { algo_config } => {
                argv.flag("--algo-config", algo_config.display())
                    .switch("--new-data-distillation", true);
            }
            Learning::Distill {
                algo_config,
                old_images,
                exemplars,
            } => {
                argv.flag("--algo-config", algo_config.display());
                match old_images {
                    OldImages::Dreamed(dir) => {
                        argv.path("--inversion-dir", dir, DEFAULT_INVERSION_DIR);
                    }
                    OldImages::Real(dataset) => {
                        argv.flag("--exemplar-dataset", dataset);
                    }
                }
                argv.differs("--exemplars", exemplars, &DEFAULT_EXEMPLARS);
            }
        }
        argv.opt("--old-dataset", self.old_dataset.as_deref());
        argv
    }
}
