use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};

use super::*;

const DAY: i64 = 24 * 3600;
const NOW: i64 = 1_800_000_000;

struct Ca {
    pem: String,
    params: CertificateParams,
    key: KeyPair,
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = at(NOW - 10 * DAY);
    params.not_after = at(NOW + 3650 * DAY);
    let key = KeyPair::generate().unwrap();
    let pem = params.clone().self_signed(&key).unwrap().pem();
    Ca { pem, params, key }
}

/// A leaf for `names`, valid from `from` to `until` (relative to NOW), signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], from: i64, until: i64) -> String {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.not_before = at(NOW + from);
    params.not_after = at(NOW + until);
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca.params.clone(), &ca.key);
    params.signed_by(&key, &issuer).unwrap().pem()
}

fn members() -> Vec<String> {
    vec!["m-0.m.ns.svc".into(), "m-1.m.ns.svc".into()]
}

fn secret<'a>(name: &'a str, purpose: Purpose, ca: &'a str, cert: &'a str) -> SecretPem<'a> {
    SecretPem {
        name,
        purpose,
        ca: ca.as_bytes(),
        cert: cert.as_bytes(),
    }
}

fn one<'a>(purpose: Purpose, ca: &'a str, cert: &'a str) -> Vec<SecretPem<'a>> {
    vec![secret("s", purpose, ca, cert)]
}

#[test]
fn a_leaf_that_names_every_member_and_chains_to_its_ca_is_fine() {
    let ca = ca("ca");
    let cert = leaf(&ca, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &ca.pem, &cert), &members(), NOW);
    assert_eq!(report.problems, vec![]);
    assert_eq!(report.leaves.len(), 1);
    assert!(report.expiring(NOW, EXPIRY_WARNING).is_empty());
}

#[test]
fn a_missing_member_name_is_named() {
    let ca = ca("ca");
    let cert = leaf(&ca, &["m-0.m.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Peer, &ca.pem, &cert), &members(), NOW);
    assert_eq!(
        report.problems,
        vec![CertificateProblem::MissingName {
            field: "spec.tls.peerSecret",
            secret: "s".into(),
            missing: "m-1.m.ns.svc".into()
        }]
    );
    assert!(
        report.problems[0]
            .to_string()
            .contains("not valid for m-1.m.ns.svc")
    );
}

#[test]
fn a_wildcard_covers_one_label_only() {
    let ca = ca("ca");
    let cert = leaf(&ca, &["*.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &ca.pem, &cert), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::MissingName { .. }]
    ));
}

#[test]
fn self_hosted_members_are_checked_by_ip_address() {
    let ca = ca("ca");
    let cert = leaf(&ca, &["10.244.0.1"], -DAY, 90 * DAY);
    let ips = vec!["10.244.0.1".to_owned(), "10.244.0.2".to_owned()];
    let report = check(&one(Purpose::Peer, &ca.pem, &cert), &ips, NOW);
    assert!(
        matches!(&report.problems[..], [CertificateProblem::MissingName { missing, .. }] if missing == "10.244.0.2"),
        "{:?}",
        report.problems
    );
}

#[test]
fn the_operator_client_certificate_need_not_name_members() {
    let ca = ca("ca");
    let cert = leaf(&ca, &["etcd-operator"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::OperatorClient, &ca.pem, &cert), &members(), NOW);
    assert_eq!(report.problems, vec![]);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = ca("ca");
    let expired = leaf(&ca, &["*.m.ns.svc"], -90 * DAY, -DAY);
    let report = check(&one(Purpose::Server, &ca.pem, &expired), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::Expired { .. }]
    ));
    let future = leaf(&ca, &["*.m.ns.svc"], DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &ca.pem, &future), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::NotYetValid { .. }]
    ));
}

