//! `analyze`: replay a run's snapshots into progress measures written as Parquet under
//! `runs/x/analysis/`. A thin layer over `digitlab_analysis`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use digitlab_analysis::analyses::grokking::run_grokking;
use digitlab_analysis::analyses::phases::{phase_inputs, run_phases};
use digitlab_analysis::analyses::snapshot::SnapshotAnalysis;
use digitlab_analysis::analyses::snapshot::{run_snapshot_analyses, EvalOptions};
use digitlab_analysis::analyses::spikes::{analyze_spikes, SpikeAnalysisOptions};
use digitlab_analysis::analyses::summary::summarize;
use digitlab_analysis::metrics::phases::PhaseOptions;
use digitlab_analysis::metrics::spike_detection::SpikeOptions;
use digitlab_analysis::report;
use digitlab_analysis::run::{Run, Selection};
use digitlab_snapshots::RunError;

/// Replay the snapshots of a digitlab run into progress measures (Parquet, tidy long format).
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  analyze loss runs/x\n  analyze all runs/x\n  analyze summary runs/\n  analyze report runs/x --open"
)]
struct Cli {
    #[command(subcommand)]
    analysis: Analysis,
}

#[derive(Subcommand)]
enum Analysis {
    /// Per-digit loss and accuracy over training, also split by carry kind -> loss.parquet
    Loss(RunArgs),
    /// Probability by offset from the naive-sum digit, split by carry-in; pair losses -> naive_lens.parquet
    NaiveLens(RunArgs),
    /// Fourier excluded / restricted loss and key frequencies -> excluded_loss.parquet, key_frequencies.parquet
    ExcludedLoss(RunArgs),
    /// Plateaus (ln 10, carry entropy, zero) and when each digit leaves them -> phases.parquet, plateaus.parquet
    Phases(PhaseArgs),
    /// Modular addition (train --task modp): train/test loss, excluded and restricted loss at
    /// the key frequencies, the embedding's Fourier Gini coefficient, the sum of squared
    /// weights, and the phases memorisation / circuit formation / cleanup -> grokking.parquet,
    /// key_frequencies.parquet, grokking_phases.parquet
    Grokking(RunArgs),
    /// Everything above that applies to the run's task (grokking for modular addition)
    All(PhaseArgs),
    /// One table over every run in a folder: config and phase figures -> <folder>/summary.parquet
    Summary(PhaseArgs),
    /// Loss spikes in the training log, replayed and attributed to parameter groups ->
    /// spikes.parquet, spike_attribution.parquet, spike_steps.parquet
    Spikes(SpikeArgs),
    /// Pictures: computes missing analyses, then writes an interactive page (report.html, works
    /// offline) and the same figures as PNG and SVG (figures/) for a run, or for a folder of runs
    /// (a sweep) comparing them
    Report(ReportArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Options of the analyses computed first (where their tables are missing or out of date).
    #[command(flatten)]
    analyses: PhaseArgs,
    /// Open the page in the default browser.
    #[arg(long)]
    open: bool,
    /// Draw from the tables as they are, without bringing the analyses up to date first.
    #[arg(long)]
    no_analyses: bool,
}

/// `analyze spikes` as a parser of its own, so `report` runs it with exactly its defaults.
#[derive(Parser)]
struct SpikesDefaults {
    #[command(flatten)]
    args: SpikeArgs,
}

#[derive(Args)]
struct SpikeArgs {
    /// The run directory.
    path: PathBuf,
    /// Trailing window (batches) whose median log10(loss) is the baseline.
    #[arg(long, default_value_t = digitlab_analysis::metrics::spike_detection::DEFAULT_SPIKE_WINDOW)]
    window: usize,
    /// A spike opens when log10(loss) exceeds the baseline by this (0.5 = a factor ~3).
    #[arg(long, default_value_t = digitlab_analysis::metrics::spike_detection::DEFAULT_SPIKE_THRESHOLD)]
    threshold: f64,
    /// Contexts (x 100 examples) of the fixed eval batch the attribution measures.
    #[arg(long, default_value_t = 10)]
    contexts: usize,
    #[arg(long, default_value_t = 1234)]
    eval_seed: u64,
    /// Attribute at most this many spikes, the largest first (0: detection only).
    #[arg(long, default_value_t = 5)]
    max_attributed: usize,
}

#[derive(Args)]
struct RunArgs {
    /// The run directory (or, for `summary`, the folder of runs).
    path: PathBuf,
    /// Contexts per digit in the balanced eval set (each crossed with all 100 digit pairs).
    #[arg(long, default_value_t = 100)]
    contexts: usize,
    /// Seed of the eval set (independent of training).
    #[arg(long, default_value_t = 1234)]
    eval_seed: u64,
    /// Digits to analyse, comma-separated [default: every trained digit].
    #[arg(long, value_delimiter = ',')]
    digits: Vec<usize>,
    /// Replay every K-th snapshot.
    #[arg(long, default_value_t = 1)]
    every: usize,
    /// First batch to replay.
    #[arg(long)]
    from: Option<u64>,
    /// Last batch to replay.
    #[arg(long)]
    to: Option<u64>,
    /// Analyse the other snapshots when one is damaged, and list the skipped ones.
    #[arg(long)]
    skip_damaged: bool,
    /// Fraction of a neuron's variance at one frequency that makes it key.
    #[arg(long, default_value_t = 0.85)]
    key_threshold: f64,
    /// Snapshot batch where key frequencies are found [default: the last].
    #[arg(long)]
    key_snapshot: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct PhaseArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Width in batches of the running median and slope windows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value_t = digitlab_analysis::metrics::phases::DEFAULT_SMOOTHING_BATCHES)]
    smoothing_batches: u64,
    /// Flat means |d ln(loss)/d batch| * 1000 below this.
    #[arg(long, default_value_t = digitlab_analysis::metrics::phases::DEFAULT_FLAT_SLOPE)]
    flat_slope: f64,
    /// Shortest plateau, in batches.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value_t = digitlab_analysis::metrics::phases::DEFAULT_MIN_PLATEAU_BATCHES)]
    min_plateau_batches: u64,
    /// A plateau takes a level's name within this distance in ln(loss).
    #[arg(long, default_value_t = digitlab_analysis::metrics::phases::DEFAULT_LEVEL_TOLERANCE)]
    level_tolerance: f64,
    /// Loss below this is the "zero" level.
    #[arg(long, default_value_t = digitlab_analysis::metrics::phases::DEFAULT_ZERO_FLOOR)]
    zero_floor: f64,
}

