//! The rasteriser: a float canvas, two hand-written primitives (a horizontal-span
//! trapezoid, which also draws slanted limbs, and an ellipse), the scene, the person, and the
//! camera's response (tint, contrast, blur, noise). No per-pixel allocation: one canvas,
//! one scratch buffer and the output image per render.

use super::style::{Accessory, Hair, Identity, Lower, Pattern, Prop, PropKind, Rgb, Scene};
use super::{stream, tag, SynthConfig};
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// RGB pixels in 0..1, row-major.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<Rgb>,
}

fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![[0.0; 3]; w * h],
        }
    }

    fn blend(&mut self, x: usize, y: usize, c: Rgb, alpha: f32) {
        let p = &mut self.px[y * self.w + x];
        *p = if alpha >= 1.0 { c } else { lerp(*p, c, alpha) };
    }

    /// Fills the region between rows `y0..y1` whose centre moves linearly from `cx0` to
    /// `cx1` and half-width from `hw0` to `hw1`: rectangles, torsos, skirts and (slanted)
    /// limbs alike. `shade(u, v)` gives the colour at `u` across (0..1) and `v` down (0..1),
    /// or `None` to leave the pixel alone. Left and right edges are antialiased.
    #[allow(clippy::too_many_arguments)]
    fn trapezoid(
        &mut self,
        y0: f32,
        y1: f32,
        cx0: f32,
        hw0: f32,
        cx1: f32,
        hw1: f32,
        shade: impl Fn(f32, f32) -> Option<Rgb>,
    ) {
        if y1 <= y0 {
            return;
        }
        let rows = (y0.floor().max(0.0) as usize)..(y1.ceil().clamp(0.0, self.h as f32) as usize);
        for y in rows {
            let yc = y as f32 + 0.5;
            if yc < y0 || yc >= y1 {
                continue;
            }
            let v = (yc - y0) / (y1 - y0);
            let cx = cx0 + (cx1 - cx0) * v;
            let hw = (hw0 + (hw1 - hw0) * v).max(0.3);
            let (left, right) = (cx - hw, cx + hw);
            let xs =
                (left.floor().max(0.0) as usize)..(right.ceil().clamp(0.0, self.w as f32) as usize);
            for x in xs {
                let xc = x as f32 + 0.5;
                let alpha = ((xc - left).min(right - xc) + 0.5).clamp(0.0, 1.0);
                if alpha <= 0.0 {
                    continue;
                }
                if let Some(c) = shade((xc - left) / (2.0 * hw), v) {
                    self.blend(x, y, c, alpha);
                }
            }
        }
    }

    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb) {
        let (cx, hw) = ((x0 + x1) * 0.5, (x1 - x0) * 0.5);
        self.trapezoid(y0, y1, cx, hw, cx, hw, |_, _| Some(c));
    }

    /// Fills an ellipse; `shade(u, v)` gets coordinates in −1..1 across and down.
    fn ellipse(
        &mut self,
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        shade: impl Fn(f32, f32) -> Option<Rgb>,
    ) {
        if rx <= 0.0 || ry <= 0.0 {
            return;
        }
        let edge = rx.min(ry);
        let ys = ((cy - ry).floor().max(0.0) as usize)
            ..((cy + ry).ceil().clamp(0.0, self.h as f32) as usize);
        for y in ys {
            let v = (y as f32 + 0.5 - cy) / ry;
            let xs = ((cx - rx).floor().max(0.0) as usize)
                ..((cx + rx).ceil().clamp(0.0, self.w as f32) as usize);
            for x in xs {
                let u = (x as f32 + 0.5 - cx) / rx;
                let d = (u * u + v * v).sqrt();
                let alpha = ((1.0 - d) * edge + 0.5).clamp(0.0, 1.0);
                if alpha <= 0.0 {
                    continue;
                }
                if let Some(c) = shade(u, v) {
                    self.blend(x, y, c, alpha);
                }
            }
        }
    }

    fn disc(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: Rgb) {
        self.ellipse(cx, cy, rx, ry, |_, _| Some(c));
    }
}

/// Which way the person faces the camera.
#[derive(Clone, Copy, PartialEq)]
enum Facing {
    Front,
    Back,
    /// In profile, walking towards −1 (left) or +1 (right).
    Side(f32),
}

/// Where and how a person stands in one image.
struct Pose {
    cx: f32,
    feet: f32,
    /// Body height in pixels.
    ph: f32,
    /// Walking phase, −1..1: leg spread / scissor and arm swing.
    stride: f32,
    facing: Facing,
    /// Illumination gradient across the body.
    slope: f32,
}

/// Cylinder-like shading across a body part, lit from the side the camera's light comes from.
fn body_light(u: f32, slope: f32) -> f32 {
    0.8 + 0.2 * (std::f32::consts::PI * u).sin() + slope * (u - 0.5)
}

