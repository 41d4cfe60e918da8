//! In-place rebuild of the blobs: the bucket keeps serving while every document's object is
//! made to hold the log's final state, skipping objects that already do, and objects no
//! document owns are deleted.
//!
//! Invariants: an object is left alone when its `docledger-version` and `docledger-sha256`
//! are the final state's, or when it holds a newer version; an object with the right bytes
//! but other metadata is restamped server-side (no bytes sent); the caller runs this while
//! the S3 projector is paused, so no other writer races these HEAD-then-PUT writes.

use std::collections::HashSet;

use aggregates::{DocumentEvent, LogCursor};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::classify::{self, sink_error};
use super::{
    object_key, S3Sink, Stored, BULK_CONCURRENT_REQUESTS, DELETE_OBJECTS_MAX_KEYS, KEY_PREFIX, NAME,
};
use crate::error::SinkError;
use crate::rebuild::{Rebuild, RebuildPage, RebuildStyle, RebuildTarget, TargetCounts};
use crate::sink::{Change, Sink};

/// What the rebuild did with one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectOutcome {
    /// Already the final state (or newer): nothing sent.
    Identical,
    /// The bytes were right; only the metadata moved.
    Restamped,
    /// The object was written.
    Written,
}

/// The `(version, sha256, content_type)` of a `BlobStored` event whose bytes have its size.
///
/// # Errors
/// Permanent when `event` is not a `BlobStored` or `len` is not its size.
fn blob_stored<'a>(
    doc_id: &str,
    event: &'a DocumentEvent,
    len: usize,
    operation: &'static str,
) -> Result<(u64, &'a str, &'a str), SinkError> {
    let DocumentEvent::BlobStored {
        version,
        sha256,
        size,
        content_type,
    } = event
    else {
        return Err(SinkError::permanent(
            NAME,
            operation,
            format!("{} is not an event for S3", event.type_name()),
        )
        .for_doc(doc_id));
    };
    if len as u64 != *size {
        return Err(SinkError::permanent(
            NAME,
            operation,
            format!("blob {sha256} of {doc_id} v{version} has {len} bytes, the event says {size}"),
        )
        .for_doc(doc_id));
    }
    Ok((*version, sha256, content_type))
}

impl S3Sink {
    /// Makes `doc_id`'s object hold `event` (a `BlobStored`) with `bytes`.
    ///
    /// # Errors
    /// The classified S3 failure; permanent when `event` is not a `BlobStored` or the bytes
    /// do not have its size.
    pub async fn rebuild_object(
        &self,
        doc_id: &str,
        event: &DocumentEvent,
        bytes: Bytes,
    ) -> Result<ObjectOutcome, SinkError> {
        let (version, sha256, content_type) =
            blob_stored(doc_id, event, bytes.len(), "rebuild object")?;
        if let Stored::At(stored, stored_sha) = self.stored(doc_id).await? {
            let same_bytes = stored_sha.as_deref() == Some(sha256);
            if stored > version || (stored == version && same_bytes) {
                return Ok(ObjectOutcome::Identical);
            }
            if same_bytes {
                self.restamp(doc_id, version, sha256, content_type).await?;
                return Ok(ObjectOutcome::Restamped);
            }
        }
        self.write_object(doc_id, event, bytes).await
    }

    /// Writes `doc_id`'s object for `event` (a `BlobStored`) without looking at what the
    /// bucket holds: for keys a listing just showed absent.
    ///
    /// # Errors
    /// The classified S3 failure; permanent when `event` is not a `BlobStored`.
    pub async fn write_object(
        &self,
        doc_id: &str,
        event: &DocumentEvent,
        bytes: Bytes,
    ) -> Result<ObjectOutcome, SinkError> {
        let (version, sha256, content_type) =
            blob_stored(doc_id, event, bytes.len(), "write object")?;
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key(doc_id))
            .body(bytes.into())
            .metadata(super::META_VERSION, version.to_string())
            .metadata(super::META_SHA256, sha256);
        if !content_type.is_empty() {
            put = put.content_type(content_type);
        }
        put.send()
            .await
            .map_err(|e| sink_error("put object", Some(doc_id), &e))?;
        Ok(ObjectOutcome::Written)
    }

    /// Deletes the objects at `keys` (whatever they hold), 1,000 a request.
    ///
    /// # Errors
    /// The classified S3 failure of the first request or key that fails.
    pub async fn delete_keys(&self, keys: &[String]) -> Result<(), SinkError> {
        for group in keys.chunks(DELETE_OBJECTS_MAX_KEYS) {
            let objects = group
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::permanent(NAME, "delete objects", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| SinkError::permanent(NAME, "delete objects", e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sink_error("delete objects", None, &e))?;
            if let Some(failed) = out.errors().first() {
                // Keys of documents are reported by their doc_id, other keys whole.
                let key = failed.key().unwrap_or_default();
                return Err(classify::delete_key_error(
                    key.strip_prefix(KEY_PREFIX).unwrap_or(key),
                    failed.code(),
                    failed.message(),
                ));
            }
        }
        Ok(())
    }

    /// Puts `bytes` at `key` without metadata checks (the benchmark's ceiling: the bare
    /// write the rebuild cannot beat).
    ///
    /// # Errors
    /// The classified S3 failure.
    pub async fn put_raw(&self, key: &str, bytes: Bytes) -> Result<(), SinkError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| sink_error("put object", None, &e))?;
        Ok(())
    }
}

