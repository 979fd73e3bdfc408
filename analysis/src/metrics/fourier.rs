//! Fourier progress measures over a grid of operand pairs (docs/metrics.md, 'Excluded and
//! restricted loss' and 'Key frequencies'), after Nanda et al., "Progress measures for grokking
//! via mechanistic interpretability".
//!
//! One code for both tasks, parameterised by the [`Grid`]: a context of the balanced eval set
//! of addition (docs/metrics.md, 'The balanced eval set') is the 10×10 grid of `(a_k, b_k)`;
//! modular addition is the one p×p grid of `(x, y)`. The excluded and restricted logits remove
//! or keep only the part of each grid that is a wave in `a + b` at chosen frequencies; the key
//! frequencies are read off the MLP neurons, whose activations a Fourier-multiplying model
//! makes products of waves in `a` and in `b`; the embedding's Fourier norms and their Gini
//! coefficient measure how few frequencies the embedding uses.
//!
//! Precondition of every grid function here: the examples are ordered context-major, then by
//! pair, so example `m * n² + a * n + b` is pair `(a, b)` in context `m` (the order of the eval
//! set for a digit `k < n`, and of [`digitlab::modp`]'s full grid). Projections use explicit
//! orthonormal bases over the grid points (orthonormality is checked in the tests) and are
//! computed in f64.

use std::f64::consts::TAU;

/// The grid of operand pairs `(a, b)` with `a, b` in `0..n`, indexed `a * n + b`; its
/// frequencies are `1..=n/2` (for even `n` the last has a cosine only: the sine is zero on the
/// integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub n: usize,
}

/// A function on the grid, indexed `a * n + b`.
type GridVector = Vec<f64>;

impl Grid {
    /// A digit column of addition: `(a_k, b_k)` in 0..10.
    pub const DIGITS: Grid = Grid { n: 10 };

    /// Points of one context's grid.
    pub fn points(self) -> usize {
        self.n * self.n
    }

    /// The frequencies `1..=n/2`.
    pub fn frequencies(self) -> Vec<usize> {
        (1..=self.n / 2).collect()
    }

    /// The unit constant on the grid: projecting on it gives the grid mean.
    fn constant(self) -> GridVector {
        vec![1.0 / self.n as f64; self.points()]
    }

    /// `1, cos(w x), sin(w x)` on `x = 0..n`, `w = 2 pi f / n`; no `sin` when `2f = n`.
    fn waves(self, f: usize) -> Vec<Vec<f64>> {
        let n = self.n;
        let w = TAU * f as f64 / n as f64;
        let mut waves = vec![vec![1.0; n], (0..n).map(|x| (w * x as f64).cos()).collect()];
        if 2 * f != n {
            waves.push((0..n).map(|x| (w * x as f64).sin()).collect());
        }
        waves
    }

    /// `cos(w (a+b))` and `sin(w (a+b))` over the grid, each of unit norm; only `cos` when
    /// `2f = n`, where `sin` is identically 0.
    fn sum_directions(self, f: usize) -> Vec<GridVector> {
        let n = self.n;
        self.waves(f)
            .iter()
            .skip(1)
            .map(|wave| {
                unit(
                    (0..self.points())
                        .map(|g| wave[(g / n + g % n) % n])
                        .collect(),
                )
            })
            .collect()
    }

    /// The products `{1, cos wa, sin wa} × {1, cos wb, sin wb}` without the constant, each of
    /// unit norm (3 directions when `2f = n`, 8 otherwise).
    fn pair_directions(self, f: usize) -> Vec<GridVector> {
        let n = self.n;
        let waves = self.waves(f);
        let mut directions = Vec::new();
        for (i, wave_a) in waves.iter().enumerate() {
            for (j, wave_b) in waves.iter().enumerate() {
                if i + j > 0 {
                    directions.push(unit(
                        (0..self.points())
                            .map(|g| wave_a[g / n] * wave_b[g % n])
                            .collect(),
                    ));
                }
            }
        }
        directions
    }

