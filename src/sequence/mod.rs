//! `agd sequence`: lifelong learning over several datasets (the lifelong-ReID protocol).
//!
//! The base model is trained on the first dataset; then, for every next dataset, the
//! current model is inverted (every class it knows: a model with an expanded classifier
//! dreams all its classes, and dreamed pids are its class indices, which the incremental
//! stage shifts past the new classes, so the steps chain), the dataset is learnt with the
//! chosen method from those dreams, and the new model is evaluated on every dataset seen
//! so far (and on the `unseen` ones). Each stage is a normal agd run in its own folder,
//! built by the [`Engine`] that `agd demo` uses too, and every stage resumes: a second
//! run reuses what is finished and finishes what was interrupted.
//!
//! Layout of `logs_dir`:
//! - `step1-<A>/`: the base model; `step<k>-<D>/`: the model after learning `D`;
//! - `step<k>-<D>-dreams/`: the images dreamed from the step-(k−1) model, used by step k;
//! - `evaluations/step<k>-<D>.json`: step k's evaluation, reused while the checkpoint is
//!   the one it was computed on;
//! - `configs/`: the shipped config of a preset method;
//! - `results.{md,json,png}`: mAP / rank-1 after each step on each dataset, the average
//!   over the datasets seen so far, and forgetting (best earlier mAP − final mAP).

pub mod engine;
pub mod results;

pub use engine::{Config, Engine, Method, Templates, PRESETS};
pub use results::{forgetting, StepResult};

use crate::bad_setting;
use crate::data::ReidDataset;
use crate::error::{Error, Setting};
use crate::eval::EvalPlan;
use crate::inversion::plan::Dreaming;
use crate::inversion::InvertPlan;
use crate::model::checkpoint::{Pretrained, LATEST};
use crate::model::ModelChoice;
use crate::options::{self, AugmentOptions, Setup};
use crate::stage::StagePlan;
use crate::train::optimizer::OptimizerKind;
use crate::train::plan::{reference, BasePlan, LoopPlan};
use anyhow::{Context, Result};
use clap::{Args, Command};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `agd sequence` runs. The stages' flags keep their names and reference defaults;
/// values the stages share are given once, and where the base and the incremental stages'
/// reference defaults differ (batch size, warm-up) a flag sets both and its absence keeps
/// each stage's own.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequencePlan {
    /// Datasets to learn, in this order (folders under --data-root); the first trains the
    /// base model.
    #[arg(long, num_args = 1.., required = true, value_name = "NAME")]
    pub datasets: Vec<String>,
    /// Datasets never learnt, evaluated after every step (generalisation).
    #[arg(long, num_args = 0.., value_name = "NAME")]
    pub unseen: Vec<String>,
    /// How each new dataset is learnt: agd (configs/inverXion.yaml, incremental-x with
    /// --peers views), gd (res-triangle), simgd (sim-res-triangle), finetune (no
    /// distillation), or a distillation config's path (incremental-x when it has
    /// `cross_factor`, else incremental).
    #[arg(long, value_name = "agd|gd|simgd|finetune|CONFIG", default_value = DEFAULT_METHOD)]
    pub method: String,
    /// Where every step's folder and the results go.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LOGS_DIR)]
    pub logs_dir: PathBuf,
    #[command(flatten)]
    pub setup: Setup,
    /// Epochs of the base model on the first dataset.
    #[arg(long, default_value_t = reference::EPOCHS)]
    pub base_epochs: usize,
    /// Epochs of the base model at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [reference::EPOCHS_DECAY])]
    pub base_epochs_decay: Vec<usize>,
    /// Epochs of every incremental step.
    #[arg(long, default_value_t = reference::INCREMENTAL_EPOCHS)]
    pub epochs: usize,
    /// Epochs of an incremental step at which the learning rate is multiplied by 0.1.
    #[arg(long, num_args = 0.., default_values_t = [reference::INCREMENTAL_EPOCHS_DECAY])]
    pub epochs_decay: Vec<usize>,
    /// Batch size of every training stage (P identities × 4 images) [default: 128 for the
    /// base model, 64 for the incremental steps].
    #[arg(short = 'b', long)]
    pub batch_size: Option<usize>,
    /// Warm-up epochs of every training stage [default: 10 for the base model, 0 for the
    /// incremental steps].
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, value_enum, default_value = "SGD")]
    pub optimizer: OptimizerKind,
    /// Base learning rate of every training stage.
    #[arg(long, default_value_t = reference::LEARNING_RATE)]
    pub learning_rate: f64,
    /// Training stages evaluate every this many epochs (0: never; every step's model is
    /// evaluated on all datasets seen so far anyway).
    #[arg(long, default_value_t = reference::EVALUATE)]
    pub evaluate: usize,
    /// Views of each sample for an augmented method (AGD); the others see one.
    #[arg(long, default_value_t = reference::VIEWS)]
    pub peers: usize,
    #[command(flatten)]
    pub augment: AugmentOptions,
    /// The base model's shape; every later stage reads it from the checkpoints.
    #[command(flatten)]
    pub model: ModelChoice,
    /// ImageNet weights of the base model's ResNet, or `none` (as `agd train`).
    #[arg(long, value_name = "FILE|none", default_value = "", hide_default_value = true,
          value_parser = Pretrained::from_flag)]
    pub pretrained: Pretrained,
    /// Dreamed images used per old identity.
    #[arg(long, default_value_t = crate::train::plan::DEFAULT_EXEMPLARS)]
    pub exemplars: usize,
    #[command(flatten)]
    pub dreaming: Dreaming,
}

