//! Builder tests.

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::vocabulary::*;

/// The cluster `c` in namespace `ns` with this spec.
fn cluster(spec: serde_json::Value) -> EtcdCluster {
    let mut c: EtcdCluster = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "c"},
        "spec": spec,
    }))
    .unwrap();
    c.metadata.namespace = Some("ns".into());
    c.metadata.uid = Some("1234abcd-0000".into());
    c
}

#[test]
fn a_claim_of_a_deleted_namesake_is_foreign() {
    let c = cluster(json!({"size": 1}));
    let owned_by = |uid: &str, kind: &str| {
        serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
            serde_json::json!({
                "name": "c-0-data",
                "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": "c", "uid": uid}],
            }),
        )
        .unwrap()
    };
    assert_eq!(foreign_owner(&owned_by("1234abcd-0000", "EtcdCluster"), &c), None);
    assert_eq!(
        foreign_owner(&owned_by("old-uid", "EtcdCluster"), &c).as_deref(),
        Some("old-uid")
    );
    assert_eq!(foreign_owner(&owned_by("x", "StatefulSet"), &c), None);
    assert_eq!(foreign_owner(&Default::default(), &c), None);
}

fn images() -> Images {
    Images {
        etcd_repository: "localhost/ouroboros/etcd".into(),
        etcd_tag_format: "v{version}".into(),
        sidecar: "sidecar:1".into(),
    }
}

fn minimal() -> EtcdCluster {
    cluster(json!({"size": 3}))
}

#[test]
fn url_hosts_and_ports() {
    assert_eq!(
        url_host_port("http://10.0.0.1:2380"),
        Some(("10.0.0.1", Some(2380)))
    );
    assert_eq!(
        url_host_port("https://[fd00::1]:2379/"),
        Some(("fd00::1", Some(2379)))
    );
    assert_eq!(url_host_port("http://c-0.c.ns.svc"), Some(("c-0.c.ns.svc", None)));
    assert_eq!(url_host_port("10.0.0.1:2380"), None);
}

#[test]
fn names_and_urls() {
    let c = minimal();
    assert_eq!(peer_url(&c, "c-1"), "http://c-1.c.ns.svc:2380");
    assert_eq!(
        member_name_from_peer_url("http://c-1.c.ns.svc:2380").as_deref(),
        Some("c-1")
    );
    assert_eq!(
        member_name_from_peer_url("https://10.0.0.1:2380").as_deref(),
        Some("10")
    );
    assert_eq!(member_name_from_peer_url("nonsense"), None);
    assert_eq!(
        initial_cluster(&c, &["c-0".into(), "c-1".into()]),
        "c-0=http://c-0.c.ns.svc:2380,c-1=http://c-1.c.ns.svc:2380"
    );
}

