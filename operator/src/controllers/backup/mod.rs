//! The EtcdBackup controller: picks a healthy member (a follower when there is one), asks its sidecar
//! to take the backup, and polls it; the reconcile never waits on the upload. One backup per cluster
//! runs at a time. Succeeded and Failed are terminal. Backups to the default claim `<cluster>-backups`,
//! which members do not mount, are taken by a writer pod `<backup>-writer` that mounts it and reaches
//! the member over the network; it is deleted when the backup ends.
//!
//! Each pass observes (`observe_start`, `observe_poll`), decides with a pure plan (`plan`), and
//! carries out that one step.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use ouroboros_crds::{
    BackupPhase, BackupReference, DrillPhase, EtcdBackup, EtcdBackupStatus, EtcdCluster,
    sidecar::{JobEncryption, Manifest, server_identity},
};

use super::{encryption, kube_err, outcome::with_outcome_conditions};
use crate::{
    context::Context,
    member_access,
    metrics::ClusterLabels,
    objects::{self, BackupWriter},
    sidecar::SidecarAddr,
    vocabulary::{
        self, ANNOTATION_WRITER_MEMBER, LABEL_SCHEDULED, SIDECAR_PORT, backup_writer_name, ports_of,
    },
};

pub mod continuous;
pub mod continuous_plan;
#[cfg(test)]
mod continuous_tests;
mod destination;
mod drill;
pub mod drill_plan;
#[cfg(test)]
mod drill_tests;
pub mod plan;
mod retention;

pub use plan::{BACKUP_TIMEOUT, backup_timeout, cluster_gone};
use plan::{MemberPod, PollStep, StartStep, WriterPod};

/// Field manager for the cluster's `lastSuccessfulBackup`, separate from the cluster controller's.
const BACKUP_STATUS_MANAGER: &str = "ouroboros-operator-backups";

/// Why an EtcdBackup reconcile failed: a Kubernetes call, retried with backoff.
pub type Error = super::KubeCallError;

/// One pass for one EtcdBackup.
#[tracing::instrument(skip_all, fields(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any()))]
pub async fn reconcile(b: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile("etcdbackup");
    let status = b.status.as_ref();
    match status.and_then(|s| s.phase) {
        Some(BackupPhase::Succeeded) if drill::requested_again(&b) => drill::again(&b, &ctx).await,
        Some(BackupPhase::Succeeded) => match status.and_then(|s| s.drill) {
            Some(d) if d.is_final() => Ok(Action::await_change()),
            Some(_) => drill::reconcile(&b, &ctx).await,
            // Succeeded before drills existed, or with them off: drilled if they are on now.
            None => {
                let cluster =
                    Api::<EtcdCluster>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
                        .get_opt(&b.spec.cluster_name)
                        .await
                        .map_err(kube_err("reading the EtcdCluster"))?;
                if drill::wanted(&b, cluster.as_ref()) {
                    drill::reconcile(&b, &ctx).await
                } else {
                    Ok(Action::await_change())
                }
            }
        },
        Some(p) if p.is_terminal() => Ok(Action::await_change()),
        Some(BackupPhase::Running) => poll(&b, &ctx).await,
        Some(BackupPhase::Pending) | Some(_) | None => start(&b, &ctx).await,
    }
}

async fn write_status(ctx: &Context, b: &EtcdBackup, status: &EtcdBackupStatus) -> Result<(), Error> {
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let status = with_outcome_conditions(status, b.metadata.generation);
    let status = serde_json::to_value(&status)
        .map_err(|e| kube_err("writing EtcdBackup status")(kube::Error::SerdeError(e)))?;
    crate::cluster_writes::apply_status_of(&api, b, crate::FIELD_MANAGER, status)
        .await
        .map_err(kube_err("writing EtcdBackup status"))
}

async fn event(ctx: &Context, b: &EtcdBackup, type_: EventType, reason: &str, note: String) {
    ctx.publish(&b.object_ref(&()), type_, reason, note, None).await;
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
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
    // A backup that already ended keeps its verdict: a pass over a cached copy older than its end
    // (its writer already deleted, so "went away") must never turn a stored backup into a failed one.
    let fresh = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .get_opt(&b.name_any())
        .await
        .map_err(kube_err("reading the EtcdBackup"))?;
    let ended = fresh
        .filter(|f| f.metadata.uid == b.metadata.uid)
        .is_some_and(|f| {
            f.status
                .and_then(|s| s.phase)
                .is_some_and(|p| matches!(p, BackupPhase::Succeeded | BackupPhase::Failed))
        });
    if ended {
        return Ok(Action::await_change());
    }
    let current = b.status.clone().unwrap_or_default();
    let status = EtcdBackupStatus {
        phase: Some(BackupPhase::Failed),
        reason: Some(reason.clone()),
        location: None,
        completion_time: Some(now()),
        progress: None,
        ..current
    };
    write_status(ctx, b, &status).await?;
    // Whether or not one was made (a backup may fail before it needs one, or while waiting for it).
    delete_writer(ctx, b).await?;
    ctx.metrics.backups.failures.get_or_create(&labels(b)).inc();
    event(ctx, b, EventType::Warning, "BackupFailed", reason).await;
    Ok(Action::await_change())
}

