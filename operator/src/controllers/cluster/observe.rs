//! Observe: everything the decision needs, read once per reconcile. Kubernetes gives the pods and
//! their volumes; etcd gives the membership (through any member that answers) and each member's status
//! (asked of that member alone).

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::{Api, ResourceExt, api::ListParams};
use ouroboros_crds::{EtcdCluster, EtcdVersion};

use super::decide::{
    BootView, CRASH_LOOP_RESTARTS, ClaimView, DEFAULT_REPLACE_AFTER_NODE_LOST, DataHome, DataRefusal,
    DefragThreshold, Desired, MaintenanceView, MemberHealth, MemberView, Membership, NodeLoss, Observed,
    PodState, PodView,
};
use crate::{
    certificates::CertificateReport,
    etcd::{Endpoint, EtcdError, EtcdOps, Status},
    member_access,
    vocabulary::{self, Images, LABEL_VERSION},
};

/// What was observed, with the raw details status reports on.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The input of the decision.
    pub observed: Observed,
    /// etcd cluster ID, when a member answered.
    pub cluster_id: Option<u64>,
    /// Each member's status answer, by member ID.
    pub statuses: Vec<(u64, Status)>,
    /// Client endpoints (pod IPs) of the member pods, by member name; during a self-hosted pivot also
    /// the boot member's.
    pub endpoints: Vec<(String, Endpoint)>,
    /// The membership as etcd listed it, with the real URLs.
    pub members: Vec<crate::etcd::Member>,
    /// The cluster's pods as listed, for what the views leave out (self-hosted placement).
    pub pods: Vec<Pod>,
    /// Why the membership could not be read, when it could not.
    pub membership_error: Option<String>,
    /// With `spec.tls`: the certificates its Secrets hold, checked against the members' names.
    pub certificates: Option<CertificateReport>,
}

impl Observation {
    /// Client endpoints of every member pod that has an IP.
    pub fn endpoint_list(&self) -> Vec<Endpoint> {
        self.endpoints.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Every member's client endpoint but `member`'s.
    pub fn endpoints_except(&self, member: &str) -> Vec<Endpoint> {
        self.endpoints
            .iter()
            .filter(|(n, _)| n != member)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The client endpoint of one member.
    pub fn endpoint_of(&self, member: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|(n, _)| n == member).map(|(_, e)| e)
    }
}

/// Why observing failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Reading the cluster's pods, PVCs or its members' nodes failed.
    #[error("reading {what} of cluster {cluster}: {source}")]
    List {
        /// Pods, PVCs or nodes.
        what: &'static str,
        /// Cluster name.
        cluster: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// `spec.version` does not parse (the schema should have refused it).
    #[error("spec.version {0:?} is not an etcd version")]
    Version(String),
    /// A TLS Secret named in `spec.tls` (or the boot member's) is missing or incomplete.
    #[error(transparent)]
    TlsSecret(#[from] member_access::TlsSecretError),
}

/// Whether status records that the boot member has been removed: from then on the boot endpoint is
/// never asked again (a boot etcd left running elsewhere is not this cluster).
pub fn boot_member_removed(cluster: &EtcdCluster) -> bool {
    cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ouroboros_crds::condition_types::BOOT_MEMBER_REMOVED && c.status == "True")
    })
}

/// The boot member's endpoint while a pivot may still be under way.
async fn boot_endpoint(
    client: &kube::Client,
    cluster: &EtcdCluster,
) -> Result<Option<Endpoint>, ObserveError> {
    let Some(sh) = &cluster.spec.self_hosted else {
        return Ok(None);
    };
    let url = sh.boot_member_client_endpoint.trim_end_matches('/');
    if url.is_empty() || boot_member_removed(cluster) {
        return Ok(None);
    }
    let Some(secret) = &sh.boot_member_client_tls_secret else {
        return Ok(Some(Endpoint::plain(url)));
    };
    let ns = cluster.namespace().unwrap_or_default();
    let tls =
        member_access::read_tls_secret(client, &ns, secret, "spec.selfHosted.bootMemberClientTlsSecret")
            .await?;
    // The boot member is dialled by the URL it was given, so its certificate must name that host.
    let host = vocabulary::url_host_port(url).map_or("", |(h, _)| h).to_owned();
    Ok(Some(Endpoint {
        url: url.to_owned(),
        tls: Some((host, Arc::new(tls))),
    }))
}

/// What observing reads from Kubernetes: the cluster's pods and (this cluster's) claims, the
/// operator's client certificate, and the boot member's endpoint.
#[derive(Clone, Debug, Default)]
pub struct KubeRead {
    /// Pods labelled with the cluster.
    pub pods: Vec<Pod>,
    /// Claims labelled with the cluster and not owned by another (with PVC storage).
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// With `spec.tls`: what its Secrets hold, and the certificate sets the pods mount.
    pub tls: Option<crate::certificate_copies::CertificateInputs>,
    /// The boot member, while a pivot may still be under way.
    pub boot: Option<Endpoint>,
    /// The nodes its member pods run on (with PVC storage, to tell when a member's node is lost).
    pub nodes: Vec<Node>,
    /// Members a backup of this cluster is streaming from now (its status names the member and it
    /// has not finished).
    pub backup_sources: Vec<String>,
    /// Backups of this cluster whose restore drill runs now.
    pub drills_running: Vec<String>,
}

