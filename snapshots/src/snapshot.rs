//! The safetensors file format of snapshots and checkpoints (uncompressed).
//!
//! Encoding is done here rather than with `safetensors::serialize`, because that function
//! writes the `__metadata__` map from a `HashMap` (key order changes from call to call) and
//! reorders tensors by name: a run must produce byte-identical files for identical weights,
//! so that resuming rewrites the same bytes and checksums can be compared across runs.
//! Decoding uses the `safetensors` crate, which validates the header and offsets.

use std::collections::{BTreeMap, HashSet};

use safetensors::{Dtype, SafeTensors};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::{NamedTensor, RunError};

/// One decoded weight snapshot of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Optimizer steps taken before these weights (the manifest's batch).
    pub batch: u64,
    /// The state dict, sorted by name.
    pub tensors: Vec<NamedTensor>,
    /// The string metadata stored in the safetensors header.
    pub metadata: BTreeMap<String, String>,
}

/// Encode `tensors` as plain (uncompressed) safetensors bytes, dtype F32.
///
/// Tensors are laid out in the given order, `metadata` goes into the header's `__metadata__`
/// (omitted when empty). The result is deterministic: the same input gives the same bytes.
/// Fails with [`RunError::InvalidInput`] if a name is empty, repeated or `__metadata__`, or if a
/// tensor's data length does not match its shape.
pub fn encode_tensors(
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, RunError> {
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in tensors {
        let invalid = |reason: String| RunError::InvalidInput {
            what: format!("tensor `{}`", t.name),
            reason,
        };
        if t.name.is_empty() || t.name == "__metadata__" {
            return Err(invalid("the name is empty or reserved".into()));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(invalid("the name occurs twice".into()));
        }
        let expected = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if expected != Some(t.data.len()) {
            return Err(invalid(format!(
                "shape {:?} does not match {} elements",
                t.shape,
                t.data.len()
            )));
        }
        let end = offset + 4 * t.data.len();
        entries.push(HeaderEntry {
            name: &t.name,
            info: TensorInfo {
                dtype: "F32",
                shape: &t.shape,
                data_offsets: [offset, end],
            },
        });
        offset = end;
    }

    let header = Header { metadata, entries };
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| RunError::InvalidInput {
        what: "safetensors header".into(),
        reason: e.to_string(),
    })?;
    // The data must start 8-byte aligned, as the safetensors crate itself pads.
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');

    let mut bytes = Vec::with_capacity(8 + header_bytes.len() + offset);
    bytes.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header_bytes);
    for t in tensors {
        // Into a zeroed stretch, in a loop the compiler vectorises: pushing four bytes at a
        // time took 3.5 ms for a d_model 512 snapshot (12.7 MB), this 1.5 ms.
        let start = bytes.len();
        bytes.resize(start + 4 * t.data.len(), 0);
        for (out, x) in bytes[start..].chunks_exact_mut(4).zip(&t.data) {
            out.copy_from_slice(&x.to_le_bytes());
        }
    }
    Ok(bytes)
}

/// Decode safetensors bytes written by [`encode_tensors`] (or any F32-only safetensors file).
///
/// Returns the tensors **sorted by name** (not in file order) and the header metadata.
/// Fails with [`RunError::Decode`] if the bytes are not valid safetensors or hold a
/// tensor that is not F32.
pub fn decode_tensors(
    bytes: &[u8],
) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>), RunError> {
    let bad = |reason: String| RunError::Decode {
        what: "safetensors data",
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();

    let mut tensors = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` has dtype {:?}; only F32 is supported",
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

/// The JSON header: `__metadata__` first, then the tensors in layout order.
struct Header<'a> {
    metadata: &'a BTreeMap<String, String>,
    entries: Vec<HeaderEntry<'a>>,
}

/// One tensor's header entry.
struct HeaderEntry<'a> {
    name: &'a str,
    info: TensorInfo<'a>,
}

/// The safetensors description of one tensor (field order as in the safetensors crate).
#[derive(Serialize)]
struct TensorInfo<'a> {
    dtype: &'static str,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

impl Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.metadata.is_empty() {
            map.serialize_entry("__metadata__", self.metadata)?;
        }
        for e in &self.entries {
            map.serialize_entry(e.name, &e.info)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    #[test]
    fn round_trip_sorts_by_name_and_keeps_metadata() {
        let (tensors, metadata) = sample();
        let bytes = encode_tensors(&tensors, &metadata).unwrap();
        let (back, meta_back) = decode_tensors(&bytes).unwrap();
        let mut expected = tensors.clone();
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, expected);
        assert_eq!(meta_back, metadata);
        // Bit-exact, including the sign of zero.
        assert_eq!(back[2].data[4].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn encoding_is_deterministic_and_in_given_order() {
        let (tensors, metadata) = sample();
        let a = encode_tensors(&tensors, &metadata).unwrap();
        let b = encode_tensors(&tensors, &metadata.clone()).unwrap();
        assert_eq!(a, b);
        let header_len = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let header = std::str::from_utf8(&a[8..8 + header_len]).unwrap();
        let pos = |s: &str| header.find(s).unwrap();
        assert!(pos("__metadata__") < pos("unembed.W_U"));
        assert!(pos("unembed.W_U") < pos("embed.W_E"));
        assert!(pos("embed.W_E") < pos("blocks.0.attn.b_O"));
        // The data of the first tensor starts right after the header.
        assert_eq!(
            &a[8 + header_len..8 + header_len + 4],
            &1.0f32.to_le_bytes()
        );
    }

    #[test]
    fn empty_metadata_and_no_tensors_round_trip() {
        let bytes = encode_tensors(&[], &BTreeMap::new()).unwrap();
        let (t, m) = decode_tensors(&bytes).unwrap();
        assert!(t.is_empty() && m.is_empty());
    }

    #[test]
    fn bad_input_is_refused() {
        let (mut tensors, metadata) = sample();
        tensors[0].shape = vec![4, 2];
        let err = encode_tensors(&tensors, &metadata).unwrap_err();
        assert!(err.to_string().contains("unembed.W_U"), "{err}");

        let (mut tensors, metadata) = sample();
        tensors[1].name = "unembed.W_U".into();
        assert!(matches!(
            encode_tensors(&tensors, &metadata),
            Err(RunError::InvalidInput { .. })
        ));
    }

    #[test]
    fn garbage_and_truncation_are_decode_errors() {
        let (tensors, metadata) = sample();
        let bytes = encode_tensors(&tensors, &metadata).unwrap();
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..5],
            b"not safetensors at all",
        ] {
            assert!(matches!(decode_tensors(bad), Err(RunError::Decode { .. })));
        }
    }
}
