//! Retention in the store. The manifest is deleted before its archive: a backup stops existing the
//! moment its manifest is gone, so an interrupted prune never leaves something that looks complete.
//! A backup's delta chain goes with it, after it, first chunk first: a chain is never cut in its
//! middle while its backup lives, and what an interrupted prune leaves is a chain without a
//! backup, which the next prune removes.

use ouroboros_crds::{
    delta::ChunkName,
    retention::{Rules, StoredName, doomed, is_archive},
    sidecar::PruneOutcome,
};

use crate::store::{Store, StoreError};

/// Applies `rules` to the backups in `store` and removes leftovers of interrupted backups: incomplete
/// uploads and archives that never got a manifest. The backups named in `keep` (the newest verified
/// one) stay whatever the rules say. Call only while no backup of the cluster runs.
pub async fn prune(
    store: &Store,
    rules: Rules,
    keep: &[String],
    now: jiff::Timestamp,
) -> Result<PruneOutcome, StoreError> {
    let names = store.list().await?;
    let stored: Vec<StoredName> = names.iter().filter_map(|n| StoredName::parse(n)).collect();
    let mut gone = doomed(&stored, |s| (s.time, s.revision), rules, now);
    gone.retain(|&i| !keep.contains(&stored[i].backup));
    let mut out = PruneOutcome::default();
    for &i in &gone {
        let s = &stored[i];
        store.delete(&s.manifest()).await?;
        // The archive is of either codec, encrypted or not; the one listed is deleted (the plain
        // gzip name when none is listed, as before codecs and encryption existed).
        let archive = s
            .archives()
            .into_iter()
            .find(|a| names.contains(a))
            .unwrap_or_else(|| s.archive());
        store.delete(&archive).await?;
        out.deleted.push(store.location(&archive));
    }
    out.kept = u32::try_from(stored.len() - gone.len()).unwrap_or(u32::MAX);
    out.leftovers_removed = store.remove_incomplete().await?;
    // An archive without a manifest is a backup that died between its last byte and its manifest.
    let complete: std::collections::HashSet<String> = stored.iter().flat_map(StoredName::archives).collect();
    for name in names.iter().filter(|n| is_archive(n) && !complete.contains(*n)) {
        store.delete(name).await?;
        out.leftovers_removed += 1;
    }
    // Chains whose backup is gone (now, or by an earlier prune that was interrupted).
    let live: std::collections::HashSet<&str> = stored
        .iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(i))
        .map(|(_, s)| s.backup.as_str())
        .collect();
    let mut orphans: Vec<ChunkName> = names
        .iter()
        .filter_map(|n| ChunkName::parse(n))
        .filter(|c| !live.contains(c.backup.as_str()))
        .collect();
    orphans.sort();
    for chunk in orphans {
        store.delete(&chunk.object()).await?;
        out.chunks_removed += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn touch(dir: &std::path::Path, name: &str) {
        tokio::fs::write(dir.join(name), b"x").await.unwrap();
    }

    /// A fresh directory named after `test` with three complete backups, b10, b20 and b30, a day apart.
    async fn three_backups(test: &str) -> (std::path::PathBuf, Vec<StoredName>) {
        let tmp = std::env::temp_dir().join(format!("ouroboros-prune-{test}-{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await.unwrap();
        let backups: Vec<StoredName> = [
            ("2026-11-19T00:00:00Z", 10),
            ("2026-11-20T00:00:00Z", 20),
            ("2026-11-21T00:00:00Z", 30),
        ]
        .iter()
        .map(|(time, revision)| StoredName {
            time: time.parse().unwrap(),
            revision: *revision,
            backup: format!("b{revision}"),
        })
        .collect();
        for b in &backups {
            touch(&tmp, &b.archive()).await;
            touch(&tmp, &b.manifest()).await;
        }
        (tmp, backups)
    }

    #[tokio::test]
    async fn prunes_a_directory_store() {
        let (tmp, backups) = three_backups("plain").await;
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        touch(&tmp, "20261121T010000Z-orphan.tar.gz").await;
        touch(&tmp, ".20261121T020000Z-running.tar.gz.partial").await;
        touch(&tmp, "README").await;
        // Chains: of the backup that goes (two chunks), of one that stays, of one already gone.
        let chunk = |b: &str, first: u64, last: u64| ChunkName {
            backup: b.into(),
            first,
            last,
        };
        let kept_chunk = chunk("b20", 21, 29);
        for c in [
            chunk("b10", 11, 15),
            chunk("b10", 16, 19),
            kept_chunk.clone(),
            chunk("b5", 6, 9),
        ] {
            touch(&tmp, &c.object()).await;
        }

        let store = Store::Dir(tmp.clone());
        let rules = Rules::new(Some(2), None).unwrap();
        let out = prune(&store, rules, &[], t("2026-11-21T03:00:00Z"))
            .await
            .unwrap();
        assert_eq!(out.deleted, vec![store.location(&backups[0].archive())]);
        assert_eq!(out.kept, 2);
        assert_eq!(out.leftovers_removed, 2);
        assert_eq!(out.chunks_removed, 3);
        let mut left = store.list().await.unwrap();
        left.sort();
        let mut want: Vec<String> = backups[1..]
            .iter()
            .flat_map(|b| [b.archive(), b.manifest()])
            .chain(["README".to_owned(), kept_chunk.object()])
            .collect();
        want.sort();
        assert_eq!(left, want);
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }

    #[tokio::test]
    async fn the_backup_named_to_keep_outlives_the_rules() {
        let (tmp, backups) = three_backups("keep").await;
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let store = Store::Dir(tmp.clone());
        // One kept by count, and the oldest because it is the newest verified one.
        let rules = Rules::new(Some(1), None).unwrap();
        let keep = ["b10".to_owned()];
        let out = prune(&store, rules, &keep, t("2026-11-21T03:00:00Z"))
            .await
            .unwrap();
        assert_eq!(out.deleted, vec![store.location(&backups[1].archive())]);
        assert_eq!(out.kept, 2);
        let left = store.list().await.unwrap();
        assert!(
            left.contains(&backups[0].manifest()) && left.contains(&backups[2].manifest()),
            "{left:?}"
        );
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }
}