/// Reads pods, PVCs and etcd's view of `cluster`.
pub async fn observe(
    client: &kube::Client,
    etcd: &dyn EtcdOps,
    cluster: &EtcdCluster,
    images: &Images,
    now: jiff::Timestamp,
) -> Result<Observation, ObserveError> {
    let read = read_kubernetes(client, cluster).await?;
    assemble(etcd, cluster, read, images, now).await
}

/// The Kubernetes half of observing.
pub async fn read_kubernetes(client: &kube::Client, cluster: &EtcdCluster) -> Result<KubeRead, ObserveError> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let lp = ListParams::default().labels(&vocabulary::cluster_selector(cluster));
    let failed = |what: &'static str| {
        let cluster = name.clone();
        move |source| ObserveError::List {
            what,
            cluster,
            source,
        }
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&lp)
        .await
        .map_err(failed("pods"))?;
    let uses_pvc = cluster.spec.storage.persistent_volume_claim.is_some();
    let pvcs = if uses_pvc {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(failed("PVCs"))?
            .items
            .into_iter()
            // A deleted namesake's claims are not this cluster's data, whatever their names.
            .filter(|c| vocabulary::foreign_owner(&c.metadata, cluster).is_none())
            .collect()
    } else {
        Vec::new()
    };
    // The nodes the members run on, to tell whether one is lost: a GET each, not a list of every
    // Node in the cluster at every pass.
    let mut nodes = Vec::new();
    if uses_pvc && cluster.spec.self_hosted.is_none() {
        let names: std::collections::BTreeSet<&str> = pods
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
            .collect();
        let api = Api::<Node>::all(client.clone());
        for node in names {
            nodes.extend(api.get_opt(node).await.map_err(failed("nodes"))?);
        }
    }
    let tls = crate::certificate_copies::read_inputs(client, cluster, &pods.items).await?;
    let boot = boot_endpoint(client, cluster).await?;
    let backups: Vec<ouroboros_crds::EtcdBackup> =
        Api::<ouroboros_crds::EtcdBackup>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(failed("EtcdBackups"))?
            .items
            .into_iter()
            .filter(|b| b.spec.cluster_name == name)
            .collect();
    let backup_sources = backups
        .iter()
        .filter_map(|b| {
            let s = b.status.as_ref()?;
            let running = s.phase.is_none_or(|p| !p.is_terminal());
            running.then(|| s.member.clone())?
        })
        .collect();
    // Drills that run, and one that holds the backup slot to start (it checked for a
    // defragmentation before taking it; from now on the threshold yields to it).
    let mut drills_running: Vec<String> = backups
        .iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.drill) == Some(ouroboros_crds::DrillPhase::Running))
        .map(|b| b.name_any())
        .collect();
    if let Some(holding) =
        crate::controllers::backup::plan::drill_holding(cluster, &backups, jiff::Timestamp::now())
        && !drills_running.contains(&holding)
    {
        drills_running.push(holding);
    }
    Ok(KubeRead {
        pods: pods.items,
        pvcs,
        tls,
        boot,
        nodes,
        backup_sources,
        drills_running,
    })
}

