//! `S3Sink` against the real S3 server of this machine (`StoreEnv::require`): each test owns
//! a bucket named after it and deletes it at the end, pass or fail.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use aggregates::{DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind, Version};
use bytes::Bytes;
use futures::FutureExt;
use projections::error::ErrorClass;
use projections::s3::{S3Sink, StoredObject};
use projections::sink::{Batch, Partition, Sink};
use projections::testing::{unique_name, StoreEnv};

const LOG_ID: &str = "test-log";

/// Runs `body` against a prepared sink on a fresh bucket, then deletes the bucket even
/// when `body` panics.
async fn with_sink<F, Fut>(test: &str, body: F)
where
    F: FnOnce(S3Sink) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = StoreEnv::require();
    // Bucket names allow [a-z0-9.-] only.
    let bucket = unique_name(test).replace('_', "-");
    let sink = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &bucket,
    );
    sink.prepare().await.expect("prepare bucket");
    let outcome = AssertUnwindSafe(body(sink.clone())).catch_unwind().await;
    sink.drop_bucket().await.expect("drop bucket");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn recorded(position: i64, doc: &str, event: DocumentEvent) -> RecordedEvent<DocumentEvent> {
    RecordedEvent {
        cursor: LogCursor {
            epoch: 1,
            xid: 100,
            position,
        },
        doc_id: DocId::parse(doc).expect("valid doc id"),
        stream_version: position,
        recorded_at_ms: 0,
        event,
    }
}

/// A blob: its bytes and a stand-in content address (the sink trusts the log's hashing).
struct Blob {
    bytes: Bytes,
    sha256: String,
    content_type: &'static str,
}

fn blob(content: &[u8], tag: char, content_type: &'static str) -> Blob {
    Blob {
        bytes: Bytes::copy_from_slice(content),
        sha256: tag.to_string().repeat(64),
        content_type,
    }
}

fn stored_event(version: Version, blob: &Blob) -> DocumentEvent {
    DocumentEvent::BlobStored {
        version,
        sha256: blob.sha256.clone(),
        size: blob.bytes.len() as u64,
        content_type: blob.content_type.to_owned(),
    }
}

/// A version without blob: the catalogue row says so, which removes the object.
fn blobless(version: Version) -> DocumentEvent {
    DocumentEvent::RowInserted {
        version,
        title: "t".into(),
        source_type: "test".into(),
        business_tag: None,
        attributes: serde_json::Map::new(),
        blob_sha256: None,
        blob_size: None,
        chunk_count: 0,
    }
}

/// The events as a batch delivered the way a repair does (the sink reads the stored version
/// before every write), so these tests exercise the version guard on every change; see
/// [`first_batch`] for the runner's batches read in log order.
fn batch(events: &[RecordedEvent<DocumentEvent>], blobs: &[&Blob]) -> Batch {
    Batch {
        fresh_first_versions: false,
        ..first_batch(events, blobs)
    }
}

/// The events as the runner reads them, in log order from its checkpoint.
fn first_batch(events: &[RecordedEvent<DocumentEvent>], blobs: &[&Blob]) -> Batch {
    let end = events.last().map(|e| e.cursor).unwrap_or_default();
    let mut batch = Batch::coalesce(StoreKind::S3, end, events);
    batch.blobs = blobs
        .iter()
        .map(|b| (b.sha256.clone(), b.bytes.clone()))
        .collect::<HashMap<_, _>>();
    batch
}

async fn apply(sink: &S3Sink, events: &[RecordedEvent<DocumentEvent>], blobs: &[&Blob]) -> usize {
    sink.apply(LOG_ID, Partition::ALL, &batch(events, blobs))
        .await
        .expect("apply batch")
        .num_changes
}

async fn object(sink: &S3Sink, doc: &str) -> Option<StoredObject> {
    sink.object(doc).await.expect("get object")
}

fn expected(version: Version, blob: &Blob) -> Option<StoredObject> {
    Some(StoredObject {
        bytes: blob.bytes.clone(),
        version: Some(version),
        sha256: Some(blob.sha256.clone()),
        content_type: Some(blob.content_type.to_owned()),
    })
}

#[tokio::test]
async fn a_first_version_in_log_order_is_put_without_reading_the_object() {
    with_sink("s3_first_write", |sink| async move {
        let b1 = blob(b"first version", 'a', "text/plain");
        let b2 = blob(b"second version", 'b', "text/plain");
        let v1 = [recorded(1, "doc-1", stored_event(1, &b1))];
        let put = |events: &[RecordedEvent<DocumentEvent>], blobs: &[&Blob]| {
            let batch = first_batch(events, blobs);
            let sink = &sink;
            async move {
                sink.apply(LOG_ID, Partition::ALL, &batch)
                    .await
                    .expect("apply batch")
                    .num_changes
            }
        };
        assert_eq!(put(&v1, &[&b1]).await, 1);
        assert_eq!(object(&sink, "doc-1").await, expected(1, &b1));
        // Replayed after a crash before the checkpoint: put again (no HEAD tells it is
        // there), with the same result.
        assert_eq!(put(&v1, &[&b1]).await, 1);
        assert_eq!(object(&sink, "doc-1").await, expected(1, &b1));
        // Later versions still read first: a replay of v2 writes nothing.
        let v2 = [recorded(2, "doc-1", stored_event(2, &b2))];
        assert_eq!(put(&v2, &[&b2]).await, 1);
        assert_eq!(put(&v2, &[&b2]).await, 0);
        assert_eq!(object(&sink, "doc-1").await, expected(2, &b2));
    })
    .await;
}

