//! The document's state and its `cqrs_es::Aggregate` implementation.
//!
//! `decide` is the whole business logic (state + command -> events or a refusal); `apply` is
//! total and never validates, so replaying any stored stream always succeeds.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::document::command::{DocumentCommand, PutDocument};
use crate::document::compensation::{CompensationOutcome, Restore};
use crate::document::error::DocumentError;
use crate::document::event::{BlobRef, Chunk, DocumentEvent};
use crate::envelope::Version;

/// What a live document holds; compared to decide whether a put changes anything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct DocumentContent {
    /// Title.
    pub title: String,
    /// Source type.
    pub source_type: String,
    /// Business tag.
    pub business_tag: Option<String>,
    /// Attributes.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The blob, if the version has one.
    pub blob: Option<BlobRef>,
    /// Number of chunks.
    pub chunk_count: u32,
    /// [`chunk_digest`] of the chunks (the state keeps a digest, not the vectors).
    pub chunk_digest: String,
}

/// An open compensation: a store refused a version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OpenCompensation {
    /// The refused version.
    pub version: Version,
    /// The refusing store.
    pub target: String,
    /// Its error.
    pub reason: String,
}

/// The document aggregate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Document {
    /// Current version (0 = never seen).
    pub version: Version,
    /// Deleted at `version`.
    pub deleted: bool,
    /// Erased at `version`: deleted, and the log holds none of its earlier content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    /// The live content (None before the first put; kept as last seen after a delete).
    pub content: Option<DocumentContent>,
    /// Compensations requested and not yet followed by a newer version (the durable record
    /// of every compensation is the parked change in the log database).
    pub compensations: Vec<OpenCompensation>,
    /// The stream version of the last event applied (the log's expected version): the
    /// number of events, where a run folded by content removal counts for every stream
    /// version it stands for.
    pub stream_version: i64,
    /// The blob of the version being applied, between its `BlobStored` and `RowInserted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged_blob: Option<BlobRef>,
}

/// A stable digest of a document's chunks: index, text and the exact bits of every value.
pub fn chunk_digest(chunks: &[Chunk]) -> String {
    let mut h = Sha256::new();
    let mut bits: Vec<u8> = Vec::new();
    for c in chunks {
        h.update(c.index.to_le_bytes());
        h.update((c.text.len() as u64).to_le_bytes());
        h.update(c.text.as_bytes());
        h.update((c.vector.len() as u64).to_le_bytes());
        // The values' little-endian bits, fed in one piece per chunk: the same bytes as one
        // `update` per value, without the hasher's per-call buffering (3,072 calls for a
        // document of 8 chunks × 384 values).
        bits.clear();
        bits.extend(c.vector.iter().flat_map(|x| x.to_bits().to_le_bytes()));
        h.update(&bits);
    }
    hex::encode(h.finalize())
}

/// The events of a put at `version`: its blob (if any), row and vectors, full state each.
fn put_events(version: Version, put: &PutDocument) -> Vec<DocumentEvent> {
    let mut events = Vec::with_capacity(3);
    if let Some(blob) = &put.blob {
        events.push(DocumentEvent::BlobStored {
            version,
            sha256: blob.sha256.clone(),
            size: blob.size,
            content_type: blob.content_type.clone(),
        });
    }
    events.push(DocumentEvent::RowInserted {
        version,
        title: put.title.clone(),
        source_type: put.source_type.clone(),
        business_tag: put.business_tag.clone(),
        attributes: put.attributes.clone(),
        blob_sha256: put.blob.as_ref().map(|b| b.sha256.clone()),
        blob_size: put.blob.as_ref().map(|b| b.size),
        chunk_count: put.chunks.len() as u32,
    });
    events.push(DocumentEvent::VectorsIndexed {
        version,
        chunks: put.chunks.clone(),
    });
    events
}

impl Document {
    /// True when the document exists and is not deleted.
    pub fn is_live(&self) -> bool {
        self.version > 0 && !self.deleted
    }

    /// Decides what `command` does to this document.
    ///
    /// # Errors
    /// A [`DocumentError`] refusal; nothing is to be appended then.
    pub fn decide(&self, command: &DocumentCommand) -> Result<Vec<DocumentEvent>, DocumentError> {
        match command {
            DocumentCommand::Put(put) => self.decide_put(put),
            DocumentCommand::Delete { expected_version } => {
                if !self.is_live() {
                    return Err(DocumentError::NotFound);
                }
                self.check_expected(*expected_version)?;
                Ok(vec![DocumentEvent::DocumentDeleted {
                    version: self.version + 1,
                }])
            }
            DocumentCommand::Erase { expected_version } => {
                if self.version == 0 {
                    return Err(DocumentError::NotFound);
                }
                self.check_expected(*expected_version)?;
                if self.erased {
                    // Nothing of its content is left to remove: the erasure stands.
                    return Ok(vec![]);
                }
                Ok(vec![DocumentEvent::DocumentErased {
                    version: self.version + 1,
                }])
            }
            DocumentCommand::RequestCompensation { .. } => Ok(self.decide_compensation(command).0),
            DocumentCommand::Redrive {
                current_version,
                content,
            } => {
                if self.version == 0 {
                    return Err(DocumentError::NotFound);
                }
                self.check_expected(Some(*current_version))?;
                let version = self.version + 1;
                match (self.deleted, content) {
                    (true, _) if self.erased => Ok(vec![DocumentEvent::DocumentErased { version }]),
                    (true, _) => Ok(vec![DocumentEvent::DocumentDeleted { version }]),
                    (false, Some(put)) => Ok(put_events(version, put)),
                    (false, None) => Err(DocumentError::Invalid(
                        "redriving a live document needs its content".to_owned(),
                    )),
                }
            }
        }
    }

