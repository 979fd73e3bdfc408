//! What a run needs from the machine, checked before anything is written: memory (estimated
//! from the config and compared with what the machine can give) and threads (bounded by the
//! cores). A run that cannot fit is refused with the estimate, instead of being killed by the
//! kernel or aborting in the allocator halfway through creating its directory.

use anyhow::{bail, Result};

use crate::config::TrainConfig;
use crate::fused::FusedStep;

/// Bytes of one f32.
const F32: f64 = 4.0;
/// The program itself (code, candle, rayon, buffers glibc keeps): measured at about 30 MB.
const PROGRAM_BYTES: f64 = 64.0 * MIB;
/// Copies of every weight: the state, candle's copy for the forward pass, and the writer's
/// copies of snapshots and checkpoints (up to four queued, one being encoded and compressed;
/// more queued if they fit in `writer::QUEUE_BYTES`, counted on their own).
const WEIGHT_COPIES: f64 = 9.0;
/// Copies of every trained weight on top: its gradient (candle's and the optimizer's), the two
/// AdamW moments, and the moments in the writer's queued and in-flight checkpoints.
const TRAINED_COPIES: f64 = 18.0;
/// Copies of the training log, generously: the writer's, rows queued for it (at most the log
/// once more), the one being written with its data frame and its parquet bytes.
const LOG_COPIES: f64 = 8.0;
/// Bytes a log row takes besides its f32 values (the row and its two vectors).
const LOG_ROW_OVERHEAD: f64 = 96.0;
/// candle keeps activations for the backward pass, which makes a gradient of each and some
/// temporaries: three times the forward values.
const ACTIVATION_FACTOR: f64 = 3.0;
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// A memory estimate: named parts in bytes (f64, so absurd configs cannot overflow it).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryNeed {
    parts: Vec<(String, f64)>,
}

impl MemoryNeed {
    /// An estimate made of named parts, in bytes: how other tools (the analyses) state what
    /// they need, to be checked the same way.
    pub fn from_parts(parts: Vec<(String, f64)>) -> MemoryNeed {
        MemoryNeed { parts }
    }

    /// The estimate of training `cfg` to `cfg.steps`: weights, AdamW moments and the files
    /// being written; the activations of one batch (fast or general path, whichever training
    /// uses); the training log. Computed from the shapes alone, nothing is allocated.
    pub fn of_training(cfg: &TrainConfig) -> MemoryNeed {
        let specs = cfg.model.param_specs();
        let count = |trained_only: bool| -> f64 {
            specs
                .iter()
                .filter(|s| s.trained || !trained_only)
                .map(|s| s.shape.iter().map(|&d| d as f64).product::<f64>())
                .sum()
        };
        let (all, trained) = (count(false), count(true));
        let n_trained = specs.iter().filter(|s| s.trained).count() as f64;
        let log_row =
            F32 * (6.0 + cfg.task.targets.len() as f64 + 3.0 * n_trained) + LOG_ROW_OVERHEAD;
        MemoryNeed {
            parts: vec![
                ("the program".into(), PROGRAM_BYTES),
                (
                    "weights, AdamW moments and files being written".into(),
                    F32 * (WEIGHT_COPIES * all + TRAINED_COPIES * trained)
                        + crate::writer::QUEUE_BYTES as f64,
                ),
                (
                    format!("activations of a batch of {} examples", cfg.batch_size),
                    activation_bytes(cfg, trained),
                ),
                (
                    "training batches made ahead".into(),
                    crate::batches::bytes_ahead(cfg),
                ),
                (
                    format!("the training log of {} steps", cfg.steps),
                    LOG_COPIES * cfg.steps as f64 * log_row,
                ),
            ],
        }
    }

    /// The total in bytes.
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    /// Refuse if the total exceeds `available` bytes; the message gives the estimate part by
    /// part, what was available (`source`) and `hint` (what to make smaller).
    pub fn check(&self, available: f64, source: &str, hint: &str) -> Result<()> {
        if self.total() <= available {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(what, bytes)| format!("{what}: {}", human(*bytes)))
            .collect();
        bail!(
            "this needs about {} of memory ({}), more than the {} available ({source}); {hint}",
            human(self.total()),
            parts.join(", "),
            human(available)
        )
    }

    /// [`MemoryNeed::check`] against what this machine and process can give (see
    /// [`available_memory`]); no check where that cannot be read.
    pub fn check_machine(&self, hint: &str) -> Result<()> {
        match available_memory() {
            Some((bytes, source)) => self.check(bytes as f64, &source, hint),
            None => Ok(()),
        }
    }
}

