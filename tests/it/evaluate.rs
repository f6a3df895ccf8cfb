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
    let rows = s.eval(&[
        "--dataset",
        "a",
        "--rank-list",
        Setup::s(&pictures),
        "--rank-list-n",
        "3",
        "-o",
        "--recursive",
    ]);
    // --recursive finds checkpoint.safetensors and checkpoint-epoch1.safetensors.
    assert_eq!(rows.len(), 2);
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(pictures.join("a"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 3);
    let (w, h) = agd::eval::ranklist::picture_size(10);
    for p in &pngs {
        let img = image::open(p).unwrap();
        assert_eq!((img.width(), img.height()), (w, h), "{}", p.display());
    }
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
    let out = agd(&[
        "evaluate",
        "-g",
        "cpu",
        "--data-root",
        Setup::s(&s.root),
        "--dataset",
        "zzz",
        "-c",
        Setup::s(&s.logs),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--dataset zzz"),
        "{err}"
    );
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
