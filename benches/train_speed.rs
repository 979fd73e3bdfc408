//! Training speed in steps/s for the configs the speed goals are set for (5 digits, batch 128;
//! the prompt layout, and the answer layout with all digits at d_model 128), with one and two
//! threads, the kernel that ran and the peak resident memory (VmHWM) next to the bytes of the
//! weights, AdamW moments and one batch's activations and gradients (`budget_mib`; the goal is
//! a peak under 4x that), and the cost of writing snapshots every 50 batches. Prints figures;
//! asserts nothing (speed goals are checked by reading them). Each config and thread count runs
//! in a process of its own, so the peak memory is that config's.
//!
//!     cargo bench --bench train_speed                   # all configs
//!     cargo bench --bench train_speed -- 128x4          # one config
//!     cargo bench --bench train_speed -- answer128x4    # the answer layout, all digits
//!     DIGITLAB_BENCH_KERNEL=candle cargo bench --bench train_speed   # candle's autograd

use std::time::Instant;

use digitlab::config::TrainConfig;
use digitlab::fused::{FusedStep, Kernel, StepKind};
use digitlab::task::{Layout, TaskConfig};
use digitlab::threads::run_with_threads;
use digitlab::train::{new_run, train, TrainState};

/// (layout, d_model, n_heads, timed steps).
const CONFIGS: [(Layout, usize, usize, u64); 4] = [
    (Layout::Prompt, 128, 4, 300),
    (Layout::Prompt, 512, 1, 60),
    (Layout::Prompt, 16, 1, 2000),
    (Layout::Answer, 128, 4, 100),
];

/// The name a config is chosen by on the command line.
fn name(layout: Layout, d_model: usize, n_heads: usize) -> String {
    let prefix = if layout == Layout::Answer {
        "answer"
    } else {
        ""
    };
    format!("{prefix}{d_model}x{n_heads}")
}

/// Set to `candle` to measure candle's autograd instead of the default kernel.
const KERNEL_ENV: &str = "DIGITLAB_BENCH_KERNEL";

fn config(layout: Layout, d_model: usize, n_heads: usize) -> TrainConfig {
    let n_digits = 5;
    let task = TaskConfig {
        n_digits,
        layout,
        targets: match layout {
            Layout::Prompt => vec![0],
            Layout::Answer => (0..=n_digits).collect(),
        },
        modp: None,
    };
    let mut cfg = TrainConfig::default_for(task, d_model, n_heads);
    // Recorded as `new_run` records it, so the step is chosen once, as in `train`.
    cfg.kernel = Some(if std::env::var(KERNEL_ENV).is_ok_and(|k| k == "candle") {
        Kernel::here(StepKind::Candle)
    } else {
        cfg.training_kernel()
    });
    cfg
}

/// A line of /proc/self/status in MiB (`VmHWM`: the peak resident set), if readable.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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
        let mut jobs: Vec<String> = CONFIGS
            .iter()
            .map(|&(layout, d, h, _)| name(layout, d, h))
            .chain(["snapshots".to_string()])
            .filter(|name| filter.as_ref().is_none_or(|f| f == name))
            .collect();
        if jobs.is_empty() {
            jobs = filter.into_iter().collect();
        }
        for job in jobs {
            let threads: &[usize] = if job == "snapshots" { &[1] } else { &[1, 2] };
            for &threads in threads {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg(&job)
                    .env(THREADS_ENV, threads.to_string())
                    .status()
                    .unwrap();
                assert!(status.success(), "benchmark child failed");
            }
        }
        return;
    };
    // On the pool, as `train` runs (see `run_with_threads`).
    run_with_threads(threads, || measure(threads, filter.as_deref()));
}

/// One child's measurements at `threads` threads: every config (or the one `filter` names).
fn measure(threads: usize, filter: Option<&str>) {
    for (layout, d_model, n_heads, steps) in CONFIGS {
        if filter
            .as_ref()
            .is_some_and(|f| *f != name(layout, d_model, n_heads))
        {
            continue;
        }
        let cfg = config(layout, d_model, n_heads);
        let rate = steps_per_sec(&cfg, steps);
        let peak = status_mib("VmHWM:").unwrap_or(f64::NAN);
        // Weights and both AdamW moments, plus one batch's activations and gradients (the
        // fused step's buffers, which the candle path exceeds), in MiB.
        let mib = |bytes: f64| bytes / (1 << 20) as f64;
        let trained = cfg.model.n_trained_params() as f64;
        let state = mib(3.0 * trained * 4.0);
        let activations = if cfg.fused_step_applies() {
            mib(FusedStep::buffer_bytes(&cfg, cfg.batch_size, trained))
        } else {
            f64::NAN
        };
        let budget = state + activations;
        println!(
            "train_speed layout={} d_model={d_model} n_heads={n_heads} threads={threads} \
             steps_per_sec={rate:.1} kernel={} peak_mib={peak:.1} budget_mib={budget:.1} \
             (weights+moments {state:.1}, activations+gradients {activations:.1}) \
             peak_to_budget={:.1}x",
            layout.name(),
            cfg.training_kernel(),
            peak / budget,
        );
    }
    if threads == 1 && filter == Some("snapshots") {
        let mut cfg = config(Layout::Prompt, 128, 4);
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
