//! The subcommands. Each checks everything it can before it touches anything: the grid parses
//! and expands, the folder belongs to this grid, `train` accepts every point, `analyze` knows
//! every analysis; only then is the folder created and a point run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::error::bad_input;
use crate::execute::{Outcome, Runner};
use crate::folder::{canonical, SweepFolder};
use crate::grid::Grid;
use crate::local::run_local;
use crate::point::Point;
use crate::report::{print_plan, print_status};
use crate::slurm::{find_sbatch, script, submit, SlurmOptions, Submission};
use crate::status::{rows, write_table};
use crate::summary::finish;
use crate::tools::{Checked, Tools};
use crate::{interrupt, GridArgs, SlurmArgs};

/// Exit status of a sweep stopped by Ctrl-C or SIGTERM (as a shell reports SIGINT).
const INTERRUPTED: u8 = 130;

/// A grid read and expanded, and its folder checked to belong to it.
struct Loaded {
    path: PathBuf,
    grid: Grid,
    points: Vec<Point>,
    folder: SweepFolder,
}

fn load(args: &GridArgs) -> Result<Loaded> {
    let text = std::fs::read_to_string(&args.grid).map_err(|e| {
        bad_input(format!(
            "cannot read the grid file {}: {e}",
            args.grid.display()
        ))
    })?;
    let grid = Grid::parse(&text, &args.grid.display().to_string(), &args.set)?;
    let points = grid.points()?;
    let folder = SweepFolder::for_grid(&args.grid, args.out.as_deref());
    folder.check_owner(&args.grid)?;
    Ok(Loaded {
        path: args.grid.clone(),
        grid,
        points,
        folder,
    })
}

/// `train --check` of every point and `analyze NAME --help` of every analysis.
fn check_all(loaded: &Loaded, tools: &Tools) -> Result<Vec<Checked>> {
    tools.check_analyses(&loaded.grid)?;
    tools.check_points(&loaded.grid, &loaded.points, &loaded.folder)
}

