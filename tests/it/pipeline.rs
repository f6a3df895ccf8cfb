//! The pipeline's house: every stage's plan renders the command line that reruns it, the
//! line reaches the stage's `log.txt` and the demo's output, a pasted line reruns the
//! stage, and a model's shape comes from its checkpoint (a contradicting flag is one
//! error naming both values).

use super::util::{agd, agd_output, strings};
use agd::cli::{try_parse_from, Command};
use agd::eval::EvalPlan;
use agd::inversion::InvertPlan;
use agd::model::checkpoint::{Checkpoint, Pretrained};
use agd::model::{Depth, ModelChoice, Pooling};
use agd::options::{AugmentOptions, DataOptions, DeviceOptions, ImageSize, Setup};
use agd::stage::StagePlan;
use agd::train::optimizer::OptimizerKind;
use agd::train::plan::{BasePlan, IncrementalPlan, LoopPlan};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The plan a command line (`agd …`, as logged) maps to.
enum Plan {
    Base(BasePlan),
    Incremental(IncrementalPlan),
    Invert(InvertPlan),
    Eval(EvalPlan),
}

fn plan_of(line: &str) -> Plan {
    let words = shlex::split(line).unwrap_or_else(|| panic!("not a shell line: {line}"));
    assert_eq!(words[0], "agd", "{line}");
    let cli = try_parse_from(&words).unwrap_or_else(|e| panic!("{line}: {e}"));
    match cli.command {
        Command::Train(p) => Plan::Base(p),
        Command::Incremental(p) | Command::IncrementalX(p) => Plan::Incremental(p),
        Command::Invert(p) => Plan::Invert(p),
        Command::Evaluate(a) => Plan::Eval(a.plan),
        _ => panic!("{line}: not a stage"),
    }
}

fn every_model_value() -> ModelChoice {
    ModelChoice {
        depth: Some(Depth::R34),
        last_stride: Some(1),
        pooling: Some(Pooling::Max),
        embedding: Some(512),
    }
}

/// Every device option off its default.
fn every_device_value() -> DeviceOptions {
    DeviceOptions {
        gpu: vec!["cpu".into()],
        compute: agd::model::ComputeChoice {
            amp: true,
            memory_format: Some(agd::model::MemoryFormat::Nhwc),
        },
        deterministic: true,
    }
}

/// A loop plan with every value off its default.
fn custom_loop() -> LoopPlan {
    LoopPlan {
        setup: Setup {
            device: every_device_value(),
            seed: Some(7),
            data: DataOptions {
                data_root: "/data with space/root".into(),
                size: ImageSize {
                    height: 64,
                    width: 32,
                },
            },
        },
        dataset: "task-b".into(),
        batch_size: 16,
        resume: Some("logs/it's here".into()),
        epochs: 3,
        epochs_decay: vec![2, 3],
        logs_dir: "out/x".into(),
        save_freq: 2,
        optimizer: OptimizerKind::Adam,
        warmup: 1,
        learning_rate: 0.0003,
        evaluate: 0,
        peers: 3,
        augment: AugmentOptions {
            re: 0.25,
            re_area: 0.3,
            preload: false,
        },
        model: every_model_value(),
        dist: agd::dist::DistOptions {
            nproc_per_node: 2,
            dist_timeout: 30,
            dist_backend: Some(agd::dist::BackendKind::Gloo),
        },
        local_bn: true,
    }
}

/// `plan` rendered, and the line parsed back, is `plan` again.
fn round_trips<P: StagePlan + std::fmt::Debug + PartialEq>(plan: &P, back: fn(Plan) -> Option<P>) {
    let line = plan.argv().command_line();
    let parsed = back(plan_of(&line)).unwrap_or_else(|| panic!("{line}: another stage"));
    assert_eq!(&parsed, plan, "{line}");
}

