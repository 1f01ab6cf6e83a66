//! Reading age keys as users write them: recipients for backups, identities for restores. Only
//! X25519 keys are taken (`age1...`, `AGE-SECRET-KEY-1...`), the kind every age implementation
//! reads, so that the `age` command line of any distribution can open an archive by hand.

use std::{
    io::{BufRead, Chain, Cursor, Read},
    str::FromStr,
};

/// The first bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A line is not an age X25519 public key.
    #[error(
        "line {line} of key `recipient` in Secret {secret} is not an age X25519 public key (age1...): {problem}"
    )]
    BadRecipient {
        /// `namespace/name`.
        secret: String,
        /// 1-based.
        line: usize,
        /// What age said.
        problem: String,
    },
    /// No key at all.
    #[error("key `{key}` in Secret {secret} holds no age key")]
    Empty {
        /// `recipient` or `identity`.
        key: &'static str,
        /// `namespace/name`.
        secret: String,
    },
    /// A line is not an age X25519 secret key.
    #[error("line {line} of the identity file {file} is not an age X25519 secret key (AGE-SECRET-KEY-1...)")]
    BadIdentity {
        /// Where it was read.
        file: String,
        /// 1-based.
        line: usize,
    },
    /// The identity file could not be read.
    #[error("reading the identity file {file}: {source}")]
    Read {
        /// Where.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The meaningful lines of a key file: trimmed, without blanks and `#` comments, numbered from 1.
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The recipients in the text of a Secret's `recipient` key.
pub fn recipients(text: &str, secret: &str) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    let keys = key_lines(text)
        .map(|(line, l)| {
            age::x25519::Recipient::from_str(l).map_err(|problem| KeyError::BadRecipient {
                secret: secret.to_owned(),
                line,
                problem: problem.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(KeyError::Empty {
            key: "recipient",
            secret: secret.to_owned(),
        });
    }
    Ok(keys)
}

/// The identities in an identity file, as `age-keygen` writes it.
pub fn identities(file: &std::path::Path) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| KeyError::Read {
        file: name.clone(),
        source,
    })?;
    let keys = key_lines(&text)
        .map(|(line, l)| {
            age::x25519::Identity::from_str(l).map_err(|_| KeyError::BadIdentity {
                file: name.clone(),
                line,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(KeyError::Empty {
            key: "identity",
            secret: name,
        });
    }
    Ok(keys)
}

/// A stream whose first bytes were read to look at, put back in front.
pub type Sniffed<R> = Chain<Cursor<Vec<u8>>, R>;

/// Whether `input` is an age file, and a reader that still yields all of it. A stream may hand over
/// fewer bytes than the header at first (an S3 body arrives in chunks of any size), so it reads until
/// it has the header's length or the stream ends.
pub fn sniff<R: BufRead>(mut input: R) -> std::io::Result<(bool, Sniffed<R>)> {
    let mut head = vec![0; AGE_MAGIC.len()];
    let n = crate::fetch::read_full(&mut input, &mut head)?;
    head.truncate(n);
    Ok((head.as_slice() == AGE_MAGIC, Cursor::new(head).chain(input)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Hands over one byte per read, as a slow stream may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            if let Some(b) = buf.first_mut() {
                *b = *first;
            }
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn an_age_header_is_recognised_however_the_bytes_arrive_and_nothing_is_lost() {
        let file = [AGE_MAGIC, b"\n-> X25519 rest of the file"].concat();
        let (encrypted, mut all) = sniff(std::io::BufReader::with_capacity(1, Trickle(&file))).unwrap();
        assert!(encrypted);
        let mut back = Vec::new();
        all.read_to_end(&mut back).unwrap();
        assert_eq!(back, file);
        let (encrypted, mut all) = sniff(&b"\x1f\x8b gzip"[..]).unwrap();
        assert!(!encrypted);
        let mut back = Vec::new();
        all.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"\x1f\x8b gzip");
        assert!(!sniff(&b"age"[..]).unwrap().0, "a short file is not an age file");
    }

    #[test]
    fn recipients_are_read_as_age_keygen_prints_them_and_bad_lines_are_named() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let text = format!("# created: today\n# public key: {public}\n\n  {public}\n");
        assert_eq!(recipients(&text, "ns/keys").unwrap().len(), 1);
        let e = recipients(&format!("{public}\nage1notakey\n"), "ns/keys")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("ns/keys"), "{e}");
        let e = recipients("# nothing\n", "ns/keys").unwrap_err().to_string();
        assert!(e.contains("holds no age key"), "{e}");
    }
}
