//! How many threads candle uses, chosen for this workload.
//!
//! candle runs element-wise ops on a spinning barrier pool (`CANDLE_NUM_THREADS`) and matrix
//! products on rayon (`RAYON_NUM_THREADS`, which it re-reads for every product; when unset it
//! re-reads /proc/cpuinfo each time, measured at about 10% of a step). The tensors here are
//! small, so the barrier pool costs more in spinning than it saves (measured: 2 threads ran at
//! 40% the speed of 1 at d_model 128): element-wise ops always run on one thread, and only
//! matrix products may use more.

/// Sets the threads for matrix products; element-wise ops stay on one thread. Call before the
/// first candle operation (the barrier pool reads its size once).
pub fn set_threads(matmul_threads: usize) {
    // Safe here: called from `main` before any other thread exists (and from benchmarks and
    // tests that set the same values).
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    std::env::set_var("RAYON_NUM_THREADS", matmul_threads.max(1).to_string());
}

/// Threads for matrix products by model width: a second thread pays off only where the
/// products are large (measured with `cargo bench --bench train_speed`).
pub fn default_threads(d_model: usize) -> usize {
    if d_model >= 256 {
        2
    } else {
        1
    }
}
