//! What the two worlds look like: clothing palettes, body builds, accessories, scenes and
//! camera responses for [`Style::Street`] and [`Style::Mall`], and how one identity's
//! appearance or one camera's look is drawn from them. Everything here is a pure function of
//! the config's seed and style and of the identity or camera, so any image can be rendered
//! alone, in any order, on any thread.

use super::{stream, tag, Style, SynthConfig};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// A linear-ish RGB colour with channels in 0..1 (quantised to 8 bits only at the end).
pub type Rgb = [f32; 3];

/// Pattern of the upper garment; the numbers are stripe/check counts or split positions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    Solid,
    /// Horizontal stripes, `n` bands over the torso height.
    HStripes(u8),
    /// Vertical stripes, `n` bands over the torso width.
    VStripes(u8),
    /// A checkerboard, `n` cells across.
    Checks(u8),
    /// Top part one colour, the rest the other; the split is a fraction of torso height.
    TwoTone(f32),
    /// An open jacket over a shirt of the second colour; the number is the shirt's width.
    Jacket(f32),
    /// A print on the chest in the second colour, seen from the front only.
    Logo,
}

/// Lower garment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lower {
    Trousers,
    Shorts,
    Skirt,
}

/// Hair cut; long hair falls over the shoulders and covers the upper back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hair {
    Short,
    Long,
    Shaved,
}

/// Carried or worn extra. Street people carry the first five, mall people the last five
/// (`None` in both), so the two tasks differ in their accessory vocabulary too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accessory {
    None,
    Backpack,
    ShoulderBag,
    Cap,
    Scarf,
    ShoppingBag,
    Handbag,
    Headphones,
    Beanie,
    Suitcase,
}

/// Everything that makes one person recognisable: fixed per identity, whatever the camera.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub upper: Rgb,
    /// Second colour of the pattern (stripes, checks, inner shirt, print).
    pub upper2: Rgb,
    pub pattern: Pattern,
    pub long_sleeves: bool,
    pub lower: Rgb,
    pub lower_kind: Lower,
    pub shoes: Rgb,
    pub skin: Rgb,
    pub hair: Rgb,
    pub hair_kind: Hair,
    /// Body height as a fraction of the crop height (before the camera's own scale).
    pub height: f32,
    /// Body width multiplier (1 = average build).
    pub width: f32,
    /// Hip line as a fraction of body height from the top of the head.
    pub hip: f32,
    pub accessory: Accessory,
    pub accessory_color: Rgb,
    /// Which side bags hang on in a front view: −1 left, +1 right.
    pub side: f32,
}

/// Attribute streams, so each attribute can be drawn (or borrowed from a neighbour) alone.
mod attr {
    pub const UPPER: u64 = 1;
    pub const PATTERN: u64 = 2;
    pub const LOWER: u64 = 3;
    pub const SKIN_HAIR: u64 = 4;
    pub const BUILD: u64 = 5;
    pub const ACCESSORY: u64 = 6;
    pub const SHARING: u64 = 7;
}

/// Probability that an identity borrows a given shareable attribute (upper colour, lower
/// garment, accessory) from the identity numbered just before it. Consecutive ids then
/// often agree on one cue, so no single cue identifies a person and a model has to combine
/// them; 0.25 keeps most pairs different in most attributes.
const SHARE_PROBABILITY: f64 = 0.25;

