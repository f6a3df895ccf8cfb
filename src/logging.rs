//! A run's log: every line agd prints for a job also goes to `<dir>/log.txt`, so a run
//! can be read back later (the reference tees stdout the same way).
//!
//! Opening a run's log also claims its folder: one agd process at a time writes into a
//! folder (two runs sharing `--logs-dir` would interleave their logs and replace each
//! other's checkpoints), and what killed runs left half-written there is cleared.

use crate::error::Setting;
use crate::record::Recipe;
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
    /// Set by [`Logger::succeeded`]; a logger dropped without it belongs to a run that
    /// failed, and the error that ended it is written there ([`record_failure`]).
    done: std::sync::atomic::AtomicBool,
    /// The folder's lock, held while the logger lives; the OS releases it when the
    /// process ends, however it ends, so a killed run never leaves its folder locked.
    /// None for a data-parallel run's other ranks, whose rank 0 holds it.
    _lock: Option<File>,
}

/// A run's log, in its folder.
pub const LOG: &str = "log.txt";

/// The lock file of a run's folder; it holds the pid of the run that last claimed it.
pub const LOCK: &str = ".agd.lock";

/// Another agd process holds the folder a run was asked to write into.
#[derive(Debug, thiserror::Error)]
#[error("{} is in use by another agd run{}: wait for it to finish, or write elsewhere", .dir.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
pub struct Busy {
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

/// What a run claims its folder as ([`Recipe::claim`]).
pub struct Claim<'a> {
    pub recipe: &'a Recipe,
    /// The setting that named the folder.
    pub folder: Setting,
    /// Whether a folder without a record is taken over (the run continues what it holds).
    pub adopt: bool,
}

/// How a run holds its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Alone: every run of a folder.
    Exclusive,
    /// Beside the other shards of its dreams folder (`agd invert --shard`), which each
    /// hold their own subfolder alone; an unsharded run of the folder waits for them all.
    Shared,
}

/// Claims `dir` for this process: an advisory lock on `dir/.agd.lock`, with our pid
/// written into it so a second run can say who holds the folder.
pub fn lock(dir: &Path, hold: Hold) -> Result<File> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let locked = match hold {
        Hold::Exclusive => file.try_lock(),
        Hold::Shared => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(Busy {
                dir: dir.to_path_buf(),
                pid,
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

impl Logger {
    /// Appends to `<dir>/log.txt`, creating `dir` if needed, after claiming `dir` (an
    /// error naming the holder when another agd run has it, and one naming both runs when
    /// another kind or recipe of run made it: [`Claim`]) and removing the temporary files
    /// that killed runs left there.
    pub fn open(dir: &Path, claim: &Claim, echo: bool) -> Result<Self> {
        crate::io::create_dir(dir)?;
        let lock = lock(dir, Hold::Exclusive)?;
        claim
            .recipe
            .claim(dir, claim.folder, claim.adopt, Hold::Exclusive)?;
        crate::io::remove_stale_temporaries(dir)?;
        Self::append(dir.join(LOG), echo, Some(lock))
    }

    /// The log of rank `rank` (> 0) of a data-parallel run, `log-rank<r>.txt` in the folder
    /// that rank 0 has claimed: its own steps and errors, not echoed (rank 0's terminal is
    /// the run's).
    pub fn open_rank(dir: &Path, rank: usize) -> Result<Self> {
        Self::append(dir.join(format!("log-rank{rank}.txt")), false, None)
    }

    fn append(path: PathBuf, echo: bool, lock: Option<File>) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        if let Ok(mut open) = OPEN.lock() {
            open.push(path.clone());
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
            echo,
            done: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the run as finished without error: its log gets no error line.
    pub fn succeeded(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
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

/// The logs of the runs open in this process, for [`record_interruptions`].
static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Makes a run ended by SIGINT, SIGTERM or SIGHUP (Ctrl-C, a cluster's scheduler, a closed
/// terminal) say so in the log of every run open in this process, `interrupted by
/// SIGINT`, before the process ends as the signal ends it; without it, a log read back
/// later stops mid-epoch with no reason. Checkpoints and images are written atomically,
/// so what the run had finished stays whole and resumable. The binary calls it once.
pub fn record_interruptions() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot watch for interrupting signals")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = match signal {
                SIGINT => "SIGINT",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            let open = OPEN.lock().map(|o| o.clone()).unwrap_or_default();
            for path in open {
                if let Ok(mut f) = OpenOptions::new().append(true).open(&path) {
                    let _ = writeln!(f, "interrupted by {name}");
                }
            }
            // Ends the process as the signal would have (exit status 128 + signal).
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// Logs of runs that ended without [`Logger::succeeded`]: the error travelling up to the
/// caller ended them.
static FAILED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl Drop for Logger {
    fn drop(&mut self) {
        if let Ok(mut open) = OPEN.lock() {
            if let Some(at) = open.iter().position(|p| p == &self.path) {
                open.remove(at);
            }
        }
        if !self.done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut failed) = FAILED.lock() {
                failed.push(self.path.clone());
            }
        }
    }
}

/// Appends `error: <message>` to the log of every run that failed in this process (a stage,
/// and the demo that ran it), so a log read back later says how its run ended. The binary
/// calls it with the message it prints to stderr.
pub fn record_failure(message: &str) {
    let failed = FAILED
        .lock()
        .map(|mut f| std::mem::take(&mut *f))
        .unwrap_or_default();
    for path in failed {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&path) {
            let _ = writeln!(f, "error: {message}");
        }
    }
}
