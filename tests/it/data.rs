//! The data pipeline of docs/method.md §2: layouts, names, sampler, transforms, loaders, bad input.

use agd::data::dataset::{parse_dreamed_name, parse_market_name, Layout};
use agd::data::loader::INSTANCES;
use agd::data::transforms::{test_into, MEAN, PAD, STD};
use agd::data::{
    Dreamed, Erasing, Exemplars, IdentitySampler, ImageStore, LoaderConfig, PairedLoader, Record,
    ReidDataset, TrainLoader, TrainTransform,
};
use rand::SeedableRng;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes a small solid-colour JPEG (colour from the name, so images differ).
fn write_image(path: &Path, h: u32, w: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let seed = path
        .to_string_lossy()
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed, (x * 8) as u8, (y * 4) as u8])
    });
    img.save(path).unwrap();
}

fn market(root: &Path, name: &str, train: &[&str], query: &[&str], gallery: &[&str]) -> PathBuf {
    let dir = root.join(name);
    for (sub, files) in [
        ("bounding_box_train", train),
        ("query", query),
        ("bounding_box_test", gallery),
    ] {
        for f in files {
            write_image(&dir.join(sub).join(f), 16, 8);
        }
    }
    dir
}

use super::util::err_of;

#[test]
fn market_names_parse_like_the_reference() {
    assert_eq!(
        parse_market_name(Path::new("0002_c1s1_000451_03.jpg")).unwrap(),
        (2, 1)
    );
    assert_eq!(
        parse_market_name(Path::new("-1_c3s2_000001_01.jpg")).unwrap(),
        (-1, 3)
    );
    // MSMT17 converted to Market layout.
    assert_eq!(
        parse_market_name(Path::new("0042_c12_0303morning.jpg")).unwrap(),
        (42, 12)
    );
    let err = err_of(parse_market_name(Path::new("/x/person7.jpg")));
    assert!(
        err.contains("/x/person7.jpg") && err.contains("<pid>_c<camera>"),
        "{err}"
    );
}

#[test]
fn market_layout_skips_junk_relabels_in_order_and_keeps_raw_test_ids() {
    let tmp = tempfile::tempdir().unwrap();
    market(
        tmp.path(),
        "m",
        // Sorted path order: 0003, 0003, 0007, 0010, junk (-1 sorts first).
        &[
            "0010_c1s1_000001_01.jpg",
            "0003_c2s1_000002_01.jpg",
            "-1_c1s1_000003_01.jpg",
            "0007_c1s1_000004_01.jpg",
            "0003_c1s1_000005_01.jpg",
        ],
        &["0100_c1s1_000001_01.jpg"],
        &[
            "0100_c2s1_000001_01.jpg",
            "0000_c1s1_000002_01.jpg",
            "-1_c3s1_000003_01.jpg",
        ],
    );
    let d = ReidDataset::load(tmp.path(), "m").unwrap();
    assert_eq!(d.layout, Layout::Market);
    let train: Vec<(i64, i64)> = d.train.iter().map(|r| (r.pid, r.camera)).collect();
    // 0003 → 0, 0007 → 1, 0010 → 2 (first appearance in sorted order).
    assert_eq!(train, vec![(0, 1), (0, 2), (1, 1), (2, 1)]);
    assert_eq!(d.num_train_ids, 3);
    assert_eq!(
        d.query
            .iter()
            .map(|r| (r.pid, r.camera))
            .collect::<Vec<_>>(),
        vec![(100, 1)]
    );
    // Distractors (0) stay, junk (-1) goes.
    let mut gallery: Vec<i64> = d.gallery.iter().map(|r| r.pid).collect();
    gallery.sort();
    assert_eq!(gallery, vec![0, 100]);
    assert_eq!(d.num_cameras(), 2);
}

