//! Running `train` and `analyze` as child processes of a point: output appended to the point's
//! log, the claim kept by the child, and the child's death tied to the sweep's.
//!
//! Children, not threads, so that a killed point is a killed process whose run directory
//! `train --resume` continues, and so that a crash of one run cannot take the sweep down.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

use crate::interrupt;

/// How a child ended.
#[derive(Debug)]
pub struct ChildEnd {
    pub status: ExitStatus,
    /// The sweep was interrupted while the child ran.
    pub interrupted: bool,
    /// The child's last `error:` line (or last line), for the status table.
    pub message: String,
}

impl ChildEnd {
    /// The exit status as one number: the code, or 128 + the signal as a shell reports it.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

/// Run `command` to its end with stdout and stderr appended to `log` under a header line.
///
/// The child gets SIGKILL if the sweep dies (so no orphan trains on while another sweep
/// resumes its run), and keeps `claim_fd` (if any) open, so the point's claim lasts as long
/// as it runs.
pub fn run_logged(mut command: Command, log: &Path, claim_fd: Option<RawFd>) -> Result<ChildEnd> {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    writeln!(
        out,
        "== {} {:?}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        command
    )?;
    let start = out.seek(SeekFrom::End(0))?;
    command.stdout(out.try_clone()?).stderr(out.try_clone()?);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, fcntl, raise) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The sweep may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::raise(libc::SIGKILL);
            }
            if let Some(fd) = claim_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    let pid = child.id();
    interrupt::register_child(pid);
    let exited = wait_without_reaping(pid);
    interrupt::unregister_child(pid);
    exited.with_context(|| format!("cannot wait for pid {pid}"))?;
    let status = child.wait()?;
    Ok(ChildEnd {
        status,
        interrupted: interrupt::interrupted(),
        message: last_error_line(log, start).unwrap_or_default(),
    })
}

/// Block until the child exits, leaving it a zombie so its pid stays taken (see
/// [`interrupt::unregister_child`]).
fn wait_without_reaping(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: waitid writes only into `info`, a plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The last line starting with `error:` written to `log` after `start`, else the last
/// non-empty one.
fn last_error_line(log: &Path, start: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or(lines.last())
        .map(|l| l.to_string())
}
