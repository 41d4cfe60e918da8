//! `MilvusSink` against the real Milvus of this machine (`StoreEnv::require`): each test owns
//! a collection named after it and drops it at the end, pass or fail.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use aggregates::{Chunk, DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind, Version};
use futures::FutureExt;
use projections::error::ErrorClass;
use projections::milvus::{ChunkRow, MilvusSink};
use projections::sink::{Batch, Partition, Sink};
use projections::testing::{unique_name, StoreEnv};

const DIM: usize = 8;
const LOG_ID: &str = "test-log";

/// Runs `body` against a prepared sink on a fresh collection, then drops the collection
/// even when `body` panics.
async fn with_sink<F, Fut>(test: &str, body: F)
where
    F: FnOnce(MilvusSink) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = StoreEnv::require();
    let sink = MilvusSink::connect(&env.milvus(), &unique_name(test), DIM)
        .await
        .expect("connect to milvus");
    sink.prepare().await.expect("prepare collection");
    let outcome = AssertUnwindSafe(body(sink.clone())).catch_unwind().await;
    sink.drop_collection().await.expect("drop collection");
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

/// The events as a batch delivered the way a repair does (the sink reads what Milvus holds
/// before every write), so these tests exercise the version guard on every change; see
/// [`first_batch`] for the runner's batches read in log order.
fn batch(events: &[RecordedEvent<DocumentEvent>]) -> Batch {
    Batch {
        fresh_first_versions: false,
        ..first_batch(events)
    }
}

/// The events as the runner reads them, in log order from its checkpoint.
fn first_batch(events: &[RecordedEvent<DocumentEvent>]) -> Batch {
    let end = events.last().map(|e| e.cursor).unwrap_or_default();
    Batch::coalesce(StoreKind::Milvus, end, events)
}

/// Chunk `index` of `version`: text and vector both tell which one it is.
fn chunk(version: Version, index: u32) -> Chunk {
    Chunk {
        index,
        text: format!("v{version} chunk {index}"),
        vector: (0..DIM)
            .map(|j| version as f32 * 10.0 + index as f32 + j as f32 / 100.0)
            .collect(),
    }
}

fn vectors(version: Version, num_chunks: u32) -> DocumentEvent {
    DocumentEvent::VectorsIndexed {
        version,
        chunks: (0..num_chunks).map(|i| chunk(version, i)).collect(),
    }
}

fn deleted(version: Version) -> DocumentEvent {
    DocumentEvent::DocumentDeleted { version }
}

/// The rows the contract says `doc` holds at `version` with `num_chunks` chunks.
fn expected_rows(doc: &str, version: Version, num_chunks: u32) -> Vec<ChunkRow> {
    (0..num_chunks)
        .map(|i| {
            let c = chunk(version, i);
            ChunkRow {
                pk: format!("{doc}#{i}"),
                doc_id: doc.to_owned(),
                chunk_index: i,
                version,
                text: c.text,
                embedding: c.vector,
            }
        })
        .collect()
}

async fn apply(sink: &MilvusSink, events: &[RecordedEvent<DocumentEvent>]) -> usize {
    sink.apply(LOG_ID, Partition::ALL, &batch(events))
        .await
        .expect("apply batch")
        .num_changes
}

async fn rows(sink: &MilvusSink, doc: &str) -> Vec<ChunkRow> {
    sink.rows_of(doc).await.expect("read rows")
}

#[tokio::test]
async fn a_first_version_in_log_order_is_upserted_without_reading_the_rows() {
    with_sink("milvus_first_write", |sink| async move {
        let put = |events: Vec<RecordedEvent<DocumentEvent>>| {
            let sink = &sink;
            async move {
                sink.apply(LOG_ID, Partition::ALL, &first_batch(&events))
                    .await
                    .expect("apply batch")
                    .num_changes
            }
        };
        let v1 = || vec![recorded(1, "doc-1", vectors(1, 3))];
        assert_eq!(put(v1()).await, 1);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 1, 3));
        // Replayed after a crash before the checkpoint: upserted again (no read tells it is
        // there), with the same rows.
        assert_eq!(put(v1()).await, 1);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 1, 3));
        // Later versions still read first: v2 shrinks cleanly and its replay writes nothing.
        let v2 = || vec![recorded(2, "doc-1", vectors(2, 1))];
        assert_eq!(put(v2()).await, 1);
        assert_eq!(put(v2()).await, 0);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 2, 1));
        assert_eq!(sink.count_rows().await.expect("count"), 1);
    })
    .await;
}