/// The etcd half of observing, over what was read from Kubernetes: asks the members (through
/// `etcd`, a fake in tests) for the membership and their status, and puts together what the
/// decision looks at. `images` are the operator's, which member pods are built with now.
pub async fn assemble(
    etcd: &dyn EtcdOps,
    cluster: &EtcdCluster,
    read: KubeRead,
    images: &Images,
    now: jiff::Timestamp,
) -> Result<Observation, ObserveError> {
    let KubeRead {
        pods,
        pvcs,
        tls,
        boot,
        nodes,
        backup_sources,
        drills_running,
    } = read;
    let name = cluster.name_any();
    let template = crate::objects::template_digest(cluster, images);
    let uses_pvc = cluster.spec.storage.persistent_volume_claim.is_some();
    let self_hosted = cluster.spec.self_hosted.is_some();
    let desired_version: EtcdVersion = cluster
        .spec
        .version
        .parse()
        .map_err(|_| ObserveError::Version(cluster.spec.version.clone()))?;

    let tls_names = crate::certificate_copies::member_names(cluster, &pods);
    let choice = tls
        .as_ref()
        .map(|t| crate::certificate_copies::choose(t, &tls_names, now));
    let client_tls = tls.as_ref().zip(choice.as_ref()).map(|(t, c)| c.dialing(t));
    let mut pod_views = Vec::new();
    let mut endpoints = Vec::new();
    for p in &pods {
        let member = p.name_any();
        let Some(version) = p.labels().get(LABEL_VERSION).and_then(|v| v.parse().ok()) else {
            continue;
        };
        let volume_lost = uses_pvc
            && !pvcs.iter().any(|c| {
                c.name_any() == vocabulary::pvc_name(&member)
                    && c.metadata.deletion_timestamp.is_none()
                    && !retired(c)
            });
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let certificates_current = choice
            .as_ref()
            .is_none_or(|c| c.current(p.annotations().get(vocabulary::ANNOTATION_CERTIFICATES_DIGEST)));
        if let Some(ip) = ip {
            let port = vocabulary::ports_of(p).client;
            let endpoint = member_access::member_endpoint(cluster, &member, &ip, port, client_tls.as_ref());
            endpoints.push((member.clone(), endpoint));
        }
        let settings =
            crate::objects::settings_annotation(&crate::objects::settings_args(&cluster.spec.etcd, version));
        let record = p.annotations().get(vocabulary::ANNOTATION_SETTINGS);
        let settings_current = record.map_or_else(
            || crate::objects::legacy_pod_current(&cluster.spec.etcd),
            |r| *r == settings,
        );
        // A pod without a record runs etcd's own default quota.
        let quota_bytes = record
            .and_then(|r| crate::objects::recorded_quota(r))
            .unwrap_or(ouroboros_crds::settings::DEFAULT_QUOTA_BACKEND_BYTES as u64);
        let template_record = p.annotations().get(vocabulary::ANNOTATION_TEMPLATE);
        let template_current = match template_record {
            Some(t) => *t == template,
            // Built by an operator from before the record: a missing record is no evidence that
            // anything differs, so the pod is judged by what can be seen of it, its images (a new
            // sidecar image after an operator upgrade rolls it), and the record is then written
            // onto it (`apply::record_templates`) so that later changes are seen.
            None => crate::objects::pod_images_current(p, cluster, images, version),
        };
        pod_views.push(PodView {
            settings_current,
            template_current,
            template_recorded: template_record.is_some(),
            certificates_current,
            quota_bytes,
            name: member,
            version,
            state: pod_state(p),
            age: age(p, now),
            volume_lost,
            voter_label: p.labels().get(vocabulary::LABEL_VOTER).cloned(),
            image_problem: image_problem(p),
            unschedulable: unschedulable(p),
            data_refused: data_refused(p),
        });
    }

    // The boot member last: once the pivot is done it is gone, and ours answer first.
    let endpoint_list: Vec<Endpoint> = endpoints
        .iter()
        .map(|(_, e)| e.clone())
        .chain(boot.clone())
        .collect();
    let named = |m: &crate::etcd::Member| member_name_by_pods(m, &pods);
    let mut members = Vec::new();
    let mut boot_id = None;
    let mut kv_hashes = Vec::new();
    let (membership, cluster_id, statuses, membership_error) = if endpoint_list.is_empty() {
        (None, None, Vec::new(), None)
    } else {
        match etcd.member_list(&endpoint_list).await {
            Ok(list) => {
                if let Some(ep) = &boot {
                    let b = list
                        .members
                        .iter()
                        .find(|m| m.client_urls.iter().any(|u| u.trim_end_matches('/') == ep.url));
                    if let Some(b) = b {
                        boot_id = Some(b.id);
                        endpoints.push((named(b).unwrap_or_default(), ep.clone()));
                    }
                }
                let statuses = statuses(etcd, &list.members, &endpoints, &named).await;
                let refused = pod_views.iter().any(|p| p.data_refused.is_some());
                kv_hashes =
                    hashes_to_judge(etcd, &statuses, &list.members, &endpoints, &named, refused).await;
                members = list.members.clone();
                (
                    Some(membership(&list.members, &statuses, &named)),
                    Some(list.cluster_id),
                    statuses,
                    None,
                )
            }
            Err(e) => (None, None, Vec::new(), Some(e.to_string())),
        }
    };
    let (data, node_losses) = if uses_pvc && !self_hosted {
        (
            DataHome::Claims(claim_views(&pvcs)),
            node_losses(&pods, &nodes, now),
        )
    } else {
        (DataHome::Pod, Vec::new())
    };
    // A retired claim keeps its name, so its ordinal is never given to a new member, which would
    // start on the retired data.
    let past_claims = pvcs
        .iter()
        .filter_map(|c| vocabulary::ordinal(&name, c.labels().get(vocabulary::LABEL_MEMBER)?))
        .map(|o| o + 1)
        .max()
        .unwrap_or(0);
    let certificates = choice.as_ref().map(|c| c.report.clone());
    let certificate_problems = certificates
        .iter()
        .flat_map(|r| r.problems.iter().map(ToString::to_string))
        .collect();
    let mut maintenance = maintenance_view(
        cluster,
        &pods,
        backup_sources,
        kv_hashes,
        certificate_problems,
        now,
    );
    maintenance.certificates_blocked = choice.and_then(|c| c.blocked);
    maintenance.drills_running = drills_running;
    let observed = Observed {
        data,
        known_members: cluster
            .status
            .iter()
            .flat_map(|s| s.members.iter().map(|m| m.name.clone()))
            .collect(),
        cluster: name,
        desired: Desired {
            size: usize::try_from(cluster.spec.size).unwrap_or(0),
            version: desired_version,
            // A restore in progress owns the cluster: nothing is changed under it.
            held_by: super::decide::held_by(cluster),
            replace_after_node_lost: replace_after_node_lost(cluster),
        },
        node_losses,
        bootstrapped: cluster.status.as_ref().is_some_and(|s| s.cluster_id.is_some()),
        pods: pod_views,
        membership,
        pods_first: self_hosted,
        ordinal_floor: vocabulary::ordinal_floor(cluster).max(past_claims),
        maintenance,
        boot: boot.map(|ep| BootView {
            id: boot_id,
            endpoint: ep.url,
        }),
    };
    Ok(Observation {
        observed,
        cluster_id,
        statuses,
        endpoints,
        members,
        pods,
        membership_error,
        certificates,
    })
}

