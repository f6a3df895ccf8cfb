//! `agd sequence`: lifelong learning over several datasets. Its plan renders a command
//! line that parses back to it, bad input is one error naming the flag, and a quick
//! sequence of three synthetic tasks lays out its folders, writes the results matrix and
//! forgetting, and reuses every finished stage when run again.

use super::util::{agd, configs_dir, strings};
use agd::cli::{try_parse_from, Command};
use agd::data::synth::{generate, Style, SynthConfig};
use agd::inversion::plan::Dreaming;
use agd::inversion::prior::PriorWeights;
use agd::inversion::store::DreamFormat;
use agd::inversion::{Coefficients, Stages};
use agd::model::checkpoint::Pretrained;
use agd::model::{Depth, ModelChoice, Pooling};
use agd::options::{AugmentOptions, DataOptions, DeviceOptions, ImageSize, Setup};
use agd::sequence::{forgetting, Method, SequencePlan, StepResult};
use agd::stage::StagePlan;
use agd::train::optimizer::OptimizerKind;
use std::path::Path;

fn plan_of(line: &str) -> SequencePlan {
    let words = shlex::split(line).unwrap_or_else(|| panic!("not a shell line: {line}"));
    match try_parse_from(&words)
        .unwrap_or_else(|e| panic!("{line}: {e}"))
        .command
    {
        Command::Sequence(plan) => plan,
        _ => panic!("{line}: not agd sequence"),
    }
}

#[test]
fn sequence_plan_renders_a_command_line_that_parses_back_to_it() {
    // The flags' defaults are the plan's (the stages' reference defaults).
    let plain = SequencePlan {
        datasets: strings(&["market", "duke", "msmt17"]),
        ..SequencePlan::default()
    };
    assert_eq!(plan_of("agd sequence --datasets market duke msmt17"), plain);
    let custom = SequencePlan {
        datasets: strings(&["market", "duke", "msmt 17"]),
        unseen: strings(&["cuhk03"]),
        method: "configs/my config.yaml".into(),
        logs_dir: "out/it's here".into(),
        setup: Setup {
            device: DeviceOptions {
                gpu: strings(&["cpu"]),
                ..DeviceOptions::default()
            },
            seed: Some(3),
            data: DataOptions {
                data_root: "/data root".into(),
                size: ImageSize {
                    height: 64,
                    width: 32,
                },
            },
        },
        base_epochs: 2,
        base_epochs_decay: vec![2],
        epochs: 1,
        epochs_decay: vec![1, 2],
        batch_size: Some(16),
        warmup: Some(0),
        optimizer: OptimizerKind::Adam,
        learning_rate: 0.0003,
        evaluate: 0,
        peers: 3,
        augment: AugmentOptions {
            re: 0.25,
            re_area: 0.3,
            preload: false,
        },
        model: ModelChoice {
            depth: Some(Depth::R34),
            last_stride: Some(1),
            pooling: Some(Pooling::Max),
            embedding: None,
        },
        pretrained: Pretrained::Random,
        exemplars: 5,
        dreaming: Dreaming {
            bs: 8,
            shots: 2,
            iters: 9,
            coefficients: Coefficients {
                r_feature: 0.05,
                first_bn_multiplier: 5.0,
                main_loss_multiplier: 0.5,
                prior: PriorWeights {
                    tv_l1: 0.1,
                    tv_l2: 0.003,
                    l2: 0.0,
                },
            },
            stages: Stages {
                lr: 0.1,
                low_res_iters: 3,
                full_res_iters: 4,
                warmup_iters: 1,
                coarse: 0,
                jitter: 2,
            },
            dream_format: DreamFormat::Png,
        },
    };
    let with_weights = SequencePlan {
        pretrained: Pretrained::File("backbone_weights/resnet34.pth".into()),
        base_epochs_decay: Vec::new(),
        ..custom.clone()
    };
    for plan in [plain, custom, with_weights] {
        let line = plan.argv().command_line();
        assert!(line.starts_with("agd sequence --datasets "), "{line}");
        assert_eq!(plan_of(&line), plan, "{line}");
    }
}

