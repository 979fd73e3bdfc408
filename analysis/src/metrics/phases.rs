//! Plateaus of a loss curve: the levels a digit's loss sits on (ln 10, the carry entropy, zero)
//! and the batches at which it leaves and reaches them.
//!
//! The loss of a target digit falls in steps: it sits on ln 10 (the model knows nothing about
//! the digit), drops to the entropy of the carry into that digit (about ln 2: the model knows the
//! naive sum but not the carry) and then to zero. This module turns a curve (the eval loss per
//! snapshot, or the per-batch training log) into those plateaus and the batches of the steps, so
//! that statements such as "d_model 8 / 8 heads sits on ln 10 until about batch 1600" are
//! measured the same way in every run.
//!
//! Method, all in batch units so that a curve sampled every 50 batches and one sampled every
//! batch give the same answer:
//! 1. smooth the loss with a centred running median over `smoothing_batches` batches (robust to
//!    spikes, and on a noise-free monotone stretch exact, so a drop is not shifted in time);
//! 2. take the least-squares slope of the smoothed log-loss over the same centred window (and at
//!    least the neighbouring samples); a sample is flat when that slope, per 1000 batches, is
//!    below `flat_slope` in magnitude;
//! 3. a run of flat samples is the core of a plateau. The slope window reaches half a window
//!    ahead, so a core ends before the curve visibly moves; each core is therefore extended up to
//!    the furthest sample, before the next core, whose smoothed log-loss is still within
//!    `edge_tolerance` of the core's edge value;
//! 4. every sample whose smoothed loss is below `zero_floor` is on the zero plateau, although
//!    its log-loss keeps falling under weight decay;
//! 5. each plateau is labelled by the nearest reference level within `level_tolerance` in
//!    log-loss, or [`OTHER_LEVEL`]; plateaus shorter than `min_plateau_batches` are dropped, and
//!    consecutive plateaus on the same level are merged (a spike in between does not end one).
//!
//! The defaults were chosen on calibration runs of an eager PyTorch implementation of the same
//! model and AdamW (as in `benches/torch_reference.py`; prompt layout, 5 digits, batch 128, AdamW lr 1e-3; d_model
//! 8 to 128, target digits 0 to 2; 4,000 to 10,000 batches), each with the per-batch training
//! loss and the loss on 8,192 fixed examples every 50 batches. With weight decay 1.0 none of them
//! left ln 10; the calibration used the six runs with weight decay 0.1 or 0.3. What they showed: ln 10 plateaus sit within 0.005 of ln 10 and
//! drift by less than 0.01 per 1000 batches; curves leave ln 10 sharply (d_model 8 / 8 heads,
//! tens digit: 2.298 at batch 1550, 2.291 at 1600, 2.268 at 1650, 2.224 at 1700) but then often
//! slide rather than step, with slow stretches at 1.35 to 2.0 and around 0.87 (hundreds digit,
//! above H(0.495) = 0.69), and none of them sat on the carry entropy itself.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Name of the reference level ln 10: the model knows nothing about the digit.
pub const LN10_LEVEL: &str = "ln10";
/// Name of the reference level H(carry): the model knows the naive sum, not the carry.
pub const CARRY_ENTROPY_LEVEL: &str = "carry_entropy";
/// Name of the zero level: loss below [`PhaseOptions::zero_floor`].
pub const ZERO_LEVEL: &str = "zero";
/// Label of a plateau (or final loss) that is not near any reference level.
pub const OTHER_LEVEL: &str = "other";

