//! Tests of the run directory as a whole: the round trips through files, and that damage and
//! misuse are reported as the right errors naming the right file.

use std::collections::BTreeMap;
use std::fs;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::test_support::{sample, sample_log, TestDir};
use crate::{Checkpoint, NamedTensor, RunDir, RunError};

/// A new run in a fresh folder (kept alive by the returned guard).
pub(crate) fn new_run(label: &str) -> (TestDir, RunDir) {
    let dir = TestDir::new(label);
    let run = RunDir::create(&dir.path().join("run"), &json!({"seed": 1, "steps": 100})).unwrap();
    (dir, run)
}

/// Flip one bit of `path` at byte `at`.
pub(crate) fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

#[test]
fn create_writes_config_manifest_and_folder_and_open_reads_them() {
    let (_dir, mut run) = new_run("create");
    assert!(run.root().join("snapshots").is_dir());
    let config_text = fs::read_to_string(run.root().join("config.json")).unwrap();
    assert!(
        config_text.contains("\n  \"seed\": 1"),
        "pretty JSON: {config_text}"
    );

    run.set_config(&json!({"seed": 1, "steps": 200})).unwrap();
    let reopened = RunDir::open(run.root()).unwrap();
    assert_eq!(reopened.config(), &json!({"seed": 1, "steps": 200}));
    assert_eq!(
        reopened.manifest(),
        &crate::Manifest {
            config_hash: Some(crate::run_config_hash(&json!({"seed": 1}))),
            ..crate::Manifest::default()
        }
    );
    assert_eq!(reopened.manifest().format, "digitlab-run-v1");
}

#[test]
fn create_accepts_an_empty_folder_and_refuses_a_used_one() {
    let dir = TestDir::new("create-refuse");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let mut run = RunDir::create(&empty, &json!({})).unwrap();
    let (tensors, metadata) = sample();
    run.write_snapshot(0, &tensors, &metadata).unwrap();
    drop(run);

    // Now `empty` holds a run: a second create must refuse, naming it and the way out.
    let err = RunDir::create(&empty, &json!({})).unwrap_err();
    assert!(matches!(&err, RunError::AlreadyExists { path } if path == &empty));
    assert!(err.to_string().contains("--resume"), "{err}");

    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        RunDir::create(&file, &json!({})),
        Err(RunError::AlreadyExists { .. })
    ));
}

#[test]
fn open_says_which_file_is_missing_or_damaged() {
    let dir = TestDir::new("open");
    let err = RunDir::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, RunError::NotARun { missing, .. } if missing.ends_with("config.json")),
        "{err:?}"
    );

    fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let err = RunDir::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, RunError::NotARun { missing, .. } if missing.ends_with("manifest.json")),
        "{err:?}"
    );

    fs::write(dir.path().join("manifest.json"), b"{\"format\": ").unwrap();
    let err = RunDir::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, RunError::Damaged { file, .. } if file.ends_with("manifest.json")),
        "{err:?}"
    );
    assert!(err.to_string().contains("manifest.json"), "{err}");

    // Parses, but points outside the snapshots folder.
    fs::write(
        dir.path().join("manifest.json"),
        br#"{"format":"digitlab-run-v1","checkpoints":[],"snapshots":[{"batch":0,
            "file":"../x","raw_bytes":1,"compressed_bytes":1,"sha256":"00"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        RunDir::open(dir.path()),
        Err(RunError::Damaged { .. })
    ));
}

#[test]
fn snapshot_round_trip_with_correct_manifest_entry() {
    let (_dir, mut run) = new_run("snapshot");
    let (tensors, metadata) = sample();
    let entry = run.write_snapshot(50, &tensors, &metadata).unwrap();

    assert_eq!(entry.file, "snapshots/batch-000050.safetensors.zst");
    let compressed = fs::read(run.root().join(&entry.file)).unwrap();
    assert_eq!(entry.compressed_bytes, compressed.len() as u64);
    let raw = zstd::stream::decode_all(&compressed[..]).unwrap();
    assert_eq!(entry.raw_bytes, raw.len() as u64);
    let sha: String = Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(entry.sha256, sha);

    let reopened = RunDir::open(run.root()).unwrap();
    assert_eq!(reopened.manifest().snapshots, vec![entry.clone()]);
    let snap = reopened.read_snapshot(&entry).unwrap();
    let mut expected = tensors.clone();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(snap.batch, 50);
    assert_eq!(snap.tensors, expected);
    let mut stamped = metadata.clone();
    stamped.insert(crate::CONFIG_HASH_KEY.into(), run.config_hash().into());
    assert_eq!(snap.metadata, stamped);

    // Rewriting the same batch gives identical bytes and a single entry.
    let again = run.write_snapshot(50, &tensors, &metadata).unwrap();
    assert_eq!(again, entry);
    assert_eq!(fs::read(run.root().join(&entry.file)).unwrap(), compressed);
    assert_eq!(run.manifest().snapshots.len(), 1);
}

