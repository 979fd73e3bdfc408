//! Training batches made ahead, in order, on a thread of their own.
//!
//! A batch is a pure function of the task, seed, batch size and index, so making it early
//! changes no result. Drawing and tokenising a batch of 128 five-digit sums took a tenth of a
//! d_model 16 step on the training thread; here the training thread only takes batches that
//! are ready. They travel in chunks of several batches, so the maker, which runs ahead until
//! the channel is full, is woken once per chunk rather than once per step (a wake is a
//! system call on the training thread).

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::config::TrainConfig;
use crate::task::{training_batch, Batch, Pair, TaskConfig};

/// Batches per chunk at most, and the bytes a chunk may hold: a chunk of full-batch modular
/// addition (thousands of rows) is one batch.
const CHUNK_BATCHES: usize = 8;
const CHUNK_BYTES: usize = 256 << 10;

/// The batches of one run, made ahead from some index on. Not part of the training state:
/// clones start without a maker and comparisons ignore it.
#[derive(Default)]
pub struct BatchesAhead(Option<Maker>);

/// A thread making the batches of one task, seed and batch size from `next` on.
struct Maker {
    task: TaskConfig,
    seed: u64,
    batch_size: usize,
    /// The index of the next batch [`BatchesAhead::take`] hands out.
    next: u64,
    ready: VecDeque<Batch>,
    chunks: Option<Receiver<Vec<Batch>>>,
    thread: Option<JoinHandle<()>>,
}

impl BatchesAhead {
    /// Batch `index` of `cfg`'s run. Taking the batches of a run in order finds each made;
    /// any other index starts the maker again from there.
    pub fn take(&mut self, cfg: &TrainConfig, index: u64) -> Batch {
        if !matches!(&self.0, Some(maker) if maker.serves(cfg, index)) {
            // The old maker (if any) is dropped first, so that two never run at once.
            self.0 = None;
            self.0 = Some(Maker::start(cfg, index));
        }
        let maker = self.0.as_mut().expect("started just above");
        maker.next += 1;
        if maker.ready.is_empty() {
            let chunk = maker.chunks.as_ref().and_then(|chunks| chunks.recv().ok());
            maker.ready.extend(chunk.into_iter().flatten());
        }
        // A maker that ended (it cannot, short of a panic on its thread) is replaced by the
        // training thread making the batch itself.
        maker
            .ready
            .pop_front()
            .unwrap_or_else(|| training_batch(&cfg.task, cfg.seed, index, cfg.batch_size))
    }
}

/// Bytes of one batch: tokens, targets and operands.
fn batch_bytes(task: &TaskConfig, batch_size: usize) -> usize {
    let per_example = (task.n_ctx() + task.targets.len()) * 4 + std::mem::size_of::<Pair>();
    batch_size.saturating_mul(per_example)
}

/// Batches per chunk: [`CHUNK_BATCHES`], fewer where they would pass [`CHUNK_BYTES`].
fn per_chunk(task: &TaskConfig, batch_size: usize) -> usize {
    (CHUNK_BYTES / batch_bytes(task, batch_size).max(1)).clamp(1, CHUNK_BATCHES)
}

/// Bytes the batches made ahead hold at most: a chunk waiting in the channel, one being made
/// and one being taken (counted in `resources::MemoryNeed`).
pub fn bytes_ahead(cfg: &TrainConfig) -> f64 {
    let chunk = per_chunk(&cfg.task, cfg.batch_size) * batch_bytes(&cfg.task, cfg.batch_size);
    3.0 * chunk as f64
}

impl Maker {
    fn start(cfg: &TrainConfig, first: u64) -> Maker {
        let (task, seed, batch_size) = (cfg.task.clone(), cfg.seed, cfg.batch_size);
        let per_chunk = per_chunk(&task, batch_size);
        // One chunk waits in the channel while the next is made.
        let (sender, chunks) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("digitlab-batches".into())
            .spawn(move || {
                for start in (first..).step_by(per_chunk) {
                    let chunk = (start..start + per_chunk as u64)
                        .map(|index| training_batch(&task, seed, index, batch_size))
                        .collect();
                    if sender.send(chunk).is_err() {
                        return; // The run stopped taking batches.
                    }
                }
            });
        // Without a thread (the system refused one) every batch is made when taken.
        let (chunks, thread) = match thread {
            Ok(thread) => (Some(chunks), Some(thread)),
            Err(_) => (None, None),
        };
        Maker {
            task: cfg.task.clone(),
            seed,
            batch_size,
            next: first,
            ready: VecDeque::new(),
            chunks,
            thread,
        }
    }

    /// Whether batch `index` of `cfg`'s run is the next this maker hands out.
    fn serves(&self, cfg: &TrainConfig, index: u64) -> bool {
        self.next == index
            && self.seed == cfg.seed
            && self.batch_size == cfg.batch_size
            && self.task == cfg.task
    }
}

impl Drop for Maker {
    /// Closes the channel, which ends the thread at its next chunk, and waits for it.
    fn drop(&mut self) {
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Clone for BatchesAhead {
    fn clone(&self) -> BatchesAhead {
        BatchesAhead(None)
    }
}

impl PartialEq for BatchesAhead {
    fn eq(&self, _: &BatchesAhead) -> bool {
        true
    }
}

impl std::fmt::Debug for BatchesAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("BatchesAhead")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In order, out of order, across a change of seed and across chunk boundaries, every
    /// batch taken is the one made directly.
    #[test]
    fn every_batch_taken_is_the_one_made_directly() {
        let task = TaskConfig {
            n_digits: 5,
            layout: crate::task::Layout::Prompt,
            targets: vec![0, 3],
            modp: None,
        };
        let mut cfg = TrainConfig::default_for(task, 16, 1);
        cfg.batch_size = 64;
        let mut ahead = BatchesAhead::default();
        let direct = |cfg: &TrainConfig, i| training_batch(&cfg.task, cfg.seed, i, cfg.batch_size);
        for i in (0..20).chain(5..12).chain([100, 3]) {
            assert_eq!(ahead.take(&cfg, i), direct(&cfg, i), "batch {i}");
        }
        cfg.seed += 1;
        for i in 3..6 {
            assert_eq!(
                ahead.take(&cfg, i),
                direct(&cfg, i),
                "seed {}, batch {i}",
                cfg.seed
            );
        }
    }
}
