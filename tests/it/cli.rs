//! The `agd` command line as a user meets it.

use super::util::agd_output as agd;
use agd::cli::{try_parse_from, Command};
use agd::model::{Depth, Pooling};

#[test]
fn help_lists_every_subcommand() {
    let out = agd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "invert",
        "incremental",
        "incremental-x",
        "evaluate",
        "synth",
        "demo",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing in\n{text}"
        );
    }
}

#[test]
fn reference_defaults_per_script() {
    let Command::Train(t) = try_parse_from(["agd", "train"]).unwrap().command else {
        panic!()
    };
    let r = &t.run;
    assert_eq!(
        (
            r.batch_size,
            r.epochs,
            r.epochs_decay.clone(),
            r.warmup,
            r.save_freq
        ),
        (128, 90, vec![61], 10, 1000)
    );
    assert_eq!(
        (r.dataset.as_str(), r.learning_rate, r.evaluate, r.peers),
        ("msmt17", 0.01, 10, 1)
    );
    assert_eq!(
        (
            r.setup.data.size.height,
            r.setup.data.size.width,
            r.augment.re,
            r.augment.re_area
        ),
        (256, 128, 0.5, 0.4)
    );
    // A new model's shape: the reference's ResNet-50, last stride 2, average pooling.
    let fresh = r.model.fresh(10);
    assert_eq!(
        (
            fresh.depth,
            fresh.last_stride,
            fresh.embedding,
            fresh.pooling
        ),
        (Depth::R50, 2, 2048, Pooling::Avg)
    );
    assert_eq!(r.setup.device.gpu, vec!["0".to_string()]);

    let Command::Incremental(i) = try_parse_from(["agd", "incremental"]).unwrap().command else {
        panic!()
    };
    let r = &i.run;
    assert_eq!(
        (
            r.batch_size,
            r.epochs,
            r.epochs_decay.clone(),
            r.warmup,
            r.save_freq,
            r.peers
        ),
        (64, 80, vec![41], 0, 100, 1)
    );
    assert_eq!((r.dataset.as_str(), i.exemplars), ("market", 40));

    let Command::IncrementalX(x) = try_parse_from(["agd", "incremental-x"]).unwrap().command else {
        panic!()
    };
    assert_eq!((x.run.peers, x.run.epochs), (2, 80));

    let Command::Invert(v) = try_parse_from(["agd", "invert"]).unwrap().command else {
        panic!()
    };
    assert_eq!(
        (
            v.dreaming.bs,
            v.dreaming.shots,
            v.dreaming.iters,
            v.dreaming.stages.low_res_iters,
            v.dreaming.stages.full_res_iters,
            v.dreaming.stages.warmup_iters
        ),
        (64, 10, 320, 2000, 1000, 100)
    );
    let Err(err) = try_parse_from(["agd", "invert", "--warmup-iters", "0"]) else {
        panic!("a warm-up of 0 iterations must be refused")
    };
    let err = err.to_string();
    assert!(err.contains("--warmup-iters"), "{err}");
    assert_eq!(
        (
            v.dreaming.coefficients.r_feature,
            v.dreaming.coefficients.first_bn_multiplier,
            v.dreaming.coefficients.prior.tv_l1,
            v.dreaming.coefficients.prior.tv_l2,
            v.dreaming.coefficients.prior.l2,
            v.dreaming.stages.lr
        ),
        (0.01, 10.0, 0.0, 1e-4, 1e-5, 0.2)
    );

    let Command::Evaluate(e) = try_parse_from(["agd", "evaluate"]).unwrap().command else {
        panic!()
    };
    assert!(!e.json);
    let e = e.plan;
    assert_eq!(e.datasets, vec!["market", "duke", "msmt17"]);
    assert!(!e.re_ranking && !e.output && !e.recursive);
}