#[test]
fn msmt17_list_layout_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("msmt17");
    let files = [
        ("train", "0000/0000_000_01_0303morning_0015_0.jpg"),
        ("train", "0000/0000_001_05_0303morning_0020_1.jpg"),
        ("train", "0001/0001_000_03_0303noon_0100_0.jpg"),
        ("test", "0100/0100_000_02_0303morning_0015_0.jpg"),
        ("test", "0100/0100_001_07_0303morning_0016_0.jpg"),
    ];
    for (split, f) in files {
        write_image(&root.join(split).join(f), 16, 8);
    }
    std::fs::write(
        root.join("list_train.txt"),
        "0000/0000_000_01_0303morning_0015_0.jpg 0\n0000/0000_001_05_0303morning_0020_1.jpg 0\n",
    )
    .unwrap();
    std::fs::write(
        root.join("list_val.txt"),
        "0001/0001_000_03_0303noon_0100_0.jpg 1\n",
    )
    .unwrap();
    std::fs::write(
        root.join("list_query.txt"),
        "0100/0100_000_02_0303morning_0015_0.jpg 100\n",
    )
    .unwrap();
    std::fs::write(
        root.join("list_gallery.txt"),
        "0100/0100_001_07_0303morning_0016_0.jpg 100\n",
    )
    .unwrap();
    let d = ReidDataset::load(tmp.path(), "msmt17").unwrap();
    assert_eq!(d.layout, Layout::Msmt17Lists);
    assert_eq!(
        d.train
            .iter()
            .map(|r| (r.pid, r.camera))
            .collect::<Vec<_>>(),
        vec![(0, 1), (0, 5), (1, 3)]
    );
    assert_eq!(d.num_train_ids, 2);
    assert_eq!((d.query[0].pid, d.query[0].camera), (100, 2));
    assert_eq!((d.gallery[0].pid, d.gallery[0].camera), (100, 7));

    // A malformed line names the list file and line.
    std::fs::write(root.join("list_val.txt"), "just-a-path.jpg\n").unwrap();
    let err = err_of(ReidDataset::load(tmp.path(), "msmt17"));
    assert!(err.contains("list_val.txt:1"), "{err}");
    // A missing list is named.
    std::fs::remove_file(root.join("list_gallery.txt")).unwrap();
    let err = err_of(ReidDataset::load(tmp.path(), "msmt17"));
    assert!(err.contains("list_gallery.txt"), "{err}");
}