/// Colour of the upper garment at (`u` across, `v` down) of the torso.
fn upper_color(who: &Identity, facing: Facing, u: f32, v: f32) -> Rgb {
    let second = match who.pattern {
        Pattern::Solid => false,
        Pattern::HStripes(n) => !((v * n as f32) as u32).is_multiple_of(2),
        Pattern::VStripes(n) => !((u * n as f32) as u32).is_multiple_of(2),
        Pattern::Checks(n) => {
            let n = n as f32;
            !((u * n) as u32 + (v * n * 1.5) as u32).is_multiple_of(2)
        }
        Pattern::TwoTone(split) => v >= split,
        Pattern::Jacket(inner) => facing == Facing::Front && (u - 0.5).abs() < inner * 0.5,
        Pattern::Logo => {
            facing == Facing::Front && (u - 0.5).abs() < 0.17 && (0.18..0.45).contains(&v)
        }
    };
    if second {
        who.upper2
    } else {
        who.upper
    }
}

/// A person's geometry in one image, in pixels: the lines and widths every body part is
/// placed by. Worked out once from the identity and the pose, so each part's function
/// below reads as that part's own proportions and no two parts can disagree on where, say,
/// the shoulders are.
#[derive(Clone, Copy)]
struct Body {
    cx: f32,
    feet: f32,
    /// Body height in pixels; proportions are fractions of it.
    ph: f32,
    /// Top of the head.
    top: f32,
    stride: f32,
    facing: Facing,
    slope: f32,
    /// Seen in profile.
    side: bool,
    /// Walking direction in profile (−1 or +1); 0 in a front or back view.
    dir: f32,
    /// The side bags hang on in this view (−1 left, +1 right in the image).
    bag_side: f32,
    /// Build: the identity's body width multiplier.
    wf: f32,
    /// Half-width of the shoulders.
    sh: f32,
    /// Half-width of the hips.
    hh: f32,
    shoulder: f32,
    hip: f32,
    knee: f32,
    head_cy: f32,
    head_rx: f32,
    head_ry: f32,
}

impl Body {
    fn new(who: &Identity, p: &Pose) -> Body {
        let ph = p.ph;
        let top = p.feet - ph;
        let at = |f: f32| top + f * ph;
        let side = matches!(p.facing, Facing::Side(_));
        let dir = match p.facing {
            Facing::Side(d) => d,
            _ => 0.0,
        };
        // Bags hang on the identity's side; a back view mirrors it.
        let bag_side = if p.facing == Facing::Back {
            -who.side
        } else {
            who.side
        };
        let bag_side = if side { -dir } else { bag_side };
        let wf = who.width;
        let sh = 0.125 * ph * wf * if side { 0.62 } else { 1.0 };
        let hip = at(who.hip);
        Body {
            cx: p.cx,
            feet: p.feet,
            ph,
            top,
            stride: p.stride,
            facing: p.facing,
            slope: p.slope,
            side,
            dir,
            bag_side,
            wf,
            sh,
            hh: sh * 0.84,
            shoulder: at(0.155),
            hip,
            knee: hip + 0.5 * (p.feet - hip),
            head_cy: at(0.075),
            head_rx: 0.06 * ph,
            head_ry: 0.072 * ph,
        }
    }

    /// The row at fraction `f` of the body height below the top of the head.
    fn at(&self, f: f32) -> f32 {
        self.top + f * self.ph
    }
}

/// Draws one person. Proportions are fractions of the body height `ph`, measured from the
/// top of the head. Each part has its own function, called here back to front: this list
/// is the painter's order (what hides what), and each part decides from the facing whether
/// and how it shows.
fn draw_person(c: &mut Canvas, who: &Identity, p: &Pose) {
    let b = Body::new(who, p);
    draw_long_hair_behind(c, who, &b);
    draw_backpack_behind(c, who, &b);
    draw_suitcase(c, who, &b);
    draw_legs(c, who, &b);
    draw_pelvis(c, who, &b);
    draw_torso(c, who, &b);
    draw_worn_on_torso(c, who, &b);
    draw_long_hair_over_back(c, who, &b);
    draw_arms(c, who, &b);
    draw_head(c, who, &b);
    draw_headwear(c, who, &b);
}

/// Long hair seen from the front or in profile falls behind the shoulders, so it goes
/// first and the torso and face cover it; from behind it covers the back instead
/// ([`draw_long_hair_over_back`]).
fn draw_long_hair_behind(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        dir,
        slope,
        shoulder,
        head_cy,
        head_rx,
        ..
    } = *b;
    if who.hair_kind == Hair::Long && b.facing != Facing::Back {
        let hair = who.hair;
        c.trapezoid(
            head_cy,
            shoulder + 0.07 * ph,
            cx - dir * 0.02 * ph,
            head_rx * 1.05,
            cx - dir * 0.03 * ph,
            head_rx * 1.2,
            |u, _| Some(scale(hair, body_light(u, slope))),
        );
    }
}

