//! The fused training step against candle's autograd: the loss, the logits and every gradient
//! to 1e-5 relative on shapes that stress its indexing (d_head 1, one head, 128 heads, odd
//! sizes, rows in several parallel blocks, nonzero untrained biases; the prompt layout, and
//! the answer layout with all digits and with a subset); 500-batch runs in both layouts that
//! follow the candle run's loss curve; the same bytes
//! at one and two threads and across a checkpoint in both layouts; and the kernel recorded in
//! `config.json`.

use std::path::PathBuf;

use digitlab::config::TrainConfig;
use digitlab::fused::{Kernel, StepKind};
use digitlab::output_stats::output_stats;
use digitlab::step::{candle_loss_and_grads, StepResult};
use digitlab::task::{training_batch, Layout, TaskConfig};
use digitlab::train::{new_run, TrainState};
use digitlab_snapshots::RunDir;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn prompt(n_digits: usize) -> TaskConfig {
    TaskConfig {
        n_digits,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    }
}

fn answer(n_digits: usize, targets: Vec<usize>) -> TaskConfig {
    TaskConfig {
        n_digits,
        layout: Layout::Answer,
        targets,
        modp: None,
    }
}

fn with_kernel(cfg: &TrainConfig, step: StepKind) -> TrainConfig {
    let mut cfg = cfg.clone();
    cfg.kernel = Some(Kernel::here(step));
    cfg
}

/// `max |a - b| <= rel * max |b|`, with the worst element in the message.
fn assert_close(a: &[f32], b: &[f32], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let (i, diff) = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    assert!(
        diff <= rel * scale.max(1e-30),
        "{what}: element {i} differs by {diff:e} ({} vs {}), scale {scale:e}",
        a[i],
        b[i]
    );
}

