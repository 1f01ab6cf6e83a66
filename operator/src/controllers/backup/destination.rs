//! Where a backup goes: its own destination, else the cluster's, else the cluster's default backup
//! volume; S3 credentials are read from their Secret and handed to the sidecar with the job.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use ouroboros_crds::{BackupDestination, EtcdBackup, EtcdCluster, sidecar::JobDestination};

use super::{Error, plan::Resolved};
use crate::{
    context::Context,
    controllers::kube_err,
    vocabulary::{backup_dir, backup_volume, written_by_writer},
};

/// The destination with S3 credentials from their Secret, or why there is none.
pub async fn resolve(
    ctx: &Context,
    b: &EtcdBackup,
    cluster: &EtcdCluster,
) -> Result<Result<Resolved, String>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let dest = b
        .spec
        .destination
        .clone()
        .or_else(|| cluster.spec.backup.as_ref().and_then(|p| p.destination.clone()));
    let volume = match &dest {
        Some(BackupDestination { volume: Some(v), .. }) => Some(v.clone()),
        Some(_) => None,
        None => backup_volume(cluster),
    };
    if let Some(v) = volume {
        return Ok(Ok(Resolved {
            destination: JobDestination::Dir {
                path: backup_dir(cluster, &v),
            },
            by_writer: written_by_writer(cluster, &v),
            claim: Some(v.claim_name),
        }));
    }
    let Some(BackupDestination { s3: Some(s3), .. }) = dest else {
        return Ok(Err(format!(
            "no destination: EtcdCluster {} keeps its data on emptyDir, so it has no default backup volume; \
             set spec.destination here or spec.backup.destination on the cluster",
            cluster.name_any()
        )));
    };
    let credentials = match &s3.credentials_secret {
        None => None,
        Some(name) => {
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(name)
                .await
                .map_err(kube_err("reading the credentials Secret"))?;
            let Some(secret) = secret else {
                return Ok(Err(format!("credentials Secret {ns}/{name} does not exist")));
            };
            let data = secret.data.unwrap_or_default();
            let key = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
            match (key("AWS_ACCESS_KEY_ID"), key("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => Some((id, secret, key("AWS_SESSION_TOKEN"))),
                _ => {
                    return Ok(Err(format!(
                        "credentials Secret {ns}/{name} must have AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    )));
                }
            }
        }
    };
    let mut prefix = s3.prefix.clone();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix.push_str(&format!("{ns}/{}/", cluster.name_any()));
    Ok(Ok(Resolved {
        destination: JobDestination::S3 {
            bucket: s3.bucket,
            prefix,
            endpoint: s3.endpoint,
            region: s3.region,
            force_path_style: s3.force_path_style,
            credentials,
        },
        claim: None,
        by_writer: false,
    }))
}