/// What maintenance decides by: the spec's quota and threshold, the operator's own records (the
/// revision it compacted to, when it defragmented each member), and the members backups stream from.
fn maintenance_view(
    cluster: &EtcdCluster,
    pods: &[Pod],
    backup_sources: Vec<String>,
    kv_hashes: Vec<(u64, crate::etcd::KvHash)>,
    certificate_problems: Vec<String>,
    now: jiff::Timestamp,
) -> MaintenanceView {
    let recently_defragmented = pods
        .iter()
        .filter(|p| {
            crate::controllers::annotated_time(p, vocabulary::ANNOTATION_DEFRAGMENTED_AT)
                .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
                .is_some_and(|ago| ago < super::maintenance::DEFRAG_COOLDOWN)
        })
        .map(|p| p.name_any())
        .collect();
    let defragmented_revisions = pods
        .iter()
        .filter_map(|p| {
            let r = p
                .annotations()
                .get(vocabulary::ANNOTATION_DEFRAGMENTED_REVISION)?
                .parse()
                .ok()?;
            Some((p.name_any(), r))
        })
        .collect();
    MaintenanceView {
        quota_bytes: u64::try_from(cluster.spec.etcd.quota_backend_bytes).unwrap_or(0),
        defragmentation: cluster
            .spec
            .maintenance
            .defragmentation
            .as_ref()
            .map(|d| DefragThreshold {
                min_fragmentation_percent: u32::try_from(d.min_fragmentation_percent).unwrap_or(50),
                min_database_bytes: u64::try_from(d.min_database_bytes).unwrap_or(0),
                window: super::maintenance::defrag_window(d.window.as_ref(), now),
            }),
        compacted_revision: cluster
            .annotations()
            .get(vocabulary::ANNOTATION_COMPACTED_REVISION)
            .and_then(|r| r.parse().ok()),
        backup_sources,
        drills_running: Vec::new(),
        recently_defragmented,
        defragmented_revisions,
        certificate_problems,
        certificates_blocked: None,
        kv_hashes,
    }
}

/// `spec.storage.persistentVolumeClaim.replaceAfterNodeLost` (the schema only admits durations the
/// parser reads), or the default.
fn replace_after_node_lost(cluster: &EtcdCluster) -> Duration {
    cluster
        .spec
        .storage
        .persistent_volume_claim
        .as_ref()
        .and_then(|p| p.replace_after_node_lost.as_deref())
        .and_then(ouroboros_crds::retention::parse_age)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_REPLACE_AFTER_NODE_LOST)
}

/// The claim was retired when its member was removed from a lost node.
fn retired(c: &PersistentVolumeClaim) -> bool {
    c.annotations().contains_key(vocabulary::ANNOTATION_RETIRED)
}

/// Members whose pod's node is lost: its kubelet stopped reporting, so the node lifecycle controller
/// set `Ready` to `Unknown`, and the condition's transition time says since when. See [`NodeLoss`]
/// for what is not counted.
pub fn node_losses(pods: &[Pod], nodes: &[Node], now: jiff::Timestamp) -> Vec<NodeLoss> {
    pods.iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ready = nodes
                .iter()
                .find(|n| n.name_any() == node)?
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?;
            if ready.status != "Unknown" {
                return None;
            }
            let since = ready.last_transition_time.as_ref()?.0;
            Some(NodeLoss {
                member: p.name_any(),
                node,
                lost_for: Duration::try_from(now.duration_since(since)).unwrap_or_default(),
            })
        })
        .collect()
}