/// Fused and candle steps on one batch of `cfg` with random weights and biases (the untrained
/// biases too, so their paths are exercised).
fn compare_on(cfg: &TrainConfig) {
    let mut params = cfg.model.init_params(cfg.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for p in &mut params {
        if p.name.contains(".b_") {
            p.data
                .iter_mut()
                .for_each(|x| *x = rng.random_range(-0.5..0.5));
        }
    }
    let batch = training_batch(&cfg.task, cfg.seed, 3, cfg.batch_size);
    let fused: StepResult = digitlab::fused::loss_and_grads(cfg, &params, &batch).unwrap();
    let candle = candle_loss_and_grads(cfg, &params, &batch).unwrap();
    let m = &cfg.model;
    let shape = format!(
        "d_model {} heads {} d_mlp {} out {} n {} batch {}",
        m.d_model, m.n_heads, m.d_mlp, m.d_vocab_out, cfg.task.n_digits, cfg.batch_size
    );
    assert_close(
        &[fused.loss],
        &[candle.loss],
        1e-5,
        &format!("{shape}: loss"),
    );
    assert_close(
        &fused.logits,
        &candle.logits,
        1e-5,
        &format!("{shape}: logits"),
    );
    assert_eq!(fused.targets, candle.targets);
    // The log's statistics, taken from the step's own softmax, are those of its logits.
    let n_digits = cfg.task.targets.len();
    assert_eq!(
        fused.stats,
        Some(output_stats(
            &fused.logits,
            m.d_vocab_out,
            &fused.targets,
            n_digits
        )),
        "{shape}: output statistics"
    );
    assert_eq!(candle.stats, None);
    let trained = m.param_specs().into_iter().filter(|s| s.trained);
    assert_eq!(fused.grads.len(), candle.grads.len());
    for ((spec, f), c) in trained.zip(&fused.grads).zip(&candle.grads) {
        assert!(
            c.iter().any(|&x| x != 0.0),
            "{shape}: {} has a zero gradient",
            spec.name
        );
        assert_close(f, c, 1e-5, &format!("{shape}: gradient of {}", spec.name));
    }
}

#[test]
fn fused_step_matches_candle_autograd_on_many_shapes() {
    // (n_digits, d_model, n_heads, d_mlp, d_vocab_out, batch)
    let shapes = [
        (5, 128, 4, 512, 12, 32), // the default model
        (5, 8, 8, 32, 12, 16),    // d_head 1
        (3, 24, 1, 96, 12, 9),    // one head
        (5, 128, 128, 64, 12, 8), // 128 heads of one dimension
        (2, 15, 3, 37, 13, 7),    // odd sizes everywhere
        (1, 5, 5, 3, 10, 1),      // one example, one digit
        (2, 16, 2, 24, 12, 600),  // rows in several parallel blocks
    ];
    for (n, d_model, n_heads, d_mlp, d_out, batch) in shapes {
        let cfg = shaped(prompt(n), d_model, n_heads, d_mlp, d_out, batch);
        compare_on(&cfg);
        // The attention output through the OV rows too, on every shape.
        compare_on(&with_kernel(&cfg, StepKind::FusedOv));
    }
    // Where new runs take the OV rows by themselves: one head of 512 (and 130 rows, so that
    // the products have leftover rows).
    let cfg = shaped(prompt(5), 512, 1, 64, 12, 130);
    assert_eq!(cfg.training_kernel().step, StepKind::FusedOv);
    compare_on(&cfg);
}

/// The answer layout: several query positions, each attending to its own prefix, and the last
/// position (never a query) only a key.
#[test]
fn answer_layout_fused_step_matches_candle_autograd() {
    // (task, d_model, n_heads, d_mlp, d_vocab_out, batch)
    let shapes = [
        (answer(5, (0..=5).collect()), 128, 4, 512, 12, 16), // all digits, default model
        (answer(5, vec![1, 4]), 32, 4, 64, 12, 8),           // a subset
        (answer(3, vec![3]), 8, 8, 32, 12, 5),               // d_head 1, only `=` queries
        (answer(2, vec![0]), 24, 1, 96, 12, 9),              // one head, the last query
        (answer(4, vec![0, 2, 3]), 15, 3, 37, 13, 7),        // odd sizes
        (answer(1, vec![0, 1]), 5, 5, 3, 10, 1),             // one example
        (answer(2, vec![0, 1, 2]), 16, 2, 24, 12, 200),      // 600 rows, several blocks
    ];
    for (task, d_model, n_heads, d_mlp, d_out, batch) in shapes {
        let cfg = shaped(task, d_model, n_heads, d_mlp, d_out, batch);
        compare_on(&cfg);
        compare_on(&with_kernel(&cfg, StepKind::FusedOv));
    }
}

/// Modular addition: three positions and a table of `p + 4` rows, where attention runs row by
/// row over each query's prefix instead of as dense products (`Shapes::attention_per_row`).
#[test]
fn modular_addition_fused_step_matches_candle_autograd() {
    // (p, d_model, n_heads, d_mlp), full batch (30% of the p^2 pairs)
    let shapes = [
        (113, 128, 4, 512), // the paper's model: 3,831 rows, many parallel blocks
        (23, 8, 8, 32),     // d_head 1
        (29, 24, 1, 96),    // one head
        (31, 15, 3, 37),    // odd sizes
    ];
    for (p, d_model, n_heads, d_mlp) in shapes {
        let mut cfg = TrainConfig::default_for(TaskConfig::modp(p, 0.3, 100), d_model, n_heads);
        assert!(
            cfg.task.d_vocab() + cfg.task.n_ctx() >= 8 * cfg.task.n_ctx(),
            "p {p} must take the per-row attention path"
        );
        cfg.model.d_mlp = d_mlp;
        cfg.seed = d_model as u64;
        cfg.validate().unwrap();
        assert!(cfg.fused_step_applies());
        compare_on(&cfg);
    }
}

fn shaped(
    task: TaskConfig,
    d_model: usize,
    n_heads: usize,
    d_mlp: usize,
    d_out: usize,
    batch: usize,
) -> TrainConfig {
    let mut cfg = TrainConfig::default_for(task, d_model, n_heads);
    cfg.model.d_mlp = d_mlp;
    cfg.model.d_vocab_out = d_out;
    cfg.batch_size = batch;
    cfg.seed = d_model as u64;
    cfg.validate().unwrap();
    assert!(cfg.fused_step_applies());
    cfg
}

#[test]
fn five_hundred_batches_follow_the_candle_loss_curve() {
    follows_the_candle_loss_curve(&TrainConfig::default_for(prompt(5), 128, 4));
}

/// All six digits at once, teacher-forced; a narrower model so that candle's pass over the
/// whole sequence stays quick in a debug build.
#[test]
fn five_hundred_answer_layout_batches_follow_the_candle_loss_curve() {
    let task = answer(5, (0..=5).collect());
    follows_the_candle_loss_curve(&TrainConfig::default_for(task, 64, 4));
}

fn follows_the_candle_loss_curve(cfg: &TrainConfig) {
    let run = |step| {
        let cfg = with_kernel(cfg, step);
        let mut state = TrainState::new(&cfg);
        (0..500)
            .map(|_| state.step(&cfg).unwrap().loss)
            .collect::<Vec<f32>>()
    };
    let (fused, candle) = (run(StepKind::Fused), run(StepKind::Candle));
    let (start, end) = (candle[0], mean(&candle[450..]));
    assert!(end < 0.7 * start, "the run should learn: {candle:?}");
    // The two sum in different orders. For the first 50 batches the curves agree to float
    // rounding. Later, AdamW divides tiny gradients by their tiny running scale, which turns
    // rounding differences into visible ones, and where the loss leaves its ln 10 plateau
    // (a symmetry breaking) they move the start of the drop by a few batches. So the curve
    // is compared by when it falls: the batch where its 10-batch mean first passes a quarter,
    // half and three quarters of the way down, within 25 batches, and its level at the end.
    for (b, (f, c)) in fused.iter().zip(&candle).enumerate().take(50) {
        assert!(
            (f - c).abs() <= 1e-4 * c,
            "batch {b}: fused loss {f} vs candle {c}"
        );
    }
    for way_down in [0.25, 0.5, 0.75] {
        let level = start - way_down * (start - end);
        let (f, c) = (first_below(&fused, level), first_below(&candle, level));
        assert!(
            f.abs_diff(c) <= 25,
            "{way_down} of the way down ({level}): fused at batch {f}, candle at {c}"
        );
    }
    let fused_end = mean(&fused[450..]);
    assert!(
        (fused_end - end).abs() <= 0.25 * end,
        "mean loss over the last 50 batches: fused {fused_end} vs candle {end}"
    );
}

fn mean(x: &[f32]) -> f32 {
    x.iter().sum::<f32>() / x.len() as f32
}

/// The first batch whose 10-batch mean (ending there) is below `level` (the length if none).
fn first_below(curve: &[f32], level: f32) -> usize {
    (10..=curve.len())
        .find(|&end| mean(&curve[end - 10..end]) < level)
        .unwrap_or(curve.len())
}

fn bits(state: &TrainState) -> Vec<u32> {
    let params = state.params.iter().flat_map(|p| &p.data);
    let moments = state.adam.m.iter().chain(&state.adam.v).flatten();
    params.chain(moments).map(|x| x.to_bits()).collect()
}

/// Ten fused steps of the default model on a rayon pool of `threads`.
fn ten_steps(cfg: &TrainConfig, threads: usize) -> (TrainState, Vec<u32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut state = TrainState::new(cfg);
        let losses = (0..10)
            .map(|_| state.step(cfg).unwrap().loss.to_bits())
            .collect();
        (state, losses)
    })
}