#[tokio::test]
async fn one_document_through_put_replay_shrink_stale_replay_and_remove() {
    with_sink("milvus_lifecycle", |sink| async move {
        let v1 = [recorded(1, "doc-1", vectors(1, 3))];
        assert_eq!(apply(&sink, &v1).await, 1);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 1, 3));

        // Re-applying the same batch writes nothing and changes nothing.
        assert_eq!(apply(&sink, &v1).await, 0);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 1, 3));

        // Fewer chunks: exactly the new ones remain, no v1 leftovers.
        let v2 = [recorded(2, "doc-1", vectors(2, 1))];
        assert_eq!(apply(&sink, &v2).await, 1);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 2, 1));
        assert_eq!(sink.count_rows().await.expect("count"), 1);

        // A late re-delivery of v1 never wins over v2.
        assert_eq!(apply(&sink, &v1).await, 0);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 2, 1));

        // A removal older than what is stored is ignored.
        assert_eq!(apply(&sink, &[recorded(3, "doc-1", deleted(1))]).await, 0);
        assert_eq!(rows(&sink, "doc-1").await, expected_rows("doc-1", 2, 1));

        let removed = [recorded(4, "doc-1", deleted(3))];
        assert_eq!(apply(&sink, &removed).await, 1);
        assert!(rows(&sink, "doc-1").await.is_empty());
        assert_eq!(apply(&sink, &removed).await, 0);
        assert_eq!(sink.count_rows().await.expect("count"), 0);
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_several_documents_is_coalesced_and_applied_together() {
    with_sink("milvus_several_docs", |sink| async move {
        let odd = "dir/sub:x@host.name-1_2";
        let first = [
            recorded(1, "a", vectors(1, 2)),
            recorded(2, "b", vectors(1, 3)),
            recorded(3, odd, vectors(1, 1)),
            recorded(4, "a", vectors(2, 4)),
            recorded(5, "b", deleted(2)),
            recorded(6, "Report-1", vectors(1, 2)),
            recorded(7, "report-1", vectors(1, 1)),
        ];
        // a (newest v2), b (removed, nothing stored), odd, Report-1, report-1.
        assert_eq!(apply(&sink, &first).await, 4);
        assert_eq!(rows(&sink, "a").await, expected_rows("a", 2, 4));
        assert!(rows(&sink, "b").await.is_empty());
        assert_eq!(rows(&sink, odd).await, expected_rows(odd, 1, 1));
        assert_eq!(
            rows(&sink, "Report-1").await,
            expected_rows("Report-1", 1, 2)
        );
        assert_eq!(
            rows(&sink, "report-1").await,
            expected_rows("report-1", 1, 1)
        );
        assert_eq!(sink.count_rows().await.expect("count"), 8);

        // Mixed second batch: shrink, an empty chunk list (removes every chunk), a
        // removal, a stale change and a no-op replay side by side.
        let second = [
            recorded(8, "a", vectors(3, 2)),
            recorded(9, odd, vectors(2, 0)),
            recorded(10, "Report-1", deleted(2)),
            recorded(11, "b", vectors(1, 5)),
            recorded(12, "report-1", vectors(1, 1)),
        ];
        // b v1 is older than b's removal at v2, but Milvus cannot know that (a deleted
        // document leaves no trace): it is written, as a replay from an earlier checkpoint
        // would, and the removal that follows it in the log takes it out again.
        assert_eq!(apply(&sink, &second).await, 4);
        assert_eq!(rows(&sink, "a").await, expected_rows("a", 3, 2));
        assert!(rows(&sink, odd).await.is_empty());
        assert!(rows(&sink, "Report-1").await.is_empty());
        assert_eq!(rows(&sink, "b").await, expected_rows("b", 1, 5));
        assert_eq!(
            rows(&sink, "report-1").await,
            expected_rows("report-1", 1, 1)
        );
        assert_eq!(apply(&sink, &[recorded(13, "b", deleted(2))]).await, 1);
        assert!(rows(&sink, "b").await.is_empty());
        assert_eq!(sink.count_rows().await.expect("count"), 3);
    })
    .await;
}

#[tokio::test]
async fn a_large_document_is_sent_in_several_requests_and_shrinks_cleanly() {
    with_sink("milvus_large_doc", |sink| async move {
        assert_eq!(
            apply(&sink, &[recorded(1, "big", vectors(1, 2_500))]).await,
            1
        );
        assert_eq!(rows(&sink, "big").await, expected_rows("big", 1, 2_500));
        assert_eq!(apply(&sink, &[recorded(2, "big", vectors(2, 10))]).await, 1);
        assert_eq!(rows(&sink, "big").await, expected_rows("big", 2, 10));
        assert_eq!(sink.count_rows().await.expect("count"), 10);
    })
    .await;
}

#[tokio::test]
async fn an_empty_batch_writes_nothing() {
    with_sink("milvus_empty_batch", |sink| async move {
        let only_checkpoint = Batch {
            end: LogCursor {
                epoch: 1,
                xid: 1,
                position: 1,
            },
            ..Batch::default()
        };
        let applied = sink
            .apply(LOG_ID, Partition::ALL, &only_checkpoint)
            .await
            .expect("apply");
        assert_eq!(applied.num_changes, 0);
        assert_eq!(sink.count_rows().await.expect("count"), 0);
    })
    .await;
}

#[tokio::test]
async fn data_the_collection_cannot_hold_is_refused_permanently_naming_the_document() {
    with_sink("milvus_refused", |sink| async move {
        let wrong_dim = DocumentEvent::VectorsIndexed {
            version: 1,
            chunks: vec![Chunk {
                index: 0,
                text: "t".into(),
                vector: vec![0.5; DIM + 1],
            }],
        };
        let err = sink
            .apply(
                LOG_ID,
                Partition::ALL,
                &batch(&[recorded(1, "bad", wrong_dim)]),
            )
            .await
            .expect_err("refused");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(err.doc_id.as_deref(), Some("bad"));
        assert_eq!(sink.count_rows().await.expect("count"), 0);
    })
    .await;
}

#[tokio::test]
async fn prepare_is_idempotent_and_refuses_a_collection_of_another_dimension() {
    with_sink("milvus_prepare", |sink| async move {
        sink.prepare().await.expect("second prepare");
        let env = StoreEnv::require();
        let other = MilvusSink::connect(&env.milvus(), sink.collection(), DIM * 2)
            .await
            .expect("connect");
        let err = other.prepare().await.expect_err("dimension mismatch");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message
                .contains(&format!("dimension {DIM}, expected {}", DIM * 2)),
            "{err}"
        );
    })
    .await;
}
