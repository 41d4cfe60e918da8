//! Removing content from the log: retention (old versions keep their metadata only) and
//! erasure (every trace of one document's content, in the transaction that appends its
//! tombstone).
//!
//! Events whose content is removed are folded into one `ContentRemoved` event per document
//! and cause that lists each event's type, versions, time and sizes (and the blob's
//! sha256), with no vectors: each run of consecutive removed events is appended to the
//! document's row that ends right before it, or else written at the run's first position.
//! [`strip_content`] is the one statement that does it. The stream keeps its stream
//! versions (the fold stands for each one it lists; readers of a document take the stream
//! version of the rows they read, not a count). Blob bytes go once no
//! event that still holds content refers to them ([`DELETE_UNREFERENCED_BLOBS`]); a blob
//! row is locked before that check, and appends lock the blob rows they refer to (their
//! `ON CONFLICT … DO UPDATE … WHERE false`), so an append that re-uses bytes a removal is
//! about to delete either commits its reference first or waits and writes the bytes anew.
//!
//! Invariants:
//! - `streams.content_floor`: no event of the stream at or below this document version
//!   holds content; a snapshot of such a version is never written (see
//!   `LogAppends::save_snapshot`).
//! - A retention page is one transaction over at most [`RETENTION_PAGE`] documents whose
//!   stream rows it locks with `SKIP LOCKED` (a document being appended to is left for the
//!   next pass): a pass killed at any point leaves each page all done or not done.
//! - An erasure is part of its tombstone's append: both commit, or neither.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use aggregates::document::retention::{RetentionFacts, RetentionPolicy};
use aggregates::{DocId, RemovalCause, Version};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::append::prepared;
use super::{LogCompaction, LogError, LogReads};

/// The event types that hold content ([`aggregates::document::CONTENT_EVENT_TYPES`]), as a
/// SQL list: `('BlobStored', …)`.
pub static CONTENT_TYPES: LazyLock<String> = LazyLock::new(|| {
    let quoted: Vec<String> = aggregates::document::CONTENT_EVENT_TYPES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect();
    format!("({})", quoted.join(", "))
});

/// Removes the content of the events chosen by the `target(position)` CTE that `{target}`
/// defines (`$cause`: the cause's name, always the last parameter). Each run of consecutive
/// events of a stream among them is folded into one `ContentRemoved` event listing every
/// event's metadata (type, versions, time, sha256, sizes): appended to the stream's
/// `ContentRemoved` event of the same cause that ends right before the run (an earlier
/// pass's), or else written at the run's first position; the run's other rows are deleted.
/// So a document's removed history is one row, whose payload PostgreSQL compresses, instead
/// of one row per event (about 400 bytes each before its payload). Returns each removed
/// event's stream and, for a blob, its sha256.
fn strip_content(target: &str, cause_param: usize) -> String {
    let content_types = &*CONTENT_TYPES;
    format!(
        r#"WITH {target}, old AS (
             SELECT e.position, e.stream_id, e.stream_version, e.event_type, e.payload,
                    e.recorded_at,
                    e.stream_version
                      - row_number() OVER (PARTITION BY e.stream_id ORDER BY e.stream_version)
                      AS run
               FROM events e
              WHERE e.position IN (SELECT position FROM target)
                AND e.event_type IN {content_types}
         ), runs AS (
             SELECT stream_id, run, min(position) AS head,
                    min((payload->>'version')::bigint) AS version,
                    jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                        'type', event_type,
                        'version', payload->'version',
                        'stream_version', stream_version,
                        'recorded_at', to_char(recorded_at AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                        'sha256', COALESCE(payload->'sha256', payload->'blob_sha256'),
                        'size', COALESCE(payload->'size', payload->'blob_size'),
                        'chunk_count', CASE event_type
                            WHEN 'RowInserted' THEN payload->'chunk_count'
                            WHEN 'VectorsIndexed' THEN to_jsonb(jsonb_array_length(payload->'chunks'))
                        END,
                        'target', payload->'target')) ORDER BY stream_version) AS removed
               FROM old GROUP BY stream_id, run
         ), prev AS (
             SELECT r.stream_id, r.run, p.position
               FROM runs r
               JOIN events p ON p.stream_id = r.stream_id AND p.event_type = 'ContentRemoved'
              WHERE (p.payload->'removed'->-1->>'stream_version')::bigint
                      = (r.removed->0->>'stream_version')::bigint - 1
                AND p.payload->>'cause' = ${cause_param}::text
         ), appended AS (
             UPDATE events e
                SET payload = jsonb_build_object(
                        'version', LEAST((e.payload->>'version')::bigint, r.version),
                        'cause', ${cause_param}::text,
                        'removed', (e.payload->'removed') || r.removed)
               FROM prev p JOIN runs r ON r.stream_id = p.stream_id AND r.run = p.run
              WHERE e.position = p.position
         ), heads AS (
             SELECT r.* FROM runs r
              WHERE NOT EXISTS (SELECT 1 FROM prev p
                                 WHERE p.stream_id = r.stream_id AND p.run = r.run)
         ), folded AS (
             UPDATE events e
                SET event_type = 'ContentRemoved', event_version = 1, vectors = NULL,
                    payload = jsonb_build_object('version', h.version,
                                                 'cause', ${cause_param}::text,
                                                 'removed', h.removed)
               FROM heads h
              WHERE e.position = h.head
         ), dropped AS (
             DELETE FROM events e
              WHERE e.position IN (SELECT position FROM old)
                AND e.position NOT IN (SELECT head FROM heads)
         )
         SELECT o.stream_id, CASE o.event_type WHEN 'BlobStored' THEN o.payload->>'sha256' END
           FROM old o"#
    )
}

