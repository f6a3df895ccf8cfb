//! docs/method.md §8 metrics: mAP and CMC against the reference's golden values, hand-made rankings
//! with known answers, scikit-learn's tie handling, bad input, and the distances.

use agd::eval::metrics::{
    distance_matrix, distances, evaluate, evaluate_features, f_distances, Distance, Labels,
    Metrics, DEFAULT_TOPK,
};
use serde_json::Value;
use tch::{Kind, Tensor};

use super::util::fixture_dir;

fn matrix(v: &Value) -> Tensor {
    let rows = v.as_array().expect("rows");
    let width = rows[0].as_array().expect("row").len();
    let data: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter())
        .map(|x| x.as_f64().expect("number"))
        .collect();
    Tensor::from_slice(&data).view([rows.len() as i64, width as i64])
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

use super::util::err_of;

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (diff {})",
        (got - want).abs()
    );
}

/// One query (pid 1, camera 0) against a gallery; `pids`/`cams` per gallery item.
fn one_query(dist: &[f32], pids: &[i64], cams: &[i64]) -> Metrics {
    evaluate(
        dist,
        Labels::new(&[1], &[0]),
        Labels::new(pids, cams),
        DEFAULT_TOPK,
    )
    .expect("evaluate")
}

#[test]
fn raw_dot_product_would_not_match_the_fixture() {
    // Guards the normalisation: unnormalised similarity ranks the fixture differently.
    let f: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("ranking.json")).unwrap())
            .unwrap();
    let q = matrix(&f["query_features"]);
    let g = matrix(&f["gallery_features"]);
    let dot: Vec<f32> = Vec::try_from((-q.mm(&g.tr())).to_kind(Kind::Float).reshape([-1])).unwrap();
    let (qp, qc) = (ints(&f["query_pids"]), ints(&f["query_cams"]));
    let (gp, gc) = (ints(&f["gallery_pids"]), ints(&f["gallery_cams"]));
    let m = evaluate(
        &dot,
        Labels::new(&qp, &qc),
        Labels::new(&gp, &gc),
        DEFAULT_TOPK,
    )
    .unwrap();
    assert!((m.map - f["mAP"].as_f64().unwrap()).abs() > 1e-3);
}

#[test]
fn perfect_ranking_scores_one() {
    // Two queries, each with its two matches closest.
    let dist = [
        0.1, 0.2, 0.8, 0.9, 0.7, //
        0.8, 0.9, 0.1, 0.3, 0.5,
    ];
    let m = evaluate(
        &dist,
        Labels::new(&[1, 2], &[0, 0]),
        Labels::new(&[1, 1, 2, 2, 3], &[1, 2, 1, 2, 1]),
        DEFAULT_TOPK,
    )
    .unwrap();
    assert_eq!(m.map, 1.0);
    assert_eq!(m.cmc, vec![1.0; DEFAULT_TOPK]);
    assert_eq!((m.valid_queries, m.total_queries), (2, 2));
}

#[test]
fn single_match_at_rank_three() {
    let m = one_query(&[0.25, 0.1, 0.3, 0.2, 0.9], &[1, 2, 3, 4, 5], &[1; 5]);
    assert_close("AP", m.map, 1.0 / 3.0, 1e-12);
    assert_eq!(m.rank(1), 0.0);
    assert_eq!(m.rank(2), 0.0);
    for k in 3..=DEFAULT_TOPK {
        assert_eq!(m.rank(k), 1.0, "rank {k}");
    }
}

#[test]
fn two_matches_at_ranks_one_and_three() {
    let m = one_query(&[0.1, 0.2, 0.3, 0.4], &[1, 2, 1, 3], &[1; 4]);
    assert_close("AP", m.map, (1.0 + 2.0 / 3.0) / 2.0, 1e-12);
    assert_eq!(m.rank(1), 1.0);
}

#[test]
fn same_identity_same_camera_is_ignored() {
    // Item 0 is the query's own shot again (pid 1, camera 0): it would be rank 1.
    let m = one_query(&[0.0, 0.3, 0.2, 0.4], &[1, 1, 2, 3], &[0, 1, 1, 1]);
    assert_close("AP", m.map, 0.5, 1e-12);
    assert_eq!(m.rank(1), 0.0);
    assert_eq!(m.rank(2), 1.0);
    // Same identity in another camera, or same camera with another identity, is kept.
    let m = one_query(&[0.0, 0.3, 0.2], &[2, 1, 1], &[0, 1, 1]);
    assert_close("AP", m.map, (0.5 + 2.0 / 3.0) / 2.0, 1e-12);
}

