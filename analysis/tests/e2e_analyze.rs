//! End-to-end tests of the `analyze` binary on real (short) training runs.
//!
//! Runs are trained in-process with the `digitlab` library, then analysed by running the
//! `analyze` binary as a user would. The numbers it writes are checked against an independent
//! f64 computation written here from spec sections 3 to 5 (plain loops over the logits of the
//! model's general forward pass; nothing shared with the code under test except the examples
//! of the eval set, whose structure is checked separately).
//!
//! The trained runs are shared by the tests of this file (trained once per process, never
//! written to afterwards); every test that writes analyses works on its own copy.

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Once, OnceLock};

use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{Hooks, Transformer};
use digitlab::task::{Layout, Pair, TaskConfig};
use digitlab::train::{new_run, resume_run, train};
use digitlab_analysis::eval_set::EvalSet;
use digitlab_snapshots::{read_parquet, RunDir};
use polars::prelude::{DataFrame, DataType};

/// Contexts per digit in every analysis of these tests (1000 examples per digit).
const CONTEXTS: usize = 10;
/// The default eval seed of `analyze`.
const EVAL_SEED: u64 = 1234;

// ---------------------------------------------------------------------------------------------
// Scratch space, runs and the binary
// ---------------------------------------------------------------------------------------------

/// Matrix products on one thread in this process (the tests already run in parallel); removes
/// the scratch folders of earlier test processes that have ended.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        digitlab::threads::set_threads(1);
        let base = scratch_base();
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix('p').and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
    });
}

fn scratch_base() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_analyze")
}

/// A fresh folder for this process and `name`; removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = scratch_base()
            .join(format!("p{}", std::process::id()))
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn config(task: TaskConfig, d_model: usize, n_heads: usize, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::default_for(task, d_model, n_heads);
    cfg.steps = steps;
    cfg.snapshot_every = 50;
    cfg.checkpoint_every = 100;
    cfg
}

/// Trains a new run at `dir` (which must not exist) from scratch.
fn train_run(dir: &Path, cfg: &TrainConfig) {
    let (run, state, log) = new_run(cfg, dir).unwrap();
    train(cfg, run, state, log, false).unwrap();
}

/// Extends the run at `dir` to `steps` batches from its newest checkpoint, as
/// `train --resume DIR --steps N` does.
fn extend_run(dir: &Path, steps: u64) {
    let (cfg, run, state, log) = resume_run(dir, Some(steps)).unwrap();
    train(&cfg, run, state, log, false).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A trained run shared by the tests (read only): trained once per process.
struct Fixture {
    cell: OnceLock<PathBuf>,
    name: &'static str,
    make: fn() -> TrainConfig,
}

impl Fixture {
    fn path(&self) -> &Path {
        self.cell.get_or_init(|| {
            let dir = scratch_base()
                .join(format!("p{}", std::process::id()))
                .join("fixtures")
                .join(self.name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            train_run(&dir, &(self.make)());
            dir
        })
    }

    /// A private copy of the run at `scratch/name`.
    fn copy_to(&self, scratch: &Scratch, name: &str) -> PathBuf {
        let to = scratch.path().join(name);
        copy_dir(self.path(), &to);
        to
    }
}

/// The units digit at d_model 128 / 4 heads (the speed config): leaves ln 10 within a
/// few hundred batches and reaches a loss near zero by 600.
static UNITS_128: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "units_128",
    make: || {
        let task = TaskConfig {
            n_digits: 5,
            layout: Layout::Prompt,
            targets: vec![0],
        };
        config(task, 128, 4, 600)
    },
};

/// A small prompt-layout run on the hundreds digit of 3-digit addition, where all three carry
/// kinds occur.
static HUNDREDS_32: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "hundreds_32",
    make: || {
        let task = TaskConfig {
            n_digits: 3,
            layout: Layout::Prompt,
            targets: vec![2],
        };
        config(task, 32, 2, 300)
    },
};

/// The answer layout with every digit of 3-digit addition trained (`--digits all`).
static ANSWER_ALL_32: Fixture = Fixture {
    cell: OnceLock::new(),
    name: "answer_all_32",
    make: || {
        let task = TaskConfig {
            n_digits: 3,
            layout: Layout::Answer,
            targets: vec![0, 1, 2, 3],
        };
        config(task, 32, 2, 300)
    },
};

/// A fixture analysed once with `analyze all --contexts 10` (read only afterwards).
struct Analysed {
    cell: OnceLock<PathBuf>,
    fixture: &'static Fixture,
}

impl Analysed {
    fn path(&self) -> &Path {
        self.cell.get_or_init(|| {
            let dir = self
                .fixture
                .path()
                .with_file_name(format!("{}-analysed", self.fixture.name));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(self.fixture.path(), &dir);
            let out = analyze(&["all", "-q", "--contexts", "10", dir.to_str().unwrap()]);
            succeeded(&out);
            dir
        })
    }
}

static UNITS_128_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &UNITS_128,
};
static HUNDREDS_32_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &HUNDREDS_32,
};
static ANSWER_ALL_32_ANALYSED: Analysed = Analysed {
    cell: OnceLock::new(),
    fixture: &ANSWER_ALL_32,
};

/// Runs the `analyze` binary (replaying on two rayon threads).
fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("analyze runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success; returns stdout and stderr.
fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "analyze failed ({}):\n{}",
        out.status,
        text(out)
    );
    text(out)
}

/// Asserts a failure whose message contains every one of `needles`; returns the message.
fn failed_with(out: &Output, needles: &[&str]) -> String {
    let message = text(out);
    assert!(
        !out.status.success(),
        "analyze should have failed:\n{message}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "no error message on stderr"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message should name `{needle}`:\n{message}"
        );
    }
    message
}

