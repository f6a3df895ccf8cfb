//! The `--algo-config` file (docs/method.md §4), `distillation: {type, factor, config, cross_factor?}`,
//! read with serde into the runtime [`Distillation`]. Unknown keys anywhere are errors, so a
//! misspelt setting never silently falls back to a default.
//!
//! **Adding a distillation type** touches one enum and one function here: a variant of
//! [`Type`] with its YAML name in `Type::NAMES`, and its arm in [`Type::kind`], which reads the
//! type's `config` into a settings struct (`#[serde(deny_unknown_fields)]`, like
//! [`HintonSettings`]; [`NoSettings`] if it has none) and builds its [`DistillKind`]. The
//! compiler then asks for the maths in the parent module: the `DistillKind` variant and its
//! arms in `Distillation::loss` and `Distillation::type_name`.
//!
//! **Why the document is read twice.** Which keys `config` may hold depends on `type`, and YAML
//! may list `config` first. Serde would then have to buffer `config` until it has seen `type`,
//! and a buffered value has lost its line numbers and key path. So the first pass
//! ([`AlgoConfig`]) checks everything but what `config` holds and finds the type; the second
//! ([`settings`]) reads only `distillation.config`, as that type's settings struct. Both
//! stream from the text, so every error has the position of the value at fault.
//!
//! **Why values are checked inside their visitors** (`number`, `choice`, …) rather than after
//! deserialising: serde_yaml gives an error the key path and position of the value it is on
//! when the error is raised; raised afterwards, it would get the enclosing mapping's.
//!
//! **Errors** name the file and the full key (`distillation.config.T`), as the hand-written
//! schema walker this replaces did, and add `(line L, column C)`. serde_yaml hands errors over
//! as text, `path: message at line L column C`; [`Problem`] takes that apart, and re-phrases
//! the two messages serde writes itself for structs (unknown field, missing field) in the
//! config's terms: the full key, and what is allowed there.

use super::{Collapse, DistillKind, Distillation, PodnetCriterion};
use anyhow::{anyhow, Result};
use serde::de::value::{MapAccessDeserializer, MapDeserializer};
use serde::de::{self, DeserializeOwned, Deserializer, EnumAccess, IgnoredAny, MapAccess};
use serde::de::{SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

impl Distillation {
    /// Reads an `--algo-config` YAML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::yaml::read(path, "distillation config")?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses an `--algo-config` document; `origin` (the file name) prefixes every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        crate::yaml::check(text, origin)?;
        // Syntax errors and duplicate keys are the YAML's, whatever the schema says: checked
        // first, so that they are reported as such rather than as a schema error.
        serde_yaml::from_str::<serde_yaml::Value>(text)
            .map_err(|e| anyhow!("{origin}: not valid YAML: {e}"))?;
        let AlgoConfig {
            distillation,
            co_distillation,
        } = mapping(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| Problem::from(e).explain(origin, None))?;
        let kind = distillation
            .kind
            .kind(text)
            .map_err(|p| p.explain(origin, Some(distillation.kind)))?;
        Ok(Self {
            kind,
            factor: distillation.factor,
            cross_factor: distillation.cross_factor,
            unused_co_distillation: co_distillation,
        })
    }
}

/// Every config `type`, in the order docs/method.md §4 lists them (`Type::NAMES`, so that this list,
/// the parser and its "expected one of" never disagree).
pub const TYPES: [&str; Type::NAMES.len()] = {
    let mut names = [""; Type::NAMES.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Type::NAMES[i].0;
        i += 1;
    }
    names
};

/// A config's `type`: which loss, and so which settings its `config` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Cosine,
    Triangle,
    ResTriangle,
    SimRes,
    L1,
    L2,
    Relation,
    Hinton,
    Podnet,
    No,
    GeoDL,
    GeoDLxLUCIR,
    AlwaysBeDreaming,
}

// The YAML name of each type, in docs/method.md §4's order.
crate::names!(Type {
    Cosine => "cosine",
    Triangle => "triangle",
    ResTriangle => "res-triangle",
    SimRes => "sim-res",
    L1 => "l1",
    L2 => "l2",
    Relation => "relation",
    Hinton => "hinton",
    Podnet => "podnet",
    No => "no",
    GeoDL => "GeoDL",
    GeoDLxLUCIR => "GeoDLxLUCIR",
    AlwaysBeDreaming => "always-be-dreaming",
});