#[test]
fn query_with_only_same_camera_matches_is_skipped() {
    let dist = [
        0.9, 0.1, 0.5, // query 0: its match (item 1) is in its own camera
        0.2, 0.1, 0.3, // query 1: its match is item 2, rank 3
    ];
    let m = evaluate(
        &dist,
        Labels::new(&[1, 2], &[0, 0]),
        Labels::new(&[3, 1, 2], &[1, 0, 1]),
        DEFAULT_TOPK,
    )
    .unwrap();
    assert_eq!((m.valid_queries, m.total_queries), (1, 2));
    assert_close("mAP", m.map, 1.0 / 3.0, 1e-12);
    assert_eq!(m.rank(2), 0.0);
    assert_eq!(m.rank(3), 1.0);
}

#[test]
fn no_valid_query_is_an_error() {
    let e = err_of(evaluate(
        &[0.1, 0.2],
        Labels::new(&[1], &[0]),
        Labels::new(&[1, 2], &[0, 1]),
        DEFAULT_TOPK,
    ));
    assert!(
        e.contains("no query has a match in the gallery outside its own camera"),
        "{e}"
    );
    let e = err_of(evaluate(
        &[],
        Labels::new(&[], &[]),
        Labels::new(&[1], &[0]),
        DEFAULT_TOPK,
    ));
    assert!(e.contains("no query has a match"), "{e}");
}

#[test]
fn distractors_are_ordinary_non_matches() {
    // pid 0 (distractor) closest: the match drops to rank 2.
    let m = one_query(&[0.1, 0.2, 0.3], &[0, 1, 0], &[1, 1, 1]);
    assert_close("AP", m.map, 0.5, 1e-12);
    assert_eq!(m.rank(1), 0.0);
    assert_eq!(m.rank(2), 1.0);
}

#[test]
fn ties_are_scored_as_scikit_learn_does() {
    // Expected values from sklearn.metrics.average_precision_score(y_true, -dist).
    // One match tied with one non-match at the top.
    let m = one_query(&[0.2, 0.2], &[1, 2], &[1, 1]);
    assert_close("AP tie at top", m.map, 0.5, 1e-12);
    // A non-match ahead, then the match tied with a non-match.
    let m = one_query(&[0.1, 0.2, 0.2], &[2, 1, 3], &[1; 3]);
    assert_close("AP tie behind", m.map, 1.0 / 3.0, 1e-12);
    // Two tied pairs, each holding one match, then a non-match.
    let m = one_query(&[1.0, 1.0, 2.0, 2.0, 3.0], &[1, 2, 3, 1, 4], &[1; 5]);
    assert_close("AP two tied pairs", m.map, 0.5, 1e-12);
    // Everything tied.
    let m = one_query(&[1.0; 4], &[2, 1, 1, 3], &[1; 4]);
    assert_close("AP all tied", m.map, 0.5, 1e-12);
    // Matches at 0.1, 0.2 (tied with two non-matches) and 0.5.
    let m = one_query(&[0.1, 0.2, 0.2, 0.2, 0.5], &[1, 2, 1, 3, 1], &[1; 5]);
    assert_close("AP mixed", m.map, 0.7, 1e-12);
    // -0.0 and 0.0 are the same score to numpy, so they tie.
    let m = one_query(&[-0.0, 0.0], &[2, 1], &[1, 1]);
    assert_close("AP signed zeros", m.map, 0.5, 1e-12);
}

#[test]
fn cmc_breaks_ties_by_gallery_order() {
    // Stable sort: a tied non-match earlier in the gallery ranks first.
    let m = one_query(&[0.2, 0.2], &[2, 1], &[1, 1]);
    assert_eq!((m.rank(1), m.rank(2)), (0.0, 1.0));
    let m = one_query(&[0.2, 0.2], &[1, 2], &[1, 1]);
    assert_eq!(m.rank(1), 1.0);
    // AP does not depend on that order.
    assert_close("AP", m.map, 0.5, 1e-12);
}

#[test]
fn first_match_beyond_topk_still_counts_the_query() {
    let m = evaluate(
        &[0.1, 0.2, 0.3, 0.4],
        Labels::new(&[1], &[0]),
        Labels::new(&[2, 3, 4, 1], &[1; 4]),
        3,
    )
    .unwrap();
    assert_eq!(m.valid_queries, 1);
    assert_eq!(m.cmc, vec![0.0; 3]);
    assert_close("AP", m.map, 0.25, 1e-12);
}