#[test]
fn dreamed_names_and_exemplar_limit() {
    assert_eq!(parse_dreamed_name(Path::new("12_98765.jpg")).unwrap(), 12);
    assert_eq!(parse_dreamed_name(Path::new("0_a_b.png")).unwrap(), 0);
    for bad in ["x_1.jpg", "12.jpg", "-3_1.jpg", "_1.jpg"] {
        let err = err_of(parse_dreamed_name(Path::new(bad)));
        assert!(
            err.contains(bad) && err.contains("<pid>_<anything>"),
            "{bad}: {err}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in ["3_c.jpg", "3_a.jpg", "3_b.jpg", "5_z.png"] {
        write_image(&tmp.path().join(name), 8, 8);
    }
    let d = Dreamed::load(tmp.path(), 2).unwrap();
    let names: Vec<String> = d
        .records
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["3_a.jpg", "3_b.jpg", "5_z.png"]); // sorted, at most 2 per pid
    assert!(d.records.iter().all(|r| r.camera == -1));
    assert_eq!(d.num_ids, 2);

    write_image(&tmp.path().join("oops.jpg"), 8, 8);
    let err = err_of(Dreamed::load(tmp.path(), 2));
    assert!(err.contains("oops.jpg"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = err_of(Dreamed::load(empty.path(), 40));
    assert!(
        err.contains("--inversion-dir") && err.contains("no .jpg or .png"),
        "{err}"
    );
}

#[test]
fn bad_input_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = err_of(ReidDataset::load(&tmp.path().join("nowhere"), "m"));
    assert!(
        err.contains("--data-root") && err.contains("nowhere"),
        "{err}"
    );
    let err = err_of(ReidDataset::load(tmp.path(), "absent"));
    assert!(
        err.contains("--dataset absent") && err.contains("bounding_box_train"),
        "{err}"
    );

    // Missing subfolder.
    let dir = market(
        tmp.path(),
        "m",
        &["0001_c1s1_000001_01.jpg"],
        &["0002_c1s1_000001_01.jpg"],
        &[],
    );
    let err = err_of(ReidDataset::load(tmp.path(), "m"));
    assert!(
        err.contains(&dir.join("bounding_box_test").display().to_string())
            && err.contains("not found"),
        "{err}"
    );
    // Empty subfolder.
    std::fs::create_dir_all(dir.join("bounding_box_test")).unwrap();
    let err = err_of(ReidDataset::load(tmp.path(), "m"));
    assert!(
        err.contains("bounding_box_test") && err.contains("no .jpg"),
        "{err}"
    );
    // Malformed file name.
    write_image(&dir.join("bounding_box_test").join("holiday.jpg"), 16, 8);
    let err = err_of(ReidDataset::load(tmp.path(), "m"));
    assert!(err.contains("holiday.jpg"), "{err}");
    // Corrupt image: found when decoding, named.
    std::fs::remove_file(dir.join("bounding_box_test").join("holiday.jpg")).unwrap();
    std::fs::write(
        dir.join("bounding_box_test")
            .join("0002_c2s1_000001_01.jpg"),
        b"not a jpeg",
    )
    .unwrap();
    let d = ReidDataset::load(tmp.path(), "m").unwrap();
    let err = err_of(ImageStore::load(&d.gallery, 16, 8, "gallery"));
    assert!(err.contains("0002_c2s1_000001_01.jpg"), "{err}");
}

/// Records of `ids` identities with the given image counts, cameras cycling 1..=3.
fn records(counts: &[usize]) -> Vec<Record> {
    let mut out = Vec::new();
    for (pid, &n) in counts.iter().enumerate() {
        for i in 0..n {
            out.push(Record {
                path: PathBuf::from(format!("{pid}_{i}.jpg")),
                pid: pid as i64,
                camera: (i % 3) as i64 + 1,
            });
        }
    }
    out
}

#[test]
fn sampler_batches_are_p_by_k_reproducible_and_use_each_chunk_once() {
    let counts = [4, 9, 2, 13, 8, 5, 4, 4, 7, 1, 6, 12];
    let recs = records(&counts);
    let s = IdentitySampler::new(&recs, 16, 4, 7, 0).unwrap();
    let epoch = s.epoch(3);
    assert!(!epoch.is_empty());
    let mut uses: HashMap<i64, usize> = HashMap::new();
    for batch in &epoch {
        assert_eq!(batch.len(), 16);
        let mut per_pid: HashMap<i64, usize> = HashMap::new();
        for &i in batch {
            *per_pid.entry(recs[i].pid).or_default() += 1;
        }
        assert_eq!(per_pid.len(), 4, "P distinct ids");
        assert!(per_pid.values().all(|&k| k == 4), "K samples each");
        for (pid, k) in per_pid {
            *uses.entry(pid).or_default() += k / 4;
        }
    }
    // No pid is used more often than it has chunks (⌊n/K⌋, or 1 when n < K).
    for (pid, n) in counts.iter().enumerate() {
        let chunks = if *n < 4 { 1 } else { n / 4 };
        assert!(
            uses.get(&(pid as i64)).copied().unwrap_or(0) <= chunks,
            "pid {pid}"
        );
    }
    // A pid with ≥ K images is never repeated inside one of its chunks' samples.
    assert_eq!(s.epoch(3), epoch, "same seed and epoch → same batches");
    assert_ne!(s.epoch(4), epoch, "another epoch → other batches");
    let other = IdentitySampler::new(&recs, 16, 4, 8, 0).unwrap();
    assert_ne!(other.epoch(3), epoch, "another seed → other batches");

    let err = err_of(IdentitySampler::new(&recs, 18, 4, 0, 0));
    assert!(err.contains("--batch-size 18"), "{err}");
    let err = format!(
        "{:#}",
        IdentitySampler::new(&records(&[4, 4]), 16, 4, 0, 0).unwrap_err()
    );
    assert!(err.contains("only 2"), "{err}");
}

#[test]
fn test_transform_normalises_with_imagenet_statistics() {
    let pixels = [0u8, 128, 255, 10, 20, 30];
    let mut out = [0f32; 6];
    test_into(&pixels, 1, 2, &mut out);
    let expect = |v: u8, c: usize| (v as f32 / 255.0 - MEAN[c]) / STD[c];
    assert!((out[0] - expect(0, 0)).abs() < 1e-6);
    assert!((out[1] - expect(10, 0)).abs() < 1e-6);
    assert!((out[2] - expect(128, 1)).abs() < 1e-6);
    assert!((out[5] - expect(30, 2)).abs() < 1e-6);
}

#[test]
fn train_transform_crops_pads_and_erases_within_bounds() {
    let (h, w) = (32usize, 16usize);
    // Every pixel 255: anything not 255-normalised is padding or erasing.
    let pixels = vec![255u8; h * w * 3];
    let white: Vec<f32> = (0..3).map(|c| (1.0 - MEAN[c]) / STD[c]).collect();
    let black: Vec<f32> = (0..3).map(|c| -MEAN[c] / STD[c]).collect();
    let plane = h * w;
    let mut erased_images = 0;
    for seed in 0..200u64 {
        let t = TrainTransform {
            erasing: Erasing {
                probability: 0.5,
                max_area: 0.4,
            },
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0f32; 3 * plane];
        t.apply_into(&mut rng, &pixels, h, w, &mut out);
        let mut erased = 0;
        for y in 0..h {
            for x in 0..w {
                let v = out[y * w + x];
                let expected: &[f32] = if (v - MEAN[0]).abs() < 1e-6 {
                    erased += 1;
                    &MEAN
                } else if (v - black[0]).abs() < 1e-6 {
                    &black
                } else {
                    &white
                };
                for c in 0..3 {
                    let got = out[c * plane + y * w + x];
                    assert!(
                        (got - expected[c]).abs() < 1e-5,
                        "pixel ({y},{x}) channel {c}: {got}"
                    );
                }
            }
        }
        if erased > 0 {
            erased_images += 1;
            assert!(
                erased as f64 <= 0.4 * plane as f64 + 2.0 * (h + w) as f64,
                "erased area {erased}"
            );
        }
    }
    // Without erasing: the crop shifts by at most PAD pixels, so at most PAD padded rows
    // and columns, and the rest is the image.
    let t = TrainTransform {
        erasing: Erasing {
            probability: 0.0,
            max_area: 0.4,
        },
    };
    for seed in 0..50u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0f32; 3 * plane];
        t.apply_into(&mut rng, &pixels, h, w, &mut out);
        let is_black = |y: usize, x: usize| (out[y * w + x] - black[0]).abs() < 1e-6;
        let black_rows = (0..h).filter(|&y| (0..w).all(|x| is_black(y, x))).count();
        let black_cols = (0..w).filter(|&x| (0..h).all(|y| is_black(y, x))).count();
        let white_px = (0..h * w)
            .filter(|&i| (out[i] - white[0]).abs() < 1e-6)
            .count();
        assert!(black_rows <= PAD && black_cols <= PAD);
        assert_eq!(white_px, (h - black_rows) * (w - black_cols));
    }
    // About half the images are erased (p = 0.5, erasing nearly always fits).
    assert!(
        (60..=140).contains(&erased_images),
        "{erased_images} of 200 erased"
    );

    // Erasing rectangles always fit and respect the area bounds.
    let e = Erasing {
        probability: 1.0,
        max_area: 0.4,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..1000 {
        let (t, l, rh, rw) = e.rectangle(&mut rng, 256, 128).expect("p = 1 erases");
        assert!(t + rh <= 256 && l + rw <= 128 && rh < 256 && rw < 128);
        let area = (rh * rw) as f64 / (256.0 * 128.0);
        assert!(area > 0.015 && area < 0.43, "area {area}");
    }
    let never = Erasing {
        probability: 0.0,
        max_area: 0.4,
    };
    assert!(never.rectangle(&mut rng, 256, 128).is_none());
}

