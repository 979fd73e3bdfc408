//! Runs per hour of `sweep run` on a grid of small runs (d_model 16, 2000 batches, every
//! analysis) with -j 1 and -j 2, and the sweep's own cost per point (start, checks,
//! bookkeeping, summary) against running `train` and `analyze all` by hand.
//!
//! `cargo bench --workspace --bench sweep_speed` (builds the release train and analyze
//! first). Goals: -j 2 gives at least 1.8x the runs per hour of -j 1 on two cores; the
//! overhead stays under 5% of a run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use support::*;

const POINTS: usize = 4;

fn main() {
    let dir = scratch("bench");
    let grid = write_grid(
        &dir.join("bench.toml"),
        &format!("[fixed]\nd_model = 16\nsteps = 2000\n[axes]\nseed = \"0..{POINTS}\"\n"),
    );
    let (train, analyze) = tools();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // By hand: each point's train then analyze all, one after the other, with every core for
    // analyze (as `sweep run -j 1` gives it).
    let start = Instant::now();
    for seed in 0..POINTS {
        let run = dir.join(format!("by-hand/seed={seed}"));
        let status = Command::new(train)
            .args([
                "--d-model",
                "16",
                "--steps",
                "2000",
                "--seed",
                &seed.to_string(),
                "-q",
            ])
            .arg(&run)
            .status()
            .unwrap();
        assert!(status.success());
        let out = Command::new(analyze)
            .arg("all")
            .arg(&run)
            .env("RAYON_NUM_THREADS", cores.to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let by_hand = start.elapsed().as_secs_f64();

    let mut per_hour = Vec::new();
    let mut seconds = Vec::new();
    for jobs in [1, 2] {
        let folder = dir.join(format!("j{jobs}"));
        let start = Instant::now();
        let out = sweep()
            .args([
                "run",
                grid.to_str().unwrap(),
                "--out",
                folder.to_str().unwrap(),
                "-j",
                &jobs.to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let t = start.elapsed().as_secs_f64();
        seconds.push(t);
        if jobs == 1 {
            // The sweep's own time: its wall time less the points' (claim to record, which
            // holds train and analyze), i.e. start, checks, status table and summary.
            let status =
                digitlab_snapshots::read_parquet(&folder.join("sweep_status.parquet")).unwrap();
            let in_points: f64 = status
                .column("seconds")
                .unwrap()
                .f64()
                .unwrap()
                .iter()
                .flatten()
                .sum();
            let own = (t - in_points) / POINTS as f64;
            println!(
                "sweep -j 1 outside the points: {own:.3} s per point = {:.1}% of a point's {:.2} s (goal < 5%)",
                100.0 * own * POINTS as f64 / in_points,
                in_points / POINTS as f64
            );
        }
        per_hour.push(POINTS as f64 / t * 3600.0);
        println!(
            "sweep run -j {jobs}: {POINTS} runs in {t:.1} s = {:.0} runs/hour",
            per_hour.last().unwrap()
        );
    }
    println!(
        "-j 2 / -j 1 = {:.2}x (goal >= 1.8x on 2 cores; this machine has {cores})",
        per_hour[1] / per_hour[0]
    );
    let run = by_hand / POINTS as f64;
    let overhead = (seconds[0] - by_hand) / POINTS as f64;
    println!(
        "by hand (train + analyze all): {run:.2} s per run; sweep -j 1: {:.2} s per run; \
         difference {overhead:.3} s per point = {:.1}% of a run (load-sensitive)",
        seconds[0] / POINTS as f64,
        100.0 * overhead / run
    );
}
