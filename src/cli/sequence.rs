//! `agd sequence`: flags → [`SequencePlan`]; the sequence runs in [`crate::sequence::run`].

use super::args::SequenceArgs;
use super::train::{pretrained, ModelFlags};
use crate::sequence::SequencePlan;

impl SequenceArgs {
    pub fn plan(&self) -> SequencePlan {
        let d = &self.dreaming;
        SequencePlan {
            datasets: self.datasets.clone(),
            unseen: self.unseen.clone(),
            method: self.method.clone(),
            logs_dir: self.logs_dir.clone(),
            gpu: self.device.gpu.clone(),
            seed: self.seed,
            data_root: self.data.data_root.clone(),
            height: self.data.height,
            width: self.data.width,
            base_epochs: self.base_epochs,
            base_epochs_decay: self.base_epochs_decay.clone(),
            epochs: self.epochs,
            epochs_decay: self.epochs_decay.clone(),
            batch_size: self.batch_size,
            warmup: self.warmup,
            optimizer: self.optimizer,
            learning_rate: self.learning_rate,
            evaluate: self.evaluate,
            peers: self.peers,
            re: self.augment.re,
            re_area: self.augment.re_area,
            model: self.model.choice(),
            pretrained: pretrained(self.pretrained.as_deref()),
            exemplars: self.exemplars,
            bs: d.bs,
            shots: d.shots,
            iters: d.iters,
            coefficients: d.weights.coefficients(),
            stages: d.weights.stages(),
            dream_format: d.weights.dream_format,
        }
    }
}
