//! What the operator checks in the certificates of `spec.tls` before members use them: each leaf
//! parses, is valid now, names every member, and was signed by a CA in its Secret's `ca.crt`; and
//! when each one expires. Pure over the PEM bytes, so every rule is tested directly.
//!
//! What a running member cannot pick up by itself (its trusted CAs, the sidecar's client pair) is
//! rolled out by restarting members one at a time (`member_access::TlsMaterial::digest`); while a
//! Secret fails these checks no member is restarted (one restarted on it could not talk to its
//! peers or clients), and the cluster says which Secret and what is wrong.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, pem::Pem};

/// Under this long before a certificate's end, `CertificatesExpiring` is raised.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Which of `spec.tls`'s Secrets, and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// `spec.tls.peerSecret`: members to each other.
    Peer,
    /// `spec.tls.serverSecret`: members to clients.
    Server,
    /// `spec.tls.operatorClientSecret`: the operator and the backup sidecars to members.
    OperatorClient,
}

impl Purpose {
    /// The field of `spec.tls` that names the Secret.
    pub fn field(self) -> &'static str {
        match self {
            Purpose::Peer => "spec.tls.peerSecret",
            Purpose::Server => "spec.tls.serverSecret",
            Purpose::OperatorClient => "spec.tls.operatorClientSecret",
        }
    }
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Purpose::Peer => "peer",
            Purpose::Server => "server",
            Purpose::OperatorClient => "operator-client",
        }
    }
    /// Whether members present this certificate to others, who check it names the member.
    fn names_members(self) -> bool {
        matches!(self, Purpose::Peer | Purpose::Server)
    }
}

/// One Secret's PEM material.
#[derive(Clone, Debug)]
pub struct SecretPem<'a> {
    /// The Secret's name.
    pub name: &'a str,
    /// What it is for.
    pub purpose: Purpose,
    /// `ca.crt`: one CA or a bundle (during a CA rotation, the old and the new).
    pub ca: &'a [u8],
    /// `tls.crt`: the leaf first.
    pub cert: &'a [u8],
}

/// What is wrong with a Secret's certificate: the member restarted on it would fail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateProblem {
    /// `tls.crt` or `ca.crt` is not a PEM certificate.
    #[error("{field} (Secret {secret}): {what} does not parse as a PEM certificate: {detail}")]
    Unparseable {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// `tls.crt` or `ca.crt`.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The leaf's validity ended.
    #[error("{field} (Secret {secret}): the certificate expired at {not_after}; renew it")]
    Expired {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// Its end, RFC 3339.
        not_after: String,
    },
    /// The leaf's validity has not begun.
    #[error(
        "{field} (Secret {secret}): the certificate is not valid before {not_before}; check the issuer's clock"
    )]
    NotYetValid {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// Its start, RFC 3339.
        not_before: String,
    },
    /// The leaf does not name a member.
    #[error(
        "{field} (Secret {secret}): the certificate is not valid for {missing}; add it to the subject alternative names"
    )]
    MissingName {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// The names (DNS or IP) it lacks.
        missing: String,
    },
    /// No CA in `ca.crt` signed the leaf.
    #[error(
        "{field} (Secret {secret}): no CA in the ca.crt of spec.tls's Secrets issued tls.crt (directly or through the intermediates after it in tls.crt); put its CA in ca.crt (a bundle may hold the old and the new)"
    )]
    NotSignedByCa {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
    },
    /// Within one set, a leaf is not issued by a CA of the `ca.crt` that checks it.
    #[error("{field} (Secret {secret}): {detail}")]
    Mismatched {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// Who would refuse whom.
        detail: &'static str,
    },
    /// Members still on the certificates they run now and one restarted on these would refuse each
    /// other (a CA replaced at once, not through a bundle).
    #[error(
        "{field} (Secret {secret}): {detail}; put the new CA beside the old one in every ca.crt and let that roll out first (docs/runbooks.md, Rotating certificates)"
    )]
    CannotTalk {
        /// `spec.tls` field.
        field: &'static str,
        /// Secret name.
        secret: String,
        /// Who would refuse whom.
        detail: &'static str,
    },
}

