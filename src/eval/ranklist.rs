//! Rank-list pictures (`--rank-list DIR`): per query, the query image and its top-10
//! gallery images, each framed green (same identity) or red — what people look at to see
//! what a model confuses. Gallery items the protocol ignores (same id and camera) are
//! left out, as in the metrics.

use crate::data::images::decode_resized;
use crate::data::Record;
use anyhow::Result;
use image::{Rgb, RgbImage};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Thumbnail size and frame width.
pub const THUMB_H: u32 = 128;
pub const THUMB_W: u32 = 64;
pub const FRAME: u32 = 4;
/// Gap between tiles, and the wider gap after the query.
const GAP: u32 = 4;
const QUERY_GAP: u32 = 16;

const GREEN: Rgb<u8> = Rgb([30, 180, 60]);
const RED: Rgb<u8> = Rgb([210, 40, 40]);
const GREY: Rgb<u8> = Rgb([90, 90, 90]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// Width and height of a picture of `top` gallery images.
pub fn picture_size(top: usize) -> (u32, u32) {
    let tile = THUMB_W + 2 * FRAME;
    let w = tile + QUERY_GAP + top as u32 * tile + top.saturating_sub(1) as u32 * GAP;
    (w, THUMB_H + 2 * FRAME)
}

fn paste(canvas: &mut RgbImage, path: &Path, x: u32, colour: Rgb<u8>) -> Result<()> {
    let thumb = decode_resized(path, THUMB_H as usize, THUMB_W as usize)?;
    for dy in 0..THUMB_H + 2 * FRAME {
        for dx in 0..THUMB_W + 2 * FRAME {
            canvas.put_pixel(x + dx, dy, colour);
        }
    }
    image::imageops::replace(canvas, &thumb, (x + FRAME) as i64, FRAME as i64);
    Ok(())
}

/// The gallery indices ranked for query `q` (ascending distance), protocol-excluded items
/// removed, at most `top`.
fn ranked(dist_row: &[f32], query: &Record, gallery: &[Record], top: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..gallery.len())
        .filter(|&j| !(gallery[j].pid == query.pid && gallery[j].camera == query.camera))
        .collect();
    order.sort_by(|&a, &b| dist_row[a].total_cmp(&dist_row[b]).then(a.cmp(&b)));
    order.truncate(top);
    order
}

/// Writes one PNG per query for the first `n` queries into `dir`; returns their paths.
pub fn write(
    dir: &Path,
    dist: &[f32],
    query: &[Record],
    gallery: &[Record],
    n: usize,
    top: usize,
) -> Result<Vec<PathBuf>> {
    crate::io::create_dir(dir)?;
    let g = gallery.len();
    (0..n.min(query.len()))
        .into_par_iter()
        .map(|i| {
            let q = &query[i];
            let (w, h) = picture_size(top);
            let mut canvas = RgbImage::from_pixel(w, h, WHITE);
            paste(&mut canvas, &q.path, 0, GREY)?;
            let mut x = THUMB_W + 2 * FRAME + QUERY_GAP;
            for j in ranked(&dist[i * g..(i + 1) * g], q, gallery, top) {
                let colour = if gallery[j].pid == q.pid { GREEN } else { RED };
                paste(&mut canvas, &gallery[j].path, x, colour)?;
                x += THUMB_W + 2 * FRAME + GAP;
            }
            let stem = q.path.file_stem().unwrap_or_default().to_string_lossy();
            let path = dir.join(format!("{i:04}_{stem}.png"));
            crate::io::write_png(&path, &canvas)?;
            Ok(path)
        })
        .collect()
}
