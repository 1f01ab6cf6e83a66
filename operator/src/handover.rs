//! `etcd-operator handover`: what bootkube's migration step did, for installers. It creates the
//! self-hosted EtcdCluster that joins the boot etcd and waits, through the cluster's status only, until
//! the operator has removed the boot member. Everything it waits for is recorded in the API, so it can
//! be run again after being interrupted: it finds the EtcdCluster it created and carries on.

use std::time::Duration;

use kube::{Api, Client, ResourceExt, api::PostParams};
use ouroboros_crds::{EtcdCluster, condition_types as ct};

use crate::{cli::HandoverArgs, crds_ready};

/// How the handover ended; each outcome has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The operator's CRD never became established.
    #[error("waiting for the EtcdCluster CRD: {0}")]
    Crd(#[from] crds_ready::CrdWaitError),
    /// An EtcdCluster of that name exists and does not pivot from this boot member.
    #[error("EtcdCluster {0} exists and does not take over from {1}; choose another --name or delete it")]
    Conflict(String, String),
    /// The operator refused the boot cluster.
    #[error("the operator refused the pivot: {0}")]
    Refused(String),
    /// The pivot did not finish in time.
    #[error("the boot member was not removed within {seconds}s; last state: {last}")]
    TimedOut {
        /// How long we waited.
        seconds: u64,
        /// The cluster's phase and conditions when we gave up.
        last: String,
    },
    /// A Kubernetes call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl HandoverError {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            HandoverError::Crd(_) => 3,
            HandoverError::Conflict(..) => 4,
            HandoverError::Refused(_) => 5,
            HandoverError::TimedOut { .. } => 6,
            HandoverError::Kube { .. } => 1,
        }
    }
}

/// Where a pivot stands, read from the EtcdCluster alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The boot member is gone and every member is healthy: the API server can move to these URLs.
    Done(Vec<String>),
    /// The operator will not go on without a change from a human.
    Refused(String),
    /// Still under way; what status says.
    Waiting(String),
}

/// Reads the pivot's progress from status.
pub fn progress(cluster: &EtcdCluster) -> Progress {
    let Some(status) = &cluster.status else {
        return Progress::Waiting("the operator has not reported yet".into());
    };
    let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    if let Some(d) = cond(ct::DEGRADED).filter(|c| c.status == "True" && c.reason == "BootClusterInvalid") {
        return Progress::Refused(d.message.clone());
    }
    let removed = cond(ct::BOOT_MEMBER_REMOVED).is_some_and(|c| c.status == "True");
    let available = cond(ct::AVAILABLE).is_some_and(|c| c.status == "True");
    let all_ready = status.ready_members == cluster.spec.size && status.size == cluster.spec.size;
    if removed && available && all_ready && !status.client_endpoints.is_empty() {
        // The client Service reaches voting members only; a member's own URL can belong to a
        // learner for a few seconds when a replacement takes a dead member's port block, and a
        // learner refuses an API server's requests.
        let vip = cluster
            .spec
            .self_hosted
            .as_ref()
            .and_then(|s| s.client_service_ip.as_ref())
            .map(|ip| {
                format!(
                    "{}://{ip}:{}",
                    if cluster.spec.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    2379
                )
            });
        return Progress::Done(vip.map_or_else(|| status.client_endpoints.clone(), |v| vec![v]));
    }
    let boot = cond(ct::BOOT_MEMBER_REMOVED)
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "BootMemberRemoved not reported yet".into());
    Progress::Waiting(format!(
        "phase {:?}, {}/{} members ready; {boot}",
        status.phase, status.ready_members, cluster.spec.size
    ))
}

/// The EtcdCluster the handover creates.
pub fn desired_cluster(args: &HandoverArgs) -> EtcdCluster {
    let mut self_hosted = serde_json::json!({"bootMemberClientEndpoint": args.boot_endpoint});
    if let Some(dir) = &args.host_data_dir {
        self_hosted["hostDataDir"] = dir.clone().into();
    }
    if let Some(port) = args.base_port {
        self_hosted["basePort"] = port.into();
    }
    if let Some(ip) = &args.client_service_ip {
        self_hosted["clientServiceIP"] = ip.clone().into();
    }
    let mut pod = serde_json::json!({
        "nodeSelector": args.node_selector.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        // Members are placed by the operator; anti-affinity does not apply to them.
        "antiAffinity": "None",
    });
    if args.tolerate_control_plane {
        pod["tolerations"] = serde_json::json!([
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
        ]);
    }
    let mut cluster = EtcdCluster::new(
        &args.name,
        serde_json::from_value(serde_json::json!({
            "size": args.size,
            "version": args.version,
            "selfHosted": self_hosted,
            "pod": pod,
        }))
        .unwrap_or_else(|e| unreachable!("the handover's EtcdCluster spec is ours and valid: {e}")),
    );
    cluster.metadata.namespace = Some(args.namespace.clone());
    cluster
}

