//! `train`: train a transformer on n-digit addition and record snapshots, checkpoints and a
//! per-batch log into a run directory. A thin layer over `digitlab::train`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use digitlab::config::{Perturbation, TrainConfig};
use digitlab::resources::bounded_threads;
use digitlab::task::{Layout, TaskConfig};
use digitlab::threads::default_threads;
use digitlab::train::{check_config, new_run, resume_run, train, TrainState};
use digitlab_snapshots::{RunDir, RunError, TrainLog};

/// Train a 1-layer transformer on n-digit addition (or, with --task modp, on modular addition
/// as in Nanda et al. 2023), writing weight snapshots (zstd-compressed safetensors with
/// TransformerLens names), optimizer checkpoints and a per-batch log.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  train runs/x\n  train --d-model 8 --n-heads 1 --digit 1 --weight-decay 0.25 --steps 5000 runs/y\n  train --layout answer --digits all --steps 3000 runs/z\n  train --resume runs/x --steps 10000\n  train --task modp --p 113 --train-fraction 0.3 --steps 25000 --snapshot-every 250 runs/m"
)]
struct Args {
    /// The run directory to create (must not exist, or be empty).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint (bit-identical to a run
    /// never interrupted). Only --steps may change.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,

    /// addition: n-digit addition, one batch of random operands per step; modp: `x y =` ->
    /// (x + y) mod p, full-batch on a seeded training set of the p² pairs.
    #[arg(long, value_enum, default_value_t = Task::Addition)]
    task: Task,
    /// modp: the modulus (3 to 1000).
    #[arg(long, default_value_t = 113)]
    p: usize,
    /// modp: the fraction of the p² pairs in the training set, in (0, 1); the rest is the test
    /// set. The split is a function of --seed.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    train_fraction: f64,
    /// modp: log the test loss every N epochs (steps).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,

    /// Operand length n (1 to 9): a and b are uniform in [0, 10^n).
    #[arg(long, default_value_t = 5)]
    n_digits: usize,
    /// prompt: `a+b=`, one digit read at `=`; answer: the sum appended, each digit read at the
    /// position before it.
    #[arg(long, value_enum, default_value_t = Layout::Prompt)]
    layout: Layout,
    /// The answer digit to train (0 = units, n = the final carry).
    #[arg(long, conflicts_with = "digits")]
    digit: Option<usize>,
    /// Several answer digits (comma-separated, e.g. 0,1,2) or `all`; answer layout only.
    #[arg(long)]
    digits: Option<String>,

    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    /// MLP width [default: 4 * d_model].
    #[arg(long)]
    d_mlp: Option<usize>,
    #[arg(long, default_value_t = 1)]
    n_layers: usize,
    /// Output vocabulary (12 as in TransformerLens: the digits, `+` and `=`; p for modp).
    #[arg(long, default_value_t = 12)]
    d_vocab_out: usize,

    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.98)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Decoupled weight decay, as PyTorch's AdamW.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Clip the global gradient norm to this value [default: no clipping].
    #[arg(long)]
    grad_clip: Option<f64>,

    /// Examples per batch (addition; modp trains on its whole training set).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Optimizer steps (batches) in total.
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Snapshot the weights at batch 0, every N batches and at the end.
    #[arg(long, default_value_t = 50)]
    snapshot_every: u64,
    /// Write an optimizer checkpoint every N batches [default: 10 * --snapshot-every].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Threads for the training step [default: 2 for large steps (d_model 64 and up at batch
    /// 128, full-batch modular addition), else 1].
    #[arg(long)]
    threads: Option<usize>,
    /// Test-only: scale a parameter group at a batch, GROUP@BATCH*FACTOR.
    #[arg(long, hide = true)]
    perturb: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Only check the options: print the config the run would have (JSON) and write nothing.
    #[arg(long, conflicts_with = "resume")]
    check: bool,
}

/// Why `train` stopped, with the exit status to end with: 2 when the input was refused
/// before training started (bad option, unusable, damaged, foreign or locked run directory,
/// a run too big for the machine); 1 when the work failed (a write failed, e.g. a full disk;
/// the loss diverged). See [`RunError::exit_status`] for the same convention in the library.
struct Failure {
    error: anyhow::Error,
    status: u8,
}

impl Failure {
    /// `error` with the status of the [`RunError`] behind it, or `default`.
    fn new(error: anyhow::Error, default: u8) -> Failure {
        let status = error
            .chain()
            .find_map(|e| e.downcast_ref::<RunError>())
            .map_or(default, RunError::exit_status);
        Failure { error, status }
    }
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    digitlab::allocator::keep_freed_buffers();
    if let Err(e) = check_resume_options(&matches).and_then(|()| check_task_options(&matches)) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { error, status }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(status)
        }
    }
}

