//! The errors the library reports about values a caller chose, in the library's own terms:
//! "batch size 18: …". They are one type, [`Error`], so that the CLI finds it in an error's
//! chain with one look and renders it naming the flag that carried each setting instead
//! ("--batch-size 18: …", [`Error::describe`]): a user reads the flag to change, and a
//! library caller the setting. Everything else stays anyhow's, with its context.

use std::fmt;

/// Settings of the stages' plans: `Variant => "name in library terms", field;`. The field is
/// the plan field (clap's argument id) that carries the setting, so the CLI names its flag
/// from the plans' own definitions ([`crate::cli::flag`]) and no table of flags exists.
macro_rules! settings {
    ($($variant:ident => $name:literal, $field:ident;)+) => {
        /// A setting of a stage's plan.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Setting {
            $($variant),+
        }

        impl Setting {
            /// Every setting.
            pub const ALL: &'static [Setting] = &[$(Setting::$variant),+];

            /// The setting's name in library terms.
            pub fn name(self) -> &'static str {
                match self {
                    $(Setting::$variant => $name),+
                }
            }

            /// The plan field that carries it (clap's argument id).
            pub fn field(self) -> &'static str {
                match self {
                    $(Setting::$variant => stringify!($field)),+
                }
            }
        }
    };
}

