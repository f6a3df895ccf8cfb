//! A training stage in a data-parallel run (docs/multi-gpu.md): the ranks join, agree that
//! they run the same agd with the same flags, start from rank 0's weights, split every
//! batch by identity, and sum their gradients; after every epoch they check that their
//! models are still one. By default (synchronised) N ranks compute what one process
//! computes over the same global batch; `--local-bn` is fast-reid's cheaper way, BatchNorm
//! and the losses within each rank and the gradients averaged.

use super::hooks::{EpochEnd, Hook};
use super::plan::LoopPlan;
use crate::data::Share;
use crate::dist::{Group, World};
use crate::model::{DataParallel, ReidModel, Role};
use crate::stage::Argv;
use anyhow::{bail, Result};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// This process's place among the ranks of a training run.
pub struct Ranks {
    pub group: Arc<Group>,
    /// Outputs gathered and BatchNorm synchronised over the ranks (not `--local-bn`).
    pub synchronised: bool,
    /// The device of this rank (its local rank's GPU, or the CPU), chosen once when it
    /// joins, and the line to log about `--deterministic` (none without it).
    pub device: tch::Device,
    pub determinism: Option<String>,
}

/// A stable hash of `text` (the same in every process of one agd build).
fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Ranks {
    /// Joins the run when PyTorch's environment makes this process one rank of several
    /// (`None` in a run of one), and checks that every rank runs this agd with the command
    /// line `argv`: ranks that would train different things stop at once.
    pub fn join(r: &LoopPlan, argv: &Argv) -> Result<Option<Self>> {
        let Some(world) = World::from_env()? else {
            return Ok(None);
        };
        let (device, determinism) = r.setup.device.select_for(Some(world.local_rank))?;
        let group = world.join_with(r.dist.timeout(), r.dist.backend(device)?)?;
        let recipe = format!("agd {} {}", env!("CARGO_PKG_VERSION"), argv.command_line());
        group.agree("agd version or command line", hash(&recipe))?;
        Ok(Some(Self {
            group: Arc::new(group),
            synchronised: !r.local_bn,
            device,
            determinism,
        }))
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The run's seed on every rank: the given one, or rank 0's draw (logged so the run
    /// can be repeated). Logs this rank's place, device and BatchNorm mode too.
    pub fn seed(
        &self,
        given: Option<u64>,
        log: &crate::logging::Logger,
        device: tch::Device,
    ) -> Result<u64> {
        log.line(format!(
            "rank {} of {} (pid {}, {}, {})",
            self.rank(),
            self.group.world(),
            std::process::id(),
            crate::device::describe(device),
            match self.synchronised {
                true => "BatchNorm and losses over the whole batch",
                false => "BatchNorm and losses within each rank (--local-bn)",
            }
        ));
        if given.is_some() {
            return Ok(crate::stage::seed(given, log));
        }
        let mut drawn = Tensor::from_slice(&[rand::random::<u32>() as i64]);
        self.group.broadcast(&mut drawn, 0)?;
        let seed = drawn.int64_value(&[0]) as u64;
        log.line(format!(
            "no --seed given: every rank uses rank 0's seed {seed} (pass -s {seed} to repeat this run)"
        ));
        Ok(crate::stage::seed(Some(seed), log))
    }

    /// How the loaders split every batch.
    pub fn share(&self) -> Share {
        Share {
            rank: self.rank(),
            world: self.group.world(),
            whole: self.synchronised,
        }
    }

    /// Makes `model` a replica of rank 0's (every parameter and buffer), and, when the run
    /// is synchronised, one whose training forward sees the whole batch.
    pub fn adopt(&self, model: &mut ReidModel) -> Result<()> {
        for e in model.params.entries() {
            let mut t = e.tensor.shallow_clone();
            tch::no_grad(|| self.group.broadcast(&mut t, 0))?;
        }
        self.attach(model);
        Ok(())
    }

    /// Gives `model` the ranks (the teacher's outputs are gathered too), without
    /// replacing its weights.
    pub fn attach(&self, model: &mut ReidModel) {
        model.parallel = self.synchronised.then(|| DataParallel {
            group: self.group.clone(),
            sync_bn: true,
        });
    }

    /// How the optimiser combines the ranks' gradients: their sum when each holds its part
    /// of the global loss's gradient, their mean when each has its own loss (`--local-bn`).
    pub fn reduce(&self) -> super::optimizer::Reduce {
        super::optimizer::Reduce {
            group: self.group.clone(),
            mean: !self.synchronised,
        }
    }

    /// Checks that every rank's model is the same, bit for bit; with `--local-bn`, every
    /// rank takes rank 0's BatchNorm statistics first (as DDP's `broadcast_buffers`), so
    /// that evaluations and checkpoints do not depend on the rank.
    fn check_replicas(&self, model: &ReidModel, epoch: usize) -> Result<()> {
        if !self.synchronised {
            for e in model.params.entries() {
                if matches!(e.role, Role::Buffer) && e.tensor.kind() == Kind::Float {
                    let mut t = e.tensor.shallow_clone();
                    tch::no_grad(|| self.group.broadcast(&mut t, 0))?;
                }
            }
        }
        let sums: Vec<Tensor> = model
            .params
            .entries()
            .iter()
            .flat_map(|e| {
                let t = e.tensor.detach().to_kind(Kind::Double);
                [t.sum(Kind::Double), t.square().sum(Kind::Double)]
            })
            .collect();
        let sums = Vec::<f64>::try_from(Tensor::stack(&sums, 0).to_device(tch::Device::Cpu))?;
        let digest = sums.iter().fold(0u64, |h, v| {
            h.rotate_left(5) ^ v.to_bits().wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        let all = self
            .group
            .all_gather(&Tensor::from_slice(&[digest as i64]))?;
        let all = Vec::<i64>::try_from(&all)?;
        if let Some(other) = all.iter().position(|&d| d != all[0]) {
            bail!(
                "after epoch {epoch}, rank {other}'s weights differ from rank 0's: the ranks \
                 drifted apart (a fault in the exchange, or ranks computing differently); the \
                 run stops before saving them"
            );
        }
        Ok(())
    }
}

/// The hook that keeps the ranks' models one ([`Ranks::check_replicas`]), after every
/// epoch and before its evaluation and checkpoint; it logs the share of the epoch that
/// went to exchanges.
pub struct Replicas<'a> {
    pub ranks: &'a Ranks,
    pub log: &'a crate::logging::Logger,
    /// [`crate::dist::exchanging_seconds`] when the epoch began.
    pub exchanged: f64,
}

impl Hook for Replicas<'_> {
    fn before_epoch(&mut self, _epoch: usize, _epochs: usize, _steps: usize) -> Result<()> {
        self.exchanged = crate::dist::exchanging_seconds();
        Ok(())
    }

    fn after_epoch(&mut self, e: &mut EpochEnd) -> Result<()> {
        let spent = crate::dist::exchanging_seconds() - self.exchanged;
        self.log.line(format!(
            "  exchanges between the ranks: {spent:.2} s of {:.2} s ({:.0}%)",
            e.seconds,
            100.0 * spent / e.seconds.max(1e-9)
        ));
        self.ranks.check_replicas(e.model, e.epoch)
    }
}
