//! The real `restore-once` binary with a stand-in restore command (a shell script that writes what
//! `etcdutl snapshot restore` would: a `member` directory under the `--data-dir` it is given).

use std::{fs, path::Path, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_restore-once");

/// Runs restore-once on `data` with a command that appends a line to `log`, then writes
/// `<data-dir>/member/db` and exits with `exit`.
fn run(data: &Path, log: &Path, exit: u8) -> std::process::Output {
    let script = format!(
        "echo \"$@\" >> {log}; for last; do :; done; mkdir -p \"$last/member\"; echo db > \"$last/member/db\"; exit {exit}",
        log = log.display()
    );
    Command::new(BIN)
        .arg(data)
        .args([
            "/bin/sh",
            "-c",
            &script,
            "restore",
            "snapshot",
            "restore",
            "/snapshot/snapshot.db",
        ])
        .output()
        .expect("running restore-once")
}

/// A scratch directory, removed when dropped.
struct Dir(std::path::PathBuf);

fn dir() -> Dir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("restore-once-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).expect("creating the test dir");
    Dir(p)
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn restores_into_a_partial_directory_then_renames_it_and_never_twice() {
    let d = dir();
    let (data, log) = (d.0.join("data"), d.0.join("log"));
    let out = run(&data, &log, 0);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(data.join("member/db")).unwrap(), "db\n");
    assert!(!d.0.join("data.partial").exists());
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls
            .trim_end()
            .ends_with(&format!("--data-dir {}.partial", data.display())),
        "{calls}"
    );

    // The pod starts again: the restored data is kept and the command does not run.
    fs::write(data.join("member/db"), "written since").unwrap();
    let out = run(&data, &log, 0);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("data already restored"));
    assert_eq!(
        fs::read_to_string(data.join("member/db")).unwrap(),
        "written since"
    );
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
}

#[test]
fn a_failed_restore_leaves_no_member_directory_and_the_next_start_begins_again() {
    let d = dir();
    let (data, log) = (d.0.join("data"), d.0.join("log"));
    // A directory left by something else, without a member in it, is replaced.
    fs::create_dir_all(data.join("junk")).unwrap();
    let out = run(&data, &log, 3);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed"), "{out:?}");
    // The half-written member is only under the partial name, so it is not taken for a restore.
    assert!(!data.join("member").exists());
    let out = run(&data, &log, 0);
    assert!(out.status.success(), "{out:?}");
    assert!(data.join("member/db").exists() && !data.join("junk").exists());
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[test]
fn a_member_that_cannot_be_read_as_a_directory_is_never_removed() {
    let d = dir();
    let (data, log) = (d.0.join("data"), d.0.join("log"));
    fs::create_dir_all(&data).expect("data dir");
    fs::write(data.join("member"), "not a directory").expect("member file");
    let out = run(&data, &log, 0);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a directory"),
        "{out:?}"
    );
    // Nothing ran and nothing was removed.
    assert!(!log.exists());
    assert_eq!(
        fs::read_to_string(data.join("member")).expect("kept"),
        "not a directory"
    );
}