/// A backpack seen in profile shows behind the body, so it is painted before it; from
/// behind it covers the back ([`draw_backpack_on_back`]).
fn draw_backpack_behind(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        dir,
        slope,
        sh,
        shoulder,
        hip,
        ..
    } = *b;
    if who.accessory == Accessory::Backpack && b.side {
        let a = who.accessory_color;
        let x = cx - dir * (sh + 0.05 * ph);
        c.trapezoid(
            shoulder + 0.02 * ph,
            hip - 0.03 * ph,
            x,
            0.07 * ph,
            x,
            0.075 * ph,
            |u, _| Some(scale(a, body_light(u, slope))),
        );
    }
}

/// A suitcase stands on the floor beside the person, behind the legs and the hand that
/// pulls it.
fn draw_suitcase(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        feet,
        ph,
        bag_side,
        hh,
        ..
    } = *b;
    if who.accessory == Accessory::Suitcase {
        let a = who.accessory_color;
        let x = cx + bag_side * (hh + 0.12 * ph);
        c.rect(
            x - 0.07 * ph,
            feet - 0.3 * ph,
            x + 0.07 * ph,
            feet - 0.01 * ph,
            scale(a, 0.9),
        );
        c.rect(
            x - 0.01 * ph,
            feet - 0.42 * ph,
            x + 0.01 * ph,
            feet - 0.3 * ph,
            [0.15, 0.15, 0.15],
        );
    }
}

/// Legs and shoes: spread in front/back views, scissored in profile, where the far leg is
/// a little darker. The lower garment's kind decides how far down the legs are covered.
fn draw_legs(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        feet,
        ph,
        stride,
        slope,
        side,
        dir,
        wf,
        hip,
        ..
    } = *b;
    let leg_hw_top = 0.05 * ph * wf.sqrt();
    let leg_hw_bot = 0.036 * ph * wf.sqrt();
    let legs: [(f32, f32); 2] = if side {
        let s = stride * 0.13 * ph;
        [(cx, cx + s), (cx, cx - s)]
    } else {
        let spread = 0.012 * ph + 0.03 * ph * stride.abs();
        let off = 0.055 * ph * wf;
        [(cx - off, cx - off - spread), (cx + off, cx + off + spread)]
    };
    let shorts_end = 0.42;
    for (i, &(x0, x1)) in legs.iter().enumerate() {
        let dim = if side && i == 1 { 0.8 } else { 1.0 };
        let (lower, skin) = (scale(who.lower, dim), scale(who.skin, dim));
        let kind = who.lower_kind;
        c.trapezoid(
            hip,
            feet - 0.02 * ph,
            x0,
            leg_hw_top,
            x1,
            leg_hw_bot,
            |u, v| {
                let col = match kind {
                    Lower::Trousers => lower,
                    Lower::Shorts if v < shorts_end => lower,
                    _ => skin,
                };
                Some(scale(col, body_light(u, slope)))
            },
        );
        let fx = x1 + dir * 0.03 * ph;
        c.disc(
            fx,
            feet - 0.022 * ph,
            leg_hw_bot * 1.25 + side as u8 as f32 * 0.02 * ph,
            0.026 * ph,
            who.shoes,
        );
    }
}

/// The pelvis in the lower garment, covering the tops of the legs, or a skirt down past
/// the knees.
fn draw_pelvis(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        slope,
        side,
        hh,
        hip,
        knee,
        ..
    } = *b;
    match who.lower_kind {
        Lower::Skirt => {
            let low = who.lower;
            let flare = if side { 1.1 } else { 1.4 };
            c.trapezoid(
                hip - 0.02 * ph,
                knee + 0.03 * ph,
                cx,
                hh,
                cx,
                hh * flare,
                |u, _| Some(scale(low, body_light(u, slope))),
            );
        }
        _ => {
            let low = who.lower;
            c.trapezoid(
                hip - 0.02 * ph,
                hip + 0.09 * ph,
                cx,
                hh,
                cx,
                hh * 0.9,
                |u, _| Some(scale(low, body_light(u, slope))),
            );
        }
    }
}

/// The neck, then the torso in the upper garment's pattern (which depends on the facing:
/// a jacket's opening or a logo shows only from the front).
fn draw_torso(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        facing,
        slope,
        sh,
        hh,
        shoulder,
        hip,
        head_cy,
        head_ry,
        ..
    } = *b;
    c.rect(
        cx - 0.024 * ph,
        head_cy + head_ry * 0.6,
        cx + 0.024 * ph,
        shoulder + 0.02 * ph,
        scale(who.skin, 0.85),
    );
    c.trapezoid(
        shoulder - 0.012 * ph,
        hip + 0.02 * ph,
        cx,
        sh,
        cx,
        hh,
        |u, v| Some(scale(upper_color(who, facing, u, v), body_light(u, slope))),
    );
}

