//! Pictures: training curves from `metrics.csv`, `agd plot`, and the results chart. The
//! checks read the pixels back: right size, the series' colours where the series are,
//! and text (which needs the embedded font).

use agd::plot::{results_chart, training_curves, ResultRow};
use image::{Rgb, RgbImage};
use std::ops::Range;
use std::path::Path;

const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
/// "not evaluated" (slate grey: no anti-aliasing of black text makes it).
const SLATE: Rgb<u8> = Rgb([112, 128, 144]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

const EVALUATED: &str = "\
epoch,lr,ce,triplet,market_mAP,market_rank1,duke_mAP,duke_rank1
1,3.5e-05,6.2,1.1,,,,
2,0.00035,4.8,0.8,0.31,0.52,0.12,0.25
3,0.00035,3.9,0.6,0.44,0.63,0.18,0.33
";

fn load(path: &Path) -> RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// Pixels within a small distance of `color` in columns `xs` (a panel).
fn count(img: &RgbImage, color: Rgb<u8>, xs: Range<u32>) -> usize {
    count_in(img, color, xs, 0..img.height())
}

fn count_in(img: &RgbImage, color: Rgb<u8>, xs: Range<u32>, ys: Range<u32>) -> usize {
    img.enumerate_pixels()
        .filter(|(x, y, p)| {
            xs.contains(x)
                && ys.contains(y)
                && p.0.iter().zip(color.0).all(|(&a, b)| a.abs_diff(b) <= 12)
        })
        .count()
}

/// Dark pixels in the caption band at the top (nothing but the title is drawn there).
fn title_pixels(img: &RgbImage, xs: Range<u32>) -> usize {
    count_in(img, BLACK, xs, 0..34)
}

fn curves(csv: &str) -> (tempfile::TempDir, RgbImage) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics.csv"), csv).unwrap();
    let png = dir.path().join("curves.png");
    training_curves(&dir.path().join("metrics.csv"), &png).unwrap();
    let img = load(&png);
    (dir, img)
}

#[test]
fn curves_draw_losses_lr_and_test_sets() {
    let (dir, img) = curves(EVALUATED);
    assert_eq!(img.dimensions(), (1200, 400));
    // Panels: losses (ce blue, triplet orange), lr (blue), test sets (market blue, duke
    // orange), each with its title.
    assert!(count(&img, BLUE, 0..400) > 100);
    assert!(count(&img, ORANGE, 0..400) > 100);
    assert!(count(&img, BLUE, 400..800) > 100);
    assert!(count(&img, ORANGE, 400..800) == 0);
    assert!(count(&img, BLUE, 800..1200) > 100);
    assert!(count(&img, ORANGE, 800..1200) > 100);
    for panel in [0..400, 400..800, 800..1200] {
        assert!(
            title_pixels(&img, panel.clone()) > 50,
            "no title in {panel:?}"
        );
    }
    // The evaluated panel does not claim otherwise.
    assert_eq!(count(&img, SLATE, 800..1200), 0);
    // Written by rename: nothing but the input and the picture in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn map_and_rank1_are_both_drawn() {
    let blue = |rows: &str| {
        let (_dir, img) = curves(&format!("epoch,lr,ce,s_mAP,s_rank1\n{rows}"));
        count(&img, BLUE, 800..1200)
    };
    let both = blue("1,0.1,1.0,0.2,0.4\n2,0.1,0.9,0.3,0.6\n");
    let map_only = blue("1,0.1,1.0,0.2,\n2,0.1,0.9,0.3,\n");
    let rank1_only = blue("1,0.1,1.0,,0.4\n2,0.1,0.9,,0.6\n");
    assert!(
        map_only > 100 && rank1_only > 100,
        "{map_only} {rank1_only}"
    );
    assert!(
        both > map_only + 100 && both > rank1_only + 100,
        "{both} {map_only} {rank1_only}"
    );
}

#[test]
fn curves_without_evaluation_say_so() {
    let csv = "epoch,lr,ce,triplet,distill\n1,0.00035,5.2,0.9,0.3\n2,0.00035,4.1,0.7,0.2\n";
    let (_dir, img) = curves(csv);
    assert_eq!(img.dimensions(), (1200, 400));
    assert!(
        count(&img, BLUE, 800..1200) == 0,
        "a test-set series was drawn"
    );
    assert!(
        count(&img, SLATE, 800..1200) > 50,
        "no 'not evaluated' text"
    );
}

