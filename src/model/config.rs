//! The model's shape (spec section 2): TransformerLens parameter names, shapes, which ones are
//! trained, and Nanda-style initialisation.

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
        if self.d_vocab_out < 10 {
            bail!("--d-vocab-out must be at least 10 (the ten digits)");
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