pub const DEFAULT_LOGS_DIR: &str = "logs/sequence";
pub const DEFAULT_METHOD: &str = "agd";

impl StagePlan for SequencePlan {
    const SUBCOMMAND: &'static str = "sequence";
}

impl Default for SequencePlan {
    /// The stages' reference defaults, with no dataset yet.
    fn default() -> Self {
        options::parse_defaults(
            Self::augment_args(Command::new("sequence")).mut_arg("datasets", |a| a.required(false)),
        )
    }
}

/// A folder name for a dataset (a name with a path separator stays one folder).
fn folder_name(dataset: &str) -> String {
    dataset.replace(['/', '\\'], "_")
}

impl SequencePlan {
    /// The plan templates of the stages, from the shared settings.
    pub fn templates(&self) -> Templates {
        let shared = |d: LoopPlan, epochs: usize, epochs_decay: &[usize]| LoopPlan {
            setup: self.setup.clone(),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            epochs,
            epochs_decay: epochs_decay.to_vec(),
            warmup: self.warmup.unwrap_or(d.warmup),
            optimizer: self.optimizer,
            learning_rate: self.learning_rate,
            evaluate: self.evaluate,
            augment: self.augment,
            ..d
        };
        let base = BasePlan {
            run: LoopPlan {
                model: self.model,
                ..shared(
                    LoopPlan::default(),
                    self.base_epochs,
                    &self.base_epochs_decay,
                )
            },
            pretrained: self.pretrained.clone(),
        };
        let incremental = LoopPlan {
            peers: self.peers,
            ..shared(
                LoopPlan::incremental_defaults(true),
                self.epochs,
                &self.epochs_decay,
            )
        };
        let invert = InvertPlan {
            device: self.setup.device.clone(),
            seed: self.setup.seed,
            dreaming: self.dreaming,
            size: self.setup.data.size,
            ..InvertPlan::default()
        };
        let eval = EvalPlan {
            device: self.setup.device.clone(),
            data: self.setup.data.clone(),
            ..EvalPlan::default()
        };
        Templates {
            base,
            incremental,
            exemplars: self.exemplars,
            invert,
            eval,
        }
    }

    /// Step `step`'s (1-based) model folder.
    pub fn step_dir(&self, step: usize) -> PathBuf {
        let name = folder_name(&self.datasets[step - 1]);
        self.logs_dir.join(format!("step{step}-{name}"))
    }

    /// The dreams of the step-(k−1) model that step `step` learns from.
    pub fn dreams_dir(&self, step: usize) -> PathBuf {
        let name = folder_name(&self.datasets[step - 1]);
        self.logs_dir.join(format!("step{step}-{name}-dreams"))
    }

