//! The ReID model of docs/method.md §3: torchvision's layout, shapes, classifier expansion, losses.

use agd::model::{Depth, Group, ModelConfig, Pooling, ReidModel, Role};
use agd::train::schedule::learning_rate;
use tch::{Device, Kind, Tensor};

fn config(depth: Depth) -> ModelConfig {
    ModelConfig {
        depth,
        last_stride: 2,
        pooling: Pooling::Avg,
        embedding: depth.feature_width(),
        classes: 10,
    }
}

#[test]
fn parameter_names_and_counts_equal_torchvision() {
    let m = ReidModel::new(config(Depth::R50), Device::Cpu).unwrap();
    assert_eq!(
        m.base_parameter_count(),
        23_508_032,
        "torchvision ResNet-50 without fc"
    );
    let base: Vec<&str> = m
        .params
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| n.starts_with("backbone.base."))
        .collect();
    assert_eq!(
        base.len(),
        318,
        "torchvision's resnet50 state dict has 320 entries with fc"
    );
    for name in [
        "backbone.base.conv1.weight",
        "backbone.base.bn1.running_var",
        "backbone.base.bn1.num_batches_tracked",
        "backbone.base.layer1.0.conv3.weight",
        "backbone.base.layer1.0.downsample.0.weight",
        "backbone.base.layer1.0.downsample.1.running_mean",
        "backbone.base.layer4.2.bn3.bias",
    ] {
        assert!(base.contains(&name), "{name} missing");
    }
    let p = |n: &str| m.params.get(n).unwrap().size();
    assert_eq!(
        p("backbone.base.layer2.0.conv2.weight"),
        vec![128, 128, 3, 3]
    );
    assert_eq!(
        p("backbone.base.layer4.0.downsample.0.weight"),
        vec![2048, 1024, 1, 1]
    );
    assert_eq!(p("classifier.W"), vec![10, 2048]);
    // The head's weight and bias both train, in the head's lr×10 group (docs/method.md §3).
    let role = |n: &str| {
        m.params
            .entries()
            .iter()
            .find(|e| e.name == n)
            .unwrap()
            .role
    };
    for name in ["backbone.bn.weight", "backbone.bn.bias"] {
        assert_eq!(role(name), Role::Trainable(Group::Head), "{name}");
    }

    let m34 = ReidModel::new(config(Depth::R34), Device::Cpu).unwrap();
    assert_eq!(
        m34.base_parameter_count(),
        21_284_672,
        "torchvision ResNet-34 without fc"
    );
    let n34 = m34
        .params
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("backbone.base."))
        .count();
    assert_eq!(n34, 216);
}

#[test]
fn output_shapes_for_every_depth_stride_and_pooling() {
    tch::manual_seed(0);
    for depth in [Depth::R34, Depth::R50] {
        for stride in [1, 2] {
            for pooling in [Pooling::Avg, Pooling::Max] {
                let cfg = ModelConfig {
                    last_stride: stride,
                    pooling,
                    ..config(depth)
                };
                let m = ReidModel::new(cfg, Device::Cpu).unwrap();
                let x = Tensor::randn([2, 3, 64, 32], (Kind::Float, Device::Cpu));
                let out = tch::no_grad(|| m.forward(&x, false));
                let w = depth.feature_width();
                let e = if depth == Depth::R50 { 4 } else { 1 };
                assert_eq!(out.maps[0].size(), vec![2, 64 * e, 16, 8]);
                assert_eq!(out.maps[2].size(), vec![2, 256 * e, 4, 2]);
                let last = if stride == 1 {
                    vec![2, w, 4, 2]
                } else {
                    vec![2, w, 2, 1]
                };
                assert_eq!(out.maps[3].size(), last, "{depth:?} stride {stride}");
                assert_eq!(out.global.size(), vec![2, w]);
                assert_eq!(out.embedding.size(), vec![2, w]);
                assert_eq!(out.logits.size(), vec![2, 10]);
            }
        }
    }
}

#[test]
fn embedding_must_match_the_backbone() {
    let cfg = ModelConfig {
        embedding: 256,
        ..config(Depth::R50)
    };
    // As the CLI reports it: the library's setting named by its flag.
    let err = agd::cli::message(&ReidModel::new(cfg, Device::Cpu).err().unwrap());
    assert!(
        err.contains("--embedding 256") && err.contains("2048"),
        "{err}"
    );
}

