//! `sweep`: a grid of digitlab trainings and analyses as one command, on every core of this
//! machine (`sweep run -j N`) or as a SLURM job array (`sweep slurm`), leaving one status
//! table and one summary table in the sweep folder.

mod child;
mod claim;
mod commands;
mod error;
mod execute;
mod folder;
mod grid;
mod interrupt;
mod local;
mod point;
mod report;
mod slurm;
mod status;
mod summary;
mod tools;
mod value;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::BadInput;

/// Run a grid of `train` + `analyze` runs as one command, here or on a SLURM cluster.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  sweep plan sweeps/units-width.toml\n  sweep run sweeps/units-width.toml -j 2\n  \
                  sweep status sweeps/units-width.toml\n  sweep run-one sweeps/units-width.toml --index 3\n  \
                  sweep slurm sweeps/units-width.toml --partition debug --throttle 8\n\n\
                  train and analyze are found beside sweep, or at $DIGITLAB_TRAIN and $DIGITLAB_ANALYZE."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the expanded grid, one line per run, after checking every point with train; run nothing
    Plan(GridArgs),
    /// Train and analyse every point not done yet, -j at a time; resume interrupted ones, retry failed ones
    Run {
        #[command(flatten)]
        grid: GridArgs,
        /// Points run at once [default: the number of cores]; the cores are shared among them.
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Where every point stands: done, running, failed, interrupted or pending, time and result
    Status(GridArgs),
    /// Run one point (what each SLURM task does; also how to rerun a point by hand)
    RunOne {
        #[command(flatten)]
        grid: GridArgs,
        /// The point's index, as `sweep plan` lists it.
        #[arg(long)]
        index: usize,
    },
    /// Run the grid as a SLURM job array: write the sbatch script, submit it, print the job id
    Slurm {
        #[command(flatten)]
        grid: GridArgs,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
}

#[derive(Args)]
struct GridArgs {
    /// The grid file (TOML): [fixed] train options, [axes] to cross, analyses.
    grid: PathBuf,
    /// The sweep folder [default: runs/<grid file name>, or the folder of a sweep.toml given as GRID].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the grid: `steps=10000` (a fixed option), `seed=0..5` (an axis), `analyses=none`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct SlurmArgs {
    /// Partition (queue) to submit to [default: the cluster's].
    #[arg(long)]
    partition: Option<String>,
    /// Time limit per task, e.g. 2:00:00 [default: the partition's].
    #[arg(long)]
    time: Option<String>,
    /// CPUs per task; each point's train and analyze share them.
    #[arg(long, default_value_t = 1)]
    cpus_per_task: usize,
    /// Memory per task, e.g. 2G [default: the partition's].
    #[arg(long)]
    mem: Option<String>,
    /// At most this many tasks at once.
    #[arg(long)]
    throttle: Option<usize>,
    /// An extra #SBATCH line, e.g. --sbatch=--qos=long (repeatable).
    #[arg(long = "sbatch", value_name = "LINE", allow_hyphen_values = true)]
    extra: Vec<String>,
    /// Print the script instead of writing and submitting it.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    // `sweep status | head` closes the pipe early: end quietly, as other Unix tools do, rather
    // than panic in `println!` (Rust ignores SIGPIPE by default).
    // SAFETY: sets the signal disposition once, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Plan(grid) => commands::plan(&grid),
        Cmd::Run { grid, jobs } => commands::run(&grid, jobs),
        Cmd::Status(grid) => commands::status(&grid),
        Cmd::RunOne { grid, index } => commands::run_one(&grid, index),
        Cmd::Slurm { grid, slurm } => commands::slurm(&grid, &slurm),
    };
    match outcome {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<BadInput>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
