//! Optimizer checkpoints: the weights plus AdamW's moment estimates, everything needed to
//! continue a run bit for bit. Stored as one safetensors file whose tensor names carry a
//! prefix (`param.`, `adam_m.`, `adam_v.`) and whose metadata says `kind = checkpoint`.

use std::collections::BTreeMap;

use crate::NamedTensor;

/// Name prefix of the weights in a checkpoint file.
const PARAM: &str = "param.";
/// Name prefix of AdamW's first moments in a checkpoint file.
const ADAM_M: &str = "adam_m.";
/// Name prefix of AdamW's second moments in a checkpoint file.
const ADAM_V: &str = "adam_v.";
/// Value of the `kind` metadata key of a checkpoint file.
const KIND: &str = "checkpoint";

/// Optimizer checkpoint: everything needed to continue training bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub batch: u64,
    /// All parameters, TransformerLens names.
    pub params: Vec<NamedTensor>,
    /// AdamW first-moment estimates, named like the parameters they belong to.
    pub adam_m: Vec<NamedTensor>,
    /// AdamW second-moment estimates, named like the parameters they belong to.
    pub adam_v: Vec<NamedTensor>,
}

impl Checkpoint {
    /// The tensors (names prefixed, data moved, not copied) and metadata of the checkpoint file.
    pub(crate) fn into_file_tensors(self) -> (Vec<NamedTensor>, BTreeMap<String, String>) {
        let mut tensors = Vec::new();
        for (prefix, list) in [
            (PARAM, self.params),
            (ADAM_M, self.adam_m),
            (ADAM_V, self.adam_v),
        ] {
            tensors.extend(list.into_iter().map(|t| NamedTensor {
                name: format!("{prefix}{}", t.name),
                ..t
            }));
        }
        let metadata = BTreeMap::from([
            ("batch".to_string(), self.batch.to_string()),
            ("kind".to_string(), KIND.to_string()),
        ]);
        (tensors, metadata)
    }

    /// Inverse of [`Checkpoint::into_file_tensors`]. `tensors` come sorted by name from
    /// [`crate::decode_tensors`], so each list does too.
    /// The error is a plain description; the caller knows which file it was and wraps it.
    pub(crate) fn from_file_tensors(
        tensors: Vec<NamedTensor>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Checkpoint, String> {
        if metadata.get("kind").map(String::as_str) != Some(KIND) {
            return Err(format!(
                "metadata `kind` is {:?}, expected \"{KIND}\"",
                metadata.get("kind")
            ));
        }
        let batch = metadata
            .get("batch")
            .and_then(|b| b.parse::<u64>().ok())
            .ok_or_else(|| format!("metadata `batch` is {:?}", metadata.get("batch")))?;
        let mut checkpoint = Checkpoint {
            batch,
            params: Vec::new(),
            adam_m: Vec::new(),
            adam_v: Vec::new(),
        };
        for mut t in tensors {
            let (list, prefix) = if t.name.starts_with(PARAM) {
                (&mut checkpoint.params, PARAM)
            } else if t.name.starts_with(ADAM_M) {
                (&mut checkpoint.adam_m, ADAM_M)
            } else if t.name.starts_with(ADAM_V) {
                (&mut checkpoint.adam_v, ADAM_V)
            } else {
                return Err(format!(
                    "tensor `{}` has none of the prefixes {PARAM} {ADAM_M} {ADAM_V}",
                    t.name
                ));
            };
            t.name.replace_range(..prefix.len(), "");
            list.push(t);
        }
        Ok(checkpoint)
    }
}