#[test]
fn self_hosted_pods_run_on_their_node_network_with_their_own_ports_and_host_data() {
    let c = cluster(json!({
        "size": 3,
        "selfHosted": {"bootMemberClientEndpoint": "http://127.0.0.1:22379", "hostDataDir": "/var/lib/x/"},
    }));
    let placement = Placement {
        node: "node1".into(),
        ip: "10.0.0.1".into(),
        ports: Ports::block(2389),
    };
    let v = "3.6.16".parse().unwrap();
    let p = self_hosted_member_pod(
        &c,
        &images(),
        "c-1",
        v,
        InitialClusterState::Existing,
        "boot=http://127.0.0.1:22380,c-1=http://10.0.0.1:2390",
        &placement,
    )
    .unwrap();
    assert_eq!(ports_of(&p), Ports::block(2389));
    assert_eq!(p.annotations()[ANNOTATION_PEER_URL], "http://10.0.0.1:2390");
    assert_eq!(p.labels()[LABEL_CHECKPOINT], "true");
    let spec = p.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node1"));
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    // Placed by the operator: no scheduler hints that could contradict nodeName.
    assert!(spec.affinity.is_none() && spec.hostname.is_none());
    // A host directory and the host network: outside the restricted profile, left as root.
    assert!(spec.security_context.is_none());
    let args = spec.containers[0].args.clone().unwrap();
    for want in [
        "--listen-client-urls=http://0.0.0.0:2389",
        "--listen-peer-urls=http://0.0.0.0:2390",
        "--listen-metrics-urls=http://0.0.0.0:2391",
        "--advertise-client-urls=http://10.0.0.1:2389",
        "--initial-advertise-peer-urls=http://10.0.0.1:2390",
        "--initial-cluster=boot=http://127.0.0.1:22380,c-1=http://10.0.0.1:2390",
        "--initial-cluster-state=existing",
    ] {
        assert!(args.contains(&want.to_owned()), "{want} not in {args:?}");
    }
    let probe = spec.containers[0]
        .readiness_probe
        .clone()
        .unwrap()
        .http_get
        .unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2391)
    );
    assert_eq!(probe.path.as_deref(), Some(READINESS_PATH));
    let sidecar = spec.containers[1].args.clone().unwrap();
    assert!(
        sidecar.contains(&"--listen=0.0.0.0:2392".to_owned()),
        "{sidecar:?}"
    );
    assert!(
        sidecar.contains(&"--etcd-endpoint=http://127.0.0.1:2389".to_owned()),
        "{sidecar:?}"
    );
    // etcd runs under the member lock, from the binary the init container copies in.
    assert_eq!(
        spec.containers[0].command.clone().unwrap(),
        [
            "/ouroboros/member-lock",
            "/var/lib/etcd/member.lock",
            "/usr/local/bin/etcd"
        ]
    );
    let init = &spec.init_containers.clone().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some(images().sidecar.as_str()));
    let volumes = spec.volumes.unwrap();
    let data = volumes[0].host_path.clone().unwrap();
    assert_eq!(data.path, "/var/lib/x/ns-c-1");
    assert!(
        volumes
            .iter()
            .any(|v| v.name == "member-lock" && v.empty_dir.is_some())
    );
    // Pods on the pod network keep the usual ports.
    let ordinary = member_pod(
        &minimal(),
        &images(),
        "c-0",
        v,
        InitialClusterState::New,
        &["c-0".into()],
    )
    .unwrap();
    assert_eq!(ports_of(&ordinary), Ports::POD_NETWORK);
    // Only self-hosted members have a second copy to exclude.
    let ordinary_spec = ordinary.spec.clone().unwrap();
    assert!(ordinary_spec.init_containers.is_none());
    assert_eq!(
        ordinary_spec.containers[0].command.clone().unwrap(),
        ["/usr/local/bin/etcd"]
    );
    assert!(!ordinary.labels().contains_key(LABEL_CHECKPOINT));
}

#[test]
fn members_on_data_written_by_root_keep_root_and_new_claims_are_marked() {
    let c = cluster(json!({"size": 1, "storage": {"persistentVolumeClaim": {"size": "1Gi"}}}));
    let v = "3.6.16".parse().unwrap();
    let new_claim = member_pvc(&c, "c-0", v).map(Result::unwrap).unwrap();
    assert!(
        !written_by_root(&new_claim),
        "a claim this version makes is written unprivileged"
    );
    let mut old_claim = new_claim.clone();
    old_claim.metadata.annotations = None;
    assert!(
        written_by_root(&old_claim),
        "a claim without the mark holds root's data"
    );
    let mut p = member_pod(&c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]).unwrap();
    assert!(p.spec.as_ref().unwrap().security_context.is_some());
    run_as_root(&mut p);
    let spec = p.spec.unwrap();
    assert!(spec.security_context.is_none());
    assert!(spec.containers.iter().all(|c| c.security_context.is_none()));
}