    /// The unit sum-directions of a set of frequencies, each frequency once.
    ///
    /// # Panics
    /// If a frequency is not in `1..=n/2`.
    fn sum_directions_of(self, freqs: &[usize]) -> Vec<GridVector> {
        let all = self.frequencies();
        if let Some(f) = freqs.iter().find(|f| !all.contains(f)) {
            panic!("frequency {f} is not one of 1..={}", self.n / 2);
        }
        all.into_iter()
            .filter(|f| freqs.contains(f))
            .flat_map(|f| self.sum_directions(f))
            .collect()
    }

    /// The 1D Fourier basis on `0..n`: the unit constant, then `cos` and `sin` of each
    /// frequency (`cos` only when `2f = n`), each of unit norm: `n` orthonormal vectors, named
    /// `const`, `cos f`, `sin f`.
    pub fn basis_1d(self) -> Vec<(String, Vec<f64>)> {
        let mut basis = vec![("const".to_string(), unit(vec![1.0; self.n]))];
        for f in self.frequencies() {
            let waves = self.waves(f);
            basis.push((format!("cos {f}"), unit(waves[1].clone())));
            if let Some(sin) = waves.get(2) {
                basis.push((format!("sin {f}"), unit(sin.clone())));
            }
        }
        basis
    }
}

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
/// `logits` is `n_contexts × n² × n_out` in grid order (see the module doc); `freqs` is a set
/// of frequencies of the grid (a repeat counts once).
///
/// # Panics
/// If `n_out` is 0, the length does not match or a frequency is not in `1..=n/2`.
pub fn excluded_logits(
    grid: Grid,
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    freqs: &[usize],
) -> Vec<f32> {
    let directions = grid.sum_directions_of(freqs);
    split_grids(grid, logits, n_out, n_contexts, &directions, Keep::Residual)
}