/// Accessories worn over the torso, painted after it and before the arms, which swing in
/// front of them.
fn draw_worn_on_torso(c: &mut Canvas, who: &Identity, b: &Body) {
    let acc = who.accessory_color;
    match who.accessory {
        Accessory::Backpack if b.facing == Facing::Back => draw_backpack_on_back(c, acc, b),
        Accessory::Backpack if b.facing == Facing::Front => draw_backpack_straps(c, acc, b),
        Accessory::ShoulderBag => draw_shoulder_bag(c, acc, b),
        Accessory::Scarf => draw_scarf(c, who, b),
        _ => {}
    }
}

/// A backpack seen from behind covers most of the back; its lower pocket is darker.
fn draw_backpack_on_back(c: &mut Canvas, acc: Rgb, b: &Body) {
    let Body {
        cx,
        ph,
        slope,
        sh,
        shoulder,
        hip,
        ..
    } = *b;
    c.trapezoid(
        shoulder + 0.03 * ph,
        hip - 0.04 * ph,
        cx,
        sh * 0.72,
        cx,
        sh * 0.78,
        |u, v| {
            let pocket = v > 0.6 && (u - 0.5).abs() < 0.3;
            Some(scale(
                acc,
                body_light(u, slope) * if pocket { 0.75 } else { 1.0 },
            ))
        },
    );
}

/// From the front a backpack shows only as its two shoulder straps.
fn draw_backpack_straps(c: &mut Canvas, acc: Rgb, b: &Body) {
    let Body {
        cx,
        ph,
        sh,
        shoulder,
        ..
    } = *b;
    for s in [-1.0, 1.0] {
        let x = cx + s * sh * 0.55;
        c.trapezoid(
            shoulder - 0.01 * ph,
            b.at(0.36),
            x,
            0.018 * ph,
            x,
            0.015 * ph,
            |_, _| Some(acc),
        );
    }
}

/// A shoulder bag: the strap across the torso from the far shoulder, and the bag at the
/// hip on the bag's side.
fn draw_shoulder_bag(c: &mut Canvas, acc: Rgb, b: &Body) {
    let Body {
        cx,
        ph,
        bag_side,
        sh,
        hh,
        shoulder,
        hip,
        ..
    } = *b;
    let from = cx - bag_side * sh * 0.7;
    let to = cx + bag_side * hh * 1.05;
    c.trapezoid(
        shoulder,
        hip - 0.02 * ph,
        from,
        0.014 * ph,
        to,
        0.014 * ph,
        |_, _| Some(scale(acc, 0.8)),
    );
    let x = cx + bag_side * (hh + 0.03 * ph);
    c.rect(
        x - 0.055 * ph,
        hip - 0.07 * ph,
        x + 0.055 * ph,
        hip + 0.06 * ph,
        acc,
    );
}

/// A scarf round the neck; from the front one end hangs down the chest on the identity's
/// side.
fn draw_scarf(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        slope,
        sh,
        shoulder,
        ..
    } = *b;
    let acc = who.accessory_color;
    c.trapezoid(
        shoulder - 0.035 * ph,
        shoulder + 0.045 * ph,
        cx,
        sh * 0.5,
        cx,
        sh * 0.55,
        |u, _| Some(scale(acc, body_light(u, slope))),
    );
    if b.facing == Facing::Front {
        let x = cx + who.side * sh * 0.25;
        c.rect(
            x - 0.025 * ph,
            shoulder,
            x + 0.025 * ph,
            b.at(0.36),
            scale(acc, 0.9),
        );
    }
}

/// Long hair seen from behind covers the upper back and whatever is worn there, so it
/// comes after the torso's accessories; other views paint it first
/// ([`draw_long_hair_behind`]).
fn draw_long_hair_over_back(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        slope,
        shoulder,
        head_cy,
        head_rx,
        ..
    } = *b;
    if who.hair_kind == Hair::Long && b.facing == Facing::Back {
        let hair = who.hair;
        c.trapezoid(
            head_cy,
            shoulder + 0.1 * ph,
            cx,
            head_rx * 1.05,
            cx,
            head_rx * 1.25,
            |u, _| Some(scale(hair, body_light(u, slope))),
        );
    }
}