/// Asserts that no analysis file was written under `run`.
fn no_analysis_written(run: &Path) {
    let analysis = run.join("analysis");
    if analysis.exists() {
        let files: Vec<_> = std::fs::read_dir(&analysis)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "analysis files written: {files:?}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reading tables
// ---------------------------------------------------------------------------------------------

fn table(run: &Path, name: &str) -> DataFrame {
    read_parquet(&run.join("analysis").join(format!("{name}.parquet"))).unwrap()
}

/// A cell as text: strings as they are, integers in decimal, null as "null".
fn cell(df: &DataFrame, column: &str, row: usize) -> String {
    let c = df.column(column).unwrap();
    match c.dtype() {
        DataType::String => c.str().unwrap().get(row).unwrap_or("null").to_string(),
        DataType::Int64 => c
            .i64()
            .unwrap()
            .get(row)
            .map_or("null".to_string(), |v| v.to_string()),
        DataType::Boolean => c
            .bool()
            .unwrap()
            .get(row)
            .map_or("null".to_string(), |v| v.to_string()),
        other => panic!("column {column} has unexpected type {other}"),
    }
}

fn float(df: &DataFrame, column: &str, row: usize) -> Option<f64> {
    df.column(column).unwrap().f64().unwrap().get(row)
}

fn int(df: &DataFrame, column: &str, row: usize) -> Option<i64> {
    df.column(column).unwrap().i64().unwrap().get(row)
}

/// `value` by the key columns given (joined with `|`); asserts every key is unique.
fn values_by(df: &DataFrame, keys: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for row in 0..df.height() {
        let key: Vec<String> = keys.iter().map(|k| cell(df, k, row)).collect();
        let key = key.join("|");
        let value = float(df, "value", row).expect("value is never null");
        assert!(
            out.insert(key.clone(), value).is_none(),
            "duplicate row {key}"
        );
    }
    out
}

fn assert_schema(df: &DataFrame, expected: &[(&str, DataType)]) {
    let got: Vec<(String, DataType)> = df
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.dtype().clone()))
        .collect();
    let want: Vec<(String, DataType)> = expected
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    assert_eq!(got, want);
}

fn snapshot_batches(run: &Path) -> Vec<u64> {
    RunDir::open(run)
        .unwrap()
        .manifest()
        .snapshots
        .iter()
        .map(|e| e.batch)
        .collect()
}

fn run_config(run: &Path) -> TrainConfig {
    serde_json::from_value(RunDir::open(run).unwrap().config().clone()).unwrap()
}

/// Equal, or both NaN, or within `tol` relative to max(1, |expected|).
fn close(actual: f64, expected: f64, tol: f64) -> bool {
    if expected.is_nan() || actual.is_nan() {
        return expected.is_nan() && actual.is_nan();
    }
    (actual - expected).abs() <= tol * expected.abs().max(1.0)
}

// ---------------------------------------------------------------------------------------------
// The independent computation (spec sections 1, 3, 4 and 5), plain f64 loops
// ---------------------------------------------------------------------------------------------

/// One example of the eval set of digit `k`, with everything computed from the operands.
struct Example {
    tokens: Vec<u32>,
    /// True digit `s_k`.
    t: usize,
    /// Naive digit `(a_k + b_k) mod 10`, 0 for `k = n`.
    v: usize,
    /// Carry into position k.
    c: usize,
    kind: &'static str,
}

fn number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .rev()
        .fold(0, |acc, &d| acc * 10 + u64::from(d))
}

fn spec_example(n: usize, layout: Layout, pair: &Pair, k: usize) -> Example {
    let (a, b) = (number(&pair.a), number(&pair.b));
    let sum = a + b;
    let p = 10u64.pow(k as u32);
    let t = ((sum / p) % 10) as usize;
    let c = usize::from((a % p) + (b % p) >= p);
    let v = if k < n {
        (usize::from(pair.a[k]) + usize::from(pair.b[k])) % 10
    } else {
        0
    };
    let kind = if c == 0 {
        "none"
    } else if pair.a[k - 1] + pair.b[k - 1] >= 10 {
        "direct"
    } else {
        assert_eq!(pair.a[k - 1] + pair.b[k - 1], 9, "a carry needs a sum >= 9");
        "cascade"
    };
    assert_eq!(t, (v + c) % 10, "t = (v + c) mod 10");
    // a_{n-1} … a_0 + b_{n-1} … b_0 = [s_n … s_0]
    let mut tokens: Vec<u32> = (0..n).rev().map(|i| u32::from(pair.a[i])).collect();
    tokens.push(10);
    tokens.extend((0..n).rev().map(|i| u32::from(pair.b[i])));
    tokens.push(11);
    if layout == Layout::Answer {
        tokens.extend(
            (0..=n)
                .rev()
                .map(|i| ((sum / 10u64.pow(i as u32)) % 10) as u32),
        );
    }
    Example {
        tokens,
        t,
        v,
        c,
        kind,
    }
}

/// The position whose logits predict `s_k`: `=` in the prompt layout, the token just before
/// `s_k` in the answer layout.
fn spec_position(n: usize, layout: Layout, k: usize) -> usize {
    match layout {
        Layout::Prompt => 2 * n + 1,
        Layout::Answer => {
            let s_k_index = (2 * n + 2) + (n - k);
            s_k_index - 1
        }
    }
}

/// The eval set of `digit` as the examples, checked against spec section 3: context-major,
/// `a_k * 10 + b_k` inside a context, every other digit fixed within a context.
fn eval_examples(cfg: &TrainConfig, digit: usize) -> (EvalSet, Vec<Example>) {
    let n = cfg.task.n_digits;
    let set = EvalSet::new(&cfg.task, digit, CONTEXTS, EVAL_SEED);
    let pairs = &set.batch.pairs;
    assert_eq!(pairs.len(), 100 * CONTEXTS);
    if digit < n {
        let mut distinct_contexts = BTreeSet::new();
        for (m, context) in pairs.chunks(100).enumerate() {
            for (i, pair) in context.iter().enumerate() {
                assert_eq!(
                    usize::from(pair.a[digit]),
                    i / 10,
                    "context {m} example {i}"
                );
                assert_eq!(
                    usize::from(pair.b[digit]),
                    i % 10,
                    "context {m} example {i}"
                );
                for j in (0..n).filter(|&j| j != digit) {
                    assert_eq!(pair.a[j], context[0].a[j]);
                    assert_eq!(pair.b[j], context[0].b[j]);
                }
            }
            distinct_contexts.insert((context[0].a.clone(), context[0].b.clone()));
        }
        if n > 1 {
            assert!(distinct_contexts.len() > 1, "the contexts are all the same");
        }
    }
    let examples: Vec<Example> = pairs
        .iter()
        .map(|p| spec_example(n, cfg.task.layout, p, digit))
        .collect();
    let tokens: Vec<u32> = examples.iter().flat_map(|e| e.tokens.clone()).collect();
    assert_eq!(
        tokens, set.batch.tokens,
        "eval-set tokens differ from spec section 1"
    );
    (set, examples)
}

