//! docs/method.md §8 re-ranking: the reference's golden values, its chunked evaluation, a literal
//! dense rendering of the reference's algorithm on a gallery large enough for the sparse,
//! shared-gallery path to matter, a hand-made case where re-ranking repairs a ranking, and
//! bad input.

use agd::eval::metrics::{evaluate, Labels, Metrics, DEFAULT_TOPK};
use agd::eval::rerank::{rerank, rerank_chunked, rerank_selecting, RerankParams, Selection};
use serde_json::Value;
use tch::{Kind, Tensor};

/// The fixture's tolerances for a float32 re-ranking against the reference's float16
/// encodings (tests/fixtures/README.md).
const DIST_TOL: f64 = 3e-3;
const METRIC_TOL: f64 = 2e-3;

fn fixture() -> Value {
    let dir = super::util::fixture_dir();
    serde_json::from_str(&std::fs::read_to_string(dir.join("ranking.json")).unwrap()).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn matrix(v: &Value) -> Tensor {
    let r = rows(v);
    let flat: Vec<f64> = r.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([r.len() as i64, r[0].len() as i64])
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

struct Fixture {
    q: Tensor,
    g: Tensor,
    qp: Vec<i64>,
    qc: Vec<i64>,
    gp: Vec<i64>,
    gc: Vec<i64>,
    f: Value,
}

impl Fixture {
    fn load() -> Self {
        let f = fixture();
        Self {
            q: matrix(&f["query_features"]),
            g: matrix(&f["gallery_features"]),
            qp: ints(&f["query_pids"]),
            qc: ints(&f["query_cams"]),
            gp: ints(&f["gallery_pids"]),
            gc: ints(&f["gallery_cams"]),
            f,
        }
    }

    fn metrics(&self, dist: &[f32]) -> Metrics {
        evaluate(
            dist,
            Labels::new(&self.qp, &self.qc),
            Labels::new(&self.gp, &self.gc),
            DEFAULT_TOPK,
        )
        .expect("evaluate")
    }
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn fixture_distances_and_metrics_from_float64_and_float32() {
    let fx = Fixture::load();
    let want = rows(&fx.f["reranked_distance"]);
    let want_map = fx.f["reranked_mAP"].as_f64().unwrap();
    let want_cmc: Vec<f64> = fx.f["reranked_cmc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let ng = fx.gp.len();
    for kind in [Kind::Double, Kind::Float] {
        let dist = rerank(
            &fx.q.to_kind(kind),
            &fx.g.to_kind(kind),
            RerankParams::default(),
        )
        .unwrap();
        assert_eq!(dist.len(), want.len() * ng);
        let mut worst = (0.0f64, 0, 0);
        for (i, row) in want.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                let e = (dist[i * ng + j] as f64 - w).abs();
                if e > worst.0 {
                    worst = (e, i, j);
                }
            }
        }
        let m = fx.metrics(&dist);
        println!(
            "{kind:?}: max |Δdistance| {:.2e} at ({}, {}); mAP {} vs {want_map} (Δ {:.2e})",
            worst.0,
            worst.1,
            worst.2,
            m.map,
            (m.map - want_map).abs()
        );
        assert!(
            worst.0 <= DIST_TOL,
            "{kind:?}: re-ranked distance ({}, {}) off by {:e}",
            worst.1,
            worst.2,
            worst.0
        );
        assert!(
            (m.map - want_map).abs() <= METRIC_TOL,
            "{kind:?}: re-ranked mAP {} vs reference {want_map}",
            m.map
        );
        for (k, (&got, &w)) in m.cmc.iter().zip(&want_cmc).enumerate() {
            assert!(
                (got - w).abs() <= METRIC_TOL,
                "{kind:?}: re-ranked CMC rank {} = {got}, reference {w}",
                k + 1
            );
        }
    }
}

fn params(k1: usize, k2: usize) -> RerankParams {
    RerankParams {
        k1,
        k2,
        lambda: 0.3,
    }
}

#[test]
fn a_chunk_covering_all_queries_is_the_one_shot_ranking() {
    let fx = Fixture::load();
    let p = RerankParams::default();
    let one = rerank(&fx.q, &fx.g, p).unwrap();
    for chunk in [12, 13, 1024] {
        assert_eq!(
            rerank_chunked(&fx.q, &fx.g, p, chunk).unwrap(),
            one,
            "chunk {chunk}"
        );
    }
}

/// The reference re-ranks each chunk of queries as its own graph (chunk + whole gallery):
/// a chunk's rows are exactly the one-shot re-ranking of those queries alone, and they
/// differ from the all-queries ranking because the other queries left the graph.
#[test]
fn small_chunks_rerank_each_chunk_as_its_own_graph() {
    let fx = Fixture::load();
    let p = RerankParams::default();
    let ng = fx.gp.len();
    let chunked = rerank_chunked(&fx.q, &fx.g, p, 5).unwrap();
    for start in (0..12).step_by(5) {
        let len = 5.min(12 - start);
        let alone = rerank(&fx.q.narrow(0, start as i64, len as i64), &fx.g, p).unwrap();
        assert_eq!(
            &chunked[start * ng..(start + len) * ng],
            &alone[..],
            "chunk at query {start}"
        );
    }
    assert!(
        chunked.iter().all(|d| (0.0..=1.0).contains(d)),
        "re-ranked distances leave [0, 1]"
    );
    let one = rerank(&fx.q, &fx.g, p).unwrap();
    let moved = chunked
        .iter()
        .zip(&one)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 0.0, "fewer queries in the graph changed nothing");
    // Still a re-ranking of the same features: close to the one-shot quality.
    let (m_chunked, m_one) = (fx.metrics(&chunked), fx.metrics(&one));
    println!(
        "chunks of 5: mAP {:.4} (one chunk {:.4}), max |Δ| {moved:.3e}",
        m_chunked.map, m_one.map
    );
    assert!((m_chunked.map - m_one.map).abs() < 0.1);
}

/// A deterministic pseudo-random matrix in [-1, 1) (no rand dependency needed).
fn noise(rows: usize, cols: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

/// Nearest float16 value (ties to even), as numpy stores and computes float16.
fn half(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let e = x.abs().log2().floor().max(-14.0);
    let ulp = (e - 10.0).exp2();
    (x / ulp).round_ties_even() * ulp
}

/// The reference's `re_ranking` written out densely and literally (full distance matrix,
/// full argsorts, dense float16 encodings), for one graph of queries + gallery.
fn dense_reference(q: &[Vec<f64>], g: &[Vec<f64>], k1: usize, k2: usize, lambda: f64) -> Vec<f64> {
    let x: Vec<&Vec<f64>> = q.iter().chain(g).collect();
    let (nq, n) = (q.len(), x.len());
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let d: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| dot(x[i], x[i]) + dot(x[j], x[j]) - 2.0 * dot(x[i], x[j]))
                .collect()
        })
        .collect();
    let orig: Vec<Vec<f64>> = d
        .iter()
        .map(|r| {
            let m = r.iter().copied().fold(f64::MIN, f64::max);
            r.iter().map(|v| v / m).collect()
        })
        .collect();
    let rank: Vec<Vec<usize>> = orig
        .iter()
        .map(|r| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| r[a].total_cmp(&r[b]).then(a.cmp(&b)));
            idx
        })
        .collect();
    let recip = |i: usize, k: usize| -> Vec<usize> {
        rank[i][..k]
            .iter()
            .copied()
            .filter(|&f| rank[f][..k].contains(&i))
            .collect()
    };
    let half_k = (k1 as f64 / 2.0).round_ties_even() as usize + 1;
    let mut v = vec![vec![0f64; n]; n];
    for i in 0..n {
        let r = recip(i, k1 + 1);
        let mut set = r.clone();
        for &c in &r {
            let rc = recip(c, half_k);
            let shared = rc.iter().filter(|y| r.contains(y)).count();
            if shared as f64 > 2.0 / 3.0 * rc.len() as f64 {
                set.extend(rc);
            }
        }
        set.sort();
        set.dedup();
        let w: Vec<f64> = set.iter().map(|&j| (-orig[i][j]).exp()).collect();
        let total: f64 = w.iter().sum();
        for (&j, wj) in set.iter().zip(w) {
            v[i][j] = half(wj / total);
        }
    }
    if k2 != 1 {
        v = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let s = rank[i][..k2]
                            .iter()
                            .fold(0f32, |acc, &r| acc + v[r][j] as f32);
                        half((s / k2 as f32) as f64)
                    })
                    .collect()
            })
            .collect();
    }
    let f16 = |y: f64| half(y as f32 as f64);
    let weight = half(1.0 - lambda);
    let mut out = Vec::with_capacity(nq * g.len());
    for i in 0..nq {
        for j in nq..n {
            let mut m = 0.0;
            // Columns in ascending order, as the reference walks them.
            for (&a, &b) in v[i].iter().zip(&v[j]) {
                if a != 0.0 && b != 0.0 {
                    m = f16(m + a.min(b));
                }
            }
            let jaccard = f16(1.0 - f16(m / f16(2.0 - m)));
            out.push(f16(jaccard * weight) + orig[i][j] * lambda);
        }
    }
    out
}

