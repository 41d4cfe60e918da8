//! The log's global order against real PostgreSQL (DESIGN "The log": global order without
//! gaps).
//!
//! Positions are handed out when rows are inserted, not when their transactions commit. A
//! reader that takes "position > last seen" therefore skips the rows of a transaction that
//! started first and commits last; `read_after` only takes transactions older than every
//! running one and pages on the whole `(epoch, xid, position)` tuple, so it returns every
//! committed event exactly once, in one stable order, and never a rolled-back one.

mod common;

use std::collections::HashSet;

use aggregates::LogCursor;
use anyhow::{Context, Result};
use docledger::eventlog::{Appended, LAG_COUNT, READ_AFTER};
use projections::Partition;

use common::{doc, request, row_events, Follower, TestLog};

/// The naive reader: everything after the highest position seen so far.
const NAIVE_READ: &str = "SELECT position, stream_id, stream_version FROM events
                          WHERE position > $1 ORDER BY position";

/// Position-only paging with the pair order: pages below the horizon ordered by
/// `(xid, position)` but continued with "position > last", which skips rows at page ends.
const POSITION_ONLY_PAGE: &str = "SELECT position, stream_id, stream_version FROM events
                                  WHERE position > $1
                                    AND xid < pg_snapshot_xmin(pg_current_snapshot())
                                  ORDER BY xid, position LIMIT $2";

/// A "position > last" reader, as in commanded/eventstore#3.
struct NaiveReader {
    last: i64,
    seen: Vec<(String, i64)>,
}

impl NaiveReader {
    /// Reads everything after `last`, advancing it to the highest position seen.
    async fn poll(&mut self, client: &tokio_postgres::Client) -> Result<Vec<(String, i64)>> {
        let rows = client.query(NAIVE_READ, &[&self.last]).await?;
        let mut page = Vec::new();
        for row in rows {
            self.last = self.last.max(row.get(0));
            page.push((row.get::<_, String>(1), row.get::<_, i64>(2)));
        }
        self.seen.extend(page.iter().cloned());
        Ok(page)
    }
}

fn keys(stream: &str, versions: std::ops::RangeInclusive<i64>) -> Vec<(String, i64)> {
    versions.map(|v| (stream.to_owned(), v)).collect()
}

fn committed_last(appended: Appended) -> Result<LogCursor> {
    match appended {
        Appended::Committed { last, .. } => Ok(last),
        other => anyhow::bail!("expected a committed append, got {other:?}"),
    }
}

