//! The reference's image transforms (docs/method.md §2), applied to the resized HWC bytes of
//! [`super::ImageStore`] and written straight into a CHW float batch buffer.
//!
//! Training: horizontal flip (p 0.5) → zero-pad 10 px → random crop H×W → [0,1] →
//! ImageNet normalisation → random erasing. Test: [0,1] → normalisation.

use rand::Rng;

/// ImageNet channel means (also the random-erasing fill, see [`Erasing`]).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Padding before the random crop.
pub const PAD: usize = 10;

/// Random erasing with the reference's parameters and its quirk: the rectangle is filled
/// with the *raw* ImageNet mean, written into the already-normalised tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Erasing {
    /// Probability of erasing an image at all (`--re`, default 0.5).
    pub probability: f64,
    /// Largest erased area fraction (`--re-area`, default 0.4).
    pub max_area: f64,
}

impl Default for Erasing {
    /// The reference's defaults (`--re 0.5`, `--re-area 0.4`).
    fn default() -> Self {
        Self {
            probability: 0.5,
            max_area: 0.4,
        }
    }
}

impl Erasing {
    pub const MIN_AREA: f64 = 0.02;
    pub const MIN_ASPECT: f64 = 0.3;
    pub const TRIES: usize = 100;

    /// The rectangle (top, left, h, w) to erase in an `height`×`width` image, or `None`.
    /// Random draws follow the reference exactly: probability, then per try area, aspect,
    /// and only for a rectangle that fits, its top and left (inclusive ranges).
    pub fn rectangle(
        &self,
        rng: &mut impl Rng,
        height: usize,
        width: usize,
    ) -> Option<(usize, usize, usize, usize)> {
        if rng.gen::<f64>() >= self.probability {
            return None;
        }
        let area = (height * width) as f64;
        for _ in 0..Self::TRIES {
            let target = rng.gen_range(Self::MIN_AREA..=self.max_area.max(Self::MIN_AREA)) * area;
            let aspect = rng.gen_range(Self::MIN_ASPECT..=1.0 / Self::MIN_ASPECT);
            // Python's round(): halves go to the even neighbour.
            let h = (target * aspect).sqrt().round_ties_even() as usize;
            let w = (target / aspect).sqrt().round_ties_even() as usize;
            if w < width && h < height {
                let top = rng.gen_range(0..=height - h);
                let left = rng.gen_range(0..=width - w);
                return Some((top, left, h, w));
            }
        }
        None
    }
}

/// The random part of the training transform.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrainTransform {
    pub erasing: Erasing,
}

/// Writes the test transform of an HWC image into `out` (CHW, 3·H·W floats).
pub fn test_into(pixels: &[u8], height: usize, width: usize, out: &mut [f32]) {
    let plane = height * width;
    debug_assert_eq!(out.len(), 3 * plane);
    for c in 0..3 {
        let (scale, shift) = (1.0 / (255.0 * STD[c]), MEAN[c] / STD[c]);
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, px) in dst.iter_mut().zip(pixels.chunks_exact(3)) {
            *d = px[c] as f32 * scale - shift;
        }
    }
}

impl TrainTransform {
    /// Writes one randomly augmented view of an HWC image into `out` (CHW floats).
    pub fn apply_into(
        &self,
        rng: &mut impl Rng,
        pixels: &[u8],
        height: usize,
        width: usize,
        out: &mut [f32],
    ) {
        let plane = height * width;
        debug_assert_eq!(out.len(), 3 * plane);
        let flip = rng.gen::<f64>() < 0.5;
        // RandomCrop of the padded image: offsets are uniform over 0..=2·PAD.
        let top = rng.gen_range(0..=2 * PAD) as isize - PAD as isize;
        let left = rng.gen_range(0..=2 * PAD) as isize - PAD as isize;
        // Padding is black before ToTensor, so it normalises to −mean/std.
        let zero = [-MEAN[0] / STD[0], -MEAN[1] / STD[1], -MEAN[2] / STD[2]];
        let scale = [
            1.0 / (255.0 * STD[0]),
            1.0 / (255.0 * STD[1]),
            1.0 / (255.0 * STD[2]),
        ];
        for y in 0..height {
            let sy = y as isize + top;
            let row_inside = sy >= 0 && (sy as usize) < height;
            for x in 0..width {
                let sx = x as isize + left;
                let o = y * width + x;
                if row_inside && sx >= 0 && (sx as usize) < width {
                    // Flip happens before padding: source column mirrored.
                    let sx = if flip {
                        width - 1 - sx as usize
                    } else {
                        sx as usize
                    };
                    let p = ((sy as usize) * width + sx) * 3;
                    for c in 0..3 {
                        out[c * plane + o] = pixels[p + c] as f32 * scale[c] + zero[c];
                    }
                } else {
                    for c in 0..3 {
                        out[c * plane + o] = zero[c];
                    }
                }
            }
        }
        if let Some((t, l, h, w)) = self.erasing.rectangle(rng, height, width) {
            for c in 0..3 {
                for y in t..t + h {
                    out[c * plane + y * width + l..c * plane + y * width + l + w].fill(MEAN[c]);
                }
            }
        }
    }
}
