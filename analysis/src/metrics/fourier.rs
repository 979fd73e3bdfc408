//! Fourier progress measures over the digit pair (docs/metrics.md, 'Excluded and restricted loss'
//! and 'Key frequencies'), after Nanda et al.,
//! "Progress measures for grokking via mechanistic interpretability".
//!
//! Each context of the balanced eval set (docs/metrics.md, 'The balanced eval set') is a 10×10 grid of `(a_k, b_k)`. The
//! excluded and restricted logits remove or keep only the part of each grid that is a wave in
//! `a_k + b_k` at chosen frequencies; the key frequencies are read off the MLP neurons, whose
//! activations a Fourier-multiplying model makes products of waves in `a_k` and in `b_k`.
//!
//! Precondition of every function here: the examples are ordered context-major, then by pair,
//! so example `m * 100 + a_k * 10 + b_k` is pair `(a_k, b_k)` in context `m`, the order of the
//! eval set for a digit `k < n`. Projections use explicit orthonormal bases over the 100 grid
//! points (orthonormality is checked in the tests) and are computed in f64.

use std::f64::consts::TAU;
use std::sync::OnceLock;

/// Frequencies `f = 1..=5` over the 10-point digit circle.
pub const FREQUENCIES: [usize; 5] = [1, 2, 3, 4, 5];

/// Values of a digit, and points on each axis of the grid.
const DIGITS: usize = 10;
/// Points of one context's grid, indexed `a * 10 + b`.
const GRID: usize = DIGITS * DIGITS;

/// A function on the grid, indexed `a * 10 + b`.
type GridVector = [f64; GRID];

/// The unit constant on the grid: projecting on it gives the grid mean.
const CONSTANT: GridVector = [1.0 / DIGITS as f64; GRID];

/// Whether to keep the projection on some directions, or what is left after removing it.
#[derive(Clone, Copy)]
enum Keep {
    Projection,
    Residual,
}

/// Removes the sum-structure of the logits at the given frequencies (`excluded_loss`):
/// `L - sum_{f in freqs} proj_f(L)`, per context and output; `excluded_loss` is its
/// [`mean_cross_entropy`](digitlab::log_softmax::mean_cross_entropy).
///
/// `logits` is `n_contexts × 100 × n_out` in the eval-set order (see the module doc); `freqs` is
/// a set of frequencies from [`FREQUENCIES`] (a repeat counts once).
///
/// # Panics
/// If `n_out` is 0, the length does not match or a frequency is not in `1..=5`.
pub fn excluded_logits(
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    freqs: &[usize],
) -> Vec<f32> {
    let directions = sum_directions_of(freqs);
    split_grids(logits, n_out, n_contexts, &directions, Keep::Residual)
}

/// Keeps only the grid mean and the sum-structure at the given frequencies (`restricted_loss`):
/// `mean_grid(L) + sum_{f in freqs} proj_f(L)`; `restricted_loss` is its [`mean_cross_entropy`](digitlab::log_softmax::mean_cross_entropy).
///
/// Same layout, set semantics and panics as [`excluded_logits`].
pub fn restricted_logits(
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    freqs: &[usize],
) -> Vec<f32> {
    let mut directions = vec![&CONSTANT];
    directions.extend(sum_directions_of(freqs));
    split_grids(logits, n_out, n_contexts, &directions, Keep::Projection)
}

/// One MLP neuron's frequency: the `f` whose 2D Fourier terms hold the largest fraction of its
/// centred variance, and that fraction.
#[derive(Clone, Debug, PartialEq)]
pub struct NeuronFrequency {
    pub neuron: usize,
    pub frequency: usize,
    pub fraction: f64,
}

/// The key frequencies of a model (docs/metrics.md, 'Key frequencies'), with the per-neuron evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyFrequencies {
    /// One entry per neuron, in neuron order.
    pub neurons: Vec<NeuronFrequency>,
    /// Frequencies that are the frequency of at least one neuron with `fraction >= threshold`;
    /// sorted, unique.
    pub key: Vec<usize>,
    pub threshold: f64,
}