#[test]
fn seed_pod_starts_a_new_cluster_with_emptydir_and_sidecar() {
    let c = minimal();
    let v = "3.6.16".parse().unwrap();
    let p = member_pod(&c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]).unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("c-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("c"));
    let etcd = &spec.containers[0];
    assert_eq!(etcd.image.as_deref(), Some("localhost/ouroboros/etcd:v3.6.16"));
    let args = etcd.args.clone().unwrap();
    assert!(
        args.contains(&"--initial-cluster-state=new".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--initial-cluster=c-0=http://c-0.c.ns.svc:2380".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--initial-cluster-token=c-1234abcd".to_owned()),
        "{args:?}"
    );
    assert_eq!(spec.containers[1].name, "backup-sidecar");
    // The sidecar's API is served with the certificate the operator issues for the cluster.
    let sidecar = &spec.containers[1];
    assert!(
        sidecar
            .args
            .clone()
            .unwrap()
            .contains(&format!("--api-tls-dir={SIDECAR_API_TLS_MOUNT}")),
        "{:?}",
        sidecar.args
    );
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == SIDECAR_API_TLS_MOUNT)
        .expect("the sidecar does not mount its API certificate");
    assert_eq!(mount.read_only, Some(true));
    let volumes = spec.volumes.unwrap();
    let api_tls = volumes.iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(
        api_tls.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("c-sidecar-tls")
    );
    // etcd itself never sees it.
    assert!(
        spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != mount.name)
    );
    // The restricted Pod Security profile, for the pod and every container.
    let pod_security = spec.security_context.clone().expect("no pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(UNPRIVILEGED_ID));
    assert_eq!(pod_security.fs_group, Some(UNPRIVILEGED_ID));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_),
        Some("RuntimeDefault".to_owned())
    );
    for c in &spec.containers {
        let s = c.security_context.clone().unwrap_or_default();
        assert_eq!(s.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(s.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(
            s.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()]),
            "{}",
            c.name
        );
    }
    assert!(volumes[0].empty_dir.is_some());
    let labels = p.metadata.labels.unwrap();
    assert_eq!(labels[LABEL_VERSION], "3.6.16");
    assert_eq!(labels[LABEL_MEMBER], "c-0");
    let owner = &p.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.kind, "EtcdCluster");
    assert_eq!(owner.controller, Some(true));
    // Preferred anti-affinity is the default.
    assert!(
        spec.affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .is_some()
    );
}

#[test]
fn pvc_storage_gives_each_member_a_claim() {
    let c = cluster(json!({
        "size": 3,
        "storage": {"persistentVolumeClaim": {"size": "2Gi", "storageClassName": "fast"}},
    }));
    let v = "3.6.16".parse().unwrap();
    let pvc = member_pvc(&c, "c-2", v).map(Result::unwrap).unwrap();
    assert_eq!(pvc.metadata.name.as_deref(), Some("c-2-data"));
    assert_eq!(pvc.labels()[LABEL_MEMBER], "c-2");
    assert_eq!(pvc.labels()[LABEL_VERSION], "3.6.16");
    let spec = pvc.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let p = member_pod(
        &c,
        &images(),
        "c-2",
        v,
        InitialClusterState::Existing,
        &["c-0".into(), "c-2".into()],
    )
    .unwrap();
    let vol = &p.spec.unwrap().volumes.unwrap()[0];
    assert_eq!(
        vol.persistent_volume_claim.as_ref().unwrap().claim_name,
        "c-2-data"
    );
    assert!(member_pvc(&minimal(), "c-0", v).map(Result::unwrap).is_none());
}

fn sidecar_backup_mount(p: &Pod) -> Option<(String, String)> {
    let spec = p.spec.clone().unwrap();
    let mount = spec
        .containers
        .iter()
        .find(|c| c.name == SIDECAR_CONTAINER)?
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == "backups")?;
    let claim = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "backups")?
        .persistent_volume_claim?
        .claim_name;
    Some((claim, mount.mount_path))
}

