//! The EtcdBackup controller: picks a healthy member (a follower when there is one), asks its sidecar
//! to take the backup, and polls it; the reconcile never waits on the upload. One backup per cluster
//! runs at a time. Succeeded and Failed are terminal.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{
    BackupDestination, BackupPhase, BackupReference, EtcdBackup, EtcdBackupStatus, EtcdCluster,
    retention::Rules,
    sidecar::{Job, JobDestination, JobEncryption, JobState, PruneRequest, server_identity},
};

use super::{encryption, kube_err};
use crate::{
    context::Context,
    member_access,
    metrics::BackupLabels,
    sidecar::{SidecarAddr, SidecarError},
    vocabulary::{self, LABEL_SCHEDULED, Ports, backup_dir, backup_volume, ports_of},
};

/// Used when a running backup has no recorded deadline (it was started by an older operator).
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Failed scheduled backups kept as history; older ones are deleted with retention.
const FAILED_KEPT: usize = 3;

/// How long a backup of a `db_bytes` database may run: ten minutes, plus five per started GiB (a
/// slow link to the store, not the snapshot, is what takes long).
pub fn backup_timeout(db_bytes: u64) -> Duration {
    let gib = db_bytes.div_ceil(1 << 30);
    Duration::from_secs(600 + 300 * gib)
}
/// Field manager for the cluster's `lastSuccessfulBackup`, separate from the cluster controller's.
const BACKUP_STATUS_MANAGER: &str = "ouroboros-operator-backups";

/// Why an EtcdBackup reconcile failed: a Kubernetes call, retried with backoff.
pub type Error = super::KubeCallError;

/// One pass for one EtcdBackup.
#[tracing::instrument(skip_all, fields(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any()))]
pub async fn reconcile(b: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdbackup");
    match b.status.as_ref().and_then(|s| s.phase) {
        Some(p) if p.is_terminal() => Ok(Action::await_change()),
        Some(BackupPhase::Running) => poll(&b, &ctx).await,
        Some(BackupPhase::Pending) | Some(_) | None => start(&b, &ctx).await,
    }
}

async fn write_status(ctx: &Context, b: &EtcdBackup, status: &EtcdBackupStatus) -> Result<(), Error> {
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": EtcdBackup::api_version(&()), "kind": EtcdBackup::kind(&()), "status": status,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(kube_err("writing EtcdBackup status"))
}

async fn event(ctx: &Context, b: &EtcdBackup, type_: EventType, reason: &str, note: String) {
    ctx.publish(&b.object_ref(&()), type_, reason, note, None).await;
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// How long a backup waits for the cluster it names to appear before it fails.
const MISSING_CLUSTER_WAIT: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// Why the cluster this backup was started for is gone, if it is: deleted, being deleted, or replaced
/// by a new cluster of the same name (`recorded_uid` is the UID the backup recorded when it first saw
/// its cluster). A backup of a cluster that no longer exists fails instead of waiting for it.
pub fn cluster_gone(recorded_uid: Option<&str>, cluster: Option<&EtcdCluster>) -> Option<String> {
    match (recorded_uid, cluster) {
        (_, Some(c)) if c.metadata.deletion_timestamp.is_some() => {
            Some(format!("EtcdCluster {} is being deleted", c.name_any()))
        }
        (Some(uid), Some(c)) if c.uid().is_some_and(|u| u != uid) => Some(format!(
            "EtcdCluster {} was deleted and created again (uid {uid} is gone); this backup belonged to the \
             deleted one: create a new EtcdBackup for the new cluster",
            c.name_any()
        )),
        (Some(_), None) => Some("its EtcdCluster was deleted".to_owned()),
        (Some(_) | None, Some(_)) | (None, None) => None,
    }
}

async fn pending(ctx: &Context, b: &EtcdBackup, reason: String, retry: u64) -> Result<Action, Error> {
    let current = b.status.clone().unwrap_or_default();
    if current.phase != Some(BackupPhase::Pending) || current.reason.as_deref() != Some(reason.as_str()) {
        let status = EtcdBackupStatus {
            phase: Some(BackupPhase::Pending),
            reason: Some(reason),
            ..current
        };
        write_status(ctx, b, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(retry)))
}

async fn fail(ctx: &Context, b: &EtcdBackup, reason: String) -> Result<Action, Error> {
    let current = b.status.clone().unwrap_or_default();
    let status = EtcdBackupStatus {
        phase: Some(BackupPhase::Failed),
        reason: Some(reason.clone()),
        location: None,
        completion_time: Some(now()),
        ..current
    };
    write_status(ctx, b, &status).await?;
    ctx.metrics.backups.failures.get_or_create(&labels(b)).inc();
    event(ctx, b, EventType::Warning, "BackupFailed", reason).await;
    Ok(Action::await_change())
}

fn labels(b: &EtcdBackup) -> BackupLabels {
    BackupLabels {
        cluster: format!("{}/{}", b.namespace().unwrap_or_default(), b.spec.cluster_name),
    }
}

/// A destination the sidecar can write to.
struct Resolved {
    destination: JobDestination,
    /// The claim the member pod must mount, for volume destinations.
    claim: Option<String>,
}

/// The destination with S3 credentials from their Secret, or why there is none.
async fn resolve(
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
    }))
}