/// The key frequencies from MLP post-ReLU activations at the predicting position (spec
/// section 5), `acts` being `n_contexts × 100 × n_neurons` in the eval-set order (module doc).
///
/// Each context's grid is centred; per neuron and frequency `f`, the fraction is the variance
/// (summed over contexts) in the span of `{1, cos wa, sin wa} × {1, cos wb, sin wb}` minus the
/// constant, `w = 2 pi f / 10` (for `f = 5` the sin terms vanish, leaving 3 directions). The
/// subspaces of different `f` are orthogonal, so a neuron's fractions sum to at most 1.
/// A neuron with zero variance (dead) gets fraction 0 and, as the argmax of all-zero fractions
/// with ties to the lowest `f`, frequency 1.
///
/// # Panics
/// If `n_neurons` is 0 or the length does not match.
pub fn key_frequencies(
    acts: &[f32],
    n_neurons: usize,
    n_contexts: usize,
    threshold: f64,
) -> KeyFrequencies {
    assert!(n_neurons > 0, "no neurons");
    assert_eq!(
        acts.len(),
        n_contexts * GRID * n_neurons,
        "activations must be n_contexts × 100 × n_neurons"
    );
    let bases = FREQUENCIES.map(pair_directions);
    let mut variance = vec![0.0; n_neurons];
    let mut captured = vec![[0.0; FREQUENCIES.len()]; n_neurons];
    let mut mean = vec![0.0; n_neurons];
    let mut coefficient = vec![0.0; n_neurons];

    for context in acts.chunks_exact(GRID * n_neurons) {
        mean.fill(0.0);
        for row in context.chunks_exact(n_neurons) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        // Summing first keeps a constant grid exactly constant, so a dead neuron has variance 0.
        for m in &mut mean {
            *m /= GRID as f64;
        }
        for row in context.chunks_exact(n_neurons) {
            for ((v, &x), &m) in variance.iter_mut().zip(row).zip(&mean) {
                *v += (f64::from(x) - m).powi(2);
            }
        }
        for (fi, directions) in bases.iter().enumerate() {
            for direction in directions {
                coefficient.fill(0.0);
                for (&u, row) in direction.iter().zip(context.chunks_exact(n_neurons)) {
                    for ((c, &x), &m) in coefficient.iter_mut().zip(row).zip(&mean) {
                        *c += u * (f64::from(x) - m);
                    }
                }
                for (cap, &c) in captured.iter_mut().zip(&coefficient) {
                    cap[fi] += c * c;
                }
            }
        }
    }

    let neurons: Vec<NeuronFrequency> = (0..n_neurons)
        .map(|neuron| {
            let fraction_of = |fi: usize| {
                if variance[neuron] > 0.0 {
                    captured[neuron][fi] / variance[neuron]
                } else {
                    0.0
                }
            };
            let best = (1..FREQUENCIES.len()).fold(0, |best, fi| {
                if fraction_of(fi) > fraction_of(best) {
                    fi
                } else {
                    best
                }
            });
            NeuronFrequency {
                neuron,
                frequency: FREQUENCIES[best],
                fraction: fraction_of(best),
            }
        })
        .collect();
    let mut key: Vec<usize> = neurons
        .iter()
        .filter(|n| n.fraction >= threshold)
        .map(|n| n.frequency)
        .collect();
    key.sort_unstable();
    key.dedup();
    KeyFrequencies {
        neurons,
        key,
        threshold,
    }
}

