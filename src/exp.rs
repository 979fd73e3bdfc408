//! A float32 exponential that loops can vectorise, for the softmaxes of training.
//!
//! `f32::exp` calls the C library's `expf` once per element, a call the compiler cannot
//! vectorise: it was 5.6% of a full-batch modular-addition epoch (softmax over 113 logits for
//! 3,831 rows, in the step and again in the log's statistics). Written by hand because it
//! must inline into those loops: the Cephes range reduction `x = n ln 2 + r` and a degree-6
//! polynomial for `e^r`, without branches, so that a loop over a row compiles to SIMD. Its
//! error is at most 2 float32 ulps over the range softmax uses (`x <= 0`); `exp(0)` is exactly
//! 1, so a row's largest logit still contributes exactly 1 to its softmax denominator.

/// Below this (`e^x < 2.6e-38`, twice float32's smallest normal number) it returns 0, as
/// flush-to-zero (on in training, see `fused::denormals`) nearly would anyway.
const MIN_ARG: f32 = -86.98;
/// Above this `e^x` overflows float32; it returns infinity.
const MAX_ARG: f32 = 88.722_83;

/// `e^x` in float32 (0 below `MIN_ARG`, infinity above `MAX_ARG`, NaN for NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: `n * LN2_HI` is exact for |n| < 2^9, so `r` keeps its low bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call to
    // `round` (which baseline x86-64 does not have as an instruction).
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n as 2^(n - 1) from its exponent bits, times 2: n is in [-125, 128], so the biased
    // exponent n - 1 + 127 stays in [1, 254] even where e^x is near float32's largest. n is
    // read from the bits of `shifted`, whose significand holds ROUND + n exactly, not with
    // `n as i32`: Rust's float-to-integer conversion saturates, which compilers do not
    // vectorise, and that one conversion kept the softmax loops scalar.
    let n_plus_126 = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(126);
    let half = f32::from_bits(n_plus_126 << 23);
    let y = e_r * half * 2.0;
    if x < MIN_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else {
        // NaN fails both comparisons and its clamp is NaN, so it comes out here as NaN.
        y
    }
}

/// `x = e^x` for every element of `xs`, in the widest vectors the CPU has.
///
/// The softmaxes of a small step have rows of 10 to 20 floats, too short for vectors: a
/// row's loop ran mostly in its scalar remainder, and [`exp`] was a tenth of a d_model 16
/// step. Their callers shift every row of a block first and take the exponentials of the
/// whole block here, 16 lanes at a time on AVX-512. Each lane computes exactly what [`exp`]
/// does (Rust fuses no multiply-adds), so the bits do not depend on the path.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { exp_in_place_avx512(xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { exp_in_place_avx2(xs) };
        }
    }
    exp_loop(xs);
}

/// The loop of [`exp_in_place`], inlined into each of its paths.
#[inline(always)]
fn exp_loop(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = exp(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_in_place_avx512(xs: &mut [f32]) {
    exp_loop(xs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_in_place_avx2(xs: &mut [f32]) {
    exp_loop(xs);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float32 ulps between `got` and the correctly rounded `e^x`.
    fn ulps(got: f32, x: f32) -> u32 {
        let want = f64::from(x).exp() as f32;
        got.to_bits().abs_diff(want.to_bits())
    }

    #[test]
    fn within_two_ulps_of_the_f64_exponential_over_the_softmax_range() {
        let n = 2_000_000;
        let mut worst = (0, 0.0f32);
        for i in 0..=n {
            let x = MIN_ARG + (0.0 - MIN_ARG) * i as f32 / n as f32;
            let u = ulps(exp(x), x);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulps at x = {}", worst.0, worst.1);
        // And positive arguments up to overflow.
        for i in 0..=100_000 {
            let x = MAX_ARG * i as f32 / 100_000.0;
            assert!(ulps(exp(x), x) <= 2, "x = {x}");
        }
    }

    #[test]
    fn in_place_gives_the_bits_of_the_scalar_exponential_at_every_length() {
        // Lengths around each vector width, so that remainders are covered too.
        for len in [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 100] {
            let xs: Vec<f32> = (0..len).map(|i| -90.0 + 1.37 * i as f32).collect();
            let mut got = xs.clone();
            exp_in_place(&mut got);
            for (x, g) in xs.iter().zip(&got) {
                assert_eq!(g.to_bits(), exp(*x).to_bits(), "len {len}, x = {x}");
            }
        }
        let mut special = [f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, 89.0];
        exp_in_place(&mut special);
        assert_eq!(special[0], 0.0);
        assert!(special[1].is_nan());
        assert_eq!(&special[2..], &[1.0, 1.0, f32::INFINITY]);
    }

    #[test]
    fn exact_at_zero_and_the_edges_are_zero_infinity_and_nan() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(MIN_ARG) > 0.0 && exp(MIN_ARG).is_normal());
        assert!(exp(MAX_ARG).is_finite());
    }
}