#[test]
fn a_config_path_is_learnt_with_views_when_it_has_a_cross_factor() {
    let augmented = |file: &str| {
        let m = Method::parse(configs_dir().join(file).to_str().unwrap()).unwrap();
        assert!(m.distills(), "{file}");
        m.augmented
    };
    assert!(augmented("inverXion.yaml"));
    assert!(!augmented("res-triangle.yaml"));
    assert!(!augmented("sim-res-triangle.yaml"));
    let presets: Vec<(bool, bool)> = ["finetune", "gd", "simgd", "agd"]
        .iter()
        .map(|p| {
            let m = Method::parse(p).unwrap();
            (m.augmented, m.distills())
        })
        .collect();
    assert_eq!(
        presets,
        [(false, false), (false, true), (false, true), (true, true)]
    );
}

fn step(step: usize, seen: &[&str], scores: &[(&str, f64)]) -> StepResult {
    StepResult::new(
        step,
        seen.last().unwrap(),
        &strings(seen),
        scores
            .iter()
            .map(|(d, m)| (d.to_string(), *m, *m))
            .collect(),
    )
}

#[test]
fn forgetting_is_the_best_earlier_map_minus_the_final_one() {
    let steps = [
        step(1, &["a"], &[("a", 0.6), ("u", 0.1)]),
        step(2, &["a", "b"], &[("a", 0.4), ("b", 0.7), ("u", 0.2)]),
        step(
            3,
            &["a", "b", "c"],
            &[("a", 0.3), ("b", 0.8), ("c", 0.5), ("u", 0.3)],
        ),
    ];
    assert!(
        (steps[1].seen_map - 0.55).abs() < 1e-12,
        "unseen u is not averaged"
    );
    let f = forgetting(&steps, &strings(&["a", "b", "c"]));
    let names: Vec<&str> = f.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(names, ["a", "b"], "the last dataset has no earlier value");
    assert!((f[0].1 - 0.3).abs() < 1e-12, "a: best 0.6, final 0.3");
    assert!(
        (f[1].1 + 0.1).abs() < 1e-12,
        "b improved: negative forgetting"
    );
}

/// Runs `agd sequence args…`, expecting a one-line error containing every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let mut all = vec!["sequence", "-g", "cpu"];
    all.extend(args);
    let out = agd().args(&all).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "agd {} succeeded", all.join(" "));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing in: {err}");
    }
}

#[test]
fn bad_sequence_input_is_one_error_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("a")).unwrap();
    let logs = tmp.path().join("out");
    let (root_s, logs_s) = (root.to_str().unwrap(), logs.to_str().unwrap());
    let base = ["--data-root", root_s, "--logs-dir", logs_s];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = base.to_vec();
        v.extend(extra);
        v
    };
    fails(&with(&["--datasets", "a"]), &["--datasets", "at least 2"]);
    fails(
        &with(&["--datasets", "a", "b", "a"]),
        &["--datasets a", "twice"],
    );
    fails(&with(&["--datasets", "nope", "a"]), &["--datasets", "nope"]);
    fails(
        &with(&["--datasets", "a", "b", "--unseen", "b"]),
        &["--unseen b"],
    );
    fails(
        &with(&["--datasets", "a", "b", "--method", "agdx"]),
        &["--method agdx", "finetune, gd, simgd, agd"],
    );
    assert!(
        !logs.exists(),
        "a sequence that cannot start creates nothing"
    );
}

/// A tiny synthetic dataset: `style` and `seed` make it a task of its own.
fn tiny_dataset(root: &Path, name: &str, style: Style, seed: u64) {
    let cfg = SynthConfig {
        ids: 8,
        test_ids: 8,
        images_per_id: 6,
        cameras: 3,
        height: 64,
        width: 32,
        seed,
        style,
        distractors: 8,
        junk: 4,
    };
    generate(&root.join(name), &cfg).unwrap();
}