/// Deletes the backup's writer pod, if it has one.
async fn delete_writer(ctx: &Context, b: &EtcdBackup) -> Result<(), Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    super::delete_if_present(
        pods.delete(&backup_writer_name(&b.name_any()), &Default::default())
            .await,
        "deleting the backup's writer pod",
    )
}

/// The backup's writer pod, if it exists.
async fn observe_writer(ctx: &Context, b: &EtcdBackup) -> Result<Option<WriterPod>, Error> {
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .get_opt(&backup_writer_name(&b.name_any()))
        .await
        .map_err(kube_err("reading the backup's writer pod"))?;
    Ok(pod.map(|p| {
        let status = p.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let unscheduled = super::unscheduled_message(&p);
        let age = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| jiff::Timestamp::now().duration_since(t.0))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        WriterPod {
            member: p
                .annotations()
                .get(ANNOTATION_WRITER_MEMBER)
                .cloned()
                .unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|_| phase == Some("Running")),
            age,
            unscheduled,
            gone: p.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Failed" | "Succeeded")),
        }
    }))
}

/// Creates the backup's writer pod (one that exists already is fine: the next look sees it).
async fn create_writer(
    ctx: &Context,
    b: &EtcdBackup,
    cluster: &EtcdCluster,
    member: &str,
    pod: &MemberPod,
    active_deadline: Duration,
) -> Result<Action, Error> {
    let writer = BackupWriter {
        backup: b,
        member,
        member_ip: &pod.ip,
        member_ports: pod.ports,
        active_deadline,
        as_root: pod.runs_as_root,
    };
    let mut built = match objects::backup_writer_pod(cluster, &ctx.images(), &writer) {
        Ok(p) => p,
        Err(e) => return fail(ctx, b, format!("{e}; nothing was backed up")).await,
    };
    // The writer dials the member with the client pair the member's own sidecar has, which the
    // member trusts (a renewal the operator refused never reaches it).
    if let Some(secret) = &pod.client_tls_secret {
        crate::certificate_copies::mount_client(&mut built, secret);
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    super::conflict_is_done(
        pods.create(&Default::default(), &built).await,
        "creating the backup's writer pod",
    )?;
    pending(
        ctx,
        b,
        format!(
            "starting writer pod {} to back up {member} to the default backup claim",
            built.name_any()
        ),
        2,
    )
    .await
}

fn labels(b: &EtcdBackup) -> ClusterLabels {
    ClusterLabels::new(&b.namespace().unwrap_or_default(), &b.spec.cluster_name)
}

fn sidecar_addr(pod: &MemberPod) -> SidecarAddr {
    SidecarAddr {
        addr: format!("{}:{}", pod.ip, pod.ports.sidecar),
        identity: pod.sidecar_identity.clone(),
    }
}

/// The pod of `member` of the backup's cluster, unless it is gone, going, or has no IP yet.
async fn member_pod(ctx: &Context, b: &EtcdBackup, member: &str) -> Result<Option<MemberPod>, Error> {
    member_pod_of(
        ctx,
        &b.namespace().unwrap_or_default(),
        &b.spec.cluster_name,
        member,
    )
    .await
}

/// The pod of `member` of `cluster` in `ns`, unless it is gone, going, or has no IP yet.
async fn member_pod_of(
    ctx: &Context,
    ns: &str,
    cluster: &str,
    member: &str,
) -> Result<Option<MemberPod>, Error> {
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
            // Members on data written by root run without the restricted settings.
            let runs_as_root = p
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.run_as_non_root)
                != Some(true);
            let client_tls_secret = p
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find(|v| v.name == "client-tls")
                .and_then(|v| v.secret.as_ref()?.secret_name.clone());
            Some(MemberPod {
                client_tls_secret,
                sidecar_identity: server_identity(ns, cluster),
                sidecar_serves_tls,
                runs_as_root,
                ports: ports_of(&p),
                ip: p.status?.pod_ip?,
                claims,
            })
        }))
}

