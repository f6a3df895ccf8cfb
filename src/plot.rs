//! Pictures of training runs and results: `curves.png` from a run's `metrics.csv`, and the
//! grouped bar chart of a results table. Text uses an embedded DejaVu Sans, so the pictures
//! come out the same on a machine without system fonts (CI, containers).

use crate::train::metrics_csv::MetricsCsv;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::Path;

/// The family name the embedded font is registered under (plotters' default family).
const FONT: &str = "sans-serif";

/// Tableau-10 colours: distinct, and readable when printed.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Series with at most this many points also get a marker per point, so that a single
/// epoch (a line of one point) or sparse evaluations stay visible.
const MARKERS_UP_TO: usize = 40;

/// Registers the embedded font once; plotters' `ab_glyph` text looks fonts up by name only.
fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/fonts/DejaVuSans.ttf"),
        )
        .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded font assets/fonts/DejaVuSans.ttf is invalid"))
}

/// (x, y) points of one series.
type Points = Vec<(f64, f64)>;

/// A range holding `values` (and 0) with a 5 % margin; an empty or flat series still gets
/// a band of height 1 so that the axis can be drawn.
fn value_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let below = if lo < 0.0 { 0.05 * span } else { 0.0 };
    lo - below..lo + span * 1.05
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What a panel shows: its title, ranges and axis descriptions.
struct Panel<'s> {
    title: &'s str,
    x: Range<f64>,
    y: Range<f64>,
    x_desc: &'s str,
    y_desc: &'s str,
    /// Most x labels to draw (plotters picks round values up to this count).
    x_labels: usize,
    x_format: &'s dyn Fn(&f64) -> String,
    /// Vertical grid lines (not between the bars of a bar chart's groups).
    x_grid: bool,
}

/// Draws a panel's caption, axes and grid in the style every picture shares.
fn styled<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    p: Panel,
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(p.x, p.y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .x_labels(p.x_labels)
        .y_labels(6)
        .x_label_formatter(p.x_format)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .max_light_lines(0)
        .bold_line_style(BLACK.mix(0.1));
    if !p.x_grid {
        mesh.disable_x_mesh();
    }
    mesh.draw()?;
    Ok(chart)
}