/// Logits at the predicting position, from the general forward pass, in f64.
fn spec_logits(
    cfg: &TrainConfig,
    model: &Transformer,
    examples: &[Example],
    k: usize,
) -> Vec<Vec<f64>> {
    let n_ctx = cfg.task.n_ctx();
    let position = spec_position(cfg.task.n_digits, cfg.task.layout, k);
    let mut out = Vec::new();
    for chunk in examples.chunks(250) {
        let tokens: Vec<u32> = chunk.iter().flat_map(|e| e.tokens.clone()).collect();
        let tokens = Tensor::from_vec(tokens, (chunk.len(), n_ctx), &Device::Cpu).unwrap();
        let logits = model.forward(&tokens, &mut Hooks::none()).unwrap();
        let logits = logits.to_vec3::<f32>().unwrap();
        for row in logits {
            out.push(row[position].iter().map(|&x| f64::from(x)).collect());
        }
    }
    out
}

/// MLP post-ReLU activations of the last block at the predicting position, in f64.
fn spec_mlp_post(
    cfg: &TrainConfig,
    model: &Transformer,
    examples: &[Example],
    k: usize,
) -> Vec<Vec<f64>> {
    let n_ctx = cfg.task.n_ctx();
    let position = spec_position(cfg.task.n_digits, cfg.task.layout, k);
    let hook = format!("blocks.{}.mlp.hook_post", cfg.model.n_layers - 1);
    let mut out = Vec::new();
    for chunk in examples.chunks(250) {
        let tokens: Vec<u32> = chunk.iter().flat_map(|e| e.tokens.clone()).collect();
        let tokens = Tensor::from_vec(tokens, (chunk.len(), n_ctx), &Device::Cpu).unwrap();
        let mut hooks = Hooks::none().cache(&hook);
        model.forward(&tokens, &mut hooks).unwrap();
        let acts = hooks.cache[&hook].to_vec3::<f32>().unwrap();
        for row in acts {
            out.push(row[position].iter().map(|&x| f64::from(x)).collect());
        }
    }
    out
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let mut max = f64::NEG_INFINITY;
    for &v in x {
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0;
    for &v in x {
        sum += (v - max).exp();
    }
    let lse = max + sum.ln();
    x.iter().map(|&v| v - lse).collect()
}

fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for i in 1..x.len() {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sum = 0.0;
    for v in values {
        sum += v;
    }
    sum / values.len() as f64
}

/// The `loss` rows of one (snapshot, digit): `carry_kind|metric` -> value.
fn expected_loss(logits: &[Vec<f64>], examples: &[Example]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for kind in ["all", "none", "direct", "cascade"] {
        let (mut losses, mut hits) = (Vec::new(), Vec::new());
        for (l, e) in logits.iter().zip(examples) {
            if kind == "all" || e.kind == kind {
                let log_p = log_softmax(l);
                losses.push(-log_p[e.t]);
                hits.push(if argmax(l) == e.t { 1.0 } else { 0.0 });
            }
        }
        out.insert(format!("{kind}|loss"), mean(&losses));
        out.insert(format!("{kind}|accuracy"), mean(&hits));
        if kind != "all" {
            out.insert(
                format!("{kind}|fraction"),
                losses.len() as f64 / examples.len() as f64,
            );
        }
    }
    out
}

/// The `naive_lens` rows of one (snapshot, digit): `carry_in|offset|metric` -> value.
fn expected_naive_lens(logits: &[Vec<f64>], examples: &[Example]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for carry_in in ["all", "0", "1"] {
        for d in 0..10 {
            let mut p = Vec::new();
            for (l, e) in logits.iter().zip(examples) {
                if carry_in == "all" || carry_in == e.c.to_string() {
                    p.push(log_softmax(l)[(e.v + d) % 10].exp());
                }
            }
            out.insert(format!("{carry_in}|{d}|p_delta"), mean(&p));
        }
    }
    let (mut naive, mut plus1, mut pair_mass, mut pair) = (vec![], vec![], vec![], vec![]);
    for (l, e) in logits.iter().zip(examples) {
        let log_p = log_softmax(l);
        let p_v = log_p[e.v].exp();
        let p_v1 = log_p[(e.v + 1) % 10].exp();
        naive.push(-log_p[e.v]);
        plus1.push(-log_p[(e.v + 1) % 10]);
        pair_mass.push(-(p_v + p_v1).ln());
        pair.push(-(log_p[e.t].exp() / (p_v + p_v1)).ln());
    }
    out.insert("all|null|loss_naive".into(), mean(&naive));
    out.insert("all|null|loss_naive_plus1".into(), mean(&plus1));
    out.insert("all|null|pair_mass_loss".into(), mean(&pair_mass));
    out.insert("all|null|pair_loss".into(), mean(&pair));
    out
}

/// Unit `cos(w (a+b))` and `sin(w (a+b))` over the 10x10 grid (only cos for f = 5).
fn sum_directions(f: usize) -> Vec<[f64; 100]> {
    let w = 2.0 * PI * f as f64 / 10.0;
    let mut directions = Vec::new();
    let kinds: &[bool] = if f == 5 { &[true] } else { &[true, false] };
    for &is_cos in kinds {
        let mut u = [0.0; 100];
        for a in 0..10 {
            for b in 0..10 {
                let x = w * (a + b) as f64;
                u[a * 10 + b] = if is_cos { x.cos() } else { x.sin() };
            }
        }
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        for x in &mut u {
            *x /= norm;
        }
        directions.push(u);
    }
    directions
}

/// Excluded and restricted loss of one frequency set (spec section 5).
fn expected_fourier(logits: &[Vec<f64>], examples: &[Example], freqs: &[usize]) -> (f64, f64) {
    let n_out = logits[0].len();
    let mut excluded = logits.to_vec();
    let mut restricted = logits.to_vec();
    for m in 0..logits.len() / 100 {
        for o in 0..n_out {
            let grid: Vec<f64> = (0..100).map(|i| logits[m * 100 + i][o]).collect();
            let grid_mean = grid.iter().sum::<f64>() / 100.0;
            let mut projection = [0.0; 100];
            for &f in freqs {
                for u in sum_directions(f) {
                    let mut dot = 0.0;
                    for i in 0..100 {
                        dot += grid[i] * u[i];
                    }
                    for i in 0..100 {
                        projection[i] += dot * u[i];
                    }
                }
            }
            for i in 0..100 {
                excluded[m * 100 + i][o] = grid[i] - projection[i];
                restricted[m * 100 + i][o] = grid_mean + projection[i];
            }
        }
    }
    let ce = |l: &[Vec<f64>]| {
        let losses: Vec<f64> = l
            .iter()
            .zip(examples)
            .map(|(row, e)| -log_softmax(row)[e.t])
            .collect();
        mean(&losses)
    };
    (ce(&excluded), ce(&restricted))
}

/// Per neuron: the fraction of its centred variance at each frequency 1..5 (spec section 5).
fn expected_neuron_fractions(acts: &[Vec<f64>]) -> Vec<[f64; 5]> {
    let n_neurons = acts[0].len();
    // {1, cos wx, sin wx} x {1, cos wx, sin wx} minus the constant, unit norm.
    let bases: Vec<Vec<[f64; 100]>> = (1..=5)
        .map(|f| {
            let w = 2.0 * PI * f as f64 / 10.0;
            let mut one_d: Vec<[f64; 10]> = vec![[1.0; 10]];
            let mut c = [0.0; 10];
            let mut s = [0.0; 10];
            for x in 0..10 {
                c[x] = (w * x as f64).cos();
                s[x] = (w * x as f64).sin();
            }
            one_d.push(c);
            if f != 5 {
                one_d.push(s);
            }
            let mut directions = Vec::new();
            for (i, fa) in one_d.iter().enumerate() {
                for (j, fb) in one_d.iter().enumerate() {
                    if i == 0 && j == 0 {
                        continue;
                    }
                    let mut u = [0.0; 100];
                    for a in 0..10 {
                        for b in 0..10 {
                            u[a * 10 + b] = fa[a] * fb[b];
                        }
                    }
                    let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
                    for x in &mut u {
                        *x /= norm;
                    }
                    directions.push(u);
                }
            }
            directions
        })
        .collect();
    let mut out = Vec::new();
    for neuron in 0..n_neurons {
        let mut variance = 0.0;
        let mut captured = [0.0; 5];
        for m in 0..acts.len() / 100 {
            let grid: Vec<f64> = (0..100).map(|i| acts[m * 100 + i][neuron]).collect();
            let grid_mean = grid.iter().sum::<f64>() / 100.0;
            let centred: Vec<f64> = grid.iter().map(|x| x - grid_mean).collect();
            variance += centred.iter().map(|x| x * x).sum::<f64>();
            for (fi, directions) in bases.iter().enumerate() {
                for u in directions {
                    let mut dot = 0.0;
                    for i in 0..100 {
                        dot += centred[i] * u[i];
                    }
                    captured[fi] += dot * dot;
                }
            }
        }
        let mut fractions = [0.0; 5];
        if variance > 0.0 {
            for fi in 0..5 {
                fractions[fi] = captured[fi] / variance;
            }
        }
        out.push(fractions);
    }
    out
}

/// Checks every value of `loss`, `naive_lens`, `excluded_loss` and `key_frequencies` of an
/// analysed run against the independent computation, for every snapshot and digit.
fn check_against_independent_computation(run: &Path) {
    const TOL: f64 = 1e-5;
    let cfg = run_config(run);
    let n = cfg.task.n_digits;
    let dir = RunDir::open(run).unwrap();
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let lens = values_by(
        &table(run, "naive_lens"),
        &["batch", "digit", "carry_in", "offset", "metric"],
    );
    let excluded = values_by(
        &table(run, "excluded_loss"),
        &["batch", "digit", "frequencies", "metric"],
    );
    let keys = table(run, "key_frequencies");
    let sets: Vec<(usize, EvalSet, Vec<Example>)> = cfg
        .task
        .targets
        .iter()
        .map(|&k| {
            let (set, examples) = eval_examples(&cfg, k);
            (k, set, examples)
        })
        .collect();
    let entries = dir.manifest().snapshots.clone();
    let last = entries.last().unwrap().batch;
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    let mut compare = |what: String, actual: Option<&f64>, expected: f64| {
        checked += 1;
        match actual {
            None => mismatches.push(format!("{what}: missing (expected {expected})")),
            Some(&a) if !close(a, expected, TOL) => {
                mismatches.push(format!("{what}: {a} vs expected {expected}"))
            }
            _ => {}
        }
    };
    for entry in &entries {
        let snapshot = dir.read_snapshot(entry).unwrap();
        let model = Transformer::from_params(&cfg.model, &snapshot.tensors, &Device::Cpu).unwrap();
        let b = entry.batch;
        for (k, _set, examples) in &sets {
            let k = *k;
            let logits = spec_logits(&cfg, &model, examples, k);
            for (key, value) in expected_loss(&logits, examples) {
                let full = format!("{b}|{k}|{key}");
                compare(format!("loss {full}"), loss.get(&full), value);
            }
            for (key, value) in expected_naive_lens(&logits, examples) {
                let full = format!("{b}|{k}|{key}");
                compare(format!("naive_lens {full}"), lens.get(&full), value);
            }
            if k == n {
                continue;
            }
            // The key set of this digit, from the key_frequencies table.
            let mut key_set = BTreeSet::new();
            for row in 0..keys.height() {
                if int(&keys, "digit", row) == Some(k as i64)
                    && keys
                        .column("above_threshold")
                        .unwrap()
                        .bool()
                        .unwrap()
                        .get(row)
                        == Some(true)
                {
                    key_set.insert(int(&keys, "frequency", row).unwrap() as usize);
                }
            }
            let mut freq_sets: Vec<(String, Vec<usize>)> =
                (1..=5).map(|f| (f.to_string(), vec![f])).collect();
            freq_sets.push(("all".into(), (1..=5).collect()));
            freq_sets.push(("key".into(), key_set.into_iter().collect()));
            for (name, freqs) in freq_sets {
                let (ex, re) = expected_fourier(&logits, examples, &freqs);
                let e_key = format!("{b}|{k}|{name}|excluded_loss");
                let r_key = format!("{b}|{k}|{name}|restricted_loss");
                compare(format!("excluded_loss {e_key}"), excluded.get(&e_key), ex);
                compare(format!("excluded_loss {r_key}"), excluded.get(&r_key), re);
            }
            if b == last {
                // Key frequencies are found at the last snapshot.
                let fractions =
                    expected_neuron_fractions(&spec_mlp_post(&cfg, &model, examples, k));
                let rows: Vec<usize> = (0..keys.height())
                    .filter(|&r| int(&keys, "digit", r) == Some(k as i64))
                    .collect();
                assert_eq!(
                    rows.len(),
                    cfg.model.d_mlp,
                    "one key_frequencies row per neuron"
                );
                for r in rows {
                    assert_eq!(int(&keys, "snapshot_batch", r), Some(last as i64));
                    let neuron = int(&keys, "neuron", r).unwrap() as usize;
                    let f = &fractions[neuron];
                    let mut best = 0;
                    for fi in 1..5 {
                        if f[fi] > f[best] {
                            best = fi;
                        }
                    }
                    let fraction = float(&keys, "fraction", r).unwrap();
                    compare(
                        format!("key fraction digit {k} neuron {neuron}"),
                        Some(&fraction),
                        f[best],
                    );
                    let mut sorted = *f;
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    if sorted[0] - sorted[1] > 1e-3 {
                        assert_eq!(
                            int(&keys, "frequency", r),
                            Some(best as i64 + 1),
                            "frequency of neuron {neuron} of digit {k}: fractions {f:?}"
                        );
                    }
                    let threshold = float(&keys, "threshold", r).unwrap();
                    assert_eq!(threshold, 0.85);
                    let above = keys
                        .column("above_threshold")
                        .unwrap()
                        .bool()
                        .unwrap()
                        .get(r);
                    if (f[best] - threshold).abs() > 1e-4 {
                        assert_eq!(above, Some(f[best] >= threshold), "neuron {neuron}");
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} values differ from the independent computation:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n")
    );
    // Nothing beyond what was checked: one row per (snapshot, digit, key, metric).
    let n_digits = sets.len();
    let n_grid = sets.iter().filter(|(k, _, _)| *k < n).count();
    assert_eq!(loss.len(), entries.len() * n_digits * (2 + 3 * 3));
    assert_eq!(lens.len(), entries.len() * n_digits * (30 + 4));
    assert_eq!(excluded.len(), entries.len() * n_grid * 7 * 2);
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// `loss = pair_mass_loss + pair_loss` for every (snapshot, digit) of real runs, to 1e-6.
#[test]
fn loss_is_pair_mass_loss_plus_pair_loss_on_real_snapshots() {
    setup();
    for run in [
        UNITS_128_ANALYSED.path(),
        HUNDREDS_32_ANALYSED.path(),
        ANSWER_ALL_32_ANALYSED.path(),
    ] {
        let loss = values_by(
            &table(run, "loss"),
            &["batch", "digit", "carry_kind", "metric"],
        );
        let lens = values_by(
            &table(run, "naive_lens"),
            &["batch", "digit", "carry_in", "offset", "metric"],
        );
        let cfg = run_config(run);
        let batches = snapshot_batches(run);
        for &b in &batches {
            for &k in &cfg.task.targets {
                let l = loss[&format!("{b}|{k}|all|loss")];
                let mass = lens[&format!("{b}|{k}|all|null|pair_mass_loss")];
                let pair = lens[&format!("{b}|{k}|all|null|pair_loss")];
                assert!(l.is_finite() && mass.is_finite() && pair.is_finite());
                assert!(
                    (l - (mass + pair)).abs() <= 1e-6,
                    "{}: batch {b} digit {k}: loss {l} != {mass} + {pair}",
                    run.display()
                );
            }
        }
        // The identity is not vacuous: the split moves during training.
        let k = cfg.task.targets[0];
        let first = lens[&format!("{}|{k}|all|null|pair_mass_loss", batches[0])];
        let last = lens[&format!("{}|{k}|all|null|pair_mass_loss", batches[batches.len() - 1])];
        assert!(
            first > last,
            "pair_mass_loss should fall: {first} -> {last}"
        );
    }
}

/// Every value of the units-digit run (prompt layout, fast last-position path in `analyze`).
#[test]
fn units_run_metrics_match_independent_f64_computation() {
    setup();
    check_against_independent_computation(UNITS_128_ANALYSED.path());
}

/// Every value of a run on the hundreds digit, where all three carry kinds occur.
#[test]
fn hundreds_run_metrics_match_independent_f64_computation() {
    setup();
    let run = HUNDREDS_32_ANALYSED.path();
    check_against_independent_computation(run);
    // In the grid the carry into digit 2 is fixed by the context (a_1, b_1 do not vary), so
    // with 10 contexts only some kinds occur; those that do have real numbers, the others NaN.
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let mut present = 0;
    for kind in ["none", "direct", "cascade"] {
        let fraction = loss[&format!("0|2|{kind}|fraction")];
        assert_eq!(
            fraction > 0.0,
            loss[&format!("0|2|{kind}|loss")].is_finite(),
            "{kind}"
        );
        present += usize::from(fraction > 0.0);
    }
    assert!(present >= 2, "carry kinds present: {present}");
}

/// The answer layout with every digit trained: each digit read at its own position, the final
/// carry digit `n` included (no grid there, so no excluded-loss rows).
#[test]
fn answer_layout_analyses_every_digit() {
    setup();
    let run = ANSWER_ALL_32_ANALYSED.path();
    let batches: BTreeSet<i64> = snapshot_batches(run)
        .into_iter()
        .map(|b| b as i64)
        .collect();
    let digits_of = |name: &str| -> BTreeMap<i64, BTreeSet<i64>> {
        let df = table(run, name);
        let mut out: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        for row in 0..df.height() {
            let d = int(&df, "digit", row).unwrap();
            let b = if df.column("batch").is_ok() {
                int(&df, "batch", row).unwrap()
            } else {
                -1
            };
            out.entry(d).or_default().insert(b);
        }
        out
    };
    for name in ["loss", "naive_lens"] {
        let digits = digits_of(name);
        assert_eq!(
            digits.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "{name}"
        );
        for (d, b) in digits {
            assert_eq!(b, batches, "{name}: digit {d} lacks snapshots");
        }
    }
    let excluded = digits_of("excluded_loss");
    assert_eq!(excluded.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let key = digits_of("key_frequencies");
    assert_eq!(key.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let phases = table(run, "phases");
    let mut phase_rows = BTreeSet::new();
    for row in 0..phases.height() {
        phase_rows.insert((
            int(&phases, "digit", row).unwrap(),
            cell(&phases, "source", row),
        ));
    }
    for d in 0..=3 {
        for source in ["eval", "train_log"] {
            assert!(
                phase_rows.contains(&(d, source.to_string())),
                "phases: digit {d} {source}"
            );
        }
    }
    // The digits differ (each is read at its own position): the final-carry digit is a coin
    // flip, far easier than the units digit at the start.
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let last = batches.iter().next_back().unwrap();
    assert!(loss[&format!("{last}|3|all|loss")] < 1.0);
    // The final carry digit's eval set is random examples, where every carry kind occurs.
    for kind in ["none", "direct", "cascade"] {
        assert!(
            loss[&format!("0|3|{kind}|fraction")] > 0.0,
            "digit 3: no {kind} carry"
        );
    }
    check_against_independent_computation(run);
}

/// Re-running an analysis after training was extended computes only the new snapshots, says
/// so, and keeps the old rows unchanged.
#[test]
fn extended_run_is_analysed_incrementally() {
    setup();
    let scratch = Scratch::new("incremental");
    let run = scratch.path().join("run");
    let task = TaskConfig {
        n_digits: 3,
        layout: Layout::Prompt,
        targets: vec![1],
    };
    train_run(&run, &config(task, 16, 2, 200));
    assert_eq!(snapshot_batches(&run), vec![0, 50, 100, 150, 200]);

    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("5 snapshots computed, 0 kept"), "{out}");
    let before = table(&run, "loss");
    let before_values = values_by(&before, &["batch", "digit", "carry_kind", "metric"]);

    extend_run(&run, 300);
    assert_eq!(snapshot_batches(&run), vec![0, 50, 100, 150, 200, 250, 300]);
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("2 snapshots computed, 5 kept"), "{out}");
    let after = table(&run, "loss");
    let after_values = values_by(&after, &["batch", "digit", "carry_kind", "metric"]);
    let per_snapshot = before.height() / 5;
    assert_eq!(after.height(), before.height() + 2 * per_snapshot);
    for (key, value) in &before_values {
        let new = after_values[key];
        assert!(
            new.to_bits() == value.to_bits() || (new.is_nan() && value.is_nan()),
            "{key}: {value} became {new}"
        );
    }
    let new_batches: BTreeSet<String> = after_values
        .keys()
        .filter(|k| !before_values.contains_key(*k))
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    assert_eq!(
        new_batches,
        BTreeSet::from(["250".to_string(), "300".to_string()])
    );

    // A third run with nothing new keeps everything; other eval options recompute everything.
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("0 snapshots computed, 7 kept"), "{out}");
    assert_eq!(table(&run, "loss").height(), after.height());
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "12", s(&run)]));
    assert!(out.contains("7 snapshots computed, 0 kept"), "{out}");
}

/// Digits analysed in separate calls (`--digits 1`, then `--digits 0`) all stay in the table,
/// and a later call over both computes nothing.
#[test]
fn digits_analysed_separately_are_all_kept() {
    setup();
    let scratch = Scratch::new("separate_digits");
    let run = ANSWER_ALL_32.copy_to(&scratch, "run");
    let n_snapshots = snapshot_batches(&run).len();
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "1",
        s(&run),
    ]));
    let first = values_by(
        &table(&run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "0",
        s(&run),
    ]));
    let df = table(&run, "loss");
    let digits: BTreeSet<i64> = (0..df.height())
        .map(|r| int(&df, "digit", r).unwrap())
        .collect();
    assert_eq!(
        digits,
        BTreeSet::from([0, 1]),
        "the rows of digit 1 were dropped"
    );
    let both = values_by(&df, &["batch", "digit", "carry_kind", "metric"]);
    for (key, value) in &first {
        assert!(both[key].to_bits() == value.to_bits() || both[key].is_nan() && value.is_nan());
    }
    let out = succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "0,1",
        s(&run),
    ]));
    assert!(
        out.contains(&format!("0 snapshots computed, {n_snapshots} kept")),
        "{out}"
    );
    assert_eq!(table(&run, "loss").height(), df.height());

    // The same for excluded-loss, whose rows also depend on each digit's key set.
    for digit in ["1", "0"] {
        let args = [
            "excluded-loss",
            "-q",
            "--contexts",
            "10",
            "--digits",
            digit,
            s(&run),
        ];
        succeeded(&analyze(&args));
    }
    for name in ["excluded_loss", "key_frequencies"] {
        let df = table(&run, name);
        let digits: BTreeSet<i64> = (0..df.height())
            .map(|r| int(&df, "digit", r).unwrap())
            .collect();
        assert_eq!(
            digits,
            BTreeSet::from([0, 1]),
            "{name} lost the rows of digit 1"
        );
    }
}

