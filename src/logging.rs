//! A run's log: every line agd prints for a job also goes to `<dir>/log.txt`, so a run
//! can be read back later (the reference tees stdout the same way).

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Logger {
    path: PathBuf,
    file: Mutex<File>,
    /// Also print to stdout (off for quiet/JSON output).
    echo: bool,
}

impl Logger {
    /// Appends to `<dir>/log.txt`, creating `dir` if needed.
    pub fn open(dir: &Path, echo: bool) -> Result<Self> {
        crate::io::create_dir(dir)?;
        let path = dir.join("log.txt");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            echo,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Prints `text` (one or more lines) and appends it to the log file.
    pub fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if self.echo {
            println!("{text}");
        }
        self.record(text);
    }

    /// Appends `text` to the log file only: detail the terminal shows as a progress bar
    /// (every training step), kept in the file so a run can be followed and read back.
    pub fn record(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if let Ok(mut f) = self.file.lock() {
            // A full disk must not kill a training run over its log; the checkpoint
            // writes will report it.
            let _ = writeln!(f, "{text}");
        }
    }
}
