//! Progress bars with one look across agd. indicatif draws on stderr and stays silent
//! when stderr is not a terminal (CI, pipes), so callers never need to check.

use crate::logging::Logger;
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items: message, bar, count, rate and ETA.
pub fn bar(len: u64, message: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta} {prefix}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(message.into());
    pb
}

/// A piece of work's progress: its bar (with an ETA) on the terminal, and its lines in the
/// run's log, written without tearing the bar. The training loop's progress hook and the
/// inversion's batches both use it.
pub struct Progress<'a> {
    bar: ProgressBar,
    log: &'a Logger,
}

impl<'a> Progress<'a> {
    /// A bar over `len` units of work, named `message`.
    pub fn new(log: &'a Logger, len: u64, message: impl Into<String>) -> Self {
        Self {
            bar: bar(len, message),
            log,
        }
    }

    /// One unit done; `status` says how it went (losses, rate).
    pub fn tick(&self, status: impl Into<String>) {
        self.bar.set_prefix(status.into());
        self.bar.inc(1);
    }

    /// A line for the terminal and the log, printed above the bar.
    pub fn line(&self, text: impl AsRef<str>) {
        self.bar.suspend(|| self.log.line(text));
    }

    /// The work is done: the bar goes.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