/// `--from`, `--to` and `--every` pick the snapshots replayed.
#[test]
fn snapshot_selection_options() {
    setup();
    let scratch = Scratch::new("selection");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--from",
        "100",
        "--to",
        "300",
        "--every",
        "2",
        s(&run),
    ]));
    let df = table(&run, "loss");
    let batches: BTreeSet<i64> = (0..df.height())
        .map(|r| int(&df, "batch", r).unwrap())
        .collect();
    assert_eq!(batches, BTreeSet::from([100, 200, 300]));
}

/// The phase detector on a real short run: leaves ln 10 where the eval loss first falls below
/// about 2.0, and ends at (or very near) zero.
#[test]
fn phases_of_a_real_units_run() {
    setup();
    let run = UNITS_128_ANALYSED.path();
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let mut curve: Vec<(u64, f64)> = snapshot_batches(run)
        .into_iter()
        .map(|b| (b, loss[&format!("{b}|0|all|loss")]))
        .collect();
    curve.sort_by_key(|c| c.0);
    let eval_crossing = curve
        .iter()
        .find(|c| c.1 < 2.0)
        .expect("the loss falls below 2")
        .0;
    let log = RunDir::open(run)
        .unwrap()
        .read_train_log()
        .unwrap()
        .unwrap();
    let train_crossing = log
        .rows
        .iter()
        .find(|r| r.digit_loss[0] < 2.0)
        .expect("the training loss falls below 2")
        .batch;

    let phases = table(run, "phases");
    assert_eq!(phases.height(), 2);
    for row in 0..phases.height() {
        let source = cell(&phases, "source", row);
        assert_eq!(int(&phases, "digit", row), Some(0));
        let crossing = if source == "eval" {
            eval_crossing
        } else {
            train_crossing
        };
        let leaves = int(&phases, "leaves_ln10_batch", row)
            .unwrap_or_else(|| panic!("{source}: leaves_ln10_batch is null"));
        assert!(
            (leaves - crossing as i64).abs() <= 150,
            "{source}: leaves ln 10 at {leaves}, the loss first falls below 2 at {crossing}"
        );
        let final_loss = float(&phases, "final_loss", row).unwrap();
        let final_level = cell(&phases, "final_level", row);
        assert!(
            final_level == "zero" || final_loss < 0.01,
            "{source}: final level {final_level}, final loss {final_loss}"
        );
        // final_loss is the smoothed loss at the last sample: it lies within the range of the
        // curve over the last smoothing window (200 batches by default).
        let window: Vec<f64> = if source == "eval" {
            let end = curve.last().unwrap().0;
            curve
                .iter()
                .filter(|c| c.0 + 200 >= end)
                .map(|c| c.1)
                .collect()
        } else {
            let end = log.rows.last().unwrap().batch;
            log.rows
                .iter()
                .filter(|r| r.batch + 200 >= end)
                .map(|r| f64::from(r.digit_loss[0]))
                .collect()
        };
        let lo = window.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            lo * (1.0 - 1e-6) <= final_loss && final_loss <= hi * (1.0 + 1e-6),
            "{source}: final_loss {final_loss} outside the last window's [{lo}, {hi}]"
        );
    }
    let sources: BTreeSet<String> = (0..2).map(|r| cell(&phases, "source", r)).collect();
    assert_eq!(
        sources,
        BTreeSet::from(["eval".to_string(), "train_log".to_string()])
    );
    // The first plateau is ln 10 and ends where the digit leaves it.
    let plateaus = table(run, "plateaus");
    let first_eval = (0..plateaus.height())
        .filter(|&r| cell(&plateaus, "source", r) == "eval")
        .min_by_key(|&r| int(&plateaus, "start_batch", r))
        .expect("an eval plateau");
    assert_eq!(cell(&plateaus, "level", first_eval), "ln10");
    assert!(
        (float(&plateaus, "median_loss", first_eval).unwrap() - 10f64.ln()).abs() < 0.35,
        "the ln 10 plateau's median loss"
    );
}