const STREET_UPPER: [Rgb; 14] = [
    [0.80, 0.10, 0.10],
    [0.95, 0.50, 0.08],
    [0.95, 0.85, 0.15],
    [0.15, 0.60, 0.20],
    [0.05, 0.55, 0.55],
    [0.10, 0.30, 0.80],
    [0.08, 0.10, 0.35],
    [0.45, 0.15, 0.60],
    [0.95, 0.40, 0.65],
    [0.92, 0.92, 0.90],
    [0.08, 0.08, 0.09],
    [0.50, 0.50, 0.52],
    [0.45, 0.28, 0.15],
    [0.60, 0.85, 0.20],
];
const STREET_LOWER: [Rgb; 9] = [
    [0.20, 0.28, 0.50],
    [0.08, 0.08, 0.10],
    [0.40, 0.40, 0.42],
    [0.70, 0.62, 0.42],
    [0.40, 0.26, 0.15],
    [0.35, 0.38, 0.18],
    [0.88, 0.88, 0.85],
    [0.55, 0.10, 0.12],
    [0.45, 0.55, 0.72],
];
const STREET_ACCESSORY: [Rgb; 7] = [
    [0.10, 0.10, 0.12],
    [0.75, 0.12, 0.10],
    [0.10, 0.25, 0.60],
    [0.20, 0.45, 0.20],
    [0.85, 0.75, 0.20],
    [0.45, 0.30, 0.18],
    [0.55, 0.55, 0.58],
];
const MALL_UPPER: [Rgb; 14] = [
    [0.85, 0.78, 0.62],
    [0.95, 0.92, 0.80],
    [0.72, 0.65, 0.88],
    [0.62, 0.88, 0.75],
    [0.95, 0.60, 0.52],
    [0.62, 0.75, 0.92],
    [0.22, 0.23, 0.26],
    [0.45, 0.08, 0.18],
    [0.80, 0.62, 0.15],
    [0.72, 0.52, 0.32],
    [0.55, 0.62, 0.48],
    [0.85, 0.55, 0.62],
    [0.35, 0.42, 0.52],
    [0.40, 0.20, 0.38],
];
const MALL_LOWER: [Rgb; 9] = [
    [0.22, 0.23, 0.26],
    [0.85, 0.78, 0.62],
    [0.95, 0.92, 0.80],
    [0.12, 0.15, 0.30],
    [0.12, 0.28, 0.18],
    [0.40, 0.20, 0.38],
    [0.62, 0.60, 0.55],
    [0.06, 0.06, 0.07],
    [0.72, 0.52, 0.32],
];
const MALL_ACCESSORY: [Rgb; 7] = [
    [0.95, 0.30, 0.55],
    [0.98, 0.80, 0.20],
    [0.20, 0.75, 0.80],
    [0.55, 0.35, 0.20],
    [0.08, 0.08, 0.08],
    [0.90, 0.90, 0.92],
    [0.70, 0.15, 0.15],
];
const HAIR: [Rgb; 6] = [
    [0.06, 0.05, 0.05],
    [0.20, 0.13, 0.08],
    [0.40, 0.26, 0.14],
    [0.85, 0.72, 0.42],
    [0.55, 0.22, 0.10],
    [0.62, 0.62, 0.62],
];
const SHOES: [Rgb; 5] = [
    [0.07, 0.07, 0.08],
    [0.92, 0.92, 0.92],
    [0.35, 0.22, 0.12],
    [0.30, 0.30, 0.34],
    [0.60, 0.12, 0.12],
];

/// A palette colour, nudged per identity so two people with "the same red" still differ a little.
fn pick(rng: &mut ChaCha8Rng, palette: &[Rgb]) -> Rgb {
    let c = palette[rng.gen_range(0..palette.len())];
    let gain = rng.gen_range(0.92..1.08);
    c.map(|v| (v * gain + rng.gen_range(-0.03..0.03)).clamp(0.0, 1.0))
}

fn pick_other(rng: &mut ChaCha8Rng, palette: &[Rgb], not: Rgb) -> Rgb {
    loop {
        let c = pick(rng, palette);
        let d: f32 = c.iter().zip(not).map(|(a, b)| (a - b).abs()).sum();
        if d > 0.45 {
            return c;
        }
    }
}