/// Keeps only the grid mean and the sum-structure at the given frequencies (`restricted_loss`):
/// `mean_grid(L) + sum_{f in freqs} proj_f(L)`; `restricted_loss` is its [`mean_cross_entropy`](digitlab::log_softmax::mean_cross_entropy).
///
/// Same layout, set semantics and panics as [`excluded_logits`].
pub fn restricted_logits(
    grid: Grid,
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    freqs: &[usize],
) -> Vec<f32> {
    let mut directions = vec![grid.constant()];
    directions.extend(grid.sum_directions_of(freqs));
    split_grids(
        grid,
        logits,
        n_out,
        n_contexts,
        &directions,
        Keep::Projection,
    )
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

/// The key frequencies from MLP post-ReLU activations at the predicting position, `acts`
/// being `n_contexts × n² × n_neurons` in grid order (module doc).
///
/// Each context's grid is centred; per neuron and frequency `f`, the fraction is the variance
/// (summed over contexts) in the span of `{1, cos wa, sin wa} × {1, cos wb, sin wb}` minus the
/// constant, `w = 2 pi f / n` (for `2f = n` the sin terms vanish, leaving 3 directions). The
/// subspaces of different `f` are orthogonal, so a neuron's fractions sum to at most 1.
/// A neuron with zero variance (dead) gets fraction 0 and, as the argmax of all-zero fractions
/// with ties to the lowest `f`, frequency 1.
///
/// # Panics
/// If `n_neurons` is 0 or the length does not match.
pub fn key_frequencies(
    grid: Grid,
    acts: &[f32],
    n_neurons: usize,
    n_contexts: usize,
    threshold: f64,
) -> KeyFrequencies {
    assert!(n_neurons > 0, "no neurons");
    assert_eq!(
        acts.len(),
        n_contexts * grid.points() * n_neurons,
        "activations must be n_contexts × n² × n_neurons"
    );
    let frequencies = grid.frequencies();
    let bases: Vec<Vec<GridVector>> = frequencies
        .iter()
        .map(|&f| grid.pair_directions(f))
        .collect();
    let mut variance = vec![0.0; n_neurons];
    let mut captured = vec![vec![0.0; frequencies.len()]; n_neurons];
    let mut mean = vec![0.0; n_neurons];
    let mut coefficient = vec![0.0; n_neurons];

    for context in acts.chunks_exact(grid.points() * n_neurons) {
        mean.fill(0.0);
        for row in context.chunks_exact(n_neurons) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        // Summing first keeps a constant grid exactly constant, so a dead neuron has variance 0.
        for m in &mut mean {
            *m /= grid.points() as f64;
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
            let best = (1..frequencies.len()).fold(0, |best, fi| {
                if fraction_of(fi) > fraction_of(best) {
                    fi
                } else {
                    best
                }
            });
            NeuronFrequency {
                neuron,
                frequency: frequencies[best],
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
    grid: Grid,
    logits: &[f32],
    n_out: usize,
    n_contexts: usize,
    directions: &[GridVector],
    keep: Keep,
) -> Vec<f32> {
    assert!(n_out > 0, "no outputs");
    assert_eq!(
        logits.len(),
        n_contexts * grid.points() * n_out,
        "logits must be n_contexts × n² × n_out"
    );
    let mut out = Vec::with_capacity(logits.len());
    // coefficients[j * n_out + o]: the coefficient of output o on direction j.
    let mut coefficients = vec![0.0; directions.len() * n_out];
    let mut projection = vec![0.0; n_out];
    for context in logits.chunks_exact(grid.points() * n_out) {
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

/// The norm of each row of an embedding `[n, d]` (the `n` token rows of operands `0..n`)
/// projected on each vector of the 1D Fourier basis over the tokens ([`Grid::basis_1d`]): the
/// norm of `u^T W_E` for each basis vector `u`, in basis order. Their squares sum to the
/// squared norm of the rows (the basis is orthonormal).
pub fn embedding_fourier_norms(grid: Grid, w_e: &[f32], d_model: usize) -> Vec<(String, f64)> {
    assert!(
        w_e.len() >= grid.n * d_model,
        "the embedding has fewer than n rows"
    );
    grid.basis_1d()
        .into_iter()
        .map(|(name, u)| {
            let mut projected = vec![0.0; d_model];
            for (x, &ux) in u.iter().enumerate() {
                for (p, &w) in projected
                    .iter_mut()
                    .zip(&w_e[x * d_model..(x + 1) * d_model])
                {
                    *p += ux * f64::from(w);
                }
            }
            (name, projected.iter().map(|p| p * p).sum::<f64>().sqrt())
        })
        .collect()
}

/// The Gini coefficient of non-negative values, `sum_i sum_j |x_i - x_j| / (2 n sum x)`: 0 when
/// all are equal, `(n - 1) / n` when one holds everything; 0 for an all-zero input. Computed
/// from the sorted values, `sum_i (2i - n - 1) x_(i) / (n sum x)` with `i` from 1.
pub fn gini(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let total: f64 = sorted.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * (i + 1) as f64 - n - 1.0) * x)
        .sum();
    weighted / (n * total)
}

/// `v / |v|`.
fn unit(v: GridVector) -> GridVector {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::SplitMix64;
    use digitlab::log_softmax::mean_cross_entropy;
    use std::f64::consts::PI;

    /// The frequencies of the digit grid.
    const FREQUENCIES: [usize; 5] = [1, 2, 3, 4, 5];
    const DIGITS: Grid = Grid::DIGITS;

    fn dot(u: &[f64], v: &[f64]) -> f64 {
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
        assert_eq!(DIGITS.frequencies(), FREQUENCIES);
        let sums: Vec<_> = FREQUENCIES
            .map(|f| DIGITS.sum_directions(f))
            .into_iter()
            .collect();
        assert_eq!(
            sums.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2, 2, 1]
        );
        let constant = DIGITS.constant();
        let mut all = vec![&constant];
        all.extend(sums.iter().flatten());
        // The constant and the nine sum-directions span every function of (a + b) mod 10.
        assert_eq!(all.len(), 10);
        assert_orthonormal(&all);
        let of_all = DIGITS.sum_directions_of(&FREQUENCIES);
        assert_eq!(of_all.iter().collect::<Vec<_>>(), all[1..]);

        let pairs: Vec<_> = FREQUENCIES
            .map(|f| DIGITS.pair_directions(f))
            .into_iter()
            .collect();
        assert_eq!(
            pairs.iter().map(Vec::len).collect::<Vec<_>>(),
            [8, 8, 8, 8, 3]
        );
        let mut all = vec![&constant];
        all.extend(pairs.iter().flatten());
        assert_orthonormal(&all);
    }

    /// The p×p grid of modular addition, p odd: (p - 1) / 2 frequencies, each with two sum
    /// directions and eight pair directions, orthonormal with the constant; the sum directions
    /// and the constant span the p functions of (a + b) mod p. Checked at p = 13 (every pair
    /// of directions) and the 1D basis at p = 113.
    #[test]
    fn bases_are_orthonormal_on_a_p_by_p_grid() {
        let grid = Grid { n: 13 };
        assert_eq!(grid.frequencies(), (1..=6).collect::<Vec<_>>());
        let constant = grid.constant();
        // Every direction of one kind, over all frequencies, is orthonormal with the constant.
        for (kind, directions_of, count) in [
            (
                "sum",
                Grid::sum_directions as fn(Grid, usize) -> Vec<GridVector>,
                12,
            ),
            ("pair", Grid::pair_directions, 48),
        ] {
            let directions: Vec<GridVector> = grid
                .frequencies()
                .into_iter()
                .flat_map(|f| directions_of(grid, f))
                .collect();
            assert_eq!(directions.len(), count, "{kind}");
            let mut all = vec![&constant];
            all.extend(&directions);
            assert_orthonormal(&all);
        }
        // Each sum direction is cos/sin(w (a + b)) up to its norm, p/sqrt(2) on the grid.
        let w = 2.0 * PI * 4.0 / 13.0;
        let cos4 = &grid.sum_directions(4)[0];
        for a in 0..13 {
            for b in 0..13 {
                let want = (w * (a + b) as f64).cos() * (2.0f64).sqrt() / 13.0;
                assert!((cos4[a * 13 + b] - want).abs() < 1e-12);
            }
        }

        let basis = Grid { n: 113 }.basis_1d();
        assert_eq!(basis.len(), 113);
        assert_eq!(basis[0].0, "const");
        assert_eq!(basis[111].0, "cos 56");
        assert_eq!(basis[112].0, "sin 56");
        for (i, (_, u)) in basis.iter().enumerate() {
            for (j, (_, v)) in basis.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot(u, v) - want).abs() < 1e-12, "<{i}, {j}>");
            }
        }
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
            let got = excluded_logits(DIGITS, &logits, n_out, n_contexts, freqs);
            assert_all_close(&got, &excluded, 1e-5);
            let got = restricted_logits(DIGITS, &logits, n_out, n_contexts, freqs);
            assert_all_close(&got, &restricted, 1e-5);
        }
        // The frequencies are a set: order and repeats do not matter.
        assert_eq!(
            excluded_logits(DIGITS, &logits, n_out, n_contexts, &[4, 2, 2]),
            excluded_logits(DIGITS, &logits, n_out, n_contexts, &[2, 4])
        );
        assert_eq!(
            restricted_logits(DIGITS, &logits, n_out, n_contexts, &[4, 2, 2]),
            restricted_logits(DIGITS, &logits, n_out, n_contexts, &[2, 4])
        );
    }

    #[test]
    fn projection_is_idempotent_and_orthogonal() {
        let mut rng = SplitMix64::new(12);
        let (n_out, n_contexts) = (12, 4);
        let logits = random_logits(&mut rng, n_contexts * 100 * n_out);
        let freqs = [2, 3];
        let excluded = excluded_logits(DIGITS, &logits, n_out, n_contexts, &freqs);
        let restricted = restricted_logits(DIGITS, &logits, n_out, n_contexts, &freqs);
        let mean = restricted_logits(DIGITS, &logits, n_out, n_contexts, &[]);
        let recombined: Vec<f64> = (0..logits.len())
            .map(|i| excluded[i] as f64 + (restricted[i] - mean[i]) as f64)
            .collect();
        assert_all_close(&logits, &recombined, 1e-5);
        // Idempotent.
        let twice = excluded_logits(DIGITS, &excluded, n_out, n_contexts, &freqs);
        assert_all_close(&twice, &as_f64(&excluded), 1e-5);
        let twice = restricted_logits(DIGITS, &restricted, n_out, n_contexts, &freqs);
        assert_all_close(&twice, &as_f64(&restricted), 1e-5);
        // Orthogonal: nothing of the kept frequencies is left in the residual, and nothing else
        // in the projection.
        let left = restricted_logits(DIGITS, &excluded, n_out, n_contexts, &freqs);
        assert_all_close(&left, &as_f64(&mean), 1e-5);
        let left = excluded_logits(DIGITS, &restricted, n_out, n_contexts, &freqs);
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

        let restricted = restricted_logits(DIGITS, &logits, n_out, n_contexts, &FREQUENCIES);
        assert_all_close(&restricted, &as_f64(&logits), 1e-5);
        let kept = mean_cross_entropy(&restricted, n_out, &targets);
        assert!((kept - original).abs() <= 1e-9, "{kept} vs {original}");

        let excluded = excluded_logits(DIGITS, &logits, n_out, n_contexts, &FREQUENCIES);
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
        let unchanged = excluded_logits(DIGITS, &logits, n_out, n_contexts, &[3]);
        assert_all_close(&unchanged, &as_f64(&logits), 1e-5);
        let unchanged = restricted_logits(DIGITS, &logits, n_out, n_contexts, &[2]);
        assert_all_close(&unchanged, &as_f64(&logits), 1e-5);
        let flattened = excluded_logits(DIGITS, &logits, n_out, n_contexts, &[2]);
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
        let got = key_frequencies(DIGITS, &acts, 6, n_contexts, 0.85);
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
        let got = key_frequencies(DIGITS, &acts, 4, n_contexts, 0.85);
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
        assert_eq!(
            key_frequencies(DIGITS, &acts, 4, n_contexts, 0.5).key,
            [1, 5]
        );
    }

    /// Logits of one p×p grid that are exact waves: `sum_f 8 cos(2 pi f (x + y - o) / p)`
    /// for output `o`, so the answer `(x + y) mod p` has the largest logit.
    fn modp_wave_logits(p: usize, freqs: &[usize]) -> Vec<f32> {
        let mut logits = Vec::with_capacity(p * p * p);
        for x in 0..p {
            for y in 0..p {
                for o in 0..p {
                    let s = (x + y) as f64 - o as f64;
                    let v: f64 = freqs
                        .iter()
                        .map(|&f| 8.0 * (2.0 * PI * f as f64 * s / p as f64).cos())
                        .sum();
                    logits.push(v as f32);
                }
            }
        }
        logits
    }

    #[test]
    fn modp_waves_keep_their_loss_restricted_and_give_ln_p_excluded() {
        let p = 23;
        let grid = Grid { n: p };
        let planted = [3, 7];
        let logits = modp_wave_logits(p, &planted);
        let targets: Vec<u8> = (0..p * p).map(|g| ((g / p + g % p) % p) as u8).collect();
        let original = reference_cross_entropy(&logits, p, &targets);
        assert!(original < 0.05, "the waves solve the task: {original}");

        let restricted = restricted_logits(grid, &logits, p, 1, &planted);
        assert_all_close(&restricted, &as_f64(&logits), 1e-4);
        let kept = reference_cross_entropy(&restricted, p, &targets);
        assert!((kept - original).abs() < 1e-6, "{kept} vs {original}");

        // Removing the planted frequencies leaves the grid mean (0): uniform, loss ln p.
        let excluded = excluded_logits(grid, &logits, p, 1, &planted);
        let lost = reference_cross_entropy(&excluded, p, &targets);
        assert!((lost - (p as f64).ln()).abs() < 1e-6, "{lost}");
        // Removing one of them leaves the other's answer; removing another changes nothing.
        let one_left =
            reference_cross_entropy(&excluded_logits(grid, &logits, p, 1, &[3]), p, &targets);
        assert!(
            one_left > original && one_left < (p as f64).ln(),
            "{one_left}"
        );
        let unchanged = excluded_logits(grid, &logits, p, 1, &[5]);
        assert_all_close(&unchanged, &as_f64(&logits), 1e-4);
        // The restricted loss on the planted set is the loss of the logits restricted to
        // nothing but those waves, computed here by plain projection on the two waves.
        let (_, reference) = {
            let mut proj = vec![0.0; logits.len()];
            for o in 0..p {
                for &f in &planted {
                    let w = 2.0 * PI * f as f64 / p as f64;
                    for wave in [f64::cos as fn(f64) -> f64, f64::sin] {
                        let (mut num, mut den) = (0.0, 0.0);
                        for g in 0..p * p {
                            let y = wave(w * (g / p + g % p) as f64);
                            num += y * logits[g * p + o] as f64;
                            den += y * y;
                        }
                        for g in 0..p * p {
                            proj[g * p + o] += num / den * wave(w * (g / p + g % p) as f64);
                        }
                    }
                }
            }
            ((), proj)
        };
        assert_all_close(&restricted, &reference, 1e-4);
    }

    #[test]
    fn key_frequencies_recover_planted_frequencies_on_a_p_grid() {
        let p = 23;
        let grid = Grid { n: p };
        let mut rng = SplitMix64::new(18);
        let w = |f: usize| 2.0 * PI * f as f64 / p as f64;
        // Neurons planted at frequencies 4, 9 and 11, one noise neuron and one dead neuron.
        let neuron = |a: f64, b: f64, j: usize, rng: &mut SplitMix64| match j {
            0 => ((w(4) * a).cos() * (w(4) * b).cos() + 0.5 * (w(4) * (a + b)).sin()).max(-9.0),
            1 => 2.0 + (w(9) * (a + b)).cos(),
            2 => (w(11) * a).sin() * (w(11) * b).cos(),
            3 => rng.range(0.0, 1.0),
            _ => 0.25,
        };
        let mut acts = Vec::new();
        for a in 0..p {
            for b in 0..p {
                for j in 0..5 {
                    acts.push(neuron(a as f64, b as f64, j, &mut rng) as f32);
                }
            }
        }
        let got = key_frequencies(grid, &acts, 5, 1, 0.85);
        assert_eq!(got.key, [4, 9, 11]);
        for (j, f) in [(0, 4), (1, 9), (2, 11)] {
            assert_eq!(got.neurons[j].frequency, f);
            assert!(got.neurons[j].fraction > 1.0 - 1e-9, "{:?}", got.neurons[j]);
        }
        assert!(got.neurons[3].fraction < 0.85);
        assert_eq!(got.neurons[4].fraction, 0.0);
    }

    #[test]
    fn gini_matches_the_mean_absolute_difference() {
        let mut rng = SplitMix64::new(19);
        let values: Vec<f64> = (0..57).map(|_| rng.range(0.0, 3.0)).collect();
        let n = values.len() as f64;
        let mut pairs = 0.0;
        for x in &values {
            for y in &values {
                pairs += (x - y).abs();
            }
        }
        let want = pairs / (2.0 * n * values.iter().sum::<f64>());
        assert!((gini(&values) - want).abs() < 1e-12);
        let mut one_hot = vec![0.0; 113];
        one_hot[7] = 2.5;
        assert!((gini(&one_hot) - 112.0 / 113.0).abs() < 1e-12);
        assert_eq!(gini(&[1.0; 10]), 0.0);
        assert_eq!(gini(&[0.0; 10]), 0.0);
    }

    #[test]
    fn embedding_fourier_norms_find_a_planted_wave() {
        let p = 113;
        let grid = Grid { n: p };
        let d_model = 4;
        // Column 1 is 3 cos(2 pi 5 x / p), column 3 is 2 sin(2 pi 17 x / p); the rest zero.
        let mut w_e = vec![0.0f32; p * d_model];
        for x in 0..p {
            let t = 2.0 * PI * x as f64 / p as f64;
            w_e[x * d_model + 1] = (3.0 * (5.0 * t).cos()) as f32;
            w_e[x * d_model + 3] = (2.0 * (17.0 * t).sin()) as f32;
        }
        let norms = embedding_fourier_norms(grid, &w_e, d_model);
        assert_eq!(norms.len(), p);
        // |3 cos| over p points has norm 3 sqrt(p / 2).
        let half = (p as f64 / 2.0).sqrt();
        for (name, norm) in &norms {
            let want = match name.as_str() {
                "cos 5" => 3.0 * half,
                "sin 17" => 2.0 * half,
                _ => 0.0,
            };
            assert!((norm - want).abs() < 1e-4, "{name}: {norm} vs {want}");
        }
        // Parseval: the squared norms add up to the embedding's.
        let total: f64 = w_e.iter().map(|&w| f64::from(w).powi(2)).sum();
        let parts: f64 = norms.iter().map(|(_, n)| n * n).sum();
        assert!((total - parts).abs() < 1e-6 * total);
    }
}