impl RunArgs {
    fn eval_options(&self) -> EvalOptions {
        EvalOptions {
            contexts: self.contexts,
            eval_seed: self.eval_seed,
            digits: self.digits.clone(),
            selection: Selection {
                every: self.every,
                from: self.from,
                to: self.to,
            },
            skip_damaged: self.skip_damaged,
            key_threshold: self.key_threshold,
            key_snapshot: self.key_snapshot,
            progress: !self.quiet,
        }
    }
}

impl PhaseArgs {
    fn phase_options(&self) -> PhaseOptions {
        PhaseOptions {
            smoothing_batches: self.smoothing_batches,
            flat_slope: self.flat_slope,
            min_plateau_batches: self.min_plateau_batches,
            level_tolerance: self.level_tolerance,
            zero_floor: self.zero_floor,
            ..PhaseOptions::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    digitlab::allocator::keep_freed_buffers();
    configure_threads();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The convention of every digitlab binary ([`RunError::exit_status`]): 1 when the work failed
/// (a write, e.g. a full disk), 2 when the input was refused (a bad option, a damaged, foreign
/// or locked run), which is every error that is not a run error.
fn exit_status(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<RunError>())
        .map_or(2, RunError::exit_status)
}

/// Snapshots are replayed in parallel on rayon's pool (RAYON_NUM_THREADS, or every core);
/// inside one snapshot candle runs on a single thread, so the cores are not oversubscribed.
fn configure_threads() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Ignore the error of a pool built already (only possible in tests).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    digitlab::threads::set_threads(1);
}

/// Each command opens its run once (one manifest for every stage), checks every option and
/// input it will need, then takes the analysis lock and writes.
fn run(cli: Cli) -> Result<()> {
    let snapshot = |args: &RunArgs, analyses: &[SnapshotAnalysis]| -> Result<()> {
        let run = Run::open(&args.path)?;
        refuse_modp(&run)?;
        let options = args.eval_options();
        options.validate(&run)?;
        let _lock = run.dir.lock_analysis()?;
        print_lines(run_snapshot_analyses(&run, analyses, &options)?);
        Ok(())
    };
    match cli.analysis {
        Analysis::Loss(args) => snapshot(&args, &[SnapshotAnalysis::Loss]),
        Analysis::NaiveLens(args) => snapshot(&args, &[SnapshotAnalysis::NaiveLens]),
        Analysis::ExcludedLoss(args) => snapshot(&args, &[SnapshotAnalysis::ExcludedLoss]),
        Analysis::Phases(args) => phases(&args, &[]),
        Analysis::Grokking(args) => grokking(&args),
        Analysis::All(args) => {
            if Run::open(&args.run.path)?.cfg.task.modp.is_some() {
                return grokking(&args.run);
            }
            phases(&args, &SnapshotAnalysis::ALL)
        }
        Analysis::Spikes(args) => spikes(&args),
        Analysis::Report(args) => report(&args),
        Analysis::Summary(args) => {
            let (path, skipped) = summarize(
                &args.run.path,
                &args.run.eval_options(),
                &args.phase_options(),
            )?;
            for s in skipped {
                println!("skipped {s}");
            }
            println!("summary -> {}", path.display());
            Ok(())
        }
    }
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

fn spikes(args: &SpikeArgs) -> Result<()> {
    let run = Run::open(&args.path)?;
    refuse_modp(&run)?;
    let options = SpikeAnalysisOptions {
        detection: SpikeOptions {
            window: args.window,
            threshold: args.threshold,
            ..SpikeOptions::default()
        },
        contexts: args.contexts,
        eval_seed: args.eval_seed,
        max_attributed: args.max_attributed,
    };
    print_lines(analyze_spikes(&run, &options)?);
    Ok(())
}

/// Brings the analyses of `args.run.path` (a run, or every run of a folder) up to date, then
/// writes the report. A failing analysis is reported and skipped: the page says what is missing.
fn report(args: &ReportArgs) -> Result<()> {
    let path = &args.analyses.run.path;
    if !path.is_dir() {
        anyhow::bail!("{} does not exist or is not a folder", path.display());
    }
    let runs = if args.no_analyses {
        Vec::new()
    } else if report::is_run(path) {
        vec![path.clone()]
    } else {
        report::sweep_page::run_dirs(path)?
    };
    for run in &runs {
        let one = PhaseArgs {
            run: RunArgs {
                path: run.clone(),
                digits: args.analyses.run.digits.clone(),
                ..args.analyses.run
            },
            ..args.analyses
        };
        let all = Run::open(run).and_then(|r| {
            if r.cfg.task.modp.is_some() {
                let _lock = r.dir.lock_analysis()?;
                run_grokking(&r, &one.run.eval_options())?;
                return Ok(r);
            }
            let (eval, options) = (one.run.eval_options(), one.phase_options());
            let train_log = phase_inputs(&r, &eval, &options)?;
            let lock = r.dir.lock_analysis()?;
            run_snapshot_analyses(&r, &SnapshotAnalysis::ALL, &eval)?;
            run_phases(&r, train_log.as_ref(), &eval, &options)?;
            drop(lock);
            Ok(r)
        });
        match all {
            // Spikes are a digit analysis: a modular-addition run has none.
            Ok(r) if r.cfg.task.modp.is_some() => {}
            Ok(r) => {
                let has_log = r.dir.train_log_path().is_file();
                if has_log && !r.dir.analysis_path("spikes").is_file() {
                    let defaults = SpikesDefaults::try_parse_from([
                        std::ffi::OsString::from("spikes"),
                        run.clone().into_os_string(),
                    ])?;
                    if let Err(e) = spikes(&defaults.args) {
                        eprintln!("warning: spikes of {}: {e:#}", run.display());
                    }
                }
            }
            Err(e) => eprintln!(
                "warning: analyses of {} not brought up to date: {e:#}",
                run.display()
            ),
        }
    }
    let written = report::write_report(path)?;
    for m in &written.missing {
        println!("not shown: {m}");
    }
    println!(
        "report -> {} ({:.1} MB), {} figures as PNG and SVG in {}",
        written.html.display(),
        written.html_bytes as f64 / 1e6,
        written.pngs.len(),
        path.join(report::FIGURES_DIR).display()
    );
    if args.open {
        open_in_browser(&written.html)?;
    }
    Ok(())
}

/// Opens a file with the desktop's default program; the platforms' own openers are one call,
/// not worth a dependency.
fn open_in_browser(file: &std::path::Path) -> Result<()> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "windows") {
        "explorer"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(file)
        .spawn()
        .with_context(|| format!("cannot start {opener} to open {}", file.display()))?;
    Ok(())
}

/// The digit analyses (eval set of digit pairs, carries, plateaus at ln 10) are not defined on
/// modular addition, which has its own.
fn refuse_modp(run: &Run) -> Result<()> {
    if run.cfg.task.modp.is_some() {
        anyhow::bail!(
            "run {} is modular addition (--task modp): its analyses are `analyze grokking` \
             (which `analyze all` runs)",
            run.id
        );
    }
    Ok(())
}

/// `grokking`: modular addition's measures and phases, under the analysis lock.
fn grokking(args: &RunArgs) -> Result<()> {
    let run = Run::open(&args.path)?;
    let options = args.eval_options();
    let _lock = run.dir.lock_analysis()?;
    let (lines, phases) = run_grokking(&run, &options)?;
    print_lines(lines);
    let fmt = |b: Option<u64>| b.map_or("-".to_string(), |b| b.to_string());
    println!(
        "memorised at {}, cleanup from {}, grokked at {}; restricted loss falls at {}, excluded \
         loss peaks at {}",
        fmt(phases.memorised),
        fmt(phases.cleanup_start),
        fmt(phases.grokked),
        fmt(phases.restricted_falls),
        fmt(phases.excluded_peak)
    );
    Ok(())
}

/// `phases`, after the snapshot `analyses` first (`all`), on one opening of the run.
fn phases(args: &PhaseArgs, analyses: &[SnapshotAnalysis]) -> Result<()> {
    let run = Run::open(&args.run.path)?;
    refuse_modp(&run)?;
    let eval = args.run.eval_options();
    let options = args.phase_options();
    let train_log = phase_inputs(&run, &eval, &options)?;
    let _lock = run.dir.lock_analysis()?;
    if !analyses.is_empty() {
        print_lines(run_snapshot_analyses(&run, analyses, &eval)?);
    }
    let records = run_phases(&run, train_log.as_ref(), &eval, &options)
        .with_context(|| format!("phases of {}", run.id))?;
    for r in records {
        let s = &r.summary;
        let fmt = |b: Option<u64>| b.map_or("-".to_string(), |b| b.to_string());
        println!(
            "digit {} ({}): leaves ln10 at {}, final loss {:.3e} ({}){}",
            r.digit,
            r.source,
            fmt(s.leaves_ln10_batch),
            s.final_loss,
            s.final_level,
            if s.still_descending {
                ", still descending"
            } else {
                ""
            }
        );
    }
    println!("phases -> {}", run.dir.analysis_path("phases").display());
    Ok(())
}
