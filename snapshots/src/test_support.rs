//! Shared test fixtures: a throw-away folder removed on drop (so the tests need no `tempfile`
//! crate), a small state dict and a small training log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{LogRow, NamedTensor, TensorStats, TrainLog};

/// A fresh, empty folder under the system temp dir, unique to this process and call.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    /// Create the folder; `label` only makes it recognisable.
    pub(crate) fn new(label: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "digitlab-snapshots-test-{}-{n}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test folder");
        TestDir(path)
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Three tensors (one a scalar, one holding -0.0) and metadata that needs JSON escaping.
pub(crate) fn sample() -> (Vec<NamedTensor>, BTreeMap<String, String>) {
    let tensors = vec![
        NamedTensor {
            name: "unembed.W_U".into(),
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, -0.0, 1e-30],
        },
        NamedTensor {
            name: "embed.W_E".into(),
            shape: vec![3, 2],
            data: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        },
        NamedTensor {
            name: "blocks.0.attn.b_O".into(),
            shape: vec![],
            data: vec![7.0],
        },
    ];
    let metadata = BTreeMap::from([
        ("batch".to_string(), "50".to_string()),
        ("kind".to_string(), "snapshot".to_string()),
        ("quote\"key".to_string(), "é\n".to_string()),
    ]);
    (tensors, metadata)
}

/// A log of three batches, two digits and two tensors, with distinct values everywhere.
pub(crate) fn sample_log() -> TrainLog {
    let row = |batch: u64| {
        let x = batch as f32;
        LogRow {
            batch,
            loss: 2.3 - x * 1e-3,
            digit_loss: vec![2.2 - x * 1e-3, 2.4 - x * 1e-3],
            grad_norm: 0.5 + x,
            lr: 1e-3,
            tensors: vec![
                TensorStats {
                    grad_norm: 0.1 + x,
                    weight_norm: 1.0 + x,
                    update_norm: 1e-4 * (x + 1.0),
                },
                TensorStats {
                    grad_norm: 0.2 + x,
                    weight_norm: 2.0 + x,
                    update_norm: 2e-4 * (x + 1.0),
                },
            ],
            logsumexp_mean: 3.0 + x,
            logsumexp_max: 4.0 + x,
            saturated_fraction: x / 10.0,
            test_loss: None,
        }
    };
    TrainLog {
        digits: vec![0, 5],
        tensor_names: vec!["embed.W_E".into(), "blocks.0.mlp.W_in".into()],
        rows: vec![row(0), row(1), row(2)],
        test_loss: false,
    }
}