/// A path that is not a run: a missing path, an empty folder, a file.
#[test]
fn bad_input_not_a_run() {
    setup();
    let scratch = Scratch::new("not_a_run");
    let missing = scratch.path().join("nothing-here");
    let out = analyze(&["all", "-q", s(&missing)]);
    failed_with(&out, &["nothing-here"]);
    assert!(!missing.exists());

    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = analyze(&["loss", "-q", s(&empty)]);
    failed_with(&out, &["empty", "not a digitlab run"]);
    no_analysis_written(&empty);

    let file = scratch.path().join("a-file.txt");
    std::fs::write(&file, "hello").unwrap();
    let out = analyze(&["phases", "-q", s(&file)]);
    failed_with(&out, &["a-file.txt"]);
}

/// A run created but never trained.
#[test]
fn bad_input_run_without_snapshots() {
    setup();
    let scratch = Scratch::new("no_snapshots");
    let run = scratch.path().join("untrained");
    let task = TaskConfig {
        n_digits: 3,
        layout: Layout::Prompt,
        targets: vec![0],
    };
    RunDir::create(
        &run,
        &serde_json::to_value(config(task, 16, 2, 100)).unwrap(),
    )
    .unwrap();
    for analysis in ["loss", "naive-lens", "excluded-loss", "phases", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        failed_with(&out, &["untrained", "no snapshots"]);
        no_analysis_written(&run);
    }
}

