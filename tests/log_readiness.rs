//! The log's bookkeeping queries against real PostgreSQL: which `(document, version)` pairs
//! every store holds, as a rebuild reads it (the per-document lookup and the one-scan form,
//! used when many rows are pending, must agree on every case), the records of applied and
//! ready versions (a document named twice in one record keeps its newest version), and the
//! projection lag the status reports (counted up to a cap, so a long backlog never makes a
//! status sample expensive).

mod common;

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use common::TestLog;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_and_scan_agree_on_which_versions_every_store_holds() -> Result<()> {
    let t = TestLog::create("lookup_and_scan_agree", 2).await?;
    let raw = t.raw_client().await?;
    // (stream, doc_version, mysql, milvus, s3, ready)
    let streams: [(&str, i64, i64, i64, i64, i64); 6] = [
        ("all-three", 3, 3, 3, 3, 0),
        ("recorded-ready", 2, 0, 0, 0, 2),
        ("two-of-three", 4, 4, 4, 3, 0),
        ("ready-earlier", 5, 5, 5, 5, 4),
        ("asked-older", 6, 6, 6, 6, 6),
        ("nothing", 1, 0, 0, 0, 0),
    ];
    for (id, version, mysql, milvus, s3, ready) in streams {
        raw.execute(
            "INSERT INTO streams (stream_id, stream_version, doc_version, mysql_version,
                                  milvus_version, s3_version, ready_version)
             VALUES ($1, $2, $2, $3, $4, $5, $6)",
            &[&id, &version, &mysql, &milvus, &s3, &ready],
        )
        .await?;
    }
    let asked: Vec<(&str, u64)> = vec![
        ("all-three", 3),
        ("recorded-ready", 2),
        ("two-of-three", 4),
        ("ready-earlier", 5),
        // The log has moved on to version 6: version 5 is no longer the document's state.
        ("asked-older", 5),
        ("nothing", 1),
        ("unknown", 1),
    ];
    let expected: HashSet<String> = ["all-three", "recorded-ready", "ready-earlier"]
        .into_iter()
        .map(String::from)
        .collect();

    let looked_up = t.log.store_records().consistent_at(&asked).await?;
    assert_eq!(looked_up, expected, "per-document lookup");
    let by_doc: HashMap<&str, u64> = asked.iter().copied().collect();
    let scanned = t.log.store_records().consistent_among(&by_doc).await?;
    assert_eq!(scanned, expected, "one scan of streams");

    drop(raw);
    t.drop_database().await
}

/// A rebuild records the versions it wrote over all its pages at once, so a document that
/// changed between two pages is named twice, the older version first. PostgreSQL's
/// `UPDATE ... FROM` uses one matching row per target row: the record used to keep the
/// older version, and the document never became consistent although the store held the
/// newer one (seen as `{"milvus":47,"mysql":48,"s3":48}` after a Milvus rebuild).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_named_twice_in_one_record_keeps_its_newest_version() -> Result<()> {
    use aggregates::{DocId, StoreKind};
    use projections::{AppliedVersion, LogSource};

    let t = TestLog::create("named_twice_keeps_newest", 2).await?;
    let raw = t.raw_client().await?;
    // (stream, doc_version, mysql, milvus, s3)
    let streams: [(&str, i64, i64, i64, i64); 3] = [
        ("older-first", 48, 48, 46, 48),
        ("newer-first", 48, 48, 46, 48),
        ("thrice", 9, 9, 1, 9),
    ];
    for (id, version, mysql, milvus, s3) in streams {
        raw.execute(
            "INSERT INTO streams (stream_id, stream_version, doc_version, mysql_version,
                                  milvus_version, s3_version)
             VALUES ($1, $2, $2, $3, $4, $5)",
            &[&id, &version, &mysql, &milvus, &s3],
        )
        .await?;
    }
    let at = |id: &str, version: u64| -> Result<AppliedVersion> {
        Ok(AppliedVersion {
            doc_id: DocId::parse(id)?,
            version,
        })
    };
    let record = vec![
        at("older-first", 47)?,
        at("newer-first", 48)?,
        at("thrice", 7)?,
        at("older-first", 48)?,
        at("thrice", 9)?,
        at("newer-first", 47)?,
        at("thrice", 8)?,
    ];
    let mut consistent = LogSource::record_applied(&t.log, StoreKind::Milvus, &record).await?;
    consistent.sort_by(|a, b| a.doc_id.cmp(&b.doc_id));
    let rows = raw
        .query(
            "SELECT stream_id, milvus_version, ready_version FROM streams ORDER BY stream_id",
            &[],
        )
        .await?;
    let recorded: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        recorded,
        vec![
            ("newer-first".to_owned(), 48),
            ("older-first".to_owned(), 48),
            ("thrice".to_owned(), 9)
        ],
        "each document's newest recorded version"
    );
    assert_eq!(
        consistent,
        vec![
            at("newer-first", 48)?,
            at("older-first", 48)?,
            at("thrice", 9)?
        ],
        "each document became consistent once, at its version"
    );

    // Readiness records the newest version too, and neither record ever goes back.
    t.log
        .store_records()
        .record_ready(&[
            at("older-first", 47)?,
            at("older-first", 48)?,
            at("thrice", 9)?,
        ])
        .await?;
    LogSource::record_applied(&t.log, StoreKind::Milvus, &[at("thrice", 2)?]).await?;
    t.log
        .store_records()
        .record_ready(&[at("thrice", 2)?])
        .await?;
    let rows = raw
        .query(
            "SELECT stream_id, milvus_version, ready_version FROM streams ORDER BY stream_id",
            &[],
        )
        .await?;
    let after: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        after,
        vec![
            ("newer-first".to_owned(), 48, 0),
            ("older-first".to_owned(), 48, 48),
            ("thrice".to_owned(), 9, 9)
        ]
    );

    drop(raw);
    t.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_counted_up_to_its_cap_with_the_oldest_event_time() -> Result<()> {
    use aggregates::LogCursor;
    use common::{doc, request, row_events};
    use projections::Partition;

    let t = TestLog::create("lag_is_counted_up_to_its_cap", 2).await?;
    let mut head = LogCursor::START;
    for name in ["a", "b", "c"] {
        let (id, events) = (doc(name), row_events(1, 2, name));
        match t.log.appends().append(request(&id, 0, &events)).await? {
            docledger::eventlog::Appended::Committed { last, .. } => head = last,
            other => anyhow::bail!("append of {name} not committed: {other:?}"),
        }
    }
    let (all, oldest) = t
        .log
        .reads()
        .lag_after(LogCursor::START, Partition::ALL, 100)
        .await?;
    assert_eq!(all, 6, "every event counted below the cap");
    let (capped, capped_oldest) = t
        .log
        .reads()
        .lag_after(LogCursor::START, Partition::ALL, 4)
        .await?;
    assert_eq!(capped, 4, "the count stops at the cap");
    assert!(oldest.is_some());
    assert_eq!(
        capped_oldest, oldest,
        "the oldest event is among the first counted"
    );
    let (none, none_oldest) = t.log.reads().lag_after(head, Partition::ALL, 100).await?;
    assert_eq!((none, none_oldest), (0, None), "nothing after the head");
    t.drop_database().await
}