#[test]
fn bn_statistics_cover_every_batchnorm_in_order() {
    let m = ReidModel::new(config(Depth::R34), Device::Cpu).unwrap();
    let x = Tensor::randn([4, 3, 64, 32], (Kind::Float, Device::Cpu));
    let (_, stats) = tch::no_grad(|| m.forward_with_bn_stats(&x, false));
    // 36 BatchNorm2d in ResNet-34 + the embedding BatchNorm1d.
    assert_eq!(stats.len(), 37);
    // The first BN sees conv1's output: its mean over N, H, W per channel.
    assert_eq!(stats[0].mean.size(), vec![64]);
    assert_eq!(stats.last().unwrap().var.size(), vec![512]);
    let v = stats[0].var.min().double_value(&[]);
    assert!(v >= 0.0);
}

#[test]
fn classifier_expansion_prepends_new_classes() {
    let mut m = ReidModel::new(config(Depth::R34), Device::Cpu).unwrap();
    let old = m.classifier().detach().copy();
    m.expand_classifier(5);
    assert_eq!(m.config.classes, 15);
    let w = m.classifier();
    assert_eq!(w.size(), vec![15, 512]);
    assert!(
        w.narrow(0, 5, 10).equal(&old),
        "old rows follow the new ones"
    );
    let fresh_std = f64::try_from(w.narrow(0, 0, 5).std(true)).unwrap();
    assert!(
        fresh_std > 1e-4 && fresh_std < 1e-2,
        "new rows ~ N(0, 0.001): std {fresh_std}"
    );
    // The expanded weight is still a trainable parameter of the model.
    assert!(m.params.get("classifier.W").unwrap().size() == vec![15, 512]);
    assert!(m.params.get("classifier.W").unwrap().requires_grad());
}

#[test]
fn learning_rate_of_every_epoch_for_the_reference_settings() {
    // train: base 0.01, warmup 10, decay at 61, 90 epochs.
    for e in 1..=90 {
        let lr = learning_rate(0.01, e, 10, &[61]);
        let want = if e < 10 {
            0.01 * e as f64 / 10.0
        } else if e < 61 {
            0.01
        } else {
            0.001
        };
        assert!((lr - want).abs() < 1e-15, "epoch {e}: {lr} vs {want}");
    }
    // incremental: no warmup, decay at 41, 80 epochs.
    for e in 1..=80 {
        let want = if e < 41 { 0.01 } else { 0.001 };
        assert!((learning_rate(0.01, e, 0, &[41]) - want).abs() < 1e-15);
    }
    assert!((learning_rate(0.01, 70, 0, &[30, 60]) - 0.0001).abs() < 1e-15);
    assert!(agd::train::schedule::validate(10, &[5]).is_err());
}

#[test]
fn base_loss_is_ce_plus_triplet() {
    let logits = Tensor::from_slice(&[2.0f64, 0.0, 0.0, 2.0]).view([2, 2]);
    let pids = Tensor::from_slice(&[0i64, 1]);
    let ce = agd::loss::cross_entropy(&logits, &pids).double_value(&[]);
    let want = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
    assert!((ce - want).abs() < 1e-12);
}

fn small() -> ModelConfig {
    ModelConfig {
        last_stride: 2,
        pooling: Pooling::Avg,
        embedding: 512,
        classes: 5,
        depth: Depth::R34,
    }
}

