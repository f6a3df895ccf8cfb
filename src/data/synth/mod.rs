//! `agd synth`: a procedural renderer of synthetic pedestrians that writes a
//! Market-1501-style ReID dataset, so the whole pipeline (and incremental learning across
//! two tasks) can be exercised without downloading real data.
//!
//! Each identity has a fixed appearance (clothing colours and pattern, lower garment, skin,
//! hair, build, accessory), each camera its own scene and colour response, and each image
//! its own pose, framing, exposure, noise and occasional occlusion, so an identity's images
//! resemble each other across cameras far more than they resemble other identities, yet
//! not trivially. [`Style::Street`] and [`Style::Mall`] are two visually different worlds,
//! i.e. two tasks. Every image is a pure function of (seed, style, pid, camera, index), so
//! the output is byte-identical whatever the thread count.

mod render;
mod style;

pub use render::render;
pub use style::{Accessory, Hair, Identity, Lower, Pattern};

use crate::bad_setting;
use crate::error::{Occupied, Setting};
use anyhow::{Context, Result};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::Path;

/// The world the images come from; two styles give two different tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Outdoor daylight: warm or grey walls, pavement, sky; saturated clothing.
    Street,
    /// Indoor shopping mall: cool artificial light, tiled floors, shopfronts; muted clothing,
    /// shopping bags and suitcases, people framed from farther away.
    Mall,
}

crate::named_values!(Style { Street => "street", Mall => "mall" });

/// What `agd synth` generates.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Training identities (pids 1..=ids).
    pub ids: usize,
    /// Query/gallery identities (pids ids+1..=ids+test_ids), disjoint from training ones.
    pub test_ids: usize,
    /// Images per identity, train and test alike.
    pub images_per_id: usize,
    /// Cameras, 2..=15.
    pub cameras: usize,
    pub height: u32,
    pub width: u32,
    pub seed: u64,
    pub style: Style,
    /// Gallery images with pid 0 (people of no identity).
    pub distractors: usize,
    /// Gallery images with pid −1 (background and body-fragment crops).
    pub junk: usize,
}

/// Largest accepted image side: well beyond any ReID crop, small enough to catch typos.
const MAX_SIDE: u32 = 2048;

impl SynthConfig {
    /// Checks every field, with an error that names the setting to fix.
    pub fn validate(&self) -> Result<()> {
        if self.ids == 0 {
            bad_setting!(Setting::Ids, 0, "must be at least 1");
        }
        if self.test_ids == 0 {
            bad_setting!(Setting::TestIds, 0, "must be at least 1");
        }
        if self.images_per_id < 2 {
            bad_setting!(
                Setting::ImagesPerId,
                self.images_per_id,
                "must be >= 2 so that every identity is seen by two cameras"
            );
        }
        if !(2..=15).contains(&self.cameras) {
            bad_setting!(Setting::Cameras, self.cameras, "must be between 2 and 15");
        }
        if !(32..=MAX_SIDE).contains(&self.height) {
            bad_setting!(
                Setting::Height,
                self.height,
                "must be between 32 and {MAX_SIDE} pixels"
            );
        }
        if !(16..=MAX_SIDE).contains(&self.width) {
            bad_setting!(
                Setting::Width,
                self.width,
                "must be between 16 and {MAX_SIDE} pixels"
            );
        }
        Ok(())
    }
}

/// Counts of what [`generate`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SynthSummary {
    pub train_images: usize,
    pub train_ids: usize,
    pub query_images: usize,
    /// All gallery images: test identities' plus distractors and junk.
    pub gallery_images: usize,
    pub test_ids: usize,
    pub distractors: usize,
    pub junk: usize,
    pub cameras: usize,
}

impl SynthSummary {
    /// The summary as a table: what was written where.
    pub fn table(&self, name: &str) -> comfy_table::Table {
        let s = self;
        crate::report::table(
            ["dataset", "split", "ids", "images"],
            [
                [
                    name.to_string(),
                    "train".into(),
                    s.train_ids.to_string(),
                    s.train_images.to_string(),
                ],
                [
                    name.to_string(),
                    "query".into(),
                    s.test_ids.to_string(),
                    s.query_images.to_string(),
                ],
                [
                    name.to_string(),
                    "gallery".into(),
                    format!("{} + distractors", s.test_ids),
                    format!("{} (+{} junk)", s.gallery_images, s.junk),
                ],
            ],
        )
    }
}

