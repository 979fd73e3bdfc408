//! The `train` binary end to end, on small models: the same seed gives byte-identical run
//! directories (every file the manifest lists, config and log); a run SIGKILLed mid-way (twice)
//! and resumed ends with the same files and log as one never interrupted; `--resume --steps N`
//! extends a finished run exactly as a run trained to N directly; every bad input exits with
//! status 2, names the problem and writes nothing; the parameter count is printed (130 for
//! d_model 2, 2 heads); a diverging run stops with a message naming the batch.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{assert_refused, log_rows, manifest, run, run_ok, scratch, small, strs, train, tree};
use digitlab::config::TrainConfig;
use digitlab_snapshots::{Manifest, RunDir};

/// The two runs have equal manifests, byte-identical listed files and config, equal logs.
fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (manifest(a), manifest(b));
    assert_eq!(ma, mb, "manifests of {} and {}", a.display(), b.display());
    for entry in ma.snapshots.iter().chain(&ma.checkpoints) {
        let (fa, fb) = (
            std::fs::read(a.join(&entry.file)).unwrap(),
            std::fs::read(b.join(&entry.file)).unwrap(),
        );
        assert!(fa == fb, "{} differs", entry.file);
        assert_eq!(fa.len() as u64, entry.compressed_bytes);
    }
    assert_eq!(
        std::fs::read(a.join("config.json")).unwrap(),
        std::fs::read(b.join("config.json")).unwrap()
    );
    assert_eq!(log_rows(a), log_rows(b), "training logs");
}