/// Index from weights (no allocation; the weights need not sum to one).
fn weighted(rng: &mut ChaCha8Rng, weights: &[f32]) -> usize {
    let total: f32 = weights.iter().sum();
    let mut x = rng.gen_range(0.0..total);
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

impl Identity {
    /// The appearance of identity `pid` (≥ 1) under `cfg`'s seed and style.
    pub fn of(cfg: &SynthConfig, pid: i64) -> Identity {
        let mut share = stream(cfg, &[tag::IDENTITY, pid as u64, attr::SHARING]);
        let mut source = |a: u64| {
            let borrow = pid > 1 && share.gen_bool(SHARE_PROBABILITY);
            let owner = if borrow { pid - 1 } else { pid };
            stream(cfg, &[tag::IDENTITY, owner as u64, a])
        };
        let upper = source(attr::UPPER);
        let lower = source(attr::LOWER);
        let accessory = source(attr::ACCESSORY);
        let own = |a: u64| stream(cfg, &[tag::IDENTITY, pid as u64, a]);
        Identity::draw(
            cfg.style,
            [
                upper,
                own(attr::PATTERN),
                lower,
                own(attr::SKIN_HAIR),
                own(attr::BUILD),
                accessory,
            ],
        )
    }

    /// A person of no identity: the `index`-th distractor (or junk fragment) of the gallery.
    pub(crate) fn stranger(cfg: &SynthConfig, kind: u64, index: usize) -> Identity {
        let s = |a: u64| stream(cfg, &[kind, index as u64, a]);
        Identity::draw(
            cfg.style,
            [
                s(attr::UPPER),
                s(attr::PATTERN),
                s(attr::LOWER),
                s(attr::SKIN_HAIR),
                s(attr::BUILD),
                s(attr::ACCESSORY),
            ],
        )
    }

    /// Draws every attribute from its own stream: upper colour, pattern, lower garment,
    /// skin and hair, build, accessory. Each stream after the first has its own function
    /// below, so what one stream decides (and so what an identity shares when it borrows
    /// that stream from its neighbour) is in one place.
    fn draw(style: Style, streams: [ChaCha8Rng; 6]) -> Identity {
        let [mut up, mut pat, mut low, mut skin, mut build, mut acc] = streams;
        let (upper_pal, lower_pal, acc_pal) = match style {
            Style::Street => (&STREET_UPPER, &STREET_LOWER, &STREET_ACCESSORY),
            Style::Mall => (&MALL_UPPER, &MALL_LOWER, &MALL_ACCESSORY),
        };
        let upper = pick(&mut up, upper_pal);
        let long_sleeves = up.gen_bool(0.55);
        let (pattern, upper2) = draw_pattern(style, &mut pat, upper_pal, upper);
        let (lower_kind, lower, shoes) = draw_lower(style, &mut low, lower_pal);
        let (skin_color, hair, hair_kind) = draw_skin_and_hair(&mut skin);
        let (height, width, hip) = draw_build(style, &mut build);
        let (accessory, accessory_color, side) = draw_accessory(style, &mut acc, acc_pal);

        Identity {
            upper,
            upper2,
            pattern,
            long_sleeves,
            lower,
            lower_kind,
            shoes,
            skin: skin_color,
            hair,
            hair_kind,
            height,
            width,
            hip,
            accessory,
            accessory_color,
            side,
        }
    }
}

/// The pattern stream: the upper garment's pattern, and its second colour from `palette`,
/// clearly different from the main colour `upper` so the pattern shows.
fn draw_pattern(style: Style, pat: &mut ChaCha8Rng, palette: &[Rgb], upper: Rgb) -> (Pattern, Rgb) {
    // Pattern weights: Solid, HStripes, VStripes, Checks, TwoTone, Jacket, Logo.
    let weights: [f32; 7] = match style {
        Style::Street => [3.0, 2.0, 1.0, 1.5, 1.5, 0.5, 1.5],
        Style::Mall => [4.0, 1.5, 0.3, 1.0, 0.7, 2.5, 0.5],
    };
    let pattern = match weighted(pat, &weights) {
        0 => Pattern::Solid,
        1 => Pattern::HStripes(pat.gen_range(4..=7)),
        2 => Pattern::VStripes(pat.gen_range(4..=6)),
        3 => Pattern::Checks(pat.gen_range(3..=5)),
        4 => Pattern::TwoTone(pat.gen_range(0.35..0.6)),
        5 => Pattern::Jacket(pat.gen_range(0.2..0.4)),
        _ => Pattern::Logo,
    };
    let upper2 = pick_other(pat, palette, upper);
    (pattern, upper2)
}

/// The lower-garment stream: its kind, its colour from `palette`, and the shoes.
fn draw_lower(style: Style, low: &mut ChaCha8Rng, palette: &[Rgb]) -> (Lower, Rgb, Rgb) {
    let lower_weights: [f32; 3] = match style {
        Style::Street => [0.55, 0.25, 0.2],
        Style::Mall => [0.6, 0.1, 0.3],
    };
    let lower_kind = [Lower::Trousers, Lower::Shorts, Lower::Skirt][weighted(low, &lower_weights)];
    let lower = pick(low, palette);
    let shoes = pick(low, &SHOES);
    (lower_kind, lower, shoes)
}

/// The skin-and-hair stream: a skin tone on a light-to-dark ramp, the hair colour and cut.
/// The same in both styles.
fn draw_skin_and_hair(skin: &mut ChaCha8Rng) -> (Rgb, Rgb, Hair) {
    let t = skin.gen_range(0.0f32..1.0);
    let skin_color = [0.96 - 0.56 * t, 0.80 - 0.54 * t, 0.68 - 0.50 * t];
    let hair = pick(skin, &HAIR);
    let hair_kind = [Hair::Short, Hair::Long, Hair::Shaved][weighted(skin, &[0.5, 0.35, 0.15])];
    (skin_color, hair, hair_kind)
}

/// The build stream: height, width and hip line (the fields of [`Identity`] of those names).
/// Mall crops are framed from farther away and show stockier people with a longer torso.
fn draw_build(style: Style, build: &mut ChaCha8Rng) -> (f32, f32, f32) {
    match style {
        Style::Street => (
            build.gen_range(0.86..0.97),
            build.gen_range(0.85..1.12),
            build.gen_range(0.47..0.52),
        ),
        Style::Mall => (
            build.gen_range(0.76..0.88),
            build.gen_range(1.0..1.28),
            build.gen_range(0.50..0.56),
        ),
    }
}

/// The accessory stream: which accessory (each style has its own vocabulary), its colour
/// from `palette`, and the side bags hang on.
fn draw_accessory(style: Style, acc: &mut ChaCha8Rng, palette: &[Rgb]) -> (Accessory, Rgb, f32) {
    let accessory = match style {
        Style::Street => [
            Accessory::None,
            Accessory::Backpack,
            Accessory::ShoulderBag,
            Accessory::Cap,
            Accessory::Scarf,
        ][weighted(acc, &[1.5, 1.2, 1.0, 0.8, 0.6])],
        Style::Mall => [
            Accessory::None,
            Accessory::ShoppingBag,
            Accessory::Handbag,
            Accessory::Headphones,
            Accessory::Beanie,
            Accessory::Suitcase,
        ][weighted(acc, &[1.5, 1.2, 1.0, 0.6, 0.6, 0.5])],
    };
    let accessory_color = pick(acc, palette);
    let side = if acc.gen_bool(0.5) { 1.0 } else { -1.0 };
    (accessory, accessory_color, side)
}

/// Background objects; positions are in scene units where the crop shows 1 unit of a
/// 1.6-unit-wide panorama, so consecutive crops from one camera see different parts of it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PropKind {
    Window,
    Door,
    Tree,
    Pole,
    Car,
    Shopfront,
    Pillar,
    Plant,
    CeilingLight,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Prop {
    pub kind: PropKind,
    /// Left edge, in scene units (crop width = 1).
    pub x: f32,
    /// Width in scene units.
    pub w: f32,
    /// Top and bottom, as fractions of the crop height.
    pub y0: f32,
    pub y1: f32,
    pub color: Rgb,
    pub color2: Rgb,
}

/// How a camera turns light into pixels: it tints and blurs everything it sees, people included.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Look {
    pub gain: f32,
    pub cast: Rgb,
    pub contrast: f32,
    pub saturation: f32,
    /// Box-blur passes (0 = sharp).
    pub blur: u32,
    /// Pixel noise standard deviation, in 8-bit levels.
    pub noise: f32,
    /// Left-to-right illumination gradient (sunlight from one side).
    pub slope: f32,
    pub vignette: f32,
    /// Person size multiplier (a camera farther away sees smaller people).
    pub scale: f32,
    /// Weights of seeing people from the front, the back and the side.
    pub facing: [f32; 3],
}