/// Bytes of one batch's activations and their gradients, by the step training uses: the fused
/// step's buffers exactly (with the gradients of the `trained` floats), or candle's graph
/// estimated.
fn activation_bytes(cfg: &TrainConfig, trained: f64) -> f64 {
    if cfg.training_kernel().step.is_fused() {
        return FusedStep::buffer_bytes(cfg, cfg.batch_size, trained);
    }
    F32 * ACTIVATION_FACTOR * cfg.batch_size as f64 * candle_activations_per_example(cfg)
}

/// Floats of the activations of one example in one forward pass through candle's graph (see
/// `model/last_position.rs` and `model/mod.rs` for the tensors counted).
fn candle_activations_per_example(cfg: &TrainConfig) -> f64 {
    let m = &cfg.model;
    let (t, d, h) = (m.n_ctx as f64, m.d_model as f64, m.n_heads as f64);
    let (mlp, vocab, out) = (m.d_mlp as f64, m.d_vocab as f64, m.d_vocab_out as f64);
    let targets = cfg.task.targets.len() as f64;
    if cfg.uses_last_position_path() {
        // Query, attention output, residuals at the last position; scores, pattern and token
        // indices per head and position; attention mass per head and token; the MLP; logits.
        7.0 * d + 6.0 * h * t + 2.0 * h * (vocab + t) + 2.0 * mlp + out
    } else {
        // Per layer: residuals, q/k/v and their head-first copies, z twice, the outputs; the
        // scores, masked scores and pattern; the MLP's pre and post activations.
        let per_layer = 13.0 * t * d + 3.0 * h * t * t + 2.0 * t * mlp;
        2.0 * t * d + m.n_layers as f64 * per_layer + targets * (d + out)
    }
}

/// Bytes this process can still allocate, and where that figure comes from: the smallest of
/// `MemAvailable` in /proc/meminfo, the cgroup's `memory.max` minus `memory.current`, and the
/// address-space limit (`ulimit -v`). `None` where none of them can be read.
pub fn available_memory() -> Option<(u64, String)> {
    let mut limits: Vec<(u64, String)> = Vec::new();
    if let Some(kb) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| meminfo_available_kib(&text))
    {
        limits.push((
            kb.saturating_mul(1024),
            "MemAvailable in /proc/meminfo".into(),
        ));
    }
    let cgroup = |name: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        limits.push((
            max.saturating_sub(current),
            "the cgroup's memory.max".into(),
        ));
    }
    if let Some(bytes) = address_space_limit() {
        limits.push((bytes, "the address-space limit, ulimit -v".into()));
    }
    limits.into_iter().min_by_key(|(bytes, _)| *bytes)
}

/// `MemAvailable` (or, on kernels without it, `MemTotal`) in KiB from /proc/meminfo's text.
pub fn meminfo_available_kib(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    field("MemAvailable:").or_else(|| field("MemTotal:"))
}

/// The soft `RLIMIT_AS` in bytes, if finite.
#[cfg(unix)]
// rlim_t is u64 on Linux but not on every Unix.
#[allow(clippy::unnecessary_cast)]
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64)
}

/// The soft `RLIMIT_AS` in bytes, if finite (none off Unix).
#[cfg(not(unix))]
fn address_space_limit() -> Option<u64> {
    None
}

/// Threads for matrix products: `requested` (at least 1) bounded by the cores. More threads
/// than cores only adds spinning and context switches (and `--threads 100000` once spawned
/// thousands), so a larger request is lowered to the core count with a note.
pub fn bounded_threads(requested: usize) -> Result<(usize, Option<String>)> {
    if requested == 0 {
        bail!("--threads must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if requested > cores {
        return Ok((
            cores,
            Some(format!(
                "--threads {requested} is more than the {cores} cores of this machine; using {cores}"
            )),
        ));
    }
    Ok((requested, None))
}

/// `bytes` as MiB or GiB with three significant digits.
fn human(bytes: f64) -> String {
    if bytes >= GIB {
        format!("{:.3} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_available_kib(text), Some(22_000_000));
        assert_eq!(meminfo_available_kib("MemTotal: 5 kB\n"), Some(5));
        assert_eq!(meminfo_available_kib("nothing"), None);
    }

    #[test]
    fn threads_are_bounded_by_the_cores_and_zero_is_refused() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert!(bounded_threads(0)
            .unwrap_err()
            .to_string()
            .contains("--threads"));
        assert_eq!(bounded_threads(1).unwrap(), (1, None));
        let (n, note) = bounded_threads(100_000).unwrap();
        assert_eq!(n, cores);
        assert!(note.unwrap().contains("100000"));
    }
}