#[test]
fn imagenet_weights_load_by_torchvision_name() {
    let tmp = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let source = ReidModel::new(small(), Device::Cpu).unwrap();
    // A torchvision-style state dict: base names without the prefix, plus an `fc` head.
    let mut tensors: Vec<(String, Tensor)> = source
        .state()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("backbone.base.").map(|s| (s.to_string(), t)))
        .collect();
    tensors.push((
        "fc.weight".into(),
        Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)),
    ));
    let path = tmp.path().join("resnet34-imagenet.safetensors");
    agd::model::checkpoint::write_safetensors(&path, &tensors, &Default::default()).unwrap();

    tch::manual_seed(2);
    let mut model = ReidModel::new(small(), Device::Cpu).unwrap();
    let note = model.load_imagenet(&path).unwrap();
    assert!(
        note.contains("ImageNet weights") && note.contains(&path.display().to_string()),
        "{note}"
    );
    for (name, t) in source.state() {
        if name.starts_with("backbone.base.") {
            assert!(model.params.get(&name).unwrap().equal(&t), "{name}");
        }
    }
    // The head and classifier keep their own initialisation.
    assert!(!model.classifier().equal(source.classifier()));

    // A ResNet-50 file into a ResNet-34: an error naming the tensor and shapes.
    let r50 = ReidModel::new(config(Depth::R50), Device::Cpu).unwrap();
    let wrong: Vec<(String, Tensor)> = r50
        .state()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("backbone.base.").map(|s| (s.to_string(), t)))
        .collect();
    let wrong_path = tmp.path().join("resnet50.safetensors");
    agd::model::checkpoint::write_safetensors(&wrong_path, &wrong, &Default::default()).unwrap();
    let err = agd::cli::message(&model.load_imagenet(&wrong_path).unwrap_err());
    assert!(
        err.contains("--pretrained") && err.contains("expects"),
        "{err}"
    );
}

#[test]
fn sgd_steps_follow_pytorchs_nesterov_update() {
    use agd::train::optimizer::{Optimizer, OptimizerKind, MOMENTUM, WEIGHT_DECAY};
    tch::manual_seed(3);
    let model = ReidModel::new(small(), Device::Cpu).unwrap();
    let mut opt = Optimizer::new(&model, OptimizerKind::Sgd);
    opt.set_lr(0.01);
    let x = Tensor::randn([8, 3, 64, 32], (Kind::Float, Device::Cpu));
    let pids = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, 1]);
    let watch = [
        "backbone.base.conv1.weight",
        "backbone.bn.weight",
        "classifier.W",
    ];
    let mult = [1.0, 10.0, 10.0];
    let mut bufs: Vec<Option<Tensor>> = vec![None, None, None];
    for _ in 0..2 {
        opt.zero_grad();
        let out = model.forward(&x, true);
        agd::loss::BaseLoss::new(&out.logits, &out.global, &pids)
            .total()
            .backward();
        let before: Vec<Tensor> = watch
            .iter()
            .map(|n| model.params.get(n).unwrap().detach().copy())
            .collect();
        let grads: Vec<Tensor> = watch
            .iter()
            .map(|n| model.params.get(n).unwrap().grad().copy())
            .collect();
        opt.step().unwrap();
        for i in 0..3 {
            // torch.optim.SGD(momentum, nesterov, weight_decay), dampening 0.
            let d_p = &grads[i] + &before[i] * WEIGHT_DECAY;
            let buf = match &bufs[i] {
                None => d_p.copy(),
                Some(b) => b * MOMENTUM + &d_p,
            };
            let expected = &before[i] - (&d_p + &buf * MOMENTUM) * (0.01 * mult[i]);
            bufs[i] = Some(buf);
            let got = model.params.get(watch[i]).unwrap();
            let diff = (got - &expected).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{}: off by {diff}", watch[i]);
        }
    }
}

/// A batch of 8 images, 2 identities × 4, each image its own colour cast over noise: as
/// different from one another as real pedestrians are (iid noise images give a random
/// network near-identical features, whose differences no precision resolves).
fn varied_batch() -> (Tensor, Tensor) {
    let x = Tensor::randn([8, 3, 64, 32], (Kind::Float, Device::Cpu)) * 0.5
        + Tensor::randn([8, 3, 1, 1], (Kind::Float, Device::Cpu));
    (x, Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, 1]))
}

/// CE and triplet of one training forward of `model` under `compute`, and the model's
/// output.
fn losses_under(
    model: &mut ReidModel,
    compute: agd::model::Compute,
    x: &Tensor,
    pids: &Tensor,
) -> ([f64; 2], agd::model::Output) {
    model.compute = compute;
    let out = model.forward(x, true);
    let loss = agd::loss::BaseLoss::new(&out.logits, &out.global, pids);
    (
        [loss.ce.double_value(&[]), loss.triplet.double_value(&[])],
        out,
    )
}