/// The members' data claims that are still there (not being deleted, not retired), with the version
/// they record.
fn claim_views(pvcs: &[PersistentVolumeClaim]) -> Vec<ClaimView> {
    pvcs.iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none() && !retired(c))
        // A claim that lost its volume holds no data to come back on.
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Lost"))
        .filter_map(|c| {
            Some(ClaimView {
                member: c.labels().get(vocabulary::LABEL_MEMBER)?.clone(),
                version: c.labels().get(LABEL_VERSION).and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// Only when a copy must be judged (hashing the keyspace reads all of it): under a CORRUPT alarm,
/// every member's keyspace hash at the revision they all report, so that all hash the same history;
/// while a member's etcd refuses its data at start (`refused`), the answering voters' hashes at the
/// lowest revision any of them reports, which each of them has.
async fn hashes_to_judge(
    etcd: &dyn EtcdOps,
    statuses: &[(u64, Status)],
    members: &[crate::etcd::Member],
    endpoints: &[(String, Endpoint)],
    named: &(dyn Fn(&crate::etcd::Member) -> Option<String> + Sync),
    refused: bool,
) -> Vec<(u64, crate::etcd::KvHash)> {
    let corrupt = statuses.iter().any(|(_, s)| {
        super::maintenance::parse_alarms(&s.errors)
            .iter()
            .any(|(_, kind)| kind == super::maintenance::AlarmKind::Corrupt.etcd_name())
    });
    // Only when the decision can use them: no learner, and (under the alarm) every member answered
    // at one revision.
    let all_answer = members.iter().all(|m| statuses.iter().any(|(id, _)| *id == m.id));
    let no_learner = !members.iter().any(|m| m.is_learner);
    let revisions: std::collections::BTreeSet<i64> = statuses.iter().map(|(_, s)| s.revision).collect();
    // A refusal is judged only with three voters or more, all but one answering: fewer can give no
    // verdict, and hashing reads the whole keyspace of a cluster already short of a member.
    let all_but_one_answer = members.len() >= 3 && statuses.len() + 1 >= members.len();
    let usable =
        (corrupt && all_answer && revisions.len() == 1) || (refused && !corrupt && all_but_one_answer);
    let Some(&revision) = revisions.first().filter(|_| usable && no_learner) else {
        return Vec::new();
    };
    let members: Vec<&crate::etcd::Member> = members
        .iter()
        .filter(|m| statuses.iter().any(|(id, _)| *id == m.id))
        .collect();
    let asks = members.into_iter().filter_map(|m| {
        let name = named(m)?;
        let ep = endpoints.iter().find(|(n, _)| *n == name)?.1.clone();
        Some(async move { (m.id, etcd.hash_kv(&ep, revision).await) })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(id, r)| match r {
            Ok(h) => Some((id, h)),
            Err(e) => {
                tracing::warn!(member = id, error = %e, "member did not answer hash kv");
                None
            }
        })
        .collect()
}

/// Asks every member with a pod for its status, concurrently; members that do not answer are absent.
async fn statuses(
    etcd: &dyn EtcdOps,
    members: &[crate::etcd::Member],
    endpoints: &[(String, Endpoint)],
    named: &(dyn Fn(&crate::etcd::Member) -> Option<String> + Sync),
) -> Vec<(u64, Status)> {
    let asks = members.iter().filter_map(|m| {
        let name = named(m)?;
        let ep = endpoints.iter().find(|(n, _)| *n == name)?.1.clone();
        Some(async move { (m.id, etcd.status(&ep).await) })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(id, r): (u64, Result<Status, EtcdError>)| match r {
            Ok(s) => Some((id, s)),
            Err(e) => {
                tracing::debug!(member = id, error = %e, "member did not answer status");
                None
            }
        })
        .collect()
}

/// A member's name: etcd's own once started, else the pod annotated with its peer URL (self-hosted
/// URLs carry a node address, not a name), else the one in its peer URL.
pub fn member_name_by_pods(m: &crate::etcd::Member, pods: &[Pod]) -> Option<String> {
    if m.name.is_empty()
        && let Some(url) = m.peer_urls.first()
    {
        let annotated = pods.iter().find(|p| {
            p.annotations()
                .get(vocabulary::ANNOTATION_PEER_URL)
                .is_some_and(|a| a == url)
        });
        if let Some(p) = annotated {
            return Some(p.name_any());
        }
        if is_ip_url(url) {
            // Nothing names it: the decision removes a never-started member whose pod is gone.
            return Some(format!("unnamed-{:x}", m.id));
        }
    }
    member_name(m)
}

fn is_ip_url(url: &str) -> bool {
    vocabulary::url_host_port(url).is_some_and(|(h, _)| h.parse::<std::net::IpAddr>().is_ok())
}

/// A member's name: etcd's own once started, else the one in its peer URL.
pub fn member_name(m: &crate::etcd::Member) -> Option<String> {
    if !m.name.is_empty() {
        return Some(m.name.clone());
    }
    m.peer_urls
        .first()
        .and_then(|u| vocabulary::member_name_from_peer_url(u))
}

fn membership(
    members: &[crate::etcd::Member],
    statuses: &[(u64, Status)],
    named: &(dyn Fn(&crate::etcd::Member) -> Option<String> + Sync),
) -> Membership {
    let status_of = |id| statuses.iter().find(|(i, _)| *i == id).map(|(_, s)| s);
    let leader = statuses.iter().map(|(_, s)| s.leader).find(|l| *l != 0);
    let db_size_bytes = leader
        .and_then(status_of)
        .map(|s| u64::try_from(s.db_size).unwrap_or(0))
        .unwrap_or(0);
    Membership {
        leader,
        db_size_bytes,
        members: members
            .iter()
            .filter_map(|m| {
                Some(MemberView {
                    id: m.id,
                    name: named(m)?,
                    is_learner: m.is_learner,
                    started: !m.name.is_empty(),
                    health: status_of(m.id).map(|s| MemberHealth {
                        applied_index: s.raft_applied_index,
                        errors: s.errors.clone(),
                        db_size: u64::try_from(s.db_size).unwrap_or(0),
                        db_in_use: u64::try_from(s.db_size_in_use).unwrap_or(0),
                        revision: s.revision,
                    }),
                })
            })
            .collect(),
    }
}

fn age(p: &Pod, now: jiff::Timestamp) -> Duration {
    p.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .unwrap_or_default()
}

/// Why one of the pod's containers cannot get its image, in words, if the kubelet says so: a version
/// whose image does not exist waits forever in `ImagePullBackOff`, which the status must name.
pub fn image_problem(p: &Pod) -> Option<String> {
    const PULL_FAILURES: [&str; 4] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
    ];
    let status = p.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses);
    containers.flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        // The kubelet alternates ErrImagePull and ImagePullBackOff with changing messages; the words
        // stay the same so the condition and its Event do not flap (`kubectl describe pod` has the rest).
        PULL_FAILURES
            .contains(&reason)
            .then(|| format!("container {} cannot pull {}", c.name, c.image))
    })
}

/// The scheduler said it cannot place the pod.
fn unschedulable(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })
}