#[test]
fn backups_default_to_a_claim_beside_pvc_data_and_to_none_otherwise() {
    let v = "3.6.16".parse().unwrap();
    let pod = |c: &EtcdCluster| {
        member_pod(c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]).unwrap()
    };
    // `extra`: fields added to a spec with PVC data.
    let with = |extra: serde_json::Value| {
        let mut spec = json!({
            "size": 3,
            "storage": {"persistentVolumeClaim": {"size": "2Gi", "storageClassName": "fast"}},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        cluster(spec)
    };

    let c = with(json!({}));
    let claim = default_backup_pvc(&c).map(Result::unwrap).unwrap();
    assert_eq!(claim.metadata.name.as_deref(), Some("c-backups"));
    assert!(
        claim.metadata.owner_references.is_none(),
        "backups must outlive the cluster"
    );
    assert_eq!(claim.spec.unwrap().storage_class_name.as_deref(), Some("fast"));
    // Members do not mount it (a ReadWriteOnce claim on members on different nodes): writer pods do.
    assert_eq!(sidecar_backup_mount(&pod(&c)), None);
    assert_eq!(
        backup_dir(&c, &backup_volume(&c).unwrap()),
        "/backups/c-backups/ns/c"
    );

    let named = with(json!({"backup": {
        "schedule": "0 * * * *",
        "destination": {"volume": {"claimName": "shared", "path": "etcd/"}},
    }}));
    assert!(default_backup_pvc(&named).map(Result::unwrap).is_none());
    assert_eq!(
        sidecar_backup_mount(&pod(&named)),
        Some(("shared".into(), "/backups/shared".into()))
    );
    assert_eq!(
        backup_dir(&named, &backup_volume(&named).unwrap()),
        "/backups/shared/etcd/ns/c"
    );

    let s3 = with(json!({"backup": {"schedule": "0 * * * *", "destination": {"s3": {"bucket": "bkt"}}}}));
    assert!(default_backup_pvc(&s3).map(Result::unwrap).is_none());
    assert_eq!(sidecar_backup_mount(&pod(&s3)), None);

    let empty_dir = minimal();
    assert!(backup_volume(&empty_dir).is_none());
    assert_eq!(sidecar_backup_mount(&pod(&empty_dir)), None);
}

#[test]
fn the_sidecar_takes_spec_backup_resources_else_a_bounded_default() {
    let v: ouroboros_crds::EtcdVersion = "3.6.16".parse().unwrap();
    let sidecar_resources = |c: &EtcdCluster| {
        let p = member_pod(c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]).unwrap();
        let spec = p.spec.unwrap();
        let sidecar = spec
            .containers
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .unwrap();
        serde_json::to_value(sidecar.resources.clone().unwrap()).unwrap()
    };
    assert_eq!(
        sidecar_resources(&minimal()),
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
    );
    let limited = cluster(json!({"size": 3, "backup": {"schedule": "0 * * * *",
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}}));
    assert_eq!(
        sidecar_resources(&limited),
        json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
    );
}

#[test]
fn pdb_keeps_quorum() {
    let c = minimal();
    let pdb = pod_disruption_budget(&c).unwrap();
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
    );
}

#[test]
fn image_tags_follow_the_format_that_goes_with_the_repository() {
    let v = "3.6.5".parse().unwrap();
    let k8s = Images {
        etcd_repository: "registry.k8s.io/etcd".into(),
        etcd_tag_format: "{version}-0".into(),
        ..images()
    };
    // The operator's repository with the operator's format.
    assert_eq!(etcd_image(&minimal(), &k8s, v), "registry.k8s.io/etcd:3.6.5-0");
    // A cluster's repository with the etcd project's format unless it names its own.
    let own = cluster(json!({"size": 1, "repository": "quay.io/coreos/etcd"}));
    assert_eq!(etcd_image(&own, &k8s, v), "quay.io/coreos/etcd:v3.6.5");
    let own = cluster(json!({"size": 1, "repository": "mirror/etcd", "imageTagFormat": "{version}-0"}));
    assert_eq!(etcd_image(&own, &images(), v), "mirror/etcd:3.6.5-0");
    // A format alone applies to the operator's repository.
    let own = cluster(json!({"size": 1, "imageTagFormat": "{version}-1"}));
    assert_eq!(etcd_image(&own, &k8s, v), "registry.k8s.io/etcd:3.6.5-1");
}

