//! A background thread that writes snapshots, checkpoints and the training log, so that
//! compression and disk I/O overlap training instead of pausing it.
//!
//! Jobs are written in the order they were sent; each file is written atomically and the
//! manifest after them, so a run killed at any moment is consistent on disk. The training loop
//! sends the log's new rows before the snapshot or checkpoint of the same batch, so the log on
//! disk always reaches the newest batch the manifest lists, which readers check and `--resume`
//! relies on.
//!
//! The log is one Parquet file, rewritten whole. The writer keeps the log and gathers jobs for
//! [`GATHER`] (or until they hold [`GATHER_BYTES`] of tensors): their rows are added and the
//! log written once, before their snapshots and checkpoints, and the manifest once, after
//! them ([`RunDir::write_files`]). At d_model 16 a step is 0.1 ms,
//! so snapshots every 50 batches come every 5 ms, and encoding a log of thousands of rows takes
//! milliseconds of a core that training needs; gathered, the log is written a few times a
//! second whatever the snapshot rate. A run killed meanwhile loses at most those files (it
//! resumes or is analysed with what was written, as always), and the main thread never
//! copies the log.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use digitlab_snapshots::{LogRow, NewFile, RunDir, TrainLog};

/// Something to put in the run directory.
pub enum WriteJob {
    /// Rows to add to the log, which is written before any later file.
    LogRows(Vec<LogRow>),
    File(NewFile),
}

/// The handle of the writer thread.
pub struct RunWriter {
    sender: Option<SyncSender<WriteJob>>,
    handle: Option<JoinHandle<Result<RunDir>>>,
}

/// How many jobs may wait at least: enough to absorb a checkpoint.
const QUEUE: usize = 4;

/// Bytes of tensors that may wait beyond [`QUEUE`] jobs. A full queue stops training until
/// the writer takes a job, and the writer takes none while it writes a gathered batch of files
/// (tens of milliseconds with their flushes): at d_model 16, with snapshots every 5 ms, four
/// jobs stopped `train` about a tenth of the time. Counted in `resources::MemoryNeed`.
pub const QUEUE_BYTES: usize = 16 << 20;

/// How long the writer gathers jobs before writing them.
const GATHER: Duration = Duration::from_millis(200);

/// Bytes of gathered tensors at which the writer writes them without waiting longer.
const GATHER_BYTES: usize = 64 << 20;

impl RunWriter {
    /// Starts the thread with the log so far. `checkpoint_bytes`, the size of a checkpoint's
    /// tensors, sets how many jobs may wait (see [`QUEUE_BYTES`]).
    pub fn spawn(run: RunDir, log: TrainLog, checkpoint_bytes: usize) -> RunWriter {
        let queue = QUEUE.max(QUEUE_BYTES / checkpoint_bytes.max(1));
        let (sender, receiver) = sync_channel::<WriteJob>(queue);
        let handle = std::thread::spawn(move || write_jobs(run, log, &receiver));
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

/// The writer thread: jobs gathered as the module comment says, until the sender is dropped;
/// the log is written last if rows came after the last file.
fn write_jobs(mut run: RunDir, mut log: TrainLog, receiver: &Receiver<WriteJob>) -> Result<RunDir> {
    // The log as given (empty for a new run, cut at the checkpoint on resume) goes to disk
    // before the first file.
    let mut unwritten_rows = true;
    while let Ok(first) = receiver.recv() {
        let deadline = Instant::now() + GATHER;
        let (mut files, mut bytes) = (Vec::new(), 0);
        let mut next = Ok(first);
        while let Ok(job) = next {
            match job {
                WriteJob::LogRows(rows) => {
                    unwritten_rows |= !rows.is_empty();
                    log.rows.extend(rows);
                }
                WriteJob::File(file) => {
                    bytes += file.tensor_bytes();
                    files.push(file);
                }
            }
            if bytes >= GATHER_BYTES {
                break;
            }
            next = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        if files.is_empty() {
            continue;
        }
        if unwritten_rows {
            run.write_train_log(&log)?;
            unwritten_rows = false;
        }
        run.write_files(files)?;
    }
    if unwritten_rows {
        run.write_train_log(&log)?;
    }
    Ok(run)
}
