use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};

use super::*;

const DAY: i64 = 24 * 3600;
const NOW: i64 = 1_800_000_000;

/// A test CA (also used by `certificate_copies`'s tests).
pub(crate) struct Ca {
    pub(crate) pem: String,
    pub(crate) params: CertificateParams,
    pub(crate) key: KeyPair,
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

pub(crate) fn ca(name: &str) -> Ca {
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

/// Peer, server and operator-client Secrets over `ca` (one PEM or a bundle), leaves from `issuer`.
fn set_of<'a>(ca: &'a str, peer: &'a str, server: &'a str, client: &'a str) -> Vec<SecretPem<'a>> {
    vec![
        secret("peer", Purpose::Peer, ca, peer),
        secret("server", Purpose::Server, ca, server),
        secret("client", Purpose::OperatorClient, ca, client),
    ]
}

#[test]
fn a_renewal_from_the_same_ca_rolls() {
    let ca = ca("ca");
    let [p, s, c] = [(); 3].map(|()| leaf(&ca, &["*.m.ns.svc"], -DAY, 90 * DAY));
    let [p2, s2, c2] = [(); 3].map(|()| leaf(&ca, &["*.m.ns.svc"], -DAY, 180 * DAY));
    assert_eq!(
        roll_problems(&set_of(&ca.pem, &p, &s, &c), &set_of(&ca.pem, &p2, &s2, &c2)),
        vec![]
    );
}

/// A CA replaced at once would leave the restarted member and the others refusing each other; the
/// bundle procedure's three steps each roll.
#[test]
fn a_ca_replaced_at_once_is_refused_and_the_bundle_steps_each_roll() {
    let (old, new) = (ca("old"), ca("new"));
    let names = ["*.m.ns.svc"];
    let [p1, s1, c1] = [(); 3].map(|()| leaf(&old, &names, -DAY, 90 * DAY));
    let [p2, s2, c2] = [(); 3].map(|()| leaf(&new, &names, -DAY, 90 * DAY));
    let bundle = format!("{}{}", old.pem, new.pem);
    let start = set_of(&old.pem, &p1, &s1, &c1);

    let at_once = roll_problems(&start, &set_of(&new.pem, &p2, &s2, &c2));
    let fields: Vec<&str> = at_once
        .iter()
        .map(|p| match p {
            CertificateProblem::CannotTalk { field, .. } => *field,
            other => panic!("{other}"),
        })
        .collect();
    // Peer both ways, and the operator's client both ways.
    assert_eq!(
        fields,
        [
            "spec.tls.peerSecret",
            "spec.tls.peerSecret",
            "spec.tls.operatorClientSecret",
            "spec.tls.operatorClientSecret"
        ]
    );
    assert!(at_once[0].to_string().contains("every ca.crt"), "{}", at_once[0]);

    let step1 = set_of(&bundle, &p1, &s1, &c1);
    assert_eq!(roll_problems(&start, &step1), vec![]);
    let step2 = set_of(&bundle, &p2, &s2, &c2);
    assert_eq!(roll_problems(&step1, &step2), vec![]);
    let step3 = set_of(&new.pem, &p2, &s2, &c2);
    assert_eq!(roll_problems(&step2, &step3), vec![]);
    // Dropping the old CA while members still run leaves it issued is refused.
    assert_eq!(roll_problems(&step1, &step3).len(), 2);
}

#[test]
fn a_client_leaf_the_server_ca_did_not_issue_is_a_mismatch() {
    let (a, b) = (ca("a"), ca("b"));
    let [p, s] = [(); 2].map(|()| leaf(&a, &["*.m.ns.svc"], -DAY, 90 * DAY));
    let c = leaf(&b, &["*.m.ns.svc"], -DAY, 90 * DAY);
    let set = vec![
        secret("peer", Purpose::Peer, &a.pem, &p),
        secret("server", Purpose::Server, &a.pem, &s),
        secret("client", Purpose::OperatorClient, &b.pem, &c),
    ];
    // Each leaf has an issuer among the ca.crt, so check() alone accepts it.
    assert_eq!(check(&set, &members(), NOW).problems, vec![]);
    let fields: Vec<String> = pairing_problems(&set).iter().map(ToString::to_string).collect();
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(
        fields[0].contains("members would refuse the operator"),
        "{fields:?}"
    );
    assert!(
        fields[1].contains("the operator would refuse the members"),
        "{fields:?}"
    );
    let client = leaf(&a, &[], -DAY, 90 * DAY);
    let good = set_of(&a.pem, &p, &s, &client);
    assert_eq!(pairing_problems(&good), vec![]);
}