    /// Where step `step`'s evaluation is kept.
    pub fn evaluation_file(&self, step: usize) -> PathBuf {
        let name = folder_name(&self.datasets[step - 1]);
        self.logs_dir
            .join("evaluations")
            .join(format!("step{step}-{name}.json"))
    }

    /// Everything that can be checked before any work: the datasets (at least two, none
    /// twice, each a folder under the data root), the method, every stage's settings and
    /// the base model's ImageNet weights. Returns the method.
    ///
    /// Long because it is a list of independent checks, each with its own message.
    pub fn validate(&self) -> Result<Method> {
        if self.datasets.len() < 2 {
            bad_setting!(
                Setting::Datasets,
                self.datasets.join(" "),
                "a sequence needs at least 2 datasets: the base model's, then one or more to learn"
            );
        }
        for (i, name) in self.datasets.iter().enumerate() {
            if self.datasets[..i].contains(name) {
                bad_setting!(
                    Setting::Datasets,
                    name,
                    "given twice: each dataset of a sequence is learnt once"
                );
            }
        }
        for (i, name) in self.unseen.iter().enumerate() {
            if self.datasets.contains(name) {
                bad_setting!(
                    Setting::Unseen,
                    name,
                    "is learnt in the sequence (--datasets), so it is not unseen"
                );
            }
            if self.unseen[..i].contains(name) {
                bad_setting!(Setting::Unseen, name, "given twice");
            }
        }
        let method = Method::parse(&self.method)?;
        let t = self.templates();
        t.base.run.validate()?;
        t.incremental.validate()?;
        // The other methods see one view (the engine gives them 1).
        if method.augmented {
            crate::train::incremental::Views::check(self.peers, true)?;
        }
        if method.distills() {
            t.invert.validate()?;
            if self.exemplars == 0 {
                bad_setting!(
                    Setting::Exemplars,
                    0,
                    "at least one dreamed image per identity is needed"
                );
            }
        }
        if !self.setup.data.data_root.is_dir() {
            bad_setting!(
                Setting::DataRoot,
                self.setup.data.data_root.display(),
                "folder not found (expected one folder per dataset inside it)"
            );
        }
        let named = self
            .datasets
            .iter()
            .map(|d| (Setting::Datasets, d))
            .chain(self.unseen.iter().map(|d| (Setting::Unseen, d)));
        for (setting, name) in named {
            let dir = self.setup.data.data_root.join(name);
            if name.is_empty() || !dir.is_dir() {
                bad_setting!(
                    setting,
                    if name.is_empty() { "\"\"" } else { name },
                    "no dataset folder {} under the data root",
                    dir.display()
                );
            }
            // The listing only (no image is decoded): a malformed dataset fails now, not
            // after hours of training on the ones before it.
            // Its errors name the dataset; said of this plan's setting.
            ReidDataset::load(&self.setup.data.data_root, name).map_err(|e| {
                match Error::as_bad_setting(&e) {
                    Some(b) if b.setting == Setting::Dataset => {
                        Error::bad_setting(setting, &b.value, b.reason.clone()).into()
                    }
                    _ => e,
                }
            })?;
        }
        let model = self.model.fresh(1);
        model.validate()?;
        self.pretrained.weights(model.depth)?;
        Ok(method)
    }
}

/// A step's evaluation, cached under the evaluation plan's command line and the
/// checkpoint's size and modification time: a checkpoint written again (a step
/// retrained) is evaluated again.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct EvalKey {
    command: String,
    checkpoint_bytes: u64,
    checkpoint_modified_ns: u128,
}

#[derive(Serialize, Deserialize)]
struct CachedScore {
    dataset: String,
    #[serde(rename = "mAP")]
    map: f64,
    rank1: f64,
}

#[derive(Serialize, Deserialize)]
struct CachedEval {
    key: EvalKey,
    scores: Vec<CachedScore>,
}

