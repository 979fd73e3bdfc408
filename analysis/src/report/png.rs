//! The figures as PNG and SVG for papers and notes. PNGs are drawn with plotters into memory and encoded with
//! the `png` crate, so a figure is written atomically like every other file of a run.
//!
//! Text is drawn with the bundled DejaVu Sans (`analysis/assets/fonts/`, its licence beside
//! it) through plotters' `ab_glyph` backend: no system fonts and no fontconfig are needed.
//! Log axes are drawn as linear axes over log10 of the values with 10^k tick labels, which
//! keeps one coordinate type for every figure.

use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::{Figure, Style, Values};

/// Size of every PNG, in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 700;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";
/// Legend entries shown before "… and N more".
const MAX_LEGEND: usize = 14;

fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the bundled DejaVu Sans font could not be loaded"));
    });
    result
}

/// The figure as PNG bytes.
pub fn figure_png(fig: &Figure) -> Result<Vec<u8>> {
    register_font()?;
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(fig, &root).map_err(|e| anyhow!("drawing figure {}: {e}", fig.id))?;
        root.present()
            .map_err(|e| anyhow!("drawing figure {}: {e}", fig.id))?;
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        // Figures are mostly flat colour: the best compression makes them several times
        // smaller for a few milliseconds more.
        encoder.set_compression(png::Compression::Best);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
    }
    Ok(out)
}

/// A coordinate as drawn: log10 on a log axis, the category index for names.
fn coords(values: &Values, log: bool) -> Vec<f64> {
    match values {
        Values::Numbers(v) => v.iter().map(|&x| if log { x.log10() } else { x }).collect(),
        Values::Categories(c) => (0..c.len()).map(|i| i as f64).collect(),
    }
}

/// The range covering every finite value (and the reference levels on y), padded a little.
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { 1.0 };
    (lo - pad * span, hi + pad * span)
}

fn tick_label(v: f64, log: bool) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !log {
        return if v.abs() >= 1e4 || v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            trim(format!("{v:.3}"))
        };
    }
    let p = 10f64.powf(v);
    if (1e-2..1e4).contains(&p) {
        // Two significant digits: 3.2, 0.32, 0.032, 32.
        let decimals = (1 - p.log10().floor() as i32).max(0) as usize;
        trim(format!("{p:.decimals$}"))
    } else if (v - v.round()).abs() < 1e-9 {
        format!("1e{}", v.round())
    } else {
        format!("{p:.1e}")
    }
}

/// Viridis from five anchors, linearly interpolated (enough for a heatmap at print size).
fn viridis(t: f64) -> RGBColor {
    const ANCHORS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The figure as an SVG document (text as text, in the DejaVu Sans family).
pub fn figure_svg(fig: &Figure) -> Result<String> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(fig, &root).map_err(|e| anyhow!("drawing figure {}: {e}", fig.id))?;
        root.present()
            .map_err(|e| anyhow!("drawing figure {}: {e}", fig.id))?;
    }
    Ok(svg)
}