/// A running member pod: its IP and the claims it mounts.
struct MemberPod {
    ip: String,
    ports: Ports,
    claims: Vec<String>,
    /// The name its sidecar's certificate carries.
    sidecar_identity: String,
    /// Its sidecar serves the operator over mutual TLS (pods made before that serve plain HTTP,
    /// which the operator no longer speaks).
    sidecar_serves_tls: bool,
}

impl MemberPod {
    fn sidecar(&self) -> SidecarAddr {
        SidecarAddr {
            addr: format!("{}:{}", self.ip, self.ports.sidecar),
            identity: self.sidecar_identity.clone(),
        }
    }
}

/// The pod of `member` of the backup's cluster, unless it is gone or going.
async fn member_pod(ctx: &Context, b: &EtcdBackup, member: &str) -> Result<Option<MemberPod>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let ns = ns.as_str();
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(member)
        .await
        .map_err(kube_err("reading the member pod"))?;
    Ok(pod
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .and_then(|p| {
            let claims = p
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
                .collect();
            let sidecar_serves_tls = p.spec.iter().flat_map(|s| &s.containers).any(|c| {
                c.name == vocabulary::SIDECAR_CONTAINER
                    && c.args.iter().flatten().any(|a| a.starts_with("--api-tls-dir="))
            });
            Some(MemberPod {
                sidecar_identity: server_identity(ns, &b.spec.cluster_name),
                sidecar_serves_tls,
                ports: ports_of(&p),
                ip: p.status?.pod_ip?,
                claims,
            })
        }))
}

async fn pod_addr(ctx: &Context, b: &EtcdBackup, member: &str) -> Result<Option<SidecarAddr>, Error> {
    Ok(member_pod(ctx, b, member).await?.map(|p| p.sidecar()))
}

