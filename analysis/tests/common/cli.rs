//! Running the `analyze` binary as a user would, and asserting on its outcome and messages.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `analyze` binary (replaying on two rayon threads).
pub fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("analyze runs")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success; returns stdout and stderr.
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "analyze failed ({}):\n{}",
        out.status,
        text(out)
    );
    text(out)
}

/// Asserts a failure whose message contains every one of `needles`; returns the message.
pub fn failed_with(out: &Output, needles: &[&str]) -> String {
    let message = text(out);
    assert!(
        !out.status.success(),
        "analyze should have failed:\n{message}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "no error message on stderr"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message should name `{needle}`:\n{message}"
        );
    }
    message
}

/// Asserts that no analysis table was written under `run` (the analysis lock file, emptied
/// when its holder ends, is not a table).
pub fn no_analysis_written(run: &Path) {
    let analysis = run.join("analysis");
    if analysis.exists() {
        let files: Vec<_> = std::fs::read_dir(&analysis)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != digitlab_snapshots::LOCK_FILE)
            .collect();
        assert!(files.is_empty(), "analysis files written: {files:?}");
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