/// One camera's scene and look.
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    /// Top rows show sky down to this fraction of the height (0 = none).
    pub sky: f32,
    pub sky_color: Rgb,
    /// Where the wall meets the floor, as a fraction of the height.
    pub horizon: f32,
    pub wall_top: Rgb,
    pub wall: Rgb,
    pub floor_far: Rgb,
    pub floor_near: Rgb,
    /// Floor tile size in scene units (0 = untiled).
    pub tile: f32,
    pub props: [Option<Prop>; 6],
    pub look: Look,
}

const STREET_WALLS: [Rgb; 6] = [
    [0.60, 0.32, 0.24],
    [0.78, 0.70, 0.55],
    [0.55, 0.54, 0.50],
    [0.80, 0.66, 0.45],
    [0.62, 0.60, 0.57],
    [0.38, 0.36, 0.35],
];
const STREET_FLOORS: [Rgb; 4] = [
    [0.30, 0.30, 0.31],
    [0.55, 0.53, 0.50],
    [0.45, 0.40, 0.35],
    [0.62, 0.52, 0.42],
];
const MALL_WALLS: [Rgb; 5] = [
    [0.90, 0.91, 0.93],
    [0.78, 0.80, 0.83],
    [0.75, 0.82, 0.90],
    [0.88, 0.86, 0.80],
    [0.55, 0.68, 0.70],
];
const MALL_FLOORS: [Rgb; 4] = [
    [0.72, 0.73, 0.75],
    [0.80, 0.76, 0.68],
    [0.88, 0.88, 0.88],
    [0.35, 0.36, 0.40],
];
const SIGNS: [Rgb; 6] = [
    [0.90, 0.15, 0.20],
    [0.10, 0.45, 0.85],
    [0.95, 0.75, 0.10],
    [0.20, 0.70, 0.35],
    [0.60, 0.20, 0.70],
    [0.95, 0.45, 0.10],
];