/// Transaction A appends to "a" first and commits last. In between, "b" is appended twice
/// (committed), and transaction C, which took its transaction id before b's appends, appends
/// to "c" after them and commits before A.
///
/// Log layout: positions a1..a3 < b1..b4 < c1..c2, transaction ids A < C < B1 < B2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_lost_by_a_position_reader_but_not_by_read_after() -> Result<()> {
    let t = TestLog::create("late_commit_is_lost", 4).await?;
    let log = &t.log;
    let raw = t.raw_client().await?;
    let (a, b, c) = (doc("a"), doc("b"), doc("c"));

    let mut client_a = log.client().await?;
    let tx_a = client_a.transaction().await?;
    let a_events = row_events(1, 3, "a");
    let a_last = committed_last(
        log.appends()
            .append_in(&tx_a, request(&a, 0, &a_events))
            .await?,
    )?;

    let mut client_c = log.client().await?;
    let tx_c = client_c.transaction().await?;
    // C takes its transaction id now, before b's appends, and appends only after them.
    tx_c.query_one("SELECT pg_current_xact_id()", &[]).await?;

    let b_first = row_events(1, 2, "b");
    let b_second = row_events(2, 2, "b");
    log.appends().append(request(&b, 0, &b_first)).await?;
    log.appends().append(request(&b, 2, &b_second)).await?;

    let mut naive = NaiveReader {
        last: 0,
        seen: Vec::new(),
    };
    assert_eq!(naive.poll(&raw).await?, keys("b", 1..=4));

    // b's transactions are newer than the running A (and C): nothing is final yet.
    let mut ours = Follower::new(100);
    assert_eq!(ours.read_page(log).await?, 0);
    assert_eq!(ours.cursor, LogCursor::START);
    assert!(log
        .reads()
        .read_after(LogCursor::START, 1)
        .await?
        .is_empty());

    let c_events = row_events(1, 2, "c");
    log.appends()
        .append_in(&tx_c, request(&c, 0, &c_events))
        .await?;
    tx_c.commit().await?;
    assert_eq!(naive.poll(&raw).await?, keys("c", 1..=2));
    assert_eq!(
        ours.read_page(log).await?,
        0,
        "A is still running: nothing may be read"
    );

    tx_a.commit().await?;
    assert!(
        naive.poll(&raw).await?.is_empty(),
        "a's positions are below the naive reader's"
    );
    let committed: i64 = raw
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    assert_eq!(committed, 9);
    assert_eq!(naive.seen.len(), 6, "the naive reader lost a's 3 events");
    assert!(naive.seen.iter().all(|(stream, _)| stream != "a"));

    ours.read_exactly(log, 9).await?;
    let expected: Vec<(String, i64)> =
        [keys("a", 1..=3), keys("c", 1..=2), keys("b", 1..=4)].concat();
    assert_eq!(
        ours.keys(),
        expected,
        "(xid, position) order, each event once"
    );
    let cursors: Vec<LogCursor> = ours.events.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        cursors[2], a_last,
        "append_in returned the cursor read_after gives"
    );
    let (xid_a, xid_c, xid_b1, xid_b2) = (
        cursors[0].xid,
        cursors[3].xid,
        cursors[5].xid,
        cursors[7].xid,
    );
    assert!(xid_a < xid_c && xid_c < xid_b1 && xid_b1 < xid_b2);
    assert!(
        cursors[0].position < cursors[5].position && cursors[5].position < cursors[3].position,
        "position order (a, b, c) differs from commit order (c, b, a) and from log order (a, c, b)"
    );

    // Keyset pages on the whole tuple give the same sequence at every page size.
    for limit in [1, 2, 3, 4] {
        let mut pager = Follower::new(limit);
        pager.read_exactly(log, 9).await?;
        assert_eq!(
            pager.events, ours.events,
            "paging with limit {limit} gives the same events in the same order"
        );
    }

    // Ordering by the pair but paging on position alone skips rows at page ends: after
    // (A, a2) comes (A, a3), (C, c1); "position > c1" then skips all of b.
    let mut last = 0i64;
    let mut paged = Vec::new();
    loop {
        let rows = raw.query(POSITION_ONLY_PAGE, &[&last, &2i64]).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            last = row.get(0);
            paged.push((row.get::<_, String>(1), row.get::<_, i64>(2)));
        }
    }
    assert_eq!(paged, [keys("a", 1..=3), keys("c", 1..=2)].concat());

    drop(raw);
    drop((client_a, client_c));
    t.drop_database().await
}