#[test]
fn the_template_digest_changes_with_the_pod_template_and_nothing_else() {
    let base = json!({"size": 3, "version": "3.6.5", "storage": {"persistentVolumeClaim": {"size": "1Gi"}},
                      "backup": {"schedule": "0 * * * *"}});
    let digest = |patch: serde_json::Value, images: &Images| {
        let mut spec = base.clone();
        json_patch_merge(&mut spec, patch);
        template_digest(&cluster(spec), images)
    };
    let d0 = digest(json!({}), &images());
    assert_eq!(d0.len(), 16);
    // What members are rolled for by other means, or what is no part of a pod, leaves it alone.
    for same in [
        json!({"size": 5}),
        json!({"version": "3.6.6"}),
        json!({"etcd": {"quotaBackendBytes": 4294967296_i64}}),
        json!({"backup": {"schedule": "*/5 * * * *"}}),
    ] {
        assert_eq!(digest(same.clone(), &images()), d0, "{same}");
    }
    // What shapes the pod changes it.
    for changed in [
        json!({"pod": {"resources": {"requests": {"cpu": "200m"}}}}),
        json!({"pod": {"labels": {"team": "a"}}}),
        json!({"pod": {"antiAffinity": "Required"}}),
        json!({"pod": {"priorityClassName": "system-cluster-critical"}}),
        json!({"repository": "quay.io/coreos/etcd"}),
        json!({"imageTagFormat": "{version}-0"}),
        json!({"backup": {"resources": {"limits": {"memory": "512Mi"}}}}),
    ] {
        assert_ne!(digest(changed.clone(), &images()), d0, "{changed}");
    }
    let new_sidecar = Images {
        sidecar: "sidecar:2".into(),
        ..images()
    };
    assert_ne!(digest(json!({}), &new_sidecar), d0, "a new sidecar image");
    // Every member pod records it.
    let c = cluster(base.clone());
    let p = member_pod(
        &c,
        &images(),
        "c-1",
        "3.6.5".parse().unwrap(),
        InitialClusterState::Existing,
        &["c-0".into(), "c-1".into()],
    )
    .unwrap();
    assert_eq!(p.annotations().get(ANNOTATION_TEMPLATE), Some(&d0));
}

#[test]
fn a_pod_without_a_template_record_is_judged_by_its_images() {
    let c = cluster(json!({"size": 1, "version": "3.6.5"}));
    let v = "3.6.5".parse().unwrap();
    let mut p = member_pod(&c, &images(), "c-0", v, InitialClusterState::New, &["c-0".into()]).unwrap();
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(ANNOTATION_TEMPLATE);
    assert!(pod_images_current(&p, &c, &images(), v));
    // A new sidecar image (an operator upgrade) or another etcd repository is seen.
    let newer = Images {
        sidecar: "sidecar:2".into(),
        ..images()
    };
    assert!(!pod_images_current(&p, &c, &newer, v));
    let moved = cluster(json!({"size": 1, "version": "3.6.5", "repository": "quay.io/coreos/etcd"}));
    assert!(!pod_images_current(&p, &moved, &images(), v));
}