impl Type {
    /// The runtime loss of this type, its settings read from the document's
    /// `distillation.config` (pass two; `text` is the whole document).
    fn kind(self, text: &str) -> Result<DistillKind, Problem> {
        Ok(match self {
            Type::Cosine => plain(text, DistillKind::Cosine)?,
            Type::Triangle => plain(text, DistillKind::Triangle)?,
            Type::ResTriangle => plain(text, DistillKind::ResTriangle)?,
            Type::SimRes => plain(text, DistillKind::SimRes)?,
            Type::L1 => plain(text, DistillKind::L1)?,
            Type::L2 => plain(text, DistillKind::L2)?,
            Type::No => plain(text, DistillKind::No)?,
            Type::AlwaysBeDreaming => plain(text, DistillKind::AlwaysBeDreaming)?,
            Type::GeoDL => {
                let GeoDLSettings { _dim } = settings(text)?;
                DistillKind::GeoDL
            }
            Type::GeoDLxLUCIR => {
                let GeoDLxLUCIRSettings {
                    _dim,
                    geodl_factor,
                    cosine_factor,
                } = settings(text)?;
                DistillKind::GeoDLxLUCIR {
                    geodl_factor,
                    cosine_factor,
                }
            }
            Type::Relation => {
                let RelationSettings { normalize, p } = settings(text)?;
                DistillKind::Relation { normalize, p }
            }
            Type::Hinton => {
                let HintonSettings { temperature } = settings(text)?;
                DistillKind::Hinton { temperature }
            }
            Type::Podnet => {
                let PodnetSettings {
                    collapse,
                    criterion,
                    embedding_factor,
                    attention_factor,
                } = settings(text)?;
                DistillKind::Podnet {
                    collapse,
                    criterion,
                    embedding_factor,
                    attention_factor,
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for Type {
    /// By name; a YAML value of another kind is reported as what it is ("the number 3"), which
    /// serde's derived enum would not do (it reads any scalar as a name).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        leaf(d, "a type name", |got| {
            let what = match got {
                Got::Str(s) => match Type::NAMES.iter().find(|(n, _)| *n == s) {
                    Some((_, t)) => return Ok(*t),
                    None => format!("unknown type {s:?}"),
                },
                other => format!("{other} is not a type name"),
            };
            Err(format!("{what}; expected one of: {}", TYPES.join(", ")))
        })
    }
}

// ---- pass one: the file, all but what `config` holds ----------------------------------------

/// An `--algo-config` file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgoConfig {
    #[serde(deserialize_with = "mapping")]
    distillation: Section,
    /// `co_distillation.yaml`'s second section, which the reference's scripts never read (its
    /// `main_incremental.py` trains the `distillation` section alone): accepted whatever it
    /// holds, so that the reference's file loads, and reported as unused.
    #[serde(default, deserialize_with = "present")]
    co_distillation: bool,
}

/// The `distillation` section; the fields' order is that of "expected one of" in errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(rename = "type")]
    kind: Type,
    /// Weight of the distillation term in the training loss.
    #[serde(deserialize_with = "factor")]
    factor: f64,
    /// Named here so that `deny_unknown_fields` knows the key; what it holds depends on
    /// `type`, and pass two reads it.
    #[serde(default, rename = "config")]
    _config: IgnoredAny,
    /// `incremental-x` only (the command says so when it is missing).
    #[serde(default, deserialize_with = "cross_factor")]
    cross_factor: Option<f64>,
}

// ---- pass two: `distillation.config`, as the settings of one type ---------------------------

/// The document again, for `distillation.config` only: pass one has checked the other keys.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct ConfigOnly<T> {
    distillation: SectionConfig<T>,
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct SectionConfig<T> {
    #[serde(default, deserialize_with = "present_settings")]
    config: Option<T>,
}

const CONFIG: &str = "distillation.config";

/// The `distillation.config` of the document `text`, as the settings `T` of its type. An empty
/// (`config:`) or absent `config` reads as a mapping without keys.
fn settings<T: DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let file: ConfigOnly<T> = serde_yaml::from_str(text)?;
    match file.distillation.config {
        Some(settings) => Ok(settings),
        // No `config` key, hence no position either; the missing settings are its.
        None => T::deserialize(no_keys::<serde_yaml::Error>()).map_err(|e| Problem {
            path: CONFIG.into(),
            message: e.to_string(),
            location: None,
        }),
    }
}