/// [`strip_content`] of every content event of stream `$1` up to stream version `$2`.
static STRIP_STREAM: LazyLock<String> = LazyLock::new(|| {
    strip_content(
        "target AS (SELECT position FROM events WHERE stream_id = $1 AND stream_version <= $2)",
        3,
    )
});

/// [`strip_content`] of the events `(stream_id, stream_version)` = `($1[i], $2[i])`.
static STRIP_EVENTS: LazyLock<String> = LazyLock::new(|| {
    strip_content(
        "target AS (SELECT e.position FROM events e
                      JOIN unnest($1::text[], $2::bigint[]) AS t(stream_id, stream_version)
                        ON e.stream_id = t.stream_id AND e.stream_version = t.stream_version)",
        3,
    )
});

/// Locks the blob rows `$1` (hex sha256s), waiting for appends that refer to them.
const LOCK_BLOBS: &str = "SELECT sha256 FROM blobs WHERE sha256 = ANY($1)
     ORDER BY sha256 FOR UPDATE";

/// Locks the blob rows `$1` that no append holds; skips the others (left for a later pass).
const LOCK_BLOBS_SKIP_LOCKED: &str = "SELECT sha256 FROM blobs WHERE sha256 = ANY($1)
     ORDER BY sha256 FOR UPDATE SKIP LOCKED";

/// Deletes the locked blob rows `$1` that no event still holding content refers to (a new
/// statement: it sees every append that committed while the lock was awaited).
const DELETE_UNREFERENCED_BLOBS: &str = "DELETE FROM blobs b WHERE b.sha256 = ANY($1)
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.event_type = 'BlobStored'
                          AND e.payload->>'sha256' = encode(b.sha256, 'hex'))";

/// Candidates of a retention page: documents after `$1` (in the primary key's order) that
/// the version rules let lose content below their floor (`RetentionPolicy::floor`, with
/// `$2` versions), locked, the busy ones skipped.
const RETENTION_CANDIDATES: &str = "SELECT stream_id, doc_version, deleted, ready_version
      FROM streams
     WHERE stream_id > $1
       AND content_floor < LEAST(ready_version - 1,
                                 CASE WHEN deleted THEN doc_version
                                      ELSE doc_version - GREATEST($2::bigint, 1) END)
     ORDER BY stream_id LIMIT $3
       FOR NO KEY UPDATE SKIP LOCKED";