/// Runs the handover; on success returns the client URLs for `--etcd-servers`.
pub async fn run(client: Client, args: &HandoverArgs) -> Result<Vec<String>, HandoverError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    crds_ready::wait_for_crds(client.clone(), Duration::from_secs(args.timeout_seconds)).await?;
    let api: Api<EtcdCluster> = Api::namespaced(client, &args.namespace);
    let kube = |action| move |source| HandoverError::Kube { action, source };
    let want = desired_cluster(args);
    let existing = api
        .get_opt(&args.name)
        .await
        .map_err(kube("reading the EtcdCluster"))?;
    match existing {
        Some(c) => {
            let boot = c
                .spec
                .self_hosted
                .as_ref()
                .map(|s| s.boot_member_client_endpoint.clone())
                .unwrap_or_default();
            if boot != args.boot_endpoint {
                return Err(HandoverError::Conflict(
                    format!("{}/{}", args.namespace, args.name),
                    args.boot_endpoint.clone(),
                ));
            }
            eprintln!(
                "EtcdCluster {}/{} exists; waiting for it",
                args.namespace,
                c.name_any()
            );
        }
        None => {
            api.create(&PostParams::default(), &want)
                .await
                .map_err(kube("creating the EtcdCluster"))?;
            eprintln!("created EtcdCluster {}/{}", args.namespace, args.name);
        }
    }
    let mut last = String::new();
    loop {
        // The API server may blink while its etcd changes under it; that is waited out like the rest.
        let state = match api.get(&args.name).await {
            Ok(c) => match progress(&c) {
                Progress::Done(endpoints) => return Ok(endpoints),
                Progress::Refused(why) => return Err(HandoverError::Refused(why)),
                Progress::Waiting(state) => state,
            },
            Err(e) => format!("reading the EtcdCluster: {e}"),
        };
        if state != last {
            eprintln!("{state}");
            last = state;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HandoverError::TimedOut {
                seconds: args.timeout_seconds,
                last,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    fn args() -> HandoverArgs {
        let a = crate::cli::Args::try_parse_from([
            "etcd-operator",
            "handover",
            "--boot-endpoint",
            "http://127.0.0.1:22379",
            "--size",
            "3",
            "--tolerate-control-plane",
        ])
        .unwrap();
        match a.command {
            Some(crate::cli::Command::Handover(h)) => h,
            other => panic!("no handover: {other:?}"),
        }
    }

    /// Status once the pivot is over: the boot member gone, three members ready.
    fn removed() -> serde_json::Value {
        json!({
            "size": 3,
            "readyMembers": 3,
            "clientEndpoints": ["http://10.0.0.1:2379", "http://10.0.0.1:2389", "http://10.0.0.1:2399"],
            "conditions": [
                {"type": "BootMemberRemoved", "status": "True", "reason": "BootMemberRemoved", "message": "m",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Available", "status": "True", "reason": "QuorumHealthy", "message": "m",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        })
    }

    fn with_status(status: serde_json::Value) -> EtcdCluster {
        let mut c = desired_cluster(&args());
        c.status = Some(serde_json::from_value(status).unwrap());
        c
    }

    #[test]
    fn the_created_cluster_pivots_from_the_given_boot_member() {
        let c = desired_cluster(&args());
        assert_eq!(c.namespace().as_deref(), Some("kube-system"));
        let sh = c.spec.self_hosted.unwrap();
        assert_eq!(sh.boot_member_client_endpoint, "http://127.0.0.1:22379");
        assert_eq!(sh.base_port, 2379);
        assert_eq!(c.spec.pod.tolerations.len(), 1);
    }

    #[test]
    fn done_only_when_the_boot_member_is_gone_and_every_member_is_ready() {
        assert_eq!(
            progress(&with_status(removed())),
            Progress::Done(vec![
                "http://10.0.0.1:2379".into(),
                "http://10.0.0.1:2389".into(),
                "http://10.0.0.1:2399".into()
            ])
        );
        let mut one_down = removed();
        one_down["readyMembers"] = json!(2);
        assert!(matches!(progress(&with_status(one_down)), Progress::Waiting(_)));
        let pivoting = json!({"size": 4, "readyMembers": 4, "conditions": [{
            "type": "BootMemberRemoved", "status": "False", "reason": "Pivoting", "message": "still there",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
        let Progress::Waiting(w) = progress(&with_status(pivoting)) else {
            panic!("not waiting");
        };
        assert!(w.contains("Pivoting: still there"), "{w}");
    }

    #[test]
    fn with_a_client_service_ip_the_api_server_is_pointed_at_the_service() {
        let mut c = with_status(removed());
        c.spec.self_hosted.as_mut().unwrap().client_service_ip = Some("10.96.0.15".into());
        assert_eq!(
            progress(&c),
            Progress::Done(vec!["http://10.96.0.15:2379".into()])
        );
    }

    #[test]
    fn a_refused_boot_cluster_ends_the_wait() {
        let refused = json!({"conditions": [{
            "type": "Degraded", "status": "True", "reason": "BootClusterInvalid", "message": "two members",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
        assert_eq!(
            progress(&with_status(refused)),
            Progress::Refused("two members".into())
        );
        assert_eq!(HandoverError::Refused(String::new()).exit_code(), 5);
    }
}