#[test]
fn a_leaf_from_another_ca_is_refused_and_a_bundle_with_both_accepts_it() {
    let (old, new) = (ca("old"), ca("new"));
    let cert = leaf(&new, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &old.pem, &cert), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::NotSignedByCa { .. }]
    ));
    let bundle = format!("{}{}", old.pem, new.pem);
    let report = check(&one(Purpose::Server, &bundle, &cert), &members(), NOW);
    assert_eq!(report.problems, vec![]);
}

#[test]
fn a_ca_with_the_same_name_but_another_key_does_not_count() {
    let (real, impostor) = (ca("ca"), ca("ca"));
    let cert = leaf(&real, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &impostor.pem, &cert), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::NotSignedByCa { .. }]
    ));
}

#[test]
fn garbage_is_reported_not_a_panic() {
    let report = check(&one(Purpose::Peer, "not pem", "not pem either"), &members(), NOW);
    assert!(
        matches!(
            report.problems[..],
            [
                CertificateProblem::Unparseable { what: "ca.crt", .. },
                CertificateProblem::Unparseable { what: "tls.crt", .. }
            ]
        ),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_chain_through_an_intermediate_in_tls_crt_is_accepted() {
    let root = ca("root");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "intermediate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = at(NOW - 10 * DAY);
    params.not_after = at(NOW + 365 * DAY);
    let key = KeyPair::generate().unwrap();
    let pem = params
        .signed_by(&key, &Issuer::new(root.params.clone(), &root.key))
        .unwrap()
        .pem();
    let intermediate = Ca { pem, params, key };
    let chain = format!(
        "{}{}",
        leaf(&intermediate, &["*.m.ns.svc"], -DAY, 90 * DAY),
        intermediate.pem
    );
    let report = check(&one(Purpose::Server, &root.pem, &chain), &members(), NOW);
    assert_eq!(report.problems, vec![]);
    // Without the intermediate, nothing ties the leaf to the root.
    let alone = leaf(&intermediate, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let report = check(&one(Purpose::Server, &root.pem, &alone), &members(), NOW);
    assert!(matches!(
        report.problems[..],
        [CertificateProblem::NotSignedByCa { .. }]
    ));
}

#[test]
fn a_ca_in_another_secrets_ca_crt_counts() {
    // Separate client and server CAs: etcd checks clients with the server Secret's ca.crt.
    let (servers, clients) = (ca("servers"), ca("clients"));
    let server = leaf(&servers, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let client = leaf(&clients, &["operator"], -DAY, 90 * DAY);
    let secrets = vec![
        secret("s", Purpose::Server, &clients.pem, &server),
        secret("o", Purpose::OperatorClient, &servers.pem, &client),
    ];
    assert_eq!(check(&secrets, &members(), NOW).problems, vec![]);
}

#[test]
fn certificates_ending_within_the_window_are_expiring_soonest_first() {
    let ca = ca("ca");
    let (a, b, c) = (
        leaf(&ca, &["*.m.ns.svc"], -DAY, 20 * DAY),
        leaf(&ca, &["*.m.ns.svc"], -DAY, 5 * DAY),
        leaf(&ca, &["*.m.ns.svc"], -DAY, 200 * DAY),
    );
    let secrets = vec![
        secret("a", Purpose::Peer, &ca.pem, &a),
        secret("b", Purpose::Server, &ca.pem, &b),
        secret("c", Purpose::OperatorClient, &ca.pem, &c),
    ];
    let report = check(&secrets, &members(), NOW);
    let soon: Vec<&str> = report
        .expiring(NOW, EXPIRY_WARNING)
        .iter()
        .map(|l| l.secret.as_str())
        .collect();
    assert_eq!(soon, vec!["b", "a"]);
}

#[test]
fn the_digest_changes_with_any_byte_and_with_how_bytes_are_split() {
    let d = digest(&[(b"ca", b"crt", b"key")]);
    assert_eq!(d, digest(&[(b"ca", b"crt", b"key")]));
    assert_ne!(d, digest(&[(b"ca", b"crt", b"kez")]));
    assert_ne!(d, digest(&[(b"c", b"acrt", b"key")]));
}