/// A Secret's leaf, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFacts {
    /// Secret name.
    pub secret: String,
    /// What it is for.
    pub purpose: Purpose,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

/// The outcome of checking every Secret: each leaf's expiry, and what is wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateReport {
    /// One per Secret whose leaf parsed.
    pub leaves: Vec<LeafFacts>,
    /// Everything wrong; empty when every Secret can be rolled onto.
    pub problems: Vec<CertificateProblem>,
}

impl CertificateReport {
    /// The leaves ending within `warning` of `now` (seconds since the epoch), soonest first.
    pub fn expiring(&self, now: i64, warning: std::time::Duration) -> Vec<&LeafFacts> {
        let horizon = now.saturating_add(i64::try_from(warning.as_secs()).unwrap_or(i64::MAX));
        let mut soon: Vec<&LeafFacts> = self.leaves.iter().filter(|l| l.not_after < horizon).collect();
        soon.sort_by_key(|l| l.not_after);
        soon
    }
}

/// Checks each Secret's leaf: parses, valid at `now` (seconds since the epoch), issued (directly or
/// through intermediates that follow it in `tls.crt`) by a CA in one of the Secrets' `ca.crt`, and
/// (peer and server) valid for every name in `member_names`.
///
/// The CA may be in any of the three `ca.crt`: etcd checks client certificates with the server
/// Secret's and the operator checks servers with its own Secret's, so a pairing check per Secret
/// would refuse setups that work. Refusing blocks rolls, so only what certainly fails is refused:
/// a signature in an algorithm the checker does not know counts as signed.
pub fn check(secrets: &[SecretPem<'_>], member_names: &[String], now: i64) -> CertificateReport {
    let mut report = CertificateReport::default();
    let ca_pems: Vec<Vec<Pem>> = secrets.iter().map(|s| certificate_blocks(s.ca)).collect();
    let trusted: Vec<X509Certificate<'_>> = ca_pems
        .iter()
        .flatten()
        .filter_map(|p| p.parse_x509().ok())
        .collect();
    for (s, cas) in secrets.iter().zip(&ca_pems) {
        let field = s.purpose.field();
        let unparseable = |what: &'static str, detail: String| CertificateProblem::Unparseable {
            field,
            secret: s.name.to_owned(),
            what,
            detail,
        };
        if cas.is_empty() {
            report
                .problems
                .push(unparseable("ca.crt", "no certificate in it".to_owned()));
        }
        let chain_pems = certificate_blocks(s.cert);
        let Some(leaf_pem) = chain_pems.first() else {
            report
                .problems
                .push(unparseable("tls.crt", "no certificate in it".to_owned()));
            continue;
        };
        let leaf = match leaf_pem.parse_x509() {
            Ok(c) => c,
            Err(e) => {
                report.problems.push(unparseable("tls.crt", e.to_string()));
                continue;
            }
        };
        let validity = leaf.validity();
        let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        report.leaves.push(LeafFacts {
            secret: s.name.to_owned(),
            purpose: s.purpose,
            not_after,
        });
        if now > not_after {
            report.problems.push(CertificateProblem::Expired {
                field,
                secret: s.name.to_owned(),
                not_after: rfc3339(not_after),
            });
        }
        if now < not_before {
            report.problems.push(CertificateProblem::NotYetValid {
                field,
                secret: s.name.to_owned(),
                not_before: rfc3339(not_before),
            });
        }
        if s.purpose.names_members() {
            let missing: Vec<&str> = member_names
                .iter()
                .filter(|n| !names(&leaf).iter().any(|san| san.covers(n)))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                report.problems.push(CertificateProblem::MissingName {
                    field,
                    secret: s.name.to_owned(),
                    missing: missing.join(", "),
                });
            }
        }
        let intermediates: Vec<X509Certificate<'_>> = chain_pems[1..]
            .iter()
            .filter_map(|p| p.parse_x509().ok())
            .collect();
        if !trusted.is_empty() && !issued_by_trusted(&leaf, &intermediates, &trusted) {
            report.problems.push(CertificateProblem::NotSignedByCa {
                field,
                secret: s.name.to_owned(),
            });
        }
    }
    report
}

