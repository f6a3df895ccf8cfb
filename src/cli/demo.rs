//! `agd demo`: flags → [`DemoPlan`]; the demo runs in [`crate::demo::run`].

use super::args::DemoArgs;
use crate::demo::{DemoPlan, Sizes};

impl DemoArgs {
    pub fn plan(&self) -> DemoPlan {
        let preset = if self.quick {
            Sizes::QUICK
        } else {
            Sizes::DEFAULT
        };
        DemoPlan {
            out: self.out.clone(),
            quick: self.quick,
            sizes: Sizes {
                ids: self.ids.unwrap_or(preset.ids),
                base_epochs: self.base_epochs.unwrap_or(preset.base_epochs),
                epochs: self.epochs.unwrap_or(preset.epochs),
                shots: self.shots.unwrap_or(preset.shots),
                low_res_iters: self.low_res_iters.unwrap_or(preset.low_res_iters),
                full_res_iters: self.full_res_iters.unwrap_or(preset.full_res_iters),
                warmup_iters: self.warmup_iters.unwrap_or(preset.warmup_iters),
                coarse: self.coarse.unwrap_or(preset.coarse),
                jitter: self.jitter.unwrap_or(preset.jitter),
                ..preset
            },
            seed: self.seed,
            device: self.device.clone(),
            re: self.re,
        }
    }
}
