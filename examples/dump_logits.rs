//! Prints the logits the Rust model gives for one snapshot of a run, as JSON, so that other
//! implementations (the Python interop test, a user's TransformerLens session) can be checked
//! against it:
//!
//!     cargo run --example dump_logits -- RUN_DIR BATCH [SEED] [EXAMPLES]
//!
//! The model is rebuilt from `config.json` and the snapshot of batch `BATCH`; the inputs are
//! `EXAMPLES` (default 64) examples of training batch 0 of seed `SEED` (default 12345). Output:
//! `{"batch": B, "tokens": [[...]], "logits": [[[...]]]}` with the logits of the general forward
//! pass at every position, `[examples][position][d_vocab_out]`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{Hooks, Transformer};
use digitlab::task::training_batch;
use digitlab_snapshots::RunDir;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(2..=4).contains(&args.len()) {
        bail!("usage: dump_logits RUN_DIR BATCH [SEED] [EXAMPLES]");
    }
    let dir = PathBuf::from(&args[0]);
    let batch: u64 = args[1].parse().context("BATCH must be a number")?;
    let seed: u64 = args
        .get(2)
        .map_or(Ok(12345), |s| s.parse())
        .context("SEED must be a number")?;
    let examples: usize = args
        .get(3)
        .map_or(Ok(64), |s| s.parse())
        .context("EXAMPLES must be a number")?;

    let run = RunDir::open(&dir)?;
    let cfg = TrainConfig::from_run(&run)?;
    let entry = run
        .manifest()
        .snapshots
        .iter()
        .find(|e| e.batch == batch)
        .with_context(|| format!("the run has no snapshot of batch {batch}"))?;
    let snapshot = run.read_snapshot(entry)?;

    let device = Device::Cpu;
    let model = Transformer::from_params(&cfg.model, &snapshot.tensors, &device)?;
    let inputs = training_batch(&cfg.task, seed, 0, examples);
    let n_ctx = cfg.task.n_ctx();
    let tokens = Tensor::from_slice(&inputs.tokens, (examples, n_ctx), &device)?;
    let logits = model
        .forward(&tokens, &mut Hooks::none())?
        .to_vec3::<f32>()?;
    let tokens: Vec<&[u32]> = inputs.tokens.chunks(n_ctx).collect();
    let out = serde_json::json!({ "batch": batch, "tokens": tokens, "logits": logits });
    println!("{out}");
    Ok(())
}