/// RFC 7386 merge of `patch` into `doc`.
fn json_patch_merge(doc: &mut serde_json::Value, patch: serde_json::Value) {
    match (doc, patch) {
        (serde_json::Value::Object(d), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                json_patch_merge(d.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (d, p) => *d = p,
    }
}

#[test]
fn repository_override_and_required_anti_affinity() {
    let c =
        cluster(json!({"size": 1, "repository": "my.registry/etcd", "pod": {"antiAffinity": "Required"}}));
    assert_eq!(
        etcd_image(&c, &images(), "3.5.35".parse().unwrap()),
        "my.registry/etcd:v3.5.35"
    );
    let p = member_pod(
        &c,
        &images(),
        "c-0",
        "3.5.35".parse().unwrap(),
        InitialClusterState::New,
        &["c-0".into()],
    )
    .unwrap();
    assert!(
        p.spec
            .unwrap()
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .is_some()
    );
}

/// The Secret the volume `name` holds.
fn secret_of(volumes: &[k8s_openapi::api::core::v1::Volume], name: &str) -> Option<String> {
    volumes
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.secret.clone())
        .and_then(|s| s.secret_name)
}

fn assert_flags(args: &[String], flags: &[&str]) {
    for flag in flags {
        assert!(args.contains(&(*flag).to_owned()), "{flag} missing from {args:?}");
    }
}

#[test]
fn tls_members_use_https_and_mount_their_certificates() {
    let c = cluster(
        json!({"size": 1, "tls": {"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"}}),
    );
    assert_eq!(peer_url(&c, "c-0"), "https://c-0.c.ns.svc:2380");
    let p = member_pod(
        &c,
        &images(),
        "c-0",
        "3.6.16".parse().unwrap(),
        InitialClusterState::New,
        &["c-0".into()],
    )
    .unwrap();
    let spec = p.spec.unwrap();
    let args = spec.containers[0].args.clone().unwrap();
    assert_flags(
        &args,
        &[
            "--listen-client-urls=https://0.0.0.0:2379",
            "--listen-metrics-urls=http://0.0.0.0:2381",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--initial-cluster=c-0=https://c-0.c.ns.svc:2380",
        ],
    );
    let volumes = spec.volumes.unwrap();
    let secret = |n: &str| secret_of(&volumes, n);
    assert_eq!(secret("peer-tls").as_deref(), Some("p"));
    assert_eq!(secret("server-tls").as_deref(), Some("s"));
    // The client certificate (spec.tls.operatorClientSecret) is for the backup sidecar alone: the
    // etcd container never sees it, and the sidecar reads it read-only.
    assert_eq!(secret("client-tls").as_deref(), Some("o"));
    let mounts = |i: usize| spec.containers[i].volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts(0).iter().all(|m| m.name != "client-tls"),
        "etcd mounts the client certificate"
    );
    let m = mounts(1)
        .into_iter()
        .find(|m| m.name == "client-tls")
        .expect("sidecar lacks it");
    assert_eq!(m.read_only, Some(true));
    let sidecar_args = spec.containers[1].args.clone().unwrap_or_default();
    assert!(
        sidecar_args.contains(&"--etcd-endpoint=https://127.0.0.1:2379".to_owned()),
        "{sidecar_args:?}"
    );
    assert!(
        sidecar_args.contains(&"--tls-server-name=c-0.c.ns.svc".to_owned()),
        "{sidecar_args:?}"
    );
}

#[test]
fn services_select_the_cluster() {
    let c = minimal();
    let h = headless_service(&c).unwrap().spec.unwrap();
    assert_eq!(h.cluster_ip.as_deref(), Some("None"));
    assert_eq!(h.publish_not_ready_addresses, Some(true));
    let s = client_service(&c).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("c-client"));
    let spec = s.spec.unwrap();
    assert_eq!(spec.selector.unwrap()[LABEL_CLUSTER], "c");
    // Ordinary clients only reach ready members.
    assert_eq!(spec.publish_not_ready_addresses, Some(false));
    let self_hosted =
        cluster(json!({"size": 3, "selfHosted": {"bootMemberClientEndpoint": "http://127.0.0.1:22379"}}));
    // The API server's etcd must not depend on readiness that only the API server can record.
    let spec = client_service(&self_hosted).unwrap().spec.unwrap();
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector.unwrap()[LABEL_VOTER], "true");
}

fn writer_backup() -> ouroboros_crds::EtcdBackup {
    serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": "b", "namespace": "ns", "uid": "b-uid"},
        "spec": {"clusterName": "c"},
    }))
    .unwrap()
}

