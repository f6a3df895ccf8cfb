//! Faults a user can cause in a training run: nothing they had is lost and nothing wrong
//! is written (issue 16). Each test reproduces the fault first.

use super::train::{synth, train_args};
use super::util::{agd, read_or_empty, wait_until};
use agd::model::checkpoint::Checkpoint;
use std::process::Stdio;
use std::time::Duration;

/// `agd train` args, the flag `name` set to `value` (replaced where the defaults have it).
fn with_flag(mut args: Vec<String>, name: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == name) {
        Some(at) => args[at + 1] = value.to_string(),
        None => args.extend([name.to_string(), value.to_string()]),
    }
    args
}

fn fails(args: &[String]) -> String {
    let out = agd().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "agd {} succeeded", args.join(" "));
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_sizes_counts_and_rates_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    // No data at all: each check must come before the dataset is read.
    let base = train_args(&root, &logs, 1, &[]);
    for (flag, value, says) in [
        ("--learning-rate", "nan", "positive"),
        ("--learning-rate", "0", "positive"),
        ("--learning-rate", "inf", "positive"),
        ("--height", "0", "at least 16"),
        ("--height", "1", "at least 16"),
        ("--width", "1", "at least 16"),
        ("-b", "0", "multiple of 4"),
        ("-b", "18", "multiple of 4"),
        ("--peers", "0", "view"),
    ] {
        let err = fails(&with_flag(base.clone(), flag, value));
        let named = if flag == "-b" { "--batch-size" } else { flag };
        let value_shown = err.to_lowercase().contains(&format!("{named} {value}"));
        assert!(value_shown && err.contains(says), "{flag} {value}: {err}");
        assert!(!logs.exists(), "{flag} {value}: left a logs folder behind");
    }
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    let logs = tmp.path().join("logs");
    let good = train_args(&root, &logs, 1, &[]);
    super::train::run_ok(&good);
    let ck = logs.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();

    let mut diverging = with_flag(train_args(&root, &logs, 2, &[]), "--learning-rate", "1e30");
    diverging.extend(["--resume".into(), logs.display().to_string()]);
    let err = fails(&diverging);
    assert!(
        err.contains("epoch 2") && (err.contains("loss is") || err.contains("not finite")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the good checkpoint was replaced"
    );
    assert_eq!(Checkpoint::load(&ck).unwrap().epoch, 1);
    // The error is in the run's log too.
    let log = std::fs::read_to_string(logs.join("log.txt")).unwrap();
    assert!(log.lines().last().unwrap().starts_with("error:"), "{log}");
}

#[test]
fn a_fresh_run_into_a_finished_runs_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    let logs = tmp.path().join("logs");
    super::train::run_ok(&train_args(&root, &logs, 1, &[]));
    let ck = logs.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let metrics = std::fs::read(logs.join("metrics.csv")).unwrap();

    // `--resume` forgotten.
    let err = fails(&train_args(&root, &logs, 2, &[]));
    for part in [
        "--resume",
        "--logs-dir",
        "after epoch 1",
        &logs.display().to_string(),
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    assert_eq!(std::fs::read(logs.join("metrics.csv")).unwrap(), metrics);
    // With it, the run continues.
    let mut resume = train_args(&root, &logs, 2, &[]);
    resume.extend(["--resume".into(), logs.display().to_string()]);
    super::train::run_ok(&resume);
    assert_eq!(Checkpoint::load(&ck).unwrap().epoch, 2);
}

#[test]
fn two_runs_into_one_folder_the_second_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    let logs = tmp.path().join("logs");
    let args = train_args(&root, &logs, 50, &[]);
    let mut first = agd()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = logs.join("log.txt");
    wait_until(
        "the first run's first step",
        Duration::from_secs(600),
        || read_or_empty(&log).contains("step 1/"),
    );
    let err = fails(&args);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        err.contains("in use") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    assert!(
        !read_or_empty(&log).contains(err.trim()),
        "the refused run wrote into the first one's log"
    );
}

#[test]
fn a_killed_runs_temporary_files_are_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // What a run killed while writing its checkpoint leaves (no pid is this large).
    let stale = logs.join(format!(".checkpoint.safetensors.tmp-{}-0", u32::MAX - 1));
    std::fs::write(&stale, vec![0u8; 1 << 20]).unwrap();
    super::train::run_ok(&train_args(&root, &logs, 1, &[]));
    assert!(!stale.exists());
    let hidden: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// Issue 36: a run ended by a signal says so in its log (the log used to stop mid-epoch
/// without a word), and the process still ends as the signal ends it.
#[test]
fn a_run_ended_by_a_signal_says_so_in_its_log() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    for (signal, name) in [("-INT", "SIGINT"), ("-TERM", "SIGTERM")] {
        let logs = tmp.path().join(format!("logs{signal}"));
        let mut run = agd()
            .args(train_args(&root, &logs, 50, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let log = logs.join("log.txt");
        wait_until("the run's first step", Duration::from_secs(600), || {
            read_or_empty(&log).contains("step 1/")
        });
        let sent = std::process::Command::new("kill")
            .args([signal, &run.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = run.wait().unwrap();
        assert!(!status.success());
        assert!(
            status.signal().is_some() || status.code().is_some_and(|c| c > 128),
            "{status:?}"
        );
        let text = read_or_empty(&log);
        assert_eq!(
            text.lines().last(),
            Some(format!("interrupted by {name}").as_str()),
            "{text}"
        );
    }
}
