//! Helpers every test module shares.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The built `agd` binary. `LD_LIBRARY_PATH` is removed: the binary must find libtorch
/// through its rpath alone, as on a user's machine.
pub fn agd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agd"));
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// Runs `agd args…` to completion.
pub fn agd_output<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    agd()
        .args(args)
        .output()
        .expect("agd runs without LD_LIBRARY_PATH")
}

/// The message of an error that must happen, as the CLI reports it (library settings
/// named by their flags).
pub fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => agd::cli::message(&e),
    }
}

/// The golden values of the reference code: `tests/fixtures/`, or `AGD_FIXTURES`.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("AGD_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")))
}

/// The shipped distillation configs.
pub fn configs_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/configs"))
}

pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Polls until `ready()` holds (or panics naming `what` after `limit`).
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `path`'s text, or "" while it does not exist.
pub fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
