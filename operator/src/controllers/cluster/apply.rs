//! Apply: carries out the one step decided, by server-side apply with the operator's field manager,
//! and says what it did in an Event. Each step is written so that stopping anywhere inside it leaves a
//! state the decision recognises and finishes (see the failpoints).

use k8s_openapi::api::{
    core::v1::{Node, ObjectReference, PersistentVolumeClaim, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::events::EventType,
};
use ouroboros_crds::{EtcdCluster, EtcdVersion};

use super::{
    decide::{RemoveReason, Step},
    observe::{Observation, member_name},
    placement,
};
use crate::{
    cluster_writes::{self, WriteError, apply},
    context::Context,
    etcd::EtcdError,
    failpoints, objects,
    vocabulary::{self, InitialClusterState, Placement},
};

/// Why applying a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An etcd call failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A shared write (server-side apply, the sidecars' certificate) failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// An object could not be built (a programming error; nothing was sent).
    #[error(transparent)]
    Build(#[from] crate::objects::BuildError),
    /// The member's claim name is taken by a claim of a deleted cluster of the same name, which the
    /// garbage collector has not removed yet; retried until it has.
    #[error(
        "claim {claim} belongs to a deleted EtcdCluster of the same name (uid {owner}) and is not used; \
         waiting for Kubernetes to garbage-collect it"
    )]
    ForeignClaim {
        /// The claim.
        claim: String,
        /// The UID of the cluster that owns it.
        owner: String,
    },
    /// A Secret of `spec.tls` could not be read while a member pod was made.
    #[error(transparent)]
    TlsSecret(#[from] crate::member_access::TlsSecretError),
    /// The leader to move leadership from has no reachable endpoint.
    #[error("leader {0} has no pod IP to send move-leader to")]
    NoLeaderEndpoint(String),
    /// The member to defragment has no reachable endpoint.
    #[error("member {0} has no pod IP to send defragment to")]
    NoMemberEndpoint(String),
    /// Listing what a placement is chosen from failed.
    #[error("listing {what} to place member {member}: {source}")]
    ListForPlacement {
        /// Nodes or pods.
        what: &'static str,
        /// The member being placed.
        member: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Reading whether a restore drill holds the backup slot failed (before a defragmentation).
    #[error("reading {what} before defragmenting: {source}")]
    ReadBeforeDefragment {
        /// The cluster or its EtcdBackups.
        what: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// No node can take a self-hosted member.
    #[error("placing self-hosted member {member}: {reason}")]
    NoPlacement {
        /// The member being placed.
        member: String,
        /// Why no node fits.
        reason: String,
    },
}

/// Objects every cluster has whatever its members: the Services, the PodDisruptionBudget and the
/// sidecars' certificate.
pub async fn ensure_cluster_objects(ctx: &Context, cluster: &EtcdCluster) -> Result<(), ApplyError> {
    cluster_writes::ensure_sidecar_tls(ctx, cluster).await?;
    let ns = cluster.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&services, &objects::headless_service(cluster)?, "Service").await?;
    apply(&services, &objects::client_service(cluster)?, "Service").await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    apply(
        &pdbs,
        &objects::pod_disruption_budget(cluster)?,
        "PodDisruptionBudget",
    )
    .await?;
    if let Some(pvc) = objects::default_backup_pvc(cluster).transpose()? {
        // Created once and never changed: a claim's spec is mostly immutable, and the user may have
        // resized it.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        if pvcs
            .get_opt(&pvc.name_any())
            .await
            .map_err(cluster_writes::kube_failed(
                "reading",
                "PersistentVolumeClaim",
                pvc.name_any(),
            ))?
            .is_none()
        {
            apply(&pvcs, &pvc, "PersistentVolumeClaim").await?;
        }
    }
    Ok(())
}

async fn start_member(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    version: EtcdVersion,
    state: InitialClusterState,
    initial_members: &[String],
) -> Result<(), ApplyError> {
    let ns = cluster.namespace().unwrap_or_default();
    record_ordinal(ctx, cluster, name).await?;
    let mut written_by_root = false;
    if let Some(mut pvc) = objects::member_pvc(cluster, name, version).transpose()? {
        let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
        let claim_name = pvc.name_any();
        let existing = claims
            .get_opt(&claim_name)
            .await
            .map_err(cluster_writes::kube_failed(
                "reading",
                "PersistentVolumeClaim",
                claim_name.clone(),
            ))?;
        if let Some(owner) = existing
            .as_ref()
            .and_then(|c| vocabulary::foreign_owner(&c.metadata, cluster))
        {
            return Err(ApplyError::ForeignClaim {
                claim: claim_name,
                owner,
            });
        }
        // Data written by root stays root's: the claim is not marked, and the member keeps root.
        written_by_root = existing.as_ref().is_some_and(vocabulary::written_by_root);
        if written_by_root && let Some(a) = pvc.metadata.annotations.as_mut() {
            a.remove(vocabulary::ANNOTATION_DATA_UID);
        }
        apply(&claims, &pvc, "PersistentVolumeClaim").await?;
    }
    let mut pod = objects::member_pod(cluster, &ctx.images(), name, version, state, initial_members)?;
    if written_by_root {
        objects::run_as_root(&mut pod);
    }
    crate::certificate_copies::mount_accepted(&ctx.client, cluster, &mut pod).await?;
    Ok(apply(&Api::<Pod>::namespaced(ctx.client.clone(), &ns), &pod, "Pod").await?)
}

/// Starts the pod of a member already in the membership (added but never started, or restarted on
/// its claim), joining the members etcd lists, or when none answers, those status last listed.
async fn start_existing_member(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
    name: &str,
    version: EtcdVersion,
) -> Result<(), ApplyError> {
    let names: Vec<String> = match &obs.observed.membership {
        Some(ms) => ms.members.iter().map(|m| m.name.clone()).collect(),
        None => obs.observed.known_members.clone(),
    };
    start_member(ctx, cluster, name, version, InitialClusterState::Existing, &names).await
}

/// Chooses the node and ports of a new self-hosted member.
async fn place(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
    member: &str,
) -> Result<Placement, ApplyError> {
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| ApplyError::ListForPlacement {
            what: "nodes",
            member: member.to_owned(),
            source,
        })?;
    let peer_ports: Vec<u16> = obs
        .members
        .iter()
        .filter_map(|m| m.peer_urls.first())
        .filter_map(|u| vocabulary::url_host_port(u)?.1)
        .collect();
    placement::choose(cluster, &nodes.items, &obs.pods, &peer_ports).map_err(|reason| {
        ApplyError::NoPlacement {
            member: member.to_owned(),
            reason,
        }
    })
}