/// The age recipients of the backup's (or its cluster's) encryption Secret, none, or why they
/// cannot be read.
async fn observe_encryption(
    ctx: &Context,
    b: &EtcdBackup,
    cluster: &EtcdCluster,
) -> Result<Result<Option<JobEncryption>, String>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let Some(e) = encryption::for_backup(b, cluster) else {
        return Ok(Ok(None));
    };
    Ok(
        match encryption::read_key(&ctx.client, &ns, &e.secret_name, encryption::RECIPIENT_KEY).await? {
            Ok(recipients) => Ok(Some(JobEncryption {
                recipients,
                secret: format!("{ns}/{}", e.secret_name),
            })),
            Err(why) => {
                let field = if b.spec.encryption.is_some() {
                    "spec.encryption"
                } else {
                    "the cluster's spec.backup.encryption"
                };
                Err(format!(
                    "{why}; {field} names it for the age public key of backups; nothing was backed up"
                ))
            }
        },
    )
}

/// The member's database size: it sets the deadline. It is dialled as the cluster controller dials
/// members, https with the operator's client certificate on TLS clusters (plain http there would be
/// refused, and every TLS backup would get the base deadline whatever its size). A member that does
/// not answer gives 0 (the base deadline), and its sidecar fails the backup soon enough.
async fn observe_db_size(ctx: &Context, cluster: &EtcdCluster, member: &str, pod: &MemberPod) -> u64 {
    match member_access::tls_material(&ctx.client, cluster).await {
        Ok(tls) => {
            let endpoint = member_access::member_endpoint(
                cluster,
                member,
                &pod.ip,
                pod.ports.client,
                tls.map(|t| t.client).as_ref(),
            );
            ctx.etcd
                .status(&endpoint)
                .await
                .map_or(0, |s| u64::try_from(s.db_size).unwrap_or(0))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no client certificate to size the database; the base deadline applies");
            0
        }
    }
}

/// Reads what starting a backup of the (existing) `cluster` looks at.
async fn observe_start(
    ctx: &Context,
    b: &EtcdBackup,
    cluster: &EtcdCluster,
) -> Result<plan::StartView, Error> {
    let ns = b.namespace().unwrap_or_default();
    let destination = destination::resolve(ctx, b, cluster).await?;
    let encryption = observe_encryption(ctx, b, cluster).await?;
    let backups = Api::<EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing EtcdBackups"))?;
    let running_other = backups
        .items
        .iter()
        .find(|o| {
            o.uid() != b.uid()
                && o.spec.cluster_name == b.spec.cluster_name
                && o.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Running)
        })
        .map(|o| o.name_any());
    let by_writer = destination.as_ref().ok().filter(|d| d.by_writer);
    let member = match by_writer.and_then(|d| d.claim.as_deref()) {
        // Members made before the default claim moved to writer pods still mount it: their own
        // sidecars write it, as before; the others' pods are read to find one.
        Some(claim) => {
            let mut candidates = Vec::new();
            for name in plan::member_candidates(cluster) {
                let pod = member_pod(ctx, b, &name).await?;
                candidates.push((name, pod));
            }
            plan::prefer_mounting(candidates, claim)
        }
        None => match plan::choose_member(cluster) {
            Some(name) => {
                let pod = member_pod(ctx, b, &name).await?;
                Some((name, pod))
            }
            None => None,
        },
    };
    let db_size = match &member {
        Some((name, Some(p))) => observe_db_size(ctx, cluster, name, p).await,
        Some((_, None)) | None => 0,
    };
    let writer = match by_writer {
        Some(_) => observe_writer(ctx, b).await?,
        None => None,
    };
    Ok(plan::StartView {
        slot: plan::slot_of(
            cluster,
            plan::SlotUser::Backup(&b.name_any()),
            &backups.items,
            jiff::Timestamp::now(),
        ),
        backup: (b.uid().unwrap_or_default(), b.name_any()),
        cluster: (cluster.name_any(), cluster.uid()),
        destination,
        encryption,
        running_other,
        member,
        writer,
        db_size,
        compression_level: cluster
            .spec
            .backup
            .as_ref()
            .map_or(1, |p| u32::try_from(p.compression_level).unwrap_or(1)),
        codec: cluster
            .spec
            .backup
            .as_ref()
            .and_then(|p| p.compression.as_ref())
            .map(|c| c.codec)
            .unwrap_or_default(),
    })
}

