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
        ("GeoDL.yaml", DistillKind::GeoDL, 8.0, None),
        (
            "GeoDLxLUCIR.yaml",
            DistillKind::GeoDLxLUCIR {
                geodl_factor: 4.0,
                cosine_factor: 5.0,
            },
            1.0,
            None,
        ),
        ("LwF.yaml", hinton.clone(), 2.0, None),
        (
            "always-be-dreaming.yaml",
            DistillKind::AlwaysBeDreaming,
            0.1,
            None,
        ),
        // The reference trains its `distillation` section alone.
        ("co_distillation.yaml", DistillKind::SimRes, 4.0, None),
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
    assert_eq!(shipped.len(), 18, "the reference ships 18 configs");
    for (file, kind, factor, cross_factor) in expected {
        let d = Distillation::load(&configs_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(d.kind, kind, "{file}");
        assert_eq!(d.factor, factor, "{file}");
        assert_eq!(d.cross_factor, cross_factor, "{file}");
        assert_eq!(
            d.unused_co_distillation,
            file == "co_distillation.yaml",
            "{file}"
        );
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
            "GeoDLxLUCIR" => "{GeoDL_factor: 4, cosine_factor: 5}",
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
    // GeoDL's `dim` is unused by the reference; it may be left out.
    let d = parse("distillation: {type: GeoDL, factor: 8}");
    assert_eq!(d.kind, DistillKind::GeoDL);
    let d = parse("distillation: {type: GeoDL, factor: 8, config: {dim: 1024}}");
    assert_eq!(d.kind, DistillKind::GeoDL);
    assert!(!d.unused_co_distillation);
}

#[test]
fn a_co_distillation_section_is_accepted_and_unused_but_nothing_else_is() {
    let d = parse(
        "distillation: {type: sim-res, factor: 4}\nco_distillation: {factor: 3, anything: [1]}\n",
    );
    assert_eq!((d.kind, d.factor), (DistillKind::SimRes, 4.0));
    assert!(d.unused_co_distillation);
    let e = refused("distillation: {type: sim-res, factor: 4}\nco_distilation: {factor: 3}\n");
    assert_mentions(&e, &["`co_distilation`", "top level", "co_distillation"]);
    // It does not stand in for the section that is trained.
    let e = refused("co_distillation: {factor: 3}\n");
    assert_mentions(&e, &["missing key `distillation`"]);
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
    let e = refused("distillation: {type: GeoDLxLUCIR, factor: 1, config: {cosine_factor: 5}}");
    assert_mentions(&e, &["missing key `distillation.config.GeoDL_factor`"]);
    let e = refused(
        "distillation: {type: GeoDLxLUCIR, factor: 1, config: {GeoDL_factor: -4, cosine_factor: 5}}",
    );
    assert_mentions(&e, &["distillation.config.GeoDL_factor", "-4", ">= 0"]);
    let e = refused("distillation: {type: GeoDL, factor: 8, config: {dim: 10.5}}");
    assert_mentions(&e, &["distillation.config.dim", "10.5", "positive integer"]);
    let e = refused("distillation: {type: GeoDL, factor: 8, config: {dims: 1024}}");
    assert_mentions(&e, &["distillation.config.dims", "type `GeoDL`", "dim"]);
    let e = refused("distillation: {type: always-be-dreaming, factor: 0.1, config: {T: 2}}");
    assert_mentions(&e, &["distillation.config.T", "no settings"]);
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
/// GeoDL needs D >= B + 58.
const D: i64 = 72;

/// P = 4 identities × K = 3 samples, shuffled as the sampler's batches are.
fn pk_pids() -> Tensor {
    Tensor::from_slice(&[7i64, 2, 9, 2, 7, 4, 9, 4, 2, 7, 4, 9])
}

/// `manual_seed(seed)` then `randn`, without the global generator that the other test
/// threads seed and draw from: a test seeding it between the two calls once gave the
/// student the teacher's values.
fn randn(shape: &[i64], seed: i64) -> Tensor {
    agd::tensor::randn_seeded(shape, seed as u64).unwrap()
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
                "GeoDLxLUCIR" => "{dim: 2047, GeoDL_factor: 4, cosine_factor: 5}",
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
    /// The classifier (classes × D) the logits came from: embedding · classifierᵀ.
    classifier: Tensor,
}

impl Outputs {
    fn random(seed: i64, classes: i64) -> Self {
        let embedding = randn(&[B, D], seed);
        let classifier = randn(&[classes, D], seed + 1) / (D as f64).sqrt();
        Self {
            logits: embedding.mm(&classifier.tr()),
            embedding,
            maps: maps(seed + 2),
            classifier,
        }
    }

    fn input(&self) -> DistillInput<'_> {
        DistillInput {
            embedding: &self.embedding,
            logits: &self.logits,
            maps: &self.maps,
            classifier: Some(&self.classifier),
            null_space_basis: None,
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
            classifier: self.classifier.set_requires_grad(true),
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
        classifier: Tensor::cat(&[randn(&[2, D], 10), t.classifier.copy()], 0),
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
            .chain([&t.logits, &t.classifier])
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
        classifier: s.classifier.copy(),
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
        classifier: o.classifier.copy(),
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
        classifier: randn(&[5, D + 1], 5),
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
        classifier: randn(&[5, D], 5),
    };
    let e = format!(
        "{:#}",
        podnet.loss(&s.input(), &t.input(), &pk_pids()).unwrap_err()
    );
    assert_mentions(&e, &["4 student", "3 teacher"]);
}

/// Embeddings of `width` dimensions for the batch of `B`.
fn outputs_of_width(seed: i64, width: i64) -> Outputs {
    let embedding = randn(&[B, width], seed);
    let classifier = randn(&[5, width], seed + 1);
    Outputs {
        logits: embedding.mm(&classifier.tr()),
        embedding,
        maps: maps(seed + 2),
        classifier,
    }
}

#[test]
fn geodl_needs_embeddings_of_at_least_b_plus_58_dimensions() {
    for t in ["GeoDL", "GeoDLxLUCIR"] {
        let d = &all_types()[TYPES.iter().position(|n| *n == t).unwrap()];
        // B = 12: a PCA subspace of 10 directions plus 60 null-space columns.
        let (s, te) = (outputs_of_width(1, 69), outputs_of_width(2, 69));
        let e = format!(
            "{:#}",
            d.loss(&s.input(), &te.input(), &pk_pids()).unwrap_err()
        );
        assert_mentions(&e, &["GeoDL", "at least B + 58 = 70", "B = 12", "69"]);
        let (s, te) = (outputs_of_width(1, 70), outputs_of_width(2, 70));
        let loss = d.loss(&s.input(), &te.input(), &pk_pids()).unwrap();
        assert!(loss.double_value(&[]).is_finite(), "{t}");
    }
}

#[test]
fn geodl_takes_a_given_null_space_basis_and_checks_it() {
    let d = parse("distillation: {type: GeoDL, factor: 8, config: {dim: 1024}}");
    let (s, t) = (Outputs::random(1, 5), Outputs::random(2, 5));
    let with_basis = |basis: &Tensor| {
        let input = DistillInput {
            null_space_basis: Some(basis),
            ..s.input()
        };
        d.loss(&input, &t.input(), &pk_pids())
    };
    // The student's PCA subspace, as GeoDL computes it, and two bases of its null space.
    let a = &s.embedding / s.embedding.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let data = a.tr();
    let (u, _, _) = (&data - data.mean_dim(0, true, None::<Kind>)).svd(false, true);
    let first = u.narrow(1, B - 2, 60);
    let second = u.narrow(1, B, 60);
    let (l1, l2) = (with_basis(&first).unwrap(), with_basis(&second).unwrap());
    let own = d.loss(&s.input(), &t.input(), &pk_pids()).unwrap();
    for l in [&l1, &l2, &own] {
        assert!(l.double_value(&[]).is_finite() && l.double_value(&[]) > 0.0);
    }
    // Which 60 columns pad the subspace matters (the reason the fixtures record theirs).
    assert!((l1.double_value(&[]) - l2.double_value(&[])).abs() > 1e-9);
    // Not D × 60, not orthonormal, or not in the null space: refused.
    let e = format!("{:#}", with_basis(&u.narrow(1, B - 2, 59)).unwrap_err());
    assert_mentions(&e, &["null-space basis", "72 × 60", "[72, 59]"]);
    let e = format!("{:#}", with_basis(&(&first * 2.0)).unwrap_err());
    assert_mentions(&e, &["not an orthonormal basis", "RᵀR"]);
    let e = format!("{:#}", with_basis(&u.narrow(1, 0, 60)).unwrap_err());
    assert_mentions(&e, &["null space", "PᵀR"]);
}

#[test]
fn always_be_dreaming_is_the_mse_of_the_old_classifier_on_the_student() {
    let d = parse("distillation:\n  type: always-be-dreaming\n  factor: 0.1\n  config:\n");
    let (s, t) = (Outputs::random(1, 9), Outputs::random(2, 5));
    let loss = d
        .loss(&s.input(), &t.input(), &pk_pids())
        .unwrap()
        .double_value(&[]);
    // The teacher's (old) classifier on the student's embeddings, against the teacher's
    // logits, averaged over every element; the student's own classifier plays no part.
    let want = (s.embedding.mm(&t.classifier.tr()) - &t.logits)
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((loss - want).abs() <= 1e-12 * want, "{loss} vs {want}");
    let e = format!(
        "{:#}",
        d.loss(
            &s.input(),
            &DistillInput {
                classifier: None,
                ..t.input()
            },
            &pk_pids()
        )
        .unwrap_err()
    );
    assert_mentions(&e, &["always-be-dreaming", "classifier"]);
    let narrow = randn(&[5, D - 1], 3);
    let e = format!(
        "{:#}",
        d.loss(
            &s.input(),
            &DistillInput {
                classifier: Some(&narrow),
                ..t.input()
            },
            &pk_pids()
        )
        .unwrap_err()
    );
    assert_mentions(&e, &["old classifier", "[5, 71]"]);
}

#[test]
fn gradient_descent_on_the_student_lowers_the_new_types_losses() {
    for t in ["GeoDL", "GeoDLxLUCIR", "always-be-dreaming"] {
        let d = &all_types()[TYPES.iter().position(|n| *n == t).unwrap()];
        let teacher = Outputs::random(2, 5);
        let student = Outputs::random(1, 5).requiring_grad();
        let mut losses = Vec::new();
        for _ in 0..5 {
            let loss = d
                .loss(&student.input(), &teacher.input(), &pk_pids())
                .unwrap();
            losses.push(loss.double_value(&[]));
            let grad = Tensor::run_backward(&[&loss], &[&student.embedding], false, false);
            tch::no_grad(|| {
                let mut embedding = student.embedding.shallow_clone();
                embedding -= &grad[0] * 0.5;
            });
        }
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{t}: {losses:?}");
    }
}

#[test]
fn residuals_pair_each_identity_in_batch_order_labelled_on_the_host() {
    let a = Tensor::from_slice(&[1.0f32, 2.0, 4.0, 8.0, 16.0, 32.0]).view([6, 1]);
    let b = &a * 10.0;
    let pids = Tensor::from_slice(&[3i64, 5, 3, 5, 3, 5]);
    let r = agd::loss::distill::pairwise_residuals(&a, &b, &pids).unwrap();
    // Same-identity pairs i < j in row-major order: (0,2) (0,4) (1,3) (1,5) (2,4) (3,5).
    let want_a = [
        4.0f32 - 1.0,
        16.0 - 1.0,
        8.0 - 2.0,
        32.0 - 2.0,
        16.0 - 4.0,
        32.0 - 8.0,
    ];
    assert_eq!(Vec::<f32>::try_from(r.a.view([-1])).unwrap(), want_a);
    let want_b: Vec<f32> = want_a.iter().map(|x| x * 10.0).collect();
    assert_eq!(Vec::<f32>::try_from(r.b.view([-1])).unwrap(), want_b);
    assert_eq!(
        Vec::<i64>::try_from(&r.pids).unwrap(),
        [3, 3, 5, 5, 3, 5],
        "each pair is labelled by its identity"
    );
    // The labels stay where the pair list is built, so a GPU step never reads them back.
    assert_eq!(r.pids.device(), Device::Cpu);
}