#[test]
fn rank_outside_the_curve() {
    let m = one_query(&[0.1], &[1], &[1]);
    assert_eq!(m.rank(0), 0.0);
    assert_eq!(m.rank(DEFAULT_TOPK), 1.0);
    assert!(m.rank(DEFAULT_TOPK + 1).is_nan());
}

#[test]
fn bad_shapes_and_nan_are_errors() {
    let q = Labels::new(&[1, 2], &[0, 0]);
    let g = Labels::new(&[1, 2, 3], &[1, 1, 1]);
    let e = err_of(evaluate(&[0.0; 5], q, g, DEFAULT_TOPK));
    assert!(
        e.contains("5 entries") && e.contains("2 queries × 3 gallery items"),
        "{e}"
    );
    let e = err_of(evaluate(
        &[0.0; 6],
        Labels::new(&[1, 2], &[0]),
        g,
        DEFAULT_TOPK,
    ));
    assert!(
        e.contains("query labels") && e.contains("2 pids but 1 cams"),
        "{e}"
    );
    let e = err_of(evaluate(
        &[0.0; 6],
        q,
        Labels::new(&[1, 2, 3], &[1, 1]),
        DEFAULT_TOPK,
    ));
    assert!(e.contains("gallery labels"), "{e}");
    let mut dist = [0.1f32; 6];
    dist[4] = f32::NAN;
    let e = err_of(evaluate(&dist, q, g, DEFAULT_TOPK));
    assert!(e.contains("query 1 to gallery item 1 is NaN"), "{e}");
}

#[test]
fn infinite_distances_rank_last_and_tie() {
    let m = one_query(&[f32::INFINITY, 0.5, f32::INFINITY], &[1, 2, 3], &[1; 3]);
    assert_close("AP", m.map, 1.0 / 3.0, 1e-12);
    assert_eq!((m.rank(1), m.rank(2)), (0.0, 1.0));
}

#[test]
fn metrics_serialise() {
    let m = one_query(&[0.1], &[1], &[1]);
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["map"], 1.0);
    assert_eq!(v["valid_queries"], 1);
    assert_eq!(v["cmc"].as_array().unwrap().len(), DEFAULT_TOPK);
}

/// A tiny deterministic generator (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The reference procedure spelled out: stable sort of the kept gallery, sklearn's AP over
/// distinct thresholds, the index of the first match.
fn brute_force(dist: &[f32], q: Labels, g: Labels, topk: usize) -> Option<(f64, Vec<f64>, usize)> {
    let ng = g.pids.len();
    let (mut aps, mut hits, mut valid) = (Vec::new(), vec![0.0; topk], 0);
    for (i, row) in dist.chunks(ng).enumerate() {
        let mut order: Vec<usize> = (0..ng)
            .filter(|&j| g.pids[j] != q.pids[i] || g.cams[j] != q.cams[i])
            .collect();
        order.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap());
        let truth: Vec<bool> = order.iter().map(|&j| g.pids[j] == q.pids[i]).collect();
        let positives = truth.iter().filter(|&&t| t).count();
        if positives == 0 {
            continue;
        }
        let (mut tp, mut ap, mut prev_recall) = (0usize, 0.0, 0.0);
        for n in 0..order.len() {
            tp += truth[n] as usize;
            let last_of_tie = n + 1 == order.len() || row[order[n + 1]] != row[order[n]];
            if last_of_tie {
                let recall = tp as f64 / positives as f64;
                ap += (recall - prev_recall) * tp as f64 / (n + 1) as f64;
                prev_recall = recall;
            }
        }
        aps.push(ap);
        let first = truth.iter().position(|&t| t).unwrap();
        if first < topk {
            hits[first] += 1.0;
        }
        valid += 1;
    }
    if valid == 0 {
        return None;
    }
    let map = aps.iter().sum::<f64>() / valid as f64;
    let mut acc = 0.0;
    let cmc = hits
        .iter()
        .map(|h| {
            acc += h;
            acc / valid as f64
        })
        .collect();
    Some((map, cmc, valid))
}