pub fn plan(args: &GridArgs) -> Result<ExitCode> {
    let loaded = load(args)?;
    let tools = Tools::locate()?;
    let checked = check_all(&loaded, &tools)?;
    let rows = loaded
        .folder
        .exists()
        .then(|| rows(&loaded.folder, &loaded.points));
    print_plan(
        &loaded.folder,
        &loaded.points,
        &checked,
        rows.as_deref(),
        &loaded.grid.analyses,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: &GridArgs, jobs: Option<usize>) -> Result<ExitCode> {
    let loaded = load(args)?;
    let tools = Tools::locate()?;
    let checked = check_all(&loaded, &tools)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = jobs.unwrap_or(cores);
    if jobs == 0 {
        return Err(bad_input("-j must be at least 1"));
    }
    interrupt::install()?;
    let folder = &loaded.folder;
    folder.prepare(&loaded.path, &loaded.grid.text)?;
    write_table(folder, &loaded.points)?;
    let report = run_local(
        folder,
        &tools,
        &loaded.grid.analyses,
        &loaded.points,
        &checked,
        jobs,
    );

    let ending = finish(folder, &tools, &loaded.points, cores)?;
    eprintln!(
        "{}: {} run now, {} done before; status in {}",
        folder.root().display(),
        report.done,
        report.already_done,
        folder.status_table().display()
    );
    for (name, holder) in &report.busy {
        eprintln!("not run here: {name} is run by {holder}");
    }
    if !report.interrupted.is_empty() || interrupt::interrupted() {
        eprintln!(
            "interrupted: {} point(s) stopped; `sweep run {}` resumes them",
            report.interrupted.len(),
            loaded.path.display()
        );
        return Ok(ExitCode::from(INTERRUPTED));
    }
    report_summary(&ending.summary, folder);
    if !report.failed.is_empty() {
        eprintln!("{} point(s) failed:", report.failed.len());
        for (name, why) in &report.failed {
            eprintln!("  {name}: {why}\n    log: {}", folder.log(name).display());
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(if matches!(ending.summary, Some(Err(_))) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report_summary(summary: &Option<std::result::Result<(), String>>, folder: &SweepFolder) {
    match summary {
        Some(Ok(())) => eprintln!(
            "summary -> {}",
            folder.root().join("summary.parquet").display()
        ),
        Some(Err(why)) => eprintln!("error: {why}"),
        None => eprintln!("summary.parquet waits until every point is done or failed"),
    }
}

pub fn status(args: &GridArgs) -> Result<ExitCode> {
    let loaded = load(args)?;
    let folder = &loaded.folder;
    if !folder.exists() {
        eprintln!("{}: nothing has run yet", folder.root().display());
        print_status(folder, &rows(folder, &loaded.points));
        return Ok(ExitCode::SUCCESS);
    }
    print_status(folder, &write_table(folder, &loaded.points)?);
    Ok(ExitCode::SUCCESS)
}

pub fn run_one(args: &GridArgs, index: usize) -> Result<ExitCode> {
    let loaded = load(args)?;
    let Some(point) = loaded.points.get(index) else {
        return Err(bad_input(format!(
            "--index {index}: the grid has points 0 to {}",
            loaded.points.len() - 1
        )));
    };
    let tools = Tools::locate()?;
    tools.check_analyses(&loaded.grid)?;
    let checked = tools.check_points(&loaded.grid, std::slice::from_ref(point), &loaded.folder)?;
    interrupt::install()?;
    let folder = &loaded.folder;
    folder.prepare(&loaded.path, &loaded.grid.text)?;
    // Inside a SLURM task, the task's CPUs; else every core here.
    let cores = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let job = match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
    ) {
        (Ok(job), Ok(task)) => format!("slurm job {job}_{task}"),
        _ => "sweep run-one".to_string(),
    };
    let runner = Runner {
        folder,
        tools: &tools,
        analyses: &loaded.grid.analyses,
        cores,
        job,
    };
    let outcome = runner.run_point(point, &checked[0], &|_| {})?;
    let ending = finish(folder, &tools, &loaded.points, cores)?;
    let code = match &outcome {
        Outcome::Done | Outcome::AlreadyDone => {
            eprintln!("{}: done", point.name);
            ExitCode::SUCCESS
        }
        Outcome::Busy(holder) => {
            eprintln!("{}: run by {holder}; nothing done here", point.name);
            ExitCode::SUCCESS
        }
        Outcome::Failed(why) => {
            eprintln!("{}: FAILED: {why}", point.name);
            ExitCode::FAILURE
        }
        Outcome::Interrupted => {
            eprintln!("{}: interrupted; run again to resume it", point.name);
            return Ok(ExitCode::from(INTERRUPTED));
        }
    };
    if ending.summary.is_some() {
        report_summary(&ending.summary, folder);
    }
    Ok(code)
}

pub fn slurm(args: &GridArgs, slurm: &SlurmArgs) -> Result<ExitCode> {
    let loaded = load(args)?;
    let tools = Tools::locate()?;
    check_all(&loaded, &tools)?;
    if slurm.cpus_per_task == 0 || slurm.throttle == Some(0) {
        return Err(bad_input(
            "--cpus-per-task and --throttle must be at least 1",
        ));
    }
    let sbatch = if slurm.dry_run {
        None
    } else {
        Some(find_sbatch()?)
    };
    let folder = &loaded.folder;
    let todo: Vec<usize> = rows(folder, &loaded.points)
        .iter()
        .filter(|r| !r.observed.is_done_with(&loaded.grid.analyses))
        .filter_map(|r| r.index)
        .collect();
    if todo.is_empty() {
        eprintln!(
            "every point of {} is done; nothing to submit",
            loaded.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let options = SlurmOptions {
        partition: slurm.partition.clone(),
        time: slurm.time.clone(),
        cpus_per_task: slurm.cpus_per_task,
        mem: slurm.mem.clone(),
        throttle: slurm.throttle,
        extra: slurm.extra.clone(),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let slurm_dir = canonical(&folder.slurm_dir())?;
    let frozen_grid = slurm_dir.join(format!("grid-{stamp}.toml"));
    let submission = Submission {
        sweep: std::env::current_exe().context("cannot find the sweep executable")?,
        tools: &tools,
        folder: canonical(folder.root())?,
        frozen_grid: frozen_grid.clone(),
        indices: &todo,
    };
    let text = script(&submission, &options);
    if slurm.dry_run {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let sbatch = sbatch.expect("found above unless --dry-run");
    folder.prepare(&loaded.path, &loaded.grid.text)?;
    std::fs::create_dir_all(&slurm_dir)
        .with_context(|| format!("cannot create {}", slurm_dir.display()))?;
    digitlab_snapshots::write_atomic(&frozen_grid, loaded.grid.text.as_bytes())?;
    let script_path = slurm_dir.join(format!("job-{stamp}.sbatch"));
    digitlab_snapshots::write_atomic(&script_path, text.as_bytes())?;
    write_table(folder, &loaded.points)?;
    let job = submit(&sbatch, &script_path)?;
    eprintln!(
        "submitted {} task(s) of {} points as job {job}; `sweep status {}` follows them",
        todo.len(),
        loaded.points.len(),
        loaded.path.display()
    );
    println!("{job}");
    Ok(ExitCode::SUCCESS)
}
