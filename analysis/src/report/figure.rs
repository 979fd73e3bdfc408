//! The figures of a report, described independently of any plotting library: the page
//! (`html`) turns them into plotly.js JSON and `png` draws them with plotters, so the
//! interactive figure and the PNG for a paper show the same traces.

use std::collections::BTreeMap;

/// One figure: a question, two axes and what is drawn on them.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable name: the HTML element id and the PNG file stem (`figures/{id}.png`).
    pub id: String,
    /// The question the figure answers.
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub traces: Vec<Trace>,
    /// Shaded stretches of x (plateaus, a spike's batches), each with a label.
    pub bands: Vec<Band>,
    /// Horizontal reference levels (ln 10, the carry entropy, the zero floor).
    pub levels: Vec<Level>,
    /// A sentence under the figure: how to read it, or what is missing from it.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Axis {
    /// Quantity and unit, e.g. "loss (nats)".
    pub title: String,
    pub log: bool,
}

impl Axis {
    pub fn linear(title: &str) -> Axis {
        Axis {
            title: title.to_string(),
            log: false,
        }
    }

    pub fn log(title: &str) -> Axis {
        Axis {
            title: title.to_string(),
            log: true,
        }
    }
}

/// Coordinates along one axis: numbers, or category names (parameter groups, option values).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Numbers(Vec<f64>),
    Categories(Vec<String>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Numbers(v) => v.len(),
            Values::Categories(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Style {
    Line,
    DashedLine,
    Markers,
    LinesMarkers,
    /// Horizontal bars: `x` holds the lengths, `y` the category names.
    HorizontalBars,
    /// `z[row][column]` over `y` (rows) and `x` (columns); `None` cells are empty.
    Heatmap {
        z: Vec<Vec<Option<f64>>>,
        colorbar: String,
    },
}

#[derive(Clone, Debug)]
pub struct Trace {
    /// The legend entry.
    pub name: String,
    pub style: Style,
    pub x: Values,
    pub y: Values,
    /// Traces with the same group toggle together in the legend.
    pub group: Option<String>,
    /// Colour index into the palette; traces of one series share it.
    pub color: Option<usize>,
    /// Hidden until clicked in the legend (secondary series that would crowd the figure).
    pub legend_only: bool,
    /// Values the page may colour or group by (the options of a run in a sweep).
    pub meta: BTreeMap<String, String>,
}

impl Trace {
    pub fn new(name: impl Into<String>, style: Style, x: Values, y: Values) -> Trace {
        Trace {
            name: name.into(),
            style,
            x,
            y,
            group: None,
            color: None,
            legend_only: false,
            meta: BTreeMap::new(),
        }
    }

    /// A numeric series.
    pub fn series(name: impl Into<String>, style: Style, x: Vec<f64>, y: Vec<f64>) -> Trace {
        Trace::new(name, style, Values::Numbers(x), Values::Numbers(y))
    }

    pub fn in_group(mut self, group: impl Into<String>) -> Trace {
        self.group = Some(group.into());
        self
    }

    pub fn colored(mut self, color: usize) -> Trace {
        self.color = Some(color);
        self
    }
}

#[derive(Clone, Debug)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
}

#[derive(Clone, Debug)]
pub struct Level {
    pub value: f64,
    pub label: String,
}

/// Colours shared by the page and the PNGs (plotly's default cycle, so both look alike).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

impl Figure {
    pub fn new(id: impl Into<String>, title: impl Into<String>, x: Axis, y: Axis) -> Figure {
        Figure {
            id: id.into(),
            title: title.into(),
            x,
            y,
            traces: Vec::new(),
            bands: Vec::new(),
            levels: Vec::new(),
            note: None,
        }
    }

    /// Adds `trace` if it has a point to draw: a series with no rows (a metric or digit the
    /// table does not have) gets no legend entry.
    pub fn push_series(&mut self, trace: Trace) {
        if !trace.x.is_empty() {
            self.traces.push(trace);
        }
    }

    /// The colour of trace `i`: its own index, or its position.
    pub fn color_of(&self, i: usize) -> (u8, u8, u8) {
        PALETTE[self.traces[i].color.unwrap_or(i) % PALETTE.len()]
    }
}