/// Default [`PhaseOptions::smoothing_batches`]: 200 batches: a median of 200 samples of a
/// per-batch training log (whose smoothed log-loss then scatters by about 0.005 on the plateaus of
/// the calibration runs) and of 5 samples of an eval curve taken every 50 batches, while the
/// shortest plateaus of those runs (500 batches or more) are several windows long.
pub const DEFAULT_SMOOTHING_BATCHES: u64 = 200;
/// Default [`PhaseOptions::flat_slope`]: 0.2, i.e. the loss changes by less than about 20% per
/// 1000 batches. In the calibration runs ln 10 plateaus drift by less than 0.01 per 1000
/// batches and drops fall at 0.35 (the gentlest step off ln 10) to 3 per 1000; slides between
/// levels run at 0.1 to 0.3, so the slower ones count as plateaus (labelled "other", with their
/// loss) and the faster ones as descent.
pub const DEFAULT_FLAT_SLOPE: f64 = 0.2;
/// Default [`PhaseOptions::min_plateau_batches`]: 200 batches, one smoothing window: a shorter
/// flat stretch cannot be told from the bend at the top or bottom of a drop.
pub const DEFAULT_MIN_PLATEAU_BATCHES: u64 = 200;
/// Default [`PhaseOptions::level_tolerance`]: 0.1 in natural-log units (within about 10% of the
/// level). Real ln 10 plateaus sit within 0.005 of it, while the first step off ln 10 in the
/// calibration runs (d_model 8 / 8 heads, tens digit) lands at 2.0, only 0.13 below: with 0.3
/// that stretch was labelled ln 10 too and "leaves ln 10" moved from batch 1650 to 2800. The
/// price: a plateau well above the carry entropy (0.87 for the hundreds digit, 0.23 above) is
/// "other"; pass a wider tolerance to call it the carry-entropy plateau.
pub const DEFAULT_LEVEL_TOLERANCE: f64 = 0.1;
/// Default [`PhaseOptions::edge_tolerance`]: 0.02 in natural-log units (2% of the loss), four
/// times the scatter of the smoothed log-loss on real plateaus. It puts "leaves ln 10" of the
/// d_model 8 / 8 heads tens-digit run at batch 1650 on the eval curve and 1687 on the training
/// log (the eye says "about 1600"); 0.05 put it at 1700.
pub const DEFAULT_EDGE_TOLERANCE: f64 = 0.02;
/// Default [`PhaseOptions::zero_floor`]: 1e-3 nats: the model is then right
/// on all but about one example in a thousand, and weight decay, not learning, moves the loss.
pub const DEFAULT_ZERO_FLOOR: f64 = 1e-3;

/// Thresholds of the plateau detector; see the module documentation for how each is used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseOptions {
    /// Width, in batches, of the centred windows of the running median and of the slope.
    pub smoothing_batches: u64,
    /// A sample is flat when |d ln(loss) / d batch| * 1000 is below this.
    pub flat_slope: f64,
    /// Shortest stretch, in batches from first to last sample, that counts as a plateau.
    pub min_plateau_batches: u64,
    /// A plateau is labelled by the nearest reference level if |ln(its loss) - ln(level)| is
    /// below this, else [`OTHER_LEVEL`].
    pub level_tolerance: f64,
    /// A plateau extends past its flat core up to the furthest sample whose smoothed ln(loss) is
    /// within this of the core's edge value.
    pub edge_tolerance: f64,
    /// A loss below this is on the [`ZERO_LEVEL`].
    pub zero_floor: f64,
}

impl Default for PhaseOptions {
    fn default() -> Self {
        PhaseOptions {
            smoothing_batches: DEFAULT_SMOOTHING_BATCHES,
            flat_slope: DEFAULT_FLAT_SLOPE,
            min_plateau_batches: DEFAULT_MIN_PLATEAU_BATCHES,
            level_tolerance: DEFAULT_LEVEL_TOLERANCE,
            edge_tolerance: DEFAULT_EDGE_TOLERANCE,
            zero_floor: DEFAULT_ZERO_FLOOR,
        }
    }
}

impl PhaseOptions {
    /// Every option in range, named by its `analyze` flag: the slope, tolerances and floor
    /// positive and finite (a width of 0 batches means no smoothing, or every plateau kept).
    /// The analyses call it before writing anything, so a bad option never leaves some tables
    /// written and others not.
    pub fn validate(&self) -> Result<(), SeriesError> {
        let positive = |value: f64, name: &'static str| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(SeriesError::InvalidOption { name })
            }
        };
        positive(self.flat_slope, "--flat-slope")?;
        positive(self.level_tolerance, "--level-tolerance")?;
        positive(self.edge_tolerance, "edge_tolerance")?;
        positive(self.zero_floor, "--zero-floor")
    }
}

