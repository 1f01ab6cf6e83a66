//! Checking etcd's sha256 trailer: the snapshot stream is the database followed by the sha256 of the
//! database, and a backup counts only if the bytes that went by hash to that trailer.

use sha2::{Digest, Sha256};

/// Length of the trailer.
pub const TRAILER: usize = 32;

/// Why a snapshot failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Fewer bytes than a trailer arrived.
    #[error("snapshot too short to carry etcd's sha256 trailer ({0} bytes)")]
    TooShort(u64),
    /// The trailer does not match the database bytes.
    #[error("snapshot sha256 mismatch: etcd sent {expected}, the {bytes} database bytes hash to {actual}")]
    Mismatch {
        /// The trailer etcd sent.
        expected: String,
        /// What the bytes hash to.
        actual: String,
        /// Database bytes hashed.
        bytes: u64,
    },
}

/// Hashes everything but the last 32 bytes seen, which it keeps as the candidate trailer.
#[derive(Debug, Default, Clone)]
pub struct TrailerVerifier {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

impl TrailerVerifier {
    /// A verifier expecting the first byte next.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes the next bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER {
            // Everything held back so far, and all of this chunk but its last 32 bytes, is database.
            self.hasher.update(&self.tail);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TRAILER {
                let spill = self.tail.len() - TRAILER;
                self.hasher.update(&self.tail[..spill]);
                self.tail.drain(..spill);
            }
        }
    }

    /// Bytes consumed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The database's sha256 (hex) if the trailer matches.
    pub fn finish(self) -> Result<String, VerifyError> {
        if self.total < TRAILER as u64 {
            return Err(VerifyError::TooShort(self.total));
        }
        let actual = hex::encode(self.hasher.finalize());
        let expected = hex::encode(&self.tail);
        if actual == expected {
            Ok(actual)
        } else {
            Err(VerifyError::Mismatch {
                expected,
                actual,
                bytes: self.total - TRAILER as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(db: &[u8]) -> Vec<u8> {
        let mut v = db.to_vec();
        v.extend_from_slice(&Sha256::digest(db));
        v
    }

    #[test]
    fn accepts_a_good_snapshot_however_it_is_chunked() {
        let db: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let snap = snapshot(&db);
        for size in [1, 7, 31, 32, 33, 4096, snap.len()] {
            let mut v = TrailerVerifier::new();
            for c in snap.chunks(size) {
                v.update(c);
            }
            assert_eq!(
                v.finish().unwrap(),
                hex::encode(Sha256::digest(&db)),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn rejects_a_flipped_byte_and_a_truncation() {
        let db = vec![7u8; 5000];
        let mut snap = snapshot(&db);
        snap[100] ^= 1;
        let mut v = TrailerVerifier::new();
        v.update(&snap);
        assert!(matches!(
            v.finish(),
            Err(VerifyError::Mismatch { bytes: 5000, .. })
        ));
        let snap = snapshot(&db);
        let mut v = TrailerVerifier::new();
        v.update(&snap[..snap.len() - 1]);
        assert!(v.finish().is_err());
        let mut v = TrailerVerifier::new();
        v.update(&[1, 2, 3]);
        assert_eq!(v.finish(), Err(VerifyError::TooShort(3)));
    }
}
