//! How many threads training uses, chosen for this workload, and the pool it runs on.
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

/// [`set_threads`], then `f` on a pool of that many rayon threads. The training step's parallel
/// loops must start on the pool's own threads: a loop started from a thread outside the pool
/// hands its work to the pool and sleeps until it is done, about 15 µs a loop (measured at
/// d_model 128, a dozen loops in a 2.5 ms step: 342 steps/s from outside the pool, 428 on it).
pub fn run_with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    set_threads(threads);
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
    {
        Ok(pool) => pool.install(f),
        // No thread could be started: run here, on the global pool.
        Err(_) => f(),
    }
}

/// Threads by the size of a step (measured with `cargo bench --workspace --bench
/// train_speed` and the whole `train` process). A second thread pays off where the products
/// are large: 1.4x at d_model 512 and batch 128, 1.6x for full-batch modular addition's 3,831
/// rows at d_model 128, 1.3x at d_model 128 and at d_model 64 (`train`, batch 128: 713 to 909
/// and 2,240 to 2,850 steps/s, medians of 3 alternating rounds). At d_model 32 the two were
/// alike (7,450 and 6,920 steps/s, within the noise). At d_model 16, whose products run
/// through their own kernel, a step is so short that handing the weights' gradients to
/// another thread costs more than it saves (one thread 16,000 steps/s, two 13,400), and the
/// other core is left to the threads that make batches and write the run. The measure is the
/// multiply-adds of the MLP's first product, `rows * d_model * d_mlp`, with `rows` the query
/// rows of a batch: 2^21 at d_model 64 and batch 128.
pub fn default_threads(cfg: &crate::config::TrainConfig) -> usize {
    let rows = cfg.batch_size.saturating_mul(cfg.task.targets.len());
    let mlp = rows
        .saturating_mul(cfg.model.d_model)
        .saturating_mul(cfg.model.d_mlp);
    if mlp >= 1 << 21 {
        2
    } else {
        1
    }
}