/// Arms (sleeve, then skin below a short sleeve), hands, and whatever the hands carry. Both
/// arms swing with the stride in front and back views; a profile shows only the near arm.
fn draw_arms(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        stride,
        slope,
        side,
        dir,
        wf,
        sh,
        shoulder,
        ..
    } = *b;
    let arm_hw = 0.033 * ph * wf.sqrt();
    let hand_y = b.at(0.53);
    // (shoulder x, hand x, which side); a profile shows only the near arm.
    let (arms, n_arms) = if side {
        let s = -stride * 0.11 * ph;
        ([(cx + dir * 0.01 * ph, cx + s, 1.0), (0.0, 0.0, 0.0)], 1)
    } else {
        let swing = stride * 0.02 * ph;
        (
            [
                (cx - sh + arm_hw * 0.6, cx - sh - 0.01 * ph + swing, -1.0),
                (cx + sh - arm_hw * 0.6, cx + sh + 0.01 * ph - swing, 1.0),
            ],
            2,
        )
    };
    let sleeve_end = if who.long_sleeves { 1.0 } else { 0.42 };
    for &(x0, x1, s) in &arms[..n_arms] {
        let (sleeve, skin) = (who.upper, who.skin);
        c.trapezoid(
            shoulder + 0.005 * ph,
            hand_y,
            x0,
            arm_hw,
            x1,
            arm_hw * 0.85,
            |u, v| {
                let col = if v < sleeve_end { sleeve } else { skin };
                Some(scale(col, body_light(u, slope) * 0.95))
            },
        );
        c.disc(x1, hand_y + 0.01 * ph, arm_hw * 0.95, 0.025 * ph, skin);
        draw_carried(c, who, b, (x0, x1, s), hand_y);
    }
}

/// What the arm from `x0` (shoulder) to `x1` (hand) on side `s` carries, if it is the arm
/// on the bag's side (or the only one, in profile): a shopping bag hanging from the hand,
/// or a handbag in the crook of the elbow. Painted right after its own arm and hand, so
/// the bag hangs in front of them.
fn draw_carried(c: &mut Canvas, who: &Identity, b: &Body, arm: (f32, f32, f32), hand_y: f32) {
    let (x0, x1, s) = arm;
    let ph = b.ph;
    let acc = who.accessory_color;
    let carries = s == b.bag_side || b.side;
    match who.accessory {
        Accessory::ShoppingBag if carries => {
            c.rect(
                x1 - 0.004 * ph,
                hand_y,
                x1 + 0.004 * ph,
                hand_y + 0.04 * ph,
                [0.15, 0.15, 0.15],
            );
            let x = x1 + s * 0.02 * ph;
            c.rect(
                x - 0.06 * ph,
                hand_y + 0.04 * ph,
                x + 0.06 * ph,
                hand_y + 0.19 * ph,
                acc,
            );
        }
        Accessory::Handbag if carries => {
            let y = b.at(0.33);
            let x = x0 + (x1 - x0) * 0.45 + s * 0.03 * ph;
            c.rect(x - 0.045 * ph, y, x + 0.045 * ph, y + 0.07 * ph, acc);
        }
        _ => {}
    }
}

/// The head: a hair cap (smaller and higher when shaved), then the face unless seen from
/// behind, where the hair covers the whole head.
fn draw_head(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        slope,
        dir,
        head_cy,
        head_rx,
        head_ry,
        ..
    } = *b;
    let (hair, skin) = (who.hair, who.skin);
    let (cap_rx, cap_ry, cap_dy) = match who.hair_kind {
        Hair::Shaved => (head_rx * 0.98, head_ry * 0.8, -0.25),
        _ => (head_rx * 1.08, head_ry * 0.95, -0.12),
    };
    c.disc(
        cx - dir * 0.012 * ph,
        head_cy + cap_dy * head_ry,
        cap_rx,
        cap_ry,
        hair,
    );
    if b.facing == Facing::Back {
        c.disc(cx, head_cy + 0.1 * head_ry, head_rx, head_ry * 0.9, hair);
    } else {
        let fx = cx + dir * 0.015 * ph;
        c.ellipse(
            fx,
            head_cy + 0.18 * head_ry,
            head_rx * 0.9,
            head_ry * 0.82,
            |u, _| Some(scale(skin, 0.85 + 0.15 * (1.0 - u * u) + slope * u * 0.5)),
        );
    }
}

/// Whatever is worn on the head, painted last because it covers hair and face: a cap (its
/// visor turns with the face), a beanie, or headphones (one ear cup in profile).
fn draw_headwear(c: &mut Canvas, who: &Identity, b: &Body) {
    let Body {
        cx,
        ph,
        side,
        dir,
        head_cy,
        head_rx,
        head_ry,
        ..
    } = *b;
    let acc = who.accessory_color;
    match who.accessory {
        Accessory::Cap => {
            c.ellipse(
                cx,
                head_cy - 0.3 * head_ry,
                head_rx * 1.1,
                head_ry * 0.72,
                |_, v| (v < 0.45).then_some(acc),
            );
            if b.facing != Facing::Back {
                let visor = if side { dir * head_rx * 0.9 } else { 0.0 };
                c.rect(
                    cx + visor - head_rx * 0.9,
                    head_cy - 0.1 * head_ry,
                    cx + visor + head_rx * 0.9,
                    head_cy + 0.05 * head_ry,
                    scale(acc, 0.8),
                );
            }
        }
        Accessory::Beanie => {
            c.ellipse(
                cx,
                head_cy - 0.25 * head_ry,
                head_rx * 1.12,
                head_ry * 0.85,
                |_, v| (v < 0.5).then_some(acc),
            );
        }
        Accessory::Headphones => {
            let band = [0.1, 0.1, 0.1];
            c.ellipse(
                cx,
                head_cy - 0.2 * head_ry,
                head_rx * 1.15,
                head_ry * 0.95,
                |_, v| (v < -0.75).then_some(band),
            );
            for s in [-1.0, 1.0] {
                if !side || s == -dir {
                    c.disc(
                        cx + s * head_rx * if side { 0.1 } else { 1.0 },
                        head_cy + 0.1 * head_ry,
                        0.028 * ph,
                        0.035 * ph,
                        acc,
                    );
                }
            }
        }
        _ => {}
    }
}

