//! The reference's golden values: every JSON file in `tests/fixtures/` (or in the folder
//! named by `AGD_FIXTURES`) is matched against agd, to the tolerances of the fixtures'
//! README: scalar outputs to a relative 1e-6, gradients element-wise to 1e-8 + 1e-6·|v|,
//! computing in float64 — except GeoDL's, which the reference computes in float32: loss to a
//! relative 1e-4, gradients to 1e-3 of their largest element. A fixture of a kind the runner
//! does not know fails the test.

use serde_json::Value;
use std::path::PathBuf;
use tch::{Kind, Tensor};

use super::util::fixture_dir;

/// A nested JSON array as a float64 tensor.
fn tensor(v: &Value) -> Tensor {
    fn flatten(v: &Value, shape: &mut Vec<i64>, depth: usize, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len() as i64);
                }
                for item in items {
                    flatten(item, shape, depth + 1, out);
                }
            }
            other => out.push(other.as_f64().expect("number")),
        }
    }
    let (mut shape, mut data) = (Vec::new(), Vec::new());
    flatten(v, &mut shape, 0, &mut data);
    Tensor::from_slice(&data).view(&shape[..])
}

fn ids(v: &Value) -> Tensor {
    tensor(v).to_kind(Kind::Int64)
}

/// How closely a fixture's values are matched: the precision the reference computed them in.
#[derive(Clone, Copy)]
enum Precision {
    /// Scalars to a relative 1e-6, gradients element-wise to 1e-8 + 1e-6·|v|.
    Float64,
    /// Scalars to a relative 1e-4, gradients to 1e-3 of their largest element (GeoDL).
    Float32,
}

impl Precision {
    /// The README's: GeoDL (alone or in GeoDLxLUCIR) is float32 in the reference.
    fn of_distill_type(name: &str) -> Self {
        match name {
            "GeoDL" | "GeoDLxLUCIR" => Precision::Float32,
            _ => Precision::Float64,
        }
    }
}

fn assert_scalar(file: &str, what: &str, got: f64, want: f64) {
    assert_scalar_to(Precision::Float64, file, what, got, want)
}

fn assert_scalar_to(precision: Precision, file: &str, what: &str, got: f64, want: f64) {
    let bound = match precision {
        Precision::Float64 => 1e-6,
        Precision::Float32 => 1e-4,
    };
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel <= bound,
        "{file}: {what} = {got}, reference {want} (relative error {rel:e}, at most {bound:e})"
    );
}

fn assert_grad(file: &str, what: &str, got: &Tensor, want: &Tensor) {
    assert_grad_to(Precision::Float64, file, what, got, want)
}

fn assert_grad_to(precision: Precision, file: &str, what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{file}: {what} shape");
    let tol = match precision {
        Precision::Float64 => want.abs() * 1e-6 + 1e-8,
        Precision::Float32 => want.ones_like() * (want.abs().max().double_value(&[]) * 1e-3),
    };
    let excess = ((got - want).abs() - tol).max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{file}: {what} differs from the reference beyond tolerance (by {excess:e})"
    );
}