fn loader_fixture(counts: &[usize], peers: usize, seed: u64, stream: u64) -> TrainLoader {
    let recs = records(counts);
    let (h, w) = (8usize, 4usize);
    let pixels: Vec<u8> = (0..recs.len() * h * w * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let store = Arc::new(ImageStore::from_pixels(pixels, h, w));
    let cfg = LoaderConfig {
        batch_size: 8,
        instances: INSTANCES,
        transform: TrainTransform {
            erasing: Erasing {
                probability: 0.5,
                max_area: 0.4,
            },
        },
        peers,
        seed,
        prefetch: 2,
        pin: None,
        share: None,
    };
    TrainLoader::new(Arc::new(recs), store, cfg, stream).unwrap()
}

fn tensors_equal(a: &tch::Tensor, b: &tch::Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

#[test]
fn loader_batches_are_reproducible_views_share_samples_and_cameras_are_ordered() {
    let counts = [8, 8, 8, 8, 4, 4];
    let a: Vec<_> = loader_fixture(&counts, 2, 5, 0)
        .epoch(1)
        .map(Result::unwrap)
        .collect();
    let b: Vec<_> = loader_fixture(&counts, 2, 5, 0)
        .epoch(1)
        .map(Result::unwrap)
        .collect();
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.indices, y.indices);
        assert!(tensors_equal(&x.views[0], &y.views[0]) && tensors_equal(&x.views[1], &y.views[1]));
        assert_eq!(x.views.len(), 2);
        assert_eq!(x.views[0].size(), vec![8, 3, 8, 4]);
        assert!(
            !tensors_equal(&x.views[0], &x.views[1]),
            "views are augmented independently"
        );
        let cams: Vec<i64> = Vec::try_from(&x.cameras).unwrap();
        assert!(
            cams.windows(2).all(|p| p[0] <= p[1]),
            "stable camera order {cams:?}"
        );
        let pids: Vec<i64> = Vec::try_from(&x.pids).unwrap();
        let distinct: HashSet<_> = pids.iter().collect();
        assert_eq!(distinct.len(), 2);
    }
    let c: Vec<_> = loader_fixture(&counts, 2, 6, 0)
        .epoch(1)
        .map(Result::unwrap)
        .collect();
    assert!(a
        .iter()
        .zip(&c)
        .any(|(x, y)| !tensors_equal(&x.views[0], &y.views[0])));
}

