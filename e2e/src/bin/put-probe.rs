//! `put-probe (--until <stop-file> | --for <seconds>) [--ready <file>] [--windows <file>] <endpoint>...`:
//! a steady writer for benchmarks driven from a shell script (e2e/bench/backup-cost.sh).
//!
//! Puts 1 KiB values back to back through one client of every endpoint (`ouroboros_e2e::probe`, as
//! `defrag-bench` does; a put slower than 5 s counts as 5 s) until `<stop-file>` exists (checked
//! every 100 ms) or for `<seconds>`. `--ready` is created once the client is connected and its first
//! put succeeded: a script waits for it before it starts its first window.
//!
//! `--windows` names a file the script writes while the probe runs, one window a line:
//! `<from> <to> <label>`, with `from` and `to` in Unix milliseconds (`date +%s%3N`) and the label the
//! rest of the line. It is read once the probe has stopped, so a window can be written after it
//! ended (or be chosen after the fact). Without it, the whole run is one window labelled `all`.
//!
//! Prints one line per window to stdout, tab-separated: `<label> <puts> <p50 ms> <p99 ms> <max ms>`
//! (milliseconds with one decimal), for puts that started in the window, both ends included.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use ouroboros_e2e::probe::{Latency, Probe};

const USAGE: &str = "usage: put-probe (--until <stop-file> | --for <seconds>) [--ready <file>] \
                     [--windows <file>] <endpoint>...";

/// When the probe stops.
enum Until {
    File(PathBuf),
    Elapsed(Duration),
}

/// One window: from and to in Unix milliseconds, and its label.
struct Window {
    from: u64,
    to: u64,
    label: String,
}

fn read_windows(path: &Path) -> anyhow::Result<Vec<Window>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| -> anyhow::Result<Window> {
            let mut parts = l.trim().splitn(3, ' ');
            let mut ms = || -> anyhow::Result<u64> {
                parts
                    .next()
                    .with_context(|| format!("window {l:?}: want <from-ms> <to-ms> <label>"))?
                    .parse::<u64>()
                    .with_context(|| format!("window {l:?}: not Unix milliseconds"))
            };
            let (from, to) = (ms()?, ms()?);
            let label = parts.next().unwrap_or("").trim().to_owned();
            Ok(Window { from, to, label })
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut until = None;
    let mut ready = None;
    let mut windows = None;
    let mut endpoints = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--until" => until = Some(Until::File(args.next().context(USAGE)?.into())),
            "--for" => {
                let s: u64 = args.next().context(USAGE)?.parse().context(USAGE)?;
                until = Some(Until::Elapsed(Duration::from_secs(s)));
            }
            "--ready" => ready = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--windows" => windows = Some(PathBuf::from(args.next().context(USAGE)?)),
            flag if flag.starts_with("--") => bail!("unknown flag {flag}; {USAGE}"),
            endpoint => endpoints.push(endpoint.to_owned()),
        }
    }
    let until = until.context(USAGE)?;
    anyhow::ensure!(!endpoints.is_empty(), "{USAGE}");

    // The samples' clock (Instant) tied to the wall clock the script's windows are written in.
    let (anchor, anchor_ms) = (
        Instant::now(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs_f64()
            * 1e3,
    );
    let probe = Probe::start(&endpoints).await?;
    if let Some(r) = &ready {
        std::fs::write(r, b"").with_context(|| format!("creating {}", r.display()))?;
    }
    match &until {
        Until::File(f) => {
            while !f.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Until::Elapsed(d) => tokio::time::sleep(*d).await,
    }
    let samples = probe.stop().await;

    let windows = match &windows {
        Some(path) => read_windows(path)?,
        None => vec![Window {
            from: 0,
            to: u64::MAX,
            label: "all".into(),
        }],
    };
    let unix_ms = |t: Instant| anchor_ms + t.saturating_duration_since(anchor).as_secs_f64() * 1e3;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for w in windows {
        let (from, to) = (w.from as f64, w.to as f64);
        let lat = Latency::of(
            samples
                .iter()
                .filter(|(t, _)| (from..=to).contains(&unix_ms(*t)))
                .map(|(_, d)| *d)
                .collect(),
        );
        println!(
            "{}\t{}\t{:.1}\t{:.1}\t{:.1}",
            w.label,
            lat.n,
            ms(lat.p50),
            ms(lat.p99),
            ms(lat.max)
        );
    }
    Ok(())
}
