//! How the MySQL projector cuts a batch into statements. It writes the rows in doc_id order,
//! the order in which the readiness update (`MysqlSink::mark_ready`, a range scan of the
//! primary key) locks them: written in log order, a batch and a readiness update of the
//! same documents deadlocked and InnoDB rolled one of them back (`SHOW ENGINE INNODB STATUS`
//! showed it during the benchmark's runs). And every row lands, across the cuts between
//! statements and between runs of puts and deletions.

use std::time::{Duration, Instant};

use aggregates::StoreKind;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use projections::mysql::MysqlSink;
use projections::sink::{Partition, Sink};
use projections::testing::sink_suite::SuiteLog;
use projections::testing::{unique_name, StoreEnv};

const DIM: usize = 8;

/// A prepared sink on a database of its own, and the database's name and URL.
async fn fresh_sink(test: &str) -> (MysqlSink, String, String) {
    let env = StoreEnv::require();
    let name = unique_name(test);
    let url = env.mysql_database_url(&name);
    let sink = MysqlSink::new(&url).expect("mysql url");
    sink.prepare().await.expect("prepare database");
    (sink, name, url)
}

/// A connection of the test's own: the sink's pool is the projector's.
async fn connect(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url).await.expect("mysql conn")
}

/// Applies `log.events[from..to]` through `sink`.
async fn apply(sink: &MysqlSink, log: &SuiteLog, from: usize, to: usize, what: &str) {
    sink.apply(
        "test-log",
        Partition::ALL,
        &log.batch(StoreKind::Mysql, from, to),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {what}: {e}"));
}

/// Another transaction holds the row of `order-0` (the lowest doc_id, as a readiness update
/// takes it first) while the projector applies a batch of eight documents in reverse doc_id
/// order. Once the batch waits, that transaction takes the seven other rows with `NOWAIT`:
/// the batch must not hold any of them, since it waits for the first row in doc_id order.
#[tokio::test]
async fn a_batch_locks_its_rows_in_doc_id_order() {
    let (sink, name, url) = fresh_sink("mysql_lock_order").await;
    let ids: Vec<String> = (0..8).map(|i| format!("order-{i}")).collect();
    let mut log = SuiteLog::new();
    for id in &ids {
        log.put(id, 1, 1, DIM);
    }
    let first = log.events.len();
    for id in ids.iter().rev() {
        log.put(id, 2, 1, DIM);
    }
    apply(&sink, &log, 0, first, "the first versions").await;

    let mut holder = connect(&url).await;
    let mut holder = holder
        .start_transaction(TxOpts::default())
        .await
        .expect("begin");
    holder
        .exec_drop(
            "SELECT 1 FROM documents WHERE doc_id = ? FOR UPDATE",
            (&ids[0],),
        )
        .await
        .expect("hold order-0");
    let second = log.batch(StoreKind::Mysql, first, log.events.len());
    let applying = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.apply("test-log", Partition::ALL, &second).await })
    };
    let mut admin = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: Option<i64> = admin
            .query_first(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'",
            )
            .await
            .expect("read INNODB_TRX");
        if waiting.unwrap_or(0) > 0 {
            break;
        }
        if applying.is_finished() {
            // It cannot have written order-0; say how it ended instead of timing out.
            let outcome = applying.await.expect("apply task");
            panic!("the batch ended without waiting for order-0: {outcome:?}");
        }
        assert!(
            Instant::now() < deadline,
            "the batch never waited for order-0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Vec::new();
    for id in &ids[1..] {
        if let Err(e) = holder
            .exec_drop(
                "SELECT 1 FROM documents WHERE doc_id = ? FOR UPDATE NOWAIT",
                (id,),
            )
            .await
        {
            held.push(format!("{id}: {e}"));
        }
    }
    holder.rollback().await.expect("release order-0");
    tokio::time::timeout(Duration::from_secs(30), applying)
        .await
        .expect("the batch finishes once order-0 is free")
        .expect("apply task")
        .expect("apply the second versions");
    assert!(
        held.is_empty(),
        "the waiting batch held other rows: {held:?}"
    );

    let versions: Vec<(String, u64)> = admin
        .query("SELECT doc_id, version FROM documents ORDER BY doc_id")
        .await
        .expect("read rows");
    assert_eq!(
        versions,
        ids.iter().map(|id| (id.clone(), 2)).collect::<Vec<_>>(),
        "every row at its second version"
    );
    admin
        .query_drop(format!("DROP DATABASE `{name}`"))
        .await
        .expect("drop database");
}

/// A batch of more rows than one statement takes (`ROWS_PER_STATEMENT`), puts and deletes
/// interleaved in doc_id order, writes every row: each run of one kind is cut into
/// statements without losing or repeating a row at the cuts.
#[tokio::test]
async fn a_batch_longer_than_a_statement_writes_every_row() {
    let (sink, name, url) = fresh_sink("mysql_long_batch").await;
    let rows = projections::mysql::schema::ROWS_PER_STATEMENT * 2 + 7;
    let ids: Vec<String> = (0..rows).map(|i| format!("long-{i:05}")).collect();
    let mut log = SuiteLog::new();
    for id in &ids {
        log.put(id, 1, 1, DIM);
    }
    let first = log.events.len();
    // Every tenth document deleted, the others at their second version: long runs of puts
    // cut by single deletions, and the whole more than two statements long.
    for (i, id) in ids.iter().enumerate() {
        if i % 10 == 3 {
            log.delete(id, 2);
        } else {
            log.put(id, 2, 1, DIM);
        }
    }
    apply(&sink, &log, 0, first, "the first versions").await;
    let mut admin = connect(&url).await;
    let count: Option<usize> = admin
        .query_first("SELECT COUNT(*) FROM documents WHERE version = 1")
        .await
        .expect("count rows");
    assert_eq!(
        count,
        Some(rows),
        "one statement's worth and more, all written"
    );
    let end = log.events.len();
    apply(&sink, &log, first, end, "the second versions and deletions").await;
    let held: Vec<(String, u64)> = admin
        .query("SELECT doc_id, version FROM documents ORDER BY doc_id")
        .await
        .expect("read rows");
    let want: Vec<(String, u64)> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 3)
        .map(|(_, id)| (id.clone(), 2))
        .collect();
    assert_eq!(held.len(), want.len());
    assert!(
        held == want,
        "every row at its second version, deleted rows gone"
    );
    admin
        .query_drop(format!("DROP DATABASE `{name}`"))
        .await
        .expect("drop database");
}