#[test]
fn a_backup_writer_mounts_the_default_claim_where_members_did_and_dials_the_member() {
    let c = cluster(json!({
        "size": 3,
        "storage": {"persistentVolumeClaim": {"size": "2Gi"}},
        "tls": {"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"},
        "pod": {"nodeSelector": {"disk": "local"}},
    }));
    let b = writer_backup();
    let w = BackupWriter {
        backup: &b,
        member: "c-1",
        member_ip: "10.0.0.5",
        member_ports: Ports::POD_NETWORK,
        active_deadline: std::time::Duration::from_secs(1500),
        as_root: false,
    };
    let p = backup_writer_pod(&c, &images(), &w).unwrap();
    assert_eq!(p.metadata.name.as_deref(), Some("b-writer"));
    // The same place as a member's sidecar mounts it: archive locations do not change.
    assert_eq!(
        sidecar_backup_mount(&p),
        Some(("c-backups".into(), "/backups/c-backups".into()))
    );
    let labels = p.labels();
    assert_eq!(labels.get(LABEL_BACKUP_WRITER_OF).map(String::as_str), Some("c"));
    assert!(
        !labels.contains_key(LABEL_CLUSTER),
        "a writer carrying the cluster label would be taken for a member"
    );
    assert_eq!(p.annotations()[ANNOTATION_WRITER_MEMBER], "c-1");
    let owner = &p.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("EtcdBackup", "b-uid"));
    let spec = p.spec.clone().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(1500));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.node_selector.unwrap()["disk"], "local");
    assert_eq!(spec.containers.len(), 1);
    let sidecar = &spec.containers[0];
    let args = sidecar.args.clone().unwrap();
    assert_flags(
        &args,
        &[
            "--listen=0.0.0.0:8090",
            "--etcd-endpoint=https://10.0.0.5:2379",
            "--api-tls-dir=/etc/ouroboros/sidecar-api-tls",
            "--tls-dir=/etc/etcd/tls/client",
            "--tls-server-name=c-1.c.ns.svc",
        ],
    );
    let volumes = spec.volumes.unwrap();
    let secret = |n: &str| secret_of(&volumes, n);
    assert_eq!(secret("sidecar-api-tls").as_deref(), Some("c-sidecar-tls"));
    assert_eq!(secret("client-tls").as_deref(), Some("o"));
    // No member data: the writer reaches its member over the network.
    assert!(volumes.iter().all(|v| v.name != "data"));
    // Restricted, as member sidecars are.
    let pod_security = spec.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.fs_group, Some(UNPRIVILEGED_ID));
    let c_security = sidecar.security_context.clone().unwrap();
    assert_eq!(c_security.read_only_root_filesystem, Some(true));
    assert_eq!(c_security.allow_privilege_escalation, Some(false));

    // For a member on root's data, root as well; without TLS, plain http and no client certificate.
    let plain = cluster(json!({"size": 3, "storage": {"persistentVolumeClaim": {"size": "2Gi"}}}));
    let root = backup_writer_pod(&plain, &images(), &BackupWriter { as_root: true, ..w }).unwrap();
    let spec = root.spec.unwrap();
    assert!(spec.security_context.is_none());
    assert!(spec.containers[0].security_context.is_none());
    let args = spec.containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"--etcd-endpoint=http://10.0.0.5:2379".to_owned()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--tls-dir")), "{args:?}");
}

