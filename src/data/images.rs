//! Images decoded once, in parallel, and kept in memory (the reference preloads too).
//! Both transforms of SPEC §2 start with a deterministic bilinear resize to H×W, so it is
//! done here, once, instead of every epoch: the stored pixels are exactly what the random
//! part of the training transform starts from.

use super::Record;
use anyhow::{Context, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;

/// Resized RGB images, `height`×`width`×3 bytes each, row-major (HWC).
pub struct ImageStore {
    pub height: usize,
    pub width: usize,
    pixels: Vec<u8>,
    len: usize,
}

/// Decodes one image file and resizes it to `height`×`width` (bilinear, antialiased as
/// PIL's resize is when shrinking).
pub fn decode_resized(path: &Path, height: usize, width: usize) -> Result<image::RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open image", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read image", path.display()))?
        .decode()
        .with_context(|| {
            format!(
                "{}: not a readable image (corrupt or unsupported)",
                path.display()
            )
        })?
        .to_rgb8();
    Ok(if img.dimensions() == (width as u32, height as u32) {
        img
    } else {
        image::imageops::resize(&img, width as u32, height as u32, FilterType::Triangle)
    })
}

/// A white sheet of `rows.len()` × `cols` cells of `height`×`width`, `rows[r][c]` pasted in
/// cell (r, c) inside a 1-px margin: the one layout of every contact sheet (synth preview,
/// dreamed images).
pub fn grid(
    rows: &[Vec<image::RgbImage>],
    cols: usize,
    height: u32,
    width: u32,
) -> image::RgbImage {
    let (cell_h, cell_w) = (height + 2, width + 2);
    let mut sheet = image::RgbImage::from_pixel(
        cols as u32 * cell_w,
        rows.len() as u32 * cell_h,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().take(cols).enumerate() {
            let (x, y) = (c as u32 * cell_w + 1, r as u32 * cell_h + 1);
            image::imageops::replace(&mut sheet, img, x.into(), y.into());
        }
    }
    sheet
}

impl ImageStore {
    /// Decodes every record's image with rayon, showing a progress bar named `what`.
    pub fn load(records: &[Record], height: usize, width: usize, what: &str) -> Result<Self> {
        let size = height * width * 3;
        let mut pixels = vec![0u8; records.len() * size];
        let pb = crate::progress::bar(records.len() as u64, what.to_string());
        pixels
            .par_chunks_mut(size.max(1))
            .zip(records.par_iter())
            .try_for_each(|(out, record)| -> Result<()> {
                let img = decode_resized(&record.path, height, width)?;
                out.copy_from_slice(img.as_raw());
                pb.inc(1);
                Ok(())
            })?;
        pb.finish_and_clear();
        Ok(Self {
            height,
            width,
            pixels,
            len: records.len(),
        })
    }

    /// A store over pixels already in memory (tests, generated images).
    pub fn from_pixels(pixels: Vec<u8>, height: usize, width: usize) -> Self {
        let len = pixels.len() / (height * width * 3);
        assert_eq!(pixels.len(), len * height * width * 3, "pixel buffer size");
        Self {
            height,
            width,
            pixels,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The HWC bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.height * self.width * 3;
        &self.pixels[i * size..(i + 1) * size]
    }
}
