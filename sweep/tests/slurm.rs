//! `sweep slurm` on a real single-node SLURM cluster (tests/slurm/cluster.sh): a four-point
//! grid with one point made to fail runs as a job array; the job's final states, the status
//! table and the failed point are checked, and the successful runs' files are byte-identical
//! to the same points run with `sweep run`. Without root or without slurm-wlm and munge, the
//! test says that it was skipped and why (on the terminal, past the test harness's capture).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const GRID: &str = "analyses = [\"loss\", \"phases\"]\n[fixed]\nd_model = 16\nn_heads = 2\nsteps = 300\n\
                    snapshot_every = 50\ncheckpoint_every = 100\n[axes]\n\
                    point = [{ seed = 0 }, { seed = 1 }, { seed = 2 }, { seed = 3, perturb = \"blocks.0.mlp.W_in@5*3e38\" }]\n";

/// Print past libtest's capture (which only takes the print macros).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Why this machine cannot run the cluster, if it cannot.
fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "the single-node cluster needs root (munged runs as the munge user, slurmd as root)"
                .into(),
        );
    }
    for daemon in [
        "/usr/sbin/munged",
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
    ] {
        if !Path::new(daemon).is_file() {
            return Some(format!(
                "{daemon} is missing: apt-get install -y slurm-wlm munge"
            ));
        }
    }
    None
}

/// The cluster, stopped when dropped.
struct Cluster {
    script: PathBuf,
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(state: &Path) -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slurm/cluster.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(state)
            .output()
            .unwrap();
        let mut cluster = Cluster {
            script,
            state: state.to_path_buf(),
            conf: String::new(),
        };
        assert!(
            out.status.success(),
            "cluster.sh start failed: {}",
            stderr(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        cluster.conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .expect("cluster.sh prints SLURM_CONF")
            .to_string();
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.state)
            .status();
    }
}

#[test]
fn a_grid_runs_as_a_job_array_with_the_bytes_of_a_local_sweep() {
    if let Some(why) = unavailable() {
        say(&format!("SKIPPED slurm test: {why}"));
        return;
    }
    let dir = scratch("slurm");
    let grid = write_grid(&dir.join("g.toml"), GRID);
    let g = grid.to_str().unwrap();
    let cluster = Cluster::start(&dir.join("cluster"));
    let on_slurm = dir.join("on-slurm");

    let dry = sweep()
        .args([
            "slurm",
            g,
            "--out",
            on_slurm.to_str().unwrap(),
            "--throttle",
            "2",
            "--dry-run",
        ])
        .args([
            "--partition",
            "debug",
            "--time",
            "10:00",
            "--mem",
            "1G",
            "--sbatch=--comment=sweep-test",
        ])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&dry.stdout).into_owned();
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=debug",
        "#SBATCH --time=10:00",
        "#SBATCH --mem=1G",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --comment=sweep-test",
        "run-one",
    ] {
        assert!(
            script.contains(line),
            "`{line}` not in the script:\n{script}"
        );
    }
    assert!(!on_slurm.exists(), "--dry-run writes nothing");

    let mut submit = sweep();
    submit
        .args([
            "slurm",
            g,
            "--out",
            on_slurm.to_str().unwrap(),
            "--throttle",
            "2",
            "--time",
            "10:00",
        ])
        .env("SLURM_CONF", &cluster.conf);
    let out = submit.output().unwrap();
    assert!(out.status.success(), "sweep slurm: {}", stderr(&out));
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(job.parse::<u64>().is_ok(), "the job id is printed: {job:?}");

    // Poll squeue until the array has left the queue.
    let start = Instant::now();
    loop {
        let q = cluster
            .command("squeue")
            .args(["-h", "-j", &job])
            .output()
            .unwrap();
        if q.status.success() && q.stdout.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the job array did not finish in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let shown = cluster
        .command("scontrol")
        .args(["show", "job", "-o", &job])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let job_states: Vec<&str> = shown
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("JobState="))
        })
        .collect();
    let mut sorted = job_states.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"],
        "{shown}"
    );

    let states = states(&on_slurm);
    let errors = status_column(&on_slurm, "error");
    let jobs = status_column(&on_slurm, "job");
    for (name, state) in &states {
        let expected = if name.contains("perturb") {
            "failed"
        } else {
            "done"
        };
        assert_eq!(state, expected, "{name}");
        if expected == "failed" {
            assert!(
                errors[name]
                    .as_deref()
                    .unwrap()
                    .contains("the training loss became"),
                "{:?}",
                errors[name]
            );
        }
        assert!(
            jobs[name]
                .as_deref()
                .unwrap()
                .contains(&format!("slurm job {job}_")),
            "{:?}",
            jobs[name]
        );
    }
    assert!(
        on_slurm.join("summary.parquet").is_file(),
        "the last task writes the summary"
    );
    let status = sweep()
        .args(["status", g, "--out", on_slurm.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        table.contains("3 done") && table.contains("1 failed"),
        "{table}"
    );

    let local = dir.join("local");
    let out = sweep()
        .args(["run", g, "--out", local.to_str().unwrap(), "-j", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "one point fails locally too: {}",
        stderr(&out)
    );
    let (here, there) = (run_files(&local), run_files(&on_slurm));
    let done: Vec<&String> = here.keys().filter(|k| !k.contains("perturb")).collect();
    assert_eq!(
        done.len(),
        3 * (7 + 4 + 3),
        "7 snapshots, 4 checkpoints and 3 files per run"
    );
    for file in done {
        assert!(
            there.get(file) == Some(&here[file]),
            "{file} differs between SLURM and sweep run"
        );
    }
}
