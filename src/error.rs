//! Errors about values a caller chose, in the library's own terms. The library does not
//! know the command line: it says "batch size 18: …"; the CLI ([`crate::cli::message`])
//! finds these errors in a chain and names the flag that carried the value instead
//! ("--batch-size 18: …"), so a user reads the flag to change and a library caller reads
//! the setting.

use std::fmt;

/// A setting of a stage's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    BatchSize,
    Cameras,
    Checkpoint,
    Coarse,
    DataRoot,
    Dataset,
    DatasetPart,
    Datasets,
    Depth,
    DreamFormat,
    Embedding,
    Epochs,
    EpochsDecay,
    ExemplarDataset,
    Exemplars,
    FeatureFile,
    FirstBnMultiplier,
    FullResIters,
    GenerationDir,
    Gpu,
    Height,
    Ids,
    ImagesPerId,
    ImageLr,
    InversionBatch,
    InversionDir,
    InversionResume,
    L2,
    LastPooling,
    LastStride,
    LearningRate,
    LogsDir,
    MainLossMultiplier,
    Method,
    Optimizer,
    Peers,
    Pretrained,
    Previous,
    RandomErasing,
    RandomErasingArea,
    RankList,
    RankListN,
    Recursive,
    Resume,
    RFeature,
    SaveFeatures,
    Shard,
    Shots,
    Teacher,
    TestIds,
    TvL1,
    TvL2,
    Unseen,
    Warmup,
    WarmupIters,
    Width,
}

impl Setting {
    /// The setting's name in library terms.
    pub fn name(self) -> &'static str {
        use Setting::*;
        match self {
            BatchSize => "batch size",
            Cameras => "cameras",
            Checkpoint => "checkpoint",
            Coarse => "coarse block size",
            DataRoot => "data root",
            Dataset => "dataset",
            DatasetPart => "dataset",
            Datasets => "datasets of the sequence",
            Depth => "depth",
            Embedding => "embedding width",
            Epochs => "epochs",
            EpochsDecay => "learning-rate decay epochs",
            ExemplarDataset => "exemplar dataset",
            Exemplars => "images per old identity",
            FeatureFile => "feature file",
            FirstBnMultiplier => "first BN multiplier",
            DreamFormat => "dreamed image format",
            FullResIters => "full-size iterations",
            GenerationDir => "generation folder",
            Gpu => "device",
            Height => "height",
            Ids => "identities",
            ImagesPerId => "images per identity",
            ImageLr => "image learning rate",
            InversionBatch => "inversion batch",
            InversionDir => "dreamed images folder",
            InversionResume => "generation folder to complete",
            L2 => "L2 coefficient",
            LastPooling => "pooling",
            LastStride => "last stride",
            LearningRate => "learning rate",
            LogsDir => "logs folder",
            MainLossMultiplier => "main loss multiplier",
            Method => "method",
            Optimizer => "optimizer",
            Peers => "views",
            Pretrained => "ImageNet weights",
            Previous => "previous model",
            RandomErasing => "random-erasing probability",
            RandomErasingArea => "random-erasing area",
            RankList => "rank-list folder",
            RankListN => "rank-list queries",
            Recursive => "recursive search",
            Resume => "checkpoint to resume",
            RFeature => "BN statistics coefficient",
            SaveFeatures => "feature file to write",
            Shard => "shard",
            Shots => "images per identity",
            Teacher => "teacher",
            TestIds => "test identities",
            TvL1 => "TV-L1 coefficient",
            TvL2 => "TV-L2 coefficient",
            Unseen => "unseen datasets",
            Warmup => "warm-up epochs",
            WarmupIters => "warm-up iterations",
            Width => "width",
        }
    }
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

impl BadSetting {
    pub fn new(setting: Setting, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self {
            setting,
            value: value.to_string(),
            reason: reason.into(),
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
            About {
                setting,
                value: None,
                source: e.into(),
            }
            .into()
        })
    }

    fn about_value(self, setting: Setting, value: impl fmt::Display) -> anyhow::Result<T> {
        self.map_err(|e| {
            About {
                setting,
                value: Some(value.to_string()),
                source: e.into(),
            }
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
        return Err($crate::error::BadSetting::new($setting, $value, format!($($reason)+)).into())
    };
}