#[test]
fn a_drill_job_uses_the_etcd_image_as_published_and_reaches_only_the_store() {
    let c = cluster(
        json!({"size": 3, "version": "3.6.16", "backup": {"schedule": "0 * * * *",
        "destination": {"s3": {"bucket": "bk", "region": "eu-1", "credentialsSecret": "creds"}}}}),
    );
    let mut b: ouroboros_crds::EtcdBackup = serde_json::from_value(json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": "daily", "namespace": "ns", "uid": "b-uid"},
        "spec": {"clusterName": "c"},
    }))
    .unwrap();
    b.status = Some(ouroboros_crds::EtcdBackupStatus {
        location: Some("s3://bk/ns/c/x.tar.gz".into()),
        sha256: Some("ab".repeat(32)),
        raw_size: Some(3 << 30),
        ..Default::default()
    });
    let chosen = crate::backup_source::chosen(&b);
    let drill = Drill {
        backup: &b,
        chosen: &chosen,
        identity_secret: None,
        version: "3.6.16".parse().unwrap(),
        attempt: 2,
        request: None,
        revision: 42,
        hash: Some((7, 30)),
        deadline: std::time::Duration::from_secs(1200),
    };
    let job = drill_job(&c, &images(), &drill).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("daily-drill-2"));
    // Each drill request gets names of its own: its attempts count from 1 again.
    let first = drill_job_name("daily", Some("after-damage"), 1);
    assert_ne!(first, drill_job_name("daily", None, 1));
    assert_ne!(first, drill_job_name("daily", Some("a-month-later"), 1));
    assert_eq!(first, drill_job_name("daily", Some("after-damage"), 1), "stable");
    assert!(
        first.starts_with("daily-drill-") && first.ends_with("-1"),
        "{first}"
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("EtcdBackup", "b-uid"));
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(
        (spec.backoff_limit, spec.active_deadline_seconds),
        (Some(0), Some(1200))
    );
    // The drill pod is nobody's member: neither the Services, the budget nor anti-affinity select it.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap_or_default();
    let selects = |selector: &std::collections::BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    let service = headless_service(&c).unwrap().spec.unwrap().selector.unwrap();
    let budget = pod_disruption_budget(&c).unwrap().spec.unwrap().selector.unwrap();
    assert!(
        !selects(&service),
        "{pod_labels:?} matches the Service's {service:?}"
    );
    assert!(
        !selects(budget.match_labels.as_ref().unwrap()),
        "{pod_labels:?} is in the budget"
    );
    assert_eq!(pod_labels.get(LABEL_DRILL_OF).map(String::as_str), Some("daily"));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let init = pod.init_containers.as_ref().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [FETCH_CONTAINER, RESTORE_CONTAINER, ETCD_CONTAINER]);
    // etcd is a native sidecar: it runs beside the check and stops when the check ends.
    assert_eq!(init[2].restart_policy.as_deref(), Some("Always"));
    for c in &init[1..] {
        let command = c.command.as_ref().unwrap();
        assert!(
            ["/usr/local/bin/etcdutl", "/usr/local/bin/etcd"].contains(&command[0].as_str()),
            "{command:?}: no shell"
        );
        assert!(
            !command
                .iter()
                .any(|a| a.contains("bump-revision") || a.contains("mark-compacted")),
            "{command:?}"
        );
        assert_eq!(c.image.as_deref(), Some("localhost/ouroboros/etcd:v3.6.16"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        // The database (3 GiB) plus 256 MiB.
        assert_eq!(limits["memory"].0, "3328Mi");
    }
    assert!(
        init[2]
            .command
            .as_ref()
            .unwrap()
            .contains(&"--auto-compaction-retention=0".to_owned())
    );
    let fetch_args = init[0].args.as_ref().unwrap();
    assert!(
        fetch_args.contains(&format!("--sha256={}", "ab".repeat(32))),
        "{fetch_args:?}"
    );
    assert!(fetch_args.contains(&"--region=eu-1".to_owned()), "{fetch_args:?}");
    let check = &pod.containers[0];
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(
        check.args.as_ref().unwrap()[1..],
        [
            "--endpoint=http://127.0.0.1:2379",
            "--revision=42",
            "--kv-hash=7",
            "--compact-revision=30"
        ]
    );
    let scratch = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "scratch")
        .unwrap();
    // Twice the snapshot plus 512 MiB.
    assert_eq!(
        scratch.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap().0,
        "6656Mi"
    );
}
