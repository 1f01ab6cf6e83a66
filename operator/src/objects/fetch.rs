//! The `etcd-backup-sidecar fetch` container: download an archive, decrypt it when an identity is
//! given, unpack it and check etcd's trailer, the manifest and the recorded sha256. One home for the
//! restore's fetch Job and the backup's restore drill, so a drill verifies exactly as a restore does.

use ouroboros_crds::EtcdCluster;
use serde_json::{Value, json};

use crate::{
    backup_source::Chosen,
    controllers::encryption,
    vocabulary::{self, BACKUP_MOUNT},
};

/// The fetch container's name.
pub const FETCH_CONTAINER: &str = "fetch";

/// The fetch container, and the volumes its pod must add for it (the identity, the backup claim).
#[derive(Debug, Clone)]
pub struct FetchContainer {
    /// The container (JSON, for the builder of its pod).
    pub container: Value,
    /// Volumes the container mounts, besides `out_volume`.
    pub volumes: Vec<Value>,
}

/// What to fetch and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct FetchTarget<'a> {
    /// The archive.
    pub chosen: &'a Chosen,
    /// A Secret whose `identity` decrypts it, when it may be encrypted.
    pub identity_secret: Option<&'a str>,
    /// The sidecar image.
    pub image: &'a str,
    /// The pod's volume the verified snapshot goes to ...
    pub out_volume: &'a str,
    /// ... mounted here.
    pub out_dir: &'a str,
}

/// The fetch container of `target`, from the store the backup named, else the cluster's.
pub fn fetch_container(cluster: &EtcdCluster, target: FetchTarget<'_>) -> FetchContainer {
    let chosen = target.chosen;
    let mut args = vec![
        "fetch".to_owned(),
        format!("--location={}", chosen.location),
        format!("--out={}", target.out_dir),
    ];
    if let Some(sha) = &chosen.sha256 {
        args.push(format!("--sha256={sha}"));
    }
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = vec![json!({"name": target.out_volume, "mountPath": target.out_dir})];
    let dest = chosen
        .destination
        .clone()
        .or_else(|| cluster.spec.backup.as_ref().and_then(|p| p.destination.clone()));
    if let Some(s3) = dest
        .as_ref()
        .and_then(|d| d.s3.clone())
        .filter(|_| chosen.location.starts_with("s3://"))
    {
        if let Some(ep) = &s3.endpoint {
            args.push(format!("--endpoint={ep}"));
        }
        args.push(format!("--region={}", s3.region));
        if s3.force_path_style {
            args.push("--force-path-style".into());
        }
        if let Some(secret) = &s3.credentials_secret {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
            }
        }
    }
    if let Some(secret) = target.identity_secret {
        // Only the identity is mounted, read-only, in the fetch container alone.
        volumes.push(
            json!({"name": "identity", "secret": {"secretName": secret, "defaultMode": 0o400,
            "items": [{"key": encryption::IDENTITY_KEY, "path": "identity"}]}}),
        );
        mounts.push(json!({"name": "identity", "mountPath": "/identity", "readOnly": true}));
        args.push("--identity-file=/identity/identity".to_owned());
    }
    let volume = dest
        .as_ref()
        .and_then(|d| d.volume.clone())
        .or_else(|| vocabulary::backup_volume(cluster));
    if let Some(v) = volume.filter(|_| chosen.location.starts_with("file://")) {
        volumes.push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": true}}));
        mounts.push(json!({"name": "backups", "mountPath": format!("{BACKUP_MOUNT}/{}", v.claim_name), "readOnly": true}));
    }
    FetchContainer {
        container: json!({
            "name": FETCH_CONTAINER, "image": target.image, "imagePullPolicy": "IfNotPresent",
            "args": args, "env": env, "volumeMounts": mounts,
            "securityContext": super::restricted_container_security(),
            "terminationMessagePolicy": "FallbackToLogsOnError"
        }),
        volumes,
    }
}
