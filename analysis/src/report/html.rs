//! The self-contained report page: figure data as plotly.js JSON (built with serde_json) and
//! the vendored plotly.js bundle inlined once, so the file works offline and can be mailed.
//!
//! The bundle is plotly.js-cartesian-dist-min (MIT; version and licence in
//! `analysis/assets/plotly/`): the basic bundle has no heatmap trace, and the full one
//! carries MathJax and triples the page.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{json, Map, Value};

use super::figure::{Figure, Style, Values, PALETTE};
use super::page::Page;

/// plotly.js, minified: inlined once per page.
const PLOTLY_JS: &str = include_str!("../../assets/plotly/plotly-cartesian.min.js");
pub const PLOTLY_VERSION: &str = "4.1.1";

/// Numbers written as short as they can be read back: integers without a fraction, others
/// with f32's shortest representation (the logged values are f32; seven digits are more than a
/// figure shows), non-finite values as null (a gap).
struct Numbers<'a>(&'a [f64]);

impl Serialize for Numbers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &v in self.0 {
            if !v.is_finite() {
                seq.serialize_element(&Option::<f32>::None)?;
            } else if v.fract() == 0.0 && v.abs() < 1e15 {
                seq.serialize_element(&(v as i64))?;
            } else {
                seq.serialize_element(&(v as f32))?;
            }
        }
        seq.end()
    }
}

fn values_json(v: &Values) -> Value {
    match v {
        // Through a string, so the compact numbers survive into the Value tree.
        Values::Numbers(n) => serde_json::from_str(
            &serde_json::to_string(&Numbers(n)).expect("numbers always serialise"),
        )
        .expect("serde_json reads what it wrote"),
        Values::Categories(c) => json!(c),
    }
}

fn rgb((r, g, b): (u8, u8, u8)) -> String {
    format!("rgb({r},{g},{b})")
}

/// The quantity of an axis without its unit: "loss (nats, log scale)" -> "loss".
fn short(title: &str) -> &str {
    title.split(" (").next().unwrap_or(title)
}

