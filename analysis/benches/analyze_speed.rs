//! The speed goal of `analyze`: replaying a run of 5000 batches at snapshot-every 50 (101
//! snapshots), d_model 128 / 4 heads, one digit, with `analyze all --contexts 100`, should
//! take at most 15 s on a 2-core machine, two threads at least 1.7 times faster than one,
//! and peak memory should not grow with the number of snapshots.
//!
//!     cargo bench -p digitlab-analysis --bench analyze_speed
//!     cargo bench -p digitlab-analysis --bench analyze_speed -- --reps 5
//!
//! Prints figures; asserts nothing. The runs are trained once (in-process, about two minutes)
//! under `target/analyze-bench/` and reused: `units-2500` (51 snapshots) and `units-5000` (101
//! snapshots, the same trajectory extended). Each timing runs the `analyze` binary of this
//! build as a subprocess with `RAYON_NUM_THREADS` set, after deleting `analysis/` so that
//! everything is recomputed; the median of the repetitions is reported. Peak memory is the
//! child's maximum resident set size (`wait4` rusage).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use digitlab::config::TrainConfig;
use digitlab::task::{Layout, TaskConfig};
use digitlab::train::{new_run, resume_run, train};
use digitlab_snapshots::RunDir;

#[path = "../tests/common/scratch.rs"]
mod scratch;
use scratch::copy_dir;

const CONTEXTS: &str = "100";

fn config(steps: u64) -> TrainConfig {
    let task = TaskConfig {
        n_digits: 5,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    };
    let mut cfg = TrainConfig::default_for(task, 128, 4);
    cfg.steps = steps;
    cfg.snapshot_every = 50;
    cfg.checkpoint_every = 500;
    cfg
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Whether `dir` is a complete run of `cfg` with `snapshots` snapshots.
fn is_complete(dir: &Path, cfg: &TrainConfig, snapshots: usize) -> bool {
    let Ok(run) = RunDir::open(dir) else {
        return false;
    };
    let same: Option<TrainConfig> = serde_json::from_value(run.config().clone()).ok();
    same.as_ref() == Some(cfg)
        && run.manifest().snapshots.len() == snapshots
        && run.manifest().snapshots.last().map(|e| e.batch) == Some(cfg.steps)
}

/// Trains 2500 batches, copies the run and extends the copy to 5000 (one trajectory).
fn ensure_runs(base: &Path) -> (PathBuf, PathBuf) {
    let short = base.join("units-2500");
    let long = base.join("units-5000");
    if is_complete(&short, &config(2500), 51) && is_complete(&long, &config(5000), 101) {
        return (short, long);
    }
    let _ = std::fs::remove_dir_all(&short);
    let _ = std::fs::remove_dir_all(&long);
    std::fs::create_dir_all(base).unwrap();
    let cfg = config(2500);
    digitlab::threads::set_threads(digitlab::threads::default_threads(&cfg));
    let start = Instant::now();
    let (run, state, log) = new_run(&cfg, &short).unwrap();
    println!("training {} (2500 batches) ...", short.display());
    train(&cfg, run, state, log, false).unwrap();

    copy_dir(&short, &long);
    let (cfg, run, state, log) = resume_run(&long, Some(5000)).unwrap();
    println!("extending {} to 5000 batches ...", long.display());
    train(&cfg, run, state, log, false).unwrap();
    println!("trained in {:.0} s", start.elapsed().as_secs_f64());
    assert!(is_complete(&short, &config(2500), 51));
    assert!(is_complete(&long, &config(5000), 101));
    (short, long)
}

/// Wall seconds, peak resident memory (MiB) and CPU seconds of `analyze all` on `run`, from
/// scratch.
#[allow(clippy::zombie_processes)] // reaped by `wait4`, which also gives its peak memory
fn analyze_all(run: &Path, threads: usize) -> (f64, f64, f64) {
    let _ = std::fs::remove_dir_all(run.join("analysis"));
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(["all", "-q", "--contexts", CONTEXTS])
        .arg(run)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("analyze starts");
    let (status, max_rss_kib, cpu) = wait4(child.id());
    let seconds = start.elapsed().as_secs_f64();
    if status != 0 {
        let mut stderr = String::new();
        use std::io::Read;
        child.stderr.unwrap().read_to_string(&mut stderr).unwrap();
        panic!("analyze failed (wait status {status}): {stderr}");
    }
    (seconds, max_rss_kib as f64 / 1024.0, cpu)
}

/// Reaps the child `pid`: its wait status, peak resident set size in KiB and CPU seconds
/// (user + system).
fn wait4(pid: u32) -> (i32, i64, f64) {
    let mut status = 0;
    // SAFETY: rusage is plain data, zero-initialised and filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (
        status,
        usage.ru_maxrss,
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    digitlab_analysis::metrics::median(&mut v)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let (short, long) = ensure_runs(&target_dir().join("analyze-bench"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "analyze_speed: `analyze all -q --contexts {CONTEXTS}` on {} (101 snapshots, d_model 128, \
         4 heads, digit 0), {reps} repetitions, {cores} cores, load average before: {}",
        long.display(),
        load_average()
    );
    let mut medians = Vec::new();
    for threads in [1, 2] {
        let runs: Vec<(f64, f64, f64)> = (0..reps).map(|_| analyze_all(&long, threads)).collect();
        let seconds: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let peak = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        let cpu = median(runs.iter().map(|r| r.2).collect());
        let m = median(seconds.clone());
        println!(
            "analyze_speed snapshots=101 RAYON_NUM_THREADS={threads}: median {m:.2} s wall (runs: {}), {cpu:.2} CPU s, peak RSS {peak:.0} MiB",
            seconds
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        medians.push(m);
    }
    println!(
        "analyze_speed speed-up 2 threads vs 1: {:.2}x (goal >= 1.7x); 2 threads {:.2} s (goal <= 15 s)",
        medians[0] / medians[1],
        medians[1]
    );
    for (run, snapshots) in [(&short, 51), (&long, 101)] {
        let peaks: Vec<f64> = (0..reps).map(|_| analyze_all(run, 2).1).collect();
        println!(
            "analyze_speed memory snapshots={snapshots} RAYON_NUM_THREADS=2: peak RSS median {:.0} MiB (runs: {})",
            median(peaks.clone()),
            peaks
                .iter()
                .map(|p| format!("{p:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("load average after: {}", load_average());
}
