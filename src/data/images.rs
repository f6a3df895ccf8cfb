//! Images decoded once, in parallel, and kept in memory (the reference preloads too).
//! Both transforms of docs/method.md §2 start with a deterministic bilinear resize to H×W, so it is
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
/// PIL's resize is when shrinking). An image that does not decode completely is an error
/// naming the file: the JPEG decoder would fill a truncated file's missing rows with grey
/// and say nothing ([`check_jpeg_complete`]); the PNG decoder reports truncation itself.
pub fn decode_resized(path: &Path, height: usize, width: usize) -> Result<image::RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot open image", path.display()))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        check_jpeg_complete(&bytes).with_context(|| {
            format!(
                "{}: image file is truncated (an interrupted copy or download?)",
                path.display()
            )
        })?;
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read image", path.display()))?
        .decode()
        .with_context(|| {
            format!(
                "{}: not a readable image (corrupt, truncated or unsupported)",
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

/// Checks that a JPEG (`bytes` starting with its SOI marker) runs to its end-of-image
/// marker: walks the marker segments by their lengths and the entropy-coded data of each
/// scan to the next real marker, and fails if the bytes end first. The `image` crate's
/// decoder (zune-jpeg, not strict) pads a truncated image with grey and returns it as if
/// whole, where PIL raises "image file is truncated"; its strict mode would also refuse
/// the harmless deviations (stray bytes between segments) real datasets hold, so those
/// are skipped here as libjpeg skips them. Bytes after the end marker are ignored, as
/// every decoder ignores them.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let end = |what: &str| anyhow::anyhow!("the data ends {what}, before the end-of-image marker");
    let mut i = 2;
    loop {
        // The next marker: stray bytes and 0xFF fill bytes before it are skipped.
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return Err(end("between segments"));
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a segment: restart markers, TEM, and a stuffed zero.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(end("inside a segment header")),
        };
        if len < 2 || i + len > bytes.len() {
            return Err(end("inside a segment"));
        }
        i += len;
        if marker == 0xDA {
            // Start of scan: entropy-coded data up to the next marker other than a stuffed
            // zero (FF 00) or a restart marker (FF D0..D7).
            loop {
                while i < bytes.len() && bytes[i] != 0xFF {
                    i += 1;
                }
                let mut j = i;
                while j < bytes.len() && bytes[j] == 0xFF {
                    j += 1;
                }
                match bytes.get(j) {
                    None => return Err(end("inside the image data")),
                    Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                    Some(_) => break,
                }
            }
        }
    }
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