/// Projects every context's grid of every output on the orthonormal `directions` and keeps the
/// projection or the residual, in f64, rounding once to f32 at the end.
fn split_grids(
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    directions: &[&GridVector],
    keep: Keep,
) -> Vec<f32> {
    assert!(n_out > 0, "no outputs");
    assert_eq!(
        logits.len(),
        n_contexts * GRID * n_out,
        "logits must be n_contexts × 100 × n_out"
    );
    let mut out = Vec::with_capacity(logits.len());
    // coefficients[j * n_out + o]: the coefficient of output o on direction j.
    let mut coefficients = vec![0.0; directions.len() * n_out];
    let mut projection = vec![0.0; n_out];
    for context in logits.chunks_exact(GRID * n_out) {
        coefficients.fill(0.0);
        for (g, row) in context.chunks_exact(n_out).enumerate() {
            for (direction, coef) in directions.iter().zip(coefficients.chunks_exact_mut(n_out)) {
                let u = direction[g];
                for (c, &x) in coef.iter_mut().zip(row) {
                    *c += u * f64::from(x);
                }
            }
        }
        for (g, row) in context.chunks_exact(n_out).enumerate() {
            projection.fill(0.0);
            for (direction, coef) in directions.iter().zip(coefficients.chunks_exact(n_out)) {
                let u = direction[g];
                for (p, &c) in projection.iter_mut().zip(coef) {
                    *p += u * c;
                }
            }
            out.extend(row.iter().zip(&projection).map(|(&x, &p)| match keep {
                Keep::Projection => p as f32,
                Keep::Residual => (f64::from(x) - p) as f32,
            }));
        }
    }
    out
}

/// The unit sum-directions of a set of frequencies, each frequency once.
fn sum_directions_of(freqs: &[usize]) -> Vec<&'static GridVector> {
    if let Some(f) = freqs.iter().find(|f| !FREQUENCIES.contains(f)) {
        panic!("frequency {f} is not one of {FREQUENCIES:?}");
    }
    static BASES: OnceLock<[Vec<GridVector>; FREQUENCIES.len()]> = OnceLock::new();
    let bases = BASES.get_or_init(|| FREQUENCIES.map(sum_directions));
    FREQUENCIES
        .iter()
        .zip(bases)
        .filter(|(f, _)| freqs.contains(f))
        .flat_map(|(_, directions)| directions)
        .collect()
}

/// `cos(w (a+b))` and `sin(w (a+b))` over the grid, each of unit norm; only `cos` for `f = 5`,
/// where `sin` is identically 0.
fn sum_directions(f: usize) -> Vec<GridVector> {
    waves(f)
        .iter()
        .skip(1)
        .map(|wave| {
            unit(std::array::from_fn(|g| {
                wave[(g / DIGITS + g % DIGITS) % DIGITS]
            }))
        })
        .collect()
}

/// The products `{1, cos wa, sin wa} × {1, cos wb, sin wb}` without the constant, each of unit
/// norm (3 directions for `f = 5`, 8 otherwise).
fn pair_directions(f: usize) -> Vec<GridVector> {
    let waves = waves(f);
    let mut directions = Vec::new();
    for (i, wave_a) in waves.iter().enumerate() {
        for (j, wave_b) in waves.iter().enumerate() {
            if i + j > 0 {
                directions.push(unit(std::array::from_fn(|g| {
                    wave_a[g / DIGITS] * wave_b[g % DIGITS]
                })));
            }
        }
    }
    directions
}

/// `1, cos(w x), sin(w x)` on the digits `x = 0..9`, `w = 2 pi f / 10`; no `sin` for `f = 5`.
fn waves(f: usize) -> Vec<[f64; DIGITS]> {
    let w = TAU * f as f64 / DIGITS as f64;
    let mut waves = vec![[1.0; DIGITS], std::array::from_fn(|x| (w * x as f64).cos())];
    if 2 * f != DIGITS {
        waves.push(std::array::from_fn(|x| (w * x as f64).sin()));
    }
    waves
}