#[test]
fn flipped_or_truncated_snapshot_is_damaged_naming_the_file() {
    let (_dir, mut run) = new_run("damage");
    let (tensors, metadata) = sample();
    let entry = run.write_snapshot(7, &tensors, &metadata).unwrap();
    let path = run.root().join(&entry.file);
    let original = fs::read(&path).unwrap();

    for at in [original.len() / 2, original.len() - 2, 6] {
        fs::write(&path, &original).unwrap();
        flip_byte(&path, at);
        let err = run.read_snapshot(&entry).unwrap_err();
        assert!(
            matches!(&err, RunError::Damaged { file, .. } if file == &path),
            "byte {at}: {err:?}"
        );
        assert!(err.to_string().contains("batch-000007.safetensors.zst"));
    }

    fs::write(&path, &original[..original.len() - 3]).unwrap();
    let err = run.read_snapshot(&entry).unwrap_err();
    assert!(
        matches!(&err, RunError::Damaged { file, .. } if file == &path),
        "{err:?}"
    );

    fs::remove_file(&path).unwrap();
    let err = run.read_snapshot(&entry).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn compressed_snapshot_written_elsewhere_reads_back() {
    let (_dir, mut run) = new_run("precompressed");
    let (tensors, mut metadata) = sample();
    metadata.insert(crate::CONFIG_HASH_KEY.into(), run.config_hash().into());
    let (bytes, raw_len, sha) = crate::compress_snapshot(&tensors, &metadata).unwrap();
    let entry = run
        .write_compressed_snapshot(3, &bytes, raw_len, sha)
        .unwrap();
    assert_eq!(run.read_snapshot(&entry).unwrap().metadata, metadata);

    // A malformed checksum is refused before it can spoil the manifest.
    let err = run
        .write_compressed_snapshot(4, &bytes, raw_len, "nope".into())
        .unwrap_err();
    assert!(matches!(err, RunError::InvalidInput { .. }));
    assert_eq!(
        RunDir::open(run.root()).unwrap().manifest().snapshots.len(),
        1
    );
}

/// A checkpoint whose moments exist only for some parameters (biases are not trained).
pub(crate) fn sample_checkpoint(batch: u64) -> Checkpoint {
    let t = |name: &str, x: f32| NamedTensor {
        name: name.into(),
        shape: vec![2],
        data: vec![x, -x],
    };
    Checkpoint {
        batch,
        params: vec![t("embed.W_E", 1.0), t("unembed.b_U", 0.0)],
        adam_m: vec![t("embed.W_E", 0.5)],
        adam_v: vec![t("embed.W_E", 0.25)],
    }
}

#[test]
fn checkpoint_round_trip() {
    let (_dir, mut run) = new_run("checkpoint");
    let checkpoint = sample_checkpoint(500);
    let entry = run.write_checkpoint(&checkpoint).unwrap();
    assert_eq!(entry.file, "snapshots/checkpoint-000500.safetensors.zst");
    let reopened = RunDir::open(run.root()).unwrap();
    assert_eq!(reopened.manifest().checkpoints, vec![entry.clone()]);
    assert_eq!(reopened.read_checkpoint(&entry).unwrap(), checkpoint);

    // The file is a safetensors state dict with prefixed names and the documented metadata.
    let raw =
        zstd::stream::decode_all(&fs::read(run.root().join(&entry.file)).unwrap()[..]).unwrap();
    let (tensors, metadata) = crate::decode_tensors(&raw).unwrap();
    assert_eq!(metadata["kind"], "checkpoint");
    assert_eq!(metadata["batch"], "500");
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "adam_m.embed.W_E",
            "adam_v.embed.W_E",
            "param.embed.W_E",
            "param.unembed.b_U"
        ]
    );

    // A snapshot entry is not a checkpoint.
    let snap = run
        .write_snapshot(500, &checkpoint.params, &BTreeMap::new())
        .unwrap();
    assert!(run.read_checkpoint(&snap).is_err());
}

