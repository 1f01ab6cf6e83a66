use std::sync::Arc;

use rcgen::{CertificateParams, Issuer, KeyPair};

use super::*;
use crate::certificates::tests::{Ca, ca};

fn leaf(ca: &Ca, names: &[&str]) -> Vec<u8> {
    let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    params
        .signed_by(&key, &Issuer::new(ca.params.clone(), &ca.key))
        .unwrap()
        .pem()
        .into_bytes()
}

/// A set whose three Secrets trust `trust` and hold leaves from `issuer` naming `names`.
fn set(trust: &str, issuer: &Ca, names: &[&str]) -> CertificateSet {
    let secrets = [Purpose::Peer, Purpose::Server, Purpose::OperatorClient]
        .into_iter()
        .map(|p| {
            let t = ClientTls {
                ca: trust.as_bytes().to_vec(),
                cert: leaf(issuer, names),
                key: b"key".to_vec(),
            };
            (format!("{p:?}"), p, t)
        })
        .collect();
    CertificateSet::of(member_access::material(secrets).unwrap())
}

fn members() -> Vec<String> {
    vec!["c-0.c.ns.svc".into(), "c-1.c.ns.svc".into()]
}

const NAMES: [&str; 1] = ["*.c.ns.svc"];

#[test]
fn valid_secrets_are_accepted_and_pods_on_other_sets_are_outdated() {
    let ca = ca("ca");
    let (running, desired) = (set(&ca.pem, &ca, &NAMES), set(&ca.pem, &ca, &NAMES));
    let inputs = CertificateInputs {
        desired: desired.clone(),
        running: vec![running.clone()],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert_eq!(c.accepted.as_ref().map(|a| &a.digest), Some(&desired.digest));
    assert!(c.blocked.is_none() && c.report.problems.is_empty());
    assert!(!c.current(Some(&running.digest)));
    assert!(c.current(Some(&desired.digest)));
    // Pods made before certificates were recorded are not restarted by an operator upgrade.
    assert!(c.current(None));
    assert!(Arc::ptr_eq(&c.dialing(&inputs), &desired.material.client));
}

/// The refused renewal reaches no one: members stay on, new members get, the set in use; the
/// operator keeps dialling with its pair.
#[test]
fn a_refused_renewal_keeps_every_member_on_the_newest_set_in_use() {
    let ca = ca("ca");
    let (older, newest) = (set(&ca.pem, &ca, &NAMES), set(&ca.pem, &ca, &NAMES));
    let narrow = set(&ca.pem, &ca, &["c-client.ns.svc"]);
    let inputs = CertificateInputs {
        desired: narrow,
        running: vec![newest.clone(), older.clone()],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert_eq!(c.accepted.as_ref().map(|a| &a.digest), Some(&newest.digest));
    assert!(c.blocked.is_none());
    assert!(
        c.report
            .problems
            .iter()
            .any(|p| p.to_string().contains("c-0.c.ns.svc")),
        "{:?}",
        c.report.problems
    );
    // A roll under way goes on onto the newest set (it was accepted from the older one).
    assert!(c.current(Some(&newest.digest)) && !c.current(Some(&older.digest)));
    assert!(Arc::ptr_eq(&c.dialing(&inputs), &newest.material.client));
}

#[test]
fn a_ca_replaced_at_once_is_refused_and_members_stay() {
    let (old, new) = (ca("old"), ca("new"));
    let running = set(&old.pem, &old, &NAMES);
    let inputs = CertificateInputs {
        desired: set(&new.pem, &new, &NAMES),
        running: vec![running.clone()],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert_eq!(c.accepted.as_ref().map(|a| &a.digest), Some(&running.digest));
    assert!(
        c.report
            .problems
            .iter()
            .any(|p| matches!(p, certificates::CertificateProblem::CannotTalk { .. })),
        "{:?}",
        c.report.problems
    );
    // Through a bundle it rolls.
    let bundle = format!("{}{}", old.pem, new.pem);
    let inputs = CertificateInputs {
        desired: set(&bundle, &old, &NAMES),
        running: vec![running],
    };
    assert!(
        choose(&inputs, &members(), jiff::Timestamp::now())
            .report
            .problems
            .is_empty()
    );
}

/// Nothing usable: no member can be started, and the reason says why.
#[test]
fn refused_secrets_with_no_set_in_use_block() {
    let ca = ca("ca");
    let inputs = CertificateInputs {
        desired: set(&ca.pem, &ca, &["elsewhere.example"]),
        running: vec![],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert!(c.accepted.is_none());
    let why = c.blocked.clone().unwrap();
    assert!(
        why.contains("spec.tls.peerSecret") && why.contains("c-1.c.ns.svc"),
        "{why}"
    );
    // Nothing is restarted for its certificates while nothing is accepted.
    assert!(c.current(Some(&"anything".to_owned())));
}

#[test]
fn pods_mount_the_copies_and_record_the_digest() {
    let ca = ca("ca");
    let s = set(&ca.pem, &ca, &NAMES);
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "c-0"},
        "spec": {"containers": [], "volumes": [
            {"name": "peer-tls", "secret": {"secretName": "mine"}},
            {"name": "server-tls", "secret": {"secretName": "mine"}},
            {"name": "client-tls", "secret": {"secretName": "op"}},
            {"name": "sidecar-api-tls", "secret": {"secretName": "c-sidecar-tls"}}
        ]}
    }))
    .unwrap();
    mount(&mut pod, "c", &s);
    let names: Vec<String> = pod
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .filter_map(|v| v.secret?.secret_name)
        .collect();
    let d = &s.digest;
    assert_eq!(
        names,
        [
            format!("c-certs-{d}-peer"),
            format!("c-certs-{d}-server"),
            format!("c-certs-{d}-client"),
            "c-sidecar-tls".into()
        ]
    );
    assert_eq!(
        pod.metadata.annotations.unwrap()[vocabulary::ANNOTATION_CERTIFICATES_DIGEST],
        *d
    );
}

