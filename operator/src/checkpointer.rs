//! `etcd-operator checkpointer`: keeps a static-pod copy (a "checkpoint") of every self-hosted member
//! pod of its node in the kubelet's static-pod directory.
//!
//! Why: a kubelet that starts without an API server runs only static pods, and after a power cycle
//! of the whole control plane the API server has no etcd until the members run again. With their
//! checkpoints on disk, the kubelet starts the members from its own directory, etcd comes back with
//! its data, and the API server with it.
//!
//! Both copies of a member exist all the time; they share the member's host directory, and etcd runs
//! under `member-lock` there, so exactly one copy runs etcd and the other waits (see
//! `backup-sidecar/member-lock`). No activation step is needed when the API server is gone, which is
//! exactly when nothing could be asked.
//!
//! The checkpointer only changes the directory after the API server answered: an unreachable API
//! server never removes a checkpoint. Pods being deleted, and pods that are gone, lose theirs.
//!
//! Only voting members are copied. A joining member's pod starts before etcd has added it, so its
//! etcd exits until then; with a copy, the copy would take the lock at each exit and run the join in
//! a pod the operator does not watch. A learner is not needed for quorum after a power cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Pod, PodSpec, Secret, Volume, VolumeMount,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta},
};

use crate::vocabulary::{LABEL_CHECKPOINT, LABEL_VOTER};

/// Label on a checkpoint (and so on its mirror pod) naming the pod it copies. Checkpoints carry no
/// cluster label, so the operator never takes a mirror pod for a member.
pub const LABEL_CHECKPOINT_OF: &str = "etcd.ouroboros.dev/checkpoint-of";
/// Checkpoint files are `<prefix><namespace>_<pod>.json`; no other file in the directory is touched.
pub const FILE_PREFIX: &str = "ouroboros-checkpoint-";
/// The container of a member pod that a checkpoint keeps; the backup sidecar needs the API server
/// and credentials, and a member without an API server has no use for it.
const ETCD_CONTAINER: &str = "etcd";

/// What went wrong, named by the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The pod has no spec or no etcd container.
    #[error("pod {pod} has no {what}")]
    ReadPod {
        /// `namespace/name`.
        pod: String,
        /// What is missing.
        what: &'static str,
    },
    /// The pod uses a volume a static pod cannot have.
    #[error("pod {pod}: volume {volume} ({kind}) cannot be used by a static pod")]
    ConvertVolume {
        /// `namespace/name`.
        pod: String,
        /// Volume name.
        volume: String,
        /// Its source kind.
        kind: &'static str,
    },
    /// Listing this node's self-hosted member pods failed (the API server may be down).
    #[error("listing checkpointed pods on node {node}: {source}")]
    ListPods {
        /// Node name.
        node: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading a Secret a member mounts failed.
    #[error("reading secret {namespace}/{name}: {source}")]
    ReadSecret {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Encoding a checkpoint failed.
    #[error("encoding the checkpoint of {pod}: {source}")]
    Encode {
        /// `namespace/name`.
        pod: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// A Secret the checkpoint mounts from the host, and where its keys go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCopy {
    /// Secret name (in the pod's namespace).
    pub secret: String,
    /// Host directory that replaces the secret volume.
    pub dir: PathBuf,
}

/// The static-pod copy of one member pod (its file is [`file_name`] of the pod).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The static pod.
    pub pod: Pod,
    /// Secrets to copy to the host before the file is written.
    pub secrets: Vec<SecretCopy>,
}

/// The key of a pod in file and directory names: `<namespace>_<name>` (neither may contain `_`).
pub fn pod_key(pod: &Pod) -> String {
    format!("{}_{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The checkpoint's file name in the static-pod directory.
pub fn file_name(pod: &Pod) -> String {
    format!("{FILE_PREFIX}{}.json", pod_key(pod))
}

fn pod_ref(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Whether a listed pod should have a checkpoint: not being deleted, and not finished.
pub fn wants_checkpoint(pod: &Pod) -> bool {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    pod.metadata.deletion_timestamp.is_none() && !finished
}

/// The static pod for `pod`: its init containers and etcd container, on the same host network and
/// host directories, with Secrets turned into host directories under `secrets_root` (static pods
/// cannot reference API objects) and the API token dropped (etcd does not use it).
pub fn checkpoint(pod: &Pod, secrets_root: &Path) -> Result<Checkpoint, CheckpointError> {
    let pod_ref = pod_ref(pod);
    let spec = pod.spec.as_ref().ok_or_else(|| CheckpointError::ReadPod {
        pod: pod_ref.clone(),
        what: "spec",
    })?;
    let etcd = spec
        .containers
        .iter()
        .find(|c| c.name == ETCD_CONTAINER)
        .ok_or_else(|| CheckpointError::ReadPod {
            pod: pod_ref.clone(),
            what: "etcd container",
        })?;
    let mut containers = vec![etcd.clone()];
    let mut init_containers = spec.init_containers.clone().unwrap_or_default();
    let used: BTreeSet<String> = containers
        .iter()
        .chain(&init_containers)
        .flat_map(|c| c.volume_mounts.iter().flatten().map(|m| m.name.clone()))
        .collect();
    let key = pod_key(pod);
    let mut volumes = Vec::new();
    let mut dropped = BTreeSet::new();
    let mut secrets = Vec::new();
    for volume in spec.volumes.iter().flatten().filter(|v| used.contains(&v.name)) {
        let unsupported = |kind| CheckpointError::ConvertVolume {
            pod: pod_ref.clone(),
            volume: volume.name.clone(),
            kind,
        };
        if volume.host_path.is_some() || volume.empty_dir.is_some() {
            volumes.push(volume.clone());
        } else if let Some(secret) = &volume.secret {
            if secret.items.is_some() {
                return Err(unsupported("secret with items"));
            }
            let name = secret
                .secret_name
                .clone()
                .ok_or_else(|| unsupported("secret without a name"))?;
            let dir = secrets_root.join(&key).join(&volume.name);
            volumes.push(Volume {
                name: volume.name.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.display().to_string(),
                    type_: Some("Directory".to_owned()),
                }),
                ..Volume::default()
            });
            secrets.push(SecretCopy { secret: name, dir });
        } else if is_api_token(volume) {
            dropped.insert(volume.name.clone());
        } else {
            return Err(unsupported(volume_kind(volume)));
        }
    }
    for c in containers.iter_mut().chain(init_containers.iter_mut()) {
        strip_mounts(c, &dropped);
        // On the host network a declared port is a host port, and the kubelet refuses a pod whose
        // host ports another pod of the node holds: the member pod declares them, so this copy
        // must not (it listens on the same ports only while the member pod's etcd waits).
        c.ports = None;
    }
    let name = pod.name_any();
    let static_pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-checkpoint")),
            namespace: pod.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_CHECKPOINT_OF.to_owned(), name),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ouroboros-checkpointer".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            host_network: spec.host_network,
            dns_policy: spec.dns_policy.clone(),
            restart_policy: Some("Always".to_owned()),
            termination_grace_period_seconds: spec.termination_grace_period_seconds,
            priority_class_name: spec.priority_class_name.clone(),
            security_context: spec.security_context.clone(),
            enable_service_links: Some(false),
            automount_service_account_token: Some(false),
            init_containers: Some(init_containers).filter(|i| !i.is_empty()),
            containers,
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    };
    Ok(Checkpoint {
        pod: static_pod,
        secrets,
    })
}