/// The dreamed batches an uninterrupted run pairs with `epochs` epochs, as the reference
/// draws them: at the start of every epoch a fresh iterator over the dreamed loader (a new
/// pass), replaced by the next pass whenever it runs out. Pass numbers count up from 0 over
/// the whole run. Returns per epoch the (pass, batch in pass, indices) of every pair.
fn reference_pairing(paired: &PairedLoader, epochs: u64) -> Vec<Vec<(u64, u64, Vec<usize>)>> {
    let mut next_pass = 0u64;
    let mut out = Vec::new();
    for epoch in 0..epochs {
        let mut pass = next_pass;
        next_pass += 1;
        let mut iter = paired.dreamed.plan(pass).into_iter().enumerate();
        let mut pairs = Vec::new();
        for _ in 0..paired.new.batches_in_epoch(epoch) {
            let (b, idx) = match iter.next() {
                Some(x) => x,
                None => {
                    pass = next_pass;
                    next_pass += 1;
                    iter = paired.dreamed.plan(pass).into_iter().enumerate();
                    iter.next().expect("a pass holds at least one batch")
                }
            };
            pairs.push((pass, b as u64, idx));
        }
        out.push(pairs);
    }
    out
}

#[test]
fn every_epoch_pairs_new_batches_with_a_fresh_dreamed_pass() {
    // MSMT17's dreams against Market in small: a dreamed pass (6 ids × 8 → 6 batches) is
    // longer than an epoch of new data (2 ids × 8 → 2 batches).
    let paired = PairedLoader {
        new: loader_fixture(&[8, 8], 1, 3, 0),
        dreamed: loader_fixture(&[8; 6], 1, 3, 1),
    };
    assert_eq!(paired.new.batches_in_epoch(0), 2);
    assert_eq!(paired.dreamed.batches_in_epoch(0), 6);
    let mut firsts = Vec::new();
    for epoch in 0..3u64 {
        // Each epoch begins its own pass: pass e, not where epoch e − 1 stopped.
        assert_eq!(paired.first_dreamed_pass(epoch), epoch);
        let pairs: Vec<_> = paired.epoch(epoch).map(Result::unwrap).collect();
        assert_eq!(pairs.len(), 2);
        let pass = paired.dreamed.plan(epoch);
        for (b, (_, d)) in pairs.iter().enumerate() {
            assert_eq!(d.indices, pass[b], "epoch {epoch} batch {b}");
        }
        let first = paired.dreamed.build(epoch, 0, pass[0].clone()).unwrap();
        assert!(tensors_equal(&pairs[0].1.views[0], &first.views[0]));
        firsts.push(pairs[0].1.indices.clone());
    }
    // Passes are distinct shuffles, and epoch 1 does not continue epoch 0's pass.
    assert_ne!(paired.dreamed.plan(0), paired.dreamed.plan(1));
    assert_ne!(firsts[0], firsts[1]);
    assert_ne!(firsts[1], paired.dreamed.plan(0)[2]);
}

