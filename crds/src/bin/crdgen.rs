//! Writes the CRD YAML of every Ouroboros resource into a directory (default: `crds/` next to this
//! crate's manifest) and into the Helm chart's `crds/`, and the API reference into `docs/api.md`, or with `--check` exits non-zero when the files there differ from the types.

use std::{path::PathBuf, process::ExitCode};

/// The Helm chart's CRD directory, relative to this crate's.
const HELM_CRDS: &str = "../deploy/helm/ouroboros/crds";

fn main() -> ExitCode {
    let mut check = false;
    // Cargo's run-time value first: the binary may have been built in another checkout.
    let mut dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = Vec::new();
    for (file, crd) in ouroboros_crds::crd::all() {
        let yaml = match ouroboros_crds::crd::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The Helm chart installs the same CRDs from its own `crds/` (Helm reads no file outside
        // the chart), so each is written twice.
        for path in [dir.join(file), dir.join(HELM_CRDS).join(file)] {
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else if let Err(e) = std::fs::write(&path, &yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    // The API reference sits in docs/ at the repository root, generated from the same schemas.
    let reference = dir.join("../docs/api.md");
    let markdown = ouroboros_crds::crd::api_reference_markdown();
    if check {
        if std::fs::read_to_string(&reference).ok().as_deref() != Some(markdown.as_str()) {
            stale.push(reference.display().to_string());
        }
    } else if let Err(e) = std::fs::write(&reference, markdown) {
        eprintln!("crdgen: cannot write {}: {e}", reference.display());
        return ExitCode::FAILURE;
    } else {
        println!("wrote {}", reference.display());
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("crdgen: stale CRD files (run `make crds`): {}", stale.join(", "));
        ExitCode::FAILURE
    }
}
