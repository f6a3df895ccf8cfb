//! Distillation config (`--algo-config`) and the losses' behaviour beyond the golden fixtures
//! (tests/fixtures.rs): every shipped config parses as intended, bad configs fail naming the
//! file and key, batches that did not come from the P×K sampler are refused, and the
//! properties a user relies on (a perfect student costs nothing, the teacher gets no gradient).

use agd::loss::distill::{
    Collapse, DistillInput, DistillKind, Distillation, PodnetCriterion, TYPES,
};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use super::util::configs_dir;

fn parse(yaml: &str) -> Distillation {
    Distillation::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e:#}"))
}

/// The error of a config that must be refused; it always names the file.
fn refused(yaml: &str) -> String {
    let e = format!(
        "{:#}",
        Distillation::parse(yaml, "bad.yaml").expect_err(yaml)
    );
    assert!(e.contains("bad.yaml"), "error does not name the file: {e}");
    e
}

fn assert_mentions(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not mention {p:?}");
    }
}

#[test]
fn every_shipped_config_parses_as_the_reference_ships_it() {
    let podnet = DistillKind::Podnet {
        collapse: Collapse::Spatial,
        criterion: PodnetCriterion::Cosine,
        embedding_factor: 5.0,
        attention_factor: 8.0,
    };
    let hinton = DistillKind::Hinton { temperature: 2.0 };
    let expected: Vec<(&str, DistillKind, f64, Option<f64>)> = vec![
        ("LwF.yaml", hinton.clone(), 2.0, None),
        ("cosine.yaml", DistillKind::Cosine, 5.0, None),
        ("iCaRL.yaml", hinton.clone(), 2.0, None),
        ("inverXion-1.0.yaml", DistillKind::SimRes, 3.0, Some(1.0)),
        ("inverXion-cos.yaml", DistillKind::Cosine, 5.0, Some(0.9)),
        ("inverXion-iCaRL.yaml", hinton, 2.0, Some(0.9)),
        ("inverXion.yaml", DistillKind::SimRes, 3.0, Some(0.9)),
        ("l1.yaml", DistillKind::L1, 0.005, None),
        ("l2.yaml", DistillKind::L2, 0.005, None),
        ("podnet.yaml", podnet, 1.0, None),
        (
            "relation.yaml",
            DistillKind::Relation {
                normalize: false,
                p: 2.0,
            },
            0.3,
            None,
        ),
        ("res-triangle.yaml", DistillKind::ResTriangle, 3.0, None),
        ("sim-res-triangle.yaml", DistillKind::SimRes, 3.0, None),
        ("triangle.yaml", DistillKind::Triangle, 3.0, None),
    ];
    let mut shipped: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    shipped.sort();
    let mut listed: Vec<String> = expected.iter().map(|e| e.0.to_string()).collect();
    listed.sort();
    assert_eq!(shipped, listed, "configs/ and this test disagree");
    for (file, kind, factor, cross_factor) in expected {
        let d = Distillation::load(&configs_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(d.kind, kind, "{file}");
        assert_eq!(d.factor, factor, "{file}");
        assert_eq!(d.cross_factor, cross_factor, "{file}");
        assert!(TYPES.contains(&d.type_name()), "{file}");
    }
}

#[test]
fn every_type_parses_and_names_itself() {
    for t in TYPES {
        let config = match t {
            "hinton" => "{T: 4}",
            "podnet" => {
                "{collapse: channel, criterion: sim-res-triangle, embedding_factor: 1, attention_factor: 2}"
            }
            _ => "{}",
        };
        let d = parse(&format!(
            "distillation: {{type: {t}, factor: 1, config: {config}}}"
        ));
        assert_eq!(d.type_name(), t);
    }
}

#[test]
fn missing_optional_settings_take_the_reference_defaults() {
    // relation: unnormalised Euclidean distances.
    let d = parse("distillation: {type: relation, factor: 0.3, config: {}}");
    assert_eq!(
        d.kind,
        DistillKind::Relation {
            normalize: false,
            p: 2.0
        }
    );
    let d = parse("distillation: {type: relation, factor: 0.3, config: {p: 1}}");
    assert_eq!(
        d.kind,
        DistillKind::Relation {
            normalize: false,
            p: 1.0
        }
    );
    // No cross_factor: plain incremental; an empty or absent config for a type without settings.
    let d = parse("distillation:\n  type: sim-res\n  factor: 3\n  config:\n");
    assert_eq!(
        (d.kind, d.factor, d.cross_factor),
        (DistillKind::SimRes, 3.0, None)
    );
    let d = parse("distillation: {type: no, factor: 0}");
    assert_eq!(d.kind, DistillKind::No);
}

#[test]
fn unknown_types_and_keys_are_refused_by_name() {
    let e = refused("distillation: {type: res-triangel, factor: 3, config: {}}");
    assert_mentions(&e, &["distillation.type", "res-triangel", "res-triangle"]);
    let e = refused("distillation: {type: cosine, factor: 3, config: {}}\noptimizer: sgd\n");
    assert_mentions(&e, &["`optimizer`", "top level", "distillation"]);
    let e = refused("distillation: {type: cosine, factr: 3, config: {}}");
    assert_mentions(&e, &["distillation.factr", "factor", "cross_factor"]);
    // Settings of another type are not silently ignored.
    let e = refused("distillation: {type: cosine, factor: 3, config: {T: 2}}");
    assert_mentions(
        &e,
        &["distillation.config.T", "type `cosine`", "no settings"],
    );
    let e = refused("distillation: {type: hinton, factor: 2, config: {T: 2, t: 3}}");
    assert_mentions(&e, &["distillation.config.t", "type `hinton`", "one of: T"]);
    let e = refused(
        "distillation: {type: podnet, factor: 1, config: {collapse: spatial, criterion: cosine, \
         embedding_factor: 5, attention_factor: 8, pod_factor: 1}}",
    );
    assert_mentions(&e, &["distillation.config.pod_factor", "attention_factor"]);
    let e = refused("type: cosine\nfactor: 3\n");
    assert_mentions(&e, &["`type`", "top level"]);
    let e = refused("{}");
    assert_mentions(&e, &["missing key `distillation`"]);
}

#[test]
fn bad_values_are_refused_with_what_is_expected() {
    let e = refused("distillation: {type: cosine, factor: -1, config: {}}");
    assert_mentions(&e, &["distillation.factor", "-1", ">= 0"]);
    let e = refused("distillation: {type: cosine, factor: five, config: {}}");
    assert_mentions(&e, &["distillation.factor", "\"five\"", "a number"]);
    let e = refused("distillation: {type: cosine, config: {}}");
    assert_mentions(&e, &["missing key `distillation.factor`"]);
    let e = refused("distillation: {type: sim-res, factor: 3, config: {}, cross_factor: 1.5}");
    assert_mentions(&e, &["distillation.cross_factor", "1.5", "[0, 1]"]);
    let e = refused("distillation: {type: sim-res, factor: 3, config: {}, cross_factor: -0.1}");
    assert_mentions(&e, &["distillation.cross_factor", "-0.1"]);
    let e = refused("distillation: {type: 3, factor: 3}");
    assert_mentions(&e, &["distillation.type", "the number 3", "sim-res"]);
    let e = refused("distillation: {type: hinton, factor: 2, config: {}}");
    assert_mentions(&e, &["missing key `distillation.config.T`"]);
    let e = refused("distillation: {type: hinton, factor: 2, config: {T: 0}}");
    assert_mentions(&e, &["distillation.config.T", "> 0"]);
    let e = refused("distillation: {type: relation, factor: 1, config: {normalize: \"no\"}}");
    assert_mentions(
        &e,
        &["distillation.config.normalize", "\"no\"", "true or false"],
    );
    let e = refused("distillation: {type: relation, factor: 1, config: {p: -2}}");
    assert_mentions(&e, &["distillation.config.p", "-2"]);
    let e = refused(
        "distillation: {type: podnet, factor: 1, config: {collapse: pixel, criterion: cosine, \
         embedding_factor: 5, attention_factor: 8}}",
    );
    assert_mentions(
        &e,
        &["distillation.config.collapse", "\"pixel\"", "spatial"],
    );
    let e = refused(
        "distillation: {type: podnet, factor: 1, config: {collapse: spatial, criterion: cosine}}",
    );
    assert_mentions(&e, &["missing key `distillation.config.embedding_factor`"]);
    let e = refused("distillation: [cosine, 3]");
    assert_mentions(&e, &["`distillation`", "mapping", "a list"]);
    let e = refused("distillation: {type: cosine\n");
    assert_mentions(&e, &["not valid YAML"]);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.yaml");
    std::fs::write(
        &path,
        "distillation: {type: cosine, factor: 5, config: {T: 2}}\n",
    )
    .unwrap();
    let e = format!("{:#}", Distillation::load(&path).unwrap_err());
    assert_mentions(&e, &[&path.display().to_string(), "distillation.config.T"]);
    let missing = Path::new("/nonexistent/algo.yaml");
    let e = format!("{:#}", Distillation::load(missing).unwrap_err());
    assert_mentions(&e, &["/nonexistent/algo.yaml"]);
}

// ---- the losses ------------------------------------------------------------------------------

const B: i64 = 12;
const D: i64 = 6;

/// P = 4 identities × K = 3 samples, shuffled as the sampler's batches are.
fn pk_pids() -> Tensor {
    Tensor::from_slice(&[7i64, 2, 9, 2, 7, 4, 9, 4, 2, 7, 4, 9])
}

fn randn(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

fn maps(seed: i64) -> Vec<Tensor> {
    [[3, 8, 4], [4, 4, 2], [5, 2, 2], [6, 2, 1]]
        .iter()
        .enumerate()
        .map(|(i, s)| randn(&[B, s[0], s[1], s[2]], seed * 10 + i as i64))
        .collect()
}

/// A config for each type (podnet with the reference's shipped settings).
fn all_types() -> Vec<Distillation> {
    TYPES
        .iter()
        .map(|t| {
            let config = match *t {
                "hinton" => "{T: 2}",
                "podnet" => {
                    "{collapse: spatial, criterion: cosine, embedding_factor: 5, attention_factor: 8}"
                }
                "relation" => "{normalize: true}",
                _ => "{}",
            };
            parse(&format!(
                "distillation: {{type: {t}, factor: 1, config: {config}}}"
            ))
        })
        .collect()
}

struct Outputs {
    embedding: Tensor,
    logits: Tensor,
    maps: Vec<Tensor>,
}

impl Outputs {
    fn random(seed: i64, classes: i64) -> Self {
        Self {
            embedding: randn(&[B, D], seed),
            logits: randn(&[B, classes], seed + 1),
            maps: maps(seed + 2),
        }
    }

    fn input(&self) -> DistillInput<'_> {
        DistillInput {
            embedding: &self.embedding,
            logits: &self.logits,
            maps: &self.maps,
        }
    }

    fn requiring_grad(self) -> Self {
        Self {
            embedding: self.embedding.set_requires_grad(true),
            logits: self.logits.set_requires_grad(true),
            maps: self
                .maps
                .into_iter()
                .map(|m| m.set_requires_grad(true))
                .collect(),
        }
    }
}

#[test]
fn residual_types_refuse_a_batch_that_is_not_p_by_k() {
    let (s, t) = (Outputs::random(1, 5), Outputs::random(2, 5));
    // Identity 2 has 4 samples, identity 9 has 2.
    let uneven = Tensor::from_slice(&[7i64, 2, 9, 2, 7, 4, 2, 4, 2, 7, 4, 9]);
    let podnet_residual = parse(
        "distillation: {type: podnet, factor: 1, config: {collapse: spatial, \
         criterion: res-triangle, embedding_factor: 1, attention_factor: 1}}",
    );
    let residual_types = ["triangle", "res-triangle", "sim-res"]
        .map(|t| parse(&format!("distillation: {{type: {t}, factor: 1}}")));
    for d in residual_types.iter().chain([&podnet_residual]) {
        let e = format!(
            "{:#}",
            d.loss(&s.input(), &t.input(), &uneven)
                .expect_err(d.type_name())
        );
        assert_mentions(&e, &["P×K", "between 2 and 4"]);
        assert!(d.loss(&s.input(), &t.input(), &pk_pids()).is_ok());
    }
    // One sample per identity: there are no pairs at all.
    let singles = Tensor::arange(B, (Kind::Int64, Device::Cpu));
    let e = format!(
        "{:#}",
        residual_types[2]
            .loss(&s.input(), &t.input(), &singles)
            .unwrap_err()
    );
    assert_mentions(&e, &["single sample"]);
    // K = 2: res-triangle has residuals but no residuals of residuals.
    let pairs = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
    assert!(residual_types[2]
        .loss(&s.input(), &t.input(), &pairs)
        .is_ok());
    let e = format!(
        "{:#}",
        residual_types[1]
            .loss(&s.input(), &t.input(), &pairs)
            .unwrap_err()
    );
    assert_mentions(&e, &["res-triangle", "K >= 3"]);
    // The non-residual types do not care.
    for d in all_types() {
        if !matches!(d.type_name(), "triangle" | "res-triangle" | "sim-res") {
            assert!(
                d.loss(&s.input(), &t.input(), &uneven).is_ok(),
                "{}",
                d.type_name()
            );
        }
    }
}

#[test]
fn no_distillation_is_zero() {
    let d = parse("distillation: {type: no, factor: 1, config: {}}");
    let (s, t) = (Outputs::random(1, 5), Outputs::random(2, 5));
    let loss = d.loss(&s.input(), &t.input(), &pk_pids()).unwrap();
    assert_eq!(loss.size(), Vec::<i64>::new());
    assert_eq!(loss.double_value(&[]), 0.0);
}

#[test]
fn a_student_equal_to_its_teacher_costs_nothing() {
    let t = Outputs::random(3, 5);
    // The student's logits hold two new classes first, then the teacher's five old ones.
    let s = Outputs {
        embedding: t.embedding.copy(),
        logits: Tensor::cat(&[randn(&[B, 2], 9), t.logits.copy()], 1),
        maps: t.maps.iter().map(|m| m.copy()).collect(),
    };
    for d in all_types() {
        let loss = d
            .loss(&s.input(), &t.input(), &pk_pids())
            .unwrap()
            .double_value(&[]);
        assert!(loss.abs() < 1e-9, "{}: {loss}", d.type_name());
    }
    // …and a different one does cost something.
    let other = Outputs::random(4, 7);
    for d in all_types().iter().filter(|d| d.type_name() != "no") {
        let loss = d
            .loss(&other.input(), &t.input(), &pk_pids())
            .unwrap()
            .double_value(&[]);
        assert!(loss > 1e-3, "{}: {loss}", d.type_name());
    }
}

#[test]
fn only_the_student_gets_gradients() {
    for d in all_types().iter().filter(|d| d.type_name() != "no") {
        let s = Outputs::random(5, 7).requiring_grad();
        let t = Outputs::random(6, 5).requiring_grad();
        let loss = d.loss(&s.input(), &t.input(), &pk_pids()).unwrap();
        loss.backward();
        let name = d.type_name();
        let student_grads: Vec<Tensor> = match name {
            "hinton" => vec![s.logits.grad()],
            "podnet" => std::iter::once(s.embedding.grad())
                .chain(s.maps.iter().map(|m| m.grad()))
                .collect(),
            _ => vec![s.embedding.grad()],
        };
        for g in student_grads {
            assert!(
                g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                "{name}: no gradient reaches the student"
            );
        }
        let teacher = std::iter::once(&t.embedding)
            .chain([&t.logits])
            .chain(t.maps.iter());
        for x in teacher {
            assert!(!x.grad().defined(), "{name}: the teacher got a gradient");
        }
    }
}

#[test]
fn hinton_distills_only_the_old_classes_at_the_end_of_the_student_logits() {
    let d = parse("distillation: {type: hinton, factor: 2, config: {T: 2}}");
    let t = Outputs::random(7, 5);
    let s = Outputs::random(8, 9);
    let loss = |s: &Outputs| {
        d.loss(&s.input(), &t.input(), &pk_pids())
            .unwrap()
            .double_value(&[])
    };
    let before = loss(&s);
    // Changing the four new classes' logits changes nothing.
    let changed = Outputs {
        embedding: s.embedding.copy(),
        logits: Tensor::cat(&[randn(&[B, 4], 11) * 10.0, s.logits.narrow(1, 4, 5)], 1),
        maps: s.maps.iter().map(|m| m.copy()).collect(),
    };
    assert!((loss(&changed) - before).abs() < 1e-12);
    // A student with fewer classes than the teacher is an error, not a panic.
    let small = Outputs::random(9, 3);
    let e = format!(
        "{:#}",
        d.loss(&small.input(), &t.input(), &pk_pids()).unwrap_err()
    );
    assert_mentions(&e, &["3 classes", "5 old classes"]);
}

#[test]
fn losses_do_not_depend_on_the_order_of_the_batch() {
    // The sampler shuffles; the losses must not depend on where a sample sits. Except
    // res-triangle (a reference quirk, kept): a residual's direction (a_j − a_i, i < j) follows
    // the batch order, and the residuals of residuals mix those directions.
    let (s, t) = (Outputs::random(12, 7), Outputs::random(13, 5));
    let order = Tensor::from_slice(&[11i64, 3, 5, 0, 8, 1, 10, 2, 7, 4, 9, 6]);
    let permute = |o: &Outputs| Outputs {
        embedding: o.embedding.index_select(0, &order),
        logits: o.logits.index_select(0, &order),
        maps: o.maps.iter().map(|m| m.index_select(0, &order)).collect(),
    };
    let (ps, pt) = (permute(&s), permute(&t));
    let pids = pk_pids().index_select(0, &order);
    for d in all_types()
        .iter()
        .filter(|d| d.type_name() != "res-triangle")
    {
        let a = d.loss(&s.input(), &t.input(), &pk_pids()).unwrap();
        let b = d.loss(&ps.input(), &pt.input(), &pids).unwrap();
        let (a, b) = (a.double_value(&[]), b.double_value(&[]));
        assert!(
            (a - b).abs() <= 1e-12 * a.abs().max(1.0),
            "{}: {a} vs {b}",
            d.type_name()
        );
    }
}

#[test]
fn mismatched_student_and_teacher_are_errors() {
    let d = parse("distillation: {type: cosine, factor: 1}");
    let s = Outputs::random(1, 5);
    let t = Outputs {
        embedding: randn(&[B, D + 1], 2),
        logits: randn(&[B, 5], 3),
        maps: maps(4),
    };
    let e = format!(
        "{:#}",
        d.loss(&s.input(), &t.input(), &pk_pids()).unwrap_err()
    );
    assert_mentions(&e, &["cosine", "embedding"]);
    let podnet = &all_types()[TYPES.iter().position(|t| *t == "podnet").unwrap()];
    let t = Outputs {
        embedding: randn(&[B, D], 2),
        logits: randn(&[B, 5], 3),
        maps: maps(4).into_iter().take(3).collect(),
    };
    let e = format!(
        "{:#}",
        podnet.loss(&s.input(), &t.input(), &pk_pids()).unwrap_err()
    );
    assert_mentions(&e, &["4 student", "3 teacher"]);
}