/// The content events of the page's documents: stream, stream version, document version
/// and age in seconds.
static CONTENT_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT stream_id, stream_version, (payload->>'version')::bigint,
                EXTRACT(EPOCH FROM now() - recorded_at)::float8
           FROM events
          WHERE stream_id = ANY($1) AND event_type IN {}",
        *CONTENT_TYPES
    )
});

/// Documents a retention page handles in one transaction.
pub const RETENTION_PAGE: i64 = 200;

/// What removing content removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ContentRemoval {
    /// Documents that lost content.
    pub documents: u64,
    /// Events rewritten without their content.
    pub events: u64,
    /// Blobs deleted (no event holding content refers to them any more).
    pub blobs: u64,
}

impl ContentRemoval {
    fn add(&mut self, other: ContentRemoval) {
        self.documents += other.documents;
        self.events += other.events;
        self.blobs += other.blobs;
    }
}

/// Deletes the blobs among `shas` (hex) that nothing refers to any more, after locking them
/// (`wait`: for appends holding them; otherwise the held ones are skipped).
async fn delete_unreferenced_blobs(
    tx: &impl GenericClient,
    shas: &[String],
    wait: bool,
) -> Result<u64, LogError> {
    if shas.is_empty() {
        return Ok(0);
    }
    let lock = if wait {
        LOCK_BLOBS
    } else {
        LOCK_BLOBS_SKIP_LOCKED
    };
    let raw: Vec<Vec<u8>> = shas.iter().filter_map(|s| hex::decode(s).ok()).collect();
    let locked: Vec<Vec<u8>> = tx
        .query(lock, &[&raw])
        .await
        .map_err(LogError::db("lock blobs"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if locked.is_empty() {
        return Ok(0);
    }
    tx.execute(DELETE_UNREFERENCED_BLOBS, &[&locked])
        .await
        .map_err(LogError::db("delete unreferenced blobs"))
}

/// The blob sha256s among a strip's returned rows.
fn stripped_blobs(rows: &[tokio_postgres::Row]) -> Vec<String> {
    let shas: HashSet<String> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(1))
        .collect();
    let mut shas: Vec<String> = shas.into_iter().collect();
    shas.sort_unstable();
    shas
}

/// The erasure of `doc_id`, inside the transaction that appends its tombstone at document
/// version `version` after stream version `before`: every earlier event loses its content,
/// the stream's snapshot goes, its parked changes lose their store errors, and blobs no
/// retained event refers to any more are deleted.
pub(super) async fn erase_in(
    tx: &impl GenericClient,
    doc_id: &str,
    before: i64,
    version: Version,
) -> Result<ContentRemoval, LogError> {
    let strip = prepared(tx, &STRIP_STREAM, "prepare erasure").await?;
    let rows = tx
        .query(&strip, &[&doc_id, &before, &RemovalCause::Erasure.as_str()])
        .await
        .map_err(LogError::db("erase events"))?;
    let floor = version as i64 - 1;
    tx.execute(
        "UPDATE streams SET content_floor = GREATEST(content_floor, $2) WHERE stream_id = $1",
        &[&doc_id, &floor],
    )
    .await
    .map_err(LogError::db("record the erasure"))?;
    tx.execute("DELETE FROM snapshots WHERE stream_id = $1", &[&doc_id])
        .await
        .map_err(LogError::db("erase snapshot"))?;
    tx.execute(
        "UPDATE parked_changes SET error = 'erased' WHERE stream_id = $1 AND error <> 'erased'",
        &[&doc_id],
    )
    .await
    .map_err(LogError::db("erase parked errors"))?;
    let blobs = delete_unreferenced_blobs(tx, &stripped_blobs(&rows), true).await?;
    Ok(ContentRemoval {
        documents: u64::from(!rows.is_empty()),
        events: rows.len() as u64,
        blobs,
    })
}

impl LogCompaction<'_> {
    /// Removes the content of every version `policy` does not keep, page by page, each
    /// page one transaction. Returns what was removed.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; pages committed before the failure stay done.
    pub async fn remove_old_content(
        self,
        policy: RetentionPolicy,
    ) -> Result<ContentRemoval, LogError> {
        let mut total = ContentRemoval::default();
        let mut after = String::new();
        loop {
            let (removed, last) = self.retention_page(policy, &after).await?;
            total.add(removed);
            match last {
                Some(last) => after = last,
                None => return Ok(total),
            }
        }
    }

    /// One page of [`LogCompaction::remove_old_content`] after `after`; returns what it
    /// removed and the page's last document (`None`: no candidates left).
    async fn retention_page(
        self,
        policy: RetentionPolicy,
        after: &str,
    ) -> Result<(ContentRemoval, Option<String>), LogError> {
        let mut client = self.log.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(LogError::db("begin retention page"))?;
        let versions = i64::try_from(policy.versions).unwrap_or(i64::MAX);
        let candidates = tx
            .query(RETENTION_CANDIDATES, &[&after, &versions, &RETENTION_PAGE])
            .await
            .map_err(LogError::db("read retention candidates"))?;
        let Some(last) = candidates.last().map(|r| r.get::<_, String>(0)) else {
            return Ok((ContentRemoval::default(), None));
        };
        let facts: HashMap<String, RetentionFacts> = candidates
            .iter()
            .map(|r| {
                let doc = RetentionFacts {
                    current: r.get::<_, i64>(1) as Version,
                    deleted: r.get(2),
                    ready_version: r.get::<_, i64>(3) as Version,
                };
                (r.get(0), doc)
            })
            .collect();
        let ids: Vec<&str> = facts.keys().map(String::as_str).collect();
        let events = tx
            .query(CONTENT_EVENTS.as_str(), &[&ids])
            .await
            .map_err(LogError::db("read content events"))?;
        let mut strip: (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
        // Per document, the lowest version that keeps its content.
        let mut lowest_kept: HashMap<&str, Version> = HashMap::new();
        for row in &events {
            let stream: &str = row.get(0);
            let Some(doc) = facts.get(stream) else {
                continue;
            };
            let version = row.get::<_, i64>(2) as Version;
            let age = Duration::from_secs_f64(row.get::<_, f64>(3).max(0.0));
            if policy.keeps(doc, version, age) {
                let lowest = lowest_kept.entry(stream).or_insert(version);
                *lowest = (*lowest).min(version);
            } else {
                strip.0.push(stream);
                strip.1.push(row.get(1));
            }
        }
        let (floor_ids, floors): (Vec<&str>, Vec<i64>) = facts
            .iter()
            .map(|(id, doc)| {
                let below_kept = lowest_kept.get(id.as_str()).map_or(Version::MAX, |v| v - 1);
                (id.as_str(), policy.floor(doc).min(below_kept) as i64)
            })
            .unzip();
        let stripped = if strip.0.is_empty() {
            Vec::new()
        } else {
            let statement = prepared(&tx, &STRIP_EVENTS, "prepare retention").await?;
            tx.query(
                &statement,
                &[&strip.0, &strip.1, &RemovalCause::Retention.as_str()],
            )
            .await
            .map_err(LogError::db("remove old content"))?
        };
        tx.execute(
            "UPDATE streams s SET content_floor = GREATEST(s.content_floor, f.floor)
               FROM unnest($1::text[], $2::bigint[]) AS f(stream_id, floor)
              WHERE s.stream_id = f.stream_id",
            &[&floor_ids, &floors],
        )
        .await
        .map_err(LogError::db("record content floors"))?;
        let blobs = delete_unreferenced_blobs(&tx, &stripped_blobs(&stripped), false).await?;
        tx.commit()
            .await
            .map_err(LogError::db("commit retention page"))?;
        let documents: HashSet<&str> = stripped.iter().map(|r| r.get::<_, &str>(0)).collect();
        Ok((
            ContentRemoval {
                documents: documents.len() as u64,
                events: stripped.len() as u64,
                blobs,
            },
            Some(last),
        ))
    }
}

/// Something of an erased document's content that the log still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureLeak {
    /// The erased document.
    pub doc_id: String,
    /// What still holds content.
    pub what: String,
}

