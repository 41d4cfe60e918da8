//! Content removal racing appends, on the log alone (deterministic, with transactions held
//! open): a retention pass or an erasure never deletes blob bytes that an append not yet
//! committed re-uses, and a snapshot of a version an erasure removed is never written.

mod common;

use std::time::Duration;

use aggregates::document::retention::RetentionPolicy;
use aggregates::{Document, DocumentCommand, DocumentEvent};
use anyhow::Result;
use bytes::Bytes;
use common::log::*;
use docledger::eventlog::AppendRequest;

/// The events of putting `title` with `blob` onto `doc`, and the state after them.
fn put(doc: &Document, title: &str, blob: &[u8]) -> (Vec<DocumentEvent>, Document) {
    let command = DocumentCommand::Put(put_document(title, blob, 2, 8, 7));
    let events = doc.decide(&command).expect("a valid put");
    let mut next = doc.clone();
    for e in &events {
        next.apply_event(e);
    }
    (events, next)
}

fn with_blob<'a>(
    doc_id: &'a aggregates::DocId,
    before: &Document,
    events: &'a [DocumentEvent],
    after: &Document,
    blob: &'a (String, Bytes),
) -> AppendRequest<'a> {
    let mut req = request(doc_id, before.stream_version, events);
    req.doc_version = after.version;
    req.deleted = after.deleted;
    req.blob = Some((blob.0.as_str(), blob.1.clone()));
    req
}

async fn blob_exists(t: &TestLog, sha: &str) -> Result<bool> {
    let raw = t.raw_client().await?;
    let row = raw
        .query_one(
            "SELECT count(*) FROM blobs WHERE sha256 = decode($1, 'hex')",
            &[&sha],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// `old`'s first version holds `shared` bytes, its later ones other bytes; every store
/// "accepted" its newest version. Returns the shared blob.
async fn old_document_sharing(t: &TestLog, old: &aggregates::DocId) -> Result<(String, Bytes)> {
    let shared = blob_bytes(1, 4096);
    let shared = (sha256_hex(&shared), shared);
    let mut doc = Document::default();
    for v in 0..3u64 {
        let bytes = if v == 0 {
            shared.1.clone()
        } else {
            blob_bytes(10 + v, 4096)
        };
        let blob = (sha256_hex(&bytes), bytes);
        let (events, next) = put(&doc, &format!("old v{v}"), &blob.1);
        t.log
            .appends()
            .append(with_blob(old, &doc, &events, &next, &blob))
            .await?;
        doc = next;
    }
    t.raw_client()
        .await?
        .execute("UPDATE streams SET ready_version = doc_version", &[])
        .await?;
    Ok(shared)
}

/// Appends `new`'s first version with the `shared` bytes in `tx`, left uncommitted.
async fn reuse_in(
    t: &TestLog,
    tx: &deadpool_postgres::Transaction<'_>,
    new: &aggregates::DocId,
    shared: &(String, Bytes),
) -> Result<()> {
    let (events, next) = put(&Document::default(), "new", &shared.1);
    t.log
        .appends()
        .append_in(
            tx,
            with_blob(new, &Document::default(), &events, &next, shared),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_pass_keeps_bytes_an_uncommitted_append_reuses() -> Result<()> {
    let t = TestLog::create("content_retention_race", 4).await?;
    let (old, new) = (doc("old"), doc("new"));
    let shared = old_document_sharing(&t, &old).await?;

    // Another document's append re-uses the bytes and is not committed yet.
    let mut client = t.log.client().await?;
    let tx = client.transaction().await?;
    reuse_in(&t, &tx, &new, &shared).await?;

    let policy = RetentionPolicy {
        versions: 1,
        max_age: Duration::ZERO,
    };
    let removed = tokio::time::timeout(
        Duration::from_secs(30),
        t.log.compaction().remove_old_content(policy),
    )
    .await??;
    assert_eq!(
        removed.events, 6,
        "versions 1 and 2 of `old` lost their content"
    );
    tx.commit().await?;
    drop(client);
    assert!(
        blob_exists(&t, &shared.0).await?,
        "the bytes `new` refers to were deleted under its append"
    );
    // A later pass, with no append in flight, finds them referenced and keeps them.
    let later = t.log.compaction().remove_old_content(policy).await?;
    assert_eq!((later.events, later.blobs), (0, 0));
    assert!(blob_exists(&t, &shared.0).await?);
    t.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_waits_for_an_append_reusing_its_bytes_and_keeps_them() -> Result<()> {
    let t = TestLog::create("content_erasure_race", 4).await?;
    let (old, new) = (doc("old"), doc("new"));
    let shared = old_document_sharing(&t, &old).await?;

    let mut client = t.log.client().await?;
    let tx = client.transaction().await?;
    reuse_in(&t, &tx, &new, &shared).await?;

    let erase = tokio::spawn({
        let log = t.log.clone();
        let old = old.clone();
        async move {
            let state = log.appends().load(&old).await?;
            let command = DocumentCommand::Erase {
                expected_version: None,
            };
            let events = state.decide(&command).expect("erasable");
            let mut req = request(&old, state.stream_version, &events);
            req.deleted = true;
            log.appends().append(req).await?;
            anyhow::Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !erase.is_finished(),
        "the erasure must wait for the append that holds the bytes"
    );
    tx.commit().await?;
    drop(client);
    tokio::time::timeout(Duration::from_secs(30), erase).await???;
    assert!(
        blob_exists(&t, &shared.0).await?,
        "the bytes `new` refers to were deleted by the erasure"
    );
    t.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_erased_version_is_never_written() -> Result<()> {
    let t = TestLog::create("content_erasure_snapshot", 2).await?;
    let id = doc("secret");
    let bytes = blob_bytes(3, 512);
    let blob = (sha256_hex(&bytes), bytes);
    let (events, before) = put(&Document::default(), "secret title", &blob.1);
    t.log
        .appends()
        .append(with_blob(
            &id,
            &Document::default(),
            &events,
            &before,
            &blob,
        ))
        .await?;
    let erasure = before
        .decide(&DocumentCommand::Erase {
            expected_version: None,
        })
        .expect("erasable");
    let mut req = request(&id, before.stream_version, &erasure);
    req.deleted = true;
    t.log.appends().append(req).await?;

    // A snapshot of the state before the erasure, saved late (the actor spawns it).
    t.log.appends().save_snapshot(&id, &before).await?;
    let raw = t.raw_client().await?;
    let snapshots: i64 = raw
        .query_one("SELECT count(*) FROM snapshots", &[])
        .await?
        .get(0);
    assert_eq!(
        snapshots, 0,
        "a snapshot holding erased content was written"
    );
    assert!(
        !blob_exists(&t, &blob.0).await?,
        "the erased bytes are gone"
    );
    let loaded = t.log.appends().load(&id).await?;
    assert!(loaded.erased && loaded.content.is_none(), "{loaded:?}");
    t.drop_database().await
}