#[test]
fn dreamed_passes_restart_within_an_epoch_and_a_resumed_run_sees_the_same_batches() {
    // A dreamed pass (ids with 8, 8, 4, 4 images: 2 or 3 batches, depending on the shuffle)
    // is shorter than an epoch of new data (6 ids × 8 → 6 batches): it restarts mid-epoch.
    let make = || PairedLoader {
        new: loader_fixture(&[8; 6], 1, 5, 0),
        dreamed: loader_fixture(&[8, 8, 4, 4], 1, 5, 1),
    };
    let paired = make();
    let epochs = 4;
    let want = reference_pairing(&paired, epochs);
    let lengths: HashSet<usize> = (0..12)
        .map(|p| paired.dreamed.batches_in_epoch(p))
        .collect();
    assert!(lengths.iter().all(|&n| n < 6), "{lengths:?}");
    for (epoch, pairs) in want.iter().enumerate() {
        let epoch = epoch as u64;
        // A fresh loader is what a run resumed at this epoch builds: nothing carried over.
        let resumed = make();
        assert_eq!(resumed.first_dreamed_pass(epoch), pairs[0].0);
        assert_eq!(
            pairs[0].1, 0,
            "epoch {epoch} starts at a pass's first batch"
        );
        let got: Vec<_> = resumed.epoch(epoch).map(Result::unwrap).collect();
        assert_eq!(got.len(), pairs.len());
        for ((_, d), (pass, b, idx)) in got.iter().zip(pairs) {
            assert_eq!(&d.indices, idx, "epoch {epoch}, pass {pass} batch {b}");
            let built = paired.dreamed.build(*pass, *b, idx.clone()).unwrap();
            assert!(tensors_equal(&d.views[0], &built.views[0]));
            assert_eq!(d.indices.len(), 8);
        }
    }
    // Every epoch began at least two passes (it ran out mid-epoch at least once).
    let passes: Vec<u64> = (0..=epochs).map(|e| paired.first_dreamed_pass(e)).collect();
    assert!(passes.windows(2).all(|w| w[1] >= w[0] + 2), "{passes:?}");
}

#[test]
fn exemplars_take_n_real_images_per_old_identity_with_the_old_labels() {
    let tmp = tempfile::tempdir().unwrap();
    // Raw pids 3 (2 images), 7 (4), 10 (5) and junk: relabelled 0, 1, 2 in sorted order.
    let mut train = vec!["-1_c1s1_000001_00.jpg".to_string()];
    for (pid, n) in [(10, 5), (3, 2), (7, 4)] {
        for i in 0..n {
            train.push(format!("{pid:04}_c{}s1_{i:06}_00.jpg", i % 2 + 1));
        }
    }
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    market(
        tmp.path(),
        "old",
        &train,
        &["0001_c1s1_000001_00.jpg"],
        &["0001_c2s1_000001_00.jpg"],
    );
    let dataset = ReidDataset::load(tmp.path(), "old").unwrap();
    let label_of: HashMap<PathBuf, i64> = dataset
        .train
        .iter()
        .map(|r| (r.path.clone(), r.pid))
        .collect();

    let chosen = Exemplars::load(tmp.path(), "old", 3, 1).unwrap();
    assert_eq!(chosen.num_ids, 3);
    let mut per_id: HashMap<i64, usize> = HashMap::new();
    for r in &chosen.records {
        // The labels `agd train --dataset old` used, the camera of the file name.
        assert_eq!(Some(&r.pid), label_of.get(&r.path), "{}", r.path.display());
        assert!(r.camera >= 1);
        *per_id.entry(r.pid).or_default() += 1;
    }
    // pid 3 (label 0) has only 2 images: both; the others give 3 of theirs.
    assert_eq!(per_id, HashMap::from([(0, 2), (1, 3), (2, 3)]));
    let dir = tmp.path().join("old/bounding_box_train");
    assert!(chosen.records.iter().all(|r| r.path.starts_with(&dir)));

    // The same seed chooses the same images; another seed other ones.
    let paths = |e: &Exemplars| e.records.iter().map(|r| r.path.clone()).collect::<Vec<_>>();
    let again = Exemplars::load(tmp.path(), "old", 3, 1).unwrap();
    assert_eq!(paths(&again), paths(&chosen));
    assert_eq!(again.records, chosen.records);
    let other = (2..12)
        .map(|seed| Exemplars::load(tmp.path(), "old", 3, seed).unwrap())
        .find(|e| paths(e) != paths(&chosen));
    assert!(other.is_some(), "ten seeds all chose the same images");
    // Enough per identity: everything, in the dataset's order.
    let all = Exemplars::load(tmp.path(), "old", 40, 1).unwrap();
    assert_eq!(all.records, dataset.train);

    let err = err_of(Exemplars::load(tmp.path(), "old", 0, 1));
    assert!(err.starts_with("--exemplars 0:"), "{err}");
    let err = err_of(Exemplars::load(tmp.path(), "missing", 3, 1));
    assert!(err.starts_with("--exemplar-dataset missing:"), "{err}");
}

