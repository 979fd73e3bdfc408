//! The model's shape (docs/metrics.md, 'The model'): TransformerLens parameter names, shapes, which ones are
//! trained, and Nanda-style initialisation.

use std::ops::Range;

use anyhow::{bail, Result};
use digitlab_snapshots::NamedTensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Hyperparameters that fix the model's parameter shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_mlp: usize,
    pub d_vocab: usize,
    pub d_vocab_out: usize,
    pub n_ctx: usize,
}

/// One parameter tensor: its TransformerLens name, shape, whether the optimizer trains it, and
/// the standard deviation of its initial values (0 for the zero biases).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub trained: bool,
    pub init_std: f64,
}

/// A parameter group: a whole trained tensor, or one head of an attention weight matrix
/// (`blocks.0.attn.W_Q[2]`, the `[head, …]` tensors). What `--perturb` scales and what spike
/// attribution credits; [`ModelConfig::param_groups`] partitions the trained parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGroup {
    /// The tensor's name, with `[head]` for one head.
    pub name: String,
    /// Index of the tensor in the state dict (`param_specs` order).
    pub param: usize,
    /// Index of the tensor among the trained ones (gradient and AdamW moment order).
    pub trained: usize,
    /// The group's elements in the flattened tensor.
    pub range: Range<usize>,
}

impl ParamSpec {
    /// Whether the tensor's first axis is the head (`W_Q`, `W_K`, `W_V`, `W_O`), so that it
    /// splits into one group per head.
    pub fn is_per_head(&self) -> bool {
        self.name.contains(".attn.W_")
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl ModelConfig {
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks the shape hyperparameters; the message says what to change.
    pub fn validate(&self) -> Result<()> {
        if self.n_layers == 0 {
            bail!("--n-layers must be at least 1");
        }
        if self.d_model == 0 || self.n_heads == 0 || self.d_mlp == 0 {
            bail!("--d-model, --n-heads and --d-mlp must be at least 1");
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            bail!(
                "--d-model {} is not divisible by --n-heads {}: each head needs d_model / n_heads \
                 dimensions",
                self.d_model,
                self.n_heads
            );
        }
        Ok(())
    }

    /// Every parameter in state-dict order. Attention and unembedding biases are zero and not
    /// trained (the reference model has none) but are listed so the state dict is complete.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, h, dh, m) = (self.d_model, self.n_heads, self.d_head(), self.d_mlp);
        let weight_std = 1.0 / (d as f64).sqrt();
        let spec = |name: String, shape: Vec<usize>, trained: bool, init_std: f64| ParamSpec {
            name,
            shape,
            trained,
            init_std,
        };
        let mut specs = vec![
            spec("embed.W_E".into(), vec![self.d_vocab, d], true, weight_std),
            spec(
                "pos_embed.W_pos".into(),
                vec![self.n_ctx, d],
                true,
                weight_std,
            ),
        ];
        for l in 0..self.n_layers {
            let p = |s: &str| format!("blocks.{l}.{s}");
            specs.extend([
                spec(p("attn.W_Q"), vec![h, d, dh], true, weight_std),
                spec(p("attn.W_K"), vec![h, d, dh], true, weight_std),
                spec(p("attn.W_V"), vec![h, d, dh], true, weight_std),
                spec(p("attn.W_O"), vec![h, dh, d], true, weight_std),
                spec(p("attn.b_Q"), vec![h, dh], false, 0.0),
                spec(p("attn.b_K"), vec![h, dh], false, 0.0),
                spec(p("attn.b_V"), vec![h, dh], false, 0.0),
                spec(p("attn.b_O"), vec![d], false, 0.0),
                spec(p("mlp.W_in"), vec![d, m], true, weight_std),
                spec(p("mlp.b_in"), vec![m], true, 0.0),
                spec(p("mlp.W_out"), vec![m, d], true, weight_std),
                spec(p("mlp.b_out"), vec![d], true, 0.0),
            ]);
        }
        specs.push(spec(
            "unembed.W_U".into(),
            vec![d, self.d_vocab_out],
            true,
            1.0 / (self.d_vocab_out as f64).sqrt(),
        ));
        specs.push(spec(
            "unembed.b_U".into(),
            vec![self.d_vocab_out],
            false,
            0.0,
        ));
        specs
    }

    /// The groups that partition the trained parameters: attention weight matrices per head,
    /// every other trained tensor whole, in state-dict order.
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        let specs = self.param_specs();
        let trained = specs.iter().enumerate().filter(|(_, s)| s.trained);
        let mut groups = Vec::new();
        for (trained, (param, spec)) in trained.enumerate() {
            if spec.is_per_head() {
                groups.extend(
                    (0..self.n_heads).map(|head| self.head_group(spec, param, trained, head)),
                );
            } else {
                groups.push(ParamGroup {
                    name: spec.name.clone(),
                    param,
                    trained,
                    range: 0..spec.len(),
                });
            }
        }
        groups
    }