/// Paints the camera's scene, panned by `pan` scene units.
fn draw_background(c: &mut Canvas, scene: &Scene, pan: f32, horizon_jitter: f32) {
    let (w, h) = (c.w as f32, c.h as f32);
    let horizon = (scene.horizon + horizon_jitter) * h;
    let sky = scene.sky * h;
    for y in 0..c.h {
        let yc = y as f32 + 0.5;
        let row = &mut c.px[y * c.w..(y + 1) * c.w];
        if yc < sky {
            row.fill(lerp(scene.sky_color, [0.9, 0.93, 0.97], yc / sky));
        } else if yc < horizon {
            row.fill(lerp(
                scene.wall_top,
                scene.wall,
                (yc - sky) / (horizon - sky).max(1.0),
            ));
        } else {
            let t = (yc - horizon) / (h - horizon).max(1.0);
            let base = lerp(scene.floor_far, scene.floor_near, t);
            if scene.tile > 0.0 {
                // Tiles grow towards the camera: rows in perspective, columns fanning out.
                let depth = 1.0 / (t + 0.15);
                let band = (depth * 1.5) as i32;
                for (x, p) in row.iter_mut().enumerate() {
                    let sx = (x as f32 + 0.5) / w - 0.5;
                    let col = ((sx * depth * 0.25 + pan) / scene.tile).floor() as i32;
                    *p = if (band + col) % 2 == 0 {
                        base
                    } else {
                        scale(base, 0.93)
                    };
                }
            } else {
                row.fill(base);
            }
        }
    }
    if sky > 0.0 {
        c.rect(
            0.0,
            horizon - 0.02 * h,
            w,
            horizon + 0.015 * h,
            scale(scene.wall, 0.75),
        );
    }
    for prop in scene.props.iter().flatten() {
        draw_prop(c, prop, pan, horizon);
    }
}

/// Paints one background object, `pan` scene units into the camera's panorama, unless it
/// is out of the crop; `horizon` is the floor line's row. The simple kinds (rectangles)
/// are drawn here, the others by their own functions.
fn draw_prop(c: &mut Canvas, p: &Prop, pan: f32, horizon: f32) {
    let (w, h) = (c.w as f32, c.h as f32);
    let x0 = (p.x - pan) * w;
    let x1 = x0 + p.w * w;
    if x1 < 0.0 || x0 > w {
        return;
    }
    let (y0, y1) = (p.y0 * h, p.y1 * h);
    let xm = (x0 + x1) * 0.5;
    match p.kind {
        PropKind::Window => {
            c.rect(x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0, p.color2);
            c.rect(x0, y0, x1, y1, p.color);
            c.rect(xm - 0.5, y0, xm + 0.5, y1, p.color2);
        }
        PropKind::Door => {
            c.rect(x0 - 1.0, y0 - 1.0, x1 + 1.0, y1, p.color2);
            c.rect(x0, y0, x1, y1, p.color);
        }
        PropKind::Tree => draw_tree(c, p, (x0, y0, x1, y1)),
        PropKind::Pole | PropKind::Pillar => {
            let (a, b) = (p.color, p.color2);
            c.trapezoid(y0, y1, xm, (x1 - x0) * 0.5, xm, (x1 - x0) * 0.5, |u, _| {
                Some(lerp(a, b, (u - 0.3).abs()))
            });
        }
        PropKind::Car => draw_car(c, p, (x0, y0, x1, y1)),
        PropKind::Shopfront => {
            let sign_end = y0 + (horizon - y0) * 0.18;
            c.rect(x0, y0, x1, sign_end, p.color);
            c.rect(x0 + 1.0, sign_end, x1 - 1.0, y1, p.color2);
            c.rect(xm - 0.5, sign_end, xm + 0.5, y1, scale(p.color2, 0.7));
        }
        PropKind::Plant => draw_plant(c, p, (x0, y0, x1, y1)),
        PropKind::CeilingLight => c.rect(x0, y0, x1, y1.max(y0 + 1.5), p.color),
    }
}