/// Writes a noisy `h`×`w` image (JPEG or PNG by the extension): noise leaves most of the
/// file to the pixel data, so cutting it in half cuts the pixels, not the headers.
fn write_noisy(path: &Path, h: u32, w: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(path.as_os_str().len() as u64);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([
            rand::Rng::gen(&mut rng),
            rand::Rng::gen(&mut rng),
            rand::Rng::gen(&mut rng),
        ])
    });
    img.save(path).unwrap();
}

/// Keeps the first half of the file: an interrupted copy or download.
fn cut_in_half(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn truncated_images_are_one_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = market(
        tmp.path(),
        "m",
        &["0001_c1s1_000001_01.jpg", "0001_c2s1_000002_01.jpg"],
        &["0001_c1s1_000003_01.jpg"],
        &["0001_c2s1_000004_01.jpg"],
    );
    let train = dir
        .join("bounding_box_train")
        .join("0001_c2s1_000002_01.jpg");
    let query = dir.join("query").join("0001_c1s1_000003_01.jpg");
    let gallery = dir
        .join("bounding_box_test")
        .join("0003_c1s1_000005_01.png");
    for p in [&train, &query, &gallery] {
        write_noisy(p, 128, 64);
    }
    let dreamed = tmp.path().join("dreamed");
    for i in 0..3 {
        write_noisy(&dreamed.join(format!("{i}_b00001_{i:03}.jpg")), 128, 64);
    }
    let dreamed_cut = dreamed.join("1_b00001_001.jpg");

    // Whole, every image loads; a JPEG with bytes after its end marker is whole too.
    let d = ReidDataset::load(tmp.path(), "m").unwrap();
    for set in [&d.train, &d.query, &d.gallery] {
        ImageStore::load(set, 64, 32, "whole").unwrap();
    }
    let mut padded = std::fs::read(&query).unwrap();
    padded.extend_from_slice(b"\0\0trailing bytes");
    std::fs::write(&query, &padded).unwrap();
    ImageStore::load(&d.query, 64, 32, "query").unwrap();
    let dream = Dreamed::load(&dreamed, 10).unwrap();
    ImageStore::load(&dream.records, 64, 32, "dreamed").unwrap();

    // Cut in half, each is an error naming it: training, query and gallery sets, and a
    // dreamed folder (`--inversion-dir`).
    for p in [&train, &query, &gallery, &dreamed_cut] {
        cut_in_half(p);
    }
    let d = ReidDataset::load(tmp.path(), "m").unwrap();
    let dream = Dreamed::load(&dreamed, 10).unwrap();
    for (records, path) in [
        (&d.train, &train),
        (&d.query, &query),
        (&d.gallery, &gallery),
        (&dream.records, &dreamed_cut),
    ] {
        let err = err_of(ImageStore::load(records, 64, 32, "cut"));
        assert!(err.contains(&path.display().to_string()), "{err}");
        if path.extension().unwrap() == "jpg" {
            assert!(err.contains("truncated"), "{err}");
        }
        // The contact sheet of a dreamed folder reads the same way.
        if path == &dreamed_cut {
            let err = err_of(agd::inversion::store::contact_sheet(&dreamed, 4, 4, 32, 16));
            assert!(err.contains("1_b00001_001.jpg"), "{err}");
        }
    }
}
