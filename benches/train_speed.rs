//! Training speed in steps/s for the configs the speed goals are set for (prompt layout,
//! 5 digits, batch 128), with one and two threads, and the cost of writing snapshots every 50
//! batches. Prints figures; asserts nothing (speed goals are checked by reading them).
//!
//!     cargo bench --bench train_speed            # all configs
//!     cargo bench --bench train_speed -- 128x4   # one config

use std::time::Instant;

use digitlab::config::TrainConfig;
use digitlab::task::{Layout, TaskConfig};
use digitlab::threads::set_threads;
use digitlab::train::{new_run, train, TrainState};

const CONFIGS: [(usize, usize, u64); 3] = [(128, 4, 300), (512, 1, 60), (16, 1, 2000)];

fn config(d_model: usize, n_heads: usize) -> TrainConfig {
    let task = TaskConfig {
        n_digits: 5,
        layout: Layout::Prompt,
        targets: vec![0],
    };
    TrainConfig::default_for(task, d_model, n_heads)
}

/// Median steps/s of three timed stretches of `steps` steps after 20 warm-up steps.
fn steps_per_sec(cfg: &TrainConfig, steps: u64) -> f64 {
    let mut state = TrainState::new(cfg);
    for _ in 0..20 {
        state.step(cfg).unwrap();
    }
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..steps {
                state.step(cfg).unwrap();
            }
            steps as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[1]
}

/// Seconds for a whole `train` of `steps` batches with the given snapshot interval.
fn train_seconds(cfg: &TrainConfig, snapshot_every: u64) -> f64 {
    let mut cfg = cfg.clone();
    cfg.snapshot_every = snapshot_every;
    cfg.checkpoint_every = 10 * snapshot_every;
    let dir = std::env::temp_dir().join(format!(
        "digitlab-bench-{}-{snapshot_every}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (run, state, log) = new_run(&cfg, &dir).unwrap();
    let start = Instant::now();
    train(&cfg, run, state, log, false).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    seconds
}

/// Set in the child processes: each thread count runs in a process of its own, because rayon's
/// pool (used by the optimizer) is sized once per process.
const THREADS_ENV: &str = "DIGITLAB_BENCH_THREADS";

fn main() {
    digitlab::allocator::keep_freed_buffers();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let Some(threads) = std::env::var(THREADS_ENV)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
    else {
        for threads in [1, 2] {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(std::env::args().skip(1))
                .env(THREADS_ENV, threads.to_string())
                .status()
                .unwrap();
            assert!(status.success(), "benchmark child failed");
        }
        return;
    };
    set_threads(threads);
    for (d_model, n_heads, steps) in CONFIGS {
        let name = format!("{d_model}x{n_heads}");
        if filter.as_ref().is_some_and(|f| f != &name) {
            continue;
        }
        let rate = steps_per_sec(&config(d_model, n_heads), steps);
        println!("train_speed d_model={d_model} n_heads={n_heads} threads={threads} steps_per_sec={rate:.1}");
    }
    if threads == 1 && filter.as_deref().is_none_or(|f| f == "snapshots") {
        let mut cfg = config(128, 4);
        cfg.steps = 1000;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            without.push(train_seconds(&cfg, cfg.steps));
            with.push(train_seconds(&cfg, 50));
        }
        with.sort_by(f64::total_cmp);
        without.sort_by(f64::total_cmp);
        println!(
            "snapshot_overhead d_model=128 steps=1000 snapshot_every=50: {:.2} s vs {:.2} s without = {:+.1}%",
            with[1],
            without[1],
            100.0 * (with[1] / without[1] - 1.0)
        );
    }
}