#[test]
fn channels_last_computes_the_nchw_losses_and_bn_statistics() {
    use agd::model::layers::is_channels_last;
    use agd::model::Compute;
    tch::manual_seed(6);
    let mut model = ReidModel::new(small(), Device::Cpu).unwrap();
    let (x, pids) = varied_batch();
    let (want, nchw) = losses_under(&mut model, Compute::default(), &x, &pids);
    let nhwc = Compute {
        nhwc: true,
        ..Compute::default()
    };
    let (got, out) = losses_under(&mut model, nhwc, &x, &pids);
    assert!(is_channels_last(&out.maps[0]) && !is_channels_last(&nchw.maps[0]));
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "nhwc {got:?}, nchw {want:?}"
        );
    }
    // BN-normalised, of order 1: summation order through 36 layers, renormalised by
    // small batch deviations.
    let off = (&out.embedding - &nchw.embedding)
        .abs()
        .max()
        .double_value(&[]);
    assert!(off < 1e-3, "embeddings differ by {off}");
    // DeepInversion's BN statistics, read in place from NHWC activations.
    model.compute = Compute::default();
    let (_, want) = model.forward_with_bn_stats(&x, false);
    model.compute = nhwc;
    let (_, got) = model.forward_with_bn_stats(&x, false);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in [(&g.mean, &w.mean), (&g.var, &w.var)] {
            let off = (a - b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]).max(1.0);
            assert!(
                off <= 1e-5 * scale,
                "BN statistics differ by {off} (scale {scale})"
            );
        }
    }
}

#[test]
fn mixed_precision_keeps_the_first_step_cross_entropy_within_two_percent() {
    use agd::model::Compute;
    // A P×K batch of 8 identities × 4 at 128×64, each image its own colour cast.
    let x = Tensor::randn([32, 3, 128, 64], (Kind::Float, Device::Cpu)) * 0.5
        + Tensor::randn([32, 3, 1, 1], (Kind::Float, Device::Cpu));
    let pids = Tensor::arange(8, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(4, 0, None);
    for (seed, nhwc) in [(7, false), (8, true)] {
        tch::manual_seed(seed);
        let config = ModelConfig {
            classes: 8,
            ..small()
        };
        let mut model = ReidModel::new(config, Device::Cpu).unwrap();
        let (want, _) = losses_under(&mut model, Compute::default(), &x, &pids);
        let (got, out) = losses_under(&mut model, Compute { amp: true, nhwc }, &x, &pids);
        assert_ne!(
            got, want,
            "bfloat16 computed exactly the float32 numbers: not in effect"
        );
        let off = |i: usize| (got[i] - want[i]).abs() / want[i].abs();
        // Measured 0.01-0.1% (CE) over seeds and sizes. The hard-mined triplet of a
        // random network moves 0.2-8%: its images' features differ by little, and those
        // differences are what bfloat16's 8-bit mantissa rounds.
        assert!(
            off(0) <= 0.02,
            "CE: amp {got:?}, fp32 {want:?} (nhwc {nhwc})"
        );
        assert!(
            off(1) <= 0.10,
            "triplet: amp {got:?}, fp32 {want:?} (nhwc {nhwc})"
        );
        // The head, the losses and the gradients of the float32 weights stay float32.
        assert_eq!(out.embedding.kind(), Kind::Float);
        let loss = agd::loss::BaseLoss::new(&out.logits, &out.global, &pids).total();
        loss.backward();
        let grad = model
            .params
            .get("backbone.base.conv1.weight")
            .unwrap()
            .grad();
        assert_eq!(grad.kind(), Kind::Float);
        let finite = grad.isfinite().all().int64_value(&[]) == 1;
        assert!(finite && grad.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

#[test]
fn the_flat_optimizer_equals_the_per_parameter_update_exactly() {
    use agd::train::optimizer::{Optimizer, OptimizerKind};
    let x = Tensor::randn([8, 3, 64, 32], (Kind::Float, Device::Cpu));
    let pids = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, 1]);
    // Every model starts from one model's parameters, copied: re-seeding torch's global
    // generator before each construction is not enough while other tests draw from it on
    // their threads.
    let template = ReidModel::new(small(), Device::Cpu).unwrap();
    let copy_into = |to: &ReidModel, from: &ReidModel| {
        tch::no_grad(|| {
            for e in to.params.entries() {
                e.tensor
                    .shallow_clone()
                    .copy_(from.params.get(&e.name).unwrap());
            }
        });
    };
    let fresh = || {
        let model = ReidModel::new(small(), Device::Cpu).unwrap();
        copy_into(&model, &template);
        model
    };
    let train = |model: &ReidModel, opt: &mut Optimizer| {
        opt.zero_grad();
        let out = model.forward(&x, true);
        agd::loss::BaseLoss::new(&out.logits, &out.global, &pids)
            .total()
            .backward();
        opt.step().unwrap();
    };
    let same = |a: &ReidModel, b: &ReidModel, what: &str| {
        let names: Vec<String> = a.params.entries().iter().map(|e| e.name.clone()).collect();
        for n in names {
            let (pa, pb) = (a.params.get(&n).unwrap(), b.params.get(&n).unwrap());
            let off = (pa - pb).abs().max().double_value(&[]);
            assert!(pa.equal(pb), "{what}: {n} differs by {off}");
        }
    };
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        let (a, b) = (fresh(), fresh());
        let (mut per, mut flat) = (Optimizer::new(&a, kind), Optimizer::flat(&b, kind));
        same(&a, &b, "flat layout set up");
        // The parameters now lie end to end in their group's buffer.
        let base: Vec<&Tensor> = b.params.trainable(Group::Base).map(|e| &e.tensor).collect();
        for w in base.windows(2) {
            let end = w[0].data_ptr() as usize + 4 * w[0].numel();
            assert_eq!(end, w[1].data_ptr() as usize, "not one flat buffer");
        }
        for (i, lr) in [0.01, 0.01, 0.001].into_iter().enumerate() {
            per.set_lr(lr);
            flat.set_lr(lr);
            train(&a, &mut per);
            train(&b, &mut flat);
            same(&a, &b, &format!("{kind:?} step {}", i + 1));
        }
        let (sa, sb) = (per.state_tensors(), flat.state_tensors());
        assert_eq!(sa.len(), sb.len());
        assert_eq!(
            sa.len(),
            a.params
                .entries()
                .iter()
                .filter(|e| e.tensor.requires_grad())
                .count()
                * if kind == OptimizerKind::Adam { 2 } else { 1 }
        );
        for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{kind:?}: state {na} differs");
        }
        // A run checkpointed under one layout resumes under the other to the same update.
        let c = fresh();
        copy_into(&c, &b);
        let mut resumed = Optimizer::new(&c, kind);
        let saved: std::collections::HashMap<String, Tensor> = sb.into_iter().collect();
        resumed
            .load_state(|n| saved.get(n).map(Tensor::copy), flat.steps())
            .unwrap();
        resumed.set_lr(0.001);
        train(&c, &mut resumed);
        train(&b, &mut flat);
        same(&c, &b, &format!("{kind:?} resumed"));
    }
}