#[test]
fn fused_training_gives_the_same_bytes_at_any_thread_count_and_across_a_checkpoint() {
    for task in [
        prompt(5),
        answer(5, (0..=5).collect()),
        TaskConfig::modp(23, 0.3, 100),
    ] {
        let cfg = with_kernel(&TrainConfig::default_for(task, 128, 4), StepKind::Fused);
        same_bytes_at_any_thread_count_and_across_a_checkpoint(&cfg);
    }
    // One head of 128, where new runs take the attention output through the OV rows.
    let cfg = TrainConfig::default_for(prompt(5), 128, 1);
    assert_eq!(cfg.training_kernel().step, StepKind::FusedOv);
    same_bytes_at_any_thread_count_and_across_a_checkpoint(&cfg);
}

fn same_bytes_at_any_thread_count_and_across_a_checkpoint(cfg: &TrainConfig) {
    let cfg = cfg.clone();
    let (one, one_losses) = ten_steps(&cfg, 1);
    let (two, two_losses) = ten_steps(&cfg, 2);
    assert_eq!(one_losses, two_losses);
    assert!(
        bits(&one) == bits(&two),
        "weights differ between 1 and 2 threads"
    );

    let mut first = TrainState::new(&cfg);
    for _ in 0..4 {
        first.step(&cfg).unwrap();
    }
    let mut resumed = TrainState::from_checkpoint(&cfg, first.to_checkpoint(&cfg)).unwrap();
    for _ in 4..10 {
        resumed.step(&cfg).unwrap();
    }
    assert!(bits(&resumed) == bits(&one), "a resumed run differs");
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fused-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_kernel_is_recorded_and_old_configs_still_load() {
    let prompt_cfg = TrainConfig::default_for(prompt(3), 16, 2);
    let answer_cfg = TrainConfig::default_for(answer(3, vec![0, 1]), 16, 2);
    let mut deep_cfg = answer_cfg.clone();
    deep_cfg.model.n_layers = 2;
    let one_wide_head = TrainConfig::default_for(prompt(3), 128, 1);
    for (cfg, step) in [
        (&prompt_cfg, StepKind::Fused),
        (&answer_cfg, StepKind::Fused),
        (&one_wide_head, StepKind::FusedOv),
        (&deep_cfg, StepKind::Candle),
    ] {
        let dir = scratch(&format!("{step:?}-{}", cfg.model.n_layers));
        new_run(cfg, &dir).unwrap();
        let written = RunDir::open(&dir).unwrap().config().clone();
        let expected = Kernel::here(step).to_string();
        assert_eq!(written["kernel"], expected.as_str());
        assert!(expected.starts_with(match step {
            StepKind::Fused => "fused-",
            StepKind::FusedOv => "fusedov-",
            StepKind::Candle => "candle-",
        }));
        let read: TrainConfig = serde_json::from_value(written).unwrap();
        assert_eq!(read.kernel, Some(Kernel::here(step)));
        assert!(read.replays_exactly_here());
        assert_eq!(read.trajectory_hash(), cfg.trajectory_hash());
        let _ = std::fs::remove_dir_all(&dir);
    }

    // A config from before the record: loads, counts as candle with FMA kernels, and trains
    // with the fused step here (so a replay is not exact).
    let mut old = serde_json::to_value(&prompt_cfg).unwrap();
    assert!(old.get("kernel").is_none());
    old.as_object_mut().unwrap().remove("kernel");
    let old: TrainConfig = serde_json::from_value(old).unwrap();
    assert_eq!(old.recorded_kernel().to_string(), "candle-fma");
    assert_eq!(old.training_kernel().step, StepKind::Fused);
    assert!(!old.replays_exactly_here());

    // A recorded candle kernel keeps the run on candle; a fused one on a two-layer model is
    // refused with a message that says what to change.
    let candle = with_kernel(&prompt_cfg, StepKind::Candle);
    assert_eq!(candle.training_kernel().step, StepKind::Candle);
    // A run recorded with the fused step through z keeps its sums where new runs would take
    // the OV rows.
    let through_z = with_kernel(&one_wide_head, StepKind::Fused);
    assert_eq!(through_z.training_kernel().step, StepKind::Fused);
    assert!(through_z.replays_exactly_here());
    let mut deep = with_kernel(&prompt_cfg, StepKind::Fused);
    deep.model.n_layers = 2;
    let err = deep.validate().unwrap_err().to_string();
    assert!(
        err.contains("one-layer") && err.contains("candle-"),
        "{err}"
    );
}
