//! Every bad input gets a message saying what is wrong and exit status 2, and leaves a
//! finished sweep folder exactly as it was: a grid that does not parse, an unknown option, a
//! value `train` rejects (by `sweep plan` too), an empty grid, an unknown analysis, a sweep
//! folder made by another grid of the same name, an index out of range, `sbatch` missing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::*;

const GOOD: &str = "analyses = [\"loss\"]\n[fixed]\nd_model = 16\nn_heads = 2\nsteps = 100\n[axes]\nseed = [0, 1]\n";

/// Every file under `folder` with its bytes.
fn tree(folder: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(folder).unwrap().display().to_string();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn bad_inputs_exit_2_with_a_message_and_touch_nothing() {
    let dir = scratch("bad");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let grid = write_grid(&dir.join("a/g.toml"), GOOD);
    // The default folder is runs/<grid name> in the working directory.
    let in_dir = |args: &[&str]| sweep().args(args).current_dir(&dir).output().unwrap();
    let first = in_dir(&["run", "a/g.toml", "-j", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let folder = dir.join("runs/g");
    assert!(folder.join("summary.parquet").is_file());
    let before = tree(&folder);

    let check = |what: &str, grid_text: Option<&str>, args: &[&str], expect: &[&str]| {
        if let Some(text) = grid_text {
            std::fs::write(&grid, text).unwrap();
        }
        let out = in_dir(args);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {message}");
        for e in expect {
            assert!(message.contains(e), "{what}: `{e}` not in: {message}");
        }
        assert!(
            tree(&folder) == before,
            "{what}: the finished sweep folder changed"
        );
        std::fs::write(&grid, GOOD).unwrap();
    };

    check(
        "parse error",
        Some("[axes]\nseed = [0, 1\n"),
        &["run", "a/g.toml"],
        &["line 2"],
    );
    let unknown = "[fixed]\nd_model = 16\nfoo_bar = 3\n[axes]\nseed = [0, 1]\n";
    for command in ["plan", "run"] {
        check(
            "unknown option",
            Some(unknown),
            &[command, "a/g.toml"],
            &["--foo-bar", "foo_bar", "line 3"],
        );
    }
    let rejected = "[fixed]\nn_heads = 4\nsteps = 100\n[axes]\nd_model = [16, 10]\n";
    for command in ["plan", "run"] {
        check(
            "rejected value",
            Some(rejected),
            &[command, "a/g.toml"],
            &["point 1", "d_model=10", "divisible"],
        );
    }
    check(
        "rejected value in --set",
        None,
        &["run", "a/g.toml", "--set", "lr=-1"],
        &["--lr"],
    );
    check(
        "empty grid",
        Some("# nothing\n"),
        &["run", "a/g.toml"],
        &["empty"],
    );
    check(
        "empty axis",
        Some("[axes]\nseed = []\n"),
        &["plan", "a/g.toml"],
        &["seed", "no values"],
    );
    check(
        "unknown analysis",
        Some(&GOOD.replace("\"loss\"", "\"bogus\"")),
        &["run", "a/g.toml"],
        &["bogus"],
    );
    check(
        "index",
        None,
        &["run-one", "a/g.toml", "--index", "7"],
        &["--index 7", "0 to 1"],
    );
    write_grid(&dir.join("b/g.toml"), GOOD);
    check(
        "another grid of the same name",
        None,
        &["run", "b/g.toml"],
        &["another grid", "--out"],
    );
    // No sbatch on the PATH (slurm may be installed here).
    let out = sweep()
        .args(["slurm", "a/g.toml", "--set", "seed=[5]"])
        .current_dir(&dir)
        .env("PATH", dir.join("a"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sbatch"), "{}", stderr(&out));
    assert!(
        tree(&folder) == before,
        "sbatch missing: the finished sweep folder changed"
    );
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_sweep_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = scratch("pipe");
    let grid = write_grid(&dir.join("g.toml"), GOOD);
    let mut child = sweep()
        .args(["plan", grid.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before `plan` has printed anything (it checks every point first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        !err.contains("panicked"),
        "sweep panicked on a closed pipe:\n{err}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
