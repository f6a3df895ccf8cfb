//! `agd train`, `agd incremental`, `agd incremental-x`: flags → plans
//! ([`crate::train::plan`]); the stages run in the library.

use super::args::{
    BaseModelArgs, CheckpointModelArgs, IncrementalArgs, LoopArgs, ModelArgs, TrainArgs,
};
use crate::model::checkpoint::Pretrained;
use crate::model::choice::{DEFAULT_DEPTH, DEFAULT_LAST_STRIDE, DEFAULT_POOLING};
use crate::model::ModelChoice;
use crate::train::plan::{BasePlan, IncrementalPlan, Learning, LoopPlan, OldImages, RANDOM_INIT};
use anyhow::{Context, Result};
use clap::Args;
use std::path::Path;

/// The model a run's flags ask for.
pub trait ModelFlags: Args {
    fn choice(&self) -> ModelChoice;
}

/// `train`'s flags always have values (the reference's defaults); a value equal to what a
/// fresh model gets anyway maps to `None`, so the plan, its rendered command line and that
/// line parsed again are one and the same.
impl ModelFlags for ModelArgs {
    fn choice(&self) -> ModelChoice {
        ModelChoice {
            depth: (self.depth != DEFAULT_DEPTH).then_some(self.depth),
            last_stride: (self.last_stride != DEFAULT_LAST_STRIDE).then_some(self.last_stride),
            pooling: (self.last_pooling != DEFAULT_POOLING).then_some(self.last_pooling),
            embedding: (self.embedding != self.depth.feature_width()).then_some(self.embedding),
        }
    }
}

/// As [`ModelArgs`], with an absent embedding width left to the depth.
impl ModelFlags for BaseModelArgs {
    fn choice(&self) -> ModelChoice {
        let width = self.depth.feature_width();
        ModelChoice {
            depth: (self.depth != DEFAULT_DEPTH).then_some(self.depth),
            last_stride: (self.last_stride != DEFAULT_LAST_STRIDE).then_some(self.last_stride),
            pooling: (self.last_pooling != DEFAULT_POOLING).then_some(self.last_pooling),
            embedding: self.embedding.filter(|&e| e != width),
        }
    }
}

impl ModelFlags for CheckpointModelArgs {
    fn choice(&self) -> ModelChoice {
        ModelChoice {
            depth: self.depth,
            last_stride: self.last_stride,
            pooling: self.last_pooling,
            embedding: self.embedding,
        }
    }
}

impl<M: ModelFlags> LoopArgs<M> {
    pub fn plan(&self) -> LoopPlan {
        LoopPlan {
            gpu: self.device.gpu.clone(),
            seed: self.seed,
            data_root: self.data.data_root.clone(),
            dataset: self.dataset.clone(),
            height: self.data.height,
            width: self.data.width,
            batch_size: self.batch_size,
            resume: self.resume.clone(),
            epochs: self.epochs,
            epochs_decay: self.epochs_decay.clone(),
            logs_dir: self.logs_dir.clone(),
            save_freq: self.save_freq,
            optimizer: self.optimizer,
            warmup: self.warmup,
            learning_rate: self.learning_rate,
            evaluate: self.evaluate,
            peers: self.peers,
            re: self.augment.re,
            re_area: self.augment.re_area,
            model: self.model.choice(),
            compute: self.compute.choice(),
            deterministic: self.deterministic,
        }
    }
}

/// What `--pretrained` asks for: the default file, random initialisation (`none`), or
/// this file.
pub fn pretrained(flag: Option<&Path>) -> Pretrained {
    match flag {
        None => Pretrained::Found,
        Some(p) if p.as_os_str() == RANDOM_INIT => Pretrained::Random,
        Some(p) => Pretrained::File(p.to_path_buf()),
    }
}

impl TrainArgs {
    pub fn plan(&self) -> BasePlan {
        BasePlan {
            run: self.run.plan(),
            pretrained: pretrained(self.pretrained.as_deref()),
        }
    }
}

impl IncrementalArgs {
    /// The flags given with `--finetune` that it does not use (it learns from the new data
    /// alone), as `--flag value`: the CLI warns about each rather than drop them silently.
    pub fn ignored_by_finetune(&self) -> Vec<String> {
        if !self.finetune {
            return Vec::new();
        }
        let mut ignored = Vec::new();
        if let Some(c) = &self.algo_config {
            ignored.push(format!("--algo-config {}", c.display()));
        }
        if self.inversion_dir != std::path::Path::new(crate::train::plan::DEFAULT_INVERSION_DIR) {
            ignored.push(format!("--inversion-dir {}", self.inversion_dir.display()));
        }
        if self.exemplars != crate::train::plan::DEFAULT_EXEMPLARS {
            ignored.push(format!("--exemplars {}", self.exemplars));
        }
        ignored
    }

    /// The plan of `agd incremental` (`augmented`: `agd incremental-x`).
    pub fn plan(&self, augmented: bool) -> Result<IncrementalPlan> {
        let learning = if self.finetune {
            Learning::Finetune
        } else {
            let example = if augmented {
                "inverXion"
            } else {
                "res-triangle"
            };
            let algo_config = self.algo_config.clone().with_context(|| {
                format!("--algo-config is required: a distillation config such as configs/{example}.yaml (or --finetune for the baseline without distillation)")
            })?;
            if self.new_data_distillation {
                Learning::NewData { algo_config }
            } else {
                let old_images = match &self.exemplar_dataset {
                    Some(name) => OldImages::Real(name.clone()),
                    None => OldImages::Dreamed(self.inversion_dir.clone()),
                };
                Learning::Distill {
                    algo_config,
                    old_images,
                    exemplars: self.exemplars,
                }
            }
        };
        Ok(IncrementalPlan {
            run: self.run.plan(),
            augmented,
            previous: self.previous.clone(),
            learning,
            old_dataset: self.old_dataset.clone(),
            warnings: self
                .ignored_by_finetune()
                .into_iter()
                .map(|flag| format!("--finetune learns from the new data alone: ignoring {flag}"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn incremental(args: &[&str]) -> super::IncrementalArgs {
        let argv = ["agd", "incremental"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Incremental(a) => a,
            _ => unreachable!("an incremental command line"),
        }
    }

    #[test]
    fn flags_finetuning_does_not_use_are_reported() {
        let a = incremental(&[
            "--finetune",
            "--algo-config",
            "x.yaml",
            "--inversion-dir",
            "d",
        ]);
        assert_eq!(
            a.ignored_by_finetune(),
            ["--algo-config x.yaml", "--inversion-dir d"]
        );
        assert!(incremental(&["--finetune"])
            .ignored_by_finetune()
            .is_empty());
        assert!(
            incremental(&["--algo-config", "x.yaml", "--inversion-dir", "d"])
                .ignored_by_finetune()
                .is_empty()
        );
    }
}