/// The kind of a type without settings, once its `config` has been checked to hold none.
fn plain(text: &str, kind: DistillKind) -> Result<DistillKind, Problem> {
    let NoSettings {} = settings(text)?;
    Ok(kind)
}

/// The `config` of the types without settings: any key in it is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

/// `relation`; missing settings take the reference's defaults, plain Euclidean distances.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationSettings {
    #[serde(default, deserialize_with = "boolean")]
    normalize: bool,
    #[serde(default = "euclidean", deserialize_with = "pdist_norm")]
    p: f64,
}

fn euclidean() -> f64 {
    2.0
}

/// `hinton`; `T` has no default in the reference either.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HintonSettings {
    #[serde(rename = "T", deserialize_with = "temperature")]
    temperature: f64,
}

/// `GeoDL`. The reference requires `dim` but never uses it (its GFK takes the subspaces'
/// sizes from the batch); here it may be left out, and is checked when given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GeoDLSettings {
    #[serde(default, rename = "dim", deserialize_with = "unused_dim")]
    _dim: Option<u64>,
}

/// `GeoDLxLUCIR`: the weights of its two terms (no defaults in the reference) and GeoDL's
/// unused `dim`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GeoDLxLUCIRSettings {
    #[serde(default, rename = "dim", deserialize_with = "unused_dim")]
    _dim: Option<u64>,
    #[serde(rename = "GeoDL_factor", deserialize_with = "term_weight")]
    geodl_factor: f64,
    #[serde(deserialize_with = "term_weight")]
    cosine_factor: f64,
}

/// `podnet`; none of its settings has a default in the reference either.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodnetSettings {
    #[serde(deserialize_with = "collapse")]
    collapse: Collapse,
    #[serde(deserialize_with = "criterion")]
    criterion: PodnetCriterion,
    #[serde(deserialize_with = "podnet_weight")]
    embedding_factor: f64,
    #[serde(deserialize_with = "podnet_weight")]
    attention_factor: f64,
}

// ---- values ---------------------------------------------------------------------------------
// The `deserialize_with` functions of the fields above: each checks its value while serde_yaml
// is on it, so that the error carries the value's key path and position.

fn factor<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, |x| {
        if x < 0.0 {
            return Err(format!("{x} is negative; expected a weight >= 0"));
        }
        Ok(())
    })
}

fn cross_factor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d, |c| {
        if !(0.0..=1.0).contains(&c) {
            return Err(format!(
                "{c} is outside [0, 1]; it is the weight of the same-view teacher"
            ));
        }
        Ok(())
    })
    .map(Some)
}

fn pdist_norm<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, |p| {
        if p < 0.0 {
            return Err(format!("{p} is negative; expected p >= 0"));
        }
        Ok(())
    })
}

fn temperature<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, |t| {
        if t <= 0.0 {
            return Err(format!("{t}; the temperature must be > 0"));
        }
        Ok(())
    })
}

fn podnet_weight<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, |w| {
        if w < 0.0 {
            return Err(format!("{w} is negative; expected >= 0"));
        }
        Ok(())
    })
}

fn term_weight<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d, |w| {
        if w < 0.0 {
            return Err(format!("{w} is negative; expected a weight >= 0"));
        }
        Ok(())
    })
}

/// GeoDL's `dim`: unused, but a dimension all the same (a positive integer), so that a value
/// meant for some other key is not taken silently.
fn unused_dim<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number(d, |x| {
        if x < 1.0 || x.fract() != 0.0 {
            return Err(format!(
                "{x} is not a dimension; expected a positive integer"
            ));
        }
        Ok(())
    })
    .map(|x| Some(x as u64))
}

/// Whether a key is present: its value, whatever it is, is skipped.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

fn collapse<'de, D: Deserializer<'de>>(d: D) -> Result<Collapse, D::Error> {
    choice(d, Collapse::NAMES)
}

fn criterion<'de, D: Deserializer<'de>>(d: D) -> Result<PodnetCriterion, D::Error> {
    choice(d, PodnetCriterion::NAMES)
}

