//! `train` against the cases a run directory must defend itself from, each with real
//! processes: a second writer on a locked run (two processes), an edited config or a foreign
//! training log at `--resume`, configs on disk that do not validate, options that cannot work
//! (threads, learning rate, memory, also under `ulimit -v`), a run killed in its first
//! moments, a dangling symlink as run directory, links planted at temporary names, and a
//! failing write. Each checks the exit status, the message and that nothing outside the run
//! (or, for a refusal, in it) was changed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_refused, run, run_ok, scratch, small, strs, train, tree};
use digitlab_snapshots::{Manifest, RunDir, LOCK_FILE};

/// `tree` without the lock file, whose content (the holder's pid) is the lock's own business.
fn files(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut t = tree(dir);
    t.remove(Path::new(LOCK_FILE));
    t
}

/// Starts `train` with `args` and waits until the manifest of `dir` lists a snapshot.
fn start_and_wait(args: &[String], dir: &Path) -> std::process::Child {
    let mut child = train()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .is_some_and(|m| !m.snapshots.is_empty());
        if listed {
            return child;
        }
        assert!(child.try_wait().unwrap().is_none(), "train exited early");
        assert!(Instant::now() < deadline, "no snapshot within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_writer_is_refused_naming_the_holder_and_the_lock_dies_with_it() {
    let root = scratch("lock");
    let dir = root.join("run");
    let mut first = start_and_wait(&small(200_000, &dir), &dir);
    let d = dir.to_str().unwrap();
    let out = run(&["--resume", d, "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("is locked by process {}", first.id())),
        "{stderr}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the holder was disturbed"
    );
    // SIGKILL: the kernel releases the lock, a resume proceeds.
    first.kill().unwrap();
    first.wait().unwrap();
    let resumed = RunDir::open(&dir)
        .unwrap()
        .manifest()
        .checkpoints
        .last()
        .map_or(0, |e| e.batch);
    let steps = (resumed + 40).to_string();
    run_ok(&["--resume", d, "--steps", &steps, "-q"]);
    let run = RunDir::open(&dir).unwrap();
    assert_eq!(run.manifest().snapshots.last().unwrap().batch, resumed + 40);
    assert_eq!(
        std::fs::read(dir.join(LOCK_FILE)).unwrap(),
        b"",
        "released cleanly"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_refuses_an_edited_config_or_a_foreign_log_naming_the_file() {
    let root = scratch("foreign");
    let (a, b) = (root.join("a"), root.join("b"));
    run_ok(&strs(&small(40, &a)));
    let mut other = small(40, &b);
    other.splice(0..0, ["--seed".to_string(), "5".to_string()]);
    run_ok(&strs(&other));
    let d = a.to_str().unwrap();

    // An edited seed.
    let config = std::fs::read_to_string(a.join("config.json")).unwrap();
    let edited = config.replace("\"seed\": 0", "\"seed\": 3");
    assert_ne!(edited, config);
    std::fs::write(a.join("config.json"), &edited).unwrap();
    let before = files(&a);
    assert_refused(
        &["--resume", d, "-q"],
        &["config.json", "does not belong to this run"],
    );
    assert_eq!(files(&a), before);
    std::fs::write(a.join("config.json"), &config).unwrap();

    // Another run's log copied in.
    let own_log = std::fs::read(a.join("train_log.parquet")).unwrap();
    std::fs::copy(b.join("train_log.parquet"), a.join("train_log.parquet")).unwrap();
    let before = files(&a);
    assert_refused(
        &["--resume", d, "-q"],
        &["train_log.parquet", "does not belong"],
    );
    assert_eq!(files(&a), before);
    std::fs::write(a.join("train_log.parquet"), own_log).unwrap();

    // Only `steps` may be edited by hand.
    let longer = config.replace("\"steps\": 40", "\"steps\": 60");
    std::fs::write(a.join("config.json"), longer).unwrap();
    run_ok(&["--resume", d, "-q"]);
    assert_eq!(
        RunDir::open(&a)
            .unwrap()
            .manifest()
            .snapshots
            .last()
            .unwrap()
            .batch,
        60
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_config_on_disk_is_validated_like_the_command_line() {
    let root = scratch("disk-config");
    let dir = root.join("run");
    run_ok(&strs(&small(40, &dir)));
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let d = dir.to_str().unwrap();
    // Edits a user could make; the run's manifest is removed from the picture by also
    // editing its hash, so that what is tested is the validation, not the hash check.
    let cases = [
        ("\"n_heads\": 2", "\"n_heads\": 0", "--n-heads"),
        (
            "\"n_layers\": 1",
            "\"n_layers\": 0",
            "--n-layers must be at least 1",
        ),
        ("\"d_model\": 16", "\"d_model\": 15", "divisible"),
        ("\"batch_size\": 128", "\"batch_size\": 0", "--batch-size"),
    ];
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    for (from, to, expected) in cases {
        let edited = config.replace(from, to);
        assert_ne!(edited, config, "{from}");
        std::fs::write(dir.join("config.json"), &edited).unwrap();
        let value: serde_json::Value = serde_json::from_str(&edited).unwrap();
        let hash = digitlab_snapshots::run_config_hash(&value);
        let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        m["config_hash"] = serde_json::Value::String(hash);
        std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
        let before = files(&dir);
        assert_refused(&["--resume", d, "-q"], &["config.json", expected]);
        assert_eq!(files(&dir), before, "{to}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn options_that_cannot_work_are_refused_before_anything_is_written() {
    let root = scratch("options");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--threads", "0"], &["--threads must be at least 1"]),
        (&["--lr", "1e300"], &["--lr 1e300 is too large"]),
        (&["--lr", "NaN"], &["--lr"]),
        (&["--lr", "inf"], &["--lr"]),
        (&["--eps", "1e-60"], &["--eps"]),
        (
            &["--batch-size", "100000000000"],
            &["needs about", "100000000000 examples", "--batch-size"],
        ),
        (
            &["--d-model", "100000", "--n-heads", "1"],
            &["needs about", "GiB"],
        ),
        (
            &["--steps", "10000000000000"],
            &["needs about", "training log"],
        ),
        (
            &["--d-model", "18446744073709551615", "--n-heads", "1"],
            &["needs about"],
        ),
    ];
    for (i, (options, expected)) in cases.iter().enumerate() {
        let dir = root.join(format!("case-{i}"));
        let mut args = options.to_vec();
        args.extend(["-q", dir.to_str().unwrap()]);
        assert_refused(&args, expected);
        assert!(!dir.exists(), "train {args:?} created {}", dir.display());
    }
    // More threads than cores: lowered, with a note, and the run trains.
    let dir = root.join("threads");
    let out = run_ok(&[
        "--threads",
        "100000",
        "--d-model",
        "8",
        "--n-heads",
        "2",
        "--steps",
        "2",
        "-q",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--threads 100000 is more than"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Runs `train args` from `sh` after the shell commands `limits` (e.g. `ulimit -v N`); returns
/// its output and stderr.
#[cfg(unix)]
fn train_under(limits: &str, args: &[&str]) -> (std::process::Output, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{limits} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Under `ulimit -v` the estimate is checked against the address-space limit: a run that fits
/// the machine but not the limit is refused with the estimate instead of aborting.
#[cfg(unix)]
#[test]
fn under_an_address_space_limit_a_big_batch_is_refused_with_the_estimate() {
    let root = scratch("ulimit");
    let dir = root.join("run");
    let (out, stderr) = train_under(
        "ulimit -v 2000000",
        &[
            "--batch-size",
            "200000",
            "--steps",
            "2",
            "-q",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs about") && stderr.contains("ulimit -v"),
        "{stderr}"
    );
    assert!(!dir.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_killed_in_its_first_moments_can_be_started_again() {
    let root = scratch("early-kill");
    for delay_ms in [0, 2, 5, 20] {
        let dir = root.join(format!("run-{delay_ms}"));
        let mut child = train()
            .args(small(40, &dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever was left (nothing, a stub, or a started run), `train` or `--resume` goes on.
        if RunDir::open(&dir).is_ok() {
            run_ok(&["--resume", dir.to_str().unwrap(), "-q"]);
        } else {
            run_ok(&strs(&small(40, &dir)));
        }
        assert_eq!(RunDir::open(&dir).unwrap().manifest().snapshots.len(), 3);
    }
    // The stub a kill between config.json and manifest.json leaves, made by hand.
    let dir = root.join("stub");
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    std::fs::write(dir.join(LOCK_FILE), b"").unwrap();
    run_ok(&strs(&small(40, &dir)));
    std::fs::remove_dir_all(&root).unwrap();
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_as_run_directory_gets_a_clear_message() {
    let root = scratch("dangling");
    let link = root.join("run");
    std::os::unix::fs::symlink(root.join("nowhere"), &link).unwrap();
    assert_refused(
        &strs(&small(40, &link)),
        &["symbolic link", "does not exist"],
    );
    let out = run(&strs(&small(40, &link)));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("os error 17"));
    assert!(!root.join("nowhere").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// Links planted at the temporary names of a run's files (the fixed names of earlier
/// versions) never make `train --resume` write outside the run.
#[cfg(unix)]
#[test]
fn planted_links_at_temporary_names_do_not_redirect_writes() {
    let root = scratch("planted");
    let dir = root.join("run");
    run_ok(&strs(&small(40, &dir)));
    let outside = root.join("outside.txt");
    std::fs::write(&outside, b"precious").unwrap();
    for name in [
        ".manifest.json.tmp",
        ".train_log.parquet.tmp",
        ".config.json.tmp",
        "snapshots/.batch-000060.safetensors.zst.tmp",
        "snapshots/.checkpoint-000080.safetensors.zst.tmp",
    ] {
        std::os::unix::fs::symlink(&outside, dir.join(name)).unwrap();
    }
    run_ok(&["--resume", dir.to_str().unwrap(), "--steps", "80", "-q"]);
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    let run = RunDir::open(&dir).unwrap();
    assert_eq!(run.manifest().snapshots.last().unwrap().batch, 80);
    for entry in &run.manifest().snapshots {
        run.read_snapshot(entry).unwrap();
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A write that fails (here: beyond `ulimit -f`, as a full disk would) ends with status 1 and
/// a message naming the file; what was written is complete and the run resumes.
#[cfg(unix)]
#[test]
fn a_failing_write_exits_1_and_the_run_resumes() {
    let root = scratch("write-fails");
    let dir = root.join("run");
    // SIGXFSZ ignored, so a write past the limit fails with EFBIG instead of killing train.
    let (out, stderr) = train_under(
        "trap '' XFSZ && ulimit -f 64",
        &[
            "--d-model",
            "64",
            "--n-heads",
            "2",
            "--steps",
            "40",
            "-q",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write"), "{stderr}");
    // Whatever the manifest lists is complete.
    if let Ok(run) = RunDir::open(&dir) {
        for entry in &run.manifest().snapshots {
            run.read_snapshot(entry).unwrap();
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