/// The projected volume admission adds for the service account token.
fn is_api_token(volume: &Volume) -> bool {
    volume.projected.as_ref().is_some_and(|p| {
        p.sources
            .iter()
            .flatten()
            .any(|s| s.service_account_token.is_some())
    })
}

fn volume_kind(volume: &Volume) -> &'static str {
    if volume.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else if volume.config_map.is_some() {
        "configMap"
    } else if volume.projected.is_some() {
        "projected"
    } else {
        "an unsupported source"
    }
}

fn strip_mounts(container: &mut Container, dropped: &BTreeSet<String>) {
    if let Some(mounts) = &mut container.volume_mounts {
        mounts.retain(|m: &VolumeMount| !dropped.contains(&m.name));
    }
}

/// One change to the static-pod directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write (create or replace) a checkpoint file.
    Write {
        /// File name.
        file: String,
        /// Its content.
        content: Vec<u8>,
    },
    /// Remove a checkpoint whose pod is gone or being deleted.
    Remove {
        /// File name.
        file: String,
    },
}

/// What to change so that the directory's checkpoint files (`present`) become `wanted`. Unchanged
/// files are not rewritten: the kubelet restarts a static pod whenever its file changes. Files in
/// `keep` belong to pods that still exist but could not be copied this time (a Secret unreadable,
/// say): they stay as they are, because an old copy of a live member beats none.
pub fn plan(
    present: &BTreeMap<String, Vec<u8>>,
    wanted: &BTreeMap<String, Vec<u8>>,
    keep: &BTreeSet<String>,
) -> Vec<Change> {
    let writes = wanted
        .iter()
        .filter(|(file, content)| present.get(*file) != Some(content))
        .map(|(file, content)| Change::Write {
            file: file.clone(),
            content: content.clone(),
        });
    let removals = present
        .keys()
        .filter(|file| !wanted.contains_key(*file) && !keep.contains(*file))
        .map(|file| Change::Remove { file: file.clone() });
    writes.chain(removals).collect()
}

/// Where the checkpointer works.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// The kubelet's static-pod directory (`staticPodPath`).
    pub static_pod_dir: PathBuf,
    /// Host directory for copies of Secrets that members mount.
    pub secrets_dir: PathBuf,
    /// Time between passes.
    pub interval: Duration,
}