#[test]
fn same_seed_gives_byte_identical_runs() {
    let root = scratch("same-seed");
    let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
    run_ok(&strs(&small(200, &a)));
    run_ok(&strs(&small(200, &b)));
    assert_same_run(&a, &b);

    let m = manifest(&a);
    let batches =
        |list: &[digitlab_snapshots::FileEntry]| list.iter().map(|e| e.batch).collect::<Vec<_>>();
    assert_eq!(
        batches(&m.snapshots),
        (0..=200).step_by(20).collect::<Vec<u64>>()
    );
    assert_eq!(
        batches(&m.checkpoints),
        (0..=200).step_by(40).collect::<Vec<u64>>()
    );
    // One log row per batch, in order.
    assert_eq!(
        log_rows(&a).iter().map(|r| r.batch).collect::<Vec<_>>(),
        (0..200).collect::<Vec<u64>>()
    );

    // Each snapshot reads back with its batch and the config hash in its metadata, and holds
    // the state dict of the config's model.
    let run = RunDir::open(&a).unwrap();
    let cfg: TrainConfig = serde_json::from_value(run.config().clone()).unwrap();
    let mut names: Vec<String> = cfg
        .model
        .param_specs()
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    for entry in &m.snapshots {
        let snap = run.read_snapshot(entry).unwrap();
        assert_eq!(snap.metadata["batch"], entry.batch.to_string());
        assert_eq!(snap.metadata["config_hash"], cfg.trajectory_hash());
        assert_eq!(
            snap.tensors
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
            names
        );
    }
    // Training changed the weights, and another seed gives other bytes.
    let first = run.read_snapshot(&m.snapshots[0]).unwrap();
    let last = run.read_snapshot(m.snapshots.last().unwrap()).unwrap();
    assert_ne!(first.tensors, last.tensors);
    let mut other = small(200, &c);
    other.splice(0..0, ["--seed".to_string(), "1".to_string()]);
    run_ok(&strs(&other));
    assert_ne!(
        manifest(&c).snapshots.last().unwrap().sha256,
        m.snapshots.last().unwrap().sha256
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Starts `train` and kills it (SIGKILL) once the manifest lists a checkpoint beyond `after`;
/// returns that checkpoint's batch. Panics if the run finishes first.
fn kill_after_checkpoint(args: &[String], dir: &Path, after: u64, steps: u64) -> u64 {
    let mut child = train()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let reached = loop {
        // The manifest is replaced atomically: it is either absent, the old one or the new one.
        let newest = std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
            .and_then(|m| m.checkpoints.last().map(|e| e.batch));
        if let Some(b) = newest.filter(|&b| b > after) {
            break b;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "train exited before a checkpoint beyond {after}"
        );
        assert!(
            Instant::now() < deadline,
            "no checkpoint beyond {after} within 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before it could be killed; raise --steps"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed run reported success");
    let m = manifest(dir);
    assert!(
        m.snapshots.last().unwrap().batch < steps,
        "the killed run had already finished"
    );
    reached
}

#[test]
fn a_run_killed_twice_and_resumed_equals_an_uninterrupted_one() {
    let root = scratch("kill");
    let (reference, killed) = (root.join("reference"), root.join("killed"));
    // Long enough that the writer, which lists files a few times a second, lists a
    // checkpoint well before the end, twice, on a fast machine.
    let steps = 8000;
    run_ok(&strs(&small(steps, &reference)));

    let first = kill_after_checkpoint(&small(steps, &killed), &killed, 0, steps);
    let resume = vec![
        "--resume".to_string(),
        killed.display().to_string(),
        "-q".to_string(),
    ];
    let second = kill_after_checkpoint(&resume, &killed, first, steps);
    assert!(second > first);
    eprintln!("killed after checkpoints {first} and {second} of {steps}");
    run_ok(&strs(&resume));
    assert_same_run(&reference, &killed);
    assert_eq!(log_rows(&killed).len() as u64, steps);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_with_more_steps_equals_training_that_far_directly() {
    let root = scratch("extend");
    let (extended, direct) = (root.join("extended"), root.join("direct"));
    run_ok(&strs(&small(100, &extended)));
    let before = manifest(&extended);
    assert_eq!(
        before.checkpoints.last().unwrap().batch,
        100,
        "a checkpoint at the end"
    );
    run_ok(&[
        "--resume",
        extended.to_str().unwrap(),
        "--steps",
        "220",
        "-q",
    ]);
    run_ok(&strs(&small(220, &direct)));

    let (me, md) = (manifest(&extended), manifest(&direct));
    assert_eq!(me.snapshots, md.snapshots, "snapshots 0, 20, …, 220");
    for entry in &md.snapshots {
        assert_eq!(
            std::fs::read(extended.join(&entry.file)).unwrap(),
            std::fs::read(direct.join(&entry.file)).unwrap()
        );
    }
    // The extended run also keeps its old end checkpoint (batch 100); the others are the same.
    let extra: Vec<u64> = me
        .checkpoints
        .iter()
        .filter(|e| !md.checkpoints.contains(e))
        .map(|e| e.batch)
        .collect();
    assert_eq!(extra, [100]);
    assert!(md.checkpoints.iter().all(|e| me.checkpoints.contains(e)));
    assert_eq!(
        std::fs::read(extended.join("config.json")).unwrap(),
        std::fs::read(direct.join("config.json")).unwrap()
    );
    assert_eq!(log_rows(&extended), log_rows(&direct));
    assert_eq!(log_rows(&direct).len(), 220);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_options_exit_2_with_a_message_and_create_nothing() {
    let root = scratch("bad-options");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--d-model", "10", "--n-heads", "3"],
            &["--d-model 10", "divisible", "--n-heads 3"],
        ),
        (&["--digit", "7"], &["digit 7", "5-digit"]),
        (&["--n-digits", "3", "--digit", "4"], &["digit 4"]),
        (&["--snapshot-every", "0"], &["--snapshot-every"]),
        (&["--steps", "0"], &["--steps"]),
        (&["--lr", "-1"], &["--lr", "-1"]),
        (&["--lr", "0"], &["--lr"]),
        (&["--weight-decay", "-0.5"], &["--weight-decay", "-0.5"]),
        (
            &["--n-digits", "0"],
            &["--n-digits", "between 1 and 9", "0"],
        ),
        (
            &["--n-digits", "10"],
            &["--n-digits", "between 1 and 9", "10"],
        ),
        (&["--checkpoint-every", "0"], &["--checkpoint-every"]),
        (&["--digits", "0,1"], &["--layout answer"]),
    ];
    for (i, (options, expected)) in cases.iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        let mut args = options.to_vec();
        args.extend(["-q", dir.to_str().unwrap()]);
        assert_refused(&args, expected);
        assert!(!dir.exists(), "train {args:?} created {}", dir.display());
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn existing_directories_are_refused_and_left_alone() {
    let root = scratch("existing");
    // An existing run, without --resume.
    let existing = root.join("run");
    run_ok(&strs(&small(40, &existing)));
    let before = tree(&existing);
    assert_refused(
        &strs(&small(40, &existing)),
        &["already exists", "--resume"],
    );
    assert_eq!(tree(&existing), before);
    // A folder with other things in it, without --resume.
    let notes = root.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("notes.txt"), "mine").unwrap();
    assert_refused(&strs(&small(40, &notes)), &["already exists"]);
    assert_eq!(tree(&notes).len(), 1);
    // --resume with options that would change the run's config.
    let dir = existing.to_str().unwrap();
    assert_refused(
        &["--resume", dir, "--lr", "0.5", "-q"],
        &["--lr", "only --steps"],
    );
    assert_eq!(tree(&existing), before);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_of_something_that_is_not_a_run_is_refused() {
    let root = scratch("not-a-run");
    let notes = root.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("notes.txt"), "mine").unwrap();
    assert_refused(
        &["--resume", notes.to_str().unwrap(), "-q"],
        &["not a digitlab run directory", "config.json"],
    );
    assert_eq!(tree(&notes).len(), 1);

    let missing = root.join("missing");
    assert_refused(
        &["--resume", missing.to_str().unwrap(), "-q"],
        &["not a digitlab run directory"],
    );
    assert!(!missing.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_of_a_damaged_run_names_the_damaged_file_and_changes_nothing() {
    let root = scratch("damaged");
    let template = root.join("template");
    run_ok(&strs(&small(100, &template)));
    let files = tree(&template);
    let copy = |name: &str| {
        let dir = root.join(name);
        for (rel, bytes) in &files {
            std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
            std::fs::write(dir.join(rel), bytes).unwrap();
        }
        dir
    };

    // manifest.json that does not parse.
    let dir = copy("bad-manifest");
    std::fs::write(
        dir.join("manifest.json"),
        b"{ \"format\": \"digitlab-run-v1\", \"snap",
    )
    .unwrap();
    let before = tree(&dir);
    assert_refused(
        &["--resume", dir.to_str().unwrap(), "-q"],
        &["manifest.json", "damaged"],
    );
    assert_eq!(tree(&dir), before);

    // The newest checkpoint with one byte changed, and truncated.
    let newest = manifest(&template).checkpoints.last().unwrap().file.clone();
    assert_eq!(newest, "snapshots/checkpoint-000100.safetensors.zst");
    for (name, damage) in [("flipped", 0), ("truncated", 1)] {
        let dir = copy(name);
        let path = dir.join(&newest);
        let mut bytes = std::fs::read(&path).unwrap();
        if damage == 0 {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x40;
        } else {
            bytes.truncate(bytes.len() - 100);
        }
        std::fs::write(&path, bytes).unwrap();
        let before = tree(&dir);
        assert_refused(
            &["--resume", dir.to_str().unwrap(), "-q"],
            &["checkpoint-000100.safetensors.zst"],
        );
        assert_eq!(tree(&dir), before, "{name}: the run was changed");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_parameter_count_is_printed() {
    let root = scratch("count");
    let dir = root.join("run");
    let out = run_ok(&[
        "--d-model",
        "2",
        "--n-heads",
        "2",
        "--steps",
        "2",
        "-q",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("130 trained parameters"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_diverging_run_stops_naming_the_batch_and_keeps_what_it_wrote() {
    let root = scratch("diverging");
    let dir = root.join("run");
    // A learning rate this large blows the weights up within a few steps.
    let out = run(&[
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--steps",
        "300",
        "--lr",
        "1e6",
        "-q",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_ne!(out.status.code(), Some(2), "not a usage error: {stderr}");
    let rows = log_rows(&dir);
    let last = rows.last().expect("the log was written");
    assert!(
        !last.loss.is_finite(),
        "the last logged loss is {}",
        last.loss
    );
    assert!(rows[..rows.len() - 1].iter().all(|r| r.loss.is_finite()));
    assert_eq!(
        rows.iter().map(|r| r.batch).collect::<Vec<_>>(),
        (0..rows.len() as u64).collect::<Vec<_>>()
    );
    assert!(
        stderr.contains(&format!("at batch {}", last.batch)),
        "{stderr}"
    );
    // The snapshot and checkpoint of batch 0 are still there and readable.
    let run = RunDir::open(&dir).unwrap();
    assert_eq!(run.manifest().snapshots[0].batch, 0);
    run.read_snapshot(&run.manifest().snapshots[0]).unwrap();
    run.read_checkpoint(&run.manifest().checkpoints[0]).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}
