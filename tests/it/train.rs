//! `agd train` end to end on small synthetic data: it learns, its checkpoints round-trip,
//! and a run killed mid-epoch and resumed ends where an uninterrupted run ends.

use agd::data::ReidDataset;
use agd::eval::{features::OutputFeature, TestSet};
use agd::model::checkpoint::Checkpoint;
use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tch::Device;

const H: usize = 64;
const W: usize = 32;

use super::util::{agd, read_or_empty, wait_until};

pub(crate) fn synth(root: &Path, ids: usize) {
    let out = agd()
        .args(["synth", "--data-root"])
        .arg(root)
        .args([
            "--dataset",
            "s",
            "--ids",
            &ids.to_string(),
            "--images-per-id",
            "8",
            "--cameras",
            "3",
        ])
        .args(["--distractors", "10", "--junk", "4", "--seed", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `agd train` arguments for a small ResNet-34 on 64×32 images (reference SGD recipe,
/// batch 16), with `extra` flags appended (later flags win).
pub(crate) fn train_args(root: &Path, logs: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "-g",
        "cpu",
        "-s",
        "3",
        "--dataset",
        "s",
        "--depth",
        "34",
        "--embedding",
        "512",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "--data-root".into(),
        root.display().to_string(),
        "--logs-dir".into(),
        logs.display().to_string(),
    ]);
    a.extend(
        [
            "--height",
            "64",
            "--width",
            "32",
            "-b",
            "16",
            "--warmup",
            "1",
            "--epochs-decay",
            "100",
            "--save-freq",
            "2",
            // No ImageNet weights here: random initialisation, asked for.
            "--pretrained",
            "none",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend([
        "--epochs".into(),
        epochs.to_string(),
        "--evaluate".into(),
        "0".into(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub(crate) fn run_ok(args: &[String]) {
    let out = agd().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "agd {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn small_config(classes: i64) -> ModelConfig {
    ModelConfig {
        depth: Depth::R34,
        last_stride: 2,
        pooling: Pooling::Avg,
        embedding: 512,
        classes,
    }
}

#[test]
fn training_lowers_the_loss_and_beats_an_untrained_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, logs) = (tmp.path().join("data"), tmp.path().join("logs"));
    synth(&root, 32);
    // From scratch (no ImageNet weights here), Adam learns this small set steadily where
    // the reference's SGD recipe, tuned for pretrained backbones, first overshoots.
    let recipe = [
        "-b",
        "32",
        "--optimizer",
        "Adam",
        "--learning-rate",
        "0.0003",
        "--last-stride",
        "1",
    ];
    run_ok(&train_args(&root, &logs, 12, &recipe));

    // The loss of the last epoch is clearly below the first's.
    let csv = std::fs::read_to_string(logs.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(4).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 12, "{csv}");
    let total = |r: &Vec<f64>| r[2] + r[3];
    assert!(
        total(&rows[11]) < 0.6 * total(&rows[0]),
        "loss did not fall:\n{csv}"
    );
    for name in [
        "log.txt",
        "checkpoint.safetensors",
        "checkpoint-epoch2.safetensors",
        "checkpoint-epoch12.safetensors",
        "curves.png",
    ] {
        assert!(logs.join(name).is_file(), "{name} missing");
    }

    // mAP of the trained model against the same architecture untrained (same seed).
    let dataset = ReidDataset::load(&root, "s").unwrap();
    let test = TestSet::load(&dataset, H, W).unwrap();
    tch::manual_seed(3);
    let cfg = ModelConfig {
        last_stride: 1,
        ..small_config(32)
    };
    let mut model = ReidModel::new(cfg, Device::Cpu).unwrap();
    let untrained = test.evaluate(&model, 64, OutputFeature::Embedding).unwrap();
    let ck = Checkpoint::load(&logs.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.epoch, 12);
    model.load_checkpoint(&ck).unwrap();
    let trained = test.evaluate(&model, 64, OutputFeature::Embedding).unwrap();
    // Random ResNet features already rank colours somewhat; twelve short epochs add
    // about 0.15 mAP here (measured 0.27 after training). A margin of 0.08 leaves room
    // for noise.
    println!(
        "mAP trained {:.3}, untrained {:.3}",
        trained.map, untrained.map
    );
    assert!(
        trained.map > untrained.map + 0.08,
        "trained mAP {:.3} vs untrained {:.3}",
        trained.map,
        untrained.map
    );
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    assert_eq!(a.epoch, b.epoch);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        let diff = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
}

#[test]
fn a_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 16);
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    run_ok(&train_args(&root, &straight, 3, &[]));

    // Start the same run and SIGKILL it once its log shows step 1 of epoch 2: epoch 1's
    // checkpoint is written, epoch 2 has begun and has steps left, whatever the speed of
    // the machine.
    let mut child = agd()
        .args(train_args(&root, &killed, 3, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = killed.join("log.txt");
    wait_until(
        "step 1 of epoch 2 in the log",
        Duration::from_secs(600),
        || read_or_empty(&log).contains("epoch 2/3 step 1/"),
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = Checkpoint::load(&killed.join("checkpoint.safetensors")).unwrap();
    assert!(
        at_kill.epoch < 3,
        "the run finished before it could be killed"
    );

    let mut resume = train_args(&root, &killed, 3, &[]);
    resume.extend(["--resume".to_string(), killed.display().to_string()]);
    run_ok(&resume);
    assert_same_weights(
        &straight.join("checkpoint.safetensors"),
        &killed.join("checkpoint.safetensors"),
    );
    let log = std::fs::read_to_string(killed.join("log.txt")).unwrap();
    assert!(log.contains("resumed from"), "{log}");
}

#[test]
fn checkpoints_round_trip_and_mismatches_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path: PathBuf = tmp.path().join("c.safetensors");
    tch::manual_seed(1);
    let model = ReidModel::new(small_config(7), Device::Cpu).unwrap();
    // A trained neck bias (docs/method.md §3) is saved and restored like every other parameter.
    let trained_bias = tch::Tensor::randn([512], (tch::Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        model
            .params
            .get("backbone.bn.bias")
            .unwrap()
            .shallow_clone()
            .copy_(&trained_bias)
    });
    let cfg = agd::train::fit::FitConfig {
        logs_dir: tmp.path().to_path_buf(),
        epochs: 1,
        start_epoch: 1,
        base_lr: 0.01,
        warmup: 0,
        milestones: vec![],
        evaluate_every: 0,
        save_freq: 0,
        eval_batch_size: 8,
        args: "test".into(),
        batch_shares: 1,
    };
    let opt =
        agd::train::optimizer::Optimizer::new(&model, agd::train::optimizer::OptimizerKind::Sgd);
    agd::train::fit::save_checkpoint(&cfg, &model, &opt, 4, false).unwrap();
    std::fs::rename(tmp.path().join("checkpoint.safetensors"), &path).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.epoch, 4);
    assert_eq!(ck.metadata["depth"], "34");
    assert_eq!(ck.metadata["classes"], "7");
    assert_eq!(ck.metadata["embedding"], "512");
    assert_eq!(ck.metadata["args"], "test");
    tch::manual_seed(2);
    let mut other = ReidModel::new(small_config(7), Device::Cpu).unwrap();
    other.load_checkpoint(&ck).unwrap();
    for ((n, a), (_, b)) in model.state().iter().zip(other.state().iter()) {
        assert!(a.equal(b), "{n} did not round-trip");
    }
    assert!(other
        .params
        .get("backbone.bn.bias")
        .unwrap()
        .equal(&trained_bias));
    // Classes and depth that do not fit are errors naming the checkpoint.
    let mut wrong = ReidModel::new(small_config(9), Device::Cpu).unwrap();
    let err = wrong.load_checkpoint(&ck).unwrap_err().to_string();
    assert!(err.contains("7 classes") && err.contains("9"), "{err}");
    let r50 = ModelConfig {
        depth: Depth::R50,
        embedding: 2048,
        ..small_config(7)
    };
    // Errors as the CLI reports them (it names the flag of a library setting).
    let err = agd::cli::message(
        &ReidModel::new(r50, Device::Cpu)
            .unwrap()
            .load_checkpoint(&ck)
            .unwrap_err(),
    );
    assert!(
        err.contains("ResNet-34") && err.contains("--depth"),
        "{err}"
    );
    // A missing checkpoint is named with its flag.
    let err = agd::cli::message(
        &agd::model::checkpoint::resolve(&tmp.path().join("none"), agd::error::Setting::Resume)
            .unwrap_err(),
    );
    assert!(err.contains("--resume") && err.contains("none"), "{err}");
}

#[test]
fn training_without_imagenet_weights_is_an_error_unless_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    synth(&root, 8);
    // Run where backbone_weights/ holds nothing, as on a fresh machine.
    let logs = tmp.path().join("logs");
    let mut args = train_args(&root, &logs, 1, &[]);
    let at = args.iter().position(|a| a == "--pretrained").unwrap();
    args.drain(at..at + 2);
    let out = agd().args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(!out.status.success(), "trained from random weights unasked");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for part in [
        "--pretrained",
        "ResNet-34",
        "backbone_weights/",
        "resnet34-333f7ec4.pth",
        "resnet34-333f7ec4.pdparams",
        "none",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(!logs.join("checkpoint.safetensors").exists());
    // Asked for, random initialisation trains and says so.
    args.extend(["--pretrained".into(), "none".into()]);
    let out = agd().args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(logs.join("log.txt")).unwrap();
    assert!(log.contains("random initialisation"), "{log}");
}

#[test]
fn training_adam_follows_torch_optim_adam_in_every_group() {
    use agd::model::params::Group;
    use agd::train::optimizer::{Optimizer, OptimizerKind, ADAM_BETAS, ADAM_EPS};
    use tch::{Kind, Tensor};
    tch::manual_seed(3);
    let model = ReidModel::new(small_config(5), Device::Cpu).unwrap();
    let params: Vec<(f64, Tensor)> = Group::ALL
        .iter()
        .flat_map(|&g| {
            let mult = g.lr_mult();
            model
                .params
                .trainable(g)
                .map(move |e| (mult, e.tensor.shallow_clone()))
        })
        .collect();
    let start: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.detach().to_kind(Kind::Double))
        .collect();
    let mut opt = Optimizer::new(&model, OptimizerKind::Adam);
    let lrs = [3e-4, 1e-4];
    let mut grads = Vec::new();
    for lr in lrs {
        opt.zero_grad();
        opt.set_lr(lr);
        // loss = Σ ⟨p, w⟩: each parameter's gradient is its own random w.
        let ws: Vec<Tensor> = params.iter().map(|(_, p)| p.randn_like()).collect();
        let loss = params
            .iter()
            .zip(&ws)
            .map(|((_, p), w)| (p * w).sum(Kind::Float))
            .fold(Tensor::from(0f32), |a, b| a + b);
        loss.backward();
        opt.step().unwrap();
        grads.push(ws);
    }
    assert_eq!(opt.steps(), 2);
    // torch.optim.Adam's rule in float64, each group at the base rate × its multiplier.
    let (b1, b2) = ADAM_BETAS;
    for (i, ((mult, p), x0)) in params.iter().zip(&start).enumerate() {
        let (mut x, mut m, mut v) = (x0.copy(), x0.zeros_like(), x0.zeros_like());
        for (t, lr) in lrs.iter().enumerate() {
            let g = grads[t][i].to_kind(Kind::Double);
            m = &m * b1 + &g * (1.0 - b1);
            v = &v * b2 + &g * &g * (1.0 - b2);
            let t = t as i32 + 1;
            let denom = (&v / (1.0 - b2.powi(t))).sqrt() + ADAM_EPS;
            x -= &m / denom * (lr * mult / (1.0 - b1.powi(t)));
        }
        let err = (p.to_kind(Kind::Double) - &x).abs().max().double_value(&[]);
        let scale = 1.0 + x.abs().max().double_value(&[]);
        assert!(err < 1e-6 * scale, "parameter {i}: off by {err}");
        // The update moved every parameter (Adam's first steps are ≈ lr per element).
        let moved = (p.to_kind(Kind::Double) - x0).abs().max().double_value(&[]);
        assert!(moved > 1e-5, "parameter {i} did not move");
    }
}