/// Why a curve could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesError {
    /// `batches` and `loss` have different lengths.
    LengthMismatch { batches: usize, losses: usize },
    /// `batches[index + 1]` is not greater than `batches[index]`.
    BatchesNotIncreasing { index: usize },
    /// No sample has a finite, non-negative loss (includes the empty curve).
    NoUsableLoss,
    /// An option is out of range (zero, negative or not finite).
    InvalidOption { name: &'static str },
}

impl fmt::Display for SeriesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeriesError::LengthMismatch { batches, losses } => {
                write!(f, "{batches} batches but {losses} losses")
            }
            SeriesError::BatchesNotIncreasing { index } => write!(
                f,
                "batches are not strictly increasing at positions {index} and {}",
                index + 1
            ),
            SeriesError::NoUsableLoss => write!(f, "no finite, non-negative loss in the curve"),
            SeriesError::InvalidOption { name } => {
                write!(f, "option {name} must be positive and finite")
            }
        }
    }
}

impl std::error::Error for SeriesError {}

/// Checks that a curve has one loss per batch and strictly increasing batches; shared by the
/// plateau and the spike detectors.
pub fn check_series(batches: &[u64], loss: &[f64]) -> Result<(), SeriesError> {
    if batches.len() != loss.len() {
        return Err(SeriesError::LengthMismatch {
            batches: batches.len(),
            losses: loss.len(),
        });
    }
    match batches.windows(2).position(|pair| pair[0] >= pair[1]) {
        Some(index) => Err(SeriesError::BatchesNotIncreasing { index }),
        None => Ok(()),
    }
}

/// A loss a curve may sit on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLevel {
    /// [`LN10_LEVEL`], [`CARRY_ENTROPY_LEVEL`], [`ZERO_LEVEL`] or a caller's own name.
    pub name: String,
    /// The loss of the level in nats; for the zero level, the floor below which a loss is zero.
    pub loss: f64,
}

/// Probability that a carry comes into digit `digit` (0 = units) of the sum of two uniformly
/// random numbers: `p_0 = 0`, `p_{k+1} = 0.45 + 0.1 p_k`, so `p_k = (1 - 0.1^k) / 2`
/// (0.45 for the tens digit, 0.495 for the hundreds). For the leading digit `s_n`, which is the
/// carry itself, this is the probability that it is 1.
pub fn carry_probability(digit: usize) -> f64 {
    let exponent = i32::try_from(digit).unwrap_or(i32::MAX);
    0.5 * (1.0 - 0.1f64.powi(exponent))
}

/// Binary entropy in nats; 0 at p = 0 and p = 1.
fn binary_entropy(p: f64) -> f64 {
    let term = |q: f64| if q > 0.0 { -q * q.ln() } else { 0.0 };
    term(p) + term(1.0 - p)
}

/// The reference levels of a digit whose carry-in is 1 with probability `p_carry`, highest
/// first: ln 10, the binary entropy H(p_carry) (left out when it is below the zero floor, e.g.
/// the units digit has no carry, or when `p_carry` is not a probability), and zero.
pub fn reference_levels(p_carry: f64, options: &PhaseOptions) -> Vec<ReferenceLevel> {
    let mut levels = vec![ReferenceLevel {
        name: LN10_LEVEL.to_string(),
        loss: std::f64::consts::LN_10,
    }];
    if (0.0..=1.0).contains(&p_carry) {
        let entropy = binary_entropy(p_carry);
        if entropy >= options.zero_floor {
            levels.push(ReferenceLevel {
                name: CARRY_ENTROPY_LEVEL.to_string(),
                loss: entropy,
            });
        }
    }
    levels.push(ReferenceLevel {
        name: ZERO_LEVEL.to_string(),
        loss: options.zero_floor,
    });
    levels
}

/// A stretch of the curve that sits on one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// Batch of the first sample on the plateau.
    pub start_batch: u64,
    /// Batch of the last sample on the plateau.
    pub end_batch: u64,
    /// Median of the (unsmoothed) loss over the plateau: the median rather than the mean so
    /// that a spike inside a plateau does not move it.
    pub median_loss: f64,
    /// Name of the reference level it sits on, [`ZERO_LEVEL`] or [`OTHER_LEVEL`].
    pub level: String,
}