async fn start(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let recorded_uid = b.status.as_ref().and_then(|s| s.cluster_uid.as_deref());
    let step = if let Some(why) = cluster_gone(recorded_uid, cluster.as_ref()) {
        StartStep::Fail(format!("{why}; nothing was backed up"))
    } else if let Some(cluster) = &cluster {
        // Every status this pass writes records the cluster's UID: the backup's lineage, and how a
        // later pass tells that its cluster was deleted.
        let mut with_uid = b.clone();
        with_uid.status.get_or_insert_default().cluster_uid = cluster.uid();
        return start_with(ctx, &with_uid, cluster).await;
    } else {
        let waited = b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| jiff::Timestamp::now().duration_since(t.0));
        plan::absent_cluster_step(&ns, &b.spec.cluster_name, waited)
    };
    apply_start(ctx, b, step).await
}

async fn start_with(ctx: &Context, b: &EtcdBackup, cluster: &EtcdCluster) -> Result<Action, Error> {
    let view = observe_start(ctx, b, cluster).await?;
    match plan::start_step(view) {
        StartStep::CreateWriter {
            member,
            pod,
            active_deadline,
        } => create_writer(ctx, b, cluster, &member, &pod, active_deadline).await,
        step => apply_start(ctx, b, step).await,
    }
}

async fn apply_start(ctx: &Context, b: &EtcdBackup, step: StartStep) -> Result<Action, Error> {
    let (member, pod, writer, job, timeout) = match step {
        StartStep::Fail(why) => return fail(ctx, b, why).await,
        // Only a backup whose cluster exists gets a writer; `start_with` makes it.
        StartStep::CreateWriter { .. } => return Ok(Action::requeue(Duration::from_secs(2))),
        StartStep::DeleteWriter(why) => {
            delete_writer(ctx, b).await?;
            return pending(ctx, b, format!("{why}; deleted, a new one follows"), 2).await;
        }
        StartStep::Wait(why, retry) => return pending(ctx, b, why, retry).await,
        StartStep::TakeSlot { cluster_version } => {
            return take_slot(ctx, b, &b.name_any(), &cluster_version).await;
        }
        StartStep::Start {
            member,
            pod,
            writer,
            job,
            timeout,
        } => (member, pod, writer, job, timeout),
    };
    match ctx.sidecar.start(&sidecar_addr(&pod), &job).await {
        Ok(()) => {
            let started = jiff::Timestamp::now();
            let deadline = started
                .checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or_default())
                .unwrap_or(started);
            let status = EtcdBackupStatus {
                phase: Some(BackupPhase::Running),
                reason: Some(match &writer {
                    Some(w) => format!("streaming a snapshot of {member} through writer pod {w}"),
                    None => format!("streaming a snapshot of {member}"),
                }),
                member: Some(member.clone()),
                writer_pod: writer,
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
                format!("backing up from member {member}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Err(e @ (crate::sidecar::SidecarError::Busy(_) | crate::sidecar::SidecarError::Unreachable(..))) => {
            pending(ctx, b, e.to_string(), 5).await
        }
        Err(e) => fail(ctx, b, e.to_string()).await,
    }
}

/// Takes the cluster's backup slot for `holder` (the backup's name, or its drill's
/// [`plan::drill_holder`]) with a merge patch carrying the `resourceVersion` it was seen free at:
/// refused with 409 Conflict if the cluster changed since (another backup or drill may have taken
/// it), in which case the next look decides again.
async fn take_slot(
    ctx: &Context,
    b: &EtcdBackup,
    holder: &str,
    cluster_version: &str,
) -> Result<Action, Error> {
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": cluster_version,
        "annotations": {vocabulary::ANNOTATION_BACKUP_SLOT: holder},
    }});
    let result = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .patch(
            &b.spec.cluster_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    super::conflict_is_done(result, "taking the cluster's backup slot")?;
    Ok(Action::requeue(Duration::from_millis(200)))
}

/// Reads what polling a running backup looks at.
async fn observe_poll(ctx: &Context, b: &EtcdBackup) -> Result<plan::PollView, Error> {
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
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    let addr = match &current.writer_pod {
        // The writer runs on the pod network, with the cluster's sidecar certificate.
        Some(_) => observe_writer(ctx, b)
            .await?
            .filter(|w| !w.gone)
            .and_then(|w| w.ip)
            .map(|ip| SidecarAddr {
                addr: format!("{ip}:{SIDECAR_PORT}"),
                identity: server_identity(&ns, &b.spec.cluster_name),
            }),
        None => member_pod(ctx, b, &member).await?.map(|p| sidecar_addr(&p)),
    };
    let state = match addr {
        Some(addr) => {
            let state = ctx.sidecar.state(&addr, &b.uid().unwrap_or_default()).await;
            Some((addr, state))
        }
        None => None,
    };
    Ok(plan::PollView {
        member,
        writer: current.writer_pod.clone(),
        overdue: deadline.is_some_and(|d| jiff::Timestamp::now() > d),
        deadline: current.deadline,
        gone: cluster_gone(current.cluster_uid.as_deref(), cluster.as_ref()),
        state,
    })
}