fn run(args: Args) -> std::result::Result<(), Failure> {
    let refused = |e| Failure::new(e, 2);
    let quiet = args.quiet;
    if args.check {
        // The checks of a new run (options, config, memory), then the config it would have.
        let cfg = config_from_args(&args).map_err(refused)?;
        check_config(&cfg).map_err(refused)?;
        println!(
            "{}",
            serde_json::to_string(&cfg).map_err(|e| refused(e.into()))?
        );
        return Ok(());
    }
    // Every check before anything is written: the options, then (in the preparation) the
    // config, the memory estimate and the run directory.
    let requested = args
        .threads
        .map(bounded_threads)
        .transpose()
        .map_err(refused)?;
    let prepared = match &args.resume {
        Some(dir) => resume_run(dir, args.steps),
        None => prepare_new(&args),
    };
    let (cfg, run, state, log) = prepared.map_err(refused)?;
    let (threads, note) = match requested {
        Some(checked) => checked,
        None => bounded_threads(default_threads(&cfg)).map_err(refused)?,
    };
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let task = match &cfg.task.modp {
        Some(m) => format!(
            "addition mod {} ({} training pairs, full batch)",
            m.p,
            m.n_train()
        ),
        None => format!(
            "{}-digit addition, digit(s) {:?}, {} layout",
            cfg.task.n_digits,
            cfg.task.targets,
            cfg.task.layout.name()
        ),
    };
    eprintln!(
        "training {} trained parameters ({} layer, d_model {}, {} heads, d_mlp {}) on {task}; \
         batches {}..{} into {}",
        cfg.model.n_trained_params(),
        cfg.model.n_layers,
        cfg.model.d_model,
        cfg.model.n_heads,
        cfg.model.d_mlp,
        state.batch,
        cfg.steps,
        run.root().display()
    );
    digitlab::threads::run_with_threads(threads, || train(&cfg, run, state, log, !quiet))
        .map_err(|e| Failure::new(e, 1))
}

type Prepared = (TrainConfig, RunDir, TrainState, TrainLog);

fn prepare_new(args: &Args) -> Result<Prepared> {
    let cfg = config_from_args(args)?;
    let run_dir = args.run_dir.as_ref().context("no run directory given")?;
    let (run, state, log) = new_run(&cfg, run_dir)?;
    Ok((cfg, run, state, log))
}

/// The config of a new run from the options (not validated yet).
fn config_from_args(args: &Args) -> Result<TrainConfig> {
    let n = args.n_digits;
    let task = match args.task {
        Task::Modp => TaskConfig::modp(args.p, args.train_fraction, args.eval_every),
        Task::Addition => TaskConfig {
            n_digits: n,
            layout: args.layout,
            targets: match (&args.digit, &args.digits) {
                (Some(k), _) => vec![*k],
                (None, Some(list)) => parse_digits(list, n)?,
                (None, None) => vec![0],
            },
            modp: None,
        },
    };
    // Checked first: the defaults below (batch size, vocabulary) are computed from it.
    task.validate()?;
    let modp = task.modp.is_some();
    let mut cfg = TrainConfig::default_for(task, args.d_model, args.n_heads);
    cfg.model.n_layers = args.n_layers;
    cfg.model.d_mlp = args.d_mlp.unwrap_or(args.d_model.saturating_mul(4));
    if !modp {
        cfg.model.d_vocab_out = args.d_vocab_out;
        cfg.batch_size = args.batch_size;
    }
    let o = &mut cfg.optimizer;
    (o.lr, o.beta1, o.beta2, o.eps) = (args.lr, args.beta1, args.beta2, args.eps);
    (o.weight_decay, o.warmup_steps, o.grad_clip) =
        (args.weight_decay, args.warmup, args.grad_clip);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.seed = args.seed;
    cfg.snapshot_every = args.snapshot_every;
    cfg.checkpoint_every = args
        .checkpoint_every
        .unwrap_or(args.snapshot_every.saturating_mul(10));
    cfg.perturbation = args
        .perturb
        .as_deref()
        .map(Perturbation::parse)
        .transpose()?;
    Ok(cfg)
}

/// `--resume` continues a run with its own config: only the step count, the threads and the
/// progress bar may be given with it.
fn check_resume_options(matches: &ArgMatches) -> Result<()> {
    if matches.value_source("resume") != Some(ValueSource::CommandLine) {
        return Ok(());
    }
    let allowed = ["resume", "steps", "threads", "quiet"];
    let command = Args::command();
    let given: Vec<String> = command
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| {
            !allowed.contains(id) && matches.value_source(id) == Some(ValueSource::CommandLine)
        })
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if !given.is_empty() {
        bail!(
            "--resume continues the run with the config it was trained with; only --steps, \
             --threads and --quiet may be given (got {})",
            given.join(", ")
        );
    }
    Ok(())
}

/// The task kinds of `--task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Task {
    Addition,
    Modp,
}

/// The options of one task are refused with the other: addition's digits, layout, output
/// vocabulary and batch size with `--task modp` (one answer read at `=`, p outputs, full
/// batch), and modp's options with addition.
fn check_task_options(matches: &ArgMatches) -> Result<()> {
    let given = |ids: &[&str]| -> Vec<String> {
        ids.iter()
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect()
    };
    let modp = matches.get_one::<Task>("task") == Some(&Task::Modp);
    if modp {
        let foreign = given(&[
            "n_digits",
            "layout",
            "digit",
            "digits",
            "d_vocab_out",
            "batch_size",
        ]);
        if !foreign.is_empty() {
            bail!(
                "{} cannot be used with --task modp: modular addition reads its one answer at \
                 `=` (tokens `x y =`), has p outputs and trains full-batch on its training set",
                foreign.join(", ")
            );
        }
    } else {
        let foreign = given(&["p", "train_fraction", "eval_every"]);
        if !foreign.is_empty() {
            bail!("{} only apply to --task modp", foreign.join(", "));
        }
    }
    Ok(())
}

/// `all`, or a comma-separated list of digit indices.
fn parse_digits(list: &str, n: usize) -> Result<Vec<usize>> {
    if list == "all" {
        return Ok((0..=n).collect());
    }
    let mut digits = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("--digits: `{s}` is not a digit index"))
        })
        .collect::<Result<Vec<_>>>()?;
    digits.sort_unstable();
    digits.dedup();
    Ok(digits)
}