/// A tree in the pixel box `(x0, y0, x1, y1)`: a trunk in `color2` under a crown in
/// `color`, lit from above.
fn draw_tree(c: &mut Canvas, p: &Prop, (x0, y0, x1, y1): (f32, f32, f32, f32)) {
    let xm = (x0 + x1) * 0.5;
    let trunk = (x1 - x0) * 0.08;
    c.rect(xm - trunk, (y0 + y1) * 0.45, xm + trunk, y1, p.color2);
    let leaf = p.color;
    c.ellipse(
        xm,
        y0 + (y1 - y0) * 0.28,
        (x1 - x0) * 0.5,
        (y1 - y0) * 0.3,
        |u, v| Some(scale(leaf, 0.85 + 0.2 * (0.5 - v) - 0.05 * u)),
    );
}

/// A parked car in the pixel box `(x0, y0, x1, y1)`: windows in `color2` over a body in
/// `color`, on two wheels.
fn draw_car(c: &mut Canvas, p: &Prop, (x0, y0, x1, y1): (f32, f32, f32, f32)) {
    let body = p.color;
    let glass = p.color2;
    let mid = y0 + (y1 - y0) * 0.45;
    c.rect(x0 + (x1 - x0) * 0.2, y0, x1 - (x1 - x0) * 0.2, mid, glass);
    c.rect(x0, mid, x1, y1 - (y1 - y0) * 0.1, body);
    for wx in [x0 + (x1 - x0) * 0.2, x1 - (x1 - x0) * 0.2] {
        c.disc(
            wx,
            y1 - (y1 - y0) * 0.12,
            (x1 - x0) * 0.08,
            (y1 - y0) * 0.14,
            [0.08, 0.08, 0.08],
        );
    }
}

/// A potted plant in the pixel box `(x0, y0, x1, y1)`: a tapering pot in `color2` under
/// leaves in `color`.
fn draw_plant(c: &mut Canvas, p: &Prop, (x0, y0, x1, y1): (f32, f32, f32, f32)) {
    let xm = (x0 + x1) * 0.5;
    let pot_top = y0 + (y1 - y0) * 0.6;
    c.trapezoid(
        pot_top,
        y1,
        xm,
        (x1 - x0) * 0.3,
        xm,
        (x1 - x0) * 0.22,
        |_, _| Some(p.color2),
    );
    let leaf = p.color;
    c.ellipse(
        xm,
        y0 + (pot_top - y0) * 0.55,
        (x1 - x0) * 0.5,
        (pot_top - y0) * 0.6,
        |u, v| Some(scale(leaf, 0.9 + 0.15 * (0.5 - v) - 0.05 * u)),
    );
}

/// Something between the camera and the person: a passer-by's shoulder, a bench, a railing.
fn draw_occluder(c: &mut Canvas, rng: &mut ChaCha8Rng) {
    let (w, h) = (c.w as f32, c.h as f32);
    let col: Rgb = [
        rng.gen_range(0.1..0.7),
        rng.gen_range(0.1..0.7),
        rng.gen_range(0.1..0.7),
    ];
    if rng.gen_bool(0.5) {
        let top = h * rng.gen_range(0.72..0.88);
        let (x0, x1) = if rng.gen_bool(0.5) {
            (0.0, w * rng.gen_range(0.4..1.0))
        } else {
            (w * rng.gen_range(0.0..0.6), w)
        };
        c.trapezoid(
            top,
            h,
            (x0 + x1) * 0.5,
            (x1 - x0) * 0.5,
            (x0 + x1) * 0.5,
            (x1 - x0) * 0.5,
            |_, v| Some(scale(col, 1.0 - 0.25 * v)),
        );
    } else {
        let width = w * rng.gen_range(0.18..0.35);
        let cx = if rng.gen_bool(0.5) {
            width * 0.3
        } else {
            w - width * 0.3
        };
        c.ellipse(cx, h * 0.75, width, h * 0.6, |u, _| {
            Some(scale(col, 0.85 + 0.15 * (1.0 - u.abs())))
        });
    }
}

/// Junk: a crop of background, or of a fragment of a person too close or too far off-centre.
fn draw_junk(c: &mut Canvas, cfg: &SynthConfig, index: usize, rng: &mut ChaCha8Rng) {
    let (w, h) = (c.w as f32, c.h as f32);
    if rng.gen_bool(0.35) {
        return;
    }
    let who = Identity::stranger(cfg, tag::JUNK, index);
    let big = rng.gen_range(1.6..3.0);
    let ph = h * big;
    let facing = [Facing::Front, Facing::Back, Facing::Side(1.0)][rng.gen_range(0..3)];
    let pose = Pose {
        cx: w * rng.gen_range(0.0..1.0),
        feet: h * rng.gen_range(0.3..1.0) + ph * rng.gen_range(0.2..0.7),
        ph,
        stride: rng.gen_range(-1.0..1.0),
        facing,
        slope: 0.0,
    };
    draw_person(c, &who, &pose);
}

