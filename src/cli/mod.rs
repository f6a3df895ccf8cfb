//! The `agd` command line: flags as in the reference scripts, one module per subcommand.

pub mod args;
mod demo;
pub mod evaluate;
mod invert;
mod plot;
mod sequence;
mod synth;
pub mod train;

use crate::error::{About, AnotherRun, BadSetting, Occupied, Setting};
use crate::eval::CheckpointsFailed;
use crate::model::choice::Contradiction;
use crate::train::plan::LoopPlan;
use anyhow::Result;
use args::*;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Data-free incremental person re-identification (Augmented Geometric Distillation).
#[derive(Parser, Debug)]
#[command(name = "agd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the base model on task 1 (cross-entropy + triplet).
    Train(TrainArgs),
    /// Dream images of every old identity back out of a trained model (DeepInversion).
    Invert(InvertArgs),
    /// Learn a new task while distilling the old model's geometry on dreamed images (GD, simGD).
    Incremental(IncrementalArgs),
    /// `incremental` with augmented distillation across `--peers` views (AGD).
    #[command(name = "incremental-x")]
    IncrementalX(IncrementalArgs),
    /// mAP and CMC of checkpoints on one or more datasets, optionally re-ranked.
    Evaluate(EvaluateArgs),
    /// Write a synthetic Market-style dataset of rendered people.
    Synth(SynthArgs),
    /// The whole method on synthetic data: base, invert, finetune/GD/simGD/AGD, evaluate.
    Demo(DemoArgs),
    /// Lifelong learning over several datasets: base on the first, then for each next one
    /// invert, learn it (agd, gd, simgd, finetune or a config), evaluate on all seen so far.
    Sequence(SequenceArgs),
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

/// The reference's `main_incremental*.py` defaults, where they differ from `main.py`'s
/// (the training loop's flags are shared, with `train`'s defaults).
/// Taken from [`LoopPlan::incremental_defaults`], so the flags and the plans that render
/// them agree.
fn with_incremental_defaults(cmd: clap::Command, augmented: bool) -> clap::Command {
    let d = LoopPlan::incremental_defaults(augmented);
    cmd.mut_arg("dataset", |a| a.default_value(d.dataset.clone()))
        .mut_arg("batch_size", |a| a.default_value(d.batch_size.to_string()))
        .mut_arg("epochs", |a| a.default_value(d.epochs.to_string()))
        .mut_arg("epochs_decay", |a| {
            a.default_values(d.epochs_decay.iter().map(ToString::to_string))
        })
        .mut_arg("save_freq", |a| a.default_value(d.save_freq.to_string()))
        .mut_arg("warmup", |a| a.default_value(d.warmup.to_string()))
        .mut_arg("peers", |a| a.default_value(d.peers.to_string()))
}

/// The full command: per-script defaults and underscore aliases included.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("incremental", |c| with_incremental_defaults(c, false))
        .mut_subcommand("incremental-x", |c| with_incremental_defaults(c, true))
        .mut_subcommands(with_underscore_aliases)
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
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Parses the given arguments, returning clap's error instead of exiting.
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::from_arg_matches(&command().try_get_matches_from(args)?)
}

/// Maps the command line to its plan and runs the stage. Each stage sets its own memory
/// policy ([`crate::alloc`]).
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => crate::train::run_base(&args.plan()).map(drop),
        Command::Invert(args) => crate::inversion::run(&args.plan()),
        Command::Incremental(args) => crate::train::run_incremental(&args.plan(false)?).map(drop),
        Command::IncrementalX(args) => crate::train::run_incremental(&args.plan(true)?).map(drop),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Demo(args) => match &args.seeds {
            Some(seeds) => crate::demo::run_seeds(&args.plan(), seeds).map(drop),
            None => crate::demo::run(&args.plan()).map(drop),
        },
        Command::Sequence(args) => crate::sequence::run(&args.plan()).map(drop),
        Command::Plot(args) => plot::run(&args),
    }
}

/// The flag that carries a setting.
pub fn flag(setting: Setting) -> &'static str {
    use Setting::*;
    match setting {
        BatchSize => "--batch-size",
        Cameras => "--cameras",
        Checkpoint => "-c/--ckpt",
        Coarse => "--coarse",
        DataRoot => "--data-root",
        Dataset | DatasetPart => "--dataset",
        Datasets => "--datasets",
        Depth => "--depth",
        DreamFormat => "--dream-format",
        Embedding => "--embedding",
        Epochs => "--epochs",
        EpochsDecay => "--epochs-decay",
        ExemplarDataset => "--exemplar-dataset",
        Exemplars => "--exemplars",
        FeatureFile => "--features",
        FirstBnMultiplier => "--first-bn-multiplier",
        FullResIters => "--full-res-iters",
        GenerationDir => "--generation-dir",
        Gpu => "-g/--gpu",
        Height => "--height",
        Ids => "--ids",
        ImagesPerId => "--images-per-id",
        ImageLr => "--lr",
        InversionBatch => "--bs",
        InversionDir => "--inversion-dir",
        InversionResume | Resume => "--resume",
        L2 => "--l2",
        LastPooling => "--last-pooling",
        LastStride => "--last-stride",
        LearningRate => "--learning-rate",
        LogsDir => "--logs-dir",
        MainLossMultiplier => "--main-loss-multiplier",
        Method => "--method",
        Optimizer => "--optimizer",
        Peers => "--peers",
        Pretrained => "--pretrained",
        Previous => "--previous",
        RandomErasing => "--re",
        RandomErasingArea => "--re-area",
        RankList => "--rank-list",
        RankListN => "--rank-list-n",
        Recursive => "--recursive",
        RFeature => "--r-feature",
        SaveFeatures => "--save-features",
        Shard => "--shard",
        Shots => "--shots",
        Teacher => "--teacher",
        TestIds => "--test-ids",
        TvL1 => "--tv-l1",
        TvL2 => "--tv-l2",
        Unseen => "--unseen",
        Warmup => "--warmup",
        WarmupIters => "--warmup-iters",
        Width => "--width",
    }
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
        .map(|e| {
            if let Some(b) = e.downcast_ref::<BadSetting>() {
                format!("{} {}: {}", flag(b.setting), b.value, b.reason)
            } else if let Some(a) = e.downcast_ref::<About>() {
                match &a.value {
                    Some(v) => format!("{} {v}", flag(a.setting)),
                    None => flag(a.setting).to_string(),
                }
            } else if let Some(r) = e.downcast_ref::<AnotherRun>() {
                r.describe(flag(Setting::Resume), flag(Setting::LogsDir))
            } else if let Some(o) = e.downcast_ref::<Occupied>() {
                o.describe(flag(o.setting))
            } else if let Some(c) = e.downcast_ref::<Contradiction>() {
                c.describe(flag(c.setting))
            } else if let Some(f) = e.downcast_ref::<CheckpointsFailed>() {
                f.describe(message)
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}
