//! Fewer points for display, with the extremes kept: a 50k-batch log shown point by point
//! would make a page of tens of megabytes, but averaging would flatten the spikes a
//! researcher is looking for. Each bucket of consecutive points keeps its lowest and its
//! highest point (real rows, so hovering shows a batch's logged value), plus the first and
//! last point of the series.

/// Indices (ascending) of the points to keep so that at most about `2 * buckets + 2` remain;
/// all of them when the series is short. Non-finite values are never kept: they cannot be
/// drawn (on a log axis, neither can zero or negatives; the caller filters those).
pub fn keep_extremes(y: &[f64], buckets: usize) -> Vec<usize> {
    let finite: Vec<usize> = (0..y.len()).filter(|&i| y[i].is_finite()).collect();
    if buckets == 0 || finite.len() <= 2 * buckets + 2 {
        return finite;
    }
    let mut keep = Vec::with_capacity(2 * buckets + 2);
    keep.push(finite[0]);
    let n = finite.len();
    for b in 0..buckets {
        let chunk = &finite[b * n / buckets..(b + 1) * n / buckets];
        let (Some(&lo), Some(&hi)) = (
            chunk.iter().min_by(|&&i, &&j| y[i].total_cmp(&y[j])),
            chunk.iter().max_by(|&&i, &&j| y[i].total_cmp(&y[j])),
        ) else {
            continue;
        };
        keep.push(lo.min(hi));
        keep.push(lo.max(hi));
    }
    keep.push(finite[n - 1]);
    keep.dedup();
    keep
}

/// `keep_extremes` applied to a series: the kept (x, y) pairs.
pub fn downsample(x: &[f64], y: &[f64], buckets: usize) -> (Vec<f64>, Vec<f64>) {
    keep_extremes(y, buckets)
        .into_iter()
        .map(|i| (x[i], y[i]))
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_series_are_kept_whole_without_non_finite_points() {
        let y = [1.0, f64::NAN, 3.0, f64::INFINITY, 2.0];
        assert_eq!(keep_extremes(&y, 10), vec![0, 2, 4]);
    }

    #[test]
    fn each_bucket_keeps_its_minimum_and_maximum() {
        // A slow descent with one spike: the spike and the overall minimum must survive.
        let mut y: Vec<f64> = (0..10_000).map(|i| 2.3 - i as f64 * 2e-4).collect();
        y[7_777] = 50.0;
        let keep = keep_extremes(&y, 100);
        assert!(keep.len() <= 202);
        assert!(keep.contains(&7_777));
        assert!(keep.contains(&0) && keep.contains(&9_999));
        assert!(keep.windows(2).all(|w| w[0] < w[1]));
        // Independent check: every 100-point bucket's max and min are present.
        for b in 0..100 {
            let range = b * 100..(b + 1) * 100;
            let max = range
                .clone()
                .max_by(|&i, &j| y[i].total_cmp(&y[j]))
                .unwrap();
            let min = range.min_by(|&i, &j| y[i].total_cmp(&y[j])).unwrap();
            assert!(keep.contains(&max) && keep.contains(&min), "bucket {b}");
        }
    }
}