/// When a curve first reaches a reference level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelReached {
    /// Name of the reference level.
    pub level: String,
    /// Start of the first plateau on the level; for the zero level, the first batch whose
    /// smoothed loss is below the floor. `None` if the curve never gets there.
    pub batch: Option<u64>,
}

/// The plateaus of one digit's loss curve and the batches of the steps between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Plateaus in order of batch.
    pub plateaus: Vec<Plateau>,
    /// End of the first plateau on ln 10; `None` if the curve never sits on ln 10, or is still
    /// on it at the last sample.
    pub leaves_ln10_batch: Option<u64>,
    /// For every reference level other than ln 10, in the order given, when it is reached.
    pub reaches: Vec<LevelReached>,
    /// Smoothed loss at the last sample.
    pub final_loss: f64,
    /// Label of `final_loss`, as for a plateau.
    pub final_level: String,
    /// The smoothed log-loss over the last `smoothing_batches` batches falls faster than
    /// `flat_slope`, and the curve is not on the zero level.
    pub still_descending: bool,
}

/// What a smoothed sample is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleState {
    /// Smoothed loss below the zero floor.
    Zero,
    /// Slope below `flat_slope`.
    Flat,
    /// Neither.
    Moving,
}

/// A plateau while it is being built: indices into the usable samples.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    last: usize,
    zero: bool,
}

/// Finds the plateaus of a loss curve and when it leaves and reaches the reference `levels`
/// (usually [`reference_levels`]).
///
/// `batches` must be strictly increasing and as long as `loss`; samples whose loss is NaN,
/// infinite or negative are skipped. Labels are the names of `levels` above the zero floor,
/// [`ZERO_LEVEL`] for a loss below the floor, and [`OTHER_LEVEL`].
pub fn detect_phases(
    batches: &[u64],
    loss: &[f64],
    levels: &[ReferenceLevel],
    options: &PhaseOptions,
) -> Result<PhaseSummary, SeriesError> {
    check_series(batches, loss)?;
    options.validate()?;
    let (batch, raw): (Vec<u64>, Vec<f64>) = batches
        .iter()
        .zip(loss)
        .filter(|(_, value)| value.is_finite() && **value >= 0.0)
        .map(|(b, value)| (*b, *value))
        .unzip();
    let Some(&last_batch) = batch.last() else {
        return Err(SeriesError::NoUsableLoss);
    };
    let half = options.smoothing_batches / 2;
    let smoothed = centred_median(&batch, &raw, half);
    let log_smoothed: Vec<f64> = smoothed.iter().map(|value| value.ln()).collect();
    let labeller = Labeller::new(levels, options);

    let states: Vec<SampleState> = (0..batch.len())
        .map(|i| {
            if smoothed[i] < options.zero_floor {
                SampleState::Zero
            } else {
                let (lo, hi) = slope_window(&batch, i, half);
                match slope(&batch[lo..hi], &log_smoothed[lo..hi]) {
                    Some(s) if s.abs() * 1000.0 < options.flat_slope => SampleState::Flat,
                    _ => SampleState::Moving,
                }
            }
        })
        .collect();

    let spans = extend_flat_cores(&states, &log_smoothed, options.edge_tolerance);
    let plateaus = labelled_plateaus(&spans, &batch, &raw, &labeller, options);

    let leaves_ln10_batch = plateaus
        .iter()
        .find(|p| p.level == LN10_LEVEL)
        .map(|p| p.end_batch)
        .filter(|&end| end < last_batch);
    let first_zero_batch = states
        .iter()
        .position(|&s| s == SampleState::Zero)
        .map(|i| batch[i]);
    let reaches = levels
        .iter()
        .filter(|level| level.name != LN10_LEVEL)
        .map(|level| LevelReached {
            level: level.name.clone(),
            batch: if level.loss <= options.zero_floor {
                first_zero_batch
            } else {
                plateaus
                    .iter()
                    .find(|p| p.level == level.name)
                    .map(|p| p.start_batch)
            },
        })
        .collect();

    let final_loss = smoothed[smoothed.len() - 1];
    let final_level = labeller.label(final_loss);
    let (lo, hi) = window(&batch, batch.len() - 1, options.smoothing_batches, 0);
    let still_descending = final_level != ZERO_LEVEL
        && slope(&batch[lo..hi], &log_smoothed[lo..hi])
            .is_some_and(|s| s * 1000.0 < -options.flat_slope);

    Ok(PhaseSummary {
        plateaus,
        leaves_ln10_batch,
        reaches,
        final_loss,
        final_level,
        still_descending,
    })
}