/// Starts a self-hosted member. Its pod is created before the member is added: the pod is the record
/// of the member's node and ports (etcd only knows its URL). A crash between the two leaves a pod
/// without a member, which the next reconcile deletes; a member added whose pod is then lost before
/// it starts is removed.
async fn start_self_hosted_member(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
    name: &str,
    version: EtcdVersion,
    state: InitialClusterState,
) -> Result<Option<u64>, ApplyError> {
    let ns = cluster.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = obs
        .pods
        .iter()
        .find(|p| p.name_any() == name && p.metadata.deletion_timestamp.is_none());
    // A join etcd refused earlier is retried with the pod made for it, wherever it was placed.
    let placement = match existing.and_then(placement_of) {
        Some(p) => p,
        None => place(ctx, cluster, obs, name).await?,
    };
    let peer_url = placement.peer_url(cluster);
    let mut initial: Vec<String> = match state {
        InitialClusterState::New => Vec::new(),
        InitialClusterState::Existing => obs
            .observed
            .membership
            .iter()
            .flat_map(|ms| ms.members.iter())
            .filter_map(|m| {
                let listed = obs.members.iter().find(|l| l.id == m.id)?;
                Some(format!("{}={}", m.name, listed.peer_urls.first()?))
            })
            .collect(),
    };
    initial.push(format!("{name}={peer_url}"));
    let mut pod = objects::self_hosted_member_pod(
        cluster,
        &ctx.images(),
        name,
        version,
        state,
        &initial.join(","),
        &placement,
    )?;
    crate::certificate_copies::mount_accepted(&ctx.client, cluster, &mut pod).await?;
    match existing {
        // Its flags no longer match the membership (a member came or went since): start afresh.
        Some(old) if initial_cluster_arg(old) != initial_cluster_arg(&pod) => {
            delete_member_objects(ctx, cluster, obs, name).await?;
            return Ok(None);
        }
        Some(_) => {}
        None => {
            record_ordinal(ctx, cluster, name).await?;
            apply(&pods, &pod, "Pod").await?;
        }
    }
    failpoints::hit("after-self-hosted-pod");
    let id = match state {
        InitialClusterState::New => None,
        InitialClusterState::Existing => Some(ctx.etcd.add_learner(&obs.endpoint_list(), &peer_url).await?.0),
    };
    event(
        ctx,
        cluster,
        EventType::Normal,
        if id.is_some() {
            "LearnerAdded"
        } else {
            "SeedCreated"
        },
        Some(name),
        format!(
            "started self-hosted member {name}{} on node {} ({peer_url}), etcd {version}",
            id.map(|id| format!(" ({id:x}) as a learner")).unwrap_or_default(),
            placement.node
        ),
    )
    .await;
    Ok(id)
}