#[test]
fn copies_are_immutable_owned_and_labelled() {
    let ca = ca("ca");
    let s = set(&ca.pem, &ca, &NAMES);
    let cluster: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.ouroboros.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "c", "namespace": "ns", "uid": "u"}, "spec": {"size": 3}
    }))
    .unwrap();
    let copies = copies(&cluster, &s);
    assert_eq!(copies.len(), 3);
    for c in &copies {
        assert_eq!(c.immutable, Some(true));
        assert_eq!(c.owner_references().first().map(|o| o.uid.as_str()), Some("u"));
        assert_eq!(c.labels()[LABEL_DIGEST], s.digest);
        assert_eq!(c.data.as_ref().unwrap().len(), 3);
    }
}

#[test]
fn the_newest_pods_set_comes_first() {
    let pod = |name: &str, created: &str, digest: Option<&str>| -> Pod {
        let mut meta = serde_json::json!({"name": name, "creationTimestamp": created});
        if let Some(d) = digest {
            meta["annotations"] = serde_json::json!({vocabulary::ANNOTATION_CERTIFICATES_DIGEST: d});
        }
        serde_json::from_value(serde_json::json!({"metadata": meta})).unwrap()
    };
    let pods = [
        pod("c-0", "2026-01-01T00:00:00Z", Some("a")),
        pod("c-1", "2026-01-03T00:00:00Z", Some("b")),
        pod("c-2", "2026-01-02T00:00:00Z", Some("a")),
        pod("c-3", "2026-01-04T00:00:00Z", None),
    ];
    assert_eq!(running_digests(&pods), ["b", "a"]);
}

/// Each leaf issued by a CA of some ca.crt is not enough: the peer leaf must come from a CA of the
/// peer ca.crt, or once every member ran the set they would refuse each other.
#[test]
fn a_set_whose_peer_leaf_its_own_peer_ca_did_not_issue_is_refused() {
    let (a, b) = (ca("a"), ca("b"));
    let both = format!("{}{}", a.pem, b.pem);
    let running = set(&both, &a, &NAMES);
    let mut desired = set(&both, &a, &NAMES).material;
    for (_, purpose, t) in &mut desired.secrets {
        if *purpose == Purpose::Peer {
            t.ca = a.pem.clone().into_bytes();
            t.cert = leaf(&b, &NAMES);
        }
    }
    let inputs = CertificateInputs {
        desired: CertificateSet::of(desired),
        running: vec![running.clone()],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert!(
        c.report.problems.iter().any(|p| matches!(
            p,
            certificates::CertificateProblem::Mismatched {
                field: "spec.tls.peerSecret",
                ..
            }
        )),
        "{:?}",
        c.report.problems
    );
    assert_eq!(c.accepted.map(|a| a.digest), Some(running.digest));
}

/// While a renewal is refused, the leaves members still run are in the expiry report too.
#[test]
fn the_leaves_members_run_are_reported_while_a_renewal_is_refused() {
    let ca = ca("ca");
    let running = set(&ca.pem, &ca, &NAMES);
    let inputs = CertificateInputs {
        desired: set(&ca.pem, &ca, &["elsewhere.example"]),
        running: vec![running],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert_eq!(c.report.leaves.len(), 6);
    assert!(c.report.leaves.iter().any(|l| l.secret == "Peer"));
}

/// A pod whose recorded set has no copies was made before copies: not restarted for it.
#[test]
fn a_pod_of_an_operator_without_copies_is_current() {
    let ca = ca("ca");
    let inputs = CertificateInputs {
        desired: set(&ca.pem, &ca, &NAMES),
        running: vec![],
    };
    let c = choose(&inputs, &members(), jiff::Timestamp::now());
    assert!(c.current(Some(&"digest-of-an-older-operator".to_owned())));
}