/// One figure as plotly's `{data, layout}` plus the page's own fields.
pub fn figure_json(fig: &Figure) -> Value {
    let (xs, ys) = (short(&fig.x.title), short(&fig.y.title));
    let data: Vec<Value> = fig
        .traces
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let color = rgb(fig.color_of(i));
            // Batches as integers ("137", not "137.0" or "0.137k").
            let hx = match t.x {
                Values::Numbers(_) => "%{x:.10~g}",
                Values::Categories(_) => "%{x}",
            };
            let mut trace = Map::new();
            trace.insert("name".into(), json!(t.name));
            trace.insert("x".into(), values_json(&t.x));
            trace.insert("y".into(), values_json(&t.y));
            match &t.style {
                Style::Heatmap { z, colorbar } => {
                    let rows: Vec<Vec<f64>> = z
                        .iter()
                        .map(|r| r.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
                        .collect();
                    let rows: Vec<Value> = rows
                        .iter()
                        .map(|r| values_json(&Values::Numbers(r.clone())))
                        .collect();
                    trace.insert("type".into(), json!("heatmap"));
                    trace.insert("z".into(), Value::Array(rows));
                    trace.insert("colorscale".into(), json!("Viridis"));
                    trace.insert("colorbar".into(), json!({"title": {"text": colorbar}}));
                    trace.insert(
                        "hovertemplate".into(),
                        json!(format!(
                            "{xs} {hx}<br>{ys} %{{y}}<br>{colorbar} %{{z:.4g}}<extra></extra>"
                        )),
                    );
                }
                Style::HorizontalBars => {
                    trace.insert("type".into(), json!("bar"));
                    trace.insert("orientation".into(), json!("h"));
                    trace.insert("marker".into(), json!({"color": color}));
                    trace.insert(
                        "hovertemplate".into(),
                        json!(format!("%{{y}}<br>{xs} %{{x:.4g}}<extra></extra>")),
                    );
                }
                style => {
                    let mode = match style {
                        Style::Markers => "markers",
                        Style::LinesMarkers => "lines+markers",
                        _ => "lines",
                    };
                    let dash = if *style == Style::DashedLine {
                        "dash"
                    } else {
                        "solid"
                    };
                    trace.insert("type".into(), json!("scatter"));
                    trace.insert("mode".into(), json!(mode));
                    trace.insert(
                        "line".into(),
                        json!({"color": color, "width": 1.5, "dash": dash}),
                    );
                    let size = if *style == Style::Markers { 8 } else { 4 };
                    trace.insert("marker".into(), json!({"color": color, "size": size}));
                    trace.insert(
                        "hovertemplate".into(),
                        json!(format!(
                            "{xs} {hx}<br>{ys} %{{y:.6g}}<extra>%{{fullData.name}}</extra>"
                        )),
                    );
                }
            }
            if let Some(g) = &t.group {
                trace.insert("legendgroup".into(), json!(g));
            }
            if t.legend_only {
                trace.insert("visible".into(), json!("legendonly"));
            }
            if !t.meta.is_empty() {
                trace.insert("meta".into(), json!(t.meta));
            }
            Value::Object(trace)
        })
        .collect();

    let mut shapes = Vec::new();
    let mut annotations = Vec::new();
    for band in &fig.bands {
        shapes.push(json!({
            "type": "rect", "xref": "x", "yref": "paper", "x0": band.from, "x1": band.to,
            "y0": 0, "y1": 1, "fillcolor": "rgba(120,120,120,0.12)", "line": {"width": 0},
            "layer": "below"
        }));
        annotations.push(json!({
            "xref": "x", "yref": "paper", "x": (band.from + band.to) / 2.0, "y": 1,
            "yanchor": "bottom", "showarrow": false, "text": band.label,
            "font": {"size": 10, "color": "#555"}
        }));
    }
    for level in &fig.levels {
        shapes.push(json!({
            "type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1,
            "y0": level.value, "y1": level.value,
            "line": {"color": "#777", "width": 1, "dash": "dot"}
        }));
        // Annotations on a log axis take log10 of the value (shapes take the value).
        let y = if fig.y.log {
            level.value.log10()
        } else {
            level.value
        };
        annotations.push(json!({
            "xref": "paper", "yref": "y", "x": 1, "y": y, "xanchor": "right",
            "yanchor": "bottom", "showarrow": false, "text": level.label,
            "font": {"size": 10, "color": "#555"}
        }));
    }
    // Category names that look like numbers ("8", "16") stay categories, evenly spaced.
    let categorical = |pick: fn(&super::figure::Trace) -> &Values| {
        fig.traces
            .iter()
            .any(|t| matches!(pick(t), Values::Categories(_)))
    };
    let (x_categories, y_categories) = (categorical(|t| &t.x), categorical(|t| &t.y));
    let axis = |a: &super::figure::Axis, categories: bool| {
        let kind = match (a.log, categories) {
            (_, true) => "category",
            (true, false) => "log",
            (false, false) => "-",
        };
        json!({"title": {"text": a.title}, "type": kind, "automargin": true,
               "exponentformat": "power"})
    };
    let horizontal_bars = fig.traces.iter().any(|t| t.style == Style::HorizontalBars);
    let height = if horizontal_bars {
        let bars = fig.traces.iter().map(|t| t.y.len()).max().unwrap_or(0);
        (200 + 18 * bars).max(400)
    } else {
        460
    };
    json!({
        "id": fig.id,
        "note": fig.note,
        "data": data,
        "layout": {
            "title": {"text": fig.title, "x": 0.02, "xanchor": "left", "font": {"size": 15}},
            "xaxis": axis(&fig.x, x_categories),
            "yaxis": axis(&fig.y, y_categories),
            "shapes": shapes,
            "annotations": annotations,
            "hovermode": "closest",
            "height": height,
            "margin": {"t": 60, "r": 20},
            "legend": {"font": {"size": 11}},
            "colorway": PALETTE.iter().map(|&c| rgb(c)).collect::<Vec<_>>(),
        }
    })
}