#[test]
fn neck_bias_trains_at_ten_times_the_rate_with_weight_decay() {
    use agd::train::optimizer::{Optimizer, OptimizerKind, MOMENTUM, WEIGHT_DECAY};
    tch::manual_seed(4);
    let model = ReidModel::new(small(), Device::Cpu).unwrap();
    let bias = model.params.get("backbone.bn.bias").unwrap();
    assert!(bias.requires_grad());
    // A trained bias is not zero; starting from one makes the weight decay term visible.
    let start = Tensor::randn([512], (Kind::Float, Device::Cpu)) * 0.5;
    tch::no_grad(|| bias.shallow_clone().copy_(&start));
    let mut opt = Optimizer::new(&model, OptimizerKind::Sgd);
    let lr = 0.01;
    opt.set_lr(lr);
    opt.zero_grad();
    let x = Tensor::randn([8, 3, 64, 32], (Kind::Float, Device::Cpu));
    let pids = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, 1]);
    let out = model.forward(&x, true);
    agd::loss::BaseLoss::new(&out.logits, &out.global, &pids)
        .total()
        .backward();
    let g = bias.grad().to_kind(Kind::Double);
    assert!(
        g.abs().max().double_value(&[]) > 0.0,
        "no gradient on the bias"
    );
    opt.step().unwrap();

    // torch.optim.SGD, nesterov, first step: buf = d_p = g + wd·p; p −= lr'·(d_p + μ·buf),
    // with lr' = 10·lr for the head group.
    let p0 = start.to_kind(Kind::Double);
    let got = bias.detach().to_kind(Kind::Double);
    let expected_with = |mult: f64, wd: f64| {
        let d_p = &g + &p0 * wd;
        let buf = d_p.copy();
        &p0 - (&d_p + &buf * MOMENTUM) * (lr * mult)
    };
    let off = |e: Tensor| (&got - e).abs().max().double_value(&[]);
    let moved = (&got - &p0).abs().max().double_value(&[]);
    let exact = off(expected_with(10.0, WEIGHT_DECAY));
    assert!(moved > 1e-4, "the bias did not move ({moved})");
    // float32 rounding of a ~0.5 parameter: a few ulps of 6e-8.
    assert!(exact < 1e-6, "bias off torch's update by {exact}");
    // Neither the base rate nor a decay-free update explains the step (the decay term
    // alone is 10·lr·(1 + μ)·wd·|p| ≈ 1e-4 at |p| ≈ 1).
    let base_rate = off(expected_with(1.0, WEIGHT_DECAY));
    let no_decay = off(expected_with(10.0, 0.0));
    assert!(
        base_rate > 1e-5 && no_decay > 1e-5,
        "{base_rate} {no_decay}"
    );
}