#[test]
fn agrees_with_the_spelled_out_procedure_on_heavy_ties() {
    let mut rng = Lcg(7);
    for case in 0..240 {
        // Every fourth case has so many distinct match distances that the scorer places
        // items by binary search instead of counting passes.
        let big = case % 4 == 3;
        let nq = 1 + rng.below(6) as usize;
        let ng = 1 + rng.below(if big { 400 } else { 30 }) as usize;
        let levels = 1 + rng.below(if big { 300 } else { 6 });
        let ids = 1 + rng.below(if big { 2 } else { 5 }) as i64;
        let draw = |rng: &mut Lcg, n: usize, m: i64| -> Vec<i64> {
            (0..n).map(|_| rng.below(m as u64) as i64).collect()
        };
        let (qp, qc) = (draw(&mut rng, nq, ids), draw(&mut rng, nq, 3));
        let (gp, gc) = (draw(&mut rng, ng, ids), draw(&mut rng, ng, 3));
        // Zero comes in both signs: -0.0 and 0.0 tie, as in numpy.
        let dist: Vec<f32> = (0..nq * ng)
            .map(|_| match rng.below(levels) {
                0 if rng.below(2) == 0 => -0.0,
                l => l as f32 * 0.25,
            })
            .collect();
        let (q, g) = (Labels::new(&qp, &qc), Labels::new(&gp, &gc));
        let topk = 1 + rng.below(8) as usize;
        match (brute_force(&dist, q, g, topk), evaluate(&dist, q, g, topk)) {
            (None, Err(_)) => {}
            (Some((map, cmc, valid)), Ok(m)) => {
                assert_close(&format!("case {case} mAP"), m.map, map, 1e-12);
                assert_eq!(m.cmc, cmc, "case {case} cmc");
                assert_eq!(m.valid_queries, valid, "case {case}");
                assert_eq!(m.total_queries, nq, "case {case}");
            }
            (want, got) => panic!("case {case}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn cosine_distance_orders_by_angle() {
    let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
    let g = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 5.0, -1.0, 0.0, 1.0, 1.0]).view([4, 2]);
    let d = distances(&q, &g, Distance::Cosine);
    assert_eq!(d.size(), [2, 4]);
    assert_eq!(d.kind(), Kind::Float);
    let d: Vec<f32> = Vec::try_from(d.reshape([-1])).unwrap();
    // Same direction (any length): 1/(1+1); orthogonal: 1; opposite: the far end.
    assert!((d[0] - 0.5).abs() < 1e-6, "{d:?}");
    assert!((d[1] - 1.0).abs() < 1e-6, "{d:?}");
    assert!(d[2] > d[1] && d[2] > 1e6, "{d:?}");
    assert!(d[0] < d[3] && d[3] < d[1], "{d:?}");
    assert!((d[5] - 0.5).abs() < 1e-6, "{d:?}");
    assert!((d[4] - 1.0).abs() < 1e-6, "{d:?}");
    // A zero feature is at distance 1 (cos 0), not NaN.
    let z = Tensor::zeros([1, 2], (Kind::Float, tch::Device::Cpu));
    let dz: Vec<f32> = distance_matrix(&z, &g, Distance::Cosine).unwrap();
    assert!(dz.iter().all(|&x| (x - 1.0).abs() < 1e-6), "{dz:?}");
}

#[test]
fn euclidean_distance_is_the_references() {
    let q = Tensor::from_slice(&[0.0f64, 0.0, 1.0, 1.0]).view([2, 2]);
    let g = Tensor::from_slice(&[3.0f64, 4.0, 1.0, 1.0]).view([2, 2]);
    let d = distance_matrix(&q, &g, Distance::Euclidean).unwrap();
    let want = [5.0, 2f32.sqrt(), 13f32.sqrt(), 1e-6];
    for (got, want) in d.iter().zip(want) {
        assert!((got - want).abs() < 1e-5, "{d:?}");
    }
}

#[test]
fn distances_reject_mismatched_features() {
    let q = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
    let g = Tensor::zeros([4, 5], (Kind::Float, tch::Device::Cpu));
    let e = err_of(f_distances(&q, &g, Distance::Cosine));
    assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let v = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
    assert!(f_distances(&v, &g, Distance::Euclidean).is_err());
}

/// Identity-clustered random features (with a per-camera shift), as retrieval produces:
/// the same `seed` gives the same identities, so queries and gallery share them. Drawn
/// from a local generator, not libtorch's global one, which parallel tests share.
fn clustered(n: usize, ids: u64, cams: u64, dim: usize, seed: u64) -> (Tensor, Vec<i64>, Vec<i64>) {
    // Roughly normal: a sum of four uniforms, centred.
    let normal = |rng: &mut Lcg| {
        (0..4).map(|_| rng.below(1 << 20) as f32).sum::<f32>() / (1 << 19) as f32 - 4.0
    };
    let mut rng = Lcg(seed);
    let centres: Vec<f32> = (0..ids as usize * dim).map(|_| normal(&mut rng)).collect();
    let shifts: Vec<f32> = (0..cams as usize * dim)
        .map(|_| 0.5 * normal(&mut rng))
        .collect();
    let mut rng = Lcg(seed ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let (mut x, mut pids, mut cam) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (p, c) = (rng.below(ids) as usize, rng.below(cams) as usize);
        for k in 0..dim {
            x.push(centres[p * dim + k] + shifts[c * dim + k] + 1.5 * normal(&mut rng));
        }
        pids.push(p as i64);
        cam.push(c as i64);
    }
    (
        Tensor::from_slice(&x).view([n as i64, dim as i64]),
        pids,
        cam,
    )
}

#[test]
fn streamed_evaluation_equals_the_distance_matrix_path() {
    // More queries than one block of the streamed path (1,024), so blocks are stitched.
    let (q, qp, qc) = clustered(1300, 60, 4, 48, 1);
    let (g, gp, gc) = clustered(700, 60, 4, 48, 1);
    let (ql, gl) = (Labels::new(&qp, &qc), Labels::new(&gp, &gc));
    for kind in [Distance::Cosine, Distance::Euclidean] {
        let full = evaluate(
            &distance_matrix(&q, &g, kind).unwrap(),
            ql,
            gl,
            DEFAULT_TOPK,
        )
        .unwrap();
        let streamed = evaluate_features(&q, &g, kind, ql, gl, DEFAULT_TOPK).unwrap();
        assert!(full.map > 0.2 && full.map < 0.99, "{kind:?}: {full:?}");
        assert_close("mAP", streamed.map, full.map, 1e-6);
        for (s, f) in streamed.cmc.iter().zip(&full.cmc) {
            assert_close("CMC", *s, *f, 1e-6);
        }
        assert_eq!(streamed.valid_queries, full.valid_queries);
    }
    // Float64 features (and features on a GPU) take the tensor path, in blocks of 1,024
    // query rows: exactly the whole matrix's numbers.
    let (q64, g64) = (q.to_kind(Kind::Double), g.to_kind(Kind::Double));
    for kind in [Distance::Cosine, Distance::Euclidean] {
        let want = evaluate(
            &distance_matrix(&q64, &g64, kind).unwrap(),
            ql,
            gl,
            DEFAULT_TOPK,
        )
        .unwrap();
        let got = evaluate_features(&q64, &g64, kind, ql, gl, DEFAULT_TOPK).unwrap();
        assert_eq!(got.map, want.map, "{kind:?}");
        assert_eq!(got.cmc, want.cmc, "{kind:?}");
        assert_eq!(got.valid_queries, want.valid_queries, "{kind:?}");
    }
}

#[test]
fn streamed_evaluation_rejects_bad_input() {
    let (q, qp, qc) = clustered(10, 3, 2, 8, 3);
    let (g, gp, gc) = clustered(12, 3, 2, 8, 3);
    let ql = Labels::new(&qp, &qc);
    let gl = Labels::new(&gp, &gc);
    let narrow = g.narrow(1, 0, 4);
    let e = err_of(evaluate_features(
        &q,
        &narrow,
        Distance::Cosine,
        ql,
        gl,
        DEFAULT_TOPK,
    ));
    assert!(e.contains("same width"), "{e}");
    let short = Labels::new(&gp[..5], &gc[..5]);
    let e = err_of(evaluate_features(
        &q,
        &g,
        Distance::Cosine,
        ql,
        short,
        DEFAULT_TOPK,
    ));
    assert!(
        e.contains("12 gallery features") && e.contains("5 gallery labels"),
        "{e}"
    );
    let mut bad = Vec::<f32>::try_from(q.reshape([-1])).unwrap();
    bad[8 * 3] = f32::NAN;
    let nan = Tensor::from_slice(&bad).view([10, 8]);
    let e = err_of(evaluate_features(
        &nan,
        &g,
        Distance::Euclidean,
        ql,
        gl,
        DEFAULT_TOPK,
    ));
    assert!(e.contains("query 3") && e.contains("NaN"), "{e}");
    let e = err_of(evaluate_features(
        &q.narrow(0, 0, 0),
        &g,
        Distance::Cosine,
        Labels::new(&[], &[]),
        gl,
        DEFAULT_TOPK,
    ));
    assert!(e.contains("no query has a match"), "{e}");
}