#[test]
fn truncate_after_removes_later_entries_and_files() {
    let (_dir, mut run) = new_run("truncate");
    let (tensors, metadata) = sample();
    for batch in [0, 50, 100, 150] {
        run.write_snapshot(batch, &tensors, &metadata).unwrap();
    }
    for batch in [50, 150] {
        run.write_checkpoint(&sample_checkpoint(batch)).unwrap();
    }
    run.truncate_after(50).unwrap();

    let reopened = RunDir::open(run.root()).unwrap();
    let batches = |list: &[crate::FileEntry]| list.iter().map(|e| e.batch).collect::<Vec<_>>();
    assert_eq!(batches(&reopened.manifest().snapshots), [0, 50]);
    assert_eq!(batches(&reopened.manifest().checkpoints), [50]);
    let mut files: Vec<String> = fs::read_dir(run.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "batch-000000.safetensors.zst",
            "batch-000050.safetensors.zst",
            "checkpoint-000050.safetensors.zst",
        ]
    );
}

#[test]
fn train_log_round_trip_through_parquet() {
    let (_dir, run) = new_run("train-log");
    assert_eq!(run.read_train_log().unwrap(), None);
    let log = sample_log();
    run.write_train_log(&log).unwrap();
    assert_eq!(run.read_train_log().unwrap(), Some(log));
    assert!(run.train_log_path().ends_with("train_log.parquet"));

    fs::write(run.train_log_path(), b"garbage").unwrap();
    let err = run.read_train_log().unwrap_err();
    assert!(
        matches!(&err, RunError::Damaged { file, .. } if file == &run.train_log_path()),
        "{err:?}"
    );
}

#[test]
fn analysis_files_go_into_the_analysis_folder() {
    let (_dir, run) = new_run("analysis");
    let path = run.analysis_path("metrics");
    assert_eq!(path, run.root().join("analysis").join("metrics.parquet"));
    let mut df = sample_log().to_dataframe().unwrap();
    crate::write_parquet_atomic(&path, &mut df).unwrap();
    assert_eq!(crate::read_parquet(&path).unwrap(), df);
}

/// Snapshots and a checkpoint written together: every file listed, in batch order, each
/// reading back as written, the manifest on disk the same as in memory, and no temporary file
/// left behind.
#[test]
fn write_files_lists_every_file_with_one_manifest() {
    let (_dir, mut run) = new_run("write-files");
    let (tensors, metadata) = sample();
    let checkpoint = sample_checkpoint(100);
    let snapshot = |batch| crate::NewFile::Snapshot {
        batch,
        tensors: tensors.clone(),
        metadata: metadata.clone(),
    };
    let files = vec![
        snapshot(100),
        crate::NewFile::Checkpoint(checkpoint.clone()),
        snapshot(50),
    ];
    let entries = run.write_files(files).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.batch).collect::<Vec<_>>(),
        [100, 100, 50]
    );

    let reopened = RunDir::open(run.root()).unwrap();
    assert_eq!(reopened.manifest(), run.manifest());
    let snapshots = &reopened.manifest().snapshots;
    assert_eq!(
        snapshots.iter().map(|e| e.batch).collect::<Vec<_>>(),
        [50, 100]
    );
    // Tensors come back sorted by name.
    let mut sorted = tensors.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in snapshots {
        assert_eq!(reopened.read_snapshot(entry).unwrap().tensors, sorted);
    }
    let listed = &reopened.manifest().checkpoints;
    assert_eq!(listed.len(), 1);
    let read = reopened.read_checkpoint(&listed[0]).unwrap();
    assert_eq!(read.batch, 100);
    assert_eq!(read.params, checkpoint.params);
    let leftovers: Vec<_> = fs::read_dir(run.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