/// Sets the voter label of each member pod to what the membership says, so the client Service sends
/// clients to voting members only. A pod whose member is not listed is left as it is.
pub async fn sync_voter_labels(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
) -> Result<(), ApplyError> {
    let Some(ms) = &obs.observed.membership else {
        return Ok(());
    };
    let ns = cluster.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for p in &obs.observed.pods {
        let Some(m) = ms.members.iter().find(|m| m.name == p.name) else {
            continue;
        };
        let want = (!m.is_learner).to_string();
        if p.voter_label.as_deref() == Some(want.as_str()) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"labels": {vocabulary::LABEL_VOTER: want}}});
        pods.patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(cluster_writes::kube_failed("labelling", "Pod", p.name.clone()))?;
    }
    Ok(())
}

/// Writes the template record onto member pods built before it existed whose images are the current
/// ones: they were judged current by what can be seen of them, and from now on a change of
/// `spec.pod` or the images is seen on them as on every other pod. A metadata patch; nothing restarts.
pub async fn record_templates(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
) -> Result<(), ApplyError> {
    let unrecorded: Vec<&str> = obs
        .observed
        .pods
        .iter()
        .filter(|p| !p.template_recorded && p.template_current)
        .map(|p| p.name.as_str())
        .collect();
    if unrecorded.is_empty() {
        return Ok(());
    }
    let digest = objects::template_digest(cluster, &ctx.images());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {vocabulary::ANNOTATION_TEMPLATE: digest}}});
    for name in unrecorded {
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // Gone since it was observed (this pass's step deleted it): its successor is built
            // with the record.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            r => {
                r.map_err(cluster_writes::kube_failed(
                    "recording the template on",
                    "Pod",
                    name.to_owned(),
                ))?;
            }
        }
    }
    Ok(())
}

/// Records on the cluster, before the member's pod or claim exists, that its ordinal is taken: a
/// member name is never used twice, so a replacement is never mistaken for the member it replaced
/// (in Events, metrics, runbooks), and a self-hosted member never finds an older member's data
/// directory on its node.
async fn record_ordinal(ctx: &Context, cluster: &EtcdCluster, name: &str) -> Result<(), ApplyError> {
    cluster_writes::record_ordinal_taken(ctx, cluster, name)
        .await
        .map_err(cluster_writes::kube_failed(
            "recording the next ordinal on",
            "EtcdCluster",
            cluster.name_any(),
        ))?;
    Ok(())
}