    /// The group called `name`: a trained tensor's name, whole, or an attention weight matrix
    /// with a head, `blocks.0.attn.W_Q[2]`. The error says what is wrong with the name.
    pub fn param_group(&self, name: &str) -> Result<ParamGroup> {
        let (tensor, head) = match name.split_once('[') {
            Some((tensor, head)) => {
                let Some(head) = head.strip_suffix(']').and_then(|h| h.parse::<usize>().ok())
                else {
                    bail!("`{name}`: a head is written as a number in brackets, e.g. {tensor}[0]");
                };
                (tensor, Some(head))
            }
            None => (name, None),
        };
        let specs = self.param_specs();
        let Some(param) = specs.iter().position(|s| s.name == tensor) else {
            bail!("no parameter named {tensor}");
        };
        let spec = &specs[param];
        if !spec.trained {
            bail!("{tensor} is not trained (it stays zero), so it is not a parameter group");
        }
        let trained = specs[..param].iter().filter(|s| s.trained).count();
        match head {
            None => Ok(ParamGroup {
                name: name.to_string(),
                param,
                trained,
                range: 0..spec.len(),
            }),
            Some(_) if !spec.is_per_head() => bail!("{tensor} has no heads"),
            Some(h) if h >= self.n_heads => {
                bail!(
                    "{tensor} has no head {h} (the model has {} heads)",
                    self.n_heads
                )
            }
            Some(h) => Ok(self.head_group(spec, param, trained, h)),
        }
    }

    fn head_group(
        &self,
        spec: &ParamSpec,
        param: usize,
        trained: usize,
        head: usize,
    ) -> ParamGroup {
        let size = spec.len() / self.n_heads;
        ParamGroup {
            name: format!("{}[{head}]", spec.name),
            param,
            trained,
            range: head * size..(head + 1) * size,
        }
    }

    /// Every hook point of the model, in the order of the forward pass: the names
    /// [`crate::model::Hooks`] accepts for it.
    pub fn hook_points(&self) -> Vec<crate::model::HookPoint> {
        crate::model::HookPoint::all(self.n_layers)
    }

    /// The number of trained parameters (130 for d_model 2, 2 heads, 5-digit prompt layout).
    pub fn n_trained_params(&self) -> usize {
        self.param_specs()
            .iter()
            .filter(|s| s.trained)
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }

    /// Initial weights: N(0,1)/sqrt(d_model) for every weight matrix, N(0,1)/sqrt(d_vocab_out)
    /// for W_U, zero biases; a pure function of `seed` (ChaCha8, stream 0; batches use the
    /// others), so the same seed gives the same bytes on every machine.
    pub fn init_params(&self, seed: u64) -> Vec<NamedTensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.param_specs()
            .into_iter()
            .map(|s| {
                let len = s.shape.iter().product();
                let data = if s.init_std == 0.0 {
                    vec![0.0; len]
                } else {
                    (0..len)
                        .map(|_| {
                            let z: f64 = StandardNormal.sample(&mut rng);
                            (z * s.init_std) as f32
                        })
                        .collect()
                };
                NamedTensor {
                    name: s.name,
                    shape: s.shape,
                    data,
                }
            })
            .collect()
    }
}