fn shade(c: Rgb, f: f32) -> Rgb {
    c.map(|v| (v * f).clamp(0.0, 1.0))
}

impl Scene {
    /// The scene and look of camera `camera` (1-based) under `cfg`'s seed and style.
    pub fn of(cfg: &SynthConfig, camera: usize) -> Scene {
        let mut r = stream(cfg, &[tag::CAMERA, camera as u64]);
        // One stream for both: the look is drawn first, then the scene.
        match cfg.style {
            Style::Street => {
                let look = Look::draw(&mut r, &STREET_LOOK);
                Scene::street(&mut r, look)
            }
            Style::Mall => {
                let look = Look::draw(&mut r, &MALL_LOOK);
                Scene::mall(&mut r, look)
            }
        }
    }

    /// An outdoor scene: a wall (with sky above it half the time), a pavement that may be
    /// tiled, and 3 to 6 street props.
    fn street(r: &mut ChaCha8Rng, look: Look) -> Scene {
        let wall = pick(r, &STREET_WALLS);
        let floor = pick(r, &STREET_FLOORS);
        let sky = if r.gen_bool(0.5) {
            r.gen_range(0.08..0.25)
        } else {
            0.0
        };
        let horizon = r.gen_range(0.55..0.72);
        let mut props = [None; 6];
        for slot in props.iter_mut().take(r.gen_range(3..=6)) {
            *slot = Some(Prop::street(r, wall, sky, horizon));
        }
        Scene {
            sky,
            sky_color: [
                r.gen_range(0.5..0.65),
                r.gen_range(0.68..0.78),
                r.gen_range(0.88..0.98),
            ],
            horizon,
            wall_top: shade(wall, r.gen_range(0.85..1.1)),
            wall,
            floor_far: shade(floor, 0.9),
            floor_near: shade(floor, r.gen_range(1.0..1.2)),
            tile: if r.gen_bool(0.5) {
                r.gen_range(0.2..0.35)
            } else {
                0.0
            },
            props,
            look,
        }
    }