/// A gallery spanning several of the gallery–gallery GEMM strips, clustered so that
/// k-reciprocal sets are non-trivial, in chunks that leave a short last one; with the
/// gallery's neighbours selected on the host and on the device (the GPU's way).
#[test]
fn matches_a_dense_rendering_of_the_reference_on_a_larger_gallery() {
    let (nq, ng, dim) = (23, 1100, 8);
    let centres = noise(60, dim, 1);
    let jitter = noise(nq + ng, dim, 2);
    let items: Vec<Vec<f64>> = jitter
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let c = &centres[(i * 7) % 60];
            c.iter().zip(j).map(|(c, j)| 3.0 * c + j).collect()
        })
        .collect();
    let (q, g) = items.split_at(nq);
    let tensor = |rows: &[Vec<f64>]| {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, dim as i64])
    };
    let (qt, gt) = (tensor(q), tensor(g));
    let cases = [(20, 6, 10), (7, 1, 23), (5, 3, 9)];
    for ((k1, k2, chunk), selection) in cases
        .into_iter()
        .flat_map(|c| [(c, Selection::Host), (c, Selection::Device)])
    {
        let got = rerank_selecting(&qt, &gt, params(k1, k2), chunk, selection).unwrap();
        let mut worst = 0f64;
        let mut total = 0f64;
        for start in (0..nq).step_by(chunk) {
            let end = (start + chunk).min(nq);
            let want = dense_reference(&q[start..end], g, k1, k2, 0.3);
            for (a, b) in got[start * ng..end * ng].iter().zip(&want) {
                let e = (*a as f64 - b).abs();
                worst = worst.max(e);
                total += e;
            }
        }
        let mean = total / (nq * ng) as f64;
        println!(
            "{selection:?}: k1 {k1}, k2 {k2}, chunk {chunk}: max |Δ| {worst:.2e}, mean {mean:.2e}"
        );
        // One float16 step (2^-11 near 1) where a 1e-7 difference lands on a rounding edge.
        assert!(worst <= 1e-3, "k1 {k1} k2 {k2}: max |Δ| {worst:e}");
        assert!(mean <= 1e-6, "k1 {k1} k2 {k2}: mean |Δ| {mean:e}");
    }
}

