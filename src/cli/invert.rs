//! `agd invert`: flags → [`InvertPlan`]; the stage runs in [`crate::inversion::run`].

use super::args::{InversionWeightsArgs, InvertArgs};
use super::train::ModelFlags;
use crate::inversion::plan::DEFAULT_GENERATION_DIR;
use crate::inversion::prior::PriorWeights;
use crate::inversion::{Coefficients, InvertPlan, Stages};

impl InvertArgs {
    pub fn plan(&self) -> InvertPlan {
        InvertPlan {
            gpu: self.device.gpu.clone(),
            seed: self.seed,
            bs: self.bs,
            // Completing a folder writes into it; the library refuses two different ones.
            generation_dir: self
                .generation_dir
                .clone()
                .or_else(|| self.resume.clone())
                .unwrap_or_else(|| DEFAULT_GENERATION_DIR.into()),
            shots: self.shots,
            iters: self.iters,
            resume: self.resume.clone(),
            teacher: self.teacher.clone(),
            model: self.model.choice(),
            coefficients: self.weights.coefficients(),
            stages: self.weights.stages(),
            height: self.height,
            width: self.width,
            format: self.weights.dream_format,
            shard: self.shard,
            compute: self.compute.choice(),
        }
    }
}

impl InversionWeightsArgs {
    pub fn coefficients(&self) -> Coefficients {
        Coefficients {
            r_feature: self.r_feature,
            first_bn_multiplier: self.first_bn_multiplier,
            main_loss_multiplier: self.main_loss_multiplier,
            prior: PriorWeights {
                tv_l1: self.tv_l1,
                tv_l2: self.tv_l2,
                l2: self.l2,
            },
        }
    }

    pub fn stages(&self) -> Stages {
        Stages {
            lr: self.lr,
            low_res_iters: self.low_res_iters,
            full_res_iters: self.full_res_iters,
            warmup_iters: self.warmup_iters,
            jitter: self.jitter,
            coarse: self.coarse,
        }
    }
}
