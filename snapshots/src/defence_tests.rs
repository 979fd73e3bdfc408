//! Tests of what a run directory refuses or survives: configs, logs and files that belong to
//! another run, reads of things that are not regular files, recompressed snapshots, unstarted
//! runs, writes without the lock, planted links at temporary names. Each also checks that
//! nothing outside the run was touched.

use std::fs;
use std::path::Path;

use serde_json::json;

use crate::run_tests::{new_run, sample_checkpoint};
use crate::test_support::{sample, sample_log, TestDir};
use crate::{RunDir, RunError, LOCK_FILE};

/// A run with snapshots at 0, 1 and 2, a checkpoint at 2 and the sample log (batches 0 to 2).
fn run_with_files(label: &str) -> (TestDir, RunDir) {
    let (dir, mut run) = new_run(label);
    let (tensors, metadata) = sample();
    for batch in 0..3 {
        run.write_snapshot(batch, &tensors, &metadata).unwrap();
    }
    run.write_checkpoint(&sample_checkpoint(2)).unwrap();
    run.write_train_log(&sample_log()).unwrap();
    (dir, run)
}

#[test]
fn an_edited_config_is_refused_naming_config_json() {
    let (_dir, run) = run_with_files("edited-config");
    let root = run.root().to_path_buf();
    drop(run);
    // Only `steps` may change.
    fs::write(root.join("config.json"), br#"{"seed": 1, "steps": 900}"#).unwrap();
    RunDir::open(&root).unwrap();
    fs::write(root.join("config.json"), br#"{"seed": 2, "steps": 100}"#).unwrap();
    let err = RunDir::open(&root).unwrap_err();
    assert!(
        matches!(&err, RunError::Mismatch { file, .. } if file.ends_with("config.json")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not belong to this run"),
        "{err}"
    );
    assert_eq!(err.exit_status(), 2);
}

#[test]
fn a_foreign_snapshot_or_checkpoint_is_refused_naming_it() {
    let (_a, run) = run_with_files("own");
    let foreign_dir = TestDir::new("foreign");
    let mut other = RunDir::create(
        &foreign_dir.path().join("run"),
        &json!({"seed": 7, "steps": 100}),
    )
    .unwrap();
    let (tensors, metadata) = sample();
    let foreign = other.write_snapshot(1, &tensors, &metadata).unwrap();
    let foreign_checkpoint = other.write_checkpoint(&sample_checkpoint(2)).unwrap();
    for entry in [&foreign, &foreign_checkpoint] {
        fs::copy(other.root().join(&entry.file), run.root().join(&entry.file)).unwrap();
    }
    // The manifest of the run is made to agree with the copied files' checksums, as a
    // careless copy of a whole folder would; only the config hash can tell them apart.
    let mut manifest = run.manifest().clone();
    manifest.snapshots[1] = foreign.clone();
    manifest.checkpoints[0] = foreign_checkpoint.clone();
    fs::write(
        run.root().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let reopened = RunDir::open(run.root()).unwrap();
    let err = reopened.read_snapshot(&foreign).unwrap_err();
    assert!(
        matches!(&err, RunError::Mismatch { file, .. } if file.ends_with("batch-000001.safetensors.zst")),
        "{err:?}"
    );
    let err = reopened.read_checkpoint(&foreign_checkpoint).unwrap_err();
    assert!(
        matches!(&err, RunError::Mismatch { file, .. } if file.ends_with("checkpoint-000002.safetensors.zst")),
        "{err:?}"
    );
    // The run's own snapshot still reads.
    reopened.read_snapshot(&manifest.snapshots[0]).unwrap();
}

#[test]
fn a_foreign_or_shortened_training_log_is_refused() {
    let (_a, run) = run_with_files("log-own");
    let (_b, other) = {
        let dir = TestDir::new("log-other");
        let other =
            RunDir::create(&dir.path().join("run"), &json!({"seed": 9, "steps": 100})).unwrap();
        (dir, other)
    };
    other.write_train_log(&sample_log()).unwrap();
    fs::copy(other.train_log_path(), run.train_log_path()).unwrap();
    let err = run.read_train_log().unwrap_err();
    assert!(
        matches!(&err, RunError::Mismatch { file, .. } if file.ends_with("train_log.parquet")),
        "{err:?}"
    );

    // Rows deleted at the end: the manifest lists batch 2, so the log needs rows 0 and 1.
    let mut short = sample_log();
    short.rows.truncate(1);
    run.write_train_log(&short).unwrap();
    let err = run.read_train_log().unwrap_err();
    assert!(err.to_string().contains("rows were deleted"), "{err}");

    // A row deleted in the middle.
    let mut gap = sample_log();
    gap.rows.remove(1);
    run.write_train_log(&gap).unwrap();
    let err = run.read_train_log().unwrap_err();
    assert!(err.to_string().contains("row 1 is batch 2"), "{err}");
    assert_eq!(err.exit_status(), 2);
}

/// What must be refused without reading a byte: each kind of thing in a snapshot's place.
#[cfg(unix)]
#[test]
fn non_regular_or_oversized_snapshot_files_are_damaged_without_reading() {
    let (_dir, run) = run_with_files("unbounded");
    let entry = run.manifest().snapshots[1].clone();
    let path = run.root().join(&entry.file);
    let place = |make: &dyn Fn(&Path)| {
        let _ = fs::remove_file(&path);
        let _ = fs::remove_dir_all(&path);
        make(&path);
    };
    // What is put in the snapshot's place, named.
    type Case<'a> = (&'a str, Box<dyn Fn(&Path)>);
    let cases: Vec<Case> = vec![
        (
            "symbolic link",
            Box::new(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        ),
        (
            "FIFO",
            Box::new(|p| {
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                // SAFETY: mkfifo only reads the NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
        ),
        ("directory", Box::new(|p| fs::create_dir(p).unwrap())),
        (
            "bytes",
            // A sparse file of 50 GB: refused by its size, never read.
            Box::new(|p| fs::File::create(p).unwrap().set_len(50 << 30).unwrap()),
        ),
    ];
    for (expected, make) in cases {
        place(&*make);
        let err = run.read_snapshot(&entry).unwrap_err();
        assert!(
            matches!(&err, RunError::Damaged { file, .. } if file == &path),
            "{expected}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    let _ = fs::remove_file(&path);
}

#[test]
fn a_recompressed_snapshot_with_the_same_content_is_accepted() {
    let (_dir, run) = run_with_files("recompressed");
    let entry = run.manifest().snapshots[1].clone();
    let path = run.root().join(&entry.file);
    let raw = zstd::stream::decode_all(&fs::read(&path).unwrap()[..]).unwrap();
    let recompressed = zstd::stream::encode_all(&raw[..], 19).unwrap();
    assert_ne!(recompressed.len() as u64, entry.compressed_bytes);
    fs::write(&path, &recompressed).unwrap();
    let snap = run.read_snapshot(&entry).unwrap();
    assert_eq!(snap.batch, 1);
}

#[test]
fn a_run_stopped_before_its_first_snapshot_can_be_created_again() {
    let dir = TestDir::new("unstarted");
    let root = dir.path().join("run");
    // What a start killed after its manifest, before its first snapshot, leaves behind.
    drop(RunDir::create(&root, &json!({"seed": 1})).unwrap());
    fs::write(root.join(".config.json.123-0.tmp"), b"half").unwrap();
    fs::write(
        root.join("snapshots")
            .join(".batch-000000.safetensors.zst.1-2.tmp"),
        b"x",
    )
    .unwrap();
    let run = RunDir::create(&root, &json!({"seed": 2})).unwrap();
    assert_eq!(run.config(), &json!({"seed": 2}));
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.json", LOCK_FILE, "manifest.json", "snapshots"]
    );
    assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 0);
    drop(run);
    // Without a manifest (killed between config and manifest) too.
    fs::remove_file(root.join("manifest.json")).unwrap();
    RunDir::create(&root, &json!({"seed": 3})).unwrap();
    // But not a folder with anything else in it.
    let notes = dir.path().join("notes");
    fs::create_dir(&notes).unwrap();
    fs::write(notes.join("config.json"), b"{}").unwrap();
    fs::write(notes.join("notes.txt"), b"mine").unwrap();
    assert!(matches!(
        RunDir::create(&notes, &json!({})),
        Err(RunError::AlreadyExists { .. })
    ));
    assert_eq!(fs::read_dir(&notes).unwrap().count(), 2);
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_as_run_directory_gets_a_clear_message() {
    let dir = TestDir::new("dangling");
    let link = dir.path().join("run");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    let err = RunDir::create(&link, &json!({})).unwrap_err();
    assert!(
        err.to_string()
            .contains("symbolic link to something that does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn writes_need_the_lock_and_a_second_writer_is_refused() {
    let (_dir, run) = run_with_files("needs-lock");
    let root = run.root().to_path_buf();
    let err = RunDir::open_locked(&root).unwrap_err();
    assert!(err.to_string().contains("is locked by process"), "{err}");
    drop(run);
    let mut read_only = RunDir::open(&root).unwrap();
    assert!(matches!(
        read_only.truncate_after(0),
        Err(RunError::InvalidInput { .. })
    ));
    assert!(read_only.write_train_log(&sample_log()).is_err());
    let mut locked = RunDir::open_locked(&root).unwrap();
    // The config may change in `steps` only.
    locked
        .set_config(&json!({"seed": 1, "steps": 500}))
        .unwrap();
    assert!(matches!(
        locked.set_config(&json!({"seed": 2, "steps": 500})),
        Err(RunError::InvalidInput { .. })
    ));
}

/// Links planted at the temporary names (the old fixed ones included) are never followed; the
/// next writer removes the leftovers, not their targets.
#[cfg(unix)]
#[test]
fn planted_links_at_temporary_names_leave_their_targets_untouched() {
    let (dir, run) = run_with_files("planted");
    let root = run.root().to_path_buf();
    drop(run);
    let outside = dir.path().join("outside.txt");
    fs::write(&outside, b"precious").unwrap();
    let planted = [
        root.join(".manifest.json.tmp"),
        root.join(".train_log.parquet.tmp"),
        root.join(".config.json.tmp"),
        root.join("snapshots")
            .join(".batch-000003.safetensors.zst.tmp"),
    ];
    for link in &planted {
        std::os::unix::fs::symlink(&outside, link).unwrap();
    }
    let mut run = RunDir::open_locked(&root).unwrap();
    for link in &planted {
        assert!(
            fs::symlink_metadata(link).is_err(),
            "{} left",
            link.display()
        );
    }
    // Plant them again while the run is open, then write every kind of file.
    for link in &planted {
        std::os::unix::fs::symlink(&outside, link).unwrap();
    }
    let (tensors, metadata) = sample();
    run.write_snapshot(3, &tensors, &metadata).unwrap();
    run.write_train_log(&sample_log()).unwrap();
    run.set_config(&json!({"seed": 1, "steps": 100})).unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"precious");
    for name in ["manifest.json", "train_log.parquet", "config.json"] {
        assert!(
            fs::symlink_metadata(root.join(name)).unwrap().is_file(),
            "{name}"
        );
    }
    RunDir::open(&root)
        .unwrap()
        .read_train_log()
        .unwrap()
        .unwrap();
}