/// Query pid 1 (camera 0). Raw distances rank a pid-2 distractor first: it sits nearer the
/// query than the query's own identity, but among its own tight cluster, so the query is
/// not among its nearest neighbours. The three pid-1 items surround the query and have it
/// among theirs: k-reciprocal neighbours, which re-ranking moves to the top.
#[test]
fn rerank_promotes_a_mutual_neighbour_over_a_one_sided_one() {
    let q = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
    let g = Tensor::from_slice(&[
        0.9f32, 0.0, // distractor, pid 2
        1.1, 0.0, // its cluster
        1.05, 0.05, //
        1.05, -0.05, //
        -1.0, 0.0, // pid 1
        0.0, 1.02, //
        0.0, -1.04,
    ])
    .view([7, 2]);
    let (gp, gc) = ([2, 2, 2, 2, 1, 1, 1], [1, 1, 1, 1, 1, 2, 3]);
    let labels = Labels::new(&gp, &gc);
    let query = Labels::new(&[1], &[0]);
    let raw: Vec<f32> =
        Vec::try_from((&q - &g).square().sum_dim_intlist(1, false, Kind::Float)).unwrap();
    let before = evaluate(&raw, query, labels, DEFAULT_TOPK).unwrap();
    assert_eq!(before.cmc[0], 0.0, "the distractor should start first");

    let dist = rerank(&q, &g, params(3, 1)).unwrap();
    let after = evaluate(&dist, query, labels, DEFAULT_TOPK).unwrap();
    println!("raw {raw:?}\nre-ranked {dist:?}");
    assert_eq!(
        after.cmc[0], 1.0,
        "a mutual neighbour should now come first"
    );
    assert!(after.map > before.map);
    assert!(
        dist[4] < dist[0],
        "the pid-1 item next to the query beats the distractor"
    );
}