    /// Decides a [`DocumentCommand::RequestCompensation`]: the events to append and what
    /// they do (see [`crate::document::compensation`] for the rule). Any other command
    /// decides nothing.
    pub fn decide_compensation(
        &self,
        command: &DocumentCommand,
    ) -> (Vec<DocumentEvent>, CompensationOutcome) {
        let DocumentCommand::RequestCompensation {
            version,
            target,
            reason,
            restore,
        } = command
        else {
            return (vec![], CompensationOutcome::Unknown);
        };
        if *version == 0 || *version > self.version {
            return (vec![], CompensationOutcome::Unknown);
        }
        if *version < self.version {
            return (vec![], CompensationOutcome::Superseded { by: self.version });
        }
        if self.deleted {
            return (vec![], CompensationOutcome::NeedsOperator);
        }
        let requested = DocumentEvent::CompensationRequested {
            version: *version,
            target: target.clone(),
            reason: reason.clone(),
        };
        let next = self.version + 1;
        match restore {
            Restore::Version {
                version: from,
                content,
            } => {
                let mut events = vec![requested];
                events.extend(put_events(next, content));
                (
                    events,
                    CompensationOutcome::RolledBack {
                        from: *from,
                        to: next,
                    },
                )
            }
            Restore::Withdraw => (
                vec![requested, DocumentEvent::DocumentDeleted { version: next }],
                CompensationOutcome::Withdrawn { at: next },
            ),
        }
    }

    fn check_expected(&self, expected: Option<Version>) -> Result<(), DocumentError> {
        match expected {
            Some(expected) if expected != self.version => Err(DocumentError::VersionConflict {
                expected,
                actual: self.version,
            }),
            _ => Ok(()),
        }
    }

    fn decide_put(&self, put: &PutDocument) -> Result<Vec<DocumentEvent>, DocumentError> {
        put.validate().map_err(DocumentError::Invalid)?;
        self.check_expected(put.expected_version)?;
        let content = DocumentContent {
            title: put.title.clone(),
            source_type: put.source_type.clone(),
            business_tag: put.business_tag.clone(),
            attributes: put.attributes.clone(),
            blob: put.blob.clone(),
            chunk_count: put.chunks.len() as u32,
            chunk_digest: chunk_digest(&put.chunks),
        };
        if self.is_live() && self.content.as_ref() == Some(&content) {
            return Ok(vec![]);
        }
        Ok(put_events(self.version + 1, put))
    }

    /// Applies one event. Total: never fails, never validates.
    pub fn apply_event(&mut self, event: &DocumentEvent) {
        self.stream_version += 1;
        if let DocumentEvent::ContentRemoved {
            version, removed, ..
        } = event
        {
            // What is left of older events: the events after them hold the state. It stands
            // for every stream version its entries name.
            let newest = removed.iter().map(|r| r.version).max().unwrap_or(*version);
            self.version = self.version.max(newest);
            if let Some(last) = removed.last() {
                self.stream_version = self.stream_version.max(last.stream_version);
            }
            return;
        }
        if !matches!(event, DocumentEvent::CompensationRequested { .. }) {
            // A newer version (a rollback, a withdrawal, or any later change) settles the
            // compensations of the versions before it.
            self.compensations.retain(|c| c.version >= event.version());
        }
        match event {
            DocumentEvent::BlobStored {
                version,
                sha256,
                size,
                content_type,
            } => {
                self.version = *version;
                self.staged_blob = Some(BlobRef {
                    sha256: sha256.clone(),
                    size: *size,
                    content_type: content_type.clone(),
                });
            }
            DocumentEvent::RowInserted {
                version,
                title,
                source_type,
                business_tag,
                attributes,
                blob_sha256,
                blob_size,
                chunk_count,
            } => {
                let staged = self.staged_blob.take();
                let blob = blob_sha256.as_ref().map(|sha| match staged {
                    Some(b) if &b.sha256 == sha => b,
                    _ => BlobRef {
                        sha256: sha.clone(),
                        size: blob_size.unwrap_or_default(),
                        content_type: String::new(),
                    },
                });
                let previous = self.content.take().unwrap_or_default();
                self.content = Some(DocumentContent {
                    title: title.clone(),
                    source_type: source_type.clone(),
                    business_tag: business_tag.clone(),
                    attributes: attributes.clone(),
                    blob,
                    chunk_count: *chunk_count,
                    chunk_digest: previous.chunk_digest,
                });
                self.version = *version;
                self.deleted = false;
                self.erased = false;
            }
            DocumentEvent::VectorsIndexed { version, chunks } => {
                let content = self.content.get_or_insert_with(Default::default);
                content.chunk_count = chunks.len() as u32;
                content.chunk_digest = chunk_digest(chunks);
                self.version = *version;
                self.deleted = false;
                self.erased = false;
            }
            DocumentEvent::DocumentDeleted { version } => {
                self.version = *version;
                self.deleted = true;
            }
            DocumentEvent::DocumentErased { version } => {
                self.version = *version;
                self.deleted = true;
                self.erased = true;
                self.content = None;
                self.staged_blob = None;
                self.compensations.clear();
            }
            DocumentEvent::ContentRemoved { .. } => {}
            DocumentEvent::CompensationRequested {
                version,
                target,
                reason,
            } => self.compensations.push(OpenCompensation {
                version: *version,
                target: target.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Rebuilds a document from its events.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a DocumentEvent>) -> Self {
        let mut doc = Self::default();
        for e in events {
            doc.apply_event(e);
        }
        doc
    }
}

impl Aggregate for Document {
    const TYPE: &'static str = "document";
    type Command = DocumentCommand;
    type Event = DocumentEvent;
    type Error = DocumentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(&event);
    }
}
