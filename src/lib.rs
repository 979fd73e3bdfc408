//! digitlab: train tiny transformers on n-digit addition and record how they learn.
//!
//! The library holds the task (tokens, batches, labels), the model (TransformerLens names,
//! a general forward pass with hooks and a fast training path) and the training loop; the
//! `train` binary is a thin command line over it.

pub mod allocator;
mod batches;
pub mod config;
mod exp;
pub mod fused;
pub mod log_softmax;
pub mod model;
pub mod modp;
pub mod optim;
pub mod output_stats;
pub mod resources;
pub mod step;
pub mod task;
pub mod threads;
pub mod train;
mod writer;