#[test]
fn bad_input_is_rejected_with_a_reason() {
    let q = Tensor::ones([3, 4], (Kind::Float, tch::Device::Cpu));
    let g = Tensor::ones([5, 4], (Kind::Float, tch::Device::Cpu)).cumsum(0, Kind::Float);
    let p = RerankParams::default();
    let small = params(2, 2);
    let e = err_of(rerank(
        &q,
        &Tensor::ones([5, 3], (Kind::Float, tch::Device::Cpu)),
        small,
    ));
    assert!(e.contains("same width"), "{e}");
    let e = err_of(rerank(&q.view([12]), &g, small));
    assert!(e.contains("same width"), "{e}");
    let e = err_of(rerank(&q.narrow(0, 0, 0), &g, small));
    assert!(e.contains("at least one query"), "{e}");
    let e = err_of(rerank(&q, &g.narrow(0, 0, 0), small));
    assert!(e.contains("one gallery item"), "{e}");
    let e = err_of(rerank(&q, &g, params(0, 2)));
    assert!(e.contains("at least 1"), "{e}");
    let e = err_of(rerank(&q, &g, params(2, 0)));
    assert!(e.contains("at least 1"), "{e}");
    // 8 items in the graph: k1 = 20 does not fit.
    let e = err_of(rerank(&q, &g, p));
    assert!(e.contains("k1 = 20") && e.contains("8 items"), "{e}");
    let e = err_of(rerank(&q, &g, params(2, 9)));
    assert!(e.contains("k2 = 9"), "{e}");
    // Chunks of 2 leave a last chunk of 1 query: 6 items.
    let e = err_of(rerank_chunked(&q, &g, params(7, 2), 2));
    assert!(e.contains("6 items"), "{e}");
    assert!(rerank_chunked(&q, &g, params(7, 2), 3).is_ok());
    let e = err_of(rerank_chunked(&q, &g, small, 0));
    assert!(e.contains("chunk"), "{e}");
    let e = err_of(rerank(
        &q,
        &g,
        RerankParams {
            lambda: 1.5,
            ..small
        },
    ));
    assert!(e.contains("lambda"), "{e}");
    let e = err_of(rerank(
        &q,
        &g,
        RerankParams {
            lambda: f64::NAN,
            ..small
        },
    ));
    assert!(e.contains("lambda"), "{e}");
    let bad = q.copy();
    let _ = bad.get(1).get(2).fill_(f64::NAN);
    let e = err_of(rerank(&bad, &g, small));
    assert!(e.contains("query features contain NaN"), "{e}");
}
