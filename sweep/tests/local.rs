//! `sweep run` end to end with the real `train` and `analyze`: a failing point does not stop
//! the others and makes the exit status non-zero; a sweep killed with SIGKILL, or stopped with
//! SIGINT, and run again ends with the same bytes as a sweep never interrupted; two sweeps on
//! one folder at once train every point exactly once.

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use support::*;

/// A grid of d_model-16 runs with a snapshot every `steps / 12` batches and a checkpoint every
/// `steps / 6`.
fn grid_text(steps: u64, seeds: &str, extra_axis: &str) -> String {
    let (snapshot_every, checkpoint_every) = (steps / 12, steps / 6);
    format!(
        "analyses = [\"loss\", \"phases\"]\n[fixed]\nd_model = 16\nn_heads = 2\nsteps = {steps}\n\
         snapshot_every = {snapshot_every}\ncheckpoint_every = {checkpoint_every}\n[axes]\n\
         seed = {seeds}\n{extra_axis}"
    )
}

/// Wait until some run of `folder` has a snapshot at `batch` or later.
fn wait_for_batch(folder: &Path, batch: u64, child: &mut Child) {
    let start = Instant::now();
    loop {
        let reached = std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| {
                let manifest = std::fs::read(run.path().join("manifest.json")).unwrap_or_default();
                serde_json::from_slice::<digitlab_snapshots::Manifest>(&manifest)
                    .is_ok_and(|m| m.snapshots.last().is_some_and(|s| s.batch >= batch))
            });
        if reached {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before batch {batch}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no run reached batch {batch}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_point_does_not_stop_the_others_and_the_exit_status_says_which() {
    let dir = scratch("failing");
    // Scaling W_in by 3e38 (near the float32 maximum) at batch 5 overflows the activations and
    // makes the training loss NaN: train exits with 1.
    let grid = write_grid(
        &dir.join("g.toml"),
        &grid_text(
            240,
            "[0, 1]",
            "blowup = [{ grad_clip = 1.0 }, { perturb = \"blocks.0.mlp.W_in@5*3e38\" }]\n",
        ),
    );
    let out_dir = dir.join("out");
    let out_dir_s = out_dir.to_str().unwrap();
    let plan = run_sweep(&["plan", grid.to_str().unwrap(), "--out", out_dir_s]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("perturb=blocks.0.mlp.W_in@5*3e38,seed=1,checkpoint_every=40,"),
        "{plan_text}"
    );
    assert!(!out_dir.exists(), "plan must not create the folder");

    let out = run_sweep(&["run", grid.to_str().unwrap(), "--out", out_dir_s, "-j", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("2 point(s) failed"), "{text}");

    let states = states(&out_dir);
    assert_eq!(states.len(), 4);
    let errors = status_column(&out_dir, "error");
    let codes = status_column(&out_dir, "exit_status");
    for (name, state) in &states {
        if name.contains("perturb") {
            assert_eq!(state, "failed", "{name}");
            assert!(
                text.contains(name.as_str()),
                "the failed point {name} is not named: {text}"
            );
            assert_eq!(codes[name].as_deref(), Some("1"));
            assert!(
                errors[name]
                    .as_deref()
                    .unwrap()
                    .contains("the training loss became"),
                "{:?}",
                errors[name]
            );
        } else {
            assert_eq!(state, "done", "{name}");
            let manifest = std::fs::read(out_dir.join(name).join("manifest.json")).unwrap();
            let manifest: digitlab_snapshots::Manifest = serde_json::from_slice(&manifest).unwrap();
            assert_eq!(manifest.snapshots.last().unwrap().batch, 240);
            assert!(out_dir.join(name).join("analysis/phases.parquet").is_file());
        }
    }
    assert!(
        out_dir.join("summary.parquet").is_file(),
        "every point is finished: the summary is due"
    );
    assert!(out_dir.join("sweep.toml").is_file());
}

#[test]
fn killed_or_interrupted_sweeps_resume_to_the_bytes_of_an_uninterrupted_one() {
    let dir = scratch("resume");
    // A d_model-16 run in the test build trains some 2,500 batches a second, and its writer
    // gathers files for up to 200 ms: 6,000 batches leave seconds between the first snapshot
    // seen and the run's end, so the signal lands in training.
    let grid = write_grid(&dir.join("g.toml"), &grid_text(6000, "[0, 1]", ""));
    let g = grid.to_str().unwrap();
    let whole = dir.join("whole");
    let out = run_sweep(&["run", g, "--out", whole.to_str().unwrap(), "-j", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = run_files(&whole);
    assert_eq!(
        expected.len(),
        2 * (13 + 7 + 3),
        "13 snapshots, 7 checkpoints, 3 files per run"
    );

    for (signal, name) in [(libc::SIGKILL, "killed"), (libc::SIGINT, "interrupted")] {
        let folder = dir.join(name);
        let f = folder.to_str().unwrap();
        let mut child = sweep()
            .args(["run", g, "--out", f, "-j", "2"])
            .spawn()
            .unwrap();
        wait_for_batch(&folder, 500, &mut child);
        // Signal the sweep alone (not its process group): it must take its children down.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        if signal == libc::SIGINT {
            assert_eq!(status.code(), Some(130), "Ctrl-C exits with 130");
        }
        // No train survives its sweep: no claim is held, so no point shows as running.
        std::thread::sleep(Duration::from_millis(200));
        let status_out = run_sweep(&["status", g, "--out", f]);
        let table = String::from_utf8_lossy(&status_out.stdout).into_owned();
        assert!(!table.contains(" running "), "{table}");
        assert!(
            states(&folder).values().any(|s| s == "interrupted"),
            "{table}"
        );

        let again = run_sweep(&["run", g, "--out", f, "-j", "2"]);
        assert!(again.status.success(), "{}", stderr(&again));
        assert!(states(&folder).values().all(|s| s == "done"));
        let got = run_files(&folder);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (file, bytes) in &expected {
            assert!(
                got[file] == *bytes,
                "{name}: {file} differs from the uninterrupted sweep"
            );
        }
        let resumed = std::fs::read_dir(&folder).unwrap().flatten().any(|run| {
            let log = folder
                .join(".sweep/logs")
                .join(format!("{}.log", run.file_name().to_string_lossy()));
            std::fs::read_to_string(log).is_ok_and(|l| l.contains("\"--resume\""))
        });
        assert!(
            resumed,
            "{name}: the rerun resumed no run with train --resume"
        );
    }
}

#[test]
fn two_sweeps_on_one_folder_train_every_point_once() {
    let dir = scratch("concurrent");
    let grid = write_grid(&dir.join("g.toml"), &grid_text(240, "\"0..4\"", ""));
    let g = grid.to_str().unwrap();
    let folder = dir.join("out");
    let f = folder.to_str().unwrap();
    let start = || -> Child {
        sweep()
            .args(["run", g, "--out", f, "-j", "1"])
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (start(), start());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let states = states(&folder);
    assert_eq!(states.len(), 4);
    for (name, state) in &states {
        assert_eq!(state, "done");
        assert_eq!(
            train_starts(&folder, name),
            1,
            "{name} was trained more than once"
        );
    }
}
