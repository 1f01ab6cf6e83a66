//! `member-lock LOCKFILE COMMAND [ARGS...]`: waits for an exclusive `flock` on LOCKFILE, then
//! replaces itself with COMMAND, which inherits the lock and holds it until it exits.
//!
//! A self-hosted member can run in two pods on its node: the API pod the operator made, and the
//! static-pod checkpoint the kubelet starts without an API server. Both share the member's host
//! directory, where the lock lives, so exactly one runs etcd and the other waits, instead of both
//! fighting over the data and the ports.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rustix::{
    fs::{FlockOperation, flock},
    io::{Errno, FdFlags, fcntl_setfd},
};

const POLL: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(lock_path), Some(command)) = (args.next(), args.next()) else {
        eprintln!("usage: member-lock LOCKFILE COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    match run(&lock_path, command, args.collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("member-lock: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Returns only when stopped while waiting (the pod is being deleted) or on failure: once locked,
/// this process becomes the command.
fn run(lock_path: &OsString, command: OsString, args: Vec<OsString>) -> Result<(), String> {
    let shown = lock_path.to_string_lossy();
    // While waiting this process is the container's PID 1, which ignores signals it has no handler
    // for: without these, deleting a waiting pod would take its whole grace period.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("registering a handler for signal {signal}: {e}"))?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock_path)
        .map_err(|e| format!("opening {shown}: {e}"))?;
    let mut said_waiting = false;
    loop {
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(Errno::WOULDBLOCK | Errno::INTR) => {
                if !said_waiting {
                    eprintln!(
                        "member-lock: another copy of this member holds {shown}; waiting for it to stop"
                    );
                    said_waiting = true;
                }
                if stop.load(Ordering::Relaxed) {
                    eprintln!("member-lock: stopped while waiting for {shown}");
                    return Ok(());
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(format!("locking {shown}: {e}")),
        }
    }
    keep_across_exec(&lock).map_err(|e| format!("keeping {shown} open across exec: {e}"))?;
    eprintln!(
        "member-lock: holding {shown}; starting {}",
        command.to_string_lossy()
    );
    // Only returns on failure; on success the lock passes to the command with the descriptor.
    let error = Command::new(&command).args(args).exec();
    Err(format!("starting {}: {error}", command.to_string_lossy()))
}

/// Rust opens files close-on-exec; the lock must outlive the exec, so the flag is cleared.
fn keep_across_exec(lock: &File) -> rustix::io::Result<()> {
    fcntl_setfd(lock, FdFlags::empty())
}