/// Draws one series, solid or dashed, with markers when it has few points; a label puts
/// it in the legend.
fn series<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    points: &[(f64, f64)],
    color: RGBColor,
    label: Option<&str>,
    dashed: bool,
) -> Result<()> {
    let style = color.stroke_width(2);
    let drawn = if dashed {
        chart.draw_series(DashedLineSeries::new(points.iter().copied(), 7, 4, style))?
    } else {
        chart.draw_series(LineSeries::new(points.iter().copied(), style))?
    };
    if let Some(label) = label {
        drawn
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    if points.len() <= MARKERS_UP_TO {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    Ok(())
}

/// The corner of the plot that covers the fewest of `points` (matplotlib's "best"
/// legend place): losses fall, accuracies rise, an old task's may fall.
fn emptiest_corner(chart: &Chart, points: &[(f64, f64)]) -> SeriesLabelPosition {
    let (xs, ys) = (chart.x_range(), chart.y_range());
    let covered = |right: bool, upper: bool| {
        let inside = |p: &&(f64, f64)| {
            let fx = (p.0 - xs.start) / (xs.end - xs.start);
            let fy = (p.1 - ys.start) / (ys.end - ys.start);
            (if right { fx > 0.6 } else { fx < 0.4 }) && (if upper { fy > 0.6 } else { fy < 0.4 })
        };
        points.iter().filter(inside).count()
    };
    use SeriesLabelPosition::*;
    [
        (UpperRight, true, true),
        (UpperLeft, false, true),
        (LowerRight, true, false),
        (LowerLeft, false, false),
    ]
    .into_iter()
    .min_by_key(|&(_, right, upper)| covered(right, upper))
    .map_or(UpperRight, |(corner, ..)| corner)
}

/// The legend box, alike in every picture.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// The picture formats a plot can be written in, by file extension.
pub const PICTURE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The format of a picture at `path`, from its extension (any case): PNG or JPEG. Anything
/// else is refused before drawing, rather than PNG bytes written under a name that says
/// otherwise.
pub fn picture_format(path: &Path) -> Result<image::ImageFormat> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match ext.as_deref() {
        Some("png") => Ok(image::ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(image::ImageFormat::Jpeg),
        other => {
            let given = match other {
                Some(e) => format!(".{e} pictures are not supported"),
                None => "no file extension to tell the picture format".to_string(),
            };
            let supported: Vec<String> =
                PICTURE_EXTENSIONS.iter().map(|e| format!(".{e}")).collect();
            bail!("{given}: give a {} file", supported.join(", "))
        }
    }
}

/// Renders into an RGB buffer and writes it atomically, as PNG or JPEG by `out`'s
/// extension ([`picture_format`]): a reader (or a crash mid-epoch) never sees a
/// half-written picture.
fn render_png(
    out_png: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    let format = picture_format(out_png).with_context(|| format!("{}", out_png.display()))?;
    register_font()?;
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let image = image::RgbImage::from_raw(width, height, buffer).expect("buffer of width*height*3");
    crate::io::write_image(out_png, &image, format)
}

/// Draws `out_png` (1200×400) from a run's `metrics.csv`: loss terms, learning rate, and
/// mAP / rank-1 per test set over the epochs.
///
/// One function because it draws one figure top to bottom (axes, then each panel's series,
/// then the legend), each block reading the `metrics.csv` columns it plots.
pub fn training_curves(metrics_csv: &Path, out_png: &Path) -> Result<()> {
    let m = MetricsCsv::read(metrics_csv)?;
    if m.rows.is_empty() {
        bail!("{}: no epochs yet", metrics_csv.display());
    }
    let epochs = m.rows.iter().filter_map(|r| r[0]);
    let first = epochs.clone().fold(f64::INFINITY, f64::min);
    let last = epochs.fold(f64::NEG_INFINITY, f64::max);
    // A margin keeps the end markers whole; one epoch gets a unit-wide axis centred on it.
    let pad = if last > first {
        0.03 * (last - first)
    } else {
        0.5
    };
    let x = first - pad..last + pad;
    let x_labels = ((last - first) as usize + 1).min(10);
    let whole = |v: &f64| match (v - v.round()).abs() < 1e-6 {
        true => format!("{}", v.round()),
        false => String::new(),
    };
    let panel = |title, y, y_desc| Panel {
        title,
        x: x.clone(),
        y,
        x_desc: "epoch",
        y_desc,
        x_labels,
        x_format: &whole,
        x_grid: true,
    };

    let sets: Vec<&str> = m
        .columns
        .iter()
        .filter_map(|c| c.strip_suffix("_mAP"))
        .collect();
    let is_loss = |c: &&String| !c.ends_with("_mAP") && !c.ends_with("_rank1");
    let losses: Vec<(&str, Points)> = m.columns[2..]
        .iter()
        .filter(is_loss)
        .map(|c| (c.as_str(), m.series(c)))
        .collect();
    let lr = m.series("lr");
    let percent = |s: Points| -> Points { s.into_iter().map(|(e, v)| (e, 100.0 * v)).collect() };
    let evals: Vec<(&str, Points, Points)> = sets
        .iter()
        .map(|s| {
            let map = percent(m.series(&format!("{s}_mAP")));
            (*s, map, percent(m.series(&format!("{s}_rank1"))))
        })
        .filter(|(_, map, r1)| !map.is_empty() || !r1.is_empty())
        .collect();

    render_png(out_png, (1200, 400), |root| {
        let panels = root.split_evenly((1, 3));

        let values = losses.iter().flat_map(|(_, s)| s.iter().map(|p| p.1));
        let mut chart = styled(&panels[0], panel("Loss terms", value_range(values), "loss"))?;
        for (k, (name, points)) in losses.iter().enumerate() {
            series(
                &mut chart,
                points,
                COLORS[k % COLORS.len()],
                Some(name),
                false,
            )?;
        }
        if !losses.is_empty() {
            let points: Vec<_> = losses.iter().flat_map(|l| l.1.iter().copied()).collect();
            let corner = emptiest_corner(&chart, &points);
            legend(&mut chart, corner)?;
        }

        let y = value_range(lr.iter().map(|p| p.1));
        let mut chart = styled(&panels[1], panel("Learning rate", y, "lr"))?;
        series(&mut chart, &lr, COLORS[0], None, false)?;

        let mut chart = styled(
            &panels[2],
            panel("Test sets", 0.0..100.0, "% (mAP solid, rank-1 dashed)"),
        )?;
        for (k, (set, map, rank1)) in evals.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            series(&mut chart, map, color, Some(set), false)?;
            series(&mut chart, rank1, color, None, true)?;
        }
        if evals.is_empty() {
            let centre = Pos::new(HPos::Center, VPos::Center);
            let style = TextStyle::from((FONT, 20))
                .color(&RGBColor(112, 128, 144))
                .pos(centre);
            let middle = ((x.start + x.end) / 2.0, 50.0);
            chart.draw_series(std::iter::once(Text::new("not evaluated", middle, style)))?;
        } else {
            let points: Vec<_> = evals
                .iter()
                .flat_map(|e| e.1.iter().chain(&e.2))
                .copied()
                .collect();
            let corner = emptiest_corner(&chart, &points);
            legend(&mut chart, corner)?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot draw {}", out_png.display()))
}

/// One method's line of a results table; values are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ResultRow {
    pub method: String,
    #[serde(rename = "old_mAP")]
    pub old_map: f64,
    pub old_rank1: f64,
    #[serde(rename = "new_mAP")]
    pub new_map: f64,
    pub new_rank1: f64,
}

/// Draws a results table (methods such as base, finetune, gd, simgd, agd) as a grouped
/// bar chart: per method, mAP and rank-1 on the old and on the new task, in %.
///
/// One function because it draws one figure: bars per method and task, then labels and
/// legend.
pub fn results_chart(
    rows: &[ResultRow],
    old_task: &str,
    new_task: &str,
    out_png: &Path,
) -> Result<()> {
    if rows.is_empty() {
        bail!("no results to draw into {}", out_png.display());
    }
    let bars = |r: &ResultRow| [r.old_map, r.old_rank1, r.new_map, r.new_rank1];
    for r in rows {
        if bars(r).iter().any(|v| !(0.0..=1.0).contains(v)) {
            bail!(
                "{}: results must be fractions in [0, 1], got {r:?}",
                r.method
            );
        }
    }
    let labels = [
        format!("{old_task} mAP"),
        format!("{old_task} rank-1"),
        format!("{new_task} mAP"),
        format!("{new_task} rank-1"),
    ];
    // Old task in blues, new task in oranges; rank-1 the lighter shade of its mAP.
    let colors = [
        COLORS[0],
        RGBColor(174, 199, 232),
        COLORS[1],
        RGBColor(255, 187, 120),
    ];
    let method = |v: &f64| match (v - v.round()).abs() < 1e-6 {
        true => rows
            .get(v.round() as usize)
            .map(|r| r.method.clone())
            .unwrap_or_default(),
        false => String::new(),
    };
    let width = (200 + 180 * rows.len() as u32).max(800);
    let title = format!("Old task {old_task}, new task {new_task}");
    render_png(out_png, (width, 450), |root| {
        let mut chart = styled(
            root,
            Panel {
                title: &title,
                // A spare slot on the right holds the legend, clear of the bars.
                x: -0.5..rows.len() as f64 + 0.5,
                y: 0.0..105.0,
                x_desc: "method",
                y_desc: "%",
                x_labels: rows.len() + 1,
                x_format: &method,
                x_grid: false,
            },
        )?;
        const BAR: f64 = 0.2;
        for (j, (label, &color)) in labels.iter().zip(&colors).enumerate() {
            let x0 = |i: usize| i as f64 - 2.0 * BAR + j as f64 * BAR;
            let values = rows.iter().map(|r| 100.0 * bars(r)[j]);
            chart
                .draw_series(values.clone().enumerate().map(|(i, v)| {
                    Rectangle::new(
                        [(x0(i) + 0.01, 0.0), (x0(i) + BAR - 0.01, v)],
                        color.filled(),
                    )
                }))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            let above = Pos::new(HPos::Center, VPos::Bottom);
            chart.draw_series(values.enumerate().map(|(i, v)| {
                let style = TextStyle::from((FONT, 11)).pos(above);
                Text::new(format!("{v:.1}"), (x0(i) + BAR / 2.0, v + 1.0), style)
            }))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
    .with_context(|| format!("cannot draw {}", out_png.display()))
}

/// A colour of the viridis map (perceptually even, readable in grey) at `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (94, 201, 98),
        (253, 231, 37),
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws a matrix of fractions in [0, 1] as a heat map (0 → 100 % on the viridis scale),
/// each cell labelled with its value in %; `None` cells (not evaluated) stay light grey.
/// Rows run top to bottom in the order given (a lifelong sequence's steps).
///
/// One function because it draws one figure: cells, their labels, then the axes' labels.
pub fn heat_map(
    title: &str,
    rows: &[String],
    columns: &[String],
    values: &[Vec<Option<f64>>],
    out_png: &Path,
) -> Result<()> {
    if rows.is_empty() || columns.is_empty() {
        bail!("no values to draw into {}", out_png.display());
    }
    if values.len() != rows.len() || values.iter().any(|r| r.len() != columns.len()) {
        bail!(
            "{}: a {}×{} heat map needs as many values",
            out_png.display(),
            rows.len(),
            columns.len()
        );
    }
    if let Some(v) = values
        .iter()
        .flatten()
        .flatten()
        .find(|v| !(0.0..=1.0).contains(*v))
    {
        bail!("heat map values must be fractions in [0, 1], got {v}");
    }
    let (n_rows, n_cols) = (rows.len(), columns.len());
    let longest = |labels: &[String]| labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let row_area = (8 * longest(rows) as u32 + 20).clamp(60, 260);
    let cell = 110u32;
    let width = (row_area + 40 + cell * n_cols as u32).max(600);
    let height = 140 + 70 * n_rows as u32;
    // Cell (i, j) is centred at (j, -i): rows read top to bottom.
    let at = |labels: &[String], v: f64| match (v - v.round()).abs() < 1e-6 {
        true => labels
            .get(v.round().abs() as usize)
            .cloned()
            .unwrap_or_default(),
        false => String::new(),
    };
    let column_label = |v: &f64| at(columns, *v);
    let row_label = |v: &f64| at(rows, -*v);
    render_png(out_png, (width, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(row_area)
            .build_cartesian_2d(-0.5..n_cols as f64 - 0.5, -(n_rows as f64) + 0.5..0.5)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n_cols + 1)
            .y_labels(n_rows + 1)
            .x_label_formatter(&column_label)
            .y_label_formatter(&row_label)
            .label_style((FONT, 13))
            .draw()?;
        let centre = Pos::new(HPos::Center, VPos::Center);
        for (i, row) in values.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (x, y) = (j as f64, -(i as f64));
                let fill = v.map_or(RGBColor(235, 235, 235), viridis);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.48, y - 0.46), (x + 0.48, y + 0.46)],
                    fill.filled(),
                )))?;
                let (text, color) = match v {
                    // Dark text on the light (yellow-green) end, white on the dark end.
                    Some(v) => (
                        format!("{:.1}", 100.0 * v),
                        if *v > 0.6 { BLACK } else { WHITE },
                    ),
                    None => ("–".to_string(), RGBColor(150, 150, 150)),
                };
                let style = TextStyle::from((FONT, 16)).color(&color).pos(centre);
                chart.draw_series(std::iter::once(Text::new(text, (x, y), style)))?;
            }
        }
        Ok(())
    })
    .with_context(|| format!("cannot draw {}", out_png.display()))
}
