//! One point from start to end: claim it, train (or resume) it, analyse it, record what
//! happened. Both executors (`sweep run`'s workers and `sweep run-one` in a SLURM task) run
//! points through here, so a point ends the same way whichever ran it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::child::{run_logged, ChildEnd};
use crate::claim::{hostname, Claim};
use crate::folder::SweepFolder;
use crate::point::Point;
use crate::status::{PointRecord, State};
use crate::tools::{Checked, Tools};

/// What a runner needs besides the point.
pub struct Runner<'a> {
    pub folder: &'a SweepFolder,
    pub tools: &'a Tools,
    pub analyses: &'a [String],
    /// Cores for this point: `analyze` gets them all (RAYON_NUM_THREADS); `train` uses at most
    /// 2 matrix-product threads by default, so it is told `--threads 1` only when a point has
    /// a single core.
    pub cores: usize,
    /// Who runs the point, for the record (e.g. `slurm job 12_3`).
    pub job: String,
}

/// How a point ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done,
    /// Finished by an earlier run; nothing was done.
    AlreadyDone,
    Failed(String),
    Interrupted,
    /// Another process holds the point's claim (who, as the claim says).
    Busy(String),
}

/// The stage a point is in, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    Training,
    Analyzing,
}

impl Runner<'_> {
    /// Run `point` (whose `train --check` gave `checked`) unless another process runs it or it
    /// is done; `on_stage` hears when training and analysis start.
    pub fn run_point(
        &self,
        point: &Point,
        checked: &Checked,
        on_stage: &dyn Fn(Stage),
    ) -> Result<Outcome> {
        let Some(claim) = Claim::try_take(&self.folder.claim(&point.name))? else {
            let holder = Claim::holder(&self.folder.claim(&point.name)).unwrap_or_default();
            return Ok(Outcome::Busy(holder));
        };
        let run_dir = self.folder.run_dir(&point.name);
        let has_run = run_dir.join("manifest.json").is_file();
        let mut record =
            PointRecord::read(self.folder, &point.name).unwrap_or_else(|| PointRecord::new(point));
        let analysed = self.analyses.iter().all(|a| record.analyses.contains(a));
        if record.state == State::Done && has_run && analysed {
            return Ok(Outcome::AlreadyDone);
        }
        record.options = point.options.clone();
        record.trained &= has_run;
        record.state = State::Running;
        record.started = Some(now());
        (
            record.finished,
            record.seconds,
            record.exit_status,
            record.error,
        ) = (None, None, None, None);
        record.job = Some(format!(
            "{}, pid {} on {}",
            self.job,
            std::process::id(),
            hostname()
        ));
        record.write(self.folder)?;
        let started = Instant::now();
        let finish = |mut record: PointRecord,
                      state,
                      exit_status,
                      error: Option<String>|
         -> Result<Outcome> {
            record.state = state;
            record.finished = Some(now());
            record.seconds = Some(started.elapsed().as_secs_f64());
            (record.exit_status, record.error) = (exit_status, error.clone());
            record.write(self.folder)?;
            Ok(match state {
                State::Done => Outcome::Done,
                State::Interrupted => Outcome::Interrupted,
                _ => Outcome::Failed(error.unwrap_or_default()),
            })
        };
        let log = self.folder.log(&point.name);

        if !record.trained {
            on_stage(Stage::Training);
            let mut train = Command::new(&self.tools.train);
            match prepare_run_dir(&run_dir, checked)? {
                Ok(RunStart::New) => train.args(point.train_args()).arg(&run_dir),
                Ok(RunStart::Resume) => train.arg("--resume").arg(&run_dir),
                Err(why) => return finish(record, State::Failed, None, Some(why)),
            };
            train.arg("-q");
            if self.cores < 2 {
                train.args(["--threads", "1"]);
            }
            let end = run_logged(train, &log, Some(claim.raw_fd()))?;
            if let Some((state, why)) = failure("train", &end) {
                return finish(record, state, Some(end.code()), why);
            }
            record.trained = true;
            record.write(self.folder)?;
        }

        on_stage(Stage::Analyzing);
        for analysis in self.analyses {
            let mut analyze = Command::new(&self.tools.analyze);
            analyze
                .args([analysis.as_str()])
                .arg(&run_dir)
                .env("RAYON_NUM_THREADS", self.cores.to_string());
            let end = run_logged(analyze, &log, Some(claim.raw_fd()))?;
            if let Some((state, why)) = failure(&format!("analyze {analysis}"), &end) {
                return finish(record, state, Some(end.code()), why);
            }
        }
        record.analyses = self.analyses.to_vec();
        finish(record, State::Done, Some(0), None)
    }
}

/// `None` if the child succeeded; else the point's state (interrupted when the sweep was
/// asked to stop) and the message for the record.
fn failure(tool: &str, end: &ChildEnd) -> Option<(State, Option<String>)> {
    if end.status.success() {
        return None;
    }
    if end.interrupted {
        return Some((State::Interrupted, Some(format!("{tool} was interrupted"))));
    }
    let what = match end.status.code() {
        Some(code) => format!("{tool} exited with status {code}"),
        None => format!("{tool} was killed by signal {}", end.code() - 128),
    };
    Some((State::Failed, Some(format!("{what}: {}", end.message))))
}

/// How `train` starts on a run directory.
enum RunStart {
    New,
    Resume,
}

/// New run or resume; `Err(why)` if the directory holds something that is not this point's
/// run (nothing is then touched). The leftover of a run killed while creating its directory
/// (a config without a manifest, the run's lock file, an empty `snapshots/`) is removed and the
/// run starts anew.
fn prepare_run_dir(run_dir: &Path, checked: &Checked) -> Result<Result<RunStart, String>> {
    let entries: Vec<String> = match fs::read_dir(run_dir) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Ok(Ok(RunStart::New)),
    };
    if entries.is_empty() {
        return Ok(Ok(RunStart::New));
    }
    let config: Option<Value> = fs::read(run_dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    if let Some(config) = &config {
        let (theirs, ours) = (without_kernel(config), without_kernel(&checked.config));
        if theirs != ours {
            return Ok(Err(format!(
                "{} holds a run with another config than this point's (differs in: {}); move it \
                 away to train this point",
                run_dir.display(),
                differing_keys(&theirs, &ours)
            )));
        }
        if run_dir.join("manifest.json").is_file() {
            return Ok(Ok(RunStart::Resume));
        }
    }
    let leftover = entries.iter().all(|name| {
        name == "config.json"
            || name == digitlab_snapshots::LOCK_FILE
            || name.starts_with('.')
            || (name == "snapshots"
                && fs::read_dir(run_dir.join(name)).is_ok_and(|mut d| d.next().is_none()))
    });
    if !leftover {
        return Ok(Err(format!(
            "{} exists but is not a run directory (no manifest.json); move it away to train this point",
            run_dir.display()
        )));
    }
    fs::remove_dir_all(run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    Ok(Ok(RunStart::New))
}

/// A config without its `kernel`, the record `train` adds of which matrix kernel computed the
/// run: it depends on the machine (a sweep started here may finish on a cluster), not on the
/// point, and it is not part of the run's config hash either.
fn without_kernel(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("kernel");
    }
    config
}

/// The top-level keys whose values differ, for messages.
fn differing_keys(a: &Value, b: &Value) -> String {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return "the whole file".to_string();
    };
    let mut keys: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    keys.sort();
    keys.dedup();
    keys.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The time now, RFC 3339 in UTC to the second.
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
