//! `agd evaluate` as a user runs it: several datasets, `a+b` union galleries, feature
//! files, rank-list pictures, eval.txt, JSON, recursive checkpoints, bad input.

use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use agd::train::fit::{save_checkpoint, FitConfig};
use agd::train::optimizer::{Optimizer, OptimizerKind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::Device;

use super::util::agd_output as agd;

fn ok(args: &[&str]) -> String {
    let out = agd(args);
    assert!(
        out.status.success(),
        "agd {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    logs: PathBuf,
}

impl Setup {
    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// Two small synthetic datasets and a ResNet-34 checkpoint (random weights: the
    /// tests check the protocol's plumbing, not accuracy).
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        for (name, style, seed) in [("a", "street", "1"), ("b", "mall", "2")] {
            ok(&[
                "synth",
                "--data-root",
                Self::s(&root),
                "--dataset",
                name,
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
                "--style",
                style,
                "--seed",
                seed,
            ]);
        }
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        tch::manual_seed(4);
        let cfg = ModelConfig {
            depth: Depth::R34,
            last_stride: 2,
            pooling: Pooling::Avg,
            embedding: 512,
            classes: 6,
        };
        let model = ReidModel::new(cfg, Device::Cpu).unwrap();
        let fit = FitConfig {
            logs_dir: logs.clone(),
            epochs: 1,
            start_epoch: 1,
            base_lr: 0.01,
            warmup: 0,
            milestones: vec![],
            evaluate_every: 0,
            save_freq: 1,
            eval_batch_size: 16,
            args: "test".into(),
            batch_shares: 1,
        };
        save_checkpoint(
            &fit,
            &model,
            &Optimizer::new(&model, OptimizerKind::Sgd),
            1,
            true,
        )
        .unwrap();
        Self {
            _tmp: tmp,
            root,
            logs,
        }
    }

    fn eval(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec![
            "evaluate",
            "-g",
            "cpu",
            "--data-root",
            Self::s(&self.root),
            "-c",
            Self::s(&self.logs),
            "--height",
            "64",
            "--width",
            "32",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str::<Value>(&ok(&args))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

#[test]
fn several_datasets_and_union_galleries() {
    let s = Setup::new();
    let rows = s.eval(&["--dataset", "a", "b", "a+b"]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "a (in a+b)", "b (in a+b)", "a+b (average)"]
    );
    for r in &rows {
        for key in ["mAP", "rank1", "rank5", "rank10", "rank20"] {
            let v = r[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
        assert_eq!(r["re_ranked"], false);
    }
    // The union gallery only adds items of other identities: mAP can only drop, and
    // every query stays valid (ids of a and b never match each other although both
    // datasets number them from 1).
    assert!(rows[2]["mAP"].as_f64().unwrap() <= rows[0]["mAP"].as_f64().unwrap() + 1e-9);
    assert_eq!(rows[2]["valid_queries"], rows[0]["valid_queries"]);
    let avg = (rows[2]["mAP"].as_f64().unwrap() + rows[3]["mAP"].as_f64().unwrap()) / 2.0;
    assert!((rows[4]["mAP"].as_f64().unwrap() - avg).abs() < 1e-12);
}

#[test]
fn a_u_b_scores_both_datasets_queries_as_one_set_against_both_galleries() {
    let s = Setup::new();
    let rows = s.eval(&["--dataset", "a+b", "aUb"]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a (in a+b)", "b (in a+b)", "a+b (average)", "aUb"]);
    // Each query is ranked against the same union gallery either way, so aUb's numbers
    // are the queries' mean over both sets: a+b's parts weighted by their query counts.
    let n = |r: &Value| r["valid_queries"].as_f64().unwrap();
    let (na, nb, nu) = (n(&rows[0]), n(&rows[1]), n(&rows[3]));
    assert_eq!(nu, na + nb);
    for key in ["mAP", "rank1", "rank5"] {
        let v = |r: &Value| r[key].as_f64().unwrap();
        let weighted = (v(&rows[0]) * na + v(&rows[1]) * nb) / nu;
        assert!(
            (v(&rows[3]) - weighted).abs() < 1e-9,
            "{key}: {} vs {weighted}",
            v(&rows[3])
        );
    }
    // A dataset folder whose name holds a `U` is one dataset, not a union.
    let copy = s.root.join("aUz");
    for sub in std::fs::read_dir(s.root.join("a")).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        let to = copy.join(sub.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let rows = s.eval(&["--dataset", "a", "aUz"]);
    assert_eq!(rows[1]["dataset"], "aUz");
    assert_eq!(rows[0]["mAP"], rows[1]["mAP"]);
}

#[test]
fn feature_files_round_trip_and_bad_files_are_named() {
    let s = Setup::new();
    let file = s.logs.join("a-features.safetensors");
    let direct = s.eval(&["--dataset", "a", "--save-features", Setup::s(&file)]);
    let from_file: Vec<Value> =
        serde_json::from_str::<Value>(&ok(&["evaluate", "--features", Setup::s(&file), "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
    assert_eq!(direct[0]["mAP"], from_file[0]["mAP"]);
    assert_eq!(direct[0]["rank1"], from_file[0]["rank1"]);
    // Issue 36: a name near the file system's limit (255 bytes) is written (its
    // temporary sibling's name, longer still, failed, and the error named that hidden file).
    let long = s.logs.join(format!("{}.safetensors", "f".repeat(240)));
    s.eval(&["--dataset", "a", "--save-features", Setup::s(&long)]);
    assert!(long.is_file());

    // A feature file missing a tensor, and a non-safetensors file: clear errors.
    let (tensors, meta) = agd::model::checkpoint::read_safetensors(&file).unwrap();
    let partial: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .filter(|(n, _)| n != "gallery_cams")
        .collect();
    let broken = s.logs.join("broken.safetensors");
    agd::model::checkpoint::write_safetensors(&broken, &partial, &meta).unwrap();
    let out = agd(&["evaluate", "--features", Setup::s(&broken)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gallery_cams") && err.contains("broken.safetensors"),
        "{err}"
    );
    let text = s.logs.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let out = agd(&["evaluate", "--features", Setup::s(&text)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("notes.txt"));
}

#[test]
fn rank_lists_eval_txt_and_recursive_checkpoints() {
    let s = Setup::new();
    let pictures = s.logs.join("ranks");
    let features = s.logs.join("f.safetensors");
    let rows = s.eval(&[
        "--dataset",
        "a",
        "--rank-list",
        Setup::s(&pictures),
        "--rank-list-n",
        "3",
        "--save-features",
        Setup::s(&features),
        "-o",
        "--recursive",
    ]);
    // --recursive finds checkpoint.safetensors and checkpoint-epoch1.safetensors; each
    // one's pictures and features are its own, none overwrites the other's.
    assert_eq!(rows.len(), 2);
    let (w, h) = agd::eval::ranklist::picture_size(10);
    for (id, row) in [("checkpoint", 0), ("checkpoint-epoch1", 1)] {
        let mut pngs: Vec<PathBuf> = std::fs::read_dir(pictures.join(id).join("a"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        pngs.sort();
        assert_eq!(pngs.len(), 3, "{id}");
        for p in &pngs {
            let img = image::open(p).unwrap();
            assert_eq!((img.width(), img.height()), (w, h), "{}", p.display());
        }
        let file = s.logs.join(format!("f-{id}.safetensors"));
        let scored = rows_of_features(&file);
        let ck = rows.iter().find(|r| {
            r["checkpoint"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{id}.safetensors"))
        });
        assert_eq!(scored[0]["mAP"], ck.unwrap()["mAP"], "{id} (row {row})");
    }
    assert!(!features.exists() && !pictures.join("a").exists());
    let eval_txt = std::fs::read_to_string(s.logs.join("eval.txt")).unwrap();
    assert_eq!(eval_txt.matches("Epoch: 1").count(), 2, "{eval_txt}");
    assert!(eval_txt.contains("mAP:") && eval_txt.contains("CMC-1"));
}

#[test]
fn bad_checkpoints_and_datasets_are_clear_errors() {
    let s = Setup::new();
    let missing = s.logs.join("nope");
    let out = agd(&[
        "evaluate",
        "-g",
        "cpu",
        "--data-root",
        Setup::s(&s.root),
        "--dataset",
        "a",
        "-c",
        Setup::s(&missing),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("-c/--ckpt") && err.contains("nope"),
        "{err}"
    );
    // A missing `CUHK03` is named as itself (issue 36: it was split at its `U`, and
    // reported as `--dataset C`).
    for missing in ["zzz", "CUHK03"] {
        let out = agd(&[
            "evaluate",
            "-g",
            "cpu",
            "--data-root",
            Setup::s(&s.root),
            "--dataset",
            missing,
            "-c",
            Setup::s(&s.logs),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("--dataset {missing}: ")),
            "{err}"
        );
    }
}

#[test]
fn a_truncated_gallery_image_is_an_error_naming_it() {
    let s = Setup::new();
    let gallery = s.root.join("a").join("bounding_box_test");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&gallery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let cut = &files[files.len() / 2];
    let bytes = std::fs::read(cut).unwrap();
    std::fs::write(cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = agd(&[
        "evaluate",
        "-g",
        "cpu",
        "--data-root",
        Setup::s(&s.root),
        "--dataset",
        "a",
        "-c",
        Setup::s(&s.logs),
        "--height",
        "64",
        "--width",
        "32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&cut.display().to_string())
            && err.contains("truncated"),
        "{err}"
    );
}

impl Setup {
    /// `agd evaluate` on this setup's data and checkpoints, without --json, not asserting
    /// success.
    fn run(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "evaluate",
            "-g",
            "cpu",
            "--data-root",
            Self::s(&self.root),
            "--height",
            "64",
            "--width",
            "32",
        ];
        args.extend_from_slice(extra);
        agd(&args)
    }

    /// The tensors and metadata of the setup's checkpoint.
    fn checkpoint_contents(
        &self,
    ) -> (
        std::collections::HashMap<String, tch::Tensor>,
        std::collections::BTreeMap<String, String>,
    ) {
        agd::model::checkpoint::read_safetensors(&self.logs.join("checkpoint.safetensors")).unwrap()
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A clean refusal: exit code 1 (not a panic's 101), no backtrace.
fn assert_refused(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

/// Rows of `agd evaluate --features file --json`.
fn rows_of_features(file: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(&["evaluate", "--features", Setup::s(file), "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn union_datasets_write_features_and_rank_lists_per_query_set() {
    let s = Setup::new();
    let base = s.logs.join("f.safetensors");
    let ranks = s.logs.join("ranks");
    let rows = s.eval(&[
        "-c",
        Setup::s(&s.logs),
        "--dataset",
        "a",
        "b",
        "a+b",
        "--save-features",
        Setup::s(&base),
        "--rank-list",
        Setup::s(&ranks),
        "--rank-list-n",
        "2",
    ]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "a (in a+b)", "b (in a+b)", "a+b (average)"]
    );
    // One file and one picture folder per query set; a union part's file holds its
    // queries against the union gallery, and scores as its row did.
    for (name, row) in [("a", 0), ("b", 1), ("a-in-a+b", 2), ("b-in-a+b", 3)] {
        let file = s.logs.join(format!("f-{name}.safetensors"));
        assert!(file.is_file(), "{} not written", file.display());
        let again = rows_of_features(&file);
        assert_eq!(again[0]["mAP"], rows[row]["mAP"], "{name}");
        assert_eq!(again[0]["rank1"], rows[row]["rank1"], "{name}");
        assert_eq!(
            again[0]["valid_queries"], rows[row]["valid_queries"],
            "{name}"
        );
        let pictures = std::fs::read_dir(ranks.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .count();
        assert_eq!(pictures, 2, "{name}");
    }
    assert!(!base.exists());
    let gallery = |name: &str| {
        let file = s.logs.join(format!("f-{name}.safetensors"));
        agd::model::checkpoint::read_safetensors(&file).unwrap().0["gallery_features"].size()[0]
    };
    assert_eq!(gallery("a-in-a+b"), gallery("a") + gallery("b"));
    assert_eq!(gallery("b-in-a+b"), gallery("a") + gallery("b"));
}

#[test]
fn recursive_evaluation_reports_good_checkpoints_and_names_the_bad_one() {
    let s = Setup::new();
    let broken = s.logs.join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("checkpoint.safetensors"),
        b"not a checkpoint at all",
    )
    .unwrap();
    let bad = broken.join("checkpoint.safetensors");
    let bad = bad.to_str().unwrap();

    let out = s.run(&[
        "-c",
        Setup::s(&s.logs),
        "--dataset",
        "a",
        "--recursive",
        "--json",
    ]);
    let err = assert_refused(&out);
    assert!(err.contains(bad) && err.contains("1 of 3"), "{err}");
    let rows: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let good: Vec<&Value> = rows.iter().filter(|r| r.get("mAP").is_some()).collect();
    assert_eq!(good.len(), 2, "{rows:?}");
    let failed: Vec<&Value> = rows.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    assert_eq!(failed[0]["checkpoint"], bad);

    // Tables: the good checkpoints' are printed, the bad one is named on stderr.
    let out = s.run(&["-c", Setup::s(&s.logs), "--dataset", "a", "--recursive"]);
    let err = assert_refused(&out);
    assert!(err.contains(bad), "{err}");
    let tables = String::from_utf8_lossy(&out.stdout);
    assert_eq!(tables.matches("(epoch 1)").count(), 2, "{tables}");
}

#[test]
fn output_destinations_are_checked_before_any_work() {
    let s = Setup::new();
    let missing = s.logs.join("missing").join("f.safetensors");
    let out = s.run(&[
        "-c",
        Setup::s(&s.logs),
        "--dataset",
        "a",
        "--save-features",
        Setup::s(&missing),
    ]);
    let err = assert_refused(&out);
    assert!(
        err.contains("--save-features") && err.contains(Setup::s(&missing)),
        "{err}"
    );
    assert!(!err.contains(".tmp-"), "{err}");
    assert!(out.stdout.is_empty(), "evaluated before refusing");

    let a_file = s.logs.join("ranks.txt");
    std::fs::write(&a_file, "").unwrap();
    let out = s.run(&[
        "-c",
        Setup::s(&s.logs),
        "--dataset",
        "a",
        "--rank-list",
        Setup::s(&a_file),
    ]);
    let err = assert_refused(&out);
    assert!(
        err.contains("--rank-list") && err.contains("ranks.txt"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "evaluated before refusing");
}

#[test]
fn values_read_from_a_checkpoint_are_not_reported_as_flags() {
    let s = Setup::new();
    let (tensors, meta) = s.checkpoint_contents();
    // A ResNet-34 whose embedding is 256 wide: no flag said 256.
    let narrow: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = match n.as_str() {
                "backbone.bn.weight" | "backbone.bn.running_var" => {
                    tch::Tensor::ones([256], tch::kind::FLOAT_CPU)
                }
                "backbone.bn.bias" | "backbone.bn.running_mean" => {
                    tch::Tensor::zeros([256], tch::kind::FLOAT_CPU)
                }
                "classifier.W" => tch::Tensor::zeros([6, 256], tch::kind::FLOAT_CPU),
                _ => t.shallow_clone(),
            };
            (n.clone(), t)
        })
        .collect();
    let file = s.logs.join("narrow.safetensors");
    agd::model::checkpoint::write_safetensors(&file, &narrow, &meta).unwrap();
    let out = s.run(&["-c", Setup::s(&file), "--dataset", "a"]);
    let err = assert_refused(&out);
    assert!(!err.contains("--embedding"), "{err}");
    assert!(
        err.contains("narrow.safetensors") && err.contains("256") && err.contains("checkpoint"),
        "{err}"
    );

    // A last stride of 3 in the metadata.
    let mut meta3 = meta.clone();
    meta3.insert("last_stride".into(), "3".into());
    let all: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let file = s.logs.join("stride3.safetensors");
    agd::model::checkpoint::write_safetensors(&file, &all, &meta3).unwrap();
    let out = s.run(&["-c", Setup::s(&file), "--dataset", "a"]);
    let err = assert_refused(&out);
    assert!(!err.contains("--last-stride"), "{err}");
    assert!(
        err.contains("stride3.safetensors") && err.contains("3") && err.contains("checkpoint"),
        "{err}"
    );
}

#[test]
fn empty_random_and_misplaced_files_say_what_they_are() {
    let s = Setup::new();
    let empty = s.logs.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let random = s.logs.join("random.pth.tar");
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(noise[8] != b'{' && !noise.starts_with(b"PK"));
    std::fs::write(&random, &noise).unwrap();
    let features = s.logs.join("features.safetensors");
    agd::eval::features_file::FeatureFile {
        query: tch::Tensor::ones([2, 4], tch::kind::FLOAT_CPU),
        gallery: tch::Tensor::ones([3, 4], tch::kind::FLOAT_CPU),
        query_pids: vec![1, 2],
        gallery_pids: vec![1, 2, 3],
        query_cams: vec![1, 1],
        gallery_cams: vec![2, 2, 2],
    }
    .save(&features)
    .unwrap();

    let err = assert_refused(&s.run(&["-c", Setup::s(&empty), "--dataset", "a"]));
    assert!(
        err.contains("empty.safetensors") && err.contains("empty"),
        "{err}"
    );
    let err = assert_refused(&s.run(&["-c", Setup::s(&random), "--dataset", "a"]));
    assert!(
        err.contains("random.pth.tar")
            && err.contains("neither safetensors, torch.save nor paddle.save"),
        "{err}"
    );
    let err = assert_refused(&s.run(&["-c", Setup::s(&features), "--dataset", "a"]));
    assert!(
        err.contains("features.safetensors") && err.contains("a feature file"),
        "{err}"
    );

    // The reverse: checkpoints (and an empty file) given as a feature file.
    let ckpt = s.logs.join("checkpoint.safetensors");
    let err = assert_refused(&agd(&["evaluate", "--features", Setup::s(&ckpt)]));
    assert!(
        err.contains("--features") && err.contains("a model checkpoint"),
        "{err}"
    );
    let err = assert_refused(&agd(&["evaluate", "--features", Setup::s(&empty)]));
    assert!(err.contains("--features") && err.contains("empty"), "{err}");
    let err = assert_refused(&agd(&["evaluate", "--features", Setup::s(&random)]));
    assert!(
        err.contains("--features")
            && err.contains("neither safetensors, torch.save nor paddle.save"),
        "{err}"
    );
}

/// A feature file whose `poison` query (or gallery) row holds `value`.
fn poisoned_features(dir: &Path, name: &str, gallery_row: bool, value: f32) -> PathBuf {
    let query = tch::Tensor::ones([2, 4], tch::kind::FLOAT_CPU);
    let gallery = tch::Tensor::ones([3, 4], tch::kind::FLOAT_CPU);
    let target = if gallery_row { &gallery } else { &query };
    let _ = target.get(1).get(2).fill_(value as f64);
    let file = dir.join(name);
    agd::eval::features_file::FeatureFile {
        query,
        gallery,
        query_pids: vec![1, 2],
        gallery_pids: vec![1, 2, 3],
        query_cams: vec![1, 1],
        gallery_cams: vec![2, 2, 2],
    }
    .save(&file)
    .unwrap();
    file
}

#[test]
fn non_finite_features_name_the_file_and_what_they_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let nan = poisoned_features(tmp.path(), "nan.safetensors", false, f32::NAN);
    let err = assert_refused(&agd(&["evaluate", "--features", Setup::s(&nan)]));
    assert!(
        err.contains("nan.safetensors") && err.contains("NaN") && err.contains("query"),
        "{err}"
    );
    let inf = poisoned_features(tmp.path(), "inf.safetensors", true, f32::INFINITY);
    for extra in [&[][..], &["-r"][..]] {
        let mut args = vec!["evaluate", "--features", Setup::s(&inf)];
        args.extend_from_slice(extra);
        let err = assert_refused(&agd(&args));
        assert!(
            err.contains("inf.safetensors")
                && err.contains("infinite")
                && err.contains("gallery")
                && !err.contains("NaN"),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn a_dataset_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A folder `a` (empty: the check comes before any data is read) makes `aUa` a union.
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    let nowhere = Setup::s(tmp.path());
    for (given, shown) in [
        (&["a+a"][..], "--dataset a+a"),
        (&["a", "a"][..], "--dataset a"),
        (&["aUa"][..], "--dataset aUa"),
        (&["aUb+a"][..], "--dataset aUb+a"),
    ] {
        let mut args = vec![
            "evaluate",
            "-g",
            "cpu",
            "--data-root",
            nowhere,
            "-c",
            nowhere,
        ];
        args.push("--dataset");
        args.extend_from_slice(given);
        let err = assert_refused(&agd(&args));
        assert!(err.contains(shown) && err.contains("twice"), "{err}");
    }
}

#[test]
fn size_and_count_flags_of_evaluate_are_checked_first() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = Setup::s(tmp.path());
    let ranks = tmp.path().join("ranks");
    for (flags, shown) in [
        (vec!["--height", "0"], "--height 0"),
        (vec!["--width", "0"], "--width 0"),
        (vec!["-b", "0"], "--batch-size 0"),
        (
            vec!["--rank-list", Setup::s(&ranks), "--rank-list-n", "0"],
            "--rank-list-n 0",
        ),
    ] {
        // No data and no checkpoint: only a check made before any work names the flag.
        let mut args = vec![
            "evaluate",
            "-g",
            "cpu",
            "--data-root",
            nowhere,
            "-c",
            nowhere,
        ];
        args.extend_from_slice(&flags);
        let err = assert_refused(&agd(&args));
        assert!(err.contains(shown), "{shown}: {err}");
    }
}

/// `--memory-format nhwc` only moves where the trunk's activations sit: the features, and
/// so every metric, are those of NCHW; `--amp` (bfloat16 trunk) stays close.
#[test]
fn evaluation_agrees_in_every_memory_format_and_nearly_in_bfloat16() {
    let s = Setup::new();
    let nchw = s.eval(&["--dataset", "a", "--memory-format", "nchw"]);
    let nhwc = s.eval(&["--dataset", "a", "--memory-format", "nhwc"]);
    let amp = s.eval(&["--dataset", "a", "--amp"]);
    let map = |rows: &[Value]| rows[0]["mAP"].as_f64().unwrap();
    assert!(
        (map(&nhwc) - map(&nchw)).abs() <= 1e-4,
        "{nhwc:?} vs {nchw:?}"
    );
    assert!(
        (map(&amp) - map(&nchw)).abs() <= 0.05 * map(&nchw),
        "{amp:?} vs {nchw:?}"
    );
}

/// Issue 37: `--nproc-per-node 2` (two workers on 127.0.0.1, Gloo) gives one process's
/// results exactly, with batches of 8 so that each worker extracts several (and one of
/// them a partial last batch); a feature file is written once, by rank 0.
#[test]
fn two_workers_evaluate_to_one_processs_numbers_exactly() {
    let s = Setup::new();
    // Every process on one thread, as each worker is: the same kernels, the same sums.
    let one_thread = |extra: &[&str]| -> Vec<Value> {
        let out = super::util::agd()
            .args([
                "evaluate", "-g", "cpu", "--height", "64", "--width", "32", "--json",
            ])
            .args(["--data-root", Setup::s(&s.root), "-c", Setup::s(&s.logs)])
            .args(["-b", "8", "--dataset", "a", "b", "a+b"])
            .args(extra)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap()
    };
    let alone = one_thread(&[]);
    let features = s.logs.join("f.safetensors");
    let two = one_thread(&[
        "--nproc-per-node",
        "2",
        "--save-features",
        Setup::s(&features),
    ]);
    assert_eq!(alone, two);
    let alone_file = s.logs.join("alone.safetensors");
    one_thread(&["--save-features", Setup::s(&alone_file)]);
    for part in ["a", "b", "a-in-a+b", "b-in-a+b"] {
        let read = |f: &Path| {
            std::fs::read(f.with_file_name(format!(
                "{}-{part}.safetensors",
                f.file_stem().unwrap().to_string_lossy()
            )))
            .unwrap()
        };
        assert!(read(&features) == read(&alone_file), "{part}");
    }
}

/// Issue 37: a rank whose peers never come ends with one error within `--dist-timeout`,
/// naming its rank and the store; it never waits forever.
#[test]
fn a_rank_alone_ends_with_an_error_within_the_timeout() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    for rank in ["0", "1"] {
        let out = super::util::agd()
            .args([
                "evaluate",
                "-g",
                "cpu",
                "--dataset",
                "a",
                "--dist-timeout",
                "2",
            ])
            .args(["--data-root", Setup::s(&s.root), "-c", Setup::s(&s.logs)])
            .env("WORLD_SIZE", "2")
            .env("RANK", rank)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!("rank {rank} of 2"))
                && err.contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = agd(&["evaluate", "--nproc-per-node", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--nproc-per-node 0"),
        "{err}"
    );
}