/// Many transactions whose transaction-id order differs from their position order: keyset
/// pages of every size give exactly the `(xid, position)` order of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_every_size_give_the_same_full_sequence() -> Result<()> {
    let t = TestLog::create("pages_of_every_size", 8).await?;
    let log = &t.log;
    let raw = t.raw_client().await?;

    // Four transactions take their ids in order 0..4 and append in reverse order, with
    // committed appends of other streams in between; they commit in yet another order.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(log.client().await?);
    }
    let mut txs = Vec::new();
    for client in &mut clients {
        let tx = client.transaction().await?;
        tx.query_one("SELECT pg_current_xact_id()", &[]).await?;
        txs.push(tx);
    }
    let held: Vec<_> = (0..4).map(|i| doc(&format!("held-{i}"))).collect();
    let free: Vec<_> = (0..4).map(|i| doc(&format!("free-{i}"))).collect();
    let held_events: Vec<_> = (0..4).map(|i| row_events(1, 1 + i, "held")).collect();
    let free_events = row_events(1, 2, "free");
    for i in (0..4).rev() {
        log.appends()
            .append_in(&txs[i], request(&held[i], 0, &held_events[i]))
            .await?;
        log.appends()
            .append(request(&free[i], 0, &free_events))
            .await?;
    }
    let mut txs: Vec<_> = txs.into_iter().map(Some).collect();
    for i in [2, 0, 3, 1] {
        txs[i]
            .take()
            .context("each transaction commits once")?
            .commit()
            .await?;
    }
    let total = (1 + 2 + 3 + 4) + 4 * 2;

    let in_table: Vec<(String, i64)> = raw
        .query(
            "SELECT stream_id, stream_version FROM events ORDER BY epoch, xid, position",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(in_table.len(), total);
    let position_order: Vec<(String, i64)> = raw
        .query(
            "SELECT stream_id, stream_version FROM events ORDER BY position",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_ne!(
        in_table, position_order,
        "the data must exercise the pair order"
    );

    let mut whole = Follower::new(1000);
    whole.read_exactly(log, total).await?;
    assert_eq!(whole.keys(), in_table);
    for limit in [1, 2, 3, 5, 7] {
        let mut pager = Follower::new(limit);
        pager.read_exactly(log, total).await?;
        assert_eq!(pager.events, whole.events, "limit {limit}");
    }

    drop(raw);
    drop(txs);
    drop(clients);
    t.drop_database().await
}

/// Rolled-back appends never reach a reader, whether they roll back before or while the
/// reader waits on them, and they leave no trace in the stream's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_appends_never_appear() -> Result<()> {
    let t = TestLog::create("rolled_back_never_appear", 4).await?;
    let log = &t.log;
    let (gone, kept, dropped) = (doc("gone"), doc("kept"), doc("dropped"));
    let mut follower = Follower::new(100);

    // Rolled back while the reader waits on it.
    let mut client = log.client().await?;
    let tx = client.transaction().await?;
    log.appends()
        .append_in(&tx, request(&gone, 0, &row_events(1, 2, "gone")))
        .await?;
    log.appends()
        .append(request(&kept, 0, &row_events(1, 2, "kept")))
        .await?;
    assert_eq!(
        follower.read_page(log).await?,
        0,
        "the open transaction holds the horizon"
    );
    tx.rollback().await?;

    // Dropped without commit (an implicit rollback, as when a task is cancelled).
    {
        let tx = client.transaction().await?;
        log.appends()
            .append_in(&tx, request(&dropped, 0, &row_events(1, 1, "dropped")))
            .await?;
    }
    log.appends()
        .append(request(&kept, 2, &row_events(2, 1, "kept")))
        .await?;

    follower.read_exactly(log, 3).await?;
    assert_eq!(follower.keys(), keys("kept", 1..=3));
    assert_eq!(log.reads().stream_state(&gone).await?, None);
    assert_eq!(log.reads().stream_version(&dropped).await?, 0);

    // The rolled-back stream starts from scratch.
    log.appends()
        .append(request(&gone, 0, &row_events(1, 1, "gone again")))
        .await?;
    follower.read_exactly(log, 4).await?;
    assert_eq!(follower.keys()[3], ("gone".to_owned(), 1));
    let seen: HashSet<(String, i64)> = follower.keys().into_iter().collect();
    assert_eq!(seen.len(), 4, "no event twice");

    drop(client);
    t.drop_database().await
}

/// Transaction ids are ordered as numbers, not as text: with `9` and `10` a text order puts
/// `10` first, and a reader paging one event at a time would then step past `9` for good.
/// Both readers (the projectors' and the rebuild's per-store one) page in numeric order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_are_paged_in_numeric_order() -> Result<()> {
    let t = TestLog::create("xid_numeric_order", 4).await?;
    let log = &t.log;
    let (ten, nine) = (doc("ten"), doc("nine"));
    log.appends()
        .append(request(&ten, 0, &row_events(1, 1, "ten")))
        .await?;
    log.appends()
        .append(request(&nine, 0, &row_events(1, 1, "nine")))
        .await?;
    // An older epoch is readable whatever runs now; give the two events ids of different
    // lengths, the first-appended the larger.
    let raw = t.raw_client().await?;
    raw.batch_execute(
        "UPDATE events SET epoch = 0, xid = CASE stream_id WHEN 'ten' THEN '10'::xid8 ELSE '9'::xid8 END",
    )
    .await?;

    let all = log.reads().read_after(LogCursor::START, 10).await?;
    let order: Vec<&str> = all.iter().map(|e| e.doc_id.as_str()).collect();
    assert_eq!(order, ["nine", "ten"]);

    for store in [aggregates::StoreKind::Mysql, aggregates::StoreKind::S3] {
        let mut cursor = LogCursor::START;
        let mut paged = Vec::new();
        loop {
            let page = log
                .store_records()
                .read_store_events(cursor, store, 1)
                .await?;
            let Some(last) = page.last() else { break };
            cursor = last.cursor;
            paged.extend(page.iter().map(|e| e.doc_id.to_string()));
        }
        assert_eq!(paged, ["nine", "ten"], "{store:?}: one event a page");
    }
    drop(raw);
    t.drop_database().await
}

