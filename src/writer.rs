//! A background thread that writes snapshots, checkpoints and the training log, so that
//! compression and disk I/O overlap training instead of pausing it.
//!
//! Jobs are written in the order they were sent; each file is written atomically and the
//! manifest after it, so a run killed at any moment is consistent on disk. The log is sent
//! before the checkpoint of the same batch, so a checkpoint in the manifest always has the log
//! rows before it on disk, which `--resume` relies on.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use digitlab_snapshots::{Checkpoint, NamedTensor, RunDir, TrainLog};

/// Something to put in the run directory.
pub enum WriteJob {
    Snapshot {
        batch: u64,
        tensors: Vec<NamedTensor>,
    },
    Checkpoint(Checkpoint),
    Log(TrainLog),
}

/// The handle of the writer thread.
pub struct RunWriter {
    sender: Option<SyncSender<WriteJob>>,
    handle: Option<JoinHandle<Result<RunDir>>>,
}

/// How many jobs may wait: enough to absorb a checkpoint, small enough to bound memory.
const QUEUE: usize = 4;

impl RunWriter {
    /// Starts the thread; `metadata` goes into every snapshot (the batch is added per file).
    pub fn spawn(mut run: RunDir, metadata: BTreeMap<String, String>) -> RunWriter {
        let (sender, receiver) = sync_channel::<WriteJob>(QUEUE);
        let handle = std::thread::spawn(move || -> Result<RunDir> {
            for job in receiver {
                match job {
                    WriteJob::Snapshot { batch, tensors } => {
                        let mut meta = metadata.clone();
                        meta.insert("batch".into(), batch.to_string());
                        run.write_snapshot(batch, &tensors, &meta)?;
                    }
                    WriteJob::Checkpoint(checkpoint) => {
                        run.write_checkpoint(&checkpoint)?;
                    }
                    WriteJob::Log(log) => run.write_train_log(&log)?,
                }
            }
            Ok(run)
        });
        RunWriter {
            sender: Some(sender),
            handle: Some(handle),
        }
    }

    /// Queues a job; fails with the writer's own error if it has stopped.
    pub fn send(&mut self, job: WriteJob) -> Result<()> {
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| anyhow!("writer already finished"))?;
        if sender.send(job).is_err() {
            // The thread stopped: report why.
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| anyhow!("the writer thread stopped")));
        }
        Ok(())
    }

    /// Waits until everything queued is on disk and gives the run directory back.
    pub fn finish(mut self) -> Result<RunDir> {
        self.join()
    }

    fn join(&mut self) -> Result<RunDir> {
        self.sender = None;
        let handle = self
            .handle
            .take()
            .ok_or_else(|| anyhow!("writer already finished"))?;
        handle
            .join()
            .map_err(|_| anyhow!("the writer thread panicked"))?
    }
}