/// The three Market-1501 folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Query,
    Gallery,
}

impl Split {
    /// Folder name in the Market-1501 layout.
    pub fn folder(self) -> &'static str {
        match self {
            Split::Train => "bounding_box_train",
            Split::Query => "query",
            Split::Gallery => "bounding_box_test",
        }
    }
}

/// One image of the dataset: where it goes and what [`render`] must draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedImage {
    pub split: Split,
    /// Identity (≥ 1), 0 for a distractor, −1 for junk.
    pub pid: i64,
    /// 1-based camera.
    pub camera: usize,
    /// Image index within the identity (or distractor/junk number).
    pub index: usize,
    /// `{pid:04}_c{cam}s{seq}_{frame:06}_{bbox:02}.jpg`, unique within the dataset.
    pub file_name: String,
}

/// Names of the independent random streams.
mod tag {
    pub const IDENTITY: u64 = 1;
    pub const CAMERA: u64 = 2;
    pub const IMAGE: u64 = 3;
    pub const LAYOUT: u64 = 4;
    pub const DISTRACTOR: u64 = 5;
    pub const JUNK: u64 = 6;
    pub const NAME: u64 = 7;
}

/// The generator for the stream named by `parts` under the config's seed and style: the
/// keyed stream of [`crate::data::rng`], with the style as its first coordinate.
fn stream(cfg: &SynthConfig, parts: &[u64]) -> ChaCha8Rng {
    let style = match cfg.style {
        Style::Street => 0x5354_5245_4554,
        Style::Mall => 0x4d41_4c4c,
    };
    crate::data::rng::stream(cfg.seed, &[&[style], parts].concat())
}

/// Most cameras one identity walks past (as in Market-1501, whose ids appear in 2 to 6).
const MAX_CAMERAS_PER_ID: usize = 6;

/// Which camera takes each of an identity's images. Every identity is seen by k ≥ 2
/// cameras; when there are at least 4 images, each of those cameras gets at least two,
/// so a query per camera still leaves a gallery image in every camera.
fn camera_assignment(cfg: &SynthConfig, pid: i64) -> Vec<usize> {
    let mut rng = stream(cfg, &[tag::LAYOUT, pid as u64]);
    let n = cfg.images_per_id;
    let k_max = cfg.cameras.min(MAX_CAMERAS_PER_ID).min((n / 2).max(2));
    let k = rng.gen_range(2..=k_max);
    let mut all: Vec<usize> = (1..=cfg.cameras).collect();
    all.shuffle(&mut rng);
    let chosen = &all[..k];
    let base = if n >= 2 * k { 2 } else { 1 };
    let mut cams: Vec<usize> = chosen
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, base))
        .collect();
    while cams.len() < n {
        cams.push(chosen[rng.gen_range(0..k)]);
    }
    cams.shuffle(&mut rng);
    cams
}

/// `{pid:04}_c{cam}s{seq}_{frame:06}_{bbox:02}.jpg`. Frames of one pid increase with the
/// index (image i lies in frames 25i+1..=25i+25), so names never collide.
fn file_name(cfg: &SynthConfig, kind: u64, pid: i64, camera: usize, index: usize) -> String {
    let mut rng = stream(cfg, &[tag::NAME, kind, pid as u64, index as u64]);
    let seq = rng.gen_range(1..=6);
    let frame = 25 * index + rng.gen_range(1..=25);
    let bbox = rng.gen_range(1..=3);
    let pid = if pid < 0 {
        pid.to_string()
    } else {
        format!("{pid:04}")
    };
    format!("{pid}_c{camera}s{seq}_{frame:06}_{bbox:02}.jpg")
}