/// A projector reads only its store's event types, yet pages end where the whole log's
/// pages end: every store's pages cover the same events, the store's ones decoded exactly as
/// the unfiltered reader decodes them, the others (vectors for MySQL and S3, rows for
/// Milvus) counted but never fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_pages_decode_only_the_stores_events_and_end_where_the_log_does() -> Result<()> {
    use aggregates::{Chunk, DocumentEvent, StoreKind};

    let t = TestLog::create("store_pages", 2).await?;
    let log = &t.log;
    let vectors = |version, seed: f32| DocumentEvent::VectorsIndexed {
        version,
        chunks: (0..3)
            .map(|index| Chunk {
                index,
                text: format!("chunk {index}"),
                vector: vec![seed, index as f32, -1.5],
            })
            .collect(),
    };
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let d = doc(id);
        let events = [common::row_event(1, id), vectors(1, i as f32)];
        log.appends().append(request(&d, 0, &events)).await?;
    }
    let a = doc("a");
    log.appends()
        .append(request(
            &a,
            2,
            &[DocumentEvent::DocumentDeleted { version: 2 }],
        ))
        .await?;
    log.appends()
        .append(request(
            &a,
            3,
            &[DocumentEvent::CompensationRequested {
                version: 2,
                target: "milvus".to_owned(),
                reason: "test".to_owned(),
            }],
        ))
        .await?;

    // Readers see a transaction once every older one has ended, in any database of the
    // server (other tests run beside this one).
    let all = common::log::eventually(
        std::time::Duration::from_secs(30),
        "the 8 events below the horizon",
        || async {
            let all = log.reads().read_after(LogCursor::START, 100).await?;
            Ok((all.len() == 8).then_some(all))
        },
    )
    .await?;
    for store in StoreKind::ALL {
        let types = store.event_types();
        let (mut cursor, mut events, mut ends, mut num_read) =
            (LogCursor::START, Vec::new(), Vec::new(), 0);
        loop {
            let page = log
                .reads()
                .read_page(cursor, Partition::ALL, 3, Some(&types))
                .await?;
            let Some((last, _)) = page.last else { break };
            assert!(page.events.len() <= page.num_read);
            num_read += page.num_read;
            ends.push(last);
            events.extend(page.events);
            cursor = last;
        }
        let expected: Vec<_> = all
            .iter()
            .filter(|e| types.contains(&e.event.type_name()))
            .cloned()
            .collect();
        assert_eq!(events, expected, "{store:?}: its events, decoded in full");
        assert!(
            events.iter().all(|e| types.contains(&e.event.type_name())),
            "{store:?}: only its types"
        );
        let page_ends: Vec<LogCursor> = all
            .chunks(3)
            .filter_map(|c| c.last())
            .map(|e| e.cursor)
            .collect();
        assert_eq!(ends, page_ends, "{store:?}: pages end where the log's do");
        assert_eq!(num_read, all.len(), "{store:?}: every event counted");
    }
    // The log ends on a compensation, which no store reads: the last page is all skipped.
    let tail = log
        .reads()
        .read_page(
            all[5].cursor,
            Partition::ALL,
            10,
            Some(&StoreKind::Milvus.event_types()),
        )
        .await?;
    assert_eq!(tail.num_read, 2);
    assert_eq!(tail.events.len(), 1, "the deletion only");
    assert_eq!(tail.last.map(|(c, _)| c), Some(all[7].cursor));
    t.drop_database().await
}

/// A plan node: its type, and the relation and index it scans (empty when none).
type PlanNode = (String, String, String);