settings! {
    BatchSize => "batch size", batch_size;
    Cameras => "cameras", cameras;
    Checkpoint => "checkpoint", ckpt;
    Coarse => "coarse block size", coarse;
    DataRoot => "data root", data_root;
    Dataset => "dataset", dataset;
    DatasetPart => "dataset", dataset;
    Datasets => "datasets of the sequence", datasets;
    Depth => "depth", depth;
    DreamFormat => "dreamed image format", dream_format;
    Embedding => "embedding width", embedding;
    Epochs => "epochs", epochs;
    EpochsDecay => "learning-rate decay epochs", epochs_decay;
    ExemplarDataset => "exemplar dataset", exemplar_dataset;
    Exemplars => "images per old identity", exemplars;
    FeatureFile => "feature file", features;
    FirstBnMultiplier => "first BN multiplier", first_bn_multiplier;
    FullResIters => "full-size iterations", full_res_iters;
    GenerationDir => "dreams folder", generation_dir;
    Gpu => "device", gpu;
    Height => "height", height;
    Ids => "identities", ids;
    ImagesPerId => "images per identity", images_per_id;
    ImageLr => "image learning rate", lr;
    InversionBatch => "inversion batch size", bs;
    InversionDir => "dreams folder", inversion_dir;
    InversionResume => "dreams folder to complete", resume;
    L2 => "L2 coefficient", l2;
    LastPooling => "pooling", pooling;
    LastStride => "last stride", last_stride;
    LearningRate => "learning rate", learning_rate;
    LogsDir => "logs folder", logs_dir;
    MainLossMultiplier => "main loss multiplier", main_loss_multiplier;
    NprocPerNode => "worker processes", nproc_per_node;
    DistBackend => "distributed backend", dist_backend;
    Method => "method", method;
    Optimizer => "optimizer", optimizer;
    Out => "run folder", out;
    Peers => "views", peers;
    Pretrained => "ImageNet weights", pretrained;
    Previous => "previous model", previous;
    RandomErasing => "random-erasing probability", re;
    RandomErasingArea => "random-erasing area", re_area;
    RankList => "rank-list folder", rank_list;
    RankListN => "rank-list queries", rank_list_n;
    Recursive => "recursive search", recursive;
    Resume => "checkpoint to resume", resume;
    RFeature => "BN statistics coefficient", r_feature;
    SaveFeatures => "feature file to write", save_features;
    Shard => "shard", shard;
    Shots => "images per identity", shots;
    Teacher => "teacher", teacher;
    TestIds => "test identities", test_ids;
    TvL1 => "TV-L1 coefficient", tv_l1;
    TvL2 => "TV-L2 coefficient", tv_l2;
    Unseen => "unseen datasets", unseen;
    Warmup => "warm-up epochs", warmup;
    WarmupIters => "warm-up iterations", warmup_iters;
    Width => "width", width;
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A setting's value that cannot work, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {value}: {reason}")]
pub struct BadSetting {
    pub setting: Setting,
    pub value: String,
    pub reason: String,
}

/// The errors that name what a caller chose. Each kind is its own struct (so it can be
/// matched and read), and only ever made as this enum: the CLI looks for this one type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    BadSetting(#[from] BadSetting),
    #[error(transparent)]
    About(#[from] About),
    #[error(transparent)]
    AnotherRun(#[from] AnotherRun),
    #[error(transparent)]
    Occupied(#[from] Occupied),
    #[error(transparent)]
    Contradiction(#[from] crate::model::choice::Contradiction),
    #[error(transparent)]
    CheckpointsFailed(#[from] crate::eval::CheckpointsFailed),
    #[error(transparent)]
    OtherRun(#[from] crate::record::OtherRun),
}

impl Error {
    /// The message with every setting called as `name` calls it (the CLI: by its flag), and
    /// errors it holds (several checkpoints' failures) rendered by `render`.
    pub fn describe(
        &self,
        name: impl Fn(Setting) -> String,
        render: impl Fn(&anyhow::Error) -> String,
    ) -> String {
        match self {
            Error::BadSetting(b) => format!("{} {}: {}", name(b.setting), b.value, b.reason),
            Error::About(a) => match &a.value {
                Some(v) => format!("{} {v}", name(a.setting)),
                None => name(a.setting),
            },
            Error::AnotherRun(r) => r.describe(&name(Setting::Resume), &name(Setting::LogsDir)),
            Error::Occupied(o) => o.describe(&name(o.setting)),
            Error::Contradiction(c) => c.describe(&name(c.setting)),
            Error::CheckpointsFailed(f) => f.describe(render),
            Error::OtherRun(o) => o.describe(&name(o.folder)),
        }
    }

    /// A setting's value that cannot work, and why.
    pub fn bad_setting(
        setting: Setting,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::BadSetting(BadSetting {
            setting,
            value: value.to_string(),
            reason: reason.into(),
        })
    }

    /// The [`BadSetting`] `err` is, if it is one.
    pub fn as_bad_setting(err: &anyhow::Error) -> Option<&BadSetting> {
        match err.downcast_ref::<Error>() {
            Some(Error::BadSetting(b)) => Some(b),
            _ => None,
        }
    }
}

/// Which setting the error below it is about (a file the setting named that turned out
/// unreadable, say), with the value when it helps. A wrapping error rather than an anyhow
/// context, so that the CLI can find it in the chain and name the flag.
#[derive(Debug)]
pub struct About {
    pub setting: Setting,
    pub value: Option<String>,
    source: anyhow::Error,
}

impl fmt::Display for About {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} {v}", self.setting),
            None => write!(f, "{}", self.setting),
        }
    }
}

impl std::error::Error for About {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// `.about(…)` on results: says which setting an error is about.
pub trait AboutExt<T> {
    /// The error is about `setting`.
    fn about(self, setting: Setting) -> anyhow::Result<T>;
    /// The error is about `setting`, whose value was `value`.
    fn about_value(self, setting: Setting, value: impl fmt::Display) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> AboutExt<T> for Result<T, E> {
    fn about(self, setting: Setting) -> anyhow::Result<T> {
        self.map_err(|e| {
            Error::from(About {
                setting,
                value: None,
                source: e.into(),
            })
            .into()
        })
    }

    fn about_value(self, setting: Setting, value: impl fmt::Display) -> anyhow::Result<T> {
        self.map_err(|e| {
            Error::from(About {
                setting,
                value: Some(value.to_string()),
                source: e.into(),
            })
            .into()
        })
    }
}

/// An output folder that already holds files: another value of `setting` avoids it.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe(self.setting.name()))]
pub struct Occupied {
    pub path: std::path::PathBuf,
    pub setting: Setting,
}

impl Occupied {
    /// The message, with the setting called `setting` (its name, or the CLI's flag).
    pub fn describe(&self, setting: &str) -> String {
        format!(
            "{} is not empty: remove it or choose another {setting}",
            self.path.display()
        )
    }
}

/// A fresh run asked to write into a folder that holds another run's checkpoint: going on
/// would replace that run's checkpoint and erase its metrics history, so the user says
/// which they meant (continue it, or start over elsewhere).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe("the checkpoint to resume", "logs folder"))]
pub struct AnotherRun {
    /// The logs folder.
    pub dir: std::path::PathBuf,
    /// The epoch its checkpoint holds, when readable.
    pub epoch: Option<usize>,
}

impl AnotherRun {
    /// The message, with the resume and logs-folder settings called as given (their names,
    /// or the CLI's flags).
    pub fn describe(&self, resume: &str, logs_dir: &str) -> String {
        let epoch = self
            .epoch
            .map(|e| format!(" (after epoch {e})"))
            .unwrap_or_default();
        format!(
            "{dir} already holds a run's checkpoint{epoch}: pass {resume} {dir} to continue it, \
             or choose another {logs_dir} (or remove {dir}) to start over",
            dir = self.dir.display()
        )
    }
}

/// `bail!` with a [`BadSetting`].
#[macro_export]
macro_rules! bad_setting {
    ($setting:expr, $value:expr, $($reason:tt)+) => {
        return Err($crate::error::Error::bad_setting($setting, $value, format!($($reason)+)).into())
    };
}