/// The blobs are rebuilt in place: the bucket keeps serving while each document's object is
/// made to hold its final state, and objects no document owns are deleted at the switch.
impl Rebuild for S3Sink {
    type Target = BucketRebuild;
    const STYLE: RebuildStyle = RebuildStyle::InPlace;
    const IN_PLACE_PAGE: usize = BULK_CONCURRENT_REQUESTS;

    async fn begin_rebuild(&self) -> Result<BucketRebuild, SinkError> {
        self.prepare().await?;
        Ok(BucketRebuild {
            sink: self.clone(),
            existing: HashSet::new(),
            listed: false,
            wanted: HashSet::new(),
            counts: TargetCounts::default(),
        })
    }
}

/// An in-place rebuild of the bucket: which keys it held, which the log's final states own.
pub struct BucketRebuild {
    sink: S3Sink,
    /// The keys the bucket held when the first page arrived (the runners paused by then).
    existing: HashSet<String>,
    listed: bool,
    /// The keys of documents whose final state has a blob.
    wanted: HashSet<String>,
    counts: TargetCounts,
}

impl RebuildTarget for BucketRebuild {
    async fn write(&mut self, page: RebuildPage) -> Result<(), SinkError> {
        let RebuildPage::Changes { batch, .. } = page else {
            return Err(SinkError::permanent(
                NAME,
                "rebuild",
                "catalogue states handed to a blob rebuild".to_owned(),
            ));
        };
        if !self.listed {
            self.existing = self.sink.list_keys("").await?.into_iter().collect();
            self.listed = true;
        }
        let mut writes = Vec::new();
        for c in &batch.changes {
            let Change::Upsert(event @ DocumentEvent::BlobStored { sha256, .. }) = &c.change else {
                continue;
            };
            let key = object_key(c.doc_id.as_str());
            let bytes = batch.blobs.get(sha256).cloned().unwrap_or_else(Bytes::new);
            let listed = self.existing.contains(&key);
            self.wanted.insert(key);
            let sink = &self.sink;
            writes.push(async move {
                if listed {
                    sink.rebuild_object(c.doc_id.as_str(), event, bytes).await
                } else {
                    sink.write_object(c.doc_id.as_str(), event, bytes).await
                }
            });
        }
        let outcomes: Vec<Result<ObjectOutcome, SinkError>> = stream::iter(writes)
            .buffer_unordered(BULK_CONCURRENT_REQUESTS)
            .collect()
            .await;
        for outcome in outcomes {
            if outcome? == ObjectOutcome::Identical {
                self.counts.num_identical += 1;
            }
        }
        Ok(())
    }

    async fn switch(
        &mut self,
        _log_id: &str,
        _partitions: u32,
        _end: LogCursor,
    ) -> Result<(), SinkError> {
        if !self.listed {
            self.existing = self.sink.list_keys("").await?.into_iter().collect();
            self.listed = true;
        }
        let mut strays: Vec<String> = self
            .existing
            .iter()
            .filter(|k| !self.wanted.contains(*k))
            .cloned()
            .collect();
        strays.sort();
        self.sink.delete_keys(&strays).await?;
        self.counts.num_strays_removed = strays.len() as u64;
        Ok(())
    }

    fn counts(&self) -> TargetCounts {
        self.counts
    }
}
