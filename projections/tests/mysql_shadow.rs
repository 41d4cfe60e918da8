//! The rebuild's shadow-table writer against the real MariaDB: pages written without waiting
//! for each other still end with exactly the newest state per document — a document updated
//! in the next page while its earlier upsert runs, deleted after an upsert still running,
//! re-created after its deletion — and the rows written `pending` are reported.

use aggregates::{DocId, DocumentEvent, LogCursor};
use mysql_async::prelude::Queryable;
use projections::mysql::schema::ROWS_PER_STATEMENT;
use projections::mysql::shadow::SHADOW_DOCUMENTS;
use projections::mysql::MysqlSink;
use projections::sink::{Batch, Change, DocChange, Sink};
use projections::testing::{unique_name, StoreEnv};

fn row(version: u64) -> DocumentEvent {
    DocumentEvent::RowInserted {
        version,
        title: format!("title v{version}"),
        source_type: "pdf".into(),
        business_tag: None,
        attributes: serde_json::Map::new(),
        blob_sha256: None,
        blob_size: None,
        chunk_count: 1,
    }
}

fn change(doc: &str, version: u64, change: Change) -> DocChange {
    DocChange {
        doc_id: DocId::parse(doc).expect("doc id"),
        version,
        cursor: LogCursor::START,
        change,
    }
}

fn page(changes: Vec<DocChange>) -> Batch {
    Batch {
        num_events: changes.len(),
        changes,
        ..Batch::default()
    }
}

fn doc(i: usize) -> String {
    format!("doc-{i:05}")
}

#[tokio::test]
async fn pages_in_flight_end_with_the_newest_state_per_document() {
    let env = StoreEnv::require();
    let name = unique_name("shadow_writer");
    let sink = MysqlSink::new(&env.mysql_database_url(&name)).expect("mysql url");
    sink.prepare().await.expect("prepare database");
    sink.create_shadow().await.expect("shadow table");
    // Several statements per page, so pages overlap in flight.
    let n = ROWS_PER_STATEMENT * 3 + 17;
    let mut writer = sink.shadow_writer();

    // Page 1: every document at v1; odd ones `ready`.
    let first = page(
        (0..n)
            .map(|i| change(&doc(i), 1, Change::Upsert(row(1))))
            .collect(),
    );
    writer
        .write_changes(&first, |d, _| d.ends_with(['1', '3', '5', '7', '9']))
        .await
        .expect("page 1");
    // Page 2, while page 1 may still run: documents divisible by 3 move to v2 (pending),
    // those divisible by 5 (and not by 3) are deleted at v2.
    let second = page(
        (0..n)
            .filter_map(|i| match (i % 3, i % 5) {
                (0, _) => Some(change(&doc(i), 2, Change::Upsert(row(2)))),
                (_, 0) => Some(change(&doc(i), 2, Change::Remove)),
                _ => None,
            })
            .collect(),
    );
    writer
        .write_changes(&second, |_, _| false)
        .await
        .expect("page 2");
    // Page 3: the deleted ones divisible by 7 come back at v3; a late older version of
    // doc 0 (v1) must not win over its v2.
    let mut third: Vec<DocChange> = (0..n)
        .filter(|i| i % 3 != 0 && i % 5 == 0 && i % 7 == 0)
        .map(|i| change(&doc(i), 3, Change::Upsert(row(3))))
        .collect();
    third.push(change(&doc(0), 1, Change::Upsert(row(1))));
    writer
        .write_changes(&page(third), |_, _| true)
        .await
        .expect("page 3");
    writer.finish().await.expect("finish");

    let rows: Vec<(String, u64, String, String)> = sink
        .pool()
        .get_conn()
        .await
        .expect("conn")
        .query(format!(
            "SELECT doc_id, version, title, CAST(status AS CHAR) FROM {SHADOW_DOCUMENTS} ORDER BY doc_id"
        ))
        .await
        .expect("read shadow");
    let expected: Vec<(String, u64, String, String)> = (0..n)
        .filter_map(|i| {
            let odd = i % 2 == 1 && i % 5 != 0;
            let (version, ready) = match (i % 3, i % 5, i % 7) {
                (0, _, _) => (2, false),
                (_, 0, 0) => (3, true),
                (_, 0, _) => return None,
                _ => (1, odd),
            };
            let status = if ready { "ready" } else { "pending" };
            Some((
                doc(i),
                version,
                format!("title v{version}"),
                status.to_owned(),
            ))
        })
        .collect();
    assert_eq!(rows.len(), expected.len());
    assert_eq!(rows, expected);

    // Every row written pending is reported with the version it was written at.
    let pending = writer.pending();
    assert!(pending.contains(&(doc(0), 2)));
    assert!(pending.contains(&(doc(2), 1)));
    assert!(!pending.iter().any(|(d, _)| d == &doc(1)), "written ready");
    // Page 1's even documents, page 2's multiples of 3.
    let written_pending =
        (0..n).filter(|i| i % 2 == 0).count() + (0..n).filter(|i| i % 3 == 0).count();
    assert_eq!(pending.len(), written_pending);

    let mut conn = sink.pool().get_conn().await.expect("conn");
    conn.query_drop(format!("DROP DATABASE `{name}`"))
        .await
        .expect("drop database");
}

/// Bulk statements keep their prepared form on the connection between uses: the second
/// statement of the same text is executed, not parsed and described again (an 11,000
/// placeholder statement cost MariaDB more to prepare than to insert its rows).
#[tokio::test]
async fn bulk_statements_are_prepared_once_per_connection() {
    use projections::mysql::shadow::{insert_statement, run_concurrently};
    let env = StoreEnv::require();
    let name = unique_name("shadow_prepared");
    // One connection, so every statement and the check run on the same session.
    let url = format!("{}?pool_min=1&pool_max=1", env.mysql_database_url(&name));
    let sink = MysqlSink::new(&url).expect("mysql url");
    sink.prepare().await.expect("prepare database");
    sink.create_shadow().await.expect("shadow table");
    let rows = 50;
    let statement = |first: usize| {
        let params = (first..first + rows)
            .flat_map(|i| {
                let row = change(&doc(i), 1, Change::Upsert(row(1)));
                projections::mysql::shadow::catalogue_values(
                    row.doc_id.as_str(),
                    &row.change,
                    false,
                )
                .expect("a row")
            })
            .collect();
        (insert_statement(SHADOW_DOCUMENTS, rows, ""), params)
    };
    for first in [0, rows, 2 * rows] {
        run_concurrently(sink.pool(), "bulk insert", vec![statement(first)], 1)
            .await
            .expect("bulk insert");
    }
    let mut conn = sink.pool().get_conn().await.expect("conn");
    let prepared: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
        .await
        .expect("session status");
    let executed: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Com_stmt_execute'")
        .await
        .expect("session status");
    let count = |v: Option<(String, String)>| v.map(|(_, n)| n.parse::<u64>().expect("a count"));
    assert_eq!(
        count(executed),
        Some(3),
        "three bulk statements ran on this session"
    );
    assert_eq!(
        count(prepared),
        Some(1),
        "prepared once, executed three times"
    );
    let written: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {SHADOW_DOCUMENTS}"))
        .await
        .expect("count");
    assert_eq!(written, Some(3 * rows as u64));
    drop(conn);
    let mut conn = sink.pool().get_conn().await.expect("conn");
    conn.query_drop(format!("DROP DATABASE `{name}`"))
        .await
        .expect("drop database");
}
