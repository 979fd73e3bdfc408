//! Flush-to-zero on the threads the fused step computes on.
//!
//! Once a model fits its data, the softmax tails of confident rows, and the gradients they
//! feed, fall below f32's smallest normal number (1.2e-38). x86 cores multiply such subnormal
//! numbers through a slow microcode path: a full-batch modular-addition epoch slowed from 50 to
//! 86 ms as the model grokked, nearly all of it in the matrix products. So the fused step sets
//! the CPU's flush-to-zero and denormals-are-zero modes (TensorFlow's default on CPU) on every
//! thread it computes on: subnormal results and inputs count as zero. A gradient below 1.2e-38
//! moves a weight by less than 1e-30 under AdamW, whose eps is 1e-8; the trajectory changes as
//! with any other change of rounding. Every run, resume and replay computes this way, so runs
//! stay byte-identical. Elsewhere than x86-64 the modes are left as they are.

/// Sets the modes on this thread and on every thread of the current rayon pool (the ones the
/// step's parallel loops and matrix products run on). The modes stay set for the threads' life.
pub fn flush_to_zero_on_this_pool() {
    set_on_this_thread();
    rayon::broadcast(|_| set_on_this_thread());
}

#[cfg(target_arch = "x86_64")]
fn set_on_this_thread() {
    /// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    const FTZ_DAZ: u32 = 0x8040;
    // `_mm_setcsr` is deprecated in favour of inline assembly, which would say the same with
    // more room for mistakes.
    #[allow(deprecated)]
    // SAFETY: SSE is part of x86-64; FTZ and DAZ change only how subnormal floats round.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | FTZ_DAZ);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_on_this_thread() {}