/// Labels a loss by the nearest reference level above the zero floor.
struct Labeller<'a> {
    levels: Vec<&'a ReferenceLevel>,
    options: &'a PhaseOptions,
}

impl<'a> Labeller<'a> {
    fn new(levels: &'a [ReferenceLevel], options: &'a PhaseOptions) -> Self {
        let levels = levels
            .iter()
            .filter(|level| level.loss.is_finite() && level.loss > options.zero_floor)
            .collect();
        Labeller { levels, options }
    }

    /// [`ZERO_LEVEL`] below the floor, else the nearest level within `level_tolerance` in
    /// log-loss, else [`OTHER_LEVEL`].
    fn label(&self, loss: f64) -> String {
        if loss < self.options.zero_floor {
            return ZERO_LEVEL.to_string();
        }
        self.levels
            .iter()
            .map(|level| (level, (loss.ln() - level.loss.ln()).abs()))
            .filter(|(_, distance)| *distance < self.options.level_tolerance)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or_else(|| OTHER_LEVEL.to_string(), |(level, _)| level.name.clone())
    }

    /// Label of the samples `span`: [`ZERO_LEVEL`] for a zero span, else that of its median.
    fn label_span(&self, span: &Span, raw: &[f64]) -> String {
        if span.zero {
            ZERO_LEVEL.to_string()
        } else {
            self.label(median_of(&raw[span.first..=span.last]))
        }
    }
}

/// Turns the spans into plateaus: labels them, joins touching spans with the same label (a flat
/// stretch split by one noisy slope), drops those shorter than `min_plateau_batches`, and joins
/// consecutive plateaus on the same reference level (what lay between them was a spike or an
/// excursion too short to be a plateau; two "other" plateaus are joined only if their losses are
/// within `level_tolerance` of each other).
fn labelled_plateaus(
    spans: &[Span],
    batch: &[u64],
    raw: &[f64],
    labeller: &Labeller,
    options: &PhaseOptions,
) -> Vec<Plateau> {
    let median_ln = |span: &Span| median_of(&raw[span.first..=span.last]).ln();
    let mut touching: Vec<(Span, String)> = Vec::with_capacity(spans.len());
    for span in spans {
        let label = labeller.label_span(span, raw);
        match touching.last_mut() {
            Some((previous, previous_label))
                if previous.last + 1 == span.first && *previous_label == label =>
            {
                previous.last = span.last;
            }
            _ => touching.push((*span, label)),
        }
    }
    let mut joined: Vec<(Span, String)> = Vec::with_capacity(touching.len());
    for (span, label) in touching {
        // A stretch at the very start is cut short by the start of training, not by noise:
        // it counts however short, so a digit that leaves ln 10 early still gets that batch.
        if span.first > 0 && batch[span.last] - batch[span.first] < options.min_plateau_batches {
            continue;
        }
        match joined.last_mut() {
            Some((previous, previous_label))
                if *previous_label == label
                    && (label != OTHER_LEVEL
                        || (median_ln(previous) - median_ln(&span)).abs()
                            < options.level_tolerance) =>
            {
                previous.last = span.last;
            }
            _ => joined.push((span, label)),
        }
    }
    joined
        .into_iter()
        .map(|(span, level)| Plateau {
            start_batch: batch[span.first],
            end_batch: batch[span.last],
            median_loss: median_of(&raw[span.first..=span.last]),
            level,
        })
        .collect()
}

