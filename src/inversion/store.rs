//! The dreams folder's bookkeeping (docs/method.md §7): which identities still need images, the
//! targets of the next batch, and the dreamed images on disk as `<pid>_b<batch>_<slot>.jpg`
//! (`.png` with `--dream-format png`)
//! — the `<pid>_<unique>.jpg` names `--inversion-dir` reads back
//! ([`crate::data::dataset::parse_dreamed_name`]), with the batch number in them so that a
//! resumed run continues the numbering (and the random streams keyed by it).

use crate::data::dataset::{images_in, is_image, parse_dreamed_name};
use crate::data::images::{decode_resized, grid};
use anyhow::{bail, Context, Result};
use rand::Rng;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// JPEG quality of the saved images: PIL's default, which the reference saves with.
pub const JPEG_QUALITY: u8 = 75;

/// How dreamed images are written to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DreamFormat {
    /// The reference's: PIL's JPEG defaults ([`encode_jpeg_like_pil`]).
    #[default]
    Jpeg,
    /// Not in the reference: lossless PNG, the 8-bit pixels the inversion kept. Short
    /// inversions dream fine-grained colour noise that the teacher reads as the identity;
    /// 4:2:0 JPEG averages the chroma of every 2×2 block and quantises the rest, and the
    /// teacher no longer recognises what is left (README, issue 18).
    Png,
}

// The flag's value and the files' extension.
crate::named_values!(DreamFormat { Jpeg => "jpg" | "jpeg", Png => "png" });

impl DreamFormat {
    /// `pixels` (h×w×3 RGB bytes) encoded as a file of this format.
    pub fn encode(self, pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
        match self {
            DreamFormat::Jpeg => encode_jpeg_like_pil(pixels, width, height),
            DreamFormat::Png => {
                let img = image::RgbImage::from_raw(width, height, pixels.to_vec())
                    .context("dreamed image: pixel buffer does not match its size")?;
                crate::io::encode_image(&img, image::ImageFormat::Png)
                    .context("cannot encode a dreamed image as PNG")
            }
        }
    }
}

impl std::fmt::Display for DreamFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `pixels` (h×w×3 RGB bytes) as the reference's `PIL.Image.save(path)` encodes them with
/// its defaults (docs/method.md §7): baseline libjpeg at quality 75 — Annex K tables scaled by
/// libjpeg's quality rule, the standard Huffman tables — and 4:2:0 chroma subsampling by
/// 2×2 box average, as libjpeg's `h2v2_downsample`. The `image` crate's encoder writes
/// 4:4:4 only: its chroma is sharper than the files the reference's students train on.
pub fn encode_jpeg_like_pil(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
        bail!("a {width}×{height} image is too large for a JPEG (65535 pixels a side at most)");
    };
    let mut jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, JPEG_QUALITY);
    encoder.set_quantization_tables(
        jpeg_encoder::QuantizationTableType::Default,
        jpeg_encoder::QuantizationTableType::Default,
    );
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    encoder
        .encode(pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .context("cannot encode a dreamed image as JPEG")?;
    Ok(jpeg)
}

/// Images each identity still needs; identities with `shots` images are gone from it.
#[derive(Clone, Debug)]
pub struct Bags {
    shots: usize,
    classes: i64,
    /// The identities this run dreams: all of them, or a [`Shard`](super::shard::Shard)'s.
    ids: Range<i64>,
    /// identity → images it has, for identities short of `shots`.
    have: BTreeMap<i64, usize>,
}

impl Bags {
    /// Every identity 0..classes with no image yet.
    pub fn new(classes: i64, shots: usize) -> Self {
        Self::of(classes, 0..classes, shots)
    }

    /// Identities `ids` of the teacher's `0..classes`, with no image yet.
    pub fn of(classes: i64, ids: Range<i64>, shots: usize) -> Self {
        Self {
            shots,
            classes,
            have: ids.clone().map(|pid| (pid, 0)).collect(),
            ids,
        }
    }

    /// Counts the dreamed images already in `dir` (`*.jpg`/`*.png` named `<pid>_…`), so
    /// identities that have `shots` are not generated again. Returns how many of them are
    /// of this run's identities (another shard's are left to it).
    pub fn count_existing(&mut self, dir: &Path) -> Result<usize> {
        self.count(dir, false)
    }

    /// [`Bags::count_existing`] for a run that completes `dir`: each image it counts must
    /// read as one ([`check_readable`]), since the folder is then reported complete.
    pub fn count_to_complete(&mut self, dir: &Path) -> Result<usize> {
        self.count(dir, true)
    }

    fn count(&mut self, dir: &Path, readable: bool) -> Result<usize> {
        let mut counted = 0;
        for path in &images_in(dir)? {
            let pid = parse_dreamed_name(path)?;
            if pid >= self.classes {
                bail!(
                    "{}: identity {pid}, but the teacher has {} classes (0..{}): images of another model?",
                    path.display(),
                    self.classes,
                    self.classes - 1
                );
            }
            if self.ids.contains(&pid) {
                if readable {
                    check_readable(path)?;
                }
                self.add(pid, 1);
                counted += 1;
            }
        }
        Ok(counted)
    }