/// `v / |v|`.
fn unit(v: GridVector) -> GridVector {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.map(|x| x / norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix64;
    use digitlab::log_softmax::mean_cross_entropy;
    use std::f64::consts::PI;

    fn dot(u: &GridVector, v: &GridVector) -> f64 {
        u.iter().zip(v).map(|(x, y)| x * y).sum()
    }

    fn assert_orthonormal(directions: &[&GridVector]) {
        for (i, u) in directions.iter().enumerate() {
            for (j, v) in directions.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                let got = dot(u, v);
                assert!((got - want).abs() < 1e-12, "<{i}, {j}> = {got}");
            }
        }
    }

    #[test]
    fn bases_are_orthonormal_on_the_grid() {
        let sums: Vec<_> = FREQUENCIES.map(sum_directions).into_iter().collect();
        assert_eq!(
            sums.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2, 2, 1]
        );
        let mut all = vec![&CONSTANT];
        all.extend(sums.iter().flatten());
        // The constant and the nine sum-directions span every function of (a + b) mod 10.
        assert_eq!(all.len(), 10);
        assert_orthonormal(&all);
        assert_eq!(sum_directions_of(&FREQUENCIES), all[1..]);

        let pairs: Vec<_> = FREQUENCIES.map(pair_directions).into_iter().collect();
        assert_eq!(
            pairs.iter().map(Vec::len).collect::<Vec<_>>(),
            [8, 8, 8, 8, 3]
        );
        let mut all = vec![&CONSTANT];
        all.extend(pairs.iter().flatten());
        assert_orthonormal(&all);
    }

    /// Plain-loop `L - sum proj_f(L)` and `mean + sum proj_f(L)`, in f64.
    fn reference_split(
        logits: &[f32],
        n_out: usize,
        n_contexts: usize,
        freqs: &[usize],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut excluded = vec![0.0; logits.len()];
        let mut restricted = vec![0.0; logits.len()];
        let at = |m: usize, a: usize, b: usize, o: usize| ((m * 100 + a * 10 + b) * n_out) + o;
        for m in 0..n_contexts {
            for o in 0..n_out {
                let mut mean = 0.0;
                for a in 0..10 {
                    for b in 0..10 {
                        mean += logits[at(m, a, b, o)] as f64 / 100.0;
                    }
                }
                let mut proj = [0.0; 100];
                for &f in freqs {
                    let w = 2.0 * PI * f as f64 / 10.0;
                    let waves: &[fn(f64) -> f64] = if f == 5 {
                        &[f64::cos]
                    } else {
                        &[f64::cos, f64::sin]
                    };
                    for wave in waves {
                        let (mut num, mut den) = (0.0, 0.0);
                        for a in 0..10 {
                            for b in 0..10 {
                                let y = wave(w * (a + b) as f64);
                                num += y * logits[at(m, a, b, o)] as f64;
                                den += y * y;
                            }
                        }
                        for a in 0..10 {
                            for b in 0..10 {
                                proj[a * 10 + b] += num / den * wave(w * (a + b) as f64);
                            }
                        }
                    }
                }
                for a in 0..10 {
                    for b in 0..10 {
                        let i = at(m, a, b, o);
                        excluded[i] = logits[i] as f64 - proj[a * 10 + b];
                        restricted[i] = mean + proj[a * 10 + b];
                    }
                }
            }
        }
        (excluded, restricted)
    }

    fn assert_all_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol, "[{i}]: got {g}, want {w}");
        }
    }

    fn random_logits(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.range(-5.0, 5.0) as f32).collect()
    }

    fn as_f64(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn excluded_and_restricted_logits_match_a_plain_loop_projection() {
        let mut rng = SplitMix64::new(11);
        let (n_out, n_contexts) = (12, 3);
        let logits = random_logits(&mut rng, n_contexts * 100 * n_out);
        for freqs in [&[1][..], &[5], &[2, 4], &[1, 2, 3, 4, 5], &[]] {
            let (excluded, restricted) = reference_split(&logits, n_out, n_contexts, freqs);
            let got = excluded_logits(&logits, n_out, n_contexts, freqs);
            assert_all_close(&got, &excluded, 1e-5);
            let got = restricted_logits(&logits, n_out, n_contexts, freqs);
            assert_all_close(&got, &restricted, 1e-5);
        }
        // The frequencies are a set: order and repeats do not matter.
        assert_eq!(
            excluded_logits(&logits, n_out, n_contexts, &[4, 2, 2]),
            excluded_logits(&logits, n_out, n_contexts, &[2, 4])
        );
        assert_eq!(
            restricted_logits(&logits, n_out, n_contexts, &[4, 2, 2]),
            restricted_logits(&logits, n_out, n_contexts, &[2, 4])
        );
    }

    #[test]
    fn projection_is_idempotent_and_orthogonal() {
        let mut rng = SplitMix64::new(12);
        let (n_out, n_contexts) = (12, 4);
        let logits = random_logits(&mut rng, n_contexts * 100 * n_out);
        let freqs = [2, 3];
        let excluded = excluded_logits(&logits, n_out, n_contexts, &freqs);
        let restricted = restricted_logits(&logits, n_out, n_contexts, &freqs);
        let mean = restricted_logits(&logits, n_out, n_contexts, &[]);
        let recombined: Vec<f64> = (0..logits.len())
            .map(|i| excluded[i] as f64 + (restricted[i] - mean[i]) as f64)
            .collect();
        assert_all_close(&logits, &recombined, 1e-5);
        // Idempotent.
        let twice = excluded_logits(&excluded, n_out, n_contexts, &freqs);
        assert_all_close(&twice, &as_f64(&excluded), 1e-5);
        let twice = restricted_logits(&restricted, n_out, n_contexts, &freqs);
        assert_all_close(&twice, &as_f64(&restricted), 1e-5);
        // Orthogonal: nothing of the kept frequencies is left in the residual, and nothing else
        // in the projection.
        let left = restricted_logits(&excluded, n_out, n_contexts, &freqs);
        assert_all_close(&left, &as_f64(&mean), 1e-5);
        let left = excluded_logits(&restricted, n_out, n_contexts, &freqs);
        assert_all_close(&left, &as_f64(&mean), 1e-5);
    }

    /// `offset_m + sum_f 8 cos(2 pi f (a + b - o) / 10)` for the digit outputs `o < 10` and
    /// `offset_m` for `+` and `=`: a function of `(a + b) mod 10` per context whose grid mean is
    /// `offset_m` for every output (each wave sums to 0 over the grid).
    fn sum_structured_logits(
        rng: &mut SplitMix64,
        n_out: usize,
        n_contexts: usize,
        freqs: &[usize],
    ) -> (Vec<f32>, Vec<f64>) {
        let offsets: Vec<f64> = (0..n_contexts).map(|_| rng.range(-3.0, 3.0)).collect();
        let mut logits = vec![];
        for &offset in &offsets {
            for a in 0..10 {
                for b in 0..10 {
                    for o in 0..n_out {
                        let s = (a + b) as f64 - o as f64;
                        let wave: f64 = if o < 10 {
                            freqs
                                .iter()
                                .map(|&f| 8.0 * (2.0 * PI * f as f64 * s / 10.0).cos())
                                .sum()
                        } else {
                            0.0
                        };
                        logits.push((offset + wave) as f32);
                    }
                }
            }
        }
        (logits, offsets)
    }

    /// Plain-loop mean cross-entropy.
    fn reference_cross_entropy(logits: &[f32], n_out: usize, targets: &[u8]) -> f64 {
        let mut sum = 0.0;
        for (i, &t) in targets.iter().enumerate() {
            let row = &logits[i * n_out..(i + 1) * n_out];
            let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
            sum -= ((row[t as usize] as f64).exp() / z).ln();
        }
        sum / targets.len() as f64
    }

    /// The sum digit `(a + b) mod 10` of every example.
    fn sum_targets(n_contexts: usize) -> Vec<u8> {
        (0..n_contexts * 100)
            .map(|i| (((i % 100) / 10 + i % 10) % 10) as u8)
            .collect()
    }

    #[test]
    fn mean_cross_entropy_matches_a_plain_loop() {
        let mut rng = SplitMix64::new(13);
        let logits = random_logits(&mut rng, 500 * 12);
        let targets: Vec<u8> = (0..500).map(|_| rng.below(12) as u8).collect();
        let got = mean_cross_entropy(&logits, 12, &targets);
        let want = reference_cross_entropy(&logits, 12, &targets);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn sum_structured_logits_keep_their_loss_restricted_and_lose_it_excluded() {
        let mut rng = SplitMix64::new(14);
        let (n_out, n_contexts) = (12, 5);
        let (logits, offsets) = sum_structured_logits(&mut rng, n_out, n_contexts, &[1, 3, 5]);
        let targets = sum_targets(n_contexts);
        let original = reference_cross_entropy(&logits, n_out, &targets);
        assert!(
            original < 0.1,
            "the constructed logits solve the task: {original}"
        );

        let restricted = restricted_logits(&logits, n_out, n_contexts, &FREQUENCIES);
        assert_all_close(&restricted, &as_f64(&logits), 1e-5);
        let kept = mean_cross_entropy(&restricted, n_out, &targets);
        assert!((kept - original).abs() <= 1e-9, "{kept} vs {original}");

        let excluded = excluded_logits(&logits, n_out, n_contexts, &FREQUENCIES);
        for (i, &x) in excluded.iter().enumerate() {
            let offset = offsets[i / (100 * n_out)];
            assert!((x as f64 - offset).abs() <= 1e-5, "[{i}]: {x} vs {offset}");
        }
        let lost = mean_cross_entropy(&excluded, n_out, &targets);
        assert!((lost - (n_out as f64).ln()).abs() <= 1e-6, "{lost}");
    }

    #[test]
    fn excluding_a_frequency_removes_only_that_frequency() {
        let mut rng = SplitMix64::new(15);
        let (n_out, n_contexts) = (12, 3);
        let (logits, offsets) = sum_structured_logits(&mut rng, n_out, n_contexts, &[2]);
        let unchanged = excluded_logits(&logits, n_out, n_contexts, &[3]);
        assert_all_close(&unchanged, &as_f64(&logits), 1e-5);
        let unchanged = restricted_logits(&logits, n_out, n_contexts, &[2]);
        assert_all_close(&unchanged, &as_f64(&logits), 1e-5);
        let flattened = excluded_logits(&logits, n_out, n_contexts, &[2]);
        let grid_means: Vec<f64> = (0..logits.len())
            .map(|i| offsets[i / (100 * n_out)])
            .collect();
        assert_all_close(&flattened, &grid_means, 1e-5);
    }

    /// Plain-DFT fraction of each neuron's centred variance at each frequency: the energy of the
    /// 2D DFT at `(p, q)` with `p, q` in `{0, f, 10 - f}`, not both 0 (Parseval).
    fn reference_fractions(acts: &[f32], n_neurons: usize, n_contexts: usize) -> Vec<[f64; 5]> {
        let mut fractions = vec![[0.0; 5]; n_neurons];
        for (neuron, fraction) in fractions.iter_mut().enumerate() {
            let mut total = 0.0;
            let mut energy = [0.0; 5];
            for m in 0..n_contexts {
                let x =
                    |a: usize, b: usize| acts[(m * 100 + a * 10 + b) * n_neurons + neuron] as f64;
                let mut sum = 0.0;
                for a in 0..10 {
                    for b in 0..10 {
                        sum += x(a, b);
                    }
                }
                let mean = sum / 100.0;
                for a in 0..10 {
                    for b in 0..10 {
                        total += (x(a, b) - mean).powi(2);
                    }
                }
                for f in 1..=5 {
                    let mut ks = vec![0, f, 10 - f];
                    ks.dedup();
                    for &p in &ks {
                        for &q in &ks {
                            if p == 0 && q == 0 {
                                continue;
                            }
                            let (mut re, mut im) = (0.0, 0.0);
                            for a in 0..10 {
                                for b in 0..10 {
                                    let angle = 2.0 * PI * (p * a + q * b) as f64 / 10.0;
                                    re += (x(a, b) - mean) * angle.cos();
                                    im -= (x(a, b) - mean) * angle.sin();
                                }
                            }
                            energy[f - 1] += (re * re + im * im) / 100.0;
                        }
                    }
                }
            }
            *fraction = energy.map(|e| if total > 0.0 { e / total } else { 0.0 });
        }
        fractions
    }

    /// A neuron's activation at `(rng, context m, a, b)`.
    type Neuron<'a> = &'a dyn Fn(&mut SplitMix64, usize, f64, f64) -> f64;

    /// Builds `n_contexts × 100 × n_neurons` activations from one function per neuron.
    fn activations(rng: &mut SplitMix64, n_contexts: usize, neurons: &[Neuron]) -> Vec<f32> {
        let mut acts = vec![];
        for m in 0..n_contexts {
            for a in 0..10 {
                for b in 0..10 {
                    for neuron in neurons {
                        acts.push(neuron(rng, m, a as f64, b as f64) as f32);
                    }
                }
            }
        }
        acts
    }

    fn assert_matches_reference(got: &KeyFrequencies, acts: &[f32], n_contexts: usize) {
        let want = reference_fractions(acts, got.neurons.len(), n_contexts);
        for (neuron, fractions) in got.neurons.iter().zip(&want) {
            let best = (0..5).fold(0, |b, f| if fractions[f] > fractions[b] { f } else { b });
            assert_eq!(neuron.frequency, best + 1, "{neuron:?} vs {fractions:?}");
            assert!(
                (neuron.fraction - fractions[best]).abs() < 1e-9,
                "{neuron:?} vs {fractions:?}"
            );
        }
    }

    #[test]
    fn key_frequencies_find_the_frequency_of_pure_neurons() {
        let mut rng = SplitMix64::new(16);
        let n_contexts = 4;
        let w = 2.0 * PI * 3.0 / 10.0;
        let acts = activations(
            &mut rng,
            n_contexts,
            &[
                &|_, m, a, b| 1.0 + m as f64 + (m as f64 + 0.5) * (w * a).cos() * (w * b).cos(),
                &|_, m, a, b| (w * (a + b) + m as f64).cos(),
                &|_, _, a, _| 2.0 + (w * a).sin(),
                &|rng, _, _, _| rng.range(0.0, 1.0),
                &|rng, _, _, _| rng.range(-1.0, 1.0).max(0.0),
                &|_, _, _, _| 0.7,
            ],
        );
        let got = key_frequencies(&acts, 6, n_contexts, 0.85);
        assert_eq!(got.key, [3]);
        assert_eq!(got.threshold, 0.85);
        for neuron in &got.neurons[..3] {
            assert_eq!(neuron.frequency, 3, "{neuron:?}");
            assert!(neuron.fraction > 1.0 - 1e-9, "{neuron:?}");
        }
        for neuron in &got.neurons[3..5] {
            assert!(neuron.fraction < 0.85, "{neuron:?}");
        }
        let dead = &got.neurons[5];
        assert_eq!((dead.neuron, dead.frequency, dead.fraction), (5, 1, 0.0));
        assert_matches_reference(&got, &acts, n_contexts);
    }

    #[test]
    fn key_frequencies_handle_frequency_5_and_mixed_neurons() {
        let mut rng = SplitMix64::new(17);
        let n_contexts = 3;
        let w1 = 2.0 * PI / 10.0;
        let w2 = 2.0 * PI * 2.0 / 10.0;
        let acts = activations(
            &mut rng,
            n_contexts,
            &[
                &|_, _, a, b| (PI * a).cos() * (PI * b).cos(),
                &|_, _, a, b| (PI * (a + b)).cos() + 0.3 * (PI * a).cos(),
                // Split between two frequencies: the larger wins, below the threshold.
                &|_, _, a, b| 1.2 * (w1 * (a + b)).cos() + (w2 * (a - b)).sin(),
                &|rng, _, a, _| (w2 * a).cos() + rng.range(-2.0, 2.0),
            ],
        );
        let got = key_frequencies(&acts, 4, n_contexts, 0.85);
        assert_eq!(got.key, [5]);
        assert_eq!(got.neurons[0].frequency, 5);
        assert_eq!(got.neurons[1].frequency, 5);
        assert!(got.neurons[0].fraction > 1.0 - 1e-9 && got.neurons[1].fraction > 1.0 - 1e-9);
        assert_eq!(got.neurons[2].frequency, 1);
        assert!(
            (0.5..0.85).contains(&got.neurons[2].fraction),
            "{:?}",
            got.neurons[2]
        );
        assert_matches_reference(&got, &acts, n_contexts);
        // A lower threshold lets the mixed neuron's frequency in.
        assert_eq!(key_frequencies(&acts, 4, n_contexts, 0.5).key, [1, 5]);
    }
}