#[test]
fn reference_readme_commands_parse_including_underscore_spellings() {
    let cmds: [&[&str]; 5] = [
        &[
            "agd",
            "train",
            "-g",
            "0",
            "--dataset",
            "msmt17",
            "--logs-dir",
            "./logs/msmt17",
        ],
        &[
            "agd",
            "invert",
            "-g",
            "0",
            "--generation-dir",
            "./data/g",
            "--shots",
            "40",
            "--iters",
            "640",
            "--teacher",
            "./logs/msmt17",
        ],
        &[
            "agd",
            "incremental",
            "--dataset",
            "market",
            "--previous",
            "./logs/msmt17",
            "--logs-dir",
            "./logs/x",
            "--inversion-dir",
            "./data/g",
            "-g",
            "0",
            "--evaluate",
            "80",
            "--seed",
            "1",
            "--algo-config",
            "./configs/res-triangle.yaml",
        ],
        &[
            "agd",
            "incremental-x",
            "--dataset",
            "market",
            "--previous",
            "./logs/msmt17",
            "-g",
            "0",
            "--evaluate",
            "80",
            "--seed",
            "1",
            "--peers",
            "2",
            "--algo-config",
            "./configs/inverXion.yaml",
        ],
        &[
            "agd",
            "evaluate",
            "--dataset",
            "msmt17",
            "market",
            "-c",
            "./logs/x",
            "-r",
            "-o",
            "--output-feature",
            "global",
        ],
    ];
    for c in cmds {
        try_parse_from(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
    let Command::Invert(v) = try_parse_from([
        "agd",
        "invert",
        "--r_feature",
        "0.05",
        "--first_bn_multiplier",
        "3",
        "--tv_l2",
        "0.5",
        "--main_loss_multiplier",
        "2",
    ])
    .unwrap()
    .command
    else {
        panic!()
    };
    assert_eq!(
        (
            v.dreaming.coefficients.r_feature,
            v.dreaming.coefficients.first_bn_multiplier,
            v.dreaming.coefficients.prior.tv_l2,
            v.dreaming.coefficients.main_loss_multiplier
        ),
        (0.05, 3.0, 0.5, 2.0)
    );
    let Command::Train(t) = try_parse_from([
        "agd",
        "train",
        "--epochs_decay",
        "30",
        "50",
        "--data_root",
        "/d",
    ])
    .unwrap()
    .command
    else {
        panic!()
    };
    assert_eq!(t.run.epochs_decay, vec![30, 50]);
    assert_eq!(t.run.setup.data.data_root, std::path::PathBuf::from("/d"));
}

#[test]
fn bad_flag_values_are_named() {
    let err = try_parse_from(["agd", "train", "--depth", "18"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--depth") && err.contains("18"), "{err}");
    let err = try_parse_from(["agd", "train", "--last-stride", "3"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--last-stride"), "{err}");
}

#[test]
fn invert_without_a_teacher_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let gen = tmp.path().join("gen");
    let out = agd(&[
        "invert",
        "-g",
        "cpu",
        "--teacher",
        missing.to_str().unwrap(),
        "--generation-dir",
        gen.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--teacher") && err.contains("nowhere"),
        "{err}"
    );
    assert!(!gen.exists(), "a run that cannot start creates nothing");
}

#[test]
fn train_without_data_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let logs = tmp.path().join("logs");
    let out = agd(&[
        "train",
        "-g",
        "cpu",
        "--data-root",
        missing.to_str().unwrap(),
        "--logs-dir",
        logs.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--data-root") && err.contains("nowhere"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let out = agd(&[
        "train",
        "-g",
        "cpu",
        "--embedding",
        "256",
        "--data-root",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn synth_then_summary_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let out = agd(&[
        "synth",
        "--data-root",
        root,
        "--dataset",
        "tiny",
        "--ids",
        "6",
        "--images-per-id",
        "4",
        "--cameras",
        "3",
        "--distractors",
        "3",
        "--junk",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["train_ids"], 6);
    assert_eq!(summary["train_images"], 24);
    // The written dataset loads through the pipeline.
    let d = agd::data::ReidDataset::load(tmp.path(), "tiny").unwrap();
    assert_eq!(d.num_train_ids, 6);
    assert_eq!(d.train.len(), 24);
    // Bad values are named.
    let out = agd(&[
        "synth",
        "--data-root",
        root,
        "--dataset",
        "t2",
        "--cameras",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cameras"));
}

#[test]
fn demo_sizes_come_from_their_preset_unless_a_flag_gives_them() {
    let sizes = |argv: &[&str]| {
        let argv = ["agd", "demo"].iter().chain(argv).copied();
        let Command::Demo(d) = try_parse_from(argv).unwrap().command else {
            panic!()
        };
        d.plan().sizes
    };
    assert_eq!(sizes(&[]), agd::demo::Sizes::DEFAULT);
    assert_eq!(sizes(&["--quick"]), agd::demo::Sizes::QUICK);
    let given = sizes(&[
        "--coarse",
        "2",
        "--warmup-iters",
        "7",
        "--low-res-iters",
        "50",
        "--jitter",
        "0",
    ]);
    assert_eq!(
        (
            given.coarse,
            given.warmup_iters,
            given.low_res_iters,
            given.jitter
        ),
        (2, 7, 50, 0)
    );
    assert_eq!(
        agd::demo::Sizes {
            coarse: 4,
            warmup_iters: 10,
            low_res_iters: 200,
            jitter: 4,
            ..given
        },
        agd::demo::Sizes::DEFAULT,
        "no other size moved"
    );
}