    fn add(&mut self, pid: i64, n: usize) {
        if let Some(have) = self.have.get_mut(&pid) {
            *have += n;
            if *have >= self.shots {
                self.have.remove(&pid);
            }
        }
    }

    /// True when every identity has `shots` images.
    pub fn is_done(&self) -> bool {
        self.have.is_empty()
    }

    /// Identities still short of `shots`.
    pub fn identities_left(&self) -> usize {
        self.have.len()
    }

    /// Images still missing over all identities.
    pub fn images_left(&self) -> usize {
        self.have.values().map(|h| self.shots - h).sum()
    }

    /// `bs` targets drawn uniformly from the identities still short of `shots`: without
    /// replacement while at least `bs` remain, with replacement after that.
    pub fn draw_targets(&self, bs: usize, rng: &mut impl Rng) -> Vec<i64> {
        let ids: Vec<i64> = self.have.keys().copied().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        if ids.len() >= bs {
            rand::seq::index::sample(rng, ids.len(), bs)
                .iter()
                .map(|i| ids[i])
                .collect()
        } else {
            (0..bs).map(|_| ids[rng.gen_range(0..ids.len())]).collect()
        }
    }

    /// Saves batch number `batch` (1-based): each image whose target still needs one is
    /// written into `dir` as [`image_name`] and counted; images of identities already
    /// complete (duplicates in a batch drawn with replacement) are dropped. `images`:
    /// N×3×H×W in [0, 1]. Returns the paths written.
    ///
    /// The images are encoded as `format` says (the reference: [`DreamFormat::Jpeg`]).
    ///
    /// The batch lands whole or not at all, so a run killed at any moment leaves a folder
    /// whose batches are all complete: the images go to the [`PENDING`] journal (in
    /// `journal`: the folder itself, or a shard's subfolder), which is renamed to
    /// [`COMMITTED`] in one step once all are written, and only then moved into the folder
    /// ([`recover`] finishes or discards what a kill interrupted).
    pub fn save(
        &mut self,
        dir: &Path,
        journal: &Path,
        batch: u64,
        targets: &[i64],
        images: &Tensor,
        format: DreamFormat,
    ) -> Result<Vec<PathBuf>> {
        let bytes = to_hwc_bytes(images);
        let (h, w) = (images.size()[2] as u32, images.size()[3] as u32);
        let size = (h * w * 3) as usize;
        let mut after = self.clone();
        let mut files = Vec::new();
        for (slot, &pid) in targets.iter().enumerate() {
            if !after.have.contains_key(&pid) {
                continue;
            }
            let pixels = &bytes[slot * size..(slot + 1) * size];
            files.push((
                image_name(pid, batch, slot, format),
                format.encode(pixels, w, h)?,
            ));
            after.add(pid, 1);
        }
        let pending = journal.join(PENDING);
        if pending.exists() {
            std::fs::remove_dir_all(&pending)
                .with_context(|| format!("cannot remove {}", pending.display()))?;
        }
        crate::io::create_dir(&pending)?;
        for (name, bytes) in &files {
            crate::io::write_atomic(&pending.join(name), bytes)?;
        }
        let committed = journal.join(COMMITTED);
        std::fs::rename(&pending, &committed)
            .with_context(|| format!("cannot move {} into place", committed.display()))?;
        publish(dir, journal)?;
        *self = after;
        Ok(files.into_iter().map(|(name, _)| dir.join(name)).collect())
    }
}

/// An image a folder's count may include: one whose header reads as an image (a batch is
/// written whole, so an empty or cut file came from elsewhere: a copy, a full disk),
/// since `agd incremental` would reject it after the folder was reported complete.
fn check_readable(path: &Path) -> Result<()> {
    let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let header = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(anyhow::Error::from)
        .and_then(|r| r.into_dimensions().map_err(anyhow::Error::from));
    match header {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "{} is not a readable image ({}): remove it, and a resumed run dreams it again",
            path.display(),
            if empty {
                "empty".to_string()
            } else {
                e.to_string()
            }
        ),
    }
}

/// The file name of the image dreamed in slot `slot` of batch `batch`:
/// `<pid>_b<batch>_<slot>.jpg` (`.png` for [`DreamFormat::Png`]), zero-padded so that
/// sorted order is batch order. Unique by construction (a run numbers its batches after those in the folder), and the
/// folder's batch count can be read back from the names ([`batches_in`]).
pub fn image_name(pid: i64, batch: u64, slot: usize, format: DreamFormat) -> String {
    format!("{pid}_b{batch:05}_{slot:03}.{format}")
}

/// The batch number in an [`image_name`], if the name has that shape (images from other
/// tools or older versions, `<pid>_<anything>`, have none).
fn batch_of(name: &str) -> Option<u64> {
    let (_, rest) = name.split_once('_')?;
    let (batch, _) = rest.strip_prefix('b')?.split_once('_')?;
    (!batch.is_empty() && batch.bytes().all(|b| b.is_ascii_digit()))
        .then(|| batch.parse().ok())
        .flatten()
}