/// Records on the cluster the revision its history was compacted to, so the next pass goes on to
/// defragmentation instead of compacting again.
async fn record_compaction(ctx: &Context, cluster: &EtcdCluster, revision: i64) -> Result<(), ApplyError> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        vocabulary::ANNOTATION_COMPACTED_REVISION: revision.to_string()}}});
    cluster_writes::annotate_cluster(ctx, cluster, &patch)
        .await
        .map_err(cluster_writes::kube_failed(
            "recording the compaction on",
            "EtcdCluster",
            cluster.name_any(),
        ))?;
    Ok(())
}

/// What the operator records of a defragmentation on the member's pod.
enum DefragRecord {
    /// It starts now: the threshold waits a while before it defragments the member again, and a
    /// restore drill waits until it ends.
    Started,
    /// It ended well, at this revision of the member's when known (NOSPACE recovery defragments a
    /// member once per compaction, and retries one that failed).
    Ended(Option<i64>),
    /// The start just recorded did not happen (it yielded to a restore drill): taken back, so
    /// nothing waits for it and the member stays due.
    Withdrawn,
}

async fn record_defragmentation(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    record: DefragRecord,
) -> Result<(), ApplyError> {
    let now = jiff::Timestamp::now().to_string();
    let annotations = match record {
        DefragRecord::Started => serde_json::json!({vocabulary::ANNOTATION_DEFRAGMENTED_AT: now}),
        DefragRecord::Ended(None) => {
            serde_json::json!({vocabulary::ANNOTATION_DEFRAGMENTATION_ENDED_AT: now})
        }
        DefragRecord::Withdrawn => serde_json::json!({vocabulary::ANNOTATION_DEFRAGMENTED_AT: null}),
        DefragRecord::Ended(Some(r)) => serde_json::json!({
            vocabulary::ANNOTATION_DEFRAGMENTATION_ENDED_AT: now,
            vocabulary::ANNOTATION_DEFRAGMENTED_REVISION: r.to_string()}),
    };
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    Api::<Pod>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(cluster_writes::kube_failed(
            "recording the defragmentation on",
            "Pod",
            name,
        ))?;
    Ok(())
}

/// The backup whose restore drill holds the cluster's backup slot, read afresh (not from the
/// observation this pass decided on).
async fn drill_holding_now(ctx: &Context, cluster: &EtcdCluster) -> Result<Option<String>, ApplyError> {
    let ns = cluster.namespace().unwrap_or_default();
    let failed = |what| move |source| ApplyError::ReadBeforeDefragment { what, source };
    let fresh = Api::<EtcdCluster>::namespaced(ctx.client.clone(), &ns)
        .get(&cluster.name_any())
        .await
        .map_err(failed("the EtcdCluster"))?;
    let backups = Api::<ouroboros_crds::EtcdBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&kube::api::ListParams::default())
        .await
        .map_err(failed("the EtcdBackups"))?;
    Ok(crate::controllers::backup::plan::drill_holding(
        &fresh,
        &backups.items,
        jiff::Timestamp::now(),
    ))
}

/// Where an existing self-hosted member pod was placed, from its node and annotations.
fn placement_of(pod: &Pod) -> Option<Placement> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let peer = pod.annotations().get(vocabulary::ANNOTATION_PEER_URL)?;
    let (host, _) = vocabulary::url_host_port(peer)?;
    Some(Placement {
        node,
        ip: host.to_owned(),
        ports: vocabulary::ports_of(pod),
    })
}

fn initial_cluster_arg(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix("--initial-cluster=").map(str::to_owned))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Deletes a member's pod only, keeping its data claim; "already gone" is success. `force` skips the
/// grace period, for a pod on a lost node whose kubelet will never confirm its end.
async fn delete_member_pod(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    force: bool,
) -> Result<(), ApplyError> {
    let ns = cluster.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = if force {
        DeleteParams::default().grace_period(0)
    } else {
        DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Err(e) if !is_not_found(&e) => Err(cluster_writes::kube_failed("deleting", "Pod", name)(e).into()),
        _ => Ok(()),
    }
}

