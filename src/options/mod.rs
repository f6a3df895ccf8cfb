//! Every option of agd, defined once.
//!
//! An option is one field of a plain struct: its type, its default, its help and its flag
//! name all sit on that field. clap derives the command line from it (`#[derive(Args)]`,
//! shared groups `#[command(flatten)]`-ed into each stage's plan), serde (de)serialises it,
//! and one renderer ([`crate::stage::Argv::of`]) writes back the command line that
//! reproduces a plan, naming only the values that differ from the stage's defaults. Adding
//! a flag to a stage is adding a field to its plan (or to a group it flattens) and the code
//! that uses it.
//!
//! The groups here are the ones several stages share: where the model runs
//! ([`DeviceOptions`]), where the data is and how images are shaped ([`DataOptions`],
//! [`ImageSize`]), and random erasing ([`AugmentOptions`]). Each stage's own options live
//! in its plan (`train::plan`, `inversion::plan`, `eval::plan`, `sequence`, `demo`).

mod flags;

pub use flags::{leaves, Leaf};

use crate::model::ComputeChoice;
use clap::{Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An enum's names, in order: `names!(Ty { Variant => "name", … })` gives `Ty::NAMES` (every
/// value with its name) and `Ty::name`. For enums read from files by hand-written parsers
/// (the distillation configs' `type`, `collapse`, `criterion`); flag values use
/// [`named_values!`].
#[macro_export]
macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value with its name, in order.
            pub const NAMES: &'static [(&'static str, Self)] = &[$(($name, Self::$variant)),+];

            /// The value's name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }
    };
}

/// One enum, one mapping to its names. `named_values!(Ty { Variant => "name" | "alias", … })`
/// gives `Ty::name` (the spelling of flags, checkpoint metadata and rendered plans),
/// `Ty::from_name` (the name or an alias), clap's `ValueEnum` (the names in `--help` and in
/// errors) and serde's (de)serialisation, all from that one list.
#[macro_export]
macro_rules! named_values {
    ($ty:ty { $($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            /// The value's name: its flag spelling, in files and rendered plans alike.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }

            /// The value a name (or one of its other accepted spellings) stands for.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name $(| $alias)* => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$variant),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(match self {
                    $(Self::$variant => clap::builder::PossibleValue::new($name)$(.alias($alias))*,)+
                })
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let given = <String as serde::Deserialize>::deserialize(d)?;
                Self::from_name(&given).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{given:?}: expected one of {}",
                        [$($name),+].join(", ")
                    ))
                })
            }
        }
    };
}

/// `impl Default` for option groups and plans: the values when no flag is given
/// ([`defaults`]), so a default is written once, on its field.
#[macro_export]
macro_rules! default_from_flags {
    ($($ty:ty),+) => {
        $(impl Default for $ty {
            fn default() -> Self {
                $crate::options::defaults()
            }
        })+
    };
}

/// A group's or a plan's values when no flag is given: clap's defaults, read from the
/// fields' attributes (the one place they are written).
pub fn defaults<T: Args + FromArgMatches>() -> T {
    parse_defaults(T::augment_args(Command::new("defaults")))
}

/// The values `command` gives when no flag is given. The command is built from a plan
/// type whose every field has a default or is optional, which the tests check for every
/// plan, so this cannot fail at run time.
pub fn parse_defaults<T: FromArgMatches>(command: Command) -> T {
    let matches = command
        .no_binary_name(true)
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every option of a plan has a default");
    T::from_arg_matches(&matches).expect("clap's defaults parse into their own type")
}

/// `command` with the defaults of `values` wherever they differ from the command's own:
/// a stage whose reference script defaults a shared option differently (the incremental
/// steps' batch size) states its values once, as a plan, and both its flags and the
/// command lines rendered from its plans take them from there.
pub fn with_defaults<T: Serialize>(command: Command, values: &T) -> Command {
    leaves(values)
        .into_iter()
        .fold(command, |command, (id, leaf)| match leaf {
            Leaf::Values(v) => command.mut_arg(id, |arg| {
                if arg.get_action().takes_values() {
                    arg.default_values(v)
                } else {
                    arg
                }
            }),
            Leaf::Absent => command,
        })
}