/// Escapes text for HTML; five replacements do not justify a dependency.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page as one HTML string.
pub fn page_html(page: &Page) -> String {
    let figures: Vec<Value> = page.figures().map(figure_json).collect();
    // `</` cannot appear inside a script element; `<\/` is the same JSON string.
    let data = serde_json::to_string(&figures)
        .expect("figure JSON always serialises")
        .replace("</", "<\\/");
    let mut body = String::new();
    body.push_str(&format!("<h1>{}</h1>\n", escape(&page.title)));
    if !page.facts.is_empty() {
        body.push_str("<table class=\"facts\">\n");
        for (k, v) in &page.facts {
            body.push_str(&format!(
                "<tr><th>{}</th><td>{}</td></tr>\n",
                escape(k),
                escape(v)
            ));
        }
        body.push_str("</table>\n");
    }
    if !page.findings.is_empty() {
        body.push_str("<h2>Phases in words</h2>\n<ul class=\"findings\">\n");
        for f in &page.findings {
            body.push_str(&format!("<li>{}</li>\n", escape(f)));
        }
        body.push_str("</ul>\n");
    }
    if !page.missing.is_empty() {
        body.push_str("<h2>Not shown</h2>\n<ul class=\"missing\">\n");
        for m in &page.missing {
            body.push_str(&format!("<li>{}</li>\n", escape(m)));
        }
        body.push_str("</ul>\n");
    }
    if let Some(table) = &page.table {
        body.push_str("<h2>Sweep points</h2>\n<table class=\"status\"><tr>");
        for h in &table.header {
            body.push_str(&format!("<th>{}</th>", escape(h)));
        }
        body.push_str("</tr>\n");
        for (row, failed) in table.rows.iter().zip(&table.failed) {
            body.push_str(if *failed {
                "<tr class=\"failed\">"
            } else {
                "<tr>"
            });
            for cell in row {
                body.push_str(&format!("<td>{}</td>", escape(cell)));
            }
            body.push_str("</tr>\n");
        }
        body.push_str("</table>\n");
    }
    if !page.selectable.is_empty() {
        let options: String = page
            .selectable
            .iter()
            .map(|o| format!("<option>{}</option>", escape(o)))
            .collect();
        body.push_str(&format!(
            "<p class=\"controls\">Colour curves by <select id=\"color-by\">{options}</select> \
             and group them (legend) by <select id=\"group-by\">{options}</select></p>\n"
        ));
    }
    body.push_str("<nav><b>Figures:</b> ");
    for section in &page.sections {
        if let Some(first) = section.figures.first() {
            body.push_str(&format!(
                "<a href=\"#{}\">{}</a> ",
                escape(&first.id),
                escape(&section.heading)
            ));
        }
    }
    body.push_str("</nav>\n");
    for section in &page.sections {
        body.push_str(&format!("<h2>{}</h2>\n", escape(&section.heading)));
        for fig in &section.figures {
            body.push_str(&format!(
                "<div class=\"figure\" id=\"{}\"></div>\n",
                escape(&fig.id)
            ));
            if let Some(note) = &fig.note {
                body.push_str(&format!("<p class=\"note\">{}</p>\n", escape(note)));
            }
        }
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ text-align: left; padding: 2px 10px; border-bottom: 1px solid #ddd; font-size: 13px; }}
tr.failed td {{ background: #fde2e2; }}
.missing li {{ color: #a33; }}
.note {{ color: #555; font-size: 13px; margin: 0 0 1.5em 1em; }}
.figure {{ min-height: 400px; }}
nav a {{ margin-right: 1em; }}
</style>
<script>
// Records script errors before anything else runs, so a test (or a reader) can ask for them.
window.reportErrors = [];
window.addEventListener('error', e => window.reportErrors.push(String(e.message)));
</script>
<script>/* plotly.js {version} (MIT licence), inlined: the page needs no network */
{plotly}</script>
</head>
<body>
{body}
<script type="application/json" id="report-data">{data}</script>
<script>
{script}
</script>
</body>
</html>
"#,
        title = escape(&page.title),
        version = PLOTLY_VERSION,
        plotly = PLOTLY_JS,
        body = body,
        data = data,
        script = PAGE_SCRIPT,
    )
}

/// Draws every figure; on a sweep page, colours and groups the curves by the chosen options.
const PAGE_SCRIPT: &str = r#"
const figures = JSON.parse(document.getElementById('report-data').textContent);
window.reportStatus = {figures: figures.length, rendered: 0};
const palette = figures.length ? figures[0].layout.colorway : [];
function byValue(a, b) {
  const x = Number(a), y = Number(b);
  return (isNaN(x) || isNaN(y)) ? String(a).localeCompare(String(b)) : x - y;
}
function regroup() {
  const colorSel = document.getElementById('color-by');
  const groupSel = document.getElementById('group-by');
  if (!colorSel) return;
  const colorBy = colorSel.value, groupBy = groupSel.value;
  for (const f of figures) {
    const gd = document.getElementById(f.id);
    if (!gd.data || !gd.data.some(t => t.meta && t.meta[colorBy] !== undefined)) continue;
    const idx = gd.data.map((t, i) => i).filter(i => gd.data[i].meta);
    const values = [...new Set(idx.map(i => gd.data[i].meta[colorBy]))].sort(byValue);
    const seen = new Set();
    const update = {'line.color': [], 'marker.color': [], legendgroup: [], name: [], showlegend: [], 'legendgrouptitle.text': []};
    for (const i of idx) {
      const m = gd.data[i].meta;
      const color = palette[values.indexOf(m[colorBy]) % palette.length];
      const key = m[groupBy] + '|' + m[colorBy];
      update['line.color'].push(color);
      update['marker.color'].push(color);
      update.legendgroup.push(groupBy + '=' + m[groupBy]);
      update['legendgrouptitle.text'].push(groupBy + '=' + m[groupBy]);
      update.name.push(colorBy + '=' + m[colorBy]);
      update.showlegend.push(!seen.has(key));
      seen.add(key);
    }
    Plotly.restyle(gd, update, idx);
  }
}
const drawn = figures.map(f => Plotly.newPlot(document.getElementById(f.id), f.data, f.layout,
  {responsive: true, displaylogo: false}).then(() => { window.reportStatus.rendered += 1; }));
Promise.all(drawn).then(() => {
  const colorSel = document.getElementById('color-by');
  if (colorSel) {
    const groupSel = document.getElementById('group-by');
    colorSel.value = colorSel.dataset.initial || colorSel.options[0].value;
    groupSel.value = groupSel.options[Math.min(1, groupSel.options.length - 1)].value;
    colorSel.addEventListener('change', regroup);
    groupSel.addEventListener('change', regroup);
    regroup();
  }
  window.reportStatus.done = true;
}).catch(e => window.reportErrors.push(String(e)));
"#;
