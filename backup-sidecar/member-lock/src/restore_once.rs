//! `restore-once DATA_DIR COMMAND [ARGS...]`: restores a member's data directory once, without a
//! shell (upstream etcd images have none).
//!
//! When `DATA_DIR/member` exists the data was restored before (the pod started again) and nothing
//! runs. Otherwise anything left at `DATA_DIR` or `DATA_DIR.partial` is removed, COMMAND runs with
//! `--data-dir DATA_DIR.partial` appended (`etcdutl snapshot restore ...`), and only when it
//! succeeds is the directory renamed to `DATA_DIR`. A restore killed halfway therefore leaves no
//! `member` directory that a later start would take for a finished one: it starts over.

use std::{
    ffi::OsString,
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(data), Some(command)) = (args.next(), args.next()) else {
        eprintln!("usage: restore-once DATA_DIR COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    match restore_once(Path::new(&data), command, args.collect()) {
        Ok(Outcome::AlreadyRestored) => {
            println!("data already restored");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Restored) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("restore-once: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    AlreadyRestored,
    Restored,
}

fn partial_of(data: &Path) -> PathBuf {
    let mut p = data.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

fn remove_if_present(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(format!("removing {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

fn restore_once(data: &Path, command: OsString, args: Vec<OsString>) -> Result<Outcome, String> {
    // Only a member directory known to be absent is restored over: any other answer (EIO, EACCES)
    // fails rather than removing what may be a live member's data.
    let member = data.join("member");
    match std::fs::symlink_metadata(&member) {
        Ok(m) if m.is_dir() => return Ok(Outcome::AlreadyRestored),
        Ok(_) => return Err(format!("{} exists and is not a directory", member.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("checking {}: {e}", member.display())),
    }
    let partial = partial_of(data);
    remove_if_present(data)?;
    remove_if_present(&partial)?;
    let shown = command.to_string_lossy().into_owned();
    let status = Command::new(&command)
        .args(&args)
        .arg("--data-dir")
        .arg(&partial)
        .status()
        .map_err(|e| format!("running {shown}: {e}"))?;
    if !status.success() {
        return Err(format!("{shown} failed ({status})"));
    }
    std::fs::rename(&partial, data)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), data.display()))?;
    // The rename is durable only once the parent directory is synced.
    if let Some(parent) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", parent.display()))?;
    }
    Ok(Outcome::Restored)
}
