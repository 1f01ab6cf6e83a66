//! The API server, with the committed CRDs, accepts the samples and refuses bad input with messages a
//! user can act on: `kubectl apply --dry-run=server` exactly as a user would run it.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use ouroboros_e2e::{TestNamespace, client, kubectl, repo_root};

fn path(rel: &str) -> String {
    repo_root().join(rel).display().to_string()
}

#[test]
fn deploy_and_samples_pass_server_dry_run() -> anyhow::Result<()> {
    let out = kubectl(&["apply", "--dry-run=server", "-k", &path("deploy")])?;
    ensure!(out.success, "deploy/ refused: {}", out.stderr);
    for sample in [
        "etcdcluster.yaml",
        "etcdcluster-self-hosted.yaml",
        "etcdbackup.yaml",
        "etcdrestore.yaml",
        "networkpolicy.yaml",
    ] {
        let out = kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &path(&format!("deploy/samples/{sample}")),
        ])?;
        ensure!(out.success, "sample {sample} refused: {}", out.stderr);
    }
    Ok(())
}

#[test]
fn invalid_samples_are_refused_with_readable_messages() -> anyhow::Result<()> {
    let cases = [
        ("size-zero.yaml", "size must be between 1 and 9"),
        ("unknown-field.yaml", r#"unknown field "spec.replicas""#),
        ("bad-version.yaml", "spec.version"),
        ("version-leading-zero.yaml", "spec.version"),
        (
            "restore-bad-template.yaml",
            "spec.clusterTemplate.size: Invalid value",
        ),
        ("backup-two-destinations.yaml", "set exactly one of s3 or volume"),
        (
            "self-hosted-relative-dir.yaml",
            "hostDataDir must be an absolute path without '..'",
        ),
        (
            "etcd-election-timeout.yaml",
            "electionTimeoutMillis must be at least five heartbeats",
        ),
        (
            "etcd-quota-too-large.yaml",
            "quotaBackendBytes must be between 16 MiB (16777216) and 8 GiB (8589934592)",
        ),
        (
            "etcd-retention-mode.yaml",
            "autoCompactionRetention is a number of revisions",
        ),
        (
            "defrag-window-duration.yaml",
            "spec.maintenance.defragmentation.window.duration: Invalid value",
        ),
        (
            "restore-revision-and-time.yaml",
            "set at most one of revision and time",
        ),
        ("restore-time-format.yaml", "time must be an RFC 3339 time"),
    ];
    for (file, expected) in cases {
        let out = kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &path(&format!("deploy/samples/invalid/{file}")),
        ])?;
        ensure!(!out.success, "{file} was accepted but must be refused");
        ensure!(
            out.stderr.contains(expected),
            "{file}: expected {expected:?} in the error, got: {}",
            out.stderr
        );
    }
    Ok(())
}

fn apply_in(ns: &str, file: &str) -> anyhow::Result<ouroboros_e2e::Output> {
    let yaml =
        std::fs::read_to_string(path(file))?.replace("namespace: default", &format!("namespace: {ns}"));
    let tmp = std::env::temp_dir().join(format!("{ns}-{}", file.replace('/', "_")));
    std::fs::write(&tmp, yaml)?;
    kubectl(&["apply", "-f", &tmp.display().to_string()])
}

#[tokio::test]
async fn storage_cannot_change_after_creation() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "immutable")
        .await?
        .run(|_, ns| async move {
            let created = apply_in(&ns, "deploy/samples/etcdcluster.yaml")?;
            ensure!(created.success, "creating the sample failed: {}", created.stderr);
            let changed = apply_in(&ns, "deploy/samples/invalid/storage-change.yaml")?;
            ensure!(!changed.success, "changing storage was accepted");
            ensure!(
                changed.stderr.contains("storage is immutable after creation"),
                "unexpected message: {}",
                changed.stderr
            );
            // Other fields stay editable.
            let yaml = std::fs::read_to_string(path("deploy/samples/etcdcluster.yaml"))?
                .replace("namespace: default", &format!("namespace: {ns}"))
                .replace("size: 3", "size: 5");
            let tmp = std::env::temp_dir().join(format!("{ns}-resize.yaml"));
            std::fs::write(&tmp, yaml)?;
            let resized = kubectl(&["apply", "-f", &tmp.display().to_string()])?;
            ensure!(resized.success, "changing size was refused: {}", resized.stderr);
            Ok(())
        })
        .await
}