/// What etcd says, in its log, when its initial corruption check refuses the member's data (3.5 and
/// 3.6: `<id> found data inconsistency with peers`).
const DATA_REFUSED: &str = "found data inconsistency with peers";

/// The field of etcd's "found different hash values from remote peer" warning that gives the
/// compaction it hashed with.
const REFUSED_COMPACTION: &str = "\"local-member-compact-revision\":";

/// The etcd container's last exit was its initial corruption check refusing the member's data (its
/// termination message is the log's tail: `FallbackToLogsOnError`), and with which compaction.
pub fn data_refused(p: &Pod) -> Option<DataRefusal> {
    let c = p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "etcd")?;
    // Running again means it got past the check (or the check is off): nothing to judge.
    if c.state.as_ref().is_some_and(|s| s.running.is_some()) {
        return None;
    }
    let words = [c.state.as_ref(), c.last_state.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|s| s.terminated.as_ref())?
        .message
        .as_deref()?;
    if !words.contains(DATA_REFUSED) {
        return None;
    }
    // Never compacted is -1.
    let compact_revision = words.rfind(REFUSED_COMPACTION).and_then(|i| {
        let rest = &words[i + REFUSED_COMPACTION.len()..];
        let end = rest
            .char_indices()
            .find(|&(at, ch)| !(ch.is_ascii_digit() || (at == 0 && ch == '-')))
            .map_or(rest.len(), |(at, _)| at);
        rest[..end].parse().ok()
    });
    Some(DataRefusal { compact_revision })
}

