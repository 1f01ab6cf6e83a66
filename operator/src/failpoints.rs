//! Failpoints: with the `failpoints` feature, `OUROBOROS_FAILPOINTS=after-member-add,...` makes the
//! operator exit at that point, once per failpoint (a marker file in `OUROBOROS_FAILPOINT_DIR`,
//! default `/tmp`, survives the restart), so e2e tests can prove a restart between two steps converges.
//! Without the feature this compiles to nothing.

/// Exits the process here if the failpoint `name` is armed and has not fired yet.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let armed = std::env::var("OUROBOROS_FAILPOINTS").unwrap_or_default();
    if !armed.split(',').any(|f| f.trim() == name) {
        return;
    }
    let dir = std::env::var("OUROBOROS_FAILPOINT_DIR").unwrap_or_else(|_| "/tmp".into());
    let marker = std::path::Path::new(&dir).join(format!("failpoint-{name}"));
    if marker.exists() {
        return;
    }
    let _ = std::fs::write(&marker, b"fired");
    tracing::error!(failpoint = name, "failpoint hit: exiting");
    std::process::exit(86);
}

/// Exits the process here if the failpoint `name` is armed (no-op: built without `failpoints`).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