#[test]
fn every_plan_renders_a_command_line_that_parses_back_to_it() {
    let base = |p| match p {
        Plan::Base(b) => Some(b),
        _ => None,
    };
    round_trips(&BasePlan::default(), base);
    round_trips(
        &BasePlan {
            // A new model's embedding is its backbone's width unless a flag says otherwise.
            run: LoopPlan {
                model: ModelChoice {
                    embedding: None,
                    ..every_model_value()
                },
                ..custom_loop()
            },
            pretrained: Pretrained::File("backbone_weights/resnet34.pth".into()),
        },
        base,
    );
    round_trips(
        &BasePlan {
            pretrained: Pretrained::Random,
            ..BasePlan::default()
        },
        base,
    );
    // Every way of learning the new task: fine-tuning, distillation on dreams or real
    // exemplars (with and without the default count), on the new data alone.
    let finetune = |p: IncrementalPlan| IncrementalPlan {
        finetune: true,
        ..p
    };
    let distill = |p: IncrementalPlan| IncrementalPlan {
        algo_config: Some("configs/inverXion.yaml".into()),
        inversion_dir: "gen".into(),
        exemplars: 6,
        ..p
    };
    let real = |p: IncrementalPlan| IncrementalPlan {
        algo_config: Some("configs/inverXion.yaml".into()),
        exemplar_dataset: Some("task-a".into()),
        exemplars: 3,
        ..p
    };
    let real_default = |p: IncrementalPlan| IncrementalPlan {
        algo_config: Some("configs/res-triangle.yaml".into()),
        exemplar_dataset: Some("task-a".into()),
        ..p
    };
    let new_data = |p: IncrementalPlan| IncrementalPlan {
        algo_config: Some("configs/LwF.yaml".into()),
        new_data_distillation: true,
        ..p
    };
    let learnings: [fn(IncrementalPlan) -> IncrementalPlan; 5] =
        [finetune, distill, real, real_default, new_data];
    for augmented in [false, true] {
        for (i, learning) in learnings.iter().enumerate() {
            if augmented && i == 0 {
                continue;
            }
            for run in [LoopPlan::incremental_defaults(augmented), custom_loop()] {
                let plan = learning(IncrementalPlan {
                    run,
                    previous: "logs/base".into(),
                    old_dataset: Some("task-a".into()),
                    ..IncrementalPlan::defaults(augmented)
                });
                round_trips(&plan, |p| match p {
                    Plan::Incremental(i) => Some(i),
                    _ => None,
                });
            }
        }
    }
    let mut invert = InvertPlan {
        device: every_device_value(),
        seed: Some(3),
        generation_dir: Some("gen dir".into()),
        resume: Some("gen dir".into()),
        teacher: "logs/base".into(),
        model: every_model_value(),
        size: ImageSize {
            height: 64,
            width: 32,
        },
        shard: Some("2/3".parse().unwrap()),
        ..InvertPlan::default()
    };
    invert.dreaming.bs = 8;
    invert.dreaming.shots = 4;
    invert.dreaming.iters = 9;
    invert.dreaming.coefficients.prior.tv_l2 = 0.003;
    invert.dreaming.coefficients.prior.l2 = 1e-6;
    invert.dreaming.coefficients.r_feature = 0.05;
    invert.dreaming.stages.low_res_iters = 30;
    invert.dreaming.stages.warmup_iters = 10;
    invert.dreaming.stages.coarse = 4;
    invert.dreaming.stages.jitter = 2;
    invert.dreaming.dream_format = agd::inversion::store::DreamFormat::Png;
    for plan in [InvertPlan::default(), invert] {
        round_trips(&plan, |p| match p {
            Plan::Invert(i) => Some(i),
            _ => None,
        });
    }
    let eval = EvalPlan {
        device: every_device_value(),
        datasets: vec!["a".into(), "a+b".into()],
        ckpt: "logs".into(),
        recursive: true,
        re_ranking: true,
        one_shot: true,
        output: true,
        rank_list: Some("ranks".into()),
        rank_list_n: 4,
        output_feature: agd::eval::features::OutputFeature::Global,
        model: ModelChoice {
            last_stride: Some(1),
            ..ModelChoice::default()
        },
        ..EvalPlan::default()
    };
    for plan in [EvalPlan::default(), eval] {
        round_trips(&plan, |p| match p {
            Plan::Eval(e) => Some(e),
            _ => None,
        });
    }
}