/// The pod's lifecycle as the decision sees it.
pub fn pod_state(p: &Pod) -> PodState {
    if p.metadata.deletion_timestamp.is_some() {
        return PodState::Deleting;
    }
    let status = p.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Succeeded") | Some("Failed") => return PodState::Terminated,
        Some("Running") | Some("Pending") | Some("Unknown") | None | Some(_) => {}
    }
    let etcd = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "etcd");
    if let Some(c) = &etcd {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some();
        if c.restart_count >= CRASH_LOOP_RESTARTS && waiting {
            return PodState::CrashLooping;
        }
    }
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        PodState::Ready
    } else if etcd.is_some_and(|c| c.state.and_then(|s| s.running).is_some()) {
        PodState::Running
    } else {
        PodState::Starting
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_pull_failure_is_named_with_its_image() {
        let pulling = pod(json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": "etcd",
            "image": "localhost/ouroboros/etcd:v3.9.9",
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
        }]}}));
        assert_eq!(
            image_problem(&pulling).as_deref(),
            Some("container etcd cannot pull localhost/ouroboros/etcd:v3.9.9")
        );
        // Waiting for another reason (starting, crash loop) is not a pull failure.
        let starting = pod(json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": "etcd",
            "image": "e",
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}},
        }]}}));
        assert_eq!(image_problem(&starting), None);
        assert_eq!(image_problem(&pod(json!({"status": {"phase": "Running"}}))), None);
    }

    #[test]
    fn a_node_is_lost_when_its_kubelet_is_silent_only() {
        let node = |name: &str, ready: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": "2026-12-01T10:00:00Z"}]}}))
            .unwrap()
        };
        let nodes = [
            node("n-up", "True"),
            node("n-silent", "Unknown"),
            node("n-notready", "False"),
        ];
        let on = |member: &str, node: &str| {
            pod(json!({"metadata": {"name": member}, "spec": {"nodeName": node, "containers": []}}))
        };
        // c-3's Node is gone (routine: no record of since when), c-4 is not scheduled: neither is lost.
        let unscheduled = pod(json!({"metadata": {"name": "c-4"}, "spec": {"containers": []}}));
        let pods = [
            on("c-0", "n-up"),
            on("c-1", "n-silent"),
            on("c-2", "n-notready"),
            on("c-3", "n-deleted"),
            unscheduled,
        ];
        let now: jiff::Timestamp = "2026-12-01T10:05:00Z".parse().unwrap();
        assert_eq!(
            node_losses(&pods, &nodes, now),
            vec![NodeLoss {
                member: "c-1".into(),
                node: "n-silent".into(),
                lost_for: Duration::from_secs(300)
            }]
        );
    }

    #[test]
    fn pod_states() {
        assert_eq!(
            pod_state(&pod(
                json!({"metadata": {"name": "a"}, "status": {"phase": "Pending"}})
            )),
            PodState::Starting
        );
        assert_eq!(
            pod_state(&pod(
                json!({"metadata": {"name": "a"}, "status": {"phase": "Failed"}})
            )),
            PodState::Terminated
        );
        assert_eq!(
            pod_state(&pod(
                json!({"metadata": {"name": "a"}, "status": {"phase": "Succeeded"}})
            )),
            PodState::Terminated
        );
        assert_eq!(
            pod_state(&pod(json!({
                "metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": "Running"},
            }))),
            PodState::Deleting
        );
        let ready = json!({"metadata": {"name": "a"}, "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "etcd", "ready": true, "restartCount": 0, "image": "x", "imageID": "x",
                                   "state": {"running": {}}}],
        }});
        assert_eq!(pod_state(&pod(ready)), PodState::Ready);
        let running = json!({"metadata": {"name": "a"}, "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "etcd", "ready": false, "restartCount": 1, "image": "x", "imageID": "x",
                                   "state": {"running": {}}}],
        }});
        assert_eq!(pod_state(&pod(running)), PodState::Running);
        let looping = json!({"metadata": {"name": "a"}, "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "etcd", "ready": false, "restartCount": 7, "image": "x", "imageID": "x",
                                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
        }});
        assert_eq!(pod_state(&pod(looping)), PodState::CrashLooping);
    }

    #[test]
    fn etcd_refusing_its_data_at_start_is_read_from_its_last_words() {
        let etcd = |state: serde_json::Value, last: serde_json::Value| {
            pod(json!({"metadata": {"name": "a"}, "status": {"phase": "Running",
                "containerStatuses": [{"name": "etcd", "ready": false, "restartCount": 1, "image": "x",
                                       "imageID": "x", "state": state, "lastState": last}]}}))
        };
        // etcd 3.6.16's log tail when its initial check fails (FallbackToLogsOnError).
        let words = "{\"level\":\"warn\",\"msg\":\"found different hash values from remote peer\",\"local-member-revision\":40,\"local-member-compact-revision\":12,\"local-member-hash\":1}\n\
                     {\"level\":\"error\",\"msg\":\"checkInitialHashKV failed\",\"error\":\"8e9e05c52164694d found data inconsistency with peers\"}";
        let refused = json!({"terminated": {"exitCode": 1, "reason": "Error", "message": words}});
        let backoff = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let at_12 = Some(DataRefusal {
            compact_revision: Some(12),
        });
        assert_eq!(data_refused(&etcd(backoff.clone(), refused.clone())), at_12);
        assert_eq!(data_refused(&etcd(refused.clone(), json!({}))), at_12);
        // Never compacted: etcd says -1.
        let never = json!({"terminated": {"exitCode": 1, "message":
            "{\"local-member-compact-revision\":-1,\"local-member-hash\":4}\nx found data inconsistency with peers"}});
        assert_eq!(
            data_refused(&etcd(backoff.clone(), never)),
            Some(DataRefusal {
                compact_revision: Some(-1)
            })
        );
        // The warning cut off the tail: refused, compaction unknown.
        let cut = json!({"terminated": {"exitCode": 1, "message": "x found data inconsistency with peers"}});
        assert_eq!(
            data_refused(&etcd(backoff.clone(), cut)),
            Some(DataRefusal {
                compact_revision: None
            })
        );
        // Running again (the check passed, or was turned off): not refused.
        assert_eq!(data_refused(&etcd(json!({"running": {}}), refused)), None);
        // Another exit: not this.
        let other = json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "bind: address already in use"}});
        assert_eq!(data_refused(&etcd(backoff, other)), None);
    }

    #[test]
    fn member_names_come_from_etcd_or_the_peer_url() {
        let started = crate::etcd::Member {
            id: 1,
            name: "c-0".into(),
            peer_urls: vec!["http://c-0.c.ns.svc:2380".into()],
            client_urls: vec![],
            is_learner: false,
        };
        assert_eq!(member_name(&started).as_deref(), Some("c-0"));
        let unstarted = crate::etcd::Member {
            name: String::new(),
            id: 2,
            peer_urls: vec!["http://c-3.c.ns.svc:2380".into()],
            ..started
        };
        assert_eq!(member_name(&unstarted).as_deref(), Some("c-3"));
    }

    mod with_fake_etcd {
        use std::sync::Arc;

        use k8s_openapi::api::core::v1::Pod;
        use ouroboros_crds::EtcdCluster;

        use super::super::{KubeRead, assemble};
        use crate::{
            etcd::{ClientTls, Member, MemberList, Status},
            etcd_fake::FakeEtcd,
            objects,
            vocabulary::{Images, InitialClusterState},
        };

        fn cluster(tls: bool) -> EtcdCluster {
            let mut spec = serde_json::json!({"size": 3, "version": "3.6.16"});
            if tls {
                spec["tls"] =
                    serde_json::json!({"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"});
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdCluster",
                "metadata": {"name": "c", "namespace": "ns", "uid": "u1"}, "spec": spec
            }))
            .unwrap()
        }

        fn images() -> Images {
            Images {
                etcd_repository: "etcd".into(),
                etcd_tag_format: "v{version}".into(),
                sidecar: "sidecar".into(),
            }
        }

        fn pod(c: &EtcdCluster, i: u64) -> Pod {
            let images = images();
            let members: Vec<String> = (0..3).map(|i| format!("c-{i}")).collect();
            let mut p = objects::member_pod(
                c,
                &images,
                &format!("c-{i}"),
                "3.6.16".parse().unwrap(),
                InitialClusterState::New,
                &members,
            )
            .unwrap();
            p.status = Some(
                serde_json::from_value(
                    serde_json::json!({"phase": "Running", "podIP": format!("10.0.0.{}", i + 1)}),
                )
                .unwrap(),
            );
            p
        }

        fn member(i: u64, scheme: &str) -> Member {
            Member {
                id: i + 1,
                name: format!("c-{i}"),
                peer_urls: vec![format!("{scheme}://c-{i}.c.ns.svc:2380")],
                client_urls: vec![format!("{scheme}://c-{i}.c.ns.svc:2379")],
                is_learner: false,
            }
        }

        fn status(id: u64, errors: &[&str]) -> Status {
            Status {
                member_id: id,
                leader: 1,
                raft_applied_index: 100,
                revision: 100,
                db_size: 1 << 20,
                db_size_in_use: 1 << 20,
                version: "3.6.16".into(),
                errors: errors.iter().map(|e| e.to_string()).collect(),
                is_learner: false,
            }
        }

        fn fake(scheme: &str, answering: &[u64], alarm_on: Option<u64>) -> FakeEtcd {
            let url = |i: u64| format!("{scheme}://10.0.0.{}:2379", i + 1);
            FakeEtcd {
                list: Some(MemberList {
                    cluster_id: 0xc1,
                    members: (0..3).map(|i| member(i, scheme)).collect(),
                }),
                answering: answering.iter().map(|i| url(*i)).collect(),
                statuses: (0..3)
                    .map(|i| {
                        let errors: &[&str] = if alarm_on == Some(i) { &["NOSPACE"] } else { &[] };
                        (url(i), status(i + 1, errors))
                    })
                    .collect(),
                ..FakeEtcd::default()
            }
        }

        fn read(c: &EtcdCluster, tls: bool) -> KubeRead {
            KubeRead {
                pods: (0..3).map(|i| pod(c, i)).collect(),
                tls: tls.then(|| {
                    let empty = ClientTls {
                        ca: vec![],
                        cert: vec![],
                        key: vec![],
                    };
                    let desired =
                        crate::certificate_copies::CertificateSet::of(crate::member_access::TlsMaterial {
                            client: Arc::new(empty.clone()),
                            secrets: vec![("o".into(), crate::certificates::Purpose::OperatorClient, empty)],
                        });
                    crate::certificate_copies::CertificateInputs {
                        desired,
                        running: Vec::new(),
                    }
                }),
                ..KubeRead::default()
            }
        }

        #[tokio::test]
        async fn a_silent_member_has_no_health_and_an_alarm_is_kept_as_reported() {
            let c = cluster(false);
            let etcd = fake("http", &[0, 1], Some(1));
            let obs = assemble(&etcd, &c, read(&c, false), &images(), jiff::Timestamp::now())
                .await
                .unwrap();
            let ms = obs.observed.membership.expect("two members answered");
            assert_eq!(ms.leader, Some(1));
            let health = |name: &str| ms.members.iter().find(|m| m.name == name).unwrap().health.clone();
            assert!(health("c-0").is_some_and(|h| h.errors.is_empty()));
            assert_eq!(health("c-1").map(|h| h.errors), Some(vec!["NOSPACE".to_owned()]));
            assert_eq!(health("c-2"), None);
            assert_eq!(obs.cluster_id, Some(0xc1));
            // The membership is asked once through every member; each member is asked its own status.
            let calls = etcd.calls();
            assert_eq!(
                calls[0],
                "member_list http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379"
            );
            let mut statuses: Vec<&String> = calls[1..].iter().collect();
            statuses.sort();
            assert_eq!(
                statuses,
                [
                    "status http://10.0.0.1:2379",
                    "status http://10.0.0.2:2379",
                    "status http://10.0.0.3:2379"
                ]
            );
        }

        #[tokio::test]
        async fn when_no_member_answers_the_pods_are_still_seen_and_the_error_is_kept() {
            let c = cluster(false);
            let etcd = fake("http", &[], None);
            let obs = assemble(&etcd, &c, read(&c, false), &images(), jiff::Timestamp::now())
                .await
                .unwrap();
            assert_eq!(obs.observed.membership, None);
            assert!(obs.membership_error.is_some_and(|e| e.contains("timed out")));
            assert_eq!(obs.observed.pods.len(), 3);
        }

        #[tokio::test]
        async fn a_tls_cluster_is_asked_over_https_with_each_members_dns_name() {
            let c = cluster(true);
            let etcd = fake("https", &[0, 1, 2], None);
            let obs = assemble(&etcd, &c, read(&c, true), &images(), jiff::Timestamp::now())
                .await
                .unwrap();
            assert_eq!(obs.observed.membership.map(|m| m.members.len()), Some(3));
            assert!(etcd.calls()[0].starts_with("member_list https://10.0.0.1:2379,"));
            let names: Vec<String> = obs
                .endpoints
                .iter()
                .filter_map(|(_, e)| e.tls.as_ref().map(|(n, _)| n.clone()))
                .collect();
            assert_eq!(names, ["c-0.c.ns.svc", "c-1.c.ns.svc", "c-2.c.ns.svc"]);
        }
    }
}