/// Marks a member's claim retired (`etcd.ouroboros.dev/retired`): no member's data any more, and
/// never deleted by the operator. Done before the member leaves etcd, so that an operator stopped
/// in between finds the claim already kept whatever became of the node.
async fn retire_claim(
    ctx: &Context,
    cluster: &EtcdCluster,
    name: &str,
    why: String,
) -> Result<(), ApplyError> {
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let pvc = vocabulary::pvc_name(name);
    let patch = serde_json::json!({"metadata": {"annotations": {vocabulary::ANNOTATION_RETIRED: why}}});
    match pvcs
        .patch(&pvc, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(e) if !is_not_found(&e) => {
            Err(cluster_writes::kube_failed("retiring", "PersistentVolumeClaim", pvc)(e).into())
        }
        _ => Ok(()),
    }
}

fn node_lost_why(name: &str, node: &str) -> String {
    format!("member {name} was removed while its node {node} was lost")
}

/// Deletes a member's pod and its PVC; "already gone" is success. A retired claim is kept (its data
/// may still be on its lost node; deleting the claim could let a provisioner wipe it when the node
/// returns), and so is the claim of a member whose node is lost now, which is retired instead. A pod
/// on a lost node is force-deleted, as its kubelet cannot finish a graceful deletion (its member has
/// already left etcd's membership, so its etcd, should it still run, has no cluster to rejoin).
async fn delete_member_objects(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
    name: &str,
) -> Result<(), ApplyError> {
    let ns = cluster.namespace().unwrap_or_default();
    let lost_node = obs.observed.node_losses.iter().find(|l| l.member == name);
    delete_member_pod(ctx, cluster, name, lost_node.is_some()).await?;
    if cluster.spec.storage.persistent_volume_claim.is_none() {
        return Ok(());
    }
    if let Some(loss) = lost_node {
        return retire_claim(ctx, cluster, name, node_lost_why(name, &loss.node)).await;
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = vocabulary::pvc_name(name);
    let failed = |e| cluster_writes::kube_failed("deleting", "PersistentVolumeClaim", pvc.clone())(e);
    let current = match pvcs.get_opt(&pvc).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => return Err(failed(e).into()),
    };
    if current.annotations().contains_key(vocabulary::ANNOTATION_RETIRED) {
        return Ok(());
    }
    // Conditional on what was read: a claim retired since is not deleted.
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: current.resource_version(),
            uid: current.uid(),
        }),
        ..DeleteParams::default()
    };
    match pvcs.delete(&pvc, &params).await {
        Err(e) if !is_not_found(&e) => Err(failed(e).into()),
        _ => Ok(()),
    }
}

/// Publishes an Event on the cluster. The member's pod is the related object: the recorder folds
/// Events with the same reason and related object into one series, and without it every member's
/// "LearnerAdded" would show the first member's message.
async fn event(
    ctx: &Context,
    cluster: &EtcdCluster,
    type_: EventType,
    reason: &str,
    member: Option<&str>,
    note: String,
) {
    let secondary = member.map(|m| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(m.to_owned()),
        namespace: cluster.namespace(),
        ..Default::default()
    });
    ctx.publish(&cluster.object_ref(&()), type_, reason, note, secondary)
        .await;
}