fn eval_key(plan: &EvalPlan) -> Result<EvalKey> {
    let ck = plan.ckpt.join(LATEST);
    let meta = std::fs::metadata(&ck).with_context(|| format!("no checkpoint {}", ck.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(EvalKey {
        command: plan.argv().command_line(),
        checkpoint_bytes: meta.len(),
        checkpoint_modified_ns: modified,
    })
}

/// (mAP, rank-1) per dataset of the model in `ckpt`, evaluated or read back from `cache`.
fn scores(
    engine: &Engine,
    ckpt: &Path,
    datasets: &[String],
    cache: &Path,
) -> Result<Vec<(String, f64, f64)>> {
    let plan = engine.eval_plan(ckpt, datasets, None);
    let key = eval_key(&plan)?;
    let cached = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| serde_json::from_str::<CachedEval>(&t).ok())
        .filter(|c| c.key == key);
    if let Some(c) = cached {
        engine.announce(&plan.argv());
        engine.line(format!(
            "  reusing the evaluation in {} (same checkpoint)",
            cache.display()
        ));
        return Ok(c
            .scores
            .into_iter()
            .map(|s| (s.dataset, s.map, s.rank1))
            .collect());
    }
    let rows = engine.evaluate(&plan)?;
    let mut out = Vec::new();
    for name in datasets {
        let row = rows
            .iter()
            .find(|r| &r.dataset == name)
            .with_context(|| format!("agd evaluate reported no {name}"))?;
        out.push((name.clone(), row.map, row.rank1));
    }
    let entry = CachedEval {
        key,
        scores: out
            .iter()
            .map(|(dataset, map, rank1)| CachedScore {
                dataset: dataset.clone(),
                map: *map,
                rank1: *rank1,
            })
            .collect(),
    };
    crate::io::create_dir(cache.parent().expect("an evaluations folder"))?;
    crate::io::write_atomic(cache, serde_json::to_string_pretty(&entry)?.as_bytes())?;
    Ok(out)
}

/// Runs the sequence into `plan.logs_dir`; returns every step's results.
pub fn run(plan: &SequencePlan) -> Result<Vec<StepResult>> {
    let started = Instant::now();
    let method = plan.validate()?;
    // Checked before any folder is created: a typo leaves nothing behind.
    plan.setup.device.select()?;
    let log = crate::stage::open_log(&plan.logs_dir, plan, false, true)?;
    let n = plan.datasets.len();
    log.line(format!(
        "lifelong sequence {} ({n} steps), method {}{}",
        plan.datasets.join(" → "),
        method.label,
        if plan.unseen.is_empty() {
            String::new()
        } else {
            format!("; unseen: {}", plan.unseen.join(", "))
        }
    ));
    let engine = Engine::new(plan.templates(), &log, plan.logs_dir.join("configs"));
    let mut steps = Vec::new();
    for step in 1..=n {
        let dataset = &plan.datasets[step - 1];
        let logs = plan.step_dir(step);
        if step == 1 {
            log.line(format!("step 1/{n}: the base model on {dataset}"));
            engine.train_base(dataset, &logs)?;
        } else {
            let previous = plan.step_dir(step - 1);
            let dreams = if method.distills() {
                log.line(format!(
                    "step {step}/{n}: dreaming every class of the step-{} model (DeepInversion)",
                    step - 1
                ));
                let dir = plan.dreams_dir(step);
                engine.invert(&previous, &dir)?;
                Some(dir)
            } else {
                None
            };
            log.line(format!(
                "step {step}/{n}: learning {dataset} ({})",
                method.label
            ));
            engine.learn(&method, dataset, &previous, dreams.as_deref(), &logs)?;
        }
        let mut evaluated = plan.datasets[..step].to_vec();
        evaluated.extend(plan.unseen.iter().cloned());
        log.line(format!(
            "step {step}/{n}: the model on {}",
            evaluated.join(", ")
        ));
        let scores = scores(&engine, &logs, &evaluated, &plan.evaluation_file(step))?;
        steps.push(StepResult::new(
            step,
            dataset,
            &plan.datasets[..step],
            scores,
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = results::Summary {
        datasets: &plan.datasets,
        unseen: &plan.unseen,
        method: &method,
        steps: &steps,
        wall_seconds: seconds,
    };
    log.line(summary.table().to_string());
    summary.write(&plan.logs_dir)?;
    log.line(format!(
        "results: {0}/results.md, {0}/results.png, {0}/results.json ({seconds:.0} s)",
        plan.logs_dir.display()
    ));
    log.succeeded();
    Ok(steps)
}