/// A damaged snapshot is named; `--skip-damaged` analyses the rest and reports it.
#[test]
fn bad_input_damaged_snapshot() {
    setup();
    let scratch = Scratch::new("damaged");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let entry = RunDir::open(&run).unwrap().manifest().snapshots[2].clone();
    assert_eq!(entry.batch, 100);
    let path = run.join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let file_name = path.file_name().unwrap().to_str().unwrap().to_string();

    for analysis in ["loss", "excluded-loss", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        let message = failed_with(&out, &[&file_name, "damaged"]);
        assert!(message.contains("--skip-damaged"), "{message}");
        no_analysis_written(&run);
    }

    let out = succeeded(&analyze(&[
        "all",
        "-q",
        "--contexts",
        "10",
        "--skip-damaged",
        s(&run),
    ]));
    assert!(out.contains("skipped") && out.contains(&file_name), "{out}");
    let batches: Vec<u64> = snapshot_batches(&run)
        .into_iter()
        .filter(|&b| b != 100)
        .collect();
    for name in ["loss", "naive_lens", "excluded_loss"] {
        let df = table(&run, name);
        let got: BTreeSet<u64> = (0..df.height())
            .map(|r| int(&df, "batch", r).unwrap() as u64)
            .collect();
        assert_eq!(
            got,
            batches.iter().copied().collect::<BTreeSet<_>>(),
            "{name}"
        );
    }
    assert!(run.join("analysis/phases.parquet").exists());
}

