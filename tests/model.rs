//! The model of docs/metrics.md, 'The model': parameter names and shapes (1 and 2 layers), the 130 trained
//! parameters of d_model 2 / 2 heads, the initial weight statistics; the general forward pass
//! (`Transformer::forward`) against an independent f64 implementation written here (logits and
//! every cached activation, 1 and 2 layers, random biases so the bias paths count), its
//! gradients against finite differences of that f64 implementation; the fast path
//! (`Transformer::last_position_logits`) against the general path (logits and gradients of a
//! cross-entropy loss w.r.t. every parameter); and the hooks (cache, zero, mean, replace).

mod common;

use common::one_thread;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use digitlab::model::{HookPoint, Hooks, Intervention, ModelConfig, Transformer};
use digitlab::task::{training_batch, Layout, TaskConfig};
use digitlab_snapshots::NamedTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// Configurations and parameters

fn model_config(
    task: &TaskConfig,
    n_layers: usize,
    d_model: usize,
    n_heads: usize,
    d_mlp: usize,
) -> ModelConfig {
    ModelConfig {
        n_layers,
        d_model,
        n_heads,
        d_mlp,
        d_vocab: 12,
        d_vocab_out: 12,
        n_ctx: task.n_ctx(),
    }
}

fn task(n: usize, layout: Layout) -> TaskConfig {
    let targets = match layout {
        Layout::Prompt => vec![0],
        Layout::Answer => (0..=n).collect(),
    };
    TaskConfig {
        n_digits: n,
        layout,
        targets,
        modp: None,
    }
}

/// Spec section 2, written out: name and shape of every tensor of the state dict.
fn spec_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, h, m) = (cfg.d_model, cfg.n_heads, cfg.d_mlp);
    let dh = d / h;
    let mut list = vec![
        ("embed.W_E".to_string(), vec![cfg.d_vocab, d]),
        ("pos_embed.W_pos".to_string(), vec![cfg.n_ctx, d]),
    ];
    for l in 0..cfg.n_layers {
        for w in ["W_Q", "W_K", "W_V"] {
            list.push((format!("blocks.{l}.attn.{w}"), vec![h, d, dh]));
        }
        list.push((format!("blocks.{l}.attn.W_O"), vec![h, dh, d]));
        for b in ["b_Q", "b_K", "b_V"] {
            list.push((format!("blocks.{l}.attn.{b}"), vec![h, dh]));
        }
        list.push((format!("blocks.{l}.attn.b_O"), vec![d]));
        list.push((format!("blocks.{l}.mlp.W_in"), vec![d, m]));
        list.push((format!("blocks.{l}.mlp.b_in"), vec![m]));
        list.push((format!("blocks.{l}.mlp.W_out"), vec![m, d]));
        list.push((format!("blocks.{l}.mlp.b_out"), vec![d]));
    }
    list.push(("unembed.W_U".to_string(), vec![d, cfg.d_vocab_out]));
    list.push(("unembed.b_U".to_string(), vec![cfg.d_vocab_out]));
    list
}

/// Attention and unembedding biases are not trained (docs/metrics.md, 'The model').
fn untrained_by_spec(name: &str) -> bool {
    name.contains(".attn.b_") || name == "unembed.b_U"
}

/// `init_params` with every bias set to random values and W_Q, W_K scaled up (so attention is
/// far from uniform): every path of the forward pass then matters.
fn perturbed_params(cfg: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut params = cfg.init_params(seed);
    for p in &mut params {
        let last = p.name.rsplit('.').next().unwrap();
        if last.starts_with("b_") {
            for x in &mut p.data {
                *x = rng.random_range(-0.5..0.5);
            }
        } else if last == "W_Q" || last == "W_K" {
            for x in &mut p.data {
                *x *= 3.0;
            }
        }
    }
    params
}