/// An image in `dir` written in another format than `format` (a folder being completed
/// keeps one format, so its files stay one set of dreams): its name and its format.
pub fn other_format_in(dir: &Path, format: DreamFormat) -> Result<Option<(String, String)>> {
    for path in images_in(dir)? {
        if parse_dreamed_name(&path).is_ok() {
            let ext = path.extension().unwrap_or_default().to_string_lossy();
            if !ext.eq_ignore_ascii_case(format.name()) {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                return Ok(Some((name.into_owned(), ext.to_lowercase())));
            }
        }
    }
    Ok(None)
}

/// The highest batch number among the images in `dir` (0 when none): the batches a run
/// in this folder already completed, so that the next one is numbered — and seeded —
/// as an uninterrupted run would have numbered it.
pub fn batches_in(dir: &Path) -> Result<u64> {
    batches_of(dir, &(0..i64::MAX))
}

/// [`batches_in`] counting only the images of identities `ids`: a shard's batches are
/// numbered (and seeded) among themselves.
pub fn batches_of(dir: &Path, ids: &Range<i64>) -> Result<u64> {
    let last = images_in(dir)?
        .iter()
        .filter(|path| parse_dreamed_name(path).is_ok_and(|pid| ids.contains(&pid)))
        .filter_map(|path| batch_of(&path.file_name().unwrap_or_default().to_string_lossy()))
        .max();
    Ok(last.unwrap_or(0))
}

/// Brings `dir` back to whole batches after a run was killed while saving one: a batch
/// still being written ([`PENDING`], in `journal`) is discarded (it is dreamed again, the
/// same way), one written whole ([`COMMITTED`]) is moved into place. Returns the images
/// moved.
pub fn recover(dir: &Path, journal: &Path) -> Result<usize> {
    let pending = journal.join(PENDING);
    if pending.exists() {
        std::fs::remove_dir_all(&pending)
            .with_context(|| format!("cannot remove {}", pending.display()))?;
    }
    if journal.join(COMMITTED).exists() {
        publish(dir, journal)
    } else {
        Ok(0)
    }
}

/// Moves every image of `journal`'s [`COMMITTED`] batch into `dir`, then removes the
/// journal.
fn publish(dir: &Path, journal: &Path) -> Result<usize> {
    let committed = journal.join(COMMITTED);
    let mut moved = 0;
    for entry in std::fs::read_dir(&committed)
        .with_context(|| format!("cannot read {}", committed.display()))?
    {
        let from = entry
            .with_context(|| format!("cannot read {}", committed.display()))?
            .path();
        if !(from.is_file() && is_image(&from)) {
            // A temporary file of an interrupted write: never part of the batch.
            let _ = std::fs::remove_file(&from);
            continue;
        }
        let to = dir.join(from.file_name().expect("a file"));
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} into place", to.display()))?;
        moved += 1;
    }
    std::fs::remove_dir(&committed)
        .with_context(|| format!("cannot remove {}", committed.display()))?;
    Ok(moved)
}

/// N×3×H×W floats in [0, 1] as N HWC byte images, truncating v·255 as the reference's
/// `(x * 255).astype(uint8)` does.
pub fn to_hwc_bytes(images: &Tensor) -> Vec<u8> {
    let t = (images
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        * 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let n = t.numel();
    let mut out = vec![0u8; n];
    t.copy_data_u8(&mut out, n);
    out
}

/// Where `agd invert` draws its contact sheet: a subfolder, so the dreams folder
/// itself holds only dreamed images (every image there must be `<pid>_…`).
pub const CONTACT_SHEET: &str = "preview/contact_sheet.png";

/// A contact sheet of a dreamed folder: one row per identity (the first `ids` in pid
/// order), up to `per_id` of its images, each `height`×`width` — how people check at a
/// glance that the dreams differ between identities and look alike within one.
pub fn contact_sheet(
    dir: &Path,
    ids: usize,
    per_id: usize,
    height: u32,
    width: u32,
) -> Result<image::RgbImage> {
    let dreamed = crate::data::Dreamed::load(dir, per_id)?;
    let mut rows: BTreeMap<i64, Vec<&Path>> = BTreeMap::new();
    for r in &dreamed.records {
        rows.entry(r.pid).or_default().push(&r.path);
    }
    let rows: Vec<Vec<&Path>> = rows.into_values().take(ids).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let tiles = rows
        .iter()
        .map(|paths| {
            paths
                .iter()
                .map(|p| decode_resized(p, height as usize, width as usize))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(grid(&tiles, cols, height, width))
}

/// The journal of a batch being saved, in the dreams folder: its images are written
/// here first, so a run killed while writing leaves them out of the folder's count (the
/// resumed run discards it and dreams the batch again, identically).
pub const PENDING: &str = ".batch-pending";
/// The journal of a batch written whole, renamed from [`PENDING`] in one atomic step; its
/// images are then moved into the folder. A run killed while moving them leaves the rest
/// here, and the resumed run moves them first.
pub const COMMITTED: &str = ".batch-committed";