/// The log's part of an erasure's proof.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErasureCheck {
    /// Documents whose newest event is an erasure.
    pub erased_documents: u64,
    /// What the log still holds of them (empty: the log holds none of their content).
    pub leaks: Vec<ErasureLeak>,
}

/// For every document whose current version is an erasure (only `$1`'s, when it names one):
/// events before its tombstone that still hold content, a snapshot, parked changes with a
/// store error, and the blobs its removed events named that still exist though no event
/// holding content refers to them.
static ERASURE_LEAKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH erased AS (
         SELECT s.stream_id, s.doc_version FROM streams s
          WHERE s.deleted AND s.catalogue_type = 'DocumentErased'
            AND ($1::text IS NULL OR s.stream_id = $1::text)
     )
     SELECT (SELECT count(*) FROM erased), NULL::text, NULL::text
     UNION ALL
     SELECT 0, e.stream_id, 'event ' || e.stream_version || ' (' || e.event_type || ') holds content'
       FROM erased x JOIN events e ON e.stream_id = x.stream_id
      WHERE (e.payload->>'version')::bigint < x.doc_version
        AND (e.event_type IN {content_types} OR e.vectors IS NOT NULL)
     UNION ALL
     SELECT 0, p.stream_id, 'snapshot at stream version ' || p.stream_version
       FROM erased x JOIN snapshots p ON p.stream_id = x.stream_id
      WHERE (p.state->>'version')::bigint < x.doc_version
     UNION ALL
     SELECT 0, p.stream_id, 'parked change ' || p.id || ' keeps its store error'
       FROM erased x JOIN parked_changes p ON p.stream_id = x.stream_id
      WHERE p.version < x.doc_version AND p.error <> 'erased'
     UNION ALL
     SELECT 0, e.stream_id, 'blob ' || (m->>'sha256') || ' is still stored'
       FROM erased x JOIN events e ON e.stream_id = x.stream_id
            CROSS JOIN LATERAL jsonb_array_elements(e.payload->'removed') AS m
      WHERE e.event_type = 'ContentRemoved' AND m->>'type' = 'BlobStored'
        AND EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = decode(m->>'sha256', 'hex'))
        AND NOT EXISTS (SELECT 1 FROM events r WHERE r.event_type = 'BlobStored'
                                                 AND r.payload->>'sha256' = m->>'sha256')",
        content_types = *CONTENT_TYPES
    )
});

impl LogReads<'_> {
    /// Checks that the log holds no content of any erased document (see [`ErasureCheck`]).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn erasure_check(self) -> Result<ErasureCheck, LogError> {
        self.erasure_check_of(None).await
    }

    /// [`LogReads::erasure_check`] of one document (`erased_documents` is 0 or 1), or of
    /// every document with `None`.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn erasure_check_of(self, doc_id: Option<&DocId>) -> Result<ErasureCheck, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(ERASURE_LEAKS.as_str(), &[&doc_id.map(DocId::as_str)])
            .await
            .map_err(LogError::db("check erasures"))?;
        let mut check = ErasureCheck::default();
        for row in rows {
            match row.get::<_, Option<String>>(1) {
                None => check.erased_documents = row.get::<_, i64>(0) as u64,
                Some(doc_id) => check.leaks.push(ErasureLeak {
                    doc_id,
                    what: row.get(2),
                }),
            }
        }
        check
            .leaks
            .sort_by(|a, b| (&a.doc_id, &a.what).cmp(&(&b.doc_id, &b.what)));
        Ok(check)
    }
}