/// The plateau spans: every run of zero samples, and every run of flat samples extended into the
/// moving samples on either side, up to the furthest one whose smoothed log-loss is within
/// `edge_tolerance` of the run's edge value (the furthest, not the first one outside, so that a
/// noisy sample does not stop the extension early; never into another span).
fn extend_flat_cores(
    states: &[SampleState],
    log_smoothed: &[f64],
    edge_tolerance: f64,
) -> Vec<Span> {
    let runs = runs_of(states);
    let mut spans: Vec<Span> = Vec::with_capacity(runs.len());
    for (k, &(first, last, state)) in runs.iter().enumerate() {
        match state {
            SampleState::Zero => spans.push(Span {
                first,
                last,
                zero: true,
            }),
            SampleState::Moving => {}
            SampleState::Flat => {
                let near = |j: usize, edge: usize| {
                    (log_smoothed[j] - log_smoothed[edge]).abs() < edge_tolerance
                };
                let floor = match k.checked_sub(1).map(|before| runs[before]) {
                    Some((moving_first, _, SampleState::Moving)) => {
                        let after_span = spans.last().map_or(0, |span| span.last + 1);
                        moving_first.max(after_span)
                    }
                    _ => first,
                };
                let ceiling = match runs.get(k + 1) {
                    Some(&(_, moving_last, SampleState::Moving)) => moving_last + 1,
                    _ => last + 1,
                };
                let start = (floor..first).find(|&j| near(j, first)).unwrap_or(first);
                let end = (last + 1..ceiling)
                    .rev()
                    .find(|&j| near(j, last))
                    .unwrap_or(last);
                spans.push(Span {
                    first: start,
                    last: end,
                    zero: false,
                });
            }
        }
    }
    spans
}

/// Maximal runs of equal states as (first index, last index, state); shared with the
/// grokking phase rule, which walks runs of samples above and below a level.
pub(crate) fn runs_of<S: Copy + PartialEq>(states: &[S]) -> Vec<(usize, usize, S)> {
    let mut runs: Vec<(usize, usize, S)> = Vec::new();
    for (i, &state) in states.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.2 == state => run.1 = i,
            _ => runs.push((i, i, state)),
        }
    }
    runs
}

/// The index range `lo..hi` of samples with batch in `[batches[i] - before, batches[i] + after]`.
fn window(batches: &[u64], i: usize, before: u64, after: u64) -> (usize, usize) {
    let from = batches[i].saturating_sub(before);
    let lo = batches.partition_point(|&b| b < from);
    let hi = batches.partition_point(|&b| b <= batches[i].saturating_add(after));
    (lo, hi)
}

/// The centred window of the slope at sample `i`: `half` batches either side, and at least the
/// neighbouring samples, so that a window narrower than the sampling interval still has a slope.
fn slope_window(batches: &[u64], i: usize, half: u64) -> (usize, usize) {
    let (lo, hi) = window(batches, i, half, half);
    (
        lo.min(i.saturating_sub(1)),
        hi.max((i + 2).min(batches.len())),
    )
}

/// Running median of `values` over a centred window of `half` batches either side.
fn centred_median(batches: &[u64], values: &[f64], half: u64) -> Vec<f64> {
    let mut buffer: Vec<f64> = Vec::new();
    let (mut lo, mut hi) = (0usize, 0usize);
    batches
        .iter()
        .map(|&b| {
            while batches[lo] < b.saturating_sub(half) {
                lo += 1;
            }
            while hi < batches.len() && batches[hi] <= b.saturating_add(half) {
                hi += 1;
            }
            buffer.clear();
            buffer.extend_from_slice(&values[lo..hi]);
            median_in_place(&mut buffer)
        })
        .collect()
}

/// Median of a slice (the upper middle for an even count, so that the median of losses and of
/// log-losses agree); NaN for an empty slice.
fn median_of(values: &[f64]) -> f64 {
    median_in_place(&mut values.to_vec())
}

/// Median of `values`, reordering them; see [`median_of`]. Shared with the spike detector.
pub(crate) fn median_in_place(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let middle = values.len() / 2;
    *values.select_nth_unstable_by(middle, f64::total_cmp).1
}

/// Least-squares slope of `y` against `x`; `None` with fewer than two distinct `x`.
fn slope(x: &[u64], y: &[f64]) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let mean_x = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (&xi, &yi) in x.iter().zip(y) {
        let dx = xi as f64 - mean_x;
        sxy += dx * (yi - mean_y);
        sxx += dx * dx;
    }
    (sxx > 0.0).then(|| sxy / sxx)
}