/// Runs passes until `shutdown` resolves. A failed pass is logged and retried at the next one.
pub async fn run(client: Client, config: Config, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    tracing::info!(node = %config.node, dir = %config.static_pod_dir.display(), "checkpointer started");
    loop {
        match sync(&client, &config).await {
            Ok(changes) => {
                for change in changes {
                    match change {
                        Change::Write { file, .. } => tracing::info!(%file, "checkpoint written"),
                        Change::Remove { file } => tracing::info!(%file, "checkpoint removed"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint pass failed; keeping the checkpoints as they are")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = &mut shutdown => return,
        }
    }
}

/// One pass: list this node's self-hosted member pods, then bring the directory in line.
pub async fn sync(client: &Client, config: &Config) -> Result<Vec<Change>, CheckpointError> {
    let pods = Api::<Pod>::all(client.clone())
        .list(
            &ListParams::default()
                .labels(&format!("{LABEL_CHECKPOINT}=true,{LABEL_VOTER}=true"))
                .fields(&format!("spec.nodeName={}", config.node)),
        )
        .await
        .map_err(|source| CheckpointError::ListPods {
            node: config.node.clone(),
            source,
        })?;
    let mut wanted = BTreeMap::new();
    let mut keep = BTreeSet::new();
    let mut secret_dirs = BTreeSet::new();
    for pod in pods.items.iter().filter(|p| wants_checkpoint(p)) {
        secret_dirs.insert(pod_key(pod));
        match render(client, pod, &config.secrets_dir).await {
            Ok((file, content)) => {
                wanted.insert(file, content);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot update this pod's checkpoint; keeping the one it has");
                keep.insert(file_name(pod));
            }
        }
    }
    let present = read_checkpoints(&config.static_pod_dir)?;
    let changes = plan(&present, &wanted, &keep);
    for change in &changes {
        match change {
            Change::Write { file, content } => {
                write_atomically(&config.static_pod_dir, file, content)?;
            }
            Change::Remove { file } => {
                let path = config.static_pod_dir.join(file);
                std::fs::remove_file(&path).map_err(file_error("removing", &path))?;
            }
        }
    }
    remove_stale_secret_dirs(&config.secrets_dir, &secret_dirs)?;
    Ok(changes)
}

/// The checkpoint file of one pod, with the Secrets it needs copied to the host first.
async fn render(
    client: &Client,
    pod: &Pod,
    secrets_dir: &Path,
) -> Result<(String, Vec<u8>), CheckpointError> {
    let checkpoint = checkpoint(pod, secrets_dir)?;
    for copy in &checkpoint.secrets {
        copy_secret(client, &pod.namespace().unwrap_or_default(), copy).await?;
    }
    let content = serde_json::to_vec_pretty(&checkpoint.pod).map_err(|source| CheckpointError::Encode {
        pod: pod_ref(pod),
        source,
    })?;
    Ok((file_name(pod), content))
}

/// Maps an I/O error on `path` to [`CheckpointError::File`].
fn file_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.to_owned();
    move |source| CheckpointError::File { action, path, source }
}

fn read_checkpoints(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let mut present = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(file_error("listing", dir))? {
        let entry = entry.map_err(file_error("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(FILE_PREFIX) && name.ends_with(".json") {
            let content = std::fs::read(entry.path()).map_err(file_error("reading", &entry.path()))?;
            present.insert(name, content);
        }
    }
    Ok(present)
}

/// Writes through a hidden temporary file and a rename: the kubelet ignores hidden files and must
/// never read half a manifest.
fn write_atomically(dir: &Path, file: &str, content: &[u8]) -> Result<(), CheckpointError> {
    let tmp = dir.join(format!(".{file}.tmp"));
    let path = dir.join(file);
    std::fs::write(&tmp, content).map_err(file_error("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(file_error("renaming into place", &path))
}

async fn copy_secret(client: &Client, namespace: &str, copy: &SecretCopy) -> Result<(), CheckpointError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&copy.secret)
        .await
        .map_err(|source| CheckpointError::ReadSecret {
            namespace: namespace.to_owned(),
            name: copy.secret.clone(),
            source,
        })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&copy.dir)
        .map_err(file_error("creating", &copy.dir))?;
    for (key, value) in secret.data.iter().flatten() {
        let path = copy.dir.join(key);
        if std::fs::read(&path).ok().as_deref() == Some(value.0.as_slice()) {
            continue;
        }
        std::fs::write(&path, &value.0).map_err(file_error("writing", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
            .map_err(file_error("restricting", &path))?;
    }
    Ok(())
}

fn remove_stale_secret_dirs(root: &Path, wanted: &BTreeSet<String>) -> Result<(), CheckpointError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_error("listing", root)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            std::fs::remove_dir_all(entry.path()).map_err(file_error("removing", &entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "checkpointer_tests.rs"]
mod tests;