/// Carries out `step`.
pub async fn apply_step(
    ctx: &Context,
    cluster: &EtcdCluster,
    obs: &Observation,
    step: &Step,
) -> Result<(), ApplyError> {
    let endpoints = obs.endpoint_list();
    match step {
        Step::Held(_) | Step::Converged | Step::WaitForMembers { .. } => Ok(()),
        Step::WaitForLearner { name } => {
            // etcd 3.6 does not count a snapshot the learner received as applied. On an idle
            // cluster nothing follows it, and the learner refuses its own publish ("too many
            // requests") forever; one more entry in the log lets it apply past the snapshot.
            if let Err(error) = ctx.etcd.propose_noop(&obs.endpoints_except(name)).await {
                tracing::debug!(%error, learner = %name, "no-op entry for the learner not proposed; trying at the next look");
            }
            Ok(())
        }
        Step::NoQuorum {
            healthy_voters,
            voters,
            ..
        } => {
            event(
                ctx,
                cluster,
                EventType::Warning,
                "QuorumLost",
                None,
                format!(
                    "{healthy_voters} of {voters} voting members answer; membership changes are suspended"
                ),
            )
            .await;
            Ok(())
        }
        Step::CreateSeed { name, version } if cluster.spec.self_hosted.is_some() => {
            start_self_hosted_member(ctx, cluster, obs, name, *version, InitialClusterState::New)
                .await
                .map(drop)
        }
        Step::AddLearner { name, version, .. } if cluster.spec.self_hosted.is_some() => {
            start_self_hosted_member(ctx, cluster, obs, name, *version, InitialClusterState::Existing)
                .await
                .map(drop)
        }
        Step::WaitForBoot { .. } => Ok(()),
        Step::BootInvalid { reason } => {
            event(
                ctx,
                cluster,
                EventType::Warning,
                "BootClusterInvalid",
                None,
                reason.clone(),
            )
            .await;
            Ok(())
        }
        Step::RemoveBootMember { id, name } => {
            // Through our members only: the boot member is the one leaving.
            let ours = obs.endpoints_except(name);
            ctx.etcd.remove(&ours, *id).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "BootMemberRemoved",
                None,
                format!(
                    "removed the boot member {name} ({id:x}); the cluster runs on its self-hosted members: {}",
                    ours.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(",")
                ),
            )
            .await;
            Ok(())
        }
        Step::CreateSeed { name, version } => {
            start_member(
                ctx,
                cluster,
                name,
                *version,
                InitialClusterState::New,
                std::slice::from_ref(name),
            )
            .await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "SeedCreated",
                Some(name),
                format!("started seed member {name} on etcd {version}"),
            )
            .await;
            Ok(())
        }
        Step::AddLearner {
            name,
            version,
            for_upgrade,
        } => {
            let peer = vocabulary::peer_url(cluster, name);
            // Its pod must be able to start on certificates the operator accepts before it joins.
            crate::certificate_copies::accepted_for(&ctx.client, cluster, name).await?;
            let (id, members) = ctx.etcd.add_learner(&endpoints, &peer).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "LearnerAdded",
                Some(name),
                format!(
                    "added learner {name} ({id:x}) on etcd {version}{}",
                    if *for_upgrade {
                        " to upgrade the cluster"
                    } else {
                        ""
                    }
                ),
            )
            .await;
            failpoints::hit("after-member-add");
            let names: Vec<String> = members.iter().filter_map(member_name).collect();
            start_member(
                ctx,
                cluster,
                name,
                *version,
                InitialClusterState::Existing,
                &names,
            )
            .await
        }
        Step::CreateMemberPod { name, version } => {
            start_existing_member(ctx, cluster, obs, name, *version).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "MemberPodCreated",
                Some(name),
                format!("started the pod of added member {name}"),
            )
            .await;
            Ok(())
        }
        Step::RestartMember { name, version } => {
            // The member's data is on its claim: etcd starts from it and ignores the initial
            // membership, so the member comes back with its own ID and every write it had.
            start_existing_member(ctx, cluster, obs, name, *version).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "MemberRestarted",
                Some(name),
                format!(
                    "started a new pod for member {name} on its own data (claim {}); it keeps its member ID",
                    vocabulary::pvc_name(name)
                ),
            )
            .await;
            Ok(())
        }
        Step::DeleteTerminatedPod { name } => {
            delete_member_pod(ctx, cluster, name, false).await?;
            event(
                ctx,
                cluster,
                EventType::Warning,
                "MemberPodTerminated",
                Some(name),
                format!(
                    "the pod of member {name} terminated; deleted it to restart the member on its data (claim {})",
                    vocabulary::pvc_name(name)
                ),
            )
            .await;
            Ok(())
        }
        Step::PromoteLearner { id, name } => match ctx.etcd.promote(&endpoints, *id).await {
            Ok(()) => {
                failpoints::hit("after-promote");
                event(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "LearnerPromoted",
                    Some(name),
                    format!("promoted {name} to voting member"),
                )
                .await;
                Ok(())
            }
            // etcd has the last word on whether the learner is in sync; not yet is not an error.
            Err(e) if e.is_learner_not_ready() => Ok(()),
            Err(e) => Err(e.into()),
        },
        Step::RemoveMember { id, name, reason } => {
            if *reason == RemoveReason::NodeLost
                && let Some(loss) = obs.observed.node_losses.iter().find(|l| &l.member == name)
            {
                retire_claim(ctx, cluster, name, node_lost_why(name, &loss.node)).await?;
            }
            // Data a member was removed over (a copy that differs from the majority's, or one etcd
            // will not start on, which may be the failed corruption check at start) is kept for
            // whoever investigates: never a member's data again, never a backup source.
            // A learner's data is a partial copy of the others': deleted as before, or a learner that
            // crash-loops for another reason (a setting, memory) would leave a claim per retry.
            let learner = obs
                .observed
                .membership
                .as_ref()
                .is_some_and(|ms| ms.members.iter().any(|m| m.id == *id && m.is_learner));
            let kept_why = match reason {
                RemoveReason::Corrupt => Some("its data differed from the majority's"),
                RemoveReason::CrashLooping if !learner => Some("etcd kept crashing on its data"),
                _ => None,
            };
            if let Some(why) = kept_why
                && cluster.spec.storage.persistent_volume_claim.is_some()
            {
                retire_claim(ctx, cluster, name, format!("member {name} was removed: {why}")).await?;
            }
            ctx.etcd.remove(&endpoints, *id).await?;
            let (type_, why) = match reason {
                RemoveReason::ScaleDown => (EventType::Normal, "the cluster is larger than spec.size"),
                RemoveReason::Upgrade => (
                    EventType::Normal,
                    "it runs the old version and its replacement has joined",
                ),
                RemoveReason::PodGone => (EventType::Warning, "its pod is gone"),
                RemoveReason::PodTerminated => (EventType::Warning, "its pod terminated"),
                RemoveReason::CrashLooping => (
                    EventType::Warning,
                    "it keeps crashing; its claim (if any) is kept, annotated etcd.ouroboros.dev/retired",
                ),
                RemoveReason::VolumeLost => (EventType::Warning, "its data volume was lost"),
                RemoveReason::LearnerTimedOut => {
                    (EventType::Warning, "as a learner it did not catch up in time")
                }
                RemoveReason::NodeLost => (
                    EventType::Warning,
                    "its node has been lost for longer than replaceAfterNodeLost; its claim is kept, annotated etcd.ouroboros.dev/retired, and a new member replaces it",
                ),
                RemoveReason::Corrupt => (
                    EventType::Warning,
                    "its data failed etcd's corruption check; its claim (if any) is kept, annotated etcd.ouroboros.dev/retired, and a new member copies the healthy majority's data",
                ),
                RemoveReason::Reconfigure => (
                    EventType::Normal,
                    "it runs old spec.etcd settings or certificates and its replacement has joined",
                ),
            };
            event(
                ctx,
                cluster,
                type_,
                "MemberRemoved",
                Some(name),
                format!("removed member {name} ({id:x}): {why}"),
            )
            .await;
            failpoints::hit("after-member-remove");
            delete_member_objects(ctx, cluster, obs, name).await
        }
        Step::DeleteOrphanPod { name } => {
            delete_member_objects(ctx, cluster, obs, name).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "OrphanPodDeleted",
                Some(name),
                format!("deleted pod {name}, which is not a member"),
            )
            .await;
            Ok(())
        }
        Step::RestartWithSettings { name } => {
            let view = obs.observed.pods.iter().find(|p| p.name == *name);
            let onto = view.map_or_else(
                || "the spec.etcd settings".to_owned(),
                super::status::outdated_parts,
            );
            delete_member_pod(ctx, cluster, name, false).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "MemberRestartingForSettings",
                Some(name),
                format!(
                    "deleted the pod of {name} to restart it on its own data (claim {}) with {onto}",
                    vocabulary::pvc_name(name)
                ),
            )
            .await;
            Ok(())
        }
        Step::Compact { revision } => {
            let compacted = ctx.etcd.compact(&endpoints, *revision).await?;
            failpoints::hit("after-compact");
            record_compaction(ctx, cluster, *revision).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "Compacted",
                None,
                if compacted {
                    format!("compacted the history up to revision {revision} to recover from NOSPACE")
                } else {
                    format!("the history was already compacted up to revision {revision}")
                },
            )
            .await;
            Ok(())
        }
        Step::Defragment { id, name, why } => {
            let ep = obs
                .endpoint_of(name)
                .ok_or_else(|| ApplyError::NoMemberEndpoint(name.clone()))?;
            let status = obs.statuses.iter().find(|(i, _)| i == id).map(|(_, s)| s);
            let before = status.map(|s| s.db_size);
            // Recorded first: a defragmentation cut short (the member restarted under it) is not
            // tried again at once, and a member that cannot finish one is not held in a loop.
            record_defragmentation(ctx, cluster, name, DefragRecord::Started).await?;
            // A drill checks for a recorded start before it takes the backup slot; this checks for
            // a drill's hold after recording the start: each sees the other, so a drill and a
            // defragmentation by threshold never run together. NOSPACE recovery does not yield.
            if why == super::maintenance::BY_THRESHOLD
                && let Some(drill) = drill_holding_now(ctx, cluster).await?
            {
                record_defragmentation(ctx, cluster, name, DefragRecord::Withdrawn).await?;
                tracing::info!(member = %name, %drill, "defragmentation yields to a restore drill holding the backup slot");
                return Ok(());
            }
            event(
                ctx,
                cluster,
                EventType::Normal,
                "Defragmenting",
                Some(name),
                format!("defragmenting {name} {why}; it serves no request until it is done"),
            )
            .await;
            let started = std::time::Instant::now();
            ctx.etcd.defragment(ep).await?;
            let took = started.elapsed();
            failpoints::hit("after-defragment");
            // The end is recorded even without a revision to record: a drill waits for it.
            record_defragmentation(
                ctx,
                cluster,
                name,
                DefragRecord::Ended(status.map(|s| s.revision)),
            )
            .await?;
            let after = ctx.etcd.status(ep).await.ok().map(|s| s.db_size);
            ctx.metrics
                .record_defragmentation(&super::metrics_key(cluster), took);
            let mib = |b: Option<i64>| b.map_or_else(|| "?".to_owned(), |b| (b >> 20).to_string());
            event(
                ctx,
                cluster,
                EventType::Normal,
                "Defragmented",
                Some(name),
                format!(
                    "defragmented {name} {why} in {:.1}s: {} MiB -> {} MiB",
                    took.as_secs_f64(),
                    mib(before),
                    mib(after)
                ),
            )
            .await;
            Ok(())
        }
        Step::DisarmAlarm { member_id, kind } => {
            ctx.etcd.disarm(&endpoints, *member_id, *kind).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "AlarmDisarmed",
                None,
                format!(
                    "disarmed the {} alarm of member {member_id:x}; its cause is gone",
                    kind.etcd_name()
                ),
            )
            .await;
            Ok(())
        }
        Step::MaintenanceBlocked { .. } => Ok(()),
        Step::MoveLeader { from, to_id, to } => {
            let ep = obs
                .endpoint_of(from)
                .ok_or_else(|| ApplyError::NoLeaderEndpoint(from.clone()))?;
            ctx.etcd.move_leader(ep, *to_id).await?;
            event(
                ctx,
                cluster,
                EventType::Normal,
                "LeaderMoved",
                Some(from),
                format!("moved leadership from {from} to {to}"),
            )
            .await;
            Ok(())
        }
    }
}