fn check_triplet(file: &str, f: &Value) {
    let global = tensor(&f["global"]).set_requires_grad(true);
    let loss = agd::loss::triplet(&global, &ids(&f["pids"]));
    loss.backward();
    assert_scalar(
        file,
        "loss",
        loss.double_value(&[]),
        f["loss"].as_f64().unwrap(),
    );
    assert_grad(
        file,
        "grad_global",
        &global.grad(),
        &tensor(&f["grad_global"]),
    );
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// A list of nested JSON arrays (podnet's four maps) as float64 tensors.
fn tensors(v: &Value) -> Vec<Tensor> {
    v.as_array()
        .expect("a list of maps")
        .iter()
        .map(tensor)
        .collect()
}

/// One distillation loss: the fixture's `type` and `config` go through the YAML parser (JSON
/// is YAML), the loss and the student's gradients are matched; the teacher is a constant.
/// GeoDL's fixtures give the null-space basis the reference padded the student's subspace
/// with, always-be-dreaming's the old classifier (the teacher's).
fn check_distill(file: &str, f: &Value) {
    use agd::loss::distill::{DistillInput, Distillation};
    let config = serde_json::json!({
        "distillation": { "type": f["type"], "factor": 1.0, "config": f["config"] }
    });
    let distillation =
        Distillation::parse(&config.to_string(), file).unwrap_or_else(|e| panic!("{file}: {e:#}"));
    assert_eq!(
        distillation.type_name(),
        f["type"].as_str().unwrap(),
        "{file}"
    );
    let none = Tensor::zeros([0], (Kind::Double, tch::Device::Cpu));
    let field = |key: &str| match f.get(key) {
        Some(v) => tensor(v),
        None => none.shallow_clone(),
    };
    let student = field("student").set_requires_grad(true);
    let student_logits = field("student_logits").set_requires_grad(true);
    let student_maps: Vec<Tensor> = f
        .get("student_maps")
        .map(tensors)
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.set_requires_grad(true))
        .collect();
    let (teacher, teacher_logits) = (field("teacher"), field("teacher_logits"));
    let teacher_maps = f.get("teacher_maps").map(tensors).unwrap_or_default();
    let basis = f.get("null_space_basis").map(tensor);
    let old_classifier = f.get("old_classifier").map(tensor);
    let loss = distillation
        .loss(
            &DistillInput {
                embedding: &student,
                logits: &student_logits,
                maps: &student_maps,
                classifier: None,
                null_space_basis: basis.as_ref(),
            },
            &DistillInput {
                embedding: &teacher,
                logits: &teacher_logits,
                maps: &teacher_maps,
                classifier: old_classifier.as_ref(),
                null_space_basis: None,
            },
            &ids(&f["pids"]),
        )
        .unwrap_or_else(|e| panic!("{file}: {e:#}"));
    loss.backward();
    let precision = Precision::of_distill_type(distillation.type_name());
    assert_scalar_to(
        precision,
        file,
        "loss",
        loss.double_value(&[]),
        f["loss"].as_f64().unwrap(),
    );
    let mut checked = 0;
    if let Some(want) = f.get("grad_student") {
        assert_grad_to(
            precision,
            file,
            "grad_student",
            &student.grad(),
            &tensor(want),
        );
        checked += 1;
    }
    if let Some(want) = f.get("grad_student_logits") {
        assert_grad(
            file,
            "grad_student_logits",
            &student_logits.grad(),
            &tensor(want),
        );
        checked += 1;
    }
    if let Some(want) = f.get("grad_student_maps") {
        let want = tensors(want);
        assert_eq!(want.len(), student_maps.len(), "{file}: number of maps");
        for (l, (m, w)) in student_maps.iter().zip(&want).enumerate() {
            assert_grad(file, &format!("grad_student_maps[{l}]"), &m.grad(), w);
        }
        checked += 1;
    }
    assert!(checked > 0, "{file}: no gradient to check");
    if matches!(precision, Precision::Float32) {
        check_in_float32(file, f, &distillation);
    }
}

/// A fixture the reference computed in float32 (GeoDL), matched again from float32 inputs:
/// the precision agd trains in.
fn check_in_float32(file: &str, f: &Value, distillation: &agd::loss::distill::Distillation) {
    use agd::loss::distill::DistillInput;
    let float = |key: &str| tensor(&f[key]).to_kind(Kind::Float);
    let student = float("student").set_requires_grad(true);
    let (teacher, basis) = (float("teacher"), float("null_space_basis"));
    let none = Tensor::zeros([0], (Kind::Float, tch::Device::Cpu));
    let loss = distillation
        .loss(
            &DistillInput {
                embedding: &student,
                logits: &none,
                maps: &[],
                classifier: None,
                null_space_basis: Some(&basis),
            },
            &DistillInput {
                embedding: &teacher,
                logits: &none,
                maps: &[],
                classifier: None,
                null_space_basis: None,
            },
            &ids(&f["pids"]),
        )
        .unwrap_or_else(|e| panic!("{file} (float32): {e:#}"));
    assert_eq!(loss.kind(), Kind::Float, "{file}: GeoDL must stay float32");
    loss.backward();
    let (file, precision) = (format!("{file} (float32)"), Precision::Float32);
    assert_scalar_to(
        precision,
        &file,
        "loss",
        loss.double_value(&[]),
        f["loss"].as_f64().unwrap(),
    );
    assert_grad_to(
        precision,
        &file,
        "grad_student",
        &student.grad().to_kind(Kind::Double),
        &tensor(&f["grad_student"]),
    );
}