/// The nodes of `sql`'s plan with `params`.
async fn plan_nodes(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<PlanNode>> {
    fn walk(node: &serde_json::Value, out: &mut Vec<PlanNode>) {
        let field = |k: &str| node[k].as_str().unwrap_or_default().to_owned();
        out.push((
            field("Node Type"),
            field("Relation Name"),
            field("Index Name"),
        ));
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let explain = client
        .prepare(&format!("EXPLAIN (FORMAT JSON) {sql}"))
        .await?;
    let plan: serde_json::Value = client.query_one(&explain, params).await?.get(0);
    let mut nodes = Vec::new();
    walk(&plan[0]["Plan"], &mut nodes);
    Ok(nodes)
}

/// The plans of a projector's page read (`READ_AFTER`: a page of 50 catalogue events) and of
/// a projection's lag count (`LAG_COUNT`: among the first 200 events; the log holds 4,500),
/// from the start of the log, for partition 0 of 2.
async fn read_plans(client: &tokio_postgres::Client) -> Result<[Vec<PlanNode>; 2]> {
    let types = vec!["RowInserted"];
    let start: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&0i32, &"0", &0i64, &2i32, &0i32];
    let page = plan_nodes(
        client,
        READ_AFTER,
        &[&start[..], &[&50i64, &types]].concat(),
    )
    .await?;
    let lag = plan_nodes(client, LAG_COUNT, &[&start[..], &[&200i64]].concat()).await?;
    Ok([page, lag])
}

/// One range scan of the log order's index, and no other scan of `events` nor a sort.
fn assert_one_range_scan(plans: &[Vec<PlanNode>; 2], when: &str) {
    for (plan, read) in plans.iter().zip(["a page", "a lag count"]) {
        let scans: Vec<_> = plan
            .iter()
            .filter(|(node, relation, _)| node.contains("Scan") && relation == "events")
            .map(|(node, _, index)| (node.as_str(), index.as_str()))
            .collect();
        assert!(
            scans == [("Index Scan", "events_log_order")]
                && !plan.iter().any(|(node, ..)| node == "Sort"),
            "{when}, {read} must be one range scan of the log order's index that stops at its limit, not a scan and sort of every event after the cursor: {plan:?}"
        );
    }
}

/// A partition's page is one range scan of the log order, whether PostgreSQL has analyzed
/// the log or not (a new log: autovacuum analyzes it a minute or more after it starts
/// growing), and wherever the cursor is. A filter on the partition (`stream_hash % 2 = 0`,
/// estimated at 0.5 % of the rows) made the planner read and sort every event after the
/// cursor for each page, in both cases. The pages of two partitions still hold every event
/// of their partition once, in log order, and nothing of the other's, including pages that
/// hold none of theirs. Autovacuum is off for the test's tables, so nothing analyzes them
/// behind the test's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_page_is_one_range_scan_with_or_without_statistics() -> Result<()> {
    let t = TestLog::create("partition_page_plan", 4).await?;
    let raw = t.raw_client().await?;
    raw.batch_execute(
        "ALTER TABLE events SET (autovacuum_enabled = false);
         ALTER TABLE streams SET (autovacuum_enabled = false);",
    )
    .await?;
    // 1,500 documents of 3 events, in groups of 100 appends.
    let ids: Vec<_> = (0..1500).map(|i| doc(&format!("backlog-{i:05}"))).collect();
    let events = row_events(1, 3, "backlog");
    for chunk in ids.chunks(100) {
        let reqs: Vec<_> = chunk.iter().map(|id| request(id, 0, &events)).collect();
        for answer in t.log.appends().append_group(&reqs).await {
            answer?;
        }
    }
    let analyzed = raw
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'events'",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    assert_eq!(analyzed, 0, "the test needs a log never analyzed");
    assert_one_range_scan(&read_plans(&raw).await?, "never analyzed");

    // Every partition's pages, 7 events of the log at a time.
    // Transactions of other tests (other databases of the server) hold the horizon back
    // for a while.
    let all = common::log::eventually(
        std::time::Duration::from_secs(60),
        "every appended event below the horizon",
        || async {
            let all = t.log.reads().read_after(LogCursor::START, 100_000).await?;
            Ok((all.len() == 4500).then_some(all))
        },
    )
    .await?;
    let mut seen = 0;
    for index in 0..2 {
        let part = Partition { index, count: 2 };
        let (mut cursor, mut got, mut counted, mut pages_without_own) =
            (LogCursor::START, Vec::new(), 0, 0);
        loop {
            let page = t.log.reads().read_page(cursor, part, 7, None).await?;
            let Some((end, _)) = page.last else { break };
            assert!(end > cursor && page.num_read <= 7);
            assert!(page.events.len() <= page.num_of_partition);
            if page.events.is_empty() {
                pages_without_own += 1;
            }
            counted += page.num_of_partition;
            got.extend(page.events);
            cursor = end;
        }
        let expected: Vec<_> = all
            .iter()
            .filter(|e| part.contains(e.doc_id.as_str()))
            .cloned()
            .collect();
        assert!(!expected.is_empty() && expected.len() < all.len());
        assert_eq!(
            got, expected,
            "partition {index}: its events once, in log order"
        );
        // Its lag from the start: all of them, or those among the first 5 × 2 of the log.
        let lag = t
            .log
            .reads()
            .lag_after(LogCursor::START, part, 100_000)
            .await?;
        assert_eq!(
            lag,
            (expected.len() as i64, Some(expected[0].recorded_at_ms))
        );
        let among_first = all[..10]
            .iter()
            .filter(|e| part.contains(e.doc_id.as_str()))
            .count();
        let (capped, _) = t.log.reads().lag_after(LogCursor::START, part, 5).await?;
        assert_eq!(capped, among_first as i64);
        assert_eq!(counted, expected.len());
        assert!(
            pages_without_own > 0,
            "the data must give pages of the other partition only"
        );
        seen += got.len();
    }
    assert_eq!(seen, all.len());

    raw.batch_execute("ANALYZE events").await?;
    assert_one_range_scan(&read_plans(&raw).await?, "analyzed");

    drop(raw);
    t.drop_database().await
}