#[test]
fn one_epoch_is_drawn_as_points() {
    let csv = "epoch,lr,ce,triplet,s_mAP,s_rank1\n1,0.00035,5.2,0.9,0.25,0.4\n";
    let (_dir, img) = curves(csv);
    assert_eq!(img.dimensions(), (1200, 400));
    for panel in [0..400, 400..800, 800..1200] {
        assert!(
            count(&img, BLUE, panel.clone()) > 10,
            "no marker in {panel:?}"
        );
    }
}

#[test]
fn malformed_metrics_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("metrics.csv");
    let png = dir.path().join("curves.png");
    let cases = [
        (
            "epoch,lr,ce\n1,0.1,2.0\n2,0.1\n",
            ":3: 2 cells, but the header has 3",
        ),
        ("epoch,lr,ce\n1,0.1,abc\n", ":2: ce \"abc\" is not a number"),
        (
            "step,lr,ce\n1,0.1,2.0\n",
            ":1: expected a header starting with `epoch,lr`",
        ),
        ("epoch,lr,ce\n", "no epochs yet"),
        ("", "empty"),
    ];
    for (text, expected) in cases {
        std::fs::write(&csv, text).unwrap();
        let err = format!("{:#}", training_curves(&csv, &png).unwrap_err());
        assert!(err.contains(&csv.display().to_string()), "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(!png.exists());
    }
    let missing = dir.path().join("nope.csv");
    let err = format!("{:#}", training_curves(&missing, &png).unwrap_err());
    assert!(err.contains("nope.csv"), "{err}");
}

/// `agd plot args…`.
fn agd(args: &[&Path]) -> std::process::Output {
    super::util::agd().arg("plot").args(args).output().unwrap()
}

#[test]
fn plot_subcommand_redraws_logs_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("metrics.csv"), EVALUATED).unwrap();
    }
    let out = agd(&[&a, &b]);
    assert!(out.status.success(), "{out:?}");
    for dir in [&a, &b] {
        assert_eq!(load(&dir.join("curves.png")).dimensions(), (1200, 400));
    }

    let elsewhere = tmp.path().join("run-a.png");
    let out = agd(&[&a, Path::new("-o"), &elsewhere]);
    assert!(out.status.success(), "{out:?}");
    assert!(elsewhere.is_file());
    let out = agd(&[&a, &b, Path::new("-o"), &elsewhere]);
    assert!(!out.status.success());

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = agd(&[&empty]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} has no metrics.csv", empty.display())),
        "{stderr}"
    );
    assert!(!empty.join("curves.png").exists());
}

/// `-o x.jpg` writes a JPEG (not PNG bytes under a .jpg name); an extension no encoder
/// serves is refused before drawing, naming it and what is supported.
#[test]
fn plot_output_format_follows_the_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("metrics.csv"), EVALUATED).unwrap();
    for name in ["curves.jpg", "curves.JPEG"] {
        let jpg = tmp.path().join(name);
        let out = agd(&[&run, Path::new("-o"), &jpg]);
        assert!(out.status.success(), "{out:?}");
        let bytes = std::fs::read(&jpg).unwrap();
        assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff], "{name} is not a JPEG");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (1200, 400));
    }
    for name in ["curves.gif", "curves"] {
        let bad = tmp.path().join(name);
        let out = agd(&[&run, Path::new("-o"), &bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("-o/--output") && stderr.contains(name) && stderr.contains(".png"),
            "{stderr}"
        );
        if name == "curves.gif" {
            assert!(stderr.contains(".gif"), "{stderr}");
        }
        assert!(!bad.exists());
    }
}

fn row(method: &str, old: f64, new: f64) -> ResultRow {
    ResultRow {
        method: method.into(),
        old_map: old,
        old_rank1: old + 0.2,
        new_map: new,
        new_rank1: new + 0.2,
    }
}

#[test]
fn results_chart_draws_one_group_per_method() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("results.png");
    let rows = [
        row("base", 0.6, 0.1),
        row("finetune", 0.2, 0.55),
        row("gd", 0.35, 0.5),
        row("simgd", 0.4, 0.5),
        row("agd", 0.45, 0.52),
    ];
    results_chart(&rows, "market", "msmt17", &png).unwrap();
    let img = load(&png);
    assert_eq!(img.dimensions(), (1100, 450));
    // Old-task mAP bars blue, new-task mAP bars orange, a title.
    assert!(count(&img, BLUE, 0..1100) > 1000);
    assert!(count(&img, ORANGE, 0..1100) > 1000);
    assert!(title_pixels(&img, 0..1100) > 50);

    // Percentages instead of fractions are refused, naming the method.
    let err = results_chart(&[row("agd", 45.0, 52.0)], "market", "msmt17", &png).unwrap_err();
    assert!(err.to_string().contains("agd"), "{err}");
    assert!(results_chart(&[], "market", "msmt17", &png).is_err());
}