async fn start(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let cluster_name = &b.spec.cluster_name;
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let recorded_uid = b.status.as_ref().and_then(|s| s.cluster_uid.as_deref());
    if let Some(why) = cluster_gone(recorded_uid, cluster.as_ref()) {
        return fail(ctx, b, format!("{why}; nothing was backed up")).await;
    }
    let Some(cluster) = cluster else {
        // A backup made together with its cluster (GitOps applies both at once) may see it a moment
        // late; one that names a cluster absent for longer names the wrong one.
        let waited = b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| jiff::Timestamp::now().duration_since(t.0));
        if waited.is_some_and(|w| w >= MISSING_CLUSTER_WAIT) {
            return fail(
                ctx,
                b,
                format!(
                    "EtcdCluster {ns}/{cluster_name} does not exist (waited {}s); spec.clusterName must name a cluster in this namespace",
                    MISSING_CLUSTER_WAIT.as_secs()
                ),
            )
            .await;
        }
        return pending(
            ctx,
            b,
            format!("EtcdCluster {ns}/{cluster_name} does not exist"),
            15,
        )
        .await;
    };
    // Every status this pass writes records the cluster's UID: the backup's lineage, and how a later
    // pass tells that its cluster was deleted.
    let mut with_uid = b.clone();
    with_uid.status.get_or_insert_default().cluster_uid = cluster.uid();
    let b = &with_uid;
    let Resolved { destination, claim } = match resolve(ctx, b, &cluster).await? {
        Ok(d) => d,
        Err(why) => return fail(ctx, b, why).await,
    };
    let encryption = match encryption::for_backup(b, &cluster) {
        None => None,
        Some(e) => {
            match encryption::read_key(&ctx.client, &ns, &e.secret_name, encryption::RECIPIENT_KEY).await? {
                Ok(recipients) => Some(JobEncryption {
                    recipients,
                    secret: format!("{ns}/{}", e.secret_name),
                }),
                Err(why) => {
                    let field = if b.spec.encryption.is_some() {
                        "spec.encryption"
                    } else {
                        "the cluster's spec.backup.encryption"
                    };
                    let why = format!(
                        "{why}; {field} names it for the age public key of backups; nothing was backed up"
                    );
                    return fail(ctx, b, why).await;
                }
            }
        }
    };
    // One backup per cluster at a time.
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    if let Some(other) = backups.items.iter().find(|o| {
        o.uid() != b.uid()
            && o.spec.cluster_name == *cluster_name
            && o.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Running)
    }) {
        return pending(
            ctx,
            b,
            format!(
                "waiting for EtcdBackup {} of the same cluster to finish",
                other.name_any()
            ),
            5,
        )
        .await;
    }
    // A healthy voter, a follower when there is one: the leader has enough to do.
    let mut candidates: Vec<_> = cluster
        .status
        .as_ref()
        .map(|s| {
            s.members
                .iter()
                .filter(|m| m.healthy && !m.is_learner)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|m| m.is_leader);
    let Some(member) = candidates.first() else {
        return pending(
            ctx,
            b,
            format!("no healthy member of {cluster_name} to back up from"),
            10,
        )
        .await;
    };
    let Some(pod) = member_pod(ctx, b, &member.name).await? else {
        return pending(ctx, b, format!("member {} has no pod IP yet", member.name), 5).await;
    };
    if let Some(claim) = claim.filter(|c| !pod.claims.contains(c)) {
        return fail(
            ctx,
            b,
            format!(
                "member pod {} does not mount the backup claim {claim}: pods mount the cluster's backup volume \
                 when they are created, so use that volume or an s3 destination (members started after \
                 spec.backup.destination changed mount the new one)",
                member.name
            ),
        )
        .await;
    }
    if !pod.sidecar_serves_tls {
        return fail(
            ctx,
            b,
            format!(
                "member pod {} runs a backup sidecar from before mutual TLS, which this operator does not \
                 call (docs/security.md): delete the member pods one at a time, waiting for the cluster to \
                 be Available in between, and each comes back with the current sidecar; nothing was backed up",
                member.name
            ),
        )
        .await;
    }
    let addr = pod.sidecar();
    // The database size sets the deadline; a member that does not answer gets the base timeout,
    // and its sidecar will fail the backup soon enough.
    // It is dialled as the cluster controller dials members: https with the operator's client
    // certificate on TLS clusters (plain http there would be refused, and every TLS backup would get
    // the base deadline whatever its size).
    let db_size = match member_access::tls_material(&ctx.client, &cluster).await {
        Ok(tls) => {
            let endpoint = member_access::member_endpoint(
                &cluster,
                &member.name,
                &pod.ip,
                pod.ports.client,
                tls.as_ref(),
            );
            ctx.etcd
                .status(&endpoint)
                .await
                .map_or(0, |s| u64::try_from(s.db_size).unwrap_or(0))
        }
        Err(e) => {
            tracing::warn!(backup = %b.name_any(), error = %e, "no client certificate to size the database; the base deadline applies");
            0
        }
    };
    let timeout = backup_timeout(db_size);
    let job = Job {
        id: b.uid().unwrap_or_default(),
        name: b.name_any(),
        cluster_name: cluster_name.clone(),
        cluster_uid: cluster.uid(),
        member: member.name.clone(),
        destination,
        compression_level: cluster
            .spec
            .backup
            .as_ref()
            .map_or(1, |p| u32::try_from(p.compression_level).unwrap_or(1)),
        encryption,
    };
    match ctx.sidecar.start(&addr, &job).await {
        Ok(()) => {
            let started = jiff::Timestamp::now();
            let deadline = started
                .checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or_default())
                .unwrap_or(started);
            let status = EtcdBackupStatus {
                phase: Some(BackupPhase::Running),
                reason: Some(format!("streaming a snapshot of {}", member.name)),
                member: Some(member.name.clone()),
                start_time: Some(started.to_string()),
                deadline: Some(deadline.to_string()),
                scheduled: b.labels().get(LABEL_SCHEDULED).is_some_and(|v| v == "true"),
                ..b.status.clone().unwrap_or_default()
            };
            write_status(ctx, b, &status).await?;
            event(
                ctx,
                b,
                EventType::Normal,
                "BackupStarted",
                format!("backing up from member {}", member.name),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Err(e @ (SidecarError::Busy(_) | SidecarError::Unreachable(..))) => {
            pending(ctx, b, e.to_string(), 5).await
        }
        Err(e) => fail(ctx, b, e.to_string()).await,
    }
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

async fn poll(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let current = b.status.clone().unwrap_or_default();
    let member = current.member.clone().unwrap_or_default();
    let started = current
        .start_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let deadline = current
        .deadline
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .or_else(|| {
            started?
                .checked_add(jiff::SignedDuration::try_from(BACKUP_TIMEOUT).ok()?)
                .ok()
        });
    let overdue = deadline.is_some_and(|d| jiff::Timestamp::now() > d);
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let gone = cluster_gone(current.cluster_uid.as_deref(), cluster.as_ref());
    let Some(addr) = pod_addr(ctx, b, &member).await? else {
        let why = gone.unwrap_or_else(|| format!("member pod {member} went away"));
        return fail(ctx, b, format!("{why} during the backup; nothing was committed")).await;
    };
    let id = b.uid().unwrap_or_default();
    match ctx.sidecar.state(&addr, &id).await {
        Ok(JobState::Running) if gone.is_some() => {
            // Its cluster is going: the members' pods go with it, and the upload is stopped now rather
            // than cut off half-written when they do.
            let aborted = match ctx.sidecar.stop(&addr, &id).await {
                Ok(()) => "the upload was aborted".to_owned(),
                Err(e) => {
                    format!("stopping the upload failed ({e}); the sidecar aborts it when its pod stops")
                }
            };
            let why = gone.unwrap_or_default();
            fail(
                ctx,
                b,
                format!("{why} during the backup; {aborted}; nothing was committed"),
            )
            .await
        }
        Ok(JobState::Running) if overdue => {
            fail(
                ctx,
                b,
                format!(
                    "still running at its deadline {}; nothing was committed",
                    current.deadline.as_deref().unwrap_or("(none recorded)")
                ),
            )
            .await
        }
        Ok(JobState::Running) => Ok(Action::requeue(Duration::from_secs(2))),
        Ok(JobState::Failed { reason }) => fail(ctx, b, reason).await,
        Ok(JobState::Succeeded { manifest, location }) => {
            // Retention runs while this backup still shows Running, so no other backup of the
            // cluster can start and have its upload taken for a leftover.
            apply_retention(ctx, b, &addr).await?;
            let completion = now();
            let status = EtcdBackupStatus {
                phase: Some(BackupPhase::Succeeded),
                reason: Some("stored and verified".into()),
                location: Some(location.clone()),
                raw_size: i64::try_from(manifest.raw_size).ok(),
                compressed_size: manifest.compressed_size.and_then(|s| i64::try_from(s).ok()),
                size: manifest.compressed_size.map(human),
                sha256: Some(manifest.sha256.clone()),
                revision: i64::try_from(manifest.revision).ok(),
                etcd_version: Some(manifest.etcd_version.clone()),
                cluster_id: Some(manifest.cluster_id.clone()).filter(|id| !id.is_empty()),
                encrypted: manifest.encrypted,
                completion_time: Some(completion.clone()),
                ..current
            };
            write_status(ctx, b, &status).await?;
            record_on_cluster(ctx, b, &location, manifest.revision, &completion).await?;
            let m = &ctx.metrics.backups;
            let done = jiff::Timestamp::now();
            m.last_success
                .get_or_create(&labels(b))
                .set(done.as_millisecond() as f64 / 1000.0);
            m.size.get_or_create(&labels(b)).set(
                manifest
                    .compressed_size
                    .and_then(|s| i64::try_from(s).ok())
                    .unwrap_or(0),
            );
            if let Some(t) = started {
                m.duration
                    .get_or_create(&labels(b))
                    .observe(done.duration_since(t).as_secs_f64());
            }
            event(
                ctx,
                b,
                EventType::Normal,
                "BackupSucceeded",
                format!(
                    "revision {} stored at {location} ({})",
                    manifest.revision,
                    manifest.compressed_size.map(human).unwrap_or_default()
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(SidecarError::UnknownJob(_)) => {
            fail(
                ctx,
                b,
                format!("the sidecar on {member} restarted during the backup; nothing was committed"),
            )
            .await
        }
        Err(e) if overdue => fail(ctx, b, e.to_string()).await,
        Err(_) => Ok(Action::requeue(Duration::from_secs(5))),
    }
}

/// Sets the cluster's `lastSuccessfulBackup` when this backup is newer than the one recorded.
async fn record_on_cluster(
    ctx: &Context,
    b: &EtcdBackup,
    location: &str,
    revision: u64,
    completion: &str,
) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cluster) = api
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?
    else {
        return Ok(());
    };
    let newer = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_successful_backup.as_ref())
        .is_none_or(|last| i64::try_from(revision).unwrap_or(0) >= last.revision);
    if !newer {
        return Ok(());
    }
    let reference = BackupReference {
        name: b.name_any(),
        location: location.to_owned(),
        revision: i64::try_from(revision).unwrap_or(0),
        completion_time: completion.to_owned(),
    };
    let patch = serde_json::json!({
        "apiVersion": EtcdCluster::api_version(&()), "kind": EtcdCluster::kind(&()),
        "status": {"lastSuccessfulBackup": reference},
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(BACKUP_STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(kube_err("recording the backup on the EtcdCluster"))
}

/// Applies the cluster's retention to its backup destination (when this backup went there) and then
/// to the EtcdBackup objects: those whose archive was deleted, and failed scheduled ones beyond the
/// newest few. A failure is reported and retried with the next backup; it never fails this one.
async fn apply_retention(ctx: &Context, b: &EtcdBackup, addr: &SidecarAddr) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let Some(cluster) = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?
    else {
        return Ok(());
    };
    let Some(policy) = cluster.spec.backup.as_ref() else {
        return Ok(());
    };
    let backups: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let mut deleted_locations = Vec::new();
    if let (Some(retention), None) = (&policy.retention, &b.spec.destination) {
        let rules = match Rules::new(retention.max_count, retention.max_age.as_deref()) {
            Ok(r) => r,
            // The cluster's BackupHealthy condition already says what is wrong.
            Err(_) => return Ok(()),
        };
        let destination = match resolve(ctx, b, &cluster).await? {
            Ok(r) => r.destination,
            Err(_) => return Ok(()),
        };
        let req = PruneRequest {
            destination,
            max_count: rules.max_count.and_then(|n| u32::try_from(n).ok()),
            max_age_seconds: rules.max_age.map(|a| a.as_secs()),
        };
        match ctx.sidecar.prune(addr, &req).await {
            Ok(out) => {
                if !out.deleted.is_empty() || out.leftovers_removed > 0 {
                    ctx.publish(
                        &cluster.object_ref(&()),
                        EventType::Normal,
                        "RetentionApplied",
                        format!(
                            "deleted {} backup(s) by retention and {} leftover(s) of interrupted backups; {} kept",
                            out.deleted.len(),
                            out.leftovers_removed,
                            out.kept
                        ),
                        None,
                    )
                    .await;
                }
                deleted_locations = out.deleted;
            }
            Err(e) => {
                ctx.publish(
                    &cluster.object_ref(&()),
                    EventType::Warning,
                    "RetentionFailed",
                    format!("applying retention through {}: {e}", addr.addr),
                    None,
                )
                .await;
            }
        }
    }
    let all = backups
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let mine: Vec<&EtcdBackup> = all
        .items
        .iter()
        .filter(|o| o.spec.cluster_name == b.spec.cluster_name && o.uid() != b.uid())
        .collect();
    let mut failed: Vec<&&EtcdBackup> = mine
        .iter()
        .filter(|o| {
            o.labels().get(LABEL_SCHEDULED).is_some_and(|v| v == "true")
                && o.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Failed)
        })
        .collect();
    failed.sort_by_key(|o| std::cmp::Reverse(o.metadata.creation_timestamp.clone()));
    let doomed = mine
        .iter()
        .filter(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.location.as_ref())
                .is_some_and(|l| deleted_locations.contains(l))
        })
        .chain(failed.into_iter().skip(FAILED_KEPT));
    for o in doomed {
        match backups.delete(&o.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error {
                    action: "deleting an EtcdBackup by retention",
                    source: e,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_database() {
        assert_eq!(backup_timeout(0), Duration::from_secs(600));
        assert_eq!(backup_timeout(1), Duration::from_secs(900));
        assert_eq!(backup_timeout(1 << 30), Duration::from_secs(900));
        assert_eq!(backup_timeout((8 << 30) + 1), Duration::from_secs(600 + 9 * 300));
    }

    fn cluster(uid: &str, deleting: bool) -> EtcdCluster {
        let mut c: EtcdCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": "main", "namespace": "ns", "uid": uid},
            "spec": {"size": 1},
        }))
        .unwrap();
        if deleting {
            c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ));
        }
        c
    }

    #[test]
    fn a_backup_whose_cluster_is_gone_fails_instead_of_waiting() {
        let live = cluster("u1", false);
        // Its own cluster, still there: go on.
        assert_eq!(cluster_gone(Some("u1"), Some(&live)), None);
        // Not yet seen (first pass): the cluster it finds becomes its own.
        assert_eq!(cluster_gone(None, Some(&live)), None);
        // Never seen and absent: the bounded wait for a late cluster decides, not this.
        assert_eq!(cluster_gone(None, None), None);
        // Seen, then deleted.
        assert!(cluster_gone(Some("u1"), None).unwrap().contains("deleted"));
        // Being deleted, whether seen or not.
        for recorded in [Some("u1"), None] {
            let why = cluster_gone(recorded, Some(&cluster("u1", true))).unwrap();
            assert!(why.contains("being deleted"), "{why}");
        }
        // Deleted and created again under the same name: not this backup's cluster any more.
        let why = cluster_gone(Some("u1"), Some(&cluster("u2", false))).unwrap();
        assert!(why.contains("created again") && why.contains("u1"), "{why}");
    }
}