    /// An indoor scene: a wall without sky, a tiled floor, and 3 to 6 mall props.
    fn mall(r: &mut ChaCha8Rng, look: Look) -> Scene {
        let wall = pick(r, &MALL_WALLS);
        let floor = pick(r, &MALL_FLOORS);
        let horizon = r.gen_range(0.5..0.66);
        let mut props = [None; 6];
        for slot in props.iter_mut().take(r.gen_range(3..=6)) {
            *slot = Some(Prop::mall(r, wall, horizon));
        }
        Scene {
            sky: 0.0,
            sky_color: [0.0; 3],
            horizon,
            wall_top: shade(wall, r.gen_range(0.8..0.95)),
            wall,
            floor_far: shade(floor, 0.95),
            floor_near: shade(floor, r.gen_range(1.0..1.1)),
            tile: r.gen_range(0.15..0.3),
            props,
            look,
        }
    }
}

/// The ranges a style draws each camera's look from, field by field ([`Look::draw`]).
struct LookRanges {
    gain: Range<f32>,
    cast: [Range<f32>; 3],
    contrast: Range<f32>,
    saturation: Range<f32>,
    noise: Range<f32>,
    slope: Range<f32>,
    vignette: Range<f32>,
    scale: Range<f32>,
}

/// Daylight: warm, contrasty and saturated, with a strong side light and little noise.
const STREET_LOOK: LookRanges = LookRanges {
    gain: 1.0..1.22,
    cast: [1.0..1.08, 0.98..1.03, 0.86..0.97],
    contrast: 1.05..1.3,
    saturation: 1.0..1.25,
    noise: 1.5..5.0,
    slope: -0.25..0.25,
    vignette: 0.0..0.1,
    scale: 0.9..1.04,
};

/// Artificial light: cool, flat and muted, evenly lit, noisier, with more vignetting.
const MALL_LOOK: LookRanges = LookRanges {
    gain: 0.85..1.05,
    cast: [0.88..0.97, 0.97..1.05, 1.03..1.15],
    contrast: 0.85..1.0,
    saturation: 0.75..0.95,
    noise: 3.0..8.0,
    slope: -0.06..0.06,
    vignette: 0.05..0.25,
    scale: 0.88..1.04,
};

impl Look {
    /// A camera's look drawn from a style's ranges (fields drawn in declaration order, so
    /// a seed gives the same cameras it always gave); blur and the facing weights are the
    /// same for every style.
    fn draw(r: &mut ChaCha8Rng, k: &LookRanges) -> Look {
        Look {
            gain: r.gen_range(k.gain.clone()),
            cast: k.cast.clone().map(|c| r.gen_range(c)),
            contrast: r.gen_range(k.contrast.clone()),
            saturation: r.gen_range(k.saturation.clone()),
            blur: r.gen_range(0..=2),
            noise: r.gen_range(k.noise.clone()),
            slope: r.gen_range(k.slope.clone()),
            vignette: r.gen_range(k.vignette.clone()),
            scale: r.gen_range(k.scale.clone()),
            facing: [
                r.gen_range(0.5..2.0),
                r.gen_range(0.5..2.0),
                r.gen_range(0.3..1.2),
            ],
        }
    }
}

