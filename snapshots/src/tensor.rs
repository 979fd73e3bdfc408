//! The in-memory form of one weight tensor. It is plain data (no candle) so that the file
//! formats of a run can be read and written without pulling in the training stack.

/// One tensor of a state dict: f32, row-major, under its TransformerLens name
/// (e.g. `blocks.0.attn.W_Q`).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// TransformerLens parameter name.
    pub name: String,
    /// Dimensions, outermost first; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// The elements in row-major order; its length is the product of `shape`.
    pub data: Vec<f32>,
}