/// What would fail during a roll from `running` (what members run now) onto `next`, while some
/// members are on each: a new peer certificate the running members' peer `ca.crt` does not trust,
/// or the reverse; a new operator client certificate the running members' server `ca.crt` does not
/// trust; or running server certificates the new client `ca.crt` (the operator's, once it dials
/// with the new pair) does not trust. This is the rule that makes a CA rotation go through a
/// bundle: no moment comes when two members, or the operator and a member, cannot talk.
pub fn roll_problems(running: &[SecretPem<'_>], next: &[SecretPem<'_>]) -> Vec<CertificateProblem> {
    let mut trusts = Vec::new();
    if let (Some(old), Some(new)) = (of(running, Purpose::Peer), of(next, Purpose::Peer)) {
        trusts.push(Trust {
            leaf: new,
            checker: old,
            reported: new,
            detail: "the members still running would refuse this peer tls.crt: their peer ca.crt did not issue it",
        });
        trusts.push(Trust {
            leaf: old,
            checker: new,
            reported: new,
            detail: "a member restarted on this peer ca.crt would refuse the peer certificate the others run now",
        });
    }
    if let (Some(old_server), Some(new_client)) =
        (of(running, Purpose::Server), of(next, Purpose::OperatorClient))
    {
        trusts.push(Trust {
            leaf: new_client,
            checker: old_server,
            reported: new_client,
            detail: "the members still running would refuse this client tls.crt: their server ca.crt did not issue it",
        });
        trusts.push(Trust {
            leaf: old_server,
            checker: new_client,
            reported: new_client,
            detail: "with this ca.crt the operator would refuse the server certificate the members run now",
        });
    }
    broken(trusts)
        .map(|(s, detail)| CertificateProblem::CannotTalk {
            field: s.purpose.field(),
            secret: s.name.to_owned(),
            detail,
        })
        .collect()
}

/// One trust a party relies on: a CA in `checker`'s `ca.crt` issued `leaf`'s `tls.crt`. When it
/// does not hold, `reported` is the Secret named, with `detail`.
struct Trust<'p, 's> {
    leaf: &'p SecretPem<'s>,
    checker: &'p SecretPem<'s>,
    reported: &'p SecretPem<'s>,
    detail: &'static str,
}

/// The trusts that do not hold, as the Secret to name and why.
fn broken<'p, 's>(trusts: Vec<Trust<'p, 's>>) -> impl Iterator<Item = (&'p SecretPem<'s>, &'static str)> {
    trusts
        .into_iter()
        .filter(|t| !issued(t.leaf.cert, t.checker.ca))
        .map(|t| (t.reported, t.detail))
}

/// The Secret of `set` for `purpose`.
fn of<'p, 's>(set: &'p [SecretPem<'s>], purpose: Purpose) -> Option<&'p SecretPem<'s>> {
    set.iter().find(|s| s.purpose == purpose)
}

