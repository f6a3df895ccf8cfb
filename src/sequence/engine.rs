//! The one implementation of "run the pipeline's stages one after another": plan templates
//! in, stage runs out. Both `agd sequence` (any number of datasets, one method) and
//! `agd demo` (two tasks, four methods) drive it, so the stages are built, announced and
//! resumed the same way wherever they run.
//!
//! A template holds everything a stage's plan takes except what depends on where the
//! stage sits in a run (dataset, logs folder, teacher, previous model, dreams folder,
//! resume); the engine fills those in, and sets `resume` whenever the stage's own folder
//! already holds its work, so that a second run reuses every finished stage and finishes
//! an interrupted one (a fresh training run refuses a folder holding a checkpoint).

use crate::bad_setting;
use crate::error::{AboutExt, Setting};
use crate::eval::{EvalPlan, EvalRow};
use crate::inversion::InvertPlan;
use crate::logging::Logger;
use crate::loss::distill::Distillation;
use crate::model::checkpoint::LATEST;
use crate::stage::{Argv, StagePlan};
use crate::train::plan::{BasePlan, IncrementalPlan, LoopPlan};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The plans every stage of a run starts from.
#[derive(Clone, Debug, PartialEq)]
pub struct Templates {
    /// The base model (`agd train`); its dataset, logs folder and resume are filled in.
    pub base: BasePlan,
    /// The loop of every incremental step; dataset, logs folder and resume are filled in.
    /// Its `peers` are the views of an augmented method; the others see one.
    pub incremental: LoopPlan,
    /// Dreamed images used per old identity by a distilling method.
    pub exemplars: usize,
    /// The inversion (`agd invert`); teacher, dreams folder and resume are filled in.
    pub invert: InvertPlan,
    /// The evaluation (`agd evaluate`); checkpoint, datasets and rank lists are filled in.
    pub eval: EvalPlan,
}

/// Where a method's distillation config comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Config {
    /// One of the shipped `configs/`, embedded in the binary so that a run needs no clone
    /// of the repository; written into the run's configs folder, where the printed
    /// command lines point.
    Shipped {
        file: &'static str,
        text: &'static str,
    },
    /// The user's file, used where it is.
    File(PathBuf),
}

/// How each new task is learnt (the paper's table rows).
#[derive(Clone, Debug, PartialEq)]
pub struct Method {
    /// `--method`'s value: a preset's name or a config's path.
    pub name: String,
    /// How tables call it.
    pub label: String,
    /// Augmented distillation across views (`incremental-x`, AGD).
    pub augmented: bool,
    /// None: the fine-tuning baseline, which needs no dreamed images.
    pub config: Option<Config>,
}

/// The presets, in the order of the paper's table.
pub const PRESETS: [&str; 4] = ["finetune", "gd", "simgd", "agd"];

impl Method {
    /// A shipped preset: `finetune`, `gd` (res-triangle), `simgd` (sim-res-triangle),
    /// `agd` (inverXion with 2 views).
    pub fn preset(name: &str) -> Option<Method> {
        let shipped = |file, text| Some(Config::Shipped { file, text });
        let (label, augmented, config) = match name {
            "finetune" => ("fine-tuning (no distillation)", false, None),
            "gd" => (
                "GD (res-triangle)",
                false,
                shipped(
                    "res-triangle.yaml",
                    include_str!("../../configs/res-triangle.yaml"),
                ),
            ),
            "simgd" => (
                "simGD (sim-res-triangle)",
                false,
                shipped(
                    "sim-res-triangle.yaml",
                    include_str!("../../configs/sim-res-triangle.yaml"),
                ),
            ),
            "agd" => (
                "AGD (inverXion, 2 views)",
                true,
                shipped(
                    "inverXion.yaml",
                    include_str!("../../configs/inverXion.yaml"),
                ),
            ),
            _ => return None,
        };
        Some(Method {
            name: name.into(),
            label: label.into(),
            augmented,
            config,
        })
    }

    /// A preset's name, or the path of a distillation config: a config with
    /// `cross_factor` is learnt with augmented distillation (`incremental-x`, the views
    /// mixed by that factor), one without with plain distillation (`incremental`).
    pub fn parse(value: &str) -> Result<Method> {
        if let Some(m) = Self::preset(value) {
            return Ok(m);
        }
        let path = Path::new(value);
        if !path.is_file() {
            bad_setting!(
                Setting::Method,
                value,
                "neither a preset ({}) nor a distillation config file",
                PRESETS.join(", ")
            );
        }
        let config = Distillation::load(path).about_value(Setting::Method, value)?;
        let augmented = config.cross_factor.is_some();
        Ok(Method {
            name: value.into(),
            label: format!(
                "{value} ({})",
                if augmented {
                    "incremental-x"
                } else {
                    "incremental"
                }
            ),
            augmented,
            config: Some(Config::File(path.to_path_buf())),
        })
    }