/// A damaged last snapshot (where key frequencies are found by default): named, and with
/// `--skip-damaged` the key frequencies come from the newest snapshot that reads.
#[test]
fn bad_input_damaged_last_snapshot() {
    setup();
    let scratch = Scratch::new("damaged_last");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let entry = RunDir::open(&run)
        .unwrap()
        .manifest()
        .snapshots
        .last()
        .cloned()
        .unwrap();
    assert_eq!(entry.batch, 300);
    let path = run.join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let file_name = path.file_name().unwrap().to_str().unwrap().to_string();

    for analysis in ["excluded-loss", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        failed_with(&out, &[&file_name, "damaged", "--skip-damaged"]);
        no_analysis_written(&run);
    }
    let out = succeeded(&analyze(&[
        "all",
        "-q",
        "--contexts",
        "10",
        "--skip-damaged",
        s(&run),
    ]));
    assert!(out.contains("skipped") && out.contains(&file_name), "{out}");
    let keys = table(&run, "key_frequencies");
    let at: BTreeSet<i64> = (0..keys.height())
        .map(|r| int(&keys, "snapshot_batch", r).unwrap())
        .collect();
    assert_eq!(at, BTreeSet::from([250]));
    let excluded = table(&run, "excluded_loss");
    let batches: BTreeSet<i64> = (0..excluded.height())
        .map(|r| int(&excluded, "batch", r).unwrap())
        .collect();
    assert_eq!(batches, BTreeSet::from([0, 50, 100, 150, 200, 250]));
}