#[tokio::test]
async fn one_document_through_put_replay_replace_stale_and_removals() {
    with_sink("s3_lifecycle", |sink| async move {
        // Every byte value, so nothing is lost to text encodings.
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let b1 = blob(&all_bytes, 'a', "application/octet-stream");
        let b2 = blob(b"%PDF-1.7 second version", 'b', "application/pdf");

        let v1 = [recorded(1, "doc-1", stored_event(1, &b1))];
        assert_eq!(apply(&sink, &v1, &[&b1]).await, 1);
        assert_eq!(object(&sink, "doc-1").await, expected(1, &b1));
        assert_eq!(sink.list_keys("docs/").await.expect("list"), ["docs/doc-1"]);

        // Re-putting the same version writes nothing.
        assert_eq!(apply(&sink, &v1, &[&b1]).await, 0);
        assert_eq!(object(&sink, "doc-1").await, expected(1, &b1));

        let v2 = [recorded(2, "doc-1", stored_event(2, &b2))];
        assert_eq!(apply(&sink, &v2, &[&b2]).await, 1);
        assert_eq!(object(&sink, "doc-1").await, expected(2, &b2));

        // A late re-delivery of v1 never wins over v2.
        assert_eq!(apply(&sink, &v1, &[&b1]).await, 0);
        assert_eq!(object(&sink, "doc-1").await, expected(2, &b2));

        // A removal older than the stored version is ignored.
        let old_delete = [recorded(
            3,
            "doc-1",
            DocumentEvent::DocumentDeleted { version: 1 },
        )];
        assert_eq!(apply(&sink, &old_delete, &[]).await, 0);
        assert_eq!(object(&sink, "doc-1").await, expected(2, &b2));

        // A version without blob removes the object.
        assert_eq!(
            apply(&sink, &[recorded(4, "doc-1", blobless(3))], &[]).await,
            1
        );
        assert_eq!(object(&sink, "doc-1").await, None);
        assert!(sink.list_keys("docs/").await.expect("list").is_empty());

        // The blob comes back at v4, then the document is deleted at v5 (twice).
        let v4 = [recorded(5, "doc-1", stored_event(4, &b1))];
        assert_eq!(apply(&sink, &v4, &[&b1]).await, 1);
        assert_eq!(object(&sink, "doc-1").await, expected(4, &b1));
        let deleted = [recorded(
            6,
            "doc-1",
            DocumentEvent::DocumentDeleted { version: 5 },
        )];
        assert_eq!(apply(&sink, &deleted, &[]).await, 1);
        assert_eq!(apply(&sink, &deleted, &[]).await, 0);
        assert_eq!(object(&sink, "doc-1").await, None);
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_several_documents_is_written_concurrently() {
    with_sink("s3_several_docs", |sink| async move {
        let blobs: Vec<Blob> = (0..40u8)
            .map(|i| {
                blob(
                    format!("content of document {i}").as_bytes(),
                    char::from(b'a' + i % 26),
                    "text/plain",
                )
            })
            .collect();
        // 26 distinct tags for 40 blobs would collide: make every address unique.
        let blobs: Vec<Blob> = blobs
            .into_iter()
            .enumerate()
            .map(|(i, b)| Blob {
                sha256: format!("{:064x}", i + 1),
                ..b
            })
            .collect();
        let odd = "dir/sub:x@host.name-1_2";
        let mut events: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| recorded(i as i64 + 1, &format!("doc-{i:02}"), stored_event(1, b)))
            .collect();
        events.push(recorded(100, odd, stored_event(1, &blobs[0])));
        events.push(recorded(101, "doc-00", stored_event(2, &blobs[1])));
        events.push(recorded(
            102,
            "doc-01",
            DocumentEvent::DocumentDeleted { version: 2 },
        ));
        let refs: Vec<&Blob> = blobs.iter().collect();
        // 40 documents + odd, doc-00 coalesced to v2, doc-01 removed before it was written.
        assert_eq!(apply(&sink, &events, &refs).await, 40);

        assert_eq!(object(&sink, "doc-00").await, expected(2, &blobs[1]));
        assert_eq!(object(&sink, "doc-01").await, None);
        assert_eq!(object(&sink, "doc-39").await, expected(1, &blobs[39]));
        assert_eq!(object(&sink, odd).await, expected(1, &blobs[0]));
        let keys = sink.list_keys("docs/").await.expect("list");
        assert_eq!(keys.len(), 40);
        assert!(keys.contains(&format!("docs/{odd}")));

        // Replaying the whole batch writes nothing.
        assert_eq!(apply(&sink, &events, &refs).await, 0);
        assert_eq!(sink.list_keys("docs/").await.expect("list").len(), 40);
    })
    .await;
}

#[tokio::test]
async fn missing_blob_bytes_are_a_permanent_error_naming_the_document() {
    with_sink("s3_missing_blob", |sink| async move {
        let b = blob(b"bytes", 'c', "text/plain");
        let events = [
            recorded(1, "present", stored_event(1, &b)),
            recorded(
                2,
                "absent",
                stored_event(1, &blob(b"never loaded", 'd', "text/plain")),
            ),
        ];
        let err = sink
            .apply(LOG_ID, Partition::ALL, &batch(&events, &[&b]))
            .await
            .expect_err("refused");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(err.doc_id.as_deref(), Some("absent"));
        assert!(err.message.contains(&"d".repeat(64)), "{err}");
        assert_eq!(object(&sink, "absent").await, None);
    })
    .await;
}

#[tokio::test]
async fn an_empty_batch_writes_nothing_and_prepare_is_idempotent() {
    with_sink("s3_empty_batch", |sink| async move {
        sink.prepare().await.expect("second prepare");
        let applied = sink
            .apply(LOG_ID, Partition::ALL, &Batch::default())
            .await
            .expect("apply");
        assert_eq!(applied.num_changes, 0);
        assert!(sink.list_keys("").await.expect("list").is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_store_that_refuses_the_request_is_classified() {
    let env = StoreEnv::require();
    // Wrong secret: credentials are the environment's fault, not the document's.
    let bucket = unique_name("s3_refused").replace('_', "-");
    let wrong_key = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        "not-the-secret-key-at-all",
        &env.s3_region,
        &bucket,
    );
    let err = wrong_key.prepare().await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::Transient, "{err}");
    assert!(err.message.starts_with("HTTP 403"), "{err}");

    // The bucket is gone (never prepared): nothing to park, the runner waits for it.
    let no_bucket = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &bucket,
    );
    let b = blob(b"bytes", 'e', "text/plain");
    let err = no_bucket
        .apply(
            LOG_ID,
            Partition::ALL,
            &batch(&[recorded(1, "doc", stored_event(1, &b))], &[&b]),
        )
        .await
        .expect_err("no bucket");
    assert_eq!(err.class, ErrorClass::Transient, "{err}");
    assert_eq!(err.doc_id.as_deref(), Some("doc"));

    // Nothing listens there: a dispatch failure.
    let nowhere = S3Sink::new(
        "http://127.0.0.1:9",
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &bucket,
    );
    let err = nowhere.prepare().await.expect_err("unreachable");
    assert_eq!(err.class, ErrorClass::Transient, "{err}");

    // An invalid bucket name is the request's fault.
    let invalid = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        "Invalid_Bucket_Name",
    );
    let err = invalid.prepare().await.expect_err("invalid name");
    assert_eq!(err.class, ErrorClass::Permanent, "{err}");
}

#[tokio::test]
async fn an_object_that_holds_the_bytes_only_gets_new_metadata_and_removals_go_in_bulk() {
    with_sink("s3_restamp_bulk_delete", |sink| async move {
        let same = blob(b"same bytes", 'e', "text/plain");
        // Ids that need percent-encoding in a copy source.
        let doc = "dir/a:b@c d".replace(' ', "-");
        apply(
            &sink,
            &[recorded(1, &doc, stored_event(1, &same))],
            &[&same],
        )
        .await;
        // A later version with the same bytes (a rollback re-emitting an earlier blob).
        let n = apply(
            &sink,
            &[recorded(2, &doc, stored_event(3, &same))],
            &[&same],
        )
        .await;
        assert_eq!(n, 1);
        assert_eq!(object(&sink, &doc).await, expected(3, &same));

        let docs: Vec<String> = (0..5).map(|i| format!("bulk-{i}")).collect();
        let puts: Vec<_> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| recorded(10 + i as i64, d, stored_event(1, &same)))
            .collect();
        apply(&sink, &puts, &[&same]).await;
        let removals: Vec<_> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                recorded(
                    20 + i as i64,
                    d,
                    DocumentEvent::DocumentDeleted { version: 2 },
                )
            })
            .collect();
        assert_eq!(apply(&sink, &removals, &[]).await, 5);
        for d in &docs {
            assert_eq!(object(&sink, d).await, None, "{d}");
        }
        assert_eq!(
            apply(&sink, &removals, &[]).await,
            0,
            "nothing left to delete"
        );
    })
    .await;
}
