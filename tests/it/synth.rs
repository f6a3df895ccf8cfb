//! `agd synth`'s engine: dataset layout and names, determinism, the two styles, learnability
//! and argument checks.

use agd::data::synth::{generate, plan, render, Split, Style, SynthConfig};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

fn config(style: Style, seed: u64) -> SynthConfig {
    SynthConfig {
        ids: 12,
        test_ids: 10,
        images_per_id: 6,
        cameras: 5,
        height: 128,
        width: 64,
        seed,
        style,
        distractors: 7,
        junk: 5,
    }
}

const FOLDERS: [&str; 3] = ["bounding_box_train", "query", "bounding_box_test"];

/// (pid, camera) as the dataset loader reads them: the first match of `([-\d]+)_c([-\d]+)`.
fn pid_cam(name: &str) -> (i64, usize) {
    let re = Regex::new(r"([-\d]+)_c([-\d]+)").unwrap();
    let caps = re
        .captures(name)
        .unwrap_or_else(|| panic!("{name} has no pid/camera"));
    (caps[1].parse().unwrap(), caps[2].parse().unwrap())
}

/// Every file under the three folders: "folder/name" → bytes.
fn read_all(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for folder in FOLDERS {
        for entry in std::fs::read_dir(dir.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(format!("{folder}/{name}"), std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn layout_names_and_splits_follow_market1501() {
    let cfg = config(Style::Street, 7);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("synth");
    let summary = generate(&root, &cfg).unwrap();

    let strict = Regex::new(r"^(-1|\d{4})_c(\d{1,2})s[1-6]_\d{6}_\d{2}\.jpg$").unwrap();
    let mut names = BTreeSet::new();
    // folder → (pid → cameras of its images, in file order)
    let mut seen: HashMap<&str, BTreeMap<i64, Vec<usize>>> = HashMap::new();
    for folder in FOLDERS {
        let dir = root.join(folder);
        assert!(dir.is_dir(), "{folder} missing");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(strict.is_match(&name), "bad name {folder}/{name}");
            assert!(names.insert(name.clone()), "duplicate name {name}");
            let (pid, cam) = pid_cam(&name);
            assert!(
                (1..=cfg.cameras).contains(&cam),
                "{name}: camera out of range"
            );
            assert_eq!(
                image::image_dimensions(&path).unwrap(),
                (cfg.width, cfg.height),
                "{name}"
            );
            seen.entry(folder)
                .or_default()
                .entry(pid)
                .or_default()
                .push(cam);
        }
    }
    let train = &seen["bounding_box_train"];
    let query = &seen["query"];
    let gallery = &seen["bounding_box_test"];

    // Training: pids 1..=ids, all images, each identity seen by two cameras or more.
    assert_eq!(
        train.keys().copied().collect::<Vec<_>>(),
        (1..=12).collect::<Vec<i64>>()
    );
    for (pid, cams) in train {
        assert_eq!(cams.len(), cfg.images_per_id, "train pid {pid}");
        assert!(
            cams.iter().collect::<BTreeSet<_>>().len() >= 2,
            "train pid {pid}: one camera"
        );
    }
    // Test identities: disjoint from training ones; one query per camera the identity
    // appears in; the rest in the gallery, matchable from every query in another camera.
    let test_pids: Vec<i64> = (13..=22).collect();
    assert_eq!(query.keys().copied().collect::<Vec<_>>(), test_pids);
    for pid in &test_pids {
        let q = &query[pid];
        let g = &gallery[pid];
        assert_eq!(q.len() + g.len(), cfg.images_per_id, "test pid {pid}");
        let q_cams: BTreeSet<_> = q.iter().copied().collect();
        let all_cams: BTreeSet<_> = q.iter().chain(g).copied().collect();
        assert!(all_cams.len() >= 2, "test pid {pid} seen by one camera");
        assert_eq!(
            q_cams.len(),
            q.len(),
            "test pid {pid}: two queries from one camera"
        );
        assert_eq!(q_cams, all_cams, "test pid {pid}: not one query per camera");
        for c in q {
            assert!(
                g.iter().any(|gc| gc != c),
                "pid {pid} query in c{c} has no cross-camera match"
            );
        }
    }
    let gallery_pids: BTreeSet<i64> = gallery.keys().copied().collect();
    let expected: BTreeSet<i64> = [-1, 0]
        .into_iter()
        .chain(test_pids.iter().copied())
        .collect();
    assert_eq!(gallery_pids, expected);
    assert_eq!(gallery[&0].len(), cfg.distractors);
    assert_eq!(gallery[&-1].len(), cfg.junk);

    let count = |m: &BTreeMap<i64, Vec<usize>>| m.values().map(Vec::len).sum::<usize>();
    assert_eq!(summary.train_images, count(train));
    assert_eq!(summary.query_images, count(query));
    assert_eq!(summary.gallery_images, count(gallery));
    assert_eq!(
        (
            summary.train_ids,
            summary.test_ids,
            summary.distractors,
            summary.junk,
            summary.cameras
        ),
        (12, 10, 7, 5, 5)
    );
}

#[test]
fn two_images_per_identity_still_give_every_query_a_cross_camera_match() {
    for images_per_id in [2, 3] {
        let cfg = SynthConfig {
            images_per_id,
            ..config(Style::Mall, 3)
        };
        let images = plan(&cfg);
        for pid in 13..=22 {
            let of = |split| {
                images
                    .iter()
                    .filter(|i| i.pid == pid && i.split == split)
                    .map(|i| i.camera)
                    .collect::<Vec<_>>()
            };
            let (q, g) = (of(Split::Query), of(Split::Gallery));
            assert_eq!(q.len(), 1, "pid {pid}");
            assert!(
                g.iter().any(|&c| c != q[0]),
                "pid {pid}: no cross-camera match"
            );
        }
    }
}

#[test]
fn same_config_gives_identical_bytes_and_another_seed_does_not() {
    let small = |seed| SynthConfig {
        ids: 4,
        test_ids: 3,
        images_per_id: 4,
        distractors: 2,
        junk: 2,
        ..config(Style::Street, seed)
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    generate(&a, &small(11)).unwrap();
    generate(&b, &small(11)).unwrap();
    generate(&c, &small(12)).unwrap();
    let (fa, fb, fc) = (read_all(&a), read_all(&b), read_all(&c));
    assert_eq!(fa.len(), 4 * 4 + 3 * 4 + 2 + 2);
    assert!(fa == fb, "same config, different files");
    let same_bytes = fa
        .values()
        .filter(|bytes| fc.values().any(|other| other == *bytes))
        .count();
    assert_eq!(same_bytes, 0, "another seed reproduced some images");
    assert_eq!(render(&small(11), 3, 2, 1), render(&small(11), 3, 2, 1));
}

/// Mean RGB over the whole image and over its top eighth (mostly background), in 0..255.
fn colour_stats(cfg: &SynthConfig) -> ([f64; 3], [f64; 3]) {
    let (mut all, mut top) = ([0.0; 3], [0.0; 3]);
    let (mut n_all, mut n_top) = (0.0, 0.0);
    for pid in 1..=24 {
        for cam in 1..=cfg.cameras {
            let img = render(cfg, pid, cam, pid as usize);
            for (_, y, p) in img.enumerate_pixels() {
                for c in 0..3 {
                    all[c] += p[c] as f64;
                    if y < cfg.height / 8 {
                        top[c] += p[c] as f64;
                    }
                }
                n_all += 1.0;
                if y < cfg.height / 8 {
                    n_top += 1.0;
                }
            }
        }
    }
    (all.map(|v| v / n_all), top.map(|v| v / n_top))
}

#[test]
fn street_and_mall_look_measurably_different() {
    let (street, street_top) = colour_stats(&config(Style::Street, 5));
    let (mall, mall_top) = colour_stats(&config(Style::Mall, 5));
    // Daylight is warm (red above blue), the mall's artificial light cool (blue above red).
    let warmth = |m: [f64; 3]| m[0] - m[2];
    assert!(warmth(street) > 20.0, "street not warm: {street:?}");
    assert!(warmth(mall) < -5.0, "mall not cool: {mall:?}");
    // Backgrounds differ clearly: mean colour of the top rows more than 30 levels apart (L1).
    let bg: f64 = street_top
        .iter()
        .zip(mall_top)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        bg > 30.0,
        "backgrounds too alike: {street_top:?} vs {mall_top:?}"
    );
}

/// A crude appearance descriptor: a coarse, L1-normalised joint RGB histogram (4×4×4 bins)
/// of the central columns, where the person stands, split into upper and lower halves.
fn descriptor(img: &image::RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut d = vec![0.0f32; 2 * 64];
    for y in h / 8..h {
        for x in w / 4..3 * w / 4 {
            let p = img.get_pixel(x, y);
            let bin = (p[0] as usize / 64) * 16 + (p[1] as usize / 64) * 4 + p[2] as usize / 64;
            let half = if y < h / 2 { 0 } else { 64 };
            d[half + bin] += 1.0;
        }
    }
    let total: f32 = d.iter().sum();
    d.iter_mut().for_each(|v| *v /= total);
    d
}

/// Rank-1 of histogram nearest-neighbour retrieval from query to gallery, with Market-1501's
/// rule (gallery images of the query's identity from the query's camera are ignored), and
/// the rank-1 a random ranking would get.
fn histogram_rank1(cfg: &SynthConfig) -> (f64, f64) {
    let images = plan(cfg);
    let feats: Vec<_> = images
        .iter()
        .map(|i| {
            (
                i.split,
                i.pid,
                i.camera,
                descriptor(&render(cfg, i.pid, i.camera, i.index)),
            )
        })
        .collect();
    let gallery: Vec<_> = feats.iter().filter(|f| f.0 == Split::Gallery).collect();
    let (mut hits, mut chance, mut queries) = (0.0, 0.0, 0.0);
    for (_, pid, cam, q) in feats.iter().filter(|f| f.0 == Split::Query) {
        let valid: Vec<_> = gallery
            .iter()
            .filter(|g| !(g.1 == *pid && g.2 == *cam))
            .collect();
        let best = valid
            .iter()
            .min_by(|a, b| {
                let d = |g: &&&(Split, i64, usize, Vec<f32>)| -> f32 {
                    g.3.iter().zip(q).map(|(x, y)| (x - y).abs()).sum()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        hits += (best.1 == *pid) as u8 as f64;
        chance += valid.iter().filter(|g| g.1 == *pid).count() as f64 / valid.len() as f64;
        queries += 1.0;
    }
    (hits / queries, chance / queries)
}

/// An identity's images must resemble each other across cameras far more than other
/// identities, yet not trivially. Even a colour histogram, which knows nothing of shape,
/// pattern layout or camera tint, must retrieve the right person at least 8× as often as
/// a random ranking (chance is about 1.5% here, so ≥ ~12%). Over seeds 1–5 and 21 it
/// measures 18–45× chance (rank-1 27–46% on Mall, 32–63% on Street), so 8× leaves a wide
/// margin against flakiness while still failing if identities drown in camera and pose
/// variation; 3× would pass even for a badly broken renderer. Rank-1 must also stay below
/// 90%: if colour alone nearly solved it, a network would have nothing to learn.
#[test]
fn a_colour_histogram_already_reidentifies_well_above_chance() {
    for style in [Style::Street, Style::Mall] {
        let cfg = SynthConfig {
            ids: 1,
            test_ids: 40,
            images_per_id: 6,
            cameras: 6,
            distractors: 0,
            junk: 0,
            ..config(style, 21)
        };
        let (rank1, chance) = histogram_rank1(&cfg);
        eprintln!("{style:?}: histogram rank-1 {rank1:.3}, chance {chance:.3}");
        assert!(
            rank1 < 0.9,
            "{style:?}: colour alone solves it ({rank1:.3})"
        );
        assert!(
            rank1 >= 8.0 * chance,
            "{style:?}: rank-1 {rank1:.3} vs chance {chance:.3}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    let ok = config(Style::Street, 1);
    ok.validate().unwrap();
    let cases: [(SynthConfig, &str); 9] = [
        (
            SynthConfig {
                ids: 0,
                ..ok.clone()
            },
            "--ids",
        ),
        (
            SynthConfig {
                test_ids: 0,
                ..ok.clone()
            },
            "--test-ids",
        ),
        (
            SynthConfig {
                images_per_id: 1,
                ..ok.clone()
            },
            "--images-per-id",
        ),
        (
            SynthConfig {
                cameras: 1,
                ..ok.clone()
            },
            "--cameras",
        ),
        (
            SynthConfig {
                cameras: 16,
                ..ok.clone()
            },
            "--cameras",
        ),
        (
            SynthConfig {
                height: 31,
                ..ok.clone()
            },
            "--height",
        ),
        (
            SynthConfig {
                width: 15,
                ..ok.clone()
            },
            "--width",
        ),
        (
            SynthConfig {
                height: 100_000,
                ..ok.clone()
            },
            "--height",
        ),
        (
            SynthConfig {
                width: 100_000,
                ..ok.clone()
            },
            "--width",
        ),
    ];
    for (cfg, flag) in cases {
        // As the CLI reports it: the library's setting named by its flag.
        let err = agd::cli::message(&cfg.validate().unwrap_err());
        assert!(err.contains(flag), "{flag}: {err}");
        let tmp = tempfile::tempdir().unwrap();
        let err = agd::cli::message(&generate(&tmp.path().join("d"), &cfg).unwrap_err());
        assert!(err.contains(flag), "generate, {flag}: {err}");
    }
}

#[test]
fn a_non_empty_target_folder_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("query")).unwrap();
    std::fs::write(root.join("query/0001_c1s1_000001_01.jpg"), b"old").unwrap();
    let cfg = SynthConfig {
        ids: 2,
        test_ids: 2,
        images_per_id: 2,
        distractors: 0,
        junk: 0,
        ..config(Style::Mall, 1)
    };
    let err = agd::cli::message(&generate(root, &cfg).unwrap_err());
    assert!(
        err.contains(&root.join("query").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("remove it or choose another --dataset"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("query/0001_c1s1_000001_01.jpg")).unwrap(),
        b"old"
    );
    assert_eq!(
        std::fs::read_dir(root.join("query")).unwrap().count(),
        1,
        "files were mixed in"
    );

    // A second run into a finished dataset is refused too, and an empty one is fine.
    let fresh = root.join("fresh");
    std::fs::create_dir_all(fresh.join("bounding_box_train")).unwrap();
    generate(&fresh, &cfg).unwrap();
    let err = format!("{:#}", generate(&fresh, &cfg).unwrap_err());
    assert!(err.contains("bounding_box_train"), "{err}");
}
