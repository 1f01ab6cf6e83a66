//! The real binary on real processes: one command at a time per lock file, the lock held by the
//! command itself after the exec, and a waiting copy that stops when told to.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_member-lock");

fn spawn(lock: &Path, script: &str) -> Child {
    Command::new(BIN)
        .arg(lock)
        .args(["/bin/sh", "-c", script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning member-lock")
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        sleep(Duration::from_millis(20));
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("member-lock-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating the test dir");
    dir
}

#[test]
fn a_second_copy_runs_only_after_the_first_command_exits() {
    let dir = temp_dir("order");
    let (lock, log, started, release) = (
        dir.join("member.lock"),
        dir.join("log"),
        dir.join("first-started"),
        dir.join("release"),
    );
    let first = spawn(
        &lock,
        &format!(
            "echo first-start >> {log}; touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo first-end >> {log}",
            log = log.display(),
            started = started.display(),
            release = release.display()
        ),
    );
    wait_for_file(&started);
    let second = spawn(&lock, &format!("echo second >> {}", log.display()));
    // The second copy is now waiting (or about to); it must not run while the first command lives,
    // although the first's member-lock process was replaced by the shell long ago.
    sleep(Duration::from_millis(500));
    fs::write(&release, "").expect("releasing the first command");
    let first = first.wait_with_output().expect("first copy");
    let second = second.wait_with_output().expect("second copy");
    assert!(first.status.success() && second.status.success());
    assert_eq!(
        fs::read_to_string(&log).expect("the log"),
        "first-start\nfirst-end\nsecond\n"
    );
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another copy of this member holds"),
        "the waiting copy says why it waits: {}",
        String::from_utf8_lossy(&second.stderr)
    );
}

#[test]
fn a_waiting_copy_stops_on_sigterm_without_running_its_command() {
    let dir = temp_dir("stop");
    let (lock, started, ran) = (
        dir.join("member.lock"),
        dir.join("holder-started"),
        dir.join("waiter-ran"),
    );
    let mut holder = spawn(&lock, &format!("touch {}; sleep 60", started.display()));
    wait_for_file(&started);
    let waiter = spawn(&lock, &format!("touch {}", ran.display()));
    sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &waiter.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = waiter.wait_with_output().expect("waiter");
    holder.kill().expect("stopping the holder");
    let _ = holder.wait();
    assert!(out.status.success(), "a stopped waiter exits 0");
    assert!(
        !ran.exists(),
        "the waiter ran its command while another copy held the lock"
    );
}

#[test]
fn a_missing_command_is_a_clear_error() {
    let dir = temp_dir("usage");
    let out = Command::new(BIN)
        .arg(dir.join("member.lock"))
        .output()
        .expect("member-lock");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
