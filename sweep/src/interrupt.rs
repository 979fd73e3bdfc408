//! Ctrl-C (SIGINT) and SIGTERM (what SLURM sends at the time limit or on `scancel`): the sweep
//! stops starting points, passes the signal on to the `train` and `analyze` processes in
//! flight, records their points as interrupted, and exits; the next run resumes them with
//! `train --resume`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Whether a signal came, and the children to pass it on to.
#[derive(Default)]
struct Interrupt {
    flag: AtomicBool,
    children: Mutex<HashSet<u32>>,
}

static INTERRUPT: OnceLock<Interrupt> = OnceLock::new();

fn state() -> &'static Interrupt {
    INTERRUPT.get_or_init(Interrupt::default)
}

/// Catch SIGINT and SIGTERM from now on (instead of dying at once).
pub fn install() -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let state = state();
            state.flag.store(true, Ordering::SeqCst);
            for &pid in state.children.lock().expect("lock").iter() {
                send_interrupt(pid);
            }
        }
    });
    Ok(())
}

/// Whether the sweep was asked to stop.
pub fn interrupted() -> bool {
    state().flag.load(Ordering::SeqCst)
}

/// A child to interrupt on a signal; interrupted at once if the signal came already.
pub fn register_child(pid: u32) {
    let state = state();
    let mut children = state.children.lock().expect("lock");
    children.insert(pid);
    if state.flag.load(Ordering::SeqCst) {
        send_interrupt(pid);
    }
}

/// Called once the child has exited but before it is reaped, so its pid cannot have been
/// reused by another process when a signal is passed on.
pub fn unregister_child(pid: u32) {
    state().children.lock().expect("lock").remove(&pid);
}

fn send_interrupt(pid: u32) {
    // SAFETY: kill has no memory effects; the pid is a child not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
}