#[test]
fn bn_input_moments_stay_accurate_when_the_mean_dwarfs_the_spread() {
    use agd::model::layers::BatchNorm;
    use agd::model::params::{Params, Scope};
    tch::manual_seed(5);
    let mut worst = 0f64;
    for shape in [vec![16i64, 64, 32, 16], vec![64, 512]] {
        let c = shape[1];
        let mut params = Params::new(Device::Cpu);
        let bn = BatchNorm::new(&mut Scope::root(&mut params, "bn", Group::Base), c);
        let mut view = vec![1, c];
        view.resize(shape.len(), 1);
        for ratio in [1.0, 10.0, 100.0] {
            // Per-channel std in [0.1, 2.1], mean ±ratio·std.
            let std = Tensor::rand([c], (Kind::Float, Device::Cpu)) * 2.0 + 0.1;
            let sign = Tensor::rand([c], (Kind::Float, Device::Cpu)).ge(0.5) * 2.0 - 1.0;
            let mean = &std * &sign * ratio;
            let x = (Tensor::randn(&shape[..], (Kind::Float, Device::Cpu)) * std.view(&view[..])
                + mean.view(&view[..]))
            .set_requires_grad(true);
            let mut stats = Vec::new();
            let _ = bn.forward(
                &x,
                &mut agd::model::Norms {
                    stats: Some(&mut stats),
                    ..Default::default()
                },
            );
            let stat = &stats[0];

            // Float64 two-pass reference on the same float32 values.
            let xd = x.detach().to_kind(Kind::Double);
            let dims: Vec<i64> = std::iter::once(0).chain(2..shape.len() as i64).collect();
            let mean_ref = xd.mean_dim(&dims[..], true, None::<Kind>);
            let centered = &xd - &mean_ref;
            let var_ref = centered.square().mean_dim(&dims[..], false, None::<Kind>);
            let rel = |got: &Tensor, want: &Tensor, scale: &Tensor| {
                ((got.to_kind(Kind::Double) - want).abs() / scale)
                    .max()
                    .double_value(&[])
            };
            let var_err = rel(&stat.var, &var_ref, &var_ref);
            let mean_err = rel(&stat.mean, &mean_ref.flatten(0, -1), &var_ref.sqrt());
            worst = worst.max(var_err);
            assert!(
                var_err < 1e-4,
                "{shape:?} ratio {ratio}: variance off by {var_err:e} (relative)"
            );
            assert!(
                mean_err < 1e-4,
                "{shape:?} ratio {ratio}: mean off by {mean_err:e} std"
            );

            // The shift is detached, yet the gradient is the variance's exact one:
            // d Σ_c w_c·var_c / dx = 2·w_c·(x − mean_c)/count.
            let w = Tensor::randn([c], (Kind::Float, Device::Cpu));
            (&stat.var * &w).sum(None::<Kind>).backward();
            let count = (x.numel() as i64 / c) as f64;
            let want = centered * w.to_kind(Kind::Double).view(&view[..]) * (2.0 / count);
            let grad_err = (x.grad().to_kind(Kind::Double) - &want)
                .abs()
                .max()
                .double_value(&[])
                / want.abs().max().double_value(&[]);
            assert!(
                grad_err < 1e-4,
                "{shape:?} ratio {ratio}: gradient off by {grad_err:e}"
            );
        }
    }
    println!("worst relative variance error: {worst:e}");
}
