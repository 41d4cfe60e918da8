//! The blobs' audit: a document's object is compared with the log's newest `BlobStored` of
//! it (version, bytes, metadata, content type). The bulk scan lists the bucket once, then
//! reads every object the log expects, [`CONCURRENT_REQUESTS`] at a time, hashing its
//! bytes; a key that no valid document can own is a stray.

use std::collections::BTreeSet;

use aggregates::{DocId, DocumentEvent, StoreChange, StoreKind, Version};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::{S3Sink, StoredObject, CONCURRENT_REQUESTS, KEY_PREFIX};
use crate::audit::{
    wanted, Audit, Expected, ExpectedState, Finding, FindingKind, Progress, ScanOutcome,
};
use crate::error::SinkError;
use crate::sink::DocChange;

/// Lowercase hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Audit for S3Sink {
    type Found = Option<StoredObject>;

    fn expect(_doc_id: &str, change: &StoreChange<'_>) -> ExpectedState {
        match change {
            StoreChange::Upsert(DocumentEvent::BlobStored { sha256, size, .. }) => {
                ExpectedState::Blob {
                    sha256: sha256.clone(),
                    size: *size,
                }
            }
            // A removal (deleted, or a version without blob), or (never: `change_for` maps
            // nothing else here) another event.
            _ => ExpectedState::Absent,
        }
    }

    async fn scan(
        &self,
        expected: Expected<'_>,
        progress: &Progress<'_>,
    ) -> Result<ScanOutcome, SinkError> {
        let store = StoreKind::S3;
        let mut out = ScanOutcome::default();
        let keys = self.list_keys("").await?;
        let mut present: BTreeSet<&str> = BTreeSet::new();
        let mut to_read: Vec<(&str, &str, u64, u64)> = Vec::new();
        for key in &keys {
            let doc_id = key
                .strip_prefix(KEY_PREFIX)
                .filter(|d| DocId::parse(d).is_ok());
            let Some(doc_id) = doc_id else {
                out.strays.push(Finding::stray(
                    store,
                    key,
                    "object key is not docs/{doc_id} of a valid document id",
                ));
                continue;
            };
            present.insert(doc_id);
            match expected.get(doc_id) {
                Some((_, e)) => match &e.state {
                    ExpectedState::Blob { sha256, size } => {
                        to_read.push((doc_id, sha256.as_str(), *size, e.version));
                    }
                    _ => out.suspect(doc_id),
                },
                None => out.suspect(doc_id),
            }
        }
        for (doc_id, e) in expected.iter() {
            if matches!(e.state, ExpectedState::Blob { .. }) && !present.contains(doc_id) {
                out.suspect(doc_id);
            }
        }
        let reads: Vec<_> = to_read
            .into_iter()
            .map(|(doc_id, sha256, size, version)| async move {
                let object = self.object(doc_id).await?;
                let ok = object.is_some_and(|o| {
                    o.version == Some(version)
                        && o.sha256.as_deref() == Some(sha256)
                        && o.bytes.len() as u64 == size
                        && sha256_hex(&o.bytes) == sha256
                });
                Ok::<_, SinkError>((doc_id, ok))
            })
            .collect();
        let mut results = stream::iter(reads).buffer_unordered(CONCURRENT_REQUESTS);
        let mut read = 0u64;
        while let Some(result) = results.next().await {
            let (doc_id, ok) = result?;
            if !ok {
                out.suspect(doc_id);
            }
            read += 1;
            progress("s3", read);
        }
        out.num_items = keys.len() as u64;
        Ok(out)
    }

    async fn read(&self, doc_id: &str) -> Result<Option<StoredObject>, SinkError> {
        self.object(doc_id).await
    }

    fn compare(
        doc_id: &str,
        change: Option<&DocChange>,
        object: &Option<StoredObject>,
    ) -> Option<Finding> {
        let store = StoreKind::S3;
        let (event, version) = wanted(change);
        let blob = match event {
            Some(DocumentEvent::BlobStored {
                sha256,
                size,
                content_type,
                ..
            }) => Some((sha256, *size, content_type)),
            _ => None,
        };
        match (blob, object) {
            (None, None) => None,
            (None, Some(o)) => {
                Some(Finding::new(store, doc_id, FindingKind::Extra).versions(version, o.version))
            }
            (Some(_), None) => {
                Some(Finding::new(store, doc_id, FindingKind::Missing).versions(version, None))
            }
            (Some((sha256, size, content_type)), Some(o)) => {
                if o.version != version {
                    return Some(
                        Finding::new(store, doc_id, FindingKind::StaleVersion)
                            .versions(version, o.version),
                    );
                }
                let mut differences = Vec::new();
                let actual = sha256_hex(&o.bytes);
                if &actual != sha256 {
                    differences.push(format!("bytes sha256: expected {sha256}, found {actual}"));
                }
                if o.bytes.len() as u64 != size {
                    differences.push(format!("size: expected {size}, found {}", o.bytes.len()));
                }
                if o.sha256.as_ref() != Some(sha256) {
                    differences.push(format!(
                        "docledger-sha256 metadata: expected {sha256}, found {}",
                        o.sha256.as_deref().unwrap_or("none")
                    ));
                }
                if !content_type.is_empty() && o.content_type.as_ref() != Some(content_type) {
                    differences.push(format!(
                        "content_type: expected {content_type}, found {}",
                        o.content_type.as_deref().unwrap_or("none")
                    ));
                }
                (!differences.is_empty()).then(|| Finding {
                    differences,
                    ..Finding::new(store, doc_id, FindingKind::ContentMismatch)
                        .versions(version, o.version)
                })
            }
        }
    }

    /// The guard deletes objects at or below the removal.
    fn removal_version(found: Version) -> Version {
        found
    }

    /// Deletes the object at `key`, whatever it holds.
    async fn delete_stray(&self, key: &str) -> Result<(), SinkError> {
        self.delete_key(key).await
    }
}