/// A finished `agd demo --quick`, shared by the tests below (its base model has last
/// stride 1, which no later stage is told).
fn demo() -> &'static PathBuf {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-demo");
        let _ = std::fs::remove_dir_all(&out);
        let run = agd_output(&[
            "demo",
            "--quick",
            "-g",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_demo_prints_and_logs_one_reproducible_command_per_stage() {
    let out = demo();
    // The first run's part of the log (a later run, which reuses every stage, appends).
    let demo_log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    let demo_log = demo_log.split("\nagd demo").next().unwrap();
    for (stage, subcommand) in [
        ("base", "train"),
        ("dreamed", "invert"),
        ("finetune", "incremental"),
        ("gd", "incremental"),
        ("simgd", "incremental"),
        ("agd", "incremental-x"),
    ] {
        // The stage's own log starts with the command that ran it, not the demo's.
        let line = first_line(&out.join(stage).join("log.txt"));
        assert!(
            line.starts_with(&format!("agd {subcommand} ")),
            "{stage}: {line}"
        );
        assert!(
            demo_log.contains(&format!("$ {line}\n")),
            "{stage}: the demo printed what the stage logged: {line}"
        );
        // The line is the stage's plan: it names the stage's own folder.
        let folder = out.join(stage).display().to_string();
        match plan_of(&line) {
            Plan::Base(p) => assert_eq!(p.run.logs_dir.display().to_string(), folder),
            Plan::Incremental(p) => {
                assert_eq!(p.run.logs_dir.display().to_string(), folder);
                assert_eq!(p.run.model, ModelChoice::default(), "{line}");
            }
            Plan::Invert(p) => assert_eq!(p.generation_dir().display().to_string(), folder),
            Plan::Eval(_) => panic!("{line}"),
        }
    }
    // Only the base model is told its shape; every later stage reads it from there.
    let base = first_line(&out.join("base/log.txt"));
    assert!(base.contains("--last-stride 1"), "{base}");
    for stage in ["dreamed", "finetune", "agd"] {
        let line = first_line(&out.join(stage).join("log.txt"));
        assert!(!line.contains("--last-stride"), "{line}");
    }
    assert_eq!(
        demo_log.matches("$ agd evaluate").count(),
        5,
        "one evaluation per model"
    );
}

/// A line the demo printed, pasted into a shell, reruns its stage.
fn a_pasted_stage_command_reruns_that_stage(out: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_agd")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // Evaluation: the printed line, through a shell, gives the numbers the demo reported.
    let demo_log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    let line = demo_log
        .lines()
        .find_map(|l| l.trim().strip_prefix("$ "))
        .filter(|l| l.starts_with("agd train"))
        .expect("the base model's command");
    let eval_line = demo_log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("$ "))
        .find(|l| l.starts_with("agd evaluate"))
        .expect("an evaluate command");
    let shell = |line: &str| {
        std::process::Command::new("sh")
            .args(["-c", line])
            .env("PATH", &path)
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let json_line = format!("{eval_line} --json");
    let ran = shell(&json_line);
    assert!(
        ran.status.success(),
        "{json_line}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let base = &results["rows"][0];
    assert_eq!(base["method"], "base");
    assert_eq!(rows[0]["dataset"], "task-a");
    assert_eq!(rows[0]["mAP"], base["old_mAP"], "{json_line}");
    assert_eq!(rows[1]["mAP"], base["new_mAP"], "{json_line}");

    // Training: the base model's line, pasted, trains the same model again (seeded). Into
    // another folder: a fresh run refuses the one holding the demo's checkpoint.
    let base_ck = out.join("base/checkpoint.safetensors");
    let before = Checkpoint::load(&base_ck).unwrap();
    let line = format!("{line} --logs-dir base-again");
    let ran = shell(&line);
    assert!(
        ran.status.success(),
        "{line}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let after = Checkpoint::load(&tmp.path().join("base-again/checkpoint.safetensors")).unwrap();
    assert_eq!(after.epoch, before.epoch);
    for (name, t) in &before.tensors {
        assert!(
            t.equal(&after.tensors[name]),
            "{name} differs after the rerun"
        );
    }
}

#[test]
fn a_model_trained_with_last_stride_1_continues_without_the_flag() {
    let out = demo();
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("ft");
    let mut args = strings(&[
        "incremental",
        "--finetune",
        "-g",
        "cpu",
        "-s",
        "1",
        "--dataset",
        "task-b",
        "--height",
        "64",
        "--width",
        "32",
        "-b",
        "16",
        "--epochs",
        "1",
        "--evaluate",
        "0",
    ]);
    args.extend([
        "--data-root".into(),
        out.join("data").display().to_string(),
        "--previous".into(),
        out.join("base").display().to_string(),
        "--logs-dir".into(),
        logs.display().to_string(),
    ]);
    let ran = agd().args(&args).output().unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let ck = Checkpoint::load(&logs.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.metadata["last_stride"], "1");
    assert_eq!(ck.metadata["depth"], "34");

    // A flag that contradicts the checkpoint is one error naming both values, before
    // anything is written.
    let other = tmp.path().join("contradicted");
    let mut contradicted = args.clone();
    contradicted.extend(strings(&["--last-stride", "2"]));
    contradicted.extend(["--logs-dir".into(), other.display().to_string()]);
    let ran = agd().args(&contradicted).output().unwrap();
    assert!(!ran.status.success());
    let err = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--previous")
            && err.contains("last stride 1")
            && err.contains("--last-stride 2"),
        "{err}"
    );
    assert!(!other.exists(), "a run that cannot start creates nothing");

    // The same policy for --teacher and --ckpt.
    let ran = agd_output(&[
        "invert",
        "-g",
        "cpu",
        "--teacher",
        out.join("base").to_str().unwrap(),
        "--generation-dir",
        tmp.path().join("gen").to_str().unwrap(),
        "--depth",
        "50",
    ]);
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(
        !ran.status.success() && err.contains("ResNet-34") && err.contains("--depth 50"),
        "{err}"
    );
    let ran = agd_output(&[
        "evaluate",
        "-g",
        "cpu",
        "--ckpt",
        out.join("base").to_str().unwrap(),
        "--data-root",
        out.join("data").to_str().unwrap(),
        "--dataset",
        "task-a",
        "--last-pooling",
        "max",
    ]);
    let err = String::from_utf8_lossy(&ran.stderr);
    assert!(
        !ran.status.success() && err.contains("pooling avg") && err.contains("--last-pooling max"),
        "{err}"
    );
}

#[test]
fn demo_quick_runs_the_whole_method_and_writes_its_results() {
    // The one quick demo of the suite (its run asserts success); the other demo tests
    // only read it, and every test that writes into it is here, in order.
    let out_dir = demo();
    // results.json: the base row and one per method, fractions in [0, 1], the wall time.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let rows = results["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["base", "finetune", "gd", "simgd", "agd"]);
    for row in rows {
        for key in ["old_mAP", "old_rank1", "new_mAP", "new_rank1"] {
            let v = row[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} in {row}");
        }
    }
    assert!(results["wall_seconds"].as_f64().unwrap() > 0.0);
    // Whether the dreams carry the identities: 32 dreams of 8 identities against the
    // real images' ceiling.
    let dreams = &results["dreams"];
    assert_eq!(dreams["identities"], 8);
    assert_eq!(dreams["chance"].as_f64(), Some(0.125));
    assert_eq!(dreams["dreamed"]["images"], 32);
    assert_eq!(dreams["real"]["images"], 48);
    for set in ["dreamed", "real"] {
        let top1 = dreams[set]["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{set}: {dreams}");
    }
    // results.md: the paper-shaped table, one line per method.
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    for label in ["base", "fine-tuning", "GD", "simGD", "AGD"] {
        assert!(
            md.lines().any(|l| l.starts_with(&format!("| {label}"))),
            "{label}: {md}"
        );
    }
    let png = image::open(out_dir.join("results.png")).unwrap();
    assert!(
        png.width() >= 800,
        "results.png {}×{}",
        png.width(),
        png.height()
    );
    // Every stage left its artefacts: checkpoints, curves, dreamed images, rank lists.
    for run in ["base", "finetune", "gd", "simgd", "agd"] {
        assert!(
            out_dir.join(run).join("checkpoint.safetensors").is_file(),
            "{run}"
        );
        assert!(out_dir.join(run).join("curves.png").is_file(), "{run}");
    }
    let dreamed = agd::data::Dreamed::load(&out_dir.join("dreamed"), 100).unwrap();
    assert_eq!(
        dreamed.num_ids, 8,
        "one dreamed identity per task-A identity"
    );
    // The dreams beside the people they were dreamed for: 8 rows of 3 real images, a
    // blank cell and 4 dreams, each cell 128×64 inside a 1-px margin.
    let sheet = image::open(out_dir.join(agd::demo::BESIDE_REAL))
        .unwrap()
        .to_rgb8();
    assert_eq!((sheet.width(), sheet.height()), (8 * 66, 8 * 130));
    let centre = |cell: u32| *sheet.get_pixel(cell * 66 + 33, 65);
    assert_eq!(centre(3), image::Rgb([255, 255, 255]), "the blank cell");
    for cell in [0, 1, 2, 4, 7] {
        assert_ne!(centre(cell), image::Rgb([255, 255, 255]), "cell {cell}");
    }
    assert!(out_dir.join("rank-lists/agd/task-a").is_dir());
    let log = std::fs::read_to_string(out_dir.join("log.txt")).unwrap();
    for command in [
        "$ agd train",
        "$ agd invert",
        "$ agd incremental ",
        "$ agd incremental-x",
        "$ agd evaluate",
    ] {
        assert!(
            log.contains(command),
            "the demo shows the commands it runs: {command}"
        );
    }
    a_pasted_stage_command_reruns_that_stage(out_dir);
    // A second run reuses the data and every finished stage.
    let again = agd_output(&[
        "demo",
        "--quick",
        "-g",
        "cpu",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(again.status.success());
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("reusing"), "{stdout}");
    assert!(stdout.contains("all 2 epochs are done already"), "{stdout}");
}

#[test]
fn demo_over_seeds_tables_every_seeds_margins_and_their_mean() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-demo-seeds");
    let _ = std::fs::remove_dir_all(&out);
    // The smallest demo there is, over two seeds.
    let tiny = "demo --quick -g cpu --ids 4 --base-epochs 1 --shots 1 --low-res-iters 1 \
                --full-res-iters 1";
    let tiny: Vec<&str> = tiny.split_whitespace().collect();
    let mut args = tiny.clone();
    args.extend(["--seeds", "3,5", "--out", out.to_str().unwrap()]);
    let run = agd_output(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("seeds.json")).unwrap()).unwrap();
    let seeds = summary["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    for (entry, seed) in seeds.iter().zip([3, 5]) {
        assert_eq!(entry["seed"], seed);
        // Each seed is a whole demo in its own folder, and the table is built from it.
        let own: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("seed-{seed}/results.json"))).unwrap(),
        )
        .unwrap();
        let old_map = |m: &str| {
            own["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["method"] == m)
                .unwrap()["old_mAP"]
                .as_f64()
                .unwrap()
        };
        for m in ["gd", "simgd", "agd"] {
            let margin = entry["margins"][m].as_f64().unwrap();
            assert!(
                (margin - 100.0 * (old_map(m) - old_map("finetune"))).abs() < 1e-9,
                "{m}"
            );
        }
    }
    // A finished seed's folder is not continued with another recipe, nor is a folder of an
    // agd from before recipes were recorded.
    let seed3 = out.join("seed-3");
    let mut again = tiny.clone();
    again.extend(["-s", "3"]);
    again.extend(["--re", "0.5", "--out", seed3.to_str().unwrap()]);
    let refused = agd_output(&again);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    for part in ["other settings", "--re: 0 there, 0.5 here", "--out"] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    // Nor one dreamed with other knobs by an earlier agd: its record names the sizes but
    // not the dreaming flags the demo fixes.
    let recipe = seed3.join(agd::record::RECORD);
    let made = std::fs::read_to_string(&recipe).unwrap();
    let mut earlier: serde_json::Value = serde_json::from_str(&made).unwrap();
    let flags = earlier["flags"].as_object_mut().unwrap();
    let before = flags.len();
    flags.retain(|k, _| !k.starts_with("agd invert "));
    assert!(flags.len() < before, "{made}");
    std::fs::write(&recipe, earlier.to_string()).unwrap();
    let mut same = tiny.clone();
    same.extend(["-s", "3", "--out", seed3.to_str().unwrap()]);
    let refused = agd_output(&same);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("another agd")
            && err.contains("agd invert --")
            && err.contains("--out"),
        "{err}"
    );
    // Issue 36, item 1: a sequence into a demo's folder is refused too.
    let refused = agd_output(&[
        "sequence",
        "--datasets",
        "task-a",
        "task-b",
        "-g",
        "cpu",
        "--pretrained",
        "none",
        "--data-root",
        seed3.join("data").to_str().unwrap(),
        "--logs-dir",
        seed3.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("holds an `agd demo` run, and this is `agd sequence`")
            && err.contains("--logs-dir"),
        "{err}"
    );
    std::fs::write(&recipe, made).unwrap();
    let old = out.join("older");
    std::fs::create_dir_all(old.join("base")).unwrap();
    let refused = agd_output(&[
        "demo",
        "--quick",
        "-g",
        "cpu",
        "--out",
        old.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("earlier agd") && err.contains("--out"),
        "{err}"
    );
    for m in ["gd", "simgd", "agd"] {
        let mean = (seeds[0]["margins"][m].as_f64().unwrap()
            + seeds[1]["margins"][m].as_f64().unwrap())
            / 2.0;
        assert!((summary["mean_margins"][m].as_f64().unwrap() - mean).abs() < 1e-9);
        let above = seeds
            .iter()
            .filter(|s| s["margins"][m].as_f64().unwrap() > 0.0)
            .count();
        assert_eq!(summary["above_finetune"][m], above);
    }
    let md = std::fs::read_to_string(out.join("seeds.md")).unwrap();
    assert!(md.lines().any(|l| l.starts_with("| mean |")), "{md}");
    assert!(
        md.lines()
            .any(|l| l.starts_with("| above FT |") && l.contains("of 2")),
        "{md}"
    );
    assert!(
        stdout.contains("above FT"),
        "the table is printed: {stdout}"
    );
    // A repeated seed is one clear error, before any work.
    let again = agd_output(&[
        "demo",
        "--quick",
        "--seeds",
        "1,1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("repeated"));
}

#[test]
fn a_demo_with_an_impossible_inversion_size_fails_before_it_trains() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-demo-coarse-1");
    let _ = std::fs::remove_dir_all(&out);
    let run = agd_output(&[
        "demo",
        "--quick",
        "-g",
        "cpu",
        "--coarse",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("--coarse 1") && err.contains("block size"),
        "{err}"
    );
    // Nothing was trained or generated; the error is in the run's log.
    assert!(!out.join("base").exists() && !out.join("data").exists());
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    assert!(log.contains("--coarse 1"), "{log}");
}