/// mAP, CMC and valid queries from the reference's cosine ranking, from float64 and from
/// float32 features (what the model produces); re-ranked distances (all queries in one
/// graph) to 3e-3 and re-ranked mAP/CMC to 2e-3 — the reference keeps its k-reciprocal
/// encodings in float16, so that is the bar its README sets.
fn check_ranking(file: &str, f: &Value) {
    use agd::eval::metrics::{distance_matrix, evaluate, Distance, Labels, DEFAULT_TOPK};
    let (qp, qc) = (ints(&f["query_pids"]), ints(&f["query_cams"]));
    let (gp, gc) = (ints(&f["gallery_pids"]), ints(&f["gallery_cams"]));
    for kind in [Kind::Double, Kind::Float] {
        let q = tensor(&f["query_features"]).to_kind(kind);
        let g = tensor(&f["gallery_features"]).to_kind(kind);
        let dist = distance_matrix(&q, &g, Distance::Cosine).unwrap();
        let m = evaluate(
            &dist,
            Labels::new(&qp, &qc),
            Labels::new(&gp, &gc),
            DEFAULT_TOPK,
        )
        .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let what = format!("{kind:?} features");
        assert_scalar(
            file,
            &format!("mAP ({what})"),
            m.map,
            f["mAP"].as_f64().unwrap(),
        );
        for (k, want) in f["cmc"].as_array().unwrap().iter().enumerate() {
            let (got, want) = (m.cmc[k], want.as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-6,
                "{file}: CMC rank {} = {got}, reference {want} ({what})",
                k + 1
            );
        }
        assert_eq!(
            m.valid_queries as u64,
            f["valid_queries"].as_u64().unwrap(),
            "{file}: valid queries"
        );
    }
}

/// DeepInversion's image priors: tv_l1, tv_l2, l2, their weighted total and its gradient.
fn check_image_prior(file: &str, f: &Value) {
    use agd::inversion::prior::{ImagePrior, PriorWeights};
    let images = tensor(&f["images"]).set_requires_grad(true);
    let w = &f["weights"];
    let weight = |k: &str| {
        w[k].as_f64()
            .unwrap_or_else(|| panic!("{file}: weights.{k}"))
    };
    let weights = PriorWeights {
        tv_l1: weight("tv_l1"),
        tv_l2: weight("tv_l2"),
        l2: weight("l2"),
    };
    let prior = ImagePrior::of(&images);
    let total = prior.total(&weights);
    total.backward();
    for (what, got) in [
        ("tv_l1", &prior.tv_l1),
        ("tv_l2", &prior.tv_l2),
        ("l2", &prior.l2),
        ("total", &total),
    ] {
        assert_eq!(got.kind(), Kind::Double, "{file}: {what} must stay float64");
        assert_scalar(file, what, got.double_value(&[]), f[what].as_f64().unwrap());
    }
    assert_grad(
        file,
        "grad_images",
        &images.grad(),
        &tensor(&f["grad_images"]),
    );
}

#[test]
fn every_fixture_matches_the_reference() {
    let dir = fixture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixture folder {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    let (mut matched, mut unknown) = (Vec::new(), Vec::new());
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        if name.starts_with("triplet") {
            check_triplet(&name, &f);
        } else if name.starts_with("ranking") {
            check_ranking(&name, &f);
        } else if name.starts_with("distill_") {
            check_distill(&name, &f);
        } else if name.starts_with("image_prior") {
            check_image_prior(&name, &f);
        } else {
            unknown.push(name);
            continue;
        }
        matched.push(name);
    }
    println!("matched: {}", matched.join(", "));
    assert!(
        unknown.is_empty(),
        "fixtures of a kind this runner does not know: {}",
        unknown.join(", ")
    );
    for kind in ["triplet", "ranking", "distill_", "image_prior"] {
        assert!(
            matched.iter().any(|n| n.starts_with(kind)),
            "no {kind} fixture matched"
        );
    }
}