/// Every image of the dataset, in a fixed order: training identities, test identities
/// (one query per camera an identity appears in, the rest in the gallery), distractors,
/// junk. With only 2 or 3 images per identity a query per camera would leave some query
/// without a gallery match in another camera, so those identities get a single query.
/// `cfg` must pass [`SynthConfig::validate`].
pub fn plan(cfg: &SynthConfig) -> Vec<PlannedImage> {
    let mut out = Vec::new();
    let total_ids = cfg.ids + cfg.test_ids;
    for pid in 1..=total_ids as i64 {
        let cams = camera_assignment(cfg, pid);
        let train = pid as usize <= cfg.ids;
        let mut seen: Vec<usize> = Vec::new();
        let per_camera = cfg.images_per_id >= 4;
        for (index, &camera) in cams.iter().enumerate() {
            let split = if train {
                Split::Train
            } else if !seen.contains(&camera) && (per_camera || seen.is_empty()) {
                seen.push(camera);
                Split::Query
            } else {
                Split::Gallery
            };
            out.push(PlannedImage {
                split,
                pid,
                camera,
                index,
                file_name: file_name(cfg, tag::IDENTITY, pid, camera, index),
            });
        }
    }
    for (kind, pid, count) in [
        (tag::DISTRACTOR, 0, cfg.distractors),
        (tag::JUNK, -1, cfg.junk),
    ] {
        for index in 0..count {
            let camera = stream(cfg, &[kind, index as u64, u64::MAX]).gen_range(1..=cfg.cameras);
            out.push(PlannedImage {
                split: Split::Gallery,
                pid,
                camera,
                index,
                file_name: file_name(cfg, kind, pid, camera, index),
            });
        }
    }
    out
}

/// JPEG quality: high enough that compression does not blur away stripes at 64 px wide.
const JPEG_QUALITY: u8 = 90;

/// Writes `dir/{bounding_box_train,bounding_box_test,query}/*.jpg`. Refuses a target
/// folder that already holds anything, rather than mixing two datasets.
pub fn generate(dir: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    cfg.validate()?;
    crate::io::create_dir(dir)?;
    const SPLITS: [Split; 3] = [Split::Train, Split::Query, Split::Gallery];
    for split in SPLITS {
        let sub = dir.join(split.folder());
        if sub.exists() {
            let mut entries = std::fs::read_dir(&sub)
                .with_context(|| format!("cannot read {}", sub.display()))?;
            if entries.next().is_some() {
                return Err(crate::error::Error::from(Occupied {
                    path: sub.clone(),
                    setting: Setting::Dataset,
                })
                .into());
            }
        }
    }
    for split in SPLITS {
        crate::io::create_dir(&dir.join(split.folder()))?;
    }
    let images = plan(cfg);
    let bar = crate::progress::bar(images.len() as u64, "synth");
    images.par_iter().try_for_each(|item| -> Result<()> {
        let img = render(cfg, item.pid, item.camera, item.index);
        let mut bytes = Vec::with_capacity(8192);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
            .encode_image(&img)
            .with_context(|| format!("cannot encode {}", item.file_name))?;
        let path = dir.join(item.split.folder()).join(&item.file_name);
        // Regenerable in seconds: atomic against kills, no per-file disk sync.
        crate::io::write_atomic_unsynced(&path, &bytes)?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let count = |split| images.iter().filter(|i| i.split == split).count();
    Ok(SynthSummary {
        train_images: count(Split::Train),
        train_ids: cfg.ids,
        query_images: count(Split::Query),
        gallery_images: count(Split::Gallery),
        test_ids: cfg.test_ids,
        distractors: cfg.distractors,
        junk: cfg.junk,
        cameras: cfg.cameras,
    })
}

/// A contact sheet of the first `ids` training identities, one row each, their first
/// `per_id` images left to right: what a person looks at to see what the model must learn
/// (same person across cameras, different people side by side).
pub fn preview(cfg: &SynthConfig, ids: usize, per_id: usize) -> RgbImage {
    let rows = ids.min(cfg.ids).max(1);
    let cols = per_id.min(cfg.images_per_id).max(1);
    let images = plan(cfg);
    let tiles: Vec<Vec<RgbImage>> = (1..=rows as i64)
        .map(|pid| {
            images
                .iter()
                .filter(|i| i.split == Split::Train && i.pid == pid)
                .take(cols)
                .map(|item| render(cfg, item.pid, item.camera, item.index))
                .collect()
        })
        .collect();
    crate::data::images::grid(&tiles, cols, cfg.height, cfg.width)
}