/// Adding or removing `spec.tls` or `spec.selfHosted` on an existing cluster is refused by the API
/// server with the remedy, and the cluster is left as it was.
#[tokio::test]
async fn toggling_tls_or_self_hosted_is_refused() -> anyhow::Result<()> {
    use kube::{
        Api,
        api::{Patch, PatchParams},
    };
    use ouroboros_crds::EtcdCluster;
    let c = client().await?;
    TestNamespace::create(&c, "toggle")
        .await?
        .run(|c, ns| async move {
            // Paused: the test needs the object only, no members.
            let plain = ouroboros_e2e::etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: plain}\nspec: {size: 1, paused: true}\n",
            )
            .await?;
            let api: Api<EtcdCluster> = Api::namespaced(c.clone(), &ns);
            let cases = [
                (
                    serde_json::json!({"spec": {"tls": {"peerSecret": "p", "serverSecret": "s", "operatorClientSecret": "o"}}}),
                    "spec.tls cannot be added to or removed from an existing cluster",
                ),
                (
                    serde_json::json!({"spec": {"selfHosted": {"bootMemberClientEndpoint": "http://127.0.0.1:2379"}}}),
                    "spec.selfHosted cannot be added to or removed from an existing cluster",
                ),
            ];
            for (patch, expected) in cases {
                let err = api
                    .patch("plain", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .err();
                let msg = err.map(|e| e.to_string()).unwrap_or_default();
                ensure!(msg.contains(expected), "patch {patch} was not refused with {expected:?}: {msg:?}");
            }
            let now = api.get("plain").await?;
            ensure!(now.spec == plain.spec, "the refused patches changed the spec");
            Ok(())
        })
        .await
}

/// A version the schema accepts but that has no image (`3.9.9`) is named in the status and in one
/// Warning Event, instead of members waiting in ImagePullBackOff without a word.
#[tokio::test]
async fn a_version_without_an_image_is_named_in_the_status() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Event;
    use kube::{Api, api::ListParams};
    let c = client().await?;
    TestNamespace::create(&c, "noimage")
        .await?
        .run(|c, ns| async move {
            ouroboros_e2e::etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: v}\nspec: {size: 1, version: 3.9.9}\n",
            )
            .await?;
            let status = ouroboros_e2e::etcd_cluster::wait(
                &c,
                &ns,
                "v",
                "Degraded=ImagePullFailed",
                Duration::from_secs(120),
                |_, s| s.conditions.iter().any(|c| c.type_ == "Degraded" && c.reason == "ImagePullFailed"),
            )
            .await?;
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").context("Degraded")?;
            ensure!(
                degraded.status == "True"
                    && degraded.message.contains("v3.9.9")
                    && degraded.message.contains("spec.version 3.9.9"),
                "Degraded does not name the version and image: {}",
                degraded.message
            );
            let warnings = || {
                let c = c.clone();
                let ns = ns.clone();
                async move {
                    let events = Api::<Event>::namespaced(c, &ns).list(&ListParams::default()).await?;
                    // One Event object can stand for repeats (its count): sum them.
                    Ok::<i32, anyhow::Error>(
                        events
                            .items
                            .iter()
                            .filter(|e| e.reason.as_deref() == Some("ImagePullFailed"))
                            .filter(|e| e.type_.as_deref() == Some("Warning"))
                            .map(|e| e.count.unwrap_or(1))
                            .sum(),
                    )
                }
            };
            ouroboros_e2e::wait_for("the ImagePullFailed Event", Duration::from_secs(30), || async {
                Ok((warnings().await? > 0).then_some(()))
            })
            .await?;
            // The kubelet alternates ErrImagePull and ImagePullBackOff meanwhile; the Event must not.
            tokio::time::sleep(Duration::from_secs(25)).await;
            let warnings = warnings().await?;
            ensure!(warnings == 1, "{warnings} ImagePullFailed Events, expected one");
            Ok(())
        })
        .await
}

/// A cron expression the schema's five-field check accepts but whose step is out of range
/// (`*/61 * * * *`) gets `BackupHealthy=False` naming the field, instead of a schedule that silently
/// runs at some other time.
#[tokio::test]
async fn an_out_of_range_cron_step_is_named_in_backup_healthy() -> anyhow::Result<()> {
    let c = client().await?;
    TestNamespace::create(&c, "badcron")
        .await?
        .run(|c, ns| async move {
            ouroboros_e2e::etcd_cluster::create(
                &c,
                &ns,
                "apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: s}\nspec: {size: 1, backup: {schedule: '*/61 * * * *'}}\n",
            )
            .await?;
            let status = ouroboros_e2e::etcd_cluster::wait(
                &c,
                &ns,
                "s",
                "BackupHealthy=False",
                Duration::from_secs(120),
                |_, s| s.conditions.iter().any(|c| c.type_ == "BackupHealthy" && c.status == "False"),
            )
            .await?;
            let healthy = status.conditions.iter().find(|c| c.type_ == "BackupHealthy").context("BackupHealthy")?;
            ensure!(
                healthy.message.contains("spec.backup.schedule") && healthy.message.contains("minute step \"61\""),
                "BackupHealthy does not name the field: {}",
                healthy.message
            );
            Ok(())
        })
        .await
}