fn tokens_tensor(task: &TaskConfig, seed: u64, batch: usize) -> (Vec<u32>, Tensor) {
    let b = training_batch(task, seed, 0, batch);
    let t = Tensor::from_slice(&b.tokens, (batch, task.n_ctx()), &Device::Cpu).unwrap();
    (b.tokens, t)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// `max |actual - expected| / max |expected|`.
fn rel_err(actual: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    let scale = expected.iter().fold(0.0f64, |s, x| s.max(x.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |s, (&a, &e)| s.max((f64::from(a) - e).abs()));
    assert!(scale > 0.0, "reference is all zeros");
    diff / scale
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

// ---------------------------------------------------------------------------------------------
// The independent f64 model

/// An activation: shape (TransformerLens layout) and row-major values.
#[derive(Clone, Debug)]
struct Act {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// A hook of the reference model: sees (and may change) each activation by name.
type RefHook<'a> = &'a mut dyn FnMut(&str, &mut Act);

/// The model of docs/metrics.md, 'The model', in plain f64 loops. Returns the logits `[batch, pos, d_vocab_out]`
/// and every activation by TransformerLens hook name (after the hook ran).
fn reference_forward(
    cfg: &ModelConfig,
    params: &[NamedTensor],
    tokens: &[u32],
    batch: usize,
    hook: RefHook,
) -> (Act, HashMap<String, Act>) {
    let p: HashMap<&str, Vec<f64>> = params
        .iter()
        .map(|t| (t.name.as_str(), widen(&t.data)))
        .collect();
    let (d, nh, m, vo) = (cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.d_vocab_out);
    let dh = d / nh;
    let t = tokens.len() / batch;
    let mut acts = HashMap::new();
    let mut record =
        |name: String, mut act: Act, hook: &mut dyn FnMut(&str, &mut Act)| -> Vec<f64> {
            hook(&name, &mut act);
            let data = act.data.clone();
            acts.insert(name, act);
            data
        };

    let (w_e, w_pos) = (&p["embed.W_E"], &p["pos_embed.W_pos"]);
    let mut embed = vec![0.0; batch * t * d];
    for b in 0..batch {
        for i in 0..t {
            let tok = tokens[b * t + i] as usize;
            for k in 0..d {
                embed[(b * t + i) * d + k] = w_e[tok * d + k];
            }
        }
    }
    let embed = record(
        "hook_embed".into(),
        Act {
            shape: vec![batch, t, d],
            data: embed,
        },
        hook,
    );
    let mut resid: Vec<f64> = (0..batch * t * d)
        .map(|j| embed[j] + w_pos[j % (t * d)])
        .collect();

    for l in 0..cfg.n_layers {
        let w = |s: &str| &p[format!("blocks.{l}.{s}").as_str()];
        let name = |s: &str| format!("blocks.{l}.{s}");
        resid = record(
            name("hook_resid_pre"),
            Act {
                shape: vec![batch, t, d],
                data: resid,
            },
            hook,
        );
        // q, k, v: [batch, pos, head, d_head].
        let project = |wn: &str, bn: &str| {
            let (wm, bv) = (w(wn), w(bn));
            let mut out = vec![0.0; batch * t * nh * dh];
            for b in 0..batch {
                for i in 0..t {
                    for h in 0..nh {
                        for e in 0..dh {
                            let mut s = bv[h * dh + e];
                            for k in 0..d {
                                s += resid[(b * t + i) * d + k] * wm[(h * d + k) * dh + e];
                            }
                            out[((b * t + i) * nh + h) * dh + e] = s;
                        }
                    }
                }
            }
            Act {
                shape: vec![batch, t, nh, dh],
                data: out,
            }
        };
        let q = record(name("attn.hook_q"), project("attn.W_Q", "attn.b_Q"), hook);
        let k = record(name("attn.hook_k"), project("attn.W_K", "attn.b_K"), hook);
        let v = record(name("attn.hook_v"), project("attn.W_V", "attn.b_V"), hook);
        let qkv =
            |x: &[f64], b: usize, i: usize, h: usize, e: usize| x[((b * t + i) * nh + h) * dh + e];

        // Scores and pattern: [batch, head, query, key], causal, scaled by 1/sqrt(d_head).
        let mut scores = vec![f64::NEG_INFINITY; batch * nh * t * t];
        for b in 0..batch {
            for h in 0..nh {
                for i in 0..t {
                    for j in 0..=i {
                        let dot: f64 = (0..dh)
                            .map(|e| qkv(&q, b, i, h, e) * qkv(&k, b, j, h, e))
                            .sum();
                        scores[((b * nh + h) * t + i) * t + j] = dot / (dh as f64).sqrt();
                    }
                }
            }
        }
        let scores = record(
            name("attn.hook_attn_scores"),
            Act {
                shape: vec![batch, nh, t, t],
                data: scores,
            },
            hook,
        );
        let mut pattern = vec![0.0; batch * nh * t * t];
        for row in 0..batch * nh * t {
            let s = &scores[row * t..(row + 1) * t];
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for j in 0..t {
                pattern[row * t + j] = e[j] / total;
            }
        }
        let pattern = record(
            name("attn.hook_pattern"),
            Act {
                shape: vec![batch, nh, t, t],
                data: pattern,
            },
            hook,
        );

        let mut z = vec![0.0; batch * t * nh * dh];
        for b in 0..batch {
            for h in 0..nh {
                for i in 0..t {
                    for e in 0..dh {
                        z[((b * t + i) * nh + h) * dh + e] = (0..t)
                            .map(|j| pattern[((b * nh + h) * t + i) * t + j] * qkv(&v, b, j, h, e))
                            .sum();
                    }
                }
            }
        }
        let z = record(
            name("attn.hook_z"),
            Act {
                shape: vec![batch, t, nh, dh],
                data: z,
            },
            hook,
        );
        let (w_o, b_o) = (w("attn.W_O"), w("attn.b_O"));
        let mut attn_out = vec![0.0; batch * t * d];
        for bi in 0..batch * t {
            for c in 0..d {
                let mut s = b_o[c];
                for h in 0..nh {
                    for e in 0..dh {
                        s += z[(bi * nh + h) * dh + e] * w_o[(h * dh + e) * d + c];
                    }
                }
                attn_out[bi * d + c] = s;
            }
        }
        let attn_out = record(
            name("hook_attn_out"),
            Act {
                shape: vec![batch, t, d],
                data: attn_out,
            },
            hook,
        );
        let mid: Vec<f64> = resid.iter().zip(&attn_out).map(|(a, b)| a + b).collect();
        let mid = record(
            name("hook_resid_mid"),
            Act {
                shape: vec![batch, t, d],
                data: mid,
            },
            hook,
        );

        let (w_in, b_in, w_out, b_out) =
            (w("mlp.W_in"), w("mlp.b_in"), w("mlp.W_out"), w("mlp.b_out"));
        let mut pre = vec![0.0; batch * t * m];
        for bi in 0..batch * t {
            for n in 0..m {
                pre[bi * m + n] = b_in[n]
                    + (0..d)
                        .map(|c| mid[bi * d + c] * w_in[c * m + n])
                        .sum::<f64>();
            }
        }
        let pre = record(
            name("mlp.hook_pre"),
            Act {
                shape: vec![batch, t, m],
                data: pre,
            },
            hook,
        );
        let post: Vec<f64> = pre.iter().map(|&x| x.max(0.0)).collect();
        let post = record(
            name("mlp.hook_post"),
            Act {
                shape: vec![batch, t, m],
                data: post,
            },
            hook,
        );
        let mut mlp_out = vec![0.0; batch * t * d];
        for bi in 0..batch * t {
            for c in 0..d {
                mlp_out[bi * d + c] = b_out[c]
                    + (0..m)
                        .map(|n| post[bi * m + n] * w_out[n * d + c])
                        .sum::<f64>();
            }
        }
        let mlp_out = record(
            name("hook_mlp_out"),
            Act {
                shape: vec![batch, t, d],
                data: mlp_out,
            },
            hook,
        );
        let post_resid: Vec<f64> = mid.iter().zip(&mlp_out).map(|(a, b)| a + b).collect();
        resid = record(
            name("hook_resid_post"),
            Act {
                shape: vec![batch, t, d],
                data: post_resid,
            },
            hook,
        );
    }

    let (w_u, b_u) = (&p["unembed.W_U"], &p["unembed.b_U"]);
    let mut logits = vec![0.0; batch * t * vo];
    for bi in 0..batch * t {
        for o in 0..vo {
            logits[bi * vo + o] = b_u[o]
                + (0..d)
                    .map(|c| resid[bi * d + c] * w_u[c * vo + o])
                    .sum::<f64>();
        }
    }
    (
        Act {
            shape: vec![batch, t, vo],
            data: logits,
        },
        acts,
    )
}

fn no_hook() -> impl FnMut(&str, &mut Act) {
    |_: &str, _: &mut Act| {}
}

/// Mean cross-entropy of the last-position logits in f64.
fn reference_last_position_loss(logits: &Act, targets: &[u32]) -> f64 {
    let (batch, t, vo) = (logits.shape[0], logits.shape[1], logits.shape[2]);
    let mut total = 0.0;
    for b in 0..batch {
        let row = &logits.data[(b * t + t - 1) * vo..(b * t + t) * vo];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
        total += lse - row[targets[b] as usize];
    }
    total / batch as f64
}

// ---------------------------------------------------------------------------------------------
// Names, shapes, counts, initialisation

#[test]
fn parameter_names_and_shapes_follow_the_spec() {
    one_thread();
    let configs = [
        model_config(&task(5, Layout::Prompt), 1, 128, 4, 512),
        model_config(&task(5, Layout::Prompt), 2, 16, 2, 64),
        model_config(&task(3, Layout::Answer), 2, 12, 3, 20),
        ModelConfig {
            d_vocab_out: 10,
            ..model_config(&task(5, Layout::Prompt), 1, 8, 1, 32)
        },
    ];
    for cfg in &configs {
        cfg.validate().unwrap();
        let expected = spec_shapes(cfg);
        let specs = cfg.param_specs();
        let got: Vec<(String, Vec<usize>)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect();
        assert_eq!(got, expected, "{cfg:?}");
        for s in &specs {
            assert_eq!(
                s.trained,
                !untrained_by_spec(&s.name),
                "{} trained?",
                s.name
            );
        }
        let params = cfg.init_params(1);
        let got: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        assert_eq!(got, expected);
        for p in &params {
            assert_eq!(
                p.data.len(),
                p.shape.iter().product::<usize>(),
                "{}",
                p.name
            );
        }
        // The independent count: the elements of every trained tensor.
        let count: usize = expected
            .iter()
            .filter(|(n, _)| !untrained_by_spec(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(cfg.n_trained_params(), count);
        // The model accepts exactly these tensors.
        Transformer::from_params(cfg, &params, &Device::Cpu).unwrap();
    }
    // Two layers: block 1 has the same tensors as block 0.
    let two = spec_shapes(&configs[1]);
    assert!(two.iter().any(|(n, _)| n == "blocks.1.mlp.W_out"));
    assert_eq!(two.len(), 2 + 2 * 12 + 2);
}

#[test]
fn d_model_2_with_2_heads_has_130_trained_parameters() {
    one_thread();
    let cfg = model_config(&task(5, Layout::Prompt), 1, 2, 2, 8);
    // W_E 12x2, W_pos 12x2, W_Q/W_K/W_V 2x2x1 each, W_O 2x1x2, W_in 2x8, b_in 8, W_out 8x2,
    // b_out 2, W_U 2x12.
    let by_hand = 24 + 24 + 3 * 4 + 4 + 16 + 8 + 16 + 2 + 24;
    assert_eq!(by_hand, 130);
    assert_eq!(cfg.n_trained_params(), 130);
}

#[test]
fn initial_weights_are_normal_with_the_spec_scales_and_biases_are_zero() {
    one_thread();
    let cfg = model_config(&task(5, Layout::Prompt), 1, 128, 4, 512);
    let params = cfg.init_params(0);
    for p in &params {
        let n = p.data.len() as f64;
        let last = p.name.rsplit('.').next().unwrap();
        if last.starts_with("b_") {
            assert!(p.data.iter().all(|&x| x == 0.0), "{} is not zero", p.name);
            continue;
        }
        let sigma = if p.name == "unembed.W_U" {
            1.0 / 12f64.sqrt()
        } else {
            1.0 / 128f64.sqrt()
        };
        let mean = p.data.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = p
            .data
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        // Five standard errors of the sample mean and the sample variance of a normal.
        assert!(
            mean.abs() < 5.0 * sigma / n.sqrt(),
            "{}: mean {mean}",
            p.name
        );
        let rel = var / (sigma * sigma) - 1.0;
        assert!(
            rel.abs() < 5.0 * (2.0 / n).sqrt(),
            "{}: variance {var}, expected {}",
            p.name,
            sigma * sigma
        );
        // Normal, not uniform: about 4.55% of values beyond 2 sigma (uniform of this variance
        // has none beyond 1.73 sigma).
        let tail = p
            .data
            .iter()
            .filter(|&&x| f64::from(x).abs() > 2.0 * sigma)
            .count() as f64
            / n;
        assert!(
            (tail - 0.0455).abs() < 5.0 * (0.0455 * 0.9545 / n).sqrt() + 1e-9,
            "{}: tail {tail}",
            p.name
        );
    }
    // A pure function of the seed.
    assert_eq!(cfg.init_params(0), params);
    assert_ne!(cfg.init_params(1)[0].data, params[0].data);
}

// ---------------------------------------------------------------------------------------------
// The general forward pass against the f64 model

fn check_forward_against_reference(cfg: &ModelConfig, task: &TaskConfig, batch: usize, seed: u64) {
    let params = perturbed_params(cfg, seed);
    let model = Transformer::from_params(cfg, &params, &Device::Cpu).unwrap();
    let (tokens, tensor) = tokens_tensor(task, seed, batch);
    let mut hooks = Hooks::none().cache_everything();
    let logits = model.forward(&tensor, &mut hooks).unwrap();
    assert_eq!(logits.dims(), [batch, task.n_ctx(), cfg.d_vocab_out]);
    let (expected, acts) = reference_forward(cfg, &params, &tokens, batch, &mut no_hook());
    let err = rel_err(&to_vec(&logits), &expected.data);
    assert!(err < 1e-5, "logits relative error {err} ({cfg:?})");
    // Every activation the reference names is cached under the same name, layout and values.
    for (name, act) in &acts {
        let cached = hooks
            .cache
            .get(name)
            .unwrap_or_else(|| panic!("{name} not cached"));
        assert_eq!(cached.dims(), act.shape.as_slice(), "{name}");
        let got = to_vec(cached);
        if name.ends_with("hook_attn_scores") {
            // Compare the causal part; above the diagonal both are -inf.
            let finite: Vec<usize> = (0..act.data.len())
                .filter(|&i| act.data[i].is_finite())
                .collect();
            assert!(
                got.iter()
                    .zip(&act.data)
                    .all(|(g, e)| g.is_finite() == e.is_finite()),
                "{name} mask"
            );
            let g: Vec<f32> = finite.iter().map(|&i| got[i]).collect();
            let e: Vec<f64> = finite.iter().map(|&i| act.data[i]).collect();
            assert!(rel_err(&g, &e) < 1e-5, "{name}");
        } else {
            let err = rel_err(&got, &act.data);
            assert!(err < 1e-5, "{name}: relative error {err}");
        }
    }
    // `logits_at` is the forward pass at the chosen positions.
    let positions = [0, task.n_ctx() - 1, 2];
    let at = model
        .logits_at(&tensor, &positions, &mut Hooks::none())
        .unwrap();
    let (t, vo) = (task.n_ctx(), cfg.d_vocab_out);
    let picked: Vec<f64> = (0..batch)
        .flat_map(|b| {
            positions
                .iter()
                .flat_map(move |&p| (0..vo).map(move |o| (b, p, o)))
        })
        .map(|(b, p, o)| expected.data[(b * t + p) * vo + o])
        .collect();
    assert!(rel_err(&to_vec(&at), &picked) < 1e-5);
}

#[test]
fn forward_matches_f64_reference_one_layer() {
    one_thread();
    check_forward_against_reference(
        &model_config(&task(5, Layout::Prompt), 1, 16, 2, 64),
        &task(5, Layout::Prompt),
        24,
        1,
    );
    check_forward_against_reference(
        &model_config(&task(3, Layout::Answer), 1, 12, 4, 40),
        &task(3, Layout::Answer),
        16,
        2,
    );
    let task5 = task(5, Layout::Prompt);
    let out10 = ModelConfig {
        d_vocab_out: 10,
        ..model_config(&task5, 1, 8, 1, 24)
    };
    check_forward_against_reference(&out10, &task5, 16, 3);
}

#[test]
fn forward_matches_f64_reference_two_layers() {
    one_thread();
    check_forward_against_reference(
        &model_config(&task(5, Layout::Prompt), 2, 16, 4, 48),
        &task(5, Layout::Prompt),
        16,
        4,
    );
    check_forward_against_reference(
        &model_config(&task(2, Layout::Answer), 2, 8, 2, 32),
        &task(2, Layout::Answer),
        16,
        5,
    );
}

#[test]
fn params_in_any_order_give_the_same_model() {
    one_thread();
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 1, 8, 2, 32);
    let params = perturbed_params(&cfg, 9);
    let mut sorted = params.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name)); // the order snapshots come back in
    let (_, tokens) = tokens_tensor(&t, 9, 8);
    let a = Transformer::from_params(&cfg, &params, &Device::Cpu)
        .unwrap()
        .forward(&tokens, &mut Hooks::none())
        .unwrap();
    let b = Transformer::from_params(&cfg, &sorted, &Device::Cpu)
        .unwrap()
        .forward(&tokens, &mut Hooks::none())
        .unwrap();
    assert_eq!(to_vec(&a), to_vec(&b));
}

// ---------------------------------------------------------------------------------------------
// Gradients: general path against finite differences, fast path against general path

/// A model whose every tensor is a `Var`; the vars in `param_specs` order.
fn model_with_vars(cfg: &ModelConfig, params: &[NamedTensor]) -> (Transformer, Vec<(String, Var)>) {
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut vars = Vec::new();
    for p in params {
        let var = Var::from_slice(&p.data, p.shape.as_slice(), &device).unwrap();
        tensors.insert(p.name.clone(), var.as_tensor().clone());
        vars.push((p.name.clone(), var));
    }
    let model =
        Transformer::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, &device)).unwrap();
    (model, vars)
}

/// Gradients of the mean cross-entropy of `logits` (`[batch, d_vocab_out]`) w.r.t. every var.
fn grads_of(logits: &Tensor, targets: &[u32], vars: &[(String, Var)]) -> (f32, Vec<Vec<f32>>) {
    let target = Tensor::from_slice(targets, targets.len(), &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(logits, &target).unwrap();
    let store = loss.backward().unwrap();
    let grads = vars
        .iter()
        .map(|(name, v)| {
            to_vec(
                store
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}")),
            )
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), grads)
}

fn general_last_position(model: &Transformer, tokens: &Tensor) -> Tensor {
    let t = tokens.dim(1).unwrap();
    model
        .forward(tokens, &mut Hooks::none())
        .unwrap()
        .narrow(1, t - 1, 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
}

fn targets_of(task: &TaskConfig, seed: u64, batch: usize) -> Vec<u32> {
    // The units digit of each example, read at the last position.
    let b = training_batch(task, seed, 0, batch);
    b.pairs
        .iter()
        .map(|p| u32::from(p.sum_digits()[0]))
        .collect()
}

#[test]
fn general_path_gradients_match_finite_differences_of_the_f64_model() {
    one_thread();
    let t = task(5, Layout::Prompt);
    for n_layers in [1, 2] {
        let cfg = model_config(&t, n_layers, 8, 2, 16);
        let params = perturbed_params(&cfg, 21 + n_layers as u64);
        let batch = 12;
        let (tokens, tensor) = tokens_tensor(&t, 21, batch);
        let targets = targets_of(&t, 21, batch);
        let (model, vars) = model_with_vars(&cfg, &params);
        let (loss, grads) = grads_of(&general_last_position(&model, &tensor), &targets, &vars);

        let ref_loss = |ps: &[NamedTensor]| {
            let (logits, _) = reference_forward(&cfg, ps, &tokens, batch, &mut no_hook());
            reference_last_position_loss(&logits, &targets)
        };
        let base = ref_loss(&params);
        assert!(
            (f64::from(loss) - base).abs() < 1e-5 * base,
            "loss {loss} vs f64 {base}"
        );

        // Central differences of the f64 loss in the f32 parameters, at a few entries of each
        // tensor (divided by the step the f32 values actually took).
        let h = 2f32.powi(-14);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (i, (name, _)) in vars.iter().enumerate() {
            if name.ends_with("attn.b_K") {
                continue; // softmax is invariant to it: checked in the fast-path test
            }
            let scale = grads[i].iter().fold(0f32, |s, g| s.max(g.abs()));
            assert!(scale > 0.0, "{name} has an all-zero gradient");
            for _ in 0..3 {
                let j = rng.random_range(0..params[i].data.len());
                let mut plus = params.clone();
                plus[i].data[j] += h;
                let mut minus = params.clone();
                minus[i].data[j] -= h;
                let step = f64::from(plus[i].data[j]) - f64::from(minus[i].data[j]);
                let fd = (ref_loss(&plus) - ref_loss(&minus)) / step;
                let diff = (f64::from(grads[i][j]) - fd).abs();
                assert!(
                    diff < 2e-3 * f64::from(scale) + 1e-7,
                    "{name}[{j}]: candle {} vs finite difference {fd}",
                    grads[i][j]
                );
            }
        }
    }
}

fn check_fast_path(cfg: &ModelConfig, task: &TaskConfig, batch: usize, seed: u64) {
    let params = perturbed_params(cfg, seed);
    let (_, tokens) = tokens_tensor(task, seed, batch);
    let targets = targets_of(task, seed, batch);

    let (model, vars) = model_with_vars(cfg, &params);
    let general = general_last_position(&model, &tokens);
    let fast = model.last_position_logits(&tokens).unwrap();
    assert_eq!(fast.dims(), [batch, cfg.d_vocab_out]);
    let err = rel_err(&to_vec(&fast), &widen(&to_vec(&general)));
    assert!(err < 1e-5, "fast-path logits: relative error {err}");

    let (loss_general, grads_general) = grads_of(&general, &targets, &vars);
    let (loss_fast, grads_fast) = grads_of(&fast, &targets, &vars);
    assert!(((loss_fast - loss_general) / loss_general).abs() < 1e-5);
    let global = grads_general
        .iter()
        .flatten()
        .fold(0f32, |s, g| s.max(g.abs()));
    for (i, (name, _)) in vars.iter().enumerate() {
        if name.ends_with("attn.b_K") {
            // Adding b_K shifts every score of a query by the same amount: no gradient.
            for g in grads_general[i].iter().chain(&grads_fast[i]) {
                assert!(g.abs() < 1e-5 * global, "{name} gradient {g} should vanish");
            }
            continue;
        }
        let err = rel_err(&grads_fast[i], &widen(&grads_general[i]));
        assert!(
            err < 1e-5,
            "{name}: gradient relative error {err} ({cfg:?})"
        );
    }
}

#[test]
fn fast_path_matches_general_path_logits_and_gradients() {
    one_thread();
    let t = task(5, Layout::Prompt);
    check_fast_path(&model_config(&t, 1, 16, 2, 64), &t, 32, 31);
    check_fast_path(&model_config(&t, 1, 32, 4, 128), &t, 32, 32);
    check_fast_path(&model_config(&t, 1, 2, 2, 8), &t, 32, 33);
    check_fast_path(
        &ModelConfig {
            d_vocab_out: 10,
            ..model_config(&t, 1, 8, 1, 32)
        },
        &t,
        16,
        34,
    );
    let t3 = task(3, Layout::Prompt);
    check_fast_path(&model_config(&t3, 1, 8, 2, 16), &t3, 16, 35);
    // Any sequence, not only the prompt: the answer layout's last position.
    let ta = task(3, Layout::Answer);
    check_fast_path(&model_config(&ta, 1, 8, 2, 16), &ta, 16, 36);
}

#[test]
fn fast_path_refuses_two_layers() {
    one_thread();
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 2, 8, 2, 16);
    let model = Transformer::from_params(&cfg, &cfg.init_params(0), &Device::Cpu).unwrap();
    let (_, tokens) = tokens_tensor(&t, 0, 4);
    assert!(model.last_position_logits(&tokens).is_err());
}

// ---------------------------------------------------------------------------------------------
// Hooks

#[test]
fn cached_attention_pattern_is_causal_and_normalised() {
    one_thread();
    let t = task(5, Layout::Prompt);
    for n_layers in [1, 2] {
        let cfg = model_config(&t, n_layers, 16, 4, 32);
        let model =
            Transformer::from_params(&cfg, &perturbed_params(&cfg, 41), &Device::Cpu).unwrap();
        let (_, tokens) = tokens_tensor(&t, 41, 10);
        let name = format!("blocks.{}.attn.hook_pattern", n_layers - 1);
        let mut hooks = Hooks::none().cache(&name);
        model.forward(&tokens, &mut hooks).unwrap();
        assert_eq!(hooks.cache.len(), 1, "only the asked hook is cached");
        let pattern = &hooks.cache[&name];
        let n = t.n_ctx();
        assert_eq!(pattern.dims(), [10, 4, n, n]);
        let p = to_vec(pattern);
        for row in 0..10 * 4 * n {
            let i = row % n;
            let r = &p[row * n..(row + 1) * n];
            let sum: f64 = r.iter().map(|&x| f64::from(x)).sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
            assert!(
                r[i + 1..].iter().all(|&x| x == 0.0),
                "attention above the diagonal: {r:?}"
            );
            assert!(r[..=i].iter().all(|&x| x >= 0.0));
        }
        // The first position can only attend to itself.
        assert!((0..10 * 4).all(|bh| p[bh * n * n] == 1.0));
    }
}

#[test]
fn hook_points_are_the_names_the_forward_pass_caches_and_no_others() {
    one_thread();
    let t = task(3, Layout::Prompt);
    let cfg = model_config(&t, 2, 8, 2, 16);
    let model = Transformer::from_params(&cfg, &perturbed_params(&cfg, 45), &Device::Cpu).unwrap();
    let (_, tokens) = tokens_tensor(&t, 45, 4);
    let mut all = Hooks::none().cache_everything();
    model.forward(&tokens, &mut all).unwrap();
    let mut cached: Vec<String> = all.cache.keys().cloned().collect();
    let mut listed: Vec<String> = cfg.hook_points().into_iter().map(HookPoint::name).collect();
    cached.sort();
    listed.sort();
    assert_eq!(cached, listed);
    assert_eq!(listed.len(), 2 + 2 * 13);
    // The constructor spells the TransformerLens name.
    assert_eq!(HookPoint::Pattern(1).name(), "blocks.1.attn.hook_pattern");
    let mut one = Hooks::none().cache(HookPoint::MlpPost(0));
    model.forward(&tokens, &mut one).unwrap();
    assert_eq!(
        one.cached(HookPoint::MlpPost(0)).unwrap().dims(),
        [4, t.n_ctx(), 16]
    );

    // As in TransformerLens, a name that is not a hook point is an error, whether misspelled
    // or of a layer the model does not have, for caching and for interventions.
    for (mut hooks, bad) in [
        (
            Hooks::none().cache("blocks.0.attn.hook_patern"),
            "blocks.0.attn.hook_patern",
        ),
        (
            Hooks::none().intervene("blocks.2.hook_attn_out", Intervention::Zero),
            "blocks.2.hook_attn_out",
        ),
    ] {
        let err = model.forward(&tokens, &mut hooks).unwrap_err().to_string();
        assert!(
            err.contains(bad) && err.contains("not a hook point"),
            "{err}"
        );
        let err = model
            .logits_at(&tokens, &[0], &mut hooks)
            .unwrap_err()
            .to_string();
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn zero_ablating_the_attention_output_equals_zeroing_w_o_and_b_o() {
    one_thread();
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 1, 16, 2, 64);
    let params = perturbed_params(&cfg, 51);
    let (tokens, tensor) = tokens_tensor(&t, 51, 12);
    let model = Transformer::from_params(&cfg, &params, &Device::Cpu).unwrap();
    let ablated = model
        .forward(
            &tensor,
            &mut Hooks::none().intervene("blocks.0.hook_attn_out", Intervention::Zero),
        )
        .unwrap();
    let mut zeroed = params.clone();
    for p in &mut zeroed {
        if p.name == "blocks.0.attn.W_O" || p.name == "blocks.0.attn.b_O" {
            p.data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let by_hand = Transformer::from_params(&cfg, &zeroed, &Device::Cpu)
        .unwrap()
        .forward(&tensor, &mut Hooks::none())
        .unwrap();
    let err = rel_err(&to_vec(&ablated), &widen(&to_vec(&by_hand)));
    assert!(err < 1e-6, "relative error {err}");
    // And the f64 model with the same ablation; and the ablation changed something.
    let (expected, _) = reference_forward(
        &cfg,
        &params,
        &tokens,
        12,
        &mut |name: &str, act: &mut Act| {
            if name == "blocks.0.hook_attn_out" {
                act.data.iter_mut().for_each(|x| *x = 0.0);
            }
        },
    );
    assert!(rel_err(&to_vec(&ablated), &expected.data) < 1e-5);
    let plain = model.forward(&tensor, &mut Hooks::none()).unwrap();
    assert!(
        rel_err(&to_vec(&plain), &expected.data) > 1e-2,
        "zero ablation had no effect"
    );
}

#[test]
fn mean_ablating_mlp_post_makes_it_identical_across_the_batch() {
    one_thread();
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 2, 16, 2, 32);
    let params = perturbed_params(&cfg, 61);
    let batch = 12;
    let (tokens, tensor) = tokens_tensor(&t, 61, batch);
    let model = Transformer::from_params(&cfg, &params, &Device::Cpu).unwrap();
    let name = "blocks.0.mlp.hook_post";
    let mut plain = Hooks::none().cache(name);
    model.forward(&tensor, &mut plain).unwrap();
    let mut hooks = Hooks::none()
        .intervene(name, Intervention::Mean)
        .cache(name);
    let logits = model.forward(&tensor, &mut hooks).unwrap();
    let post = to_vec(&hooks.cache[name]);
    let per_example = t.n_ctx() * cfg.d_mlp;
    for b in 1..batch {
        assert_eq!(
            post[b * per_example..(b + 1) * per_example],
            post[..per_example],
            "example {b}"
        );
    }
    // It is the batch mean of the activation, per position and neuron.
    let before = to_vec(&plain.cache[name]);
    let mean: Vec<f64> = (0..per_example)
        .map(|j| {
            (0..batch)
                .map(|b| f64::from(before[b * per_example + j]))
                .sum::<f64>()
                / batch as f64
        })
        .collect();
    assert!(rel_err(&post[..per_example], &mean) < 1e-6);
    // The rest of the forward pass (block 1 included) uses the ablated activation.
    let (expected, _) = reference_forward(
        &cfg,
        &params,
        &tokens,
        batch,
        &mut |n: &str, act: &mut Act| {
            if n == name {
                let per = act.data.len() / act.shape[0];
                let mean: Vec<f64> = (0..per)
                    .map(|j| {
                        (0..act.shape[0])
                            .map(|b| act.data[b * per + j])
                            .sum::<f64>()
                            / act.shape[0] as f64
                    })
                    .collect();
                for (i, x) in act.data.iter_mut().enumerate() {
                    *x = mean[i % per];
                }
            }
        },
    );
    assert!(rel_err(&to_vec(&logits), &expected.data) < 1e-5);
}

#[test]
fn replacing_an_activation_with_a_given_tensor() {
    one_thread();
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 1, 8, 2, 32);
    let params = perturbed_params(&cfg, 71);
    let batch = 6;
    let (tokens, tensor) = tokens_tensor(&t, 71, batch);
    let model = Transformer::from_params(&cfg, &params, &Device::Cpu).unwrap();
    // A [pos, d_model] tensor broadcast over the batch, at the residual stream after attention.
    let n = t.n_ctx();
    let given: Vec<f32> = (0..n * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let replacement = Tensor::from_slice(&given, (n, 8), &Device::Cpu).unwrap();
    let name = "blocks.0.hook_resid_mid";
    let mut hooks = Hooks::none()
        .intervene(name, Intervention::Replace(replacement))
        .cache(name);
    let logits = model.forward(&tensor, &mut hooks).unwrap();
    assert_eq!(hooks.cache[name].dims(), [batch, n, 8]);
    let (expected, _) = reference_forward(
        &cfg,
        &params,
        &tokens,
        batch,
        &mut |nm: &str, act: &mut Act| {
            if nm == name {
                for (i, x) in act.data.iter_mut().enumerate() {
                    *x = f64::from(given[i % (n * 8)]);
                }
            }
        },
    );
    assert!(rel_err(&to_vec(&logits), &expected.data) < 1e-5);
}

#[test]
fn a_head_activation_can_be_ablated_in_transformer_lens_layout() {
    one_thread();
    // hook_z is [batch, pos, head, d_head]; zeroing it leaves only b_O as attention output.
    let t = task(5, Layout::Prompt);
    let cfg = model_config(&t, 1, 8, 2, 32);
    let params = perturbed_params(&cfg, 81);
    let (tokens, tensor) = tokens_tensor(&t, 81, 5);
    let model = Transformer::from_params(&cfg, &params, &Device::Cpu).unwrap();
    let name = "blocks.0.attn.hook_z";
    let mut hooks = Hooks::none()
        .intervene(name, Intervention::Zero)
        .cache("blocks.0.hook_attn_out");
    let logits = model.forward(&tensor, &mut hooks).unwrap();
    let b_o = &params
        .iter()
        .find(|p| p.name == "blocks.0.attn.b_O")
        .unwrap()
        .data;
    let attn_out = to_vec(&hooks.cache["blocks.0.hook_attn_out"]);
    assert!(attn_out
        .iter()
        .enumerate()
        .all(|(i, &x)| (x - b_o[i % 8]).abs() < 1e-6));
    let (expected, _) =
        reference_forward(&cfg, &params, &tokens, 5, &mut |nm: &str, act: &mut Act| {
            if nm == name {
                act.data.iter_mut().for_each(|x| *x = 0.0);
            }
        });
    assert!(rel_err(&to_vec(&logits), &expected.data) < 1e-5);
}