/// A finite number (YAML integers count) that `check` accepts; `check` says what is wrong
/// with it otherwise.
fn number<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(f64) -> Result<(), String>,
) -> Result<f64, D::Error> {
    leaf(d, "a number", move |got| match &got {
        Got::Number(n) => {
            let x = n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("expected a finite number, got {got}"))?;
            check(x).map(|()| x)
        }
        _ => Err(format!("expected a number, got {got}")),
    })
}

fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    leaf(d, "true or false", |got| match got {
        Got::Bool(b) => Ok(b),
        other => Err(format!("expected true or false, got {other}")),
    })
}

/// One of a fixed set of names.
fn choice<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    names: &'static [(&'static str, T)],
) -> Result<T, D::Error> {
    leaf(d, "a name", move |got| {
        if let Got::Str(s) = got {
            if let Some((_, t)) = names.iter().find(|(n, _)| *n == s) {
                return Ok(*t);
            }
        }
        let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        Err(format!("expected one of {}, got {got}", all.join(", ")))
    })
}

/// A mapping (the file, `distillation`) read as `T`; anything else is an error saying what it
/// is, where serde's derived struct would also accept a list of the fields' values.
fn mapping<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Visit(Mapping {
        null_is_empty: false,
        into: PhantomData,
    }))
}

/// A `config` read as the settings `T`: like [`mapping`], but `config:` (null) has no keys.
fn present_settings<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    d.deserialize_any(Visit(Mapping {
        null_is_empty: true,
        into: PhantomData,
    }))
    .map(Some)
}

/// A mapping without keys, to read an empty `config` as settings from.
fn no_keys<'de, E: de::Error>() -> MapDeserializer<'de, std::iter::Empty<((), ())>, E> {
    MapDeserializer::new(std::iter::empty())
}

/// Reads one value with `read`, which makes a `T` of what it got or says what it expected.
fn leaf<'de, D, T, F>(d: D, expecting: &'static str, read: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Got<'_>) -> Result<T, String>,
{
    d.deserialize_any(Visit(Leaf { expecting, read }))
}

/// A YAML value, as far as an error message says what it is when its key takes another kind.
enum Got<'a> {
    Null,
    Bool(bool),
    Number(serde_yaml::Number),
    Str(&'a str),
    List,
    Mapping,
    Tagged(String),
}

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Got::Null => f.write_str("nothing (null)"),
            Got::Bool(b) => write!(f, "the boolean {b}"),
            Got::Number(n) => write!(f, "the number {n}"),
            Got::Str(s) => write!(f, "{s:?}"),
            Got::List => f.write_str("a list"),
            Got::Mapping => f.write_str("a mapping"),
            Got::Tagged(tag) => write!(f, "a value tagged !{tag}"),
        }
    }
}

/// What a value may be. [`Visit`] hands an `Expect` whatever value serde_yaml is on: a
/// mapping as itself, so that it can be read as a struct; anything else as a [`Got`].
trait Expect<'de>: Sized {
    type Value;
    fn expecting(&self) -> &'static str;
    fn got<E: de::Error>(self, got: Got<'_>) -> Result<Self::Value, E>;
    fn mapping<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        self.got(Got::Mapping)
    }
}

/// A scalar read by a function.
struct Leaf<F> {
    expecting: &'static str,
    read: F,
}

impl<'de, T, F: FnOnce(Got<'_>) -> Result<T, String>> Expect<'de> for Leaf<F> {
    type Value = T;

    fn expecting(&self) -> &'static str {
        self.expecting
    }

    fn got<E: de::Error>(self, got: Got<'_>) -> Result<T, E> {
        (self.read)(got).map_err(E::custom)
    }
}

/// A mapping read as the struct `T`.
struct Mapping<T> {
    /// Whether null (`config:`) reads as a mapping without keys.
    null_is_empty: bool,
    into: PhantomData<T>,
}

/// What [`Mapping`] says of a value that is not one; [`Problem::explain`] puts the key first.
const NOT_A_MAPPING: &str = "must be a mapping, got ";