fn run_sequence(args: &[String]) -> String {
    let out = agd().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "agd {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_quick_sequence_of_three_tasks_learns_evaluates_and_resumes() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sequence-three");
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("data");
    tiny_dataset(&root, "t1", Style::Street, 1);
    tiny_dataset(&root, "t2", Style::Mall, 2);
    tiny_dataset(&root, "t3", Style::Street, 3);
    tiny_dataset(&root, "u", Style::Mall, 4);
    let out = tmp.join("seq");
    let mut args = strings(&[
        "sequence",
        "--datasets",
        "t1",
        "t2",
        "t3",
        "--unseen",
        "u",
        "-g",
        "cpu",
        "-s",
        "1",
        "--height",
        "64",
        "--width",
        "32",
        "--depth",
        "34",
        "--pretrained",
        "none",
        "--base-epochs",
        "1",
        "--epochs",
        "1",
        "-b",
        "16",
        "--evaluate",
        "0",
        "--optimizer",
        "Adam",
        "--learning-rate",
        "0.0003",
        "--bs",
        "16",
        "--shots",
        "1",
        "--low-res-iters",
        "1",
        "--full-res-iters",
        "1",
        "--warmup-iters",
        "1",
    ]);
    args.extend([
        "--data-root".into(),
        root.display().to_string(),
        "--logs-dir".into(),
        out.display().to_string(),
    ]);
    run_sequence(&args);

    // One normal agd folder per stage, each started by the command that reruns it.
    for (folder, subcommand) in [
        ("step1-t1", "train"),
        ("step2-t2-dreams", "invert"),
        ("step2-t2", "incremental-x"),
        ("step3-t3-dreams", "invert"),
        ("step3-t3", "incremental-x"),
    ] {
        let log = std::fs::read_to_string(out.join(folder).join("log.txt")).unwrap();
        assert!(
            log.starts_with(&format!("agd {subcommand} ")),
            "{folder}: {}",
            log.lines().next().unwrap_or_default()
        );
    }
    for step in ["step1-t1", "step2-t2", "step3-t3"] {
        assert!(
            out.join(step).join("checkpoint.safetensors").is_file(),
            "{step}"
        );
    }
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    assert!(
        log.starts_with("agd sequence --datasets t1 t2 t3 --unseen u"),
        "{log}"
    );
    // Each inversion dreams every class its model knows: 8, then 8 + 8.
    for (dreams, ids) in [("step2-t2-dreams", 8), ("step3-t3-dreams", 16)] {
        let d = agd::data::Dreamed::load(&out.join(dreams), 100).unwrap();
        assert_eq!(d.num_ids, ids, "{dreams}");
    }

    // results.json: every step on every dataset seen so far and the unseen one.
    let json = std::fs::read_to_string(out.join("results.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["datasets"], serde_json::json!(["t1", "t2", "t3"]));
    assert_eq!(r["method"], "agd");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let all = ["t1", "t2", "t3"];
    let mut maps: Vec<Vec<f64>> = Vec::new();
    for (k, s) in steps.iter().enumerate() {
        assert_eq!(s["step"], k + 1);
        assert_eq!(s["trained_on"], all[k]);
        let mut keys: Vec<&str> = s["mAP"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        let mut expected: Vec<&str> = all[..=k].to_vec();
        expected.push("u");
        assert_eq!(keys, expected, "step {}", k + 1);
        for metric in ["mAP", "rank1"] {
            for (d, v) in s[metric].as_object().unwrap() {
                let v = v.as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "step {} {metric} {d}: {v}", k + 1);
            }
        }
        let seen: Vec<f64> = all[..=k]
            .iter()
            .map(|d| s["mAP"][d].as_f64().unwrap())
            .collect();
        let mean = seen.iter().sum::<f64>() / seen.len() as f64;
        assert!((s["seen_mAP"].as_f64().unwrap() - mean).abs() < 1e-9, "{s}");
        maps.push(seen);
    }
    let f = r["forgetting"].as_object().unwrap();
    assert_eq!(f.len(), 2, "t1 and t2 (t3 has no earlier value): {f:?}");
    for (j, d) in ["t1", "t2"].iter().enumerate() {
        let best = maps[j..2].iter().map(|m| m[j]).fold(f64::MIN, f64::max);
        let expected = best - maps[2][j];
        assert!(
            (f[*d].as_f64().unwrap() - expected).abs() < 1e-9,
            "{d}: {f:?}"
        );
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| 1 (base) | t1 |") && md.contains("## Forgetting"),
        "{md}"
    );
    let png = image::open(out.join("results.png")).unwrap();
    assert!(png.width() >= 600 && png.height() >= 300);

    // A second run reuses every stage: no epoch trained, no image dreamed, no evaluation.
    let checkpoints: Vec<_> = ["step1-t1", "step2-t2", "step3-t3"]
        .iter()
        .map(|s| out.join(s).join("checkpoint.safetensors"))
        .collect();
    let before: Vec<_> = checkpoints.iter().map(|c| modified(c)).collect();
    let again = run_sequence(&args);
    assert_eq!(
        again.matches("all 1 epochs are done already").count(),
        3,
        "{again}"
    );
    assert_eq!(
        again.matches("0 identities still short").count(),
        2,
        "{again}"
    );
    assert_eq!(
        again.matches("reusing the evaluation").count(),
        3,
        "{again}"
    );
    let after: Vec<_> = checkpoints.iter().map(|c| modified(c)).collect();
    assert_eq!(before, after, "no checkpoint written again");
    let json_again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json_again["steps"], r["steps"]);
    // The rerun found every result made: the time is still the run's that made them.
    assert_eq!(json_again["wall_seconds"], r["wall_seconds"]);

    // A checkpoint written again (its step retrained) is evaluated again; the others not.
    let later = modified(&checkpoints[2]) + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .append(true)
        .open(&checkpoints[2])
        .unwrap()
        .set_modified(later)
        .unwrap();
    let third = run_sequence(&args);
    assert_eq!(
        third.matches("reusing the evaluation").count(),
        2,
        "{third}"
    );

    // Issue 36, item 5: resumed with another method, the folder of AGD steps is refused
    // (it was reused, and its AGD models labelled "finetune"), and so is each of its steps.
    let mut finetune = args.clone();
    finetune.extend(strings(&["--method", "finetune"]));
    let out2 = agd().args(&finetune).output().unwrap();
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(!out2.status.success(), "{err}");
    for part in [
        "`agd sequence` run",
        "--method: its default there, finetune here",
        "--logs-dir",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    // Issue 36, item 1: a demo into the sequence's folder, or into one of its training
    // folders, is refused (it used to replace the sequence's results).
    for (folder, kind) in [(out.clone(), "sequence"), (out.join("step1-t1"), "train")] {
        let demo = agd()
            .args(["demo", "--quick", "-g", "cpu", "--out"])
            .arg(&folder)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&demo.stderr);
        assert!(!demo.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "holds an `agd {kind}` run, and this is `agd demo`"
            )) && err.contains("--out"),
            "{err}"
        );
    }
    let json_after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json_after["method"], "agd");
    let step2 = out.join("step2-t2");
    let refused = agd()
        .args(strings(&[
            "incremental",
            "-g",
            "cpu",
            "--finetune",
            "--dataset",
            "t2",
            "--height",
            "64",
            "--width",
            "32",
            "--epochs",
            "1",
            "--evaluate",
            "0",
        ]))
        .args(["--data-root".as_ref(), root.as_os_str()])
        .args(["--previous".as_ref(), out.join("step1-t1").as_os_str()])
        .args(["--logs-dir".as_ref(), step2.as_os_str()])
        .args(["--resume".as_ref(), step2.as_os_str()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("holds an `agd incremental-x` run, and this is `agd incremental`"),
        "{err}"
    );
}