async fn poll(b: &EtcdBackup, ctx: &Context) -> Result<Action, Error> {
    match plan::poll_step(observe_poll(ctx, b).await?) {
        PollStep::Fail(why) => fail(ctx, b, why).await,
        PollStep::Wait { secs, progress } => {
            let now = jiff::Timestamp::now();
            let current = b.status.clone().unwrap_or_default();
            let due = progress.and_then(|(streamed, total)| {
                plan::progress_due(current.progress.as_ref(), streamed, total, now)
            });
            if let Some(progress) = due {
                let status = EtcdBackupStatus {
                    progress: Some(progress),
                    ..current
                };
                write_status(ctx, b, &status).await?;
            }
            Ok(Action::requeue(Duration::from_secs(secs)))
        }
        PollStep::Abort(addr, why) => {
            let aborted = match ctx.sidecar.stop(&addr, &b.uid().unwrap_or_default()).await {
                Ok(()) => "the upload was aborted".to_owned(),
                Err(e) => {
                    format!("stopping the upload failed ({e}); the sidecar aborts it when its pod stops")
                }
            };
            fail(
                ctx,
                b,
                format!("{why} during the backup; {aborted}; nothing was committed"),
            )
            .await
        }
        PollStep::Succeed {
            addr,
            manifest,
            location,
        } => succeed(ctx, b, &addr, &manifest, location).await,
    }
}

/// Records a stored and verified backup, after retention ran while it still showed Running (so no
/// other backup of the cluster could start and have its upload taken for a leftover).
async fn succeed(
    ctx: &Context,
    b: &EtcdBackup,
    addr: &SidecarAddr,
    manifest: &Manifest,
    location: String,
) -> Result<Action, Error> {
    let current = b.status.clone().unwrap_or_default();
    let started = current
        .start_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    retention::apply_retention(ctx, b, addr).await?;
    let cluster = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .get_opt(&b.spec.cluster_name)
        .await
        .map_err(kube_err("reading the EtcdCluster"))?;
    // Pending with Succeeded, in one write: a `latest` restore never sees the new backup without
    // knowing its drill is coming.
    let drill = drill::wanted(b, cluster.as_ref()).then_some(DrillPhase::Pending);
    let completion = now();
    let status = EtcdBackupStatus {
        phase: Some(BackupPhase::Succeeded),
        reason: Some("stored and verified".into()),
        location: Some(location.clone()),
        raw_size: i64::try_from(manifest.raw_size).ok(),
        compressed_size: manifest.compressed_size.and_then(|s| i64::try_from(s).ok()),
        size: manifest.compressed_size.map(plan::human),
        sha256: Some(manifest.sha256.clone()),
        revision: i64::try_from(manifest.revision).ok(),
        etcd_version: Some(manifest.etcd_version.clone()),
        cluster_id: Some(manifest.cluster_id.clone()).filter(|id| !id.is_empty()),
        encrypted: manifest.encrypted,
        kv_hash: manifest.kv_hash.map(|h| i64::from(h.hash)),
        kv_hash_compact_revision: manifest
            .kv_hash
            .and_then(|h| i64::try_from(h.compact_revision).ok()),
        kv_hash_unavailable: manifest.kv_hash_unavailable.clone(),
        drill,
        verification_reason: drill.map(|_| "the restore drill waits to run".to_owned()),
        completion_time: Some(completion.clone()),
        progress: None,
        ..current
    };
    write_status(ctx, b, &status).await?;
    record_on_cluster(ctx, b, &location, manifest.revision, &completion).await?;
    // Retention ran through the writer, so it is deleted only now. Should this fail, the writer's
    // activeDeadlineSeconds (and its owner, this backup) still end it.
    delete_writer(ctx, b).await?;
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
            manifest.compressed_size.map(plan::human).unwrap_or_default()
        ),
    )
    .await;
    Ok(Action::await_change())
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
    // Onto the cluster read above only: its newest backup is no concern of a namesake made since.
    let status = serde_json::json!({"lastSuccessfulBackup": reference});
    crate::cluster_writes::apply_status_of(&api, &cluster, BACKUP_STATUS_MANAGER, status)
        .await
        .map_err(kube_err("recording the backup on the EtcdCluster"))
}
