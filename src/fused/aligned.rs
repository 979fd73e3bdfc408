//! Float buffers that start on a cache line.
//!
//! A `Vec<f32>` starts wherever the allocator puts it (16-byte aligned with glibc), so a
//! 64-byte vector load of one of its rows is split across two cache lines three times in
//! four. The small-product kernel reads and writes whole rows of 16 floats, and split loads
//! made its products up to twice as slow at d_model 16. The step's buffers are [`Floats`].

use std::ops::{Deref, DerefMut};

/// Floats in a cache line.
const LINE: usize = 16;

/// One cache line of floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; LINE]);

/// A buffer of floats whose first float starts a cache line.
pub struct Floats {
    lines: Vec<Line>,
    len: usize,
}

impl Floats {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Floats {
        Floats {
            lines: vec![Line([0.0; LINE]); len.div_ceil(LINE)],
            len,
        }
    }

    /// Makes this `len` floats long, keeping what it held (zeros where it grows), for scratch
    /// space that is written before it is read: zeroing it on every use was 3% of a d_model-16
    /// step.
    pub fn set_len(&mut self, len: usize) {
        let lines = len.div_ceil(LINE);
        if lines > self.lines.len() {
            self.lines.resize(lines, Line([0.0; LINE]));
        }
        self.len = len;
    }
}

impl Deref for Floats {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `LINE` floats without padding, and `lines` holds at least `len`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_its_floats() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut floats = Floats::zeros(len);
            assert_eq!(floats.len(), len);
            assert_eq!(floats.as_ptr() as usize % 64, 0);
            assert!(floats.iter().all(|&x| x == 0.0));
            floats.iter_mut().for_each(|x| *x = 1.0);
            floats.set_len(len / 2);
            assert_eq!(floats.len(), len / 2);
            assert!(floats.iter().all(|&x| x == 1.0));
            floats.set_len(2 * len + 20);
            assert_eq!(floats.as_ptr() as usize % 64, 0);
            assert!(floats[..len].iter().all(|&x| x == 1.0));
            assert!(floats[len..].iter().all(|&x| x == 0.0));
        }
    }
}