    /// Whether the method learns from dreamed images (all but fine-tuning).
    pub fn distills(&self) -> bool {
        self.config.is_some()
    }
}

/// Runs stages from [`Templates`], printing each stage's command line to the run's log
/// first, so a user can rerun any stage by pasting it.
pub struct Engine<'a> {
    pub templates: Templates,
    log: &'a Logger,
    /// Where shipped configs are written.
    configs_dir: PathBuf,
}

/// The training folder's checkpoint, when a run left one: that run is continued.
fn resume_of(logs: &Path) -> Option<PathBuf> {
    logs.join(LATEST).is_file().then(|| logs.to_path_buf())
}

impl<'a> Engine<'a> {
    pub fn new(templates: Templates, log: &'a Logger, configs_dir: PathBuf) -> Self {
        Self {
            templates,
            log,
            configs_dir,
        }
    }

    /// Prints the command line that reruns a stage, as the user would type it.
    pub fn announce(&self, argv: &Argv) {
        self.log.line(format!("  $ {}", argv.command_line()));
    }

    /// The base model on `dataset`, into `logs`.
    pub fn train_base(&self, dataset: &str, logs: &Path) -> Result<()> {
        let t = &self.templates.base;
        let plan = BasePlan {
            run: LoopPlan {
                dataset: dataset.into(),
                logs_dir: logs.to_path_buf(),
                resume: resume_of(logs),
                ..t.run.clone()
            },
            ..t.clone()
        };
        self.announce(&plan.argv());
        crate::train::run_base(&plan)?;
        Ok(())
    }

    /// Dreams every class of the model in `teacher` into `dir` (completing what a
    /// previous run left there).
    pub fn invert(&self, teacher: &Path, dir: &Path) -> Result<()> {
        let plan = InvertPlan {
            generation_dir: Some(dir.to_path_buf()),
            resume: dir.is_dir().then(|| dir.to_path_buf()),
            teacher: teacher.to_path_buf(),
            ..self.templates.invert.clone()
        };
        self.announce(&plan.argv());
        crate::inversion::run(&plan)
    }

    /// The config file a distilling method's command line names.
    fn config_path(&self, config: &Config) -> Result<PathBuf> {
        match config {
            Config::File(path) => Ok(path.clone()),
            Config::Shipped { file, text } => {
                let path = self.configs_dir.join(file);
                crate::io::create_dir(&self.configs_dir)?;
                crate::io::write_atomic(&path, text.as_bytes())?;
                Ok(path)
            }
        }
    }

    /// `dataset` learnt by `method` from the model in `previous`, into `logs`; a distilling
    /// method distils the previous model on the images in `dreams`.
    pub fn learn(
        &self,
        method: &Method,
        dataset: &str,
        previous: &Path,
        dreams: Option<&Path>,
        logs: &Path,
    ) -> Result<()> {
        let t = &self.templates.incremental;
        let run = LoopPlan {
            dataset: dataset.into(),
            logs_dir: logs.to_path_buf(),
            resume: resume_of(logs),
            peers: if method.augmented { t.peers } else { 1 },
            ..t.clone()
        };
        let defaults = IncrementalPlan::defaults(method.augmented);
        let plan = match (&method.config, dreams) {
            (None, _) => IncrementalPlan {
                finetune: true,
                ..defaults
            },
            (Some(config), Some(dreams)) => IncrementalPlan {
                algo_config: Some(self.config_path(config)?),
                inversion_dir: dreams.to_path_buf(),
                exemplars: self.templates.exemplars,
                ..defaults
            },
            (Some(_), None) => {
                anyhow::bail!("{}: a distilling method needs dreamed images", method.name)
            }
        };
        let plan = IncrementalPlan {
            run,
            previous: previous.to_path_buf(),
            ..plan
        };
        self.announce(&plan.argv());
        crate::train::run_incremental(&plan)?;
        Ok(())
    }

    /// The evaluation plan of the model in `ckpt` on `datasets`.
    pub fn eval_plan(
        &self,
        ckpt: &Path,
        datasets: &[String],
        rank_list: Option<PathBuf>,
    ) -> EvalPlan {
        EvalPlan {
            datasets: datasets.to_vec(),
            ckpt: ckpt.to_path_buf(),
            rank_list,
            ..self.templates.eval.clone()
        }
    }

    /// Runs an evaluation plan (announced first); its tables go to the run's log.
    pub fn evaluate(&self, plan: &EvalPlan) -> Result<Vec<EvalRow>> {
        self.announce(&plan.argv());
        crate::eval::run(plan, &mut |title, rows| {
            self.log.line(crate::eval::table(title, rows))
        })
    }

    /// Writes a line to the run's log.
    pub fn line(&self, text: impl AsRef<str>) {
        self.log.line(text);
    }
}