/// A digit the run did not train, and one that does not exist.
#[test]
fn bad_input_digit_not_trained() {
    setup();
    let scratch = Scratch::new("digit");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    for (analysis, digits) in [
        ("loss", "1"),
        ("all", "2,0"),
        ("phases", "7"),
        ("naive-lens", "3"),
    ] {
        let out = analyze(&[
            analysis,
            "-q",
            "--contexts",
            "10",
            "--digits",
            digits,
            s(&run),
        ]);
        let bad = digits.split(',').find(|d| *d != "2").unwrap();
        failed_with(&out, &["did not train", &format!("digit {bad}")]);
        no_analysis_written(&run);
    }
    // The digit it trained works.
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "2",
        s(&run),
    ]));
}

/// `--contexts 0` is refused before anything is computed.
#[test]
fn bad_input_zero_contexts() {
    setup();
    let scratch = Scratch::new("contexts");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    for analysis in ["loss", "naive-lens", "excluded-loss", "phases", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "0", s(&run)]);
        failed_with(&out, &["--contexts"]);
        no_analysis_written(&run);
    }
}

/// An analysis name that does not exist.
#[test]
fn bad_input_unknown_analysis() {
    setup();
    let scratch = Scratch::new("unknown");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let out = analyze(&["fourier-magic", s(&run)]);
    failed_with(&out, &["fourier-magic"]);
    no_analysis_written(&run);
    // A near miss gets a suggestion.
    let out = analyze(&["naive-len", s(&run)]);
    failed_with(&out, &["naive-len", "naive-lens"]);
    no_analysis_written(&run);
}

/// `analyze summary` over a folder of two runs of different widths: one row per (run, digit,
/// source) with the config and the phase figures.
#[test]
fn summary_over_two_runs() {
    setup();
    let scratch = Scratch::new("summary");
    let folder = scratch.path().join("runs");
    UNITS_128.copy_to(&scratch, "runs/wide");
    HUNDREDS_32.copy_to(&scratch, "runs/narrow");
    std::fs::create_dir_all(folder.join("notes")).unwrap();
    std::fs::write(folder.join("README.txt"), "not a run").unwrap();

    let out = succeeded(&analyze(&["summary", "-q", "--contexts", "10", s(&folder)]));
    assert!(out.contains("summary.parquet"), "{out}");
    let summary = read_parquet(&folder.join("summary.parquet")).unwrap();
    for (column, dtype) in [
        ("run", DataType::String),
        ("digit", DataType::Int64),
        ("source", DataType::String),
        ("leaves_ln10_batch", DataType::Int64),
        ("d_model", DataType::Int64),
        ("n_heads", DataType::Int64),
        ("weight_decay", DataType::Float64),
        ("seed", DataType::Int64),
    ] {
        let c = summary
            .column(column)
            .unwrap_or_else(|_| panic!("summary has no column {column}"));
        assert_eq!(c.dtype(), &dtype, "{column}");
    }
    let mut rows = BTreeMap::new();
    for r in 0..summary.height() {
        let key = (
            cell(&summary, "run", r),
            int(&summary, "digit", r).unwrap(),
            cell(&summary, "source", r),
        );
        assert!(
            rows.insert(key.clone(), r).is_none(),
            "duplicate row {key:?}"
        );
    }
    let expected: BTreeSet<(String, i64, String)> = [("wide", 0), ("narrow", 2)]
        .iter()
        .flat_map(|(run, digit)| {
            ["eval", "train_log"].map(|src| (run.to_string(), *digit, src.to_string()))
        })
        .collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for ((run, digit, source), r) in &rows {
        let d_model = if run == "wide" { 128 } else { 32 };
        assert_eq!(int(&summary, "d_model", *r), Some(d_model));
        // The phase figures are those of the run's own phases table.
        let phases = table(&folder.join(run), "phases");
        let pr = (0..phases.height())
            .find(|&p| {
                int(&phases, "digit", p) == Some(*digit) && &cell(&phases, "source", p) == source
            })
            .unwrap();
        assert_eq!(
            int(&summary, "leaves_ln10_batch", *r),
            int(&phases, "leaves_ln10_batch", pr),
            "{run} {digit} {source}"
        );
    }
    let wide_eval = rows[&("wide".to_string(), 0, "eval".to_string())];
    assert!(int(&summary, "leaves_ln10_batch", wide_eval).is_some());
}

/// Column names and types of every analysis table.
#[test]
fn analysis_tables_have_typed_tidy_columns() {
    setup();
    use DataType::{Boolean, Float64, Int64, String as Str};
    let run = HUNDREDS_32_ANALYSED.path();
    let common_head = [("run", Str), ("batch", Int64), ("digit", Int64)];
    let common_tail = [
        ("metric", Str),
        ("value", Float64),
        ("contexts", Int64),
        ("eval_seed", Int64),
    ];
    let with = |keys: &[(&'static str, DataType)], extra: &[(&'static str, DataType)]| {
        let mut v: Vec<(&str, DataType)> = common_head.to_vec();
        v.extend_from_slice(keys);
        v.extend_from_slice(&common_tail);
        v.extend_from_slice(extra);
        v
    };
    assert_schema(&table(run, "loss"), &with(&[("carry_kind", Str)], &[]));
    assert_schema(
        &table(run, "naive_lens"),
        &with(&[("carry_in", Str), ("offset", Int64)], &[]),
    );
    assert_schema(
        &table(run, "excluded_loss"),
        &with(&[("frequencies", Str), ("key_set", Str)], &[]),
    );
    assert_schema(
        &table(run, "key_frequencies"),
        &[
            ("run", Str),
            ("digit", Int64),
            ("snapshot_batch", Int64),
            ("neuron", Int64),
            ("frequency", Int64),
            ("fraction", Float64),
            ("above_threshold", Boolean),
            ("threshold", Float64),
        ],
    );
    let phases = table(run, "phases");
    for (column, dtype) in [
        ("run", Str),
        ("digit", Int64),
        ("source", Str),
        ("leaves_ln10_batch", Int64),
        ("final_loss", Float64),
        ("final_level", Str),
        ("still_descending", Boolean),
    ] {
        assert_eq!(
            phases.column(column).unwrap().dtype(),
            &dtype,
            "phases.{column}"
        );
    }
    for name in [
        "loss",
        "naive_lens",
        "excluded_loss",
        "key_frequencies",
        "phases",
        "plateaus",
    ] {
        let df = table(run, name);
        assert!(df.height() > 0, "{name} is empty");
        for r in 0..df.height() {
            assert_eq!(
                cell(&df, "run", r),
                format!("{}-analysed", HUNDREDS_32.name),
                "{name}"
            );
        }
    }
}
