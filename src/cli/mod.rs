//! The `agd` command line: flags as in the reference scripts, one module per subcommand.

pub mod args;
mod demo;
pub mod evaluate;
mod plot;
mod synth;

use crate::error::Setting;
use crate::inversion::InvertPlan;
use crate::sequence::SequencePlan;
use crate::train::plan::{BasePlan, IncrementalPlan};
use anyhow::Result;
use args::*;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Data-free incremental person re-identification (Augmented Geometric Distillation).
#[derive(Parser, Debug)]
#[command(name = "agd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; a stage's flags are its plan's fields.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the base model on task 1 (cross-entropy + triplet).
    Train(BasePlan),
    /// Dream images of every old identity back out of a trained model (DeepInversion).
    Invert(InvertPlan),
    /// Learn a new task while distilling the old model's geometry on dreamed images (GD, simGD).
    Incremental(IncrementalPlan),
    /// `incremental` with augmented distillation across `--peers` views (AGD).
    #[command(name = "incremental-x")]
    IncrementalX(IncrementalPlan),
    /// mAP and CMC of checkpoints on one or more datasets, optionally re-ranked.
    Evaluate(EvaluateArgs),
    /// Write a synthetic Market-style dataset of rendered people.
    Synth(SynthArgs),
    /// The whole method on synthetic data: base, invert, finetune/GD/simGD/AGD, evaluate.
    Demo(DemoArgs),
    /// Lifelong learning over several datasets: base on the first, then for each next one
    /// invert, learn it (agd, gd, simgd, finetune or a config), evaluate on all seen so far.
    Sequence(SequencePlan),
    /// Redraw `curves.png` of training logs folders from their `metrics.csv`.
    Plot(PlotArgs),
}

/// Adds the reference's underscore spelling (`--r_feature`) of every dashed flag
/// (`--r-feature`), so commands from the reference README run unchanged.
/// Also lets a later flag override an earlier one, as argparse does, so scripts can
/// append overrides to a base command line.
fn with_underscore_aliases(cmd: clap::Command) -> clap::Command {
    cmd.args_override_self(true)
        .mut_args(|arg| match arg.get_long().map(str::to_owned) {
            Some(long) if long.contains('-') => arg.alias(long.replace('-', "_")),
            _ => arg,
        })
}

/// The full command: the incremental steps' reference defaults (`main_incremental*.py`'s,
/// where they differ from `main.py`'s: [`IncrementalPlan::with_reference_defaults`]) and
/// underscore aliases included.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("incremental", |c| {
            IncrementalPlan::with_reference_defaults(c, false)
        })
        .mut_subcommand("incremental-x", |c| {
            IncrementalPlan::with_reference_defaults(c, true)
        })
        .mut_subcommands(with_underscore_aliases)
}

/// The parsed command line, with what the subcommand itself says put in its plan.
fn settle(mut cli: Cli) -> Cli {
    if let Command::IncrementalX(plan) = &mut cli.command {
        plan.augmented = true;
    }
    cli
}

/// Parses the process arguments (exits with clap's message on bad flags).
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

/// Parses the given arguments (exits with clap's message on bad flags).
pub fn parse_from<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().get_matches_from(args);
    settle(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// Parses the given arguments, returning clap's error instead of exiting.
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::from_arg_matches(&command().try_get_matches_from(args)?).map(settle)
}

/// Maps the command line to its plan and runs the stage. Each stage sets its own memory
/// policy ([`crate::alloc`]).
pub fn run(cli: Cli) -> Result<()> {
    if let Some(dist) = cli.command.dist() {
        if dist.nproc_per_node == 0 {
            crate::bad_setting!(Setting::NprocPerNode, 0, "at least 1 worker process");
        }
        // `--nproc-per-node N` starts the workers, unless this is one of them (or a
        // rank that torchrun or a cluster script started).
        if dist.nproc_per_node > 1 && crate::dist::World::from_env()?.is_none() {
            return crate::dist::spawn_workers(dist.nproc_per_node);
        }
    }
    match cli.command {
        Command::Train(plan) => crate::train::run_base(&plan).map(drop),
        Command::Invert(plan) => crate::inversion::run(&plan),
        Command::Incremental(plan) | Command::IncrementalX(plan) => {
            crate::train::run_incremental(&plan).map(drop)
        }
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Demo(args) => match &args.seeds {
            Some(seeds) => crate::demo::run_seeds(&args.plan(), seeds).map(drop),
            None => crate::demo::run(&args.plan()).map(drop),
        },
        Command::Sequence(plan) => crate::sequence::run(&plan).map(drop),
        Command::Plot(args) => plot::run(&args),
    }
}

impl Command {
    /// The data-parallel options of the stage, when it can run on several processes.
    fn dist(&self) -> Option<&crate::dist::DistOptions> {
        match self {
            Command::Evaluate(args) => Some(&args.plan.dist),
            Command::Invert(plan) => Some(&plan.dist),
            Command::Train(plan) => Some(&plan.run.dist),
            Command::Incremental(plan) | Command::IncrementalX(plan) => Some(&plan.run.dist),
            _ => None,
        }
    }
}

/// The flag that carries a setting, as `--long` (`-s/--long` when it has a short name),
/// found by the setting's field among the subcommands' flags: the plans define the flags,
/// so a renamed flag is named rightly here too.
pub fn flag(setting: Setting) -> &'static str {
    static FLAGS: OnceLock<HashMap<String, String>> = OnceLock::new();
    let flags = FLAGS.get_or_init(|| {
        let mut flags = HashMap::new();
        for sub in command().get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else {
                    continue;
                };
                let name = match arg.get_short() {
                    Some(short) => format!("-{short}/--{long}"),
                    None => format!("--{long}"),
                };
                flags.entry(arg.get_id().to_string()).or_insert(name);
            }
        }
        flags
    });
    flags
        .get(setting.field())
        .map_or(setting.name(), String::as_str)
}

/// How a program of agd (the binary, the examples) ends: on an error, one line
/// `error: <message>` ([`message`]) on stderr and in the log of every run that failed
/// ([`crate::logging::record_failure`]), and a failure exit code; never a backtrace.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let message = message(&err);
            crate::logging::record_failure(&message);
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as the command line reports it: the chain of causes joined as anyhow's `{:#}`
/// joins them, with every setting the library names replaced by the flag that carried it.
pub fn message(err: &anyhow::Error) -> String {
    err.chain()
        .map(|e| match e.downcast_ref::<crate::error::Error>() {
            Some(e) => e.describe(|s| flag(s).to_string(), message),
            None => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_named_by_the_flag_that_carries_it() {
        for &setting in Setting::ALL {
            assert!(
                flag(setting).starts_with('-'),
                "{setting:?}: no subcommand has a flag for field `{}`",
                setting.field()
            );
        }
        assert_eq!(flag(Setting::Gpu), "-g/--gpu");
        assert_eq!(flag(Setting::Checkpoint), "-c/--ckpt");
        assert_eq!(flag(Setting::Datasets), "--datasets");
        assert_eq!(flag(Setting::Dataset), "--dataset");
        assert_eq!(flag(Setting::LastPooling), "--last-pooling");
        assert_eq!(flag(Setting::ImageLr), "--lr");
        assert_eq!(flag(Setting::RandomErasing), "--re");
    }
}