impl Prop {
    /// One street prop: a window, door, tree, pole or car, placed by the scene's `sky` and
    /// `horizon` and coloured after its `wall` where it belongs to the building.
    fn street(r: &mut ChaCha8Rng, wall: Rgb, sky: f32, horizon: f32) -> Prop {
        let x = r.gen_range(-0.2..1.5);
        let kind = [
            PropKind::Window,
            PropKind::Door,
            PropKind::Tree,
            PropKind::Pole,
            PropKind::Car,
        ][weighted(r, &[2.0, 1.0, 1.2, 1.0, 0.8])];
        match kind {
            PropKind::Window => Prop {
                kind,
                x,
                w: r.gen_range(0.2..0.4),
                y0: sky + r.gen_range(0.03..0.12),
                y1: horizon * r.gen_range(0.45..0.7),
                color: [0.18, 0.23, 0.30],
                color2: shade(wall, 1.25),
            },
            PropKind::Door => Prop {
                kind,
                x,
                w: r.gen_range(0.25..0.35),
                y0: horizon * r.gen_range(0.3..0.5),
                y1: horizon,
                color: pick(
                    r,
                    &[[0.35, 0.22, 0.12], [0.15, 0.25, 0.20], [0.30, 0.30, 0.35]],
                ),
                color2: shade(wall, 0.7),
            },
            PropKind::Tree => Prop {
                kind,
                x,
                w: r.gen_range(0.35..0.6),
                y0: r.gen_range(0.0..0.15),
                y1: horizon + r.gen_range(0.02..0.08),
                color: pick(
                    r,
                    &[[0.20, 0.45, 0.15], [0.30, 0.50, 0.20], [0.15, 0.35, 0.12]],
                ),
                color2: [0.30, 0.20, 0.12],
            },
            PropKind::Pole => Prop {
                kind,
                x,
                w: r.gen_range(0.04..0.08),
                y0: r.gen_range(0.0..0.2),
                y1: horizon + r.gen_range(0.05..0.15),
                color: [0.22, 0.23, 0.24],
                color2: [0.22, 0.23, 0.24],
            },
            _ => Prop {
                kind,
                x,
                w: r.gen_range(0.6..0.9),
                y0: horizon - r.gen_range(0.12..0.18),
                y1: horizon + r.gen_range(0.02..0.06),
                color: pick(r, &STREET_UPPER),
                color2: [0.12, 0.14, 0.18],
            },
        }
    }

    /// One mall prop: a shopfront, pillar, potted plant or ceiling light, placed by the
    /// scene's `horizon`; pillars take the `wall`'s colour.
    fn mall(r: &mut ChaCha8Rng, wall: Rgb, horizon: f32) -> Prop {
        let x = r.gen_range(-0.2..1.5);
        let kind = [
            PropKind::Shopfront,
            PropKind::Pillar,
            PropKind::Plant,
            PropKind::CeilingLight,
        ][weighted(r, &[2.0, 1.2, 0.8, 1.0])];
        match kind {
            PropKind::Shopfront => Prop {
                kind,
                x,
                w: r.gen_range(0.5..0.9),
                y0: r.gen_range(0.05..0.15),
                y1: horizon,
                color: pick(r, &SIGNS),
                color2: [0.62, 0.72, 0.78],
            },
            PropKind::Pillar => Prop {
                kind,
                x,
                w: r.gen_range(0.12..0.2),
                y0: 0.0,
                y1: horizon + r.gen_range(0.02..0.05),
                color: shade(wall, r.gen_range(1.0..1.1)),
                color2: shade(wall, 0.8),
            },
            PropKind::Plant => Prop {
                kind,
                x,
                w: r.gen_range(0.2..0.3),
                y0: horizon - r.gen_range(0.2..0.3),
                y1: horizon + r.gen_range(0.03..0.08),
                color: [0.18, 0.50, 0.25],
                color2: pick(
                    r,
                    &[[0.85, 0.85, 0.85], [0.45, 0.30, 0.20], [0.20, 0.20, 0.22]],
                ),
            },
            _ => Prop {
                kind,
                x,
                w: r.gen_range(0.2..0.4),
                y0: 0.0,
                y1: r.gen_range(0.03..0.06),
                color: [1.0, 0.98, 0.92],
                color2: [1.0, 0.98, 0.92],
            },
        }
    }
}
