//! Hooks: cache or replace an activation by its TransformerLens hook name.
//!
//! The general forward pass calls [`Hooks::apply`] at every hook point
//! (`hook_embed`, `blocks.0.attn.hook_pattern`, `blocks.0.mlp.hook_post`, …, listed by
//! [`HookPoint`]), so analyses can read activations and ablate them without a second copy of
//! the model code. As in TransformerLens, a name that is not a hook point of the model is an
//! error (the forward pass refuses it), not a hook that never fires.

use std::collections::{HashMap, HashSet};

use candle_core::{Result, Tensor};

use super::HookPoint;

/// What to put in place of an activation.
#[derive(Clone, Debug)]
pub enum Intervention {
    /// All zeros (zero ablation).
    Zero,
    /// The mean over the batch, the same for every example (mean ablation).
    Mean,
    /// A given tensor, broadcast to the activation's shape.
    Replace(Tensor),
}

/// The hooks of one forward pass: activations to cache and activations to replace.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    cache_names: HashSet<String>,
    cache_all: bool,
    interventions: HashMap<String, Intervention>,
    /// Cached activations by hook name, filled by the forward pass.
    pub cache: HashMap<String, Tensor>,
}

impl Hooks {
    /// No caching, no interventions: the plain forward pass.
    pub fn none() -> Hooks {
        Hooks::default()
    }

    /// Caches the activation at `name` (after any intervention there): a [`HookPoint`] or its
    /// name.
    pub fn cache(mut self, name: impl Into<String>) -> Hooks {
        self.cache_names.insert(name.into());
        self
    }

    /// Caches every hook point, as TransformerLens's `run_with_cache`.
    pub fn cache_everything(mut self) -> Hooks {
        self.cache_all = true;
        self
    }

    /// Replaces the activation at `name` (a [`HookPoint`] or its name).
    pub fn intervene(mut self, name: impl Into<String>, intervention: Intervention) -> Hooks {
        self.interventions.insert(name.into(), intervention);
        self
    }

    /// The activation cached at `hook`, if it was asked for and the forward pass has run.
    pub fn cached(&self, hook: HookPoint) -> Option<&Tensor> {
        self.cache.get(&hook.name())
    }

    /// An error naming the first hook asked for that is not among `valid` (the hook points of
    /// the model about to run).
    pub fn check(&self, valid: &HashSet<String>) -> Result<()> {
        let asked = self.cache_names.iter().chain(self.interventions.keys());
        match asked.into_iter().find(|name| !valid.contains(*name)) {
            None => Ok(()),
            Some(name) => {
                let mut names: Vec<&str> = valid.iter().map(String::as_str).collect();
                names.sort_unstable();
                candle_core::bail!(
                    "`{name}` is not a hook point of this model; its hook points are {}",
                    names.join(", ")
                )
            }
        }
    }

    /// Applies the intervention registered at `name`, caches the result if asked, returns it.
    pub fn apply(&mut self, name: &str, x: Tensor) -> Result<Tensor> {
        let x = match self.interventions.get(name) {
            None => x,
            Some(Intervention::Zero) => x.zeros_like()?,
            Some(Intervention::Mean) => x.mean_keepdim(0)?.broadcast_as(x.shape())?.contiguous()?,
            Some(Intervention::Replace(t)) => t.broadcast_as(x.shape())?.contiguous()?,
        };
        if self.cache_all || self.cache_names.contains(name) {
            self.cache.insert(name.to_string(), x.clone());
        }
        Ok(x)
    }
}
