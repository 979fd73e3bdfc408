//! The independent computation the analyses are checked against: the task, the eval set and
//! every metric of docs/metrics.md ('The task', 'Labels', 'The balanced eval set', 'Per-digit
//! metrics', 'Excluded and restricted loss', 'Key frequencies') in plain f64 loops over the
//! logits and MLP activations of the model's general forward pass. Nothing is shared with the
//! code under test except the examples of the eval set, whose structure is checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;
use std::path::Path;

use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{Hooks, Transformer};
use digitlab::task::{Layout, Pair};
use digitlab_analysis::eval_set::EvalSet;
use digitlab_snapshots::RunDir;

use super::tables::*;
use super::{CONTEXTS, EVAL_SEED};

/// One example of the eval set of digit `k`, with everything computed from the operands.
pub struct Example {
    tokens: Vec<u32>,
    /// True digit `s_k`.
    t: usize,
    /// Naive digit `(a_k + b_k) mod 10`, 0 for `k = n`.
    v: usize,
    /// Carry into position k.
    c: usize,
    kind: &'static str,
}

pub fn number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .rev()
        .fold(0, |acc, &d| acc * 10 + u64::from(d))
}

pub fn reference_example(n: usize, layout: Layout, pair: &Pair, k: usize) -> Example {
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
pub fn reference_position(n: usize, layout: Layout, k: usize) -> usize {
    match layout {
        Layout::Prompt => 2 * n + 1,
        Layout::Answer => {
            let s_k_index = (2 * n + 2) + (n - k);
            s_k_index - 1
        }
    }
}

/// The eval set of `digit` as the examples, checked against docs/metrics.md, 'The balanced eval set': context-major,
/// `a_k * 10 + b_k` inside a context, every other digit fixed within a context.
pub fn eval_examples(cfg: &TrainConfig, digit: usize) -> (EvalSet, Vec<Example>) {
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
        .map(|p| reference_example(n, cfg.task.layout, p, digit))
        .collect();
    let tokens: Vec<u32> = examples.iter().flat_map(|e| e.tokens.clone()).collect();
    assert_eq!(
        tokens, set.batch.tokens,
        "eval-set tokens differ from the layouts of docs/metrics.md, 'The task'"
    );
    (set, examples)
}

/// Logits at the predicting position, from the general forward pass, in f64.
pub fn reference_logits(
    cfg: &TrainConfig,
    model: &Transformer,
    examples: &[Example],
    k: usize,
) -> Vec<Vec<f64>> {
    at_predicting_position(cfg, model, examples, k, None)
}

/// MLP post-ReLU activations of the last block at the predicting position, in f64.
pub fn reference_mlp_post(
    cfg: &TrainConfig,
    model: &Transformer,
    examples: &[Example],
    k: usize,
) -> Vec<Vec<f64>> {
    let hook = format!("blocks.{}.mlp.hook_post", cfg.model.n_layers - 1);
    at_predicting_position(cfg, model, examples, k, Some(&hook))
}

/// The logits, or the activation cached at `hook`, of the general forward pass at the
/// predicting position of digit `k`, in f64 (in chunks of 250 examples).
fn at_predicting_position(
    cfg: &TrainConfig,
    model: &Transformer,
    examples: &[Example],
    k: usize,
    hook: Option<&str>,
) -> Vec<Vec<f64>> {
    let n_ctx = cfg.task.n_ctx();
    let position = reference_position(cfg.task.n_digits, cfg.task.layout, k);
    let mut out = Vec::new();
    for chunk in examples.chunks(250) {
        let tokens: Vec<u32> = chunk.iter().flat_map(|e| e.tokens.clone()).collect();
        let tokens = Tensor::from_vec(tokens, (chunk.len(), n_ctx), &Device::Cpu).unwrap();
        let mut hooks = hook.map_or_else(Hooks::none, |h| Hooks::none().cache(h));
        let logits = model.forward(&tokens, &mut hooks).unwrap();
        let values = hook.map_or(&logits, |h| &hooks.cache[h]);
        for row in values.to_vec3::<f32>().unwrap() {
            out.push(row[position].iter().map(|&x| f64::from(x)).collect());
        }
    }
    out
}

pub fn log_softmax(x: &[f64]) -> Vec<f64> {
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

pub fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for i in 1..x.len() {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

pub fn mean(values: &[f64]) -> f64 {
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
pub fn expected_loss(logits: &[Vec<f64>], examples: &[Example]) -> BTreeMap<String, f64> {
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
pub fn expected_naive_lens(logits: &[Vec<f64>], examples: &[Example]) -> BTreeMap<String, f64> {
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
pub fn sum_directions(f: usize) -> Vec<[f64; 100]> {
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

/// Excluded and restricted loss of one frequency set (docs/metrics.md, 'Excluded and restricted loss').
pub fn expected_fourier(logits: &[Vec<f64>], examples: &[Example], freqs: &[usize]) -> (f64, f64) {
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

/// Per neuron: the fraction of its centred variance at each frequency 1..5 (docs/metrics.md, 'Key frequencies').
pub fn expected_neuron_fractions(acts: &[Vec<f64>]) -> Vec<[f64; 5]> {
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
pub fn check_against_independent_computation(run: &Path) {
    const TOL: f64 = 1e-5;
    let cfg = run_config(run);
    let n = cfg.task.n_digits;
    let dir = RunDir::open(run).unwrap();
    let (loss, lens) = (loss_values(run), naive_lens_values(run));
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
            let logits = reference_logits(&cfg, &model, examples, k);
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
                    expected_neuron_fractions(&reference_mlp_post(&cfg, &model, examples, k));
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