impl<'de, T: Deserialize<'de>> Expect<'de> for Mapping<T> {
    type Value = T;

    fn expecting(&self) -> &'static str {
        "a mapping"
    }

    fn got<E: de::Error>(self, got: Got<'_>) -> Result<T, E> {
        match got {
            Got::Null if self.null_is_empty => T::deserialize(no_keys::<E>()),
            other => Err(E::custom(format!("{NOT_A_MAPPING}{other}"))),
        }
    }

    fn mapping<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// The serde visitor of every value above (see [`Expect`]).
struct Visit<X>(X);

impl<'de, X: Expect<'de>> Visitor<'de> for Visit<X> {
    type Value = X::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.expecting())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.got(Got::Null)
    }

    /// An empty document.
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.got(Got::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.0.got(Got::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.got(Got::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.got(Got::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.got(Got::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.got(Got::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        self.0.got(Got::List)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.mapping(map)
    }

    /// A tagged value (`!name value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (tag, _) = data.variant::<String>()?;
        self.0.got(Got::Tagged(tag))
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// A parse error taken apart: the key path it is at ("" for the top level), the message, and
/// where in the file, when serde_yaml knows.
struct Problem {
    path: String,
    message: String,
    location: Option<serde_yaml::Location>,
}

impl From<serde_yaml::Error> for Problem {
    /// serde_yaml writes `path: message at line L column C`, the path unless it is the top
    /// level and the position unless it is the very start.
    fn from(e: serde_yaml::Error) -> Self {
        let location = e.location();
        let mut text = e.to_string();
        if let Some(l) = &location {
            let at = format!(" at line {} column {}", l.line(), l.column());
            if text.ends_with(&at) {
                text.truncate(text.len() - at.len());
            }
        }
        // A path is dotted keys, and the only keys that make it into one are the schema's own
        // names: a prefix of other characters is part of the message.
        let is_path = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        let (path, message) = match text.split_once(": ") {
            Some((path, message)) if is_path(path) => (path.to_string(), message.to_string()),
            _ => (String::new(), text),
        };
        Self {
            path,
            message,
            location,
        }
    }
}

impl Problem {
    /// The error as the user sees it: the file, the full key, what is wrong and what is
    /// allowed there, and the position. `kind`: the type whose `config` was being read.
    fn explain(self, origin: &str, kind: Option<Type>) -> anyhow::Error {
        let Problem {
            path,
            message,
            location,
        } = self;
        let key = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        let at = if path.is_empty() {
            "the top level".to_string()
        } else {
            format!("`{path}`")
        };
        let message = if let Some((k, allowed)) = unknown_field(&message) {
            let scope = match (path.as_str(), kind) {
                ("", _) => " at the top level".to_string(),
                (CONFIG, Some(t)) => format!(" for type `{}`", t.name()),
                _ => String::new(),
            };
            let expected = if allowed.is_empty() {
                "it takes no settings".to_string()
            } else {
                format!("expected one of: {}", allowed.join(", "))
            };
            format!("unknown key `{}`{scope}; {expected}", key(k))
        } else if let Some(k) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            format!("missing key `{}`", key(k))
        } else if let Some(got) = message.strip_prefix(NOT_A_MAPPING) {
            format!("{at} must be a mapping, got {got}")
        } else if let Some(got) = message
            .strip_prefix("invalid type: ")
            .and_then(|m| m.strip_suffix(", expected field identifier"))
        {
            // A list or mapping as a key: serde's words for them are "sequence" and "map".
            let got = match got {
                "sequence" => "a list",
                "map" => "a mapping",
                other => other,
            };
            format!("{at}: keys must be names, got {got}")
        } else if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        };
        match location {
            Some(l) => anyhow!(
                "{origin}: {message} (line {}, column {})",
                l.line(),
                l.column()
            ),
            None => anyhow!("{origin}: {message}"),
        }
    }
}

/// The key and the allowed keys of serde's "unknown field `k`, expected `a` or `b`" (or
/// "expected one of `a`, `b`, `c`", or "there are no fields"). The allowed keys are the
/// schema's names, so the last "`, expected " is where the user's key ends.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    if let Some(k) = rest.strip_suffix("`, there are no fields") {
        return Some((k, Vec::new()));
    }
    let (k, expected) = rest.rsplit_once("`, expected ")?;
    let allowed = expected.split('`').skip(1).step_by(2).collect();
    Some((k, allowed))
}