/// Where a stage's models run and how they compute: every stage that runs a model has all
/// of these, so a GPU inversion can be made as repeatable as a GPU training run.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceOptions {
    /// GPU ids as in the reference (`-g 0`); the first one is used. `-g cpu` or no id: CPU.
    /// Without CUDA agd falls back to the CPU.
    #[arg(short = 'g', long = "gpu", num_args = 0.., default_values_t = ["0".to_string()])]
    pub gpu: Vec<String>,
    #[command(flatten)]
    pub compute: ComputeChoice,
    /// Deterministic ATen and cuDNN algorithms and cuDNN's benchmark off, so a seeded GPU
    /// run and its resume repeat (slower; README, GPU). Without it the benchmark is on.
    #[arg(long)]
    pub deterministic: bool,
}

impl DeviceOptions {
    /// The device, with `--deterministic` applied; the line to log about the latter (none
    /// without it).
    pub fn select(&self) -> anyhow::Result<(tch::Device, Option<String>)> {
        self.select_for(None)
    }

    /// [`DeviceOptions::select`] for a data-parallel run's rank `local_rank` of its
    /// machine ([`crate::device::select_for`]).
    pub fn select_for(
        &self,
        local_rank: Option<usize>,
    ) -> anyhow::Result<(tch::Device, Option<String>)> {
        let device = crate::device::select_for(&self.gpu, local_rank)?;
        let note = self.deterministic.then(|| {
            let d = crate::device::set_deterministic(true);
            format!(
                "deterministic: ATen algorithms {} (ops without a deterministic kernel warn), cuDNN deterministic {}, benchmark {}, CUBLAS_WORKSPACE_CONFIG={}",
                d.algorithms,
                d.cudnn,
                d.benchmark,
                std::env::var("CUBLAS_WORKSPACE_CONFIG").unwrap_or_default()
            )
        });
        Ok((device, note))
    }
}

/// The input size of the models.
#[derive(Args, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    /// Input height.
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    /// Input width.
    #[arg(long, default_value_t = 128)]
    pub width: usize,
}

/// What a stage that trains shares with the others: where its models run, the seed of
/// its random streams, and the data it reads. One definition for `LoopPlan` (every
/// training stage) and `SequencePlan` (which runs them).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Seed of every random stream (of every stage); without it one is drawn and logged.
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub data: DataOptions,
}

crate::default_from_flags!(Setup);

/// Where the datasets are and how their images are shaped.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// Folder holding one folder per dataset (`<data-root>/<dataset>/…`).
    #[arg(long, value_name = "PATH", default_value = "data")]
    pub data_root: PathBuf,
    #[command(flatten)]
    pub size: ImageSize,
}

/// Random erasing of the training transform.
#[derive(Args, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugmentOptions {
    /// Random-erasing probability.
    #[arg(long, default_value_t = 0.5)]
    pub re: f64,
    /// Largest erased area fraction.
    #[arg(long, default_value_t = 0.4)]
    pub re_area: f64,
    /// Accepted for the reference's scripts; images are always preloaded.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub preload: bool,
}

default_from_flags!(DeviceOptions, ImageSize, DataOptions, AugmentOptions);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_default_to_their_flags_defaults() {
        let d = DeviceOptions::default();
        assert_eq!(d.gpu, ["0"]);
        assert!(!d.deterministic && !d.compute.amp);
        assert_eq!(
            ImageSize::default(),
            ImageSize {
                height: 256,
                width: 128
            }
        );
        assert_eq!(DataOptions::default().data_root, PathBuf::from("data"));
        assert_eq!(AugmentOptions::default().re, 0.5);
    }
}