/// Draws `fig` on any plotters backend (the PNG bitmap, the SVG document).
fn draw<DB: DrawingBackend>(fig: &Figure, root: &DrawingArea<DB, Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let xs: Vec<Vec<f64>> = fig.traces.iter().map(|t| coords(&t.x, fig.x.log)).collect();
    let ys: Vec<Vec<f64>> = fig.traces.iter().map(|t| coords(&t.y, fig.y.log)).collect();
    let bars = fig.traces.iter().any(|t| t.style == Style::HorizontalBars);
    let heatmap = fig
        .traces
        .iter()
        .any(|t| matches!(t.style, Style::Heatmap { .. }));
    let level_ys = fig
        .levels
        .iter()
        .map(|l| if fig.y.log { l.value.log10() } else { l.value });
    let (mut x0, mut x1) = range(
        xs.iter()
            .flatten()
            .copied()
            .chain(if bars { Some(0.0) } else { None }),
        if heatmap { 0.0 } else { 0.02 },
    );
    let (mut y0, mut y1) = range(ys.iter().flatten().copied().chain(level_ys), 0.04);
    if bars || heatmap {
        let n = ys.iter().map(Vec::len).max().unwrap_or(1) as f64;
        if bars {
            (y0, y1) = (-0.6, n - 0.4);
        } else {
            (y0, y1) = range(ys.iter().flatten().copied(), 0.5 / n.max(1.0));
            let m = xs.iter().map(Vec::len).max().unwrap_or(1) as f64;
            let (a, b) = range(xs.iter().flatten().copied(), 0.5 / m.max(1.0));
            (x0, x1) = (a, b);
        }
    }
    let categories: Vec<String> = fig
        .traces
        .iter()
        .find_map(|t| match &t.y {
            Values::Categories(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let y_label_width = categories
        .iter()
        .map(|c| c.chars().count() as u32 * 7 + 20)
        .max()
        .unwrap_or(70)
        .max(70);

    let mut chart = ChartBuilder::on(root)
        .caption(&fig.title, (FONT_FAMILY, 19))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(y_label_width)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (x_log, y_log) = (fig.x.log, fig.y.log);
    let y_names = categories.clone();
    let y_format = move |v: &f64| {
        if y_names.is_empty() {
            tick_label(*v, y_log)
        } else {
            let i = v.round();
            if (v - i).abs() < 0.01 && i >= 0.0 && (i as usize) < y_names.len() {
                y_names[i as usize].clone()
            } else {
                String::new()
            }
        }
    };
    chart
        .configure_mesh()
        .x_desc(fig.x.title.as_str())
        .y_desc(fig.y.title.as_str())
        .x_label_formatter(&|v| tick_label(*v, x_log))
        .y_label_formatter(&y_format)
        .y_labels(if categories.is_empty() {
            10
        } else {
            categories.len() * 4
        })
        .label_style((FONT_FAMILY, 13))
        .axis_desc_style((FONT_FAMILY, 15))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;

    let grey = RGBColor(120, 120, 120);
    // Neighbouring bands alternate in shade, and their labels step down a line each, so that
    // a short band (memorisation in a grokking run) neither merges with the next nor hides
    // its label.
    for (i, band) in fig.bands.iter().enumerate() {
        let (a, b) = if x_log {
            (band.from.log10(), band.to.log10())
        } else {
            (band.from, band.to)
        };
        let shade = if i % 2 == 0 { 0.14 } else { 0.07 };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, y0), (b, y1)],
            grey.mix(shade).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            band.label.clone(),
            (a, y1 - 0.03 * (i % 3) as f64 * (y1 - y0)),
            (FONT_FAMILY, 11).into_font().color(&grey),
        )))?;
    }
    for level in &fig.levels {
        let y = if y_log {
            level.value.log10()
        } else {
            level.value
        };
        chart.draw_series(DashedLineSeries::new(
            vec![(x0, y), (x1, y)],
            6,
            4,
            grey.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            level.label.clone(),
            (x0 + 0.01 * (x1 - x0), y),
            (FONT_FAMILY, 11).into_font().color(&grey),
        )))?;
    }

    for (i, trace) in fig.traces.iter().enumerate() {
        if trace.legend_only {
            continue;
        }
        let (r, g, b) = fig.color_of(i);
        let color = RGBColor(r, g, b);
        let points: Vec<(f64, f64)> = xs[i]
            .iter()
            .zip(&ys[i])
            .map(|(&x, &y)| (x, y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let drawn = match &trace.style {
            Style::Line | Style::LinesMarkers => {
                if trace.style == Style::LinesMarkers && points.len() <= 400 {
                    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                }
                Some(chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?)
            }
            Style::DashedLine => Some(chart.draw_series(DashedLineSeries::new(
                points,
                8,
                5,
                color.stroke_width(2),
            ))?),
            Style::Markers => {
                Some(chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?)
            }
            Style::HorizontalBars => Some(chart.draw_series(points.iter().map(|&(v, k)| {
                Rectangle::new([(0.0, k - 0.38), (v, k + 0.38)], color.filled())
            }))?),
            Style::Heatmap { z, colorbar } => {
                let cells = z
                    .iter()
                    .flatten()
                    .flatten()
                    .copied()
                    .filter(|v| v.is_finite());
                let (lo, hi) = cells.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
                let edges = |c: &[f64]| -> Vec<f64> {
                    let n = c.len();
                    (0..=n)
                        .map(|k| match (k, n) {
                            (_, 1) => c[0] - 0.5 + k as f64,
                            (0, _) => c[0] - (c[1] - c[0]) / 2.0,
                            (k, n) if k == n => c[n - 1] + (c[n - 1] - c[n - 2]) / 2.0,
                            (k, _) => (c[k - 1] + c[k]) / 2.0,
                        })
                        .collect()
                };
                if xs[i].is_empty() || ys[i].is_empty() {
                    None
                } else {
                    let (ex, ey) = (edges(&xs[i]), edges(&ys[i]));
                    let span = if hi > lo { hi - lo } else { 1.0 };
                    let mut rects = Vec::new();
                    for (row, values) in z.iter().enumerate() {
                        for (col, v) in values.iter().enumerate() {
                            if let Some(v) = v.filter(|v| v.is_finite()) {
                                rects.push(Rectangle::new(
                                    [(ex[col], ey[row]), (ex[col + 1], ey[row + 1])],
                                    viridis((v - lo) / span).filled(),
                                ));
                            }
                        }
                    }
                    chart.draw_series(rects)?;
                    let label = format!(
                        "colour: {colorbar} from {lo:.3} (dark purple) to {hi:.3} (yellow)"
                    );
                    root.draw(&Text::new(
                        label,
                        (WIDTH as i32 - 420, 42),
                        (FONT_FAMILY, 12).into_font(),
                    ))?;
                    None
                }
            }
        };
        if let Some(series) = drawn {
            if i < MAX_LEGEND {
                series.label(trace.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled())
                });
            }
        }
    }
    let shown = fig.traces.iter().filter(|t| !t.legend_only).count();
    let legend = !bars && !heatmap && shown > 0;
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_FAMILY, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
    }
    if shown > MAX_LEGEND && legend {
        root.draw(&Text::new(
            format!("(legend: first {MAX_LEGEND} of {shown} curves)"),
            (WIDTH as i32 - 260, HEIGHT as i32 - 18),
            (FONT_FAMILY, 11).into_font(),
        ))?;
    }
    Ok(())
}