/// What would fail once every member runs `set`, by the `ca.crt` each party checks with: members
/// check peers with the peer Secret's and clients with the server Secret's; the operator checks
/// members with its client Secret's. ([`check`] accepts an issuer from any of the three.)
pub fn pairing_problems(set: &[SecretPem<'_>]) -> Vec<CertificateProblem> {
    let mut trusts = Vec::new();
    if let Some(peer) = of(set, Purpose::Peer) {
        trusts.push(Trust {
            leaf: peer,
            checker: peer,
            reported: peer,
            detail: "the peer ca.crt did not issue the peer tls.crt: members would refuse each other",
        });
    }
    if let (Some(server), Some(client)) = (of(set, Purpose::Server), of(set, Purpose::OperatorClient)) {
        trusts.push(Trust {
            leaf: client,
            checker: server,
            reported: client,
            detail: "the server Secret's ca.crt did not issue this client tls.crt: members would refuse the operator and the backup sidecars",
        });
        trusts.push(Trust {
            leaf: server,
            checker: client,
            reported: server,
            detail: "the operator client Secret's ca.crt did not issue the server tls.crt: the operator would refuse the members",
        });
    }
    broken(trusts)
        .map(|(s, detail)| CertificateProblem::Mismatched {
            field: s.purpose.field(),
            secret: s.name.to_owned(),
            detail,
        })
        .collect()
}

/// Whether a CA in `ca_pem` issued the leaf of `cert_pem`. What does not parse counts as issued:
/// [`check`] reports it.
fn issued(cert_pem: &[u8], ca_pem: &[u8]) -> bool {
    let chain = certificate_blocks(cert_pem);
    let Some(Ok(leaf)) = chain.first().map(Pem::parse_x509) else {
        return true;
    };
    let intermediates: Vec<X509Certificate<'_>> =
        chain[1..].iter().filter_map(|p| p.parse_x509().ok()).collect();
    let cas = certificate_blocks(ca_pem);
    let trusted: Vec<X509Certificate<'_>> = cas.iter().filter_map(|p| p.parse_x509().ok()).collect();
    trusted.is_empty() || issued_by_trusted(&leaf, &intermediates, &trusted)
}

/// A digest of the Secrets' whole material (keys included): a member whose pod recorded another
/// digest runs other certificates and is restarted onto these.
pub fn digest(material: &[(&[u8], &[u8], &[u8])]) -> String {
    let mut h = Sha256::new();
    for (ca, cert, key) in material {
        for part in [ca, cert, key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    let out = h.finalize();
    out.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The PEM blocks labelled CERTIFICATE, as TLS stacks read a bundle: other blocks and blocks that
/// do not decode are skipped, not fatal.
fn certificate_blocks(bytes: &[u8]) -> Vec<Pem> {
    Pem::iter_from_buffer(bytes)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .collect()
}

/// Whether `issuer` signed `cert`: `Some(true)`, `Some(false)`, or `None` when the algorithm is
/// one the checker cannot verify.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Option<bool> {
    if cert.issuer() != issuer.subject() {
        return Some(false);
    }
    match cert.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Some(true),
        Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => None,
        Err(_) => Some(false),
    }
}

/// Walks from `leaf` up through `intermediates` (at most a few steps) to a certificate of
/// `trusted`; an unverifiable algorithm on the way counts as signed.
fn issued_by_trusted(
    leaf: &X509Certificate<'_>,
    intermediates: &[X509Certificate<'_>],
    trusted: &[X509Certificate<'_>],
) -> bool {
    let mut current = leaf;
    for _ in 0..=intermediates.len().min(4) {
        if trusted.iter().any(|ca| signed_by(current, ca) != Some(false)) {
            return true;
        }
        match intermediates
            .iter()
            .find(|i| signed_by(current, i) != Some(false) && !std::ptr::eq(*i, current))
        {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// A subject alternative name.
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// Whether this name covers `name` (a DNS name or an IP address), with one leading wildcard
    /// label matching exactly one label, as TLS clients check.
    fn covers(&self, name: &str) -> bool {
        match (self, name.parse::<IpAddr>()) {
            (San::Ip(ip), Ok(want)) => *ip == want,
            (San::Dns(dns), Err(_)) => {
                let (dns, name) = (dns.to_ascii_lowercase(), name.to_ascii_lowercase());
                match dns.strip_prefix("*.") {
                    Some(suffix) => name
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                    None => dns == name,
                }
            }
            _ => false,
        }
    }
}

fn names(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(San::Dns((*d).to_owned())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| San::Ip(IpAddr::from(a))),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| San::Ip(IpAddr::from(a))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[path = "certificates_tests.rs"]
pub(crate) mod tests;
