//! Progress bars with one look across agd. indicatif draws on stderr and stays silent
//! when stderr is not a terminal (CI, pipes), so callers never need to check.

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