/// The camera's response, applied to the whole frame: tint and exposure, saturation,
/// contrast, vignette, blur, then noise and 8-bit quantisation.
fn develop(c: &mut Canvas, scene: &Scene, exposure: f32, rng: &mut ChaCha8Rng) -> RgbImage {
    let look = &scene.look;
    let (w, h) = (c.w, c.h);
    let gain = [
        look.cast[0] * look.gain * exposure,
        look.cast[1] * look.gain * exposure,
        look.cast[2] * look.gain * exposure,
    ];
    for y in 0..h {
        let dy = (y as f32 + 0.5) / h as f32 - 0.5;
        for x in 0..w {
            let dx = (x as f32 + 0.5) / w as f32 - 0.5;
            let light =
                (1.0 + look.slope * dx) * (1.0 - look.vignette * (dx * dx * 2.0 + dy * dy * 2.0));
            let p = &mut c.px[y * w + x];
            let mut q = [
                p[0] * gain[0] * light,
                p[1] * gain[1] * light,
                p[2] * gain[2] * light,
            ];
            let luma = 0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2];
            for v in &mut q {
                *v = luma + (*v - luma) * look.saturation;
                *v = (*v - 0.5) * look.contrast + 0.5;
            }
            *p = q;
        }
    }
    if look.blur > 0 {
        let mut tmp = vec![[0.0f32; 3]; w * h];
        for _ in 0..look.blur {
            box_blur(&c.px, &mut tmp, w, h, 1, 0);
            box_blur(&tmp, &mut c.px, w, h, 0, 1);
        }
    }
    // Cheap approximately-Gaussian noise (sum of three uniforms) from a xorshift generator
    // seeded by the image's stream: ChaCha per pixel would dominate the render time.
    let mut state: u64 = rng.gen::<u64>() | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let sigma = look.noise * 2.0;
    let mut out = Vec::with_capacity(w * h * 3);
    for p in &c.px {
        let shared = (uniform() + uniform() + uniform() - 1.5) * sigma * 0.7;
        for &v in p {
            let n = (uniform() + uniform() + uniform() - 1.5) * sigma * 0.5;
            out.push((v * 255.0 + shared + n).round().clamp(0.0, 255.0) as u8);
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer matches dimensions")
}

/// One separable box-blur pass of radius 1 along (dx, dy), clamping at the borders.
fn box_blur(src: &[Rgb], dst: &mut [Rgb], w: usize, h: usize, dx: usize, dy: usize) {
    for y in 0..h {
        for x in 0..w {
            let (xa, ya) = (x.saturating_sub(dx), y.saturating_sub(dy));
            let (xb, yb) = ((x + dx).min(w - 1), (y + dy).min(h - 1));
            let (a, b, m) = (src[ya * w + xa], src[yb * w + xb], src[y * w + x]);
            dst[y * w + x] = [
                (a[0] + m[0] + b[0]) / 3.0,
                (a[1] + m[1] + b[1]) / 3.0,
                (a[2] + m[2] + b[2]) / 3.0,
            ];
        }
    }
}

/// Renders image `image_index` of person `pid` as seen by `camera` (1-based, as in file
/// names). `pid` ≥ 1 is an identity, 0 the `image_index`-th distractor (a stranger),
/// −1 the `image_index`-th junk crop. Deterministic in its arguments and in `cfg`'s seed,
/// style and size; independent of every other image.
pub fn render(cfg: &SynthConfig, pid: i64, camera: usize, image_index: usize) -> RgbImage {
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    let mut rng = stream(
        cfg,
        &[tag::IMAGE, pid as u64, camera as u64, image_index as u64],
    );
    let scene = Scene::of(cfg, camera);
    let mut canvas = Canvas::new(w, h);
    let pan = rng.gen_range(0.0..0.6);
    draw_background(&mut canvas, &scene, pan, rng.gen_range(-0.03..0.03));
    if pid == -1 {
        draw_junk(&mut canvas, cfg, image_index, &mut rng);
    } else {
        let who = if pid == 0 {
            Identity::stranger(cfg, tag::DISTRACTOR, image_index)
        } else {
            Identity::of(cfg, pid)
        };
        let f = &scene.look.facing;
        let facing = match rng.gen_range(0.0..f[0] + f[1] + f[2]) {
            x if x < f[0] => Facing::Front,
            x if x < f[0] + f[1] => Facing::Back,
            _ => Facing::Side(if rng.gen_bool(0.5) { 1.0 } else { -1.0 }),
        };
        let (wf, hf) = (w as f32, h as f32);
        let pose = Pose {
            cx: wf * (0.5 + rng.gen_range(-0.08..0.08)),
            feet: hf * rng.gen_range(0.95..1.0),
            ph: hf * who.height * scene.look.scale * rng.gen_range(0.94..1.04),
            stride: rng.gen_range(-1.0..1.0),
            facing,
            slope: scene.look.slope,
        };
        draw_person(&mut canvas, &who, &pose);
        if rng.gen_bool(0.12) {
            draw_occluder(&mut canvas, &mut rng);
        }
    }
    let exposure = rng.gen_range(0.94..1.06);
    develop(&mut canvas, &scene, exposure, &mut rng)
}
