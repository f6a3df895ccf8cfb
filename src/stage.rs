//! What every pipeline stage shares: the plan it runs renders the `agd` command line that
//! reproduces it ([`Argv`]), the stage's `log.txt` starts with that line, and the run's
//! seed is fixed (drawn and logged when none was given).
//!
//! Stages are library functions over plain plans (`train::run_base`,
//! `train::run_incremental`, `inversion::run`, `eval::run`, `sequence::run`, `demo::run`);
//! the CLI only maps flags to plans, and `sequence` and `demo` build theirs from templates
//! through one engine (`sequence::Engine`).

use crate::error::Setting;
use crate::logging::{Claim, Logger};
use crate::options::{leaves, Leaf};
use crate::record::Recipe;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

/// A stage's plan: its options are its fields (clap derives its flags from them), and it
/// renders the command line that reruns it.
pub trait StagePlan: clap::Args + Serialize {
    /// The stage's subcommand.
    const SUBCOMMAND: &'static str;

    /// The setting naming the folder a run of the stage writes (its logs, for most).
    const FOLDER: Setting = Setting::LogsDir;

    /// The stage's subcommand: its flags with the defaults this plan is compared against.
    fn command(&self) -> clap::Command {
        Self::augment_args(clap::Command::new(Self::SUBCOMMAND))
    }

    /// The command line that reproduces the plan.
    fn argv(&self) -> Argv {
        Argv::of(&self.command(), self)
    }
}

/// A plan's command line, built flag by flag. Flags equal to the subcommand's default are
/// left out, so the line says what is particular to the run; the CLI tests parse rendered
/// lines back and compare the plans, so a rendering that would rerun something else
/// fails them.
#[derive(Clone, Debug)]
pub struct Argv(Vec<String>);

impl Argv {
    /// `agd <subcommand>`.
    pub fn new(subcommand: &str) -> Self {
        Self(vec![subcommand.to_string()])
    }

    /// The command line that reproduces `plan` as `command`'s subcommand: the flag of every
    /// field whose value differs from the flag's default, in field order.
    pub fn of<T: Serialize + ?Sized>(command: &clap::Command, plan: &T) -> Self {
        let mut argv = Self::new(command.get_name());
        argv.flags_of(command, plan);
        argv
    }

    /// The flags of `values`' fields (a plan, or one group of its options) that differ
    /// from `command`'s defaults. A field with no flag in `command` is not an option there
    /// and is left out; a flag with a short name is written short, as the reference's
    /// scripts are (`-g 0 -b 64`).
    pub fn flags_of<T: Serialize + ?Sized>(
        &mut self,
        command: &clap::Command,
        values: &T,
    ) -> &mut Self {
        for (arg, values) in off_default(command, values) {
            let name = match (arg.get_short(), arg.get_long()) {
                (Some(short), _) => format!("-{short}"),
                (None, Some(long)) => format!("--{long}"),
                (None, None) => continue,
            };
            self.0.push(name);
            self.0.extend(values);
        }
        self
    }

    /// The flags of one group of options (a struct clap flattens into a stage's plan)
    /// that differ from the group's own defaults.
    pub fn group<T: clap::Args + Serialize>(&mut self, values: &T) -> &mut Self {
        self.flags_of(&T::augment_args(clap::Command::new("group")), values)
    }

    /// `agd …`, quoted for a POSIX shell so it can be pasted.
    pub fn command_line(&self) -> String {
        let quoted: Vec<String> = self
            .0
            .iter()
            .map(|a| {
                shlex::try_quote(a)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| a.replace('\0', ""))
            })
            .collect();
        format!("agd {}", quoted.join(" "))
    }
}

/// The flags of `command` that `values`' fields (a plan, or one group of its options) set
/// off their defaults, in field order, each with its values (none for a switch that is
/// on). A field with no flag in `command` is not an option there and is left out.
pub fn off_default<'c, T: Serialize + ?Sized>(
    command: &'c clap::Command,
    values: &T,
) -> Vec<(&'c clap::Arg, Vec<String>)> {
    let mut flags = Vec::new();
    for (id, leaf) in leaves(values) {
        let Leaf::Values(values) = leaf else {
            continue;
        };
        let Some(arg) = command.get_arguments().find(|a| a.get_id() == id) else {
            continue;
        };
        if !arg.get_action().takes_values() {
            if values == ["true"] {
                flags.push((arg, Vec::new()));
            }
            continue;
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if values != defaults {
            flags.push((arg, values));
        }
    }
    flags
}

/// Opens the `log.txt` of a stage of `plan` in `dir`, claiming the folder for the plan's
/// recipe (a folder without a record is taken over only if `adopt`: [`Recipe::claim`]),
/// and records the command line that reproduces it.
pub fn open_log<P: StagePlan>(dir: &Path, plan: &P, adopt: bool, echo: bool) -> Result<Logger> {
    open_log_as(dir, plan, &Recipe::of(plan), adopt, echo)
}

/// [`open_log`] with the recipe given.
pub fn open_log_as<P: StagePlan>(
    dir: &Path,
    plan: &P,
    recipe: &Recipe,
    adopt: bool,
    echo: bool,
) -> Result<Logger> {
    let claim = Claim {
        recipe,
        folder: P::FOLDER,
        adopt,
    };
    let log = Logger::open(dir, &claim, echo)?;
    log.line(plan.argv().command_line());
    Ok(log)
}

/// The seed of a run: the given one, or one drawn now and logged so the run can be
/// repeated. Seeds libtorch's generator too.
pub fn seed(given: Option<u64>, log: &Logger) -> u64 {
    let seed = given.unwrap_or_else(|| rand::random::<u32>() as u64);
    if given.is_none() {
        log.line(format!(
            "no --seed given: using seed {seed} (pass -s {seed} to repeat this run)"
        ));
    }
    tch::manual_seed(seed as i64);
    seed
}
