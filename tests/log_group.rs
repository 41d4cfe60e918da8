//! Group commit of plain appends against real PostgreSQL: concurrent appends share group
//! statements while each keeps its own answer and a following reader sees every committed
//! event once and in order; a group mixing commits and stale versions answers each command
//! and writes nothing for the conflicting ones; two commands of one stream never share a
//! group; a group statement that fails as a whole falls back to one statement per command,
//! and a group whose connection is lost commits nothing and answers unavailable.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use aggregates::{DocId, DocumentEvent, LogCursor};
use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use docledger::eventlog::{AppendRequest, AppendStats, Appended, LogError, PgLog};
use projections::AppliedVersion;

use common::log::eventually;
use common::{blob_bytes, doc, request, row_events, sha256_hex, Follower, TestLog};

/// Longest a test waits for appends that must not block each other.
const NO_HANG: Duration = Duration::from_secs(30);

fn committed(answer: &Result<Appended, LogError>) -> Result<(LogCursor, i64)> {
    match answer {
        Ok(Appended::Committed {
            last,
            stream_version,
        }) => Ok((*last, *stream_version)),
        other => bail!("expected a committed append, got {other:?}"),
    }
}

fn conflict(answer: &Result<Appended, LogError>) -> Result<(i64, i64)> {
    match answer {
        Err(LogError::Conflict {
            expected, actual, ..
        }) => Ok((*expected, *actual)),
        other => bail!("expected a conflict, got {other:?}"),
    }
}

/// `(groups, grouped commands, fallbacks, committed, conflicts, failed)`.
fn counters(stats: &AppendStats) -> [u64; 6] {
    [
        stats.groups.load(Relaxed),
        stats.grouped_commands.load(Relaxed),
        stats.group_fallbacks.load(Relaxed),
        stats.committed.load(Relaxed),
        stats.conflicts.load(Relaxed),
        stats.failed.load(Relaxed),
    ]
}

/// `(xid, position)` of every event of a stream, in stream order.
async fn stream_xids(log: &PgLog, doc_id: &DocId) -> Result<Vec<(String, i64)>> {
    let client = log.client().await?;
    Ok(client
        .query(
            "SELECT xid::text, position FROM events WHERE stream_id = $1 ORDER BY stream_version",
            &[&doc_id.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn blob_stored(log: &PgLog, sha: &str) -> Result<bool> {
    let client = log.client().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM blobs WHERE sha256 = $1",
            &[&hex::decode(sha)?],
        )
        .await?
        .get::<_, i64>(0)
        == 1)
}

const NUM_WRITERS: usize = 48;
const APPENDS_PER_WRITER: usize = 25;
/// Each writer owns its streams, so its appends never conflict and it knows their versions.
const STREAMS_PER_WRITER: usize = 4;

/// One writer: appends to its own streams one after the other (as a document actor does),
/// every third append with a blob; checks each answer against what it expected. Returns the
/// answer of every append as `(stream, first version, events, cursor of the last)`.
async fn writer(log: PgLog, index: usize) -> Result<Vec<(String, i64, i64, LogCursor)>> {
    let mut versions = [0i64; STREAMS_PER_WRITER];
    let mut appended = Vec::new();
    for i in 0..APPENDS_PER_WRITER {
        let stream = i % STREAMS_PER_WRITER;
        let doc_id = doc(&format!("w{index:02}/doc-{stream}"));
        let expected = versions[stream];
        let n = 1 + (i + index) % 3;
        let events = row_events(expected as u64 + 1, n, doc_id.as_str());
        let blob = blob_bytes((index * 1000 + i) as u64, 512);
        let sha = sha256_hex(&blob);
        let mut req = request(&doc_id, expected, &events);
        if i % 3 == 0 {
            req.blob = Some((&sha, blob.clone()));
        }
        let answer = log.appends().append(req).await;
        let (last, version) =
            committed(&answer).with_context(|| format!("{doc_id} at {expected}"))?;
        ensure!(
            version == expected + n as i64,
            "{doc_id}: version {version}"
        );
        appended.push((doc_id.to_string(), expected + 1, n as i64, last));
        versions[stream] = version;
    }
    Ok(appended)
}

/// Many writers at once through `append`: groups of more than one command form, every
/// command is answered with its own cursor and version, and a reader following the log from
/// the start reads every event once, in `(epoch, xid, position)` order, each stream's
/// versions contiguous; each answer's cursor is its last event's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_groups_and_each_gets_its_own_answer() -> Result<()> {
    let t = TestLog::create("group_concurrent", 8).await?;
    let before = counters(t.log.appends().append_stats());
    let writers: Vec<_> = (0..NUM_WRITERS)
        .map(|i| tokio::spawn(writer(t.log.clone(), i)))
        .collect();
    let mut reader = Follower::new(100);
    let mut answers = Vec::new();
    for w in writers {
        // Read while the writers run, so the reader also sees groups committing under it.
        reader.read_page(&t.log).await?;
        answers.extend(tokio::time::timeout(NO_HANG, w).await???);
    }
    let total_events: i64 = answers.iter().map(|a| a.2).sum();
    reader.read_exactly(&t.log, total_events as usize).await?;

    let [groups, grouped, fallbacks, num_committed, conflicts, failed] = {
        let after = counters(t.log.appends().append_stats());
        [0, 1, 2, 3, 4, 5].map(|i| after[i] - before[i])
    };
    let commands = (NUM_WRITERS * APPENDS_PER_WRITER) as u64;
    assert_eq!((num_committed, conflicts, failed), (commands, 0, 0));
    assert_eq!(grouped, commands, "every plain append went through a group");
    assert_eq!(fallbacks, 0);
    assert!(
        groups < commands,
        "{commands} commands in {groups} groups: no group of more than one formed"
    );

    // Each answer's cursor is the cursor of its command's last event.
    let read: HashMap<(String, i64), LogCursor> = reader
        .events
        .iter()
        .map(|e| ((e.doc_id.to_string(), e.stream_version), e.cursor))
        .collect();
    for (stream, first, n, last) in &answers {
        assert_eq!(
            read.get(&(stream.clone(), first + n - 1)),
            Some(last),
            "{stream} v{first}+{n}"
        );
    }
    // Per stream, versions contiguous and in reading order.
    let mut per_stream: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (stream, version) in reader.keys() {
        per_stream.entry(stream).or_default().push(version);
    }
    for (stream, versions) in &per_stream {
        assert_eq!(
            versions,
            &(1..=versions.len() as i64).collect::<Vec<_>>(),
            "{stream}"
        );
    }
    // Commands of one group share a transaction id.
    let xids: HashSet<u64> = answers.iter().map(|a| a.3.xid).collect();
    assert!(xids.len() < answers.len());
    eprintln!(
        "{commands} commands ({total_events} events) in {groups} groups \
         ({:.1} commands per group), {} transactions",
        commands as f64 / groups as f64,
        xids.len()
    );
    t.drop_database().await
}

/// One group: a new stream, a stream moved on from its expected version, a stale command
/// with a blob of its own, and a command ahead of its (missing) stream. The first two commit
/// in one transaction; the stale and the ahead one conflict with the stream's actual count
/// and write nothing, not even their blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_commits_and_conflicts_answers_each_on_its_own() -> Result<()> {
    let t = TestLog::create("group_mixed", 4).await?;
    let log = &t.log;
    let (moving, stale, fresh, ahead) = (doc("moving"), doc("stale"), doc("fresh"), doc("ahead"));
    committed(
        &log.appends()
            .append(request(&moving, 0, &row_events(1, 2, "setup")))
            .await,
    )?;
    committed(
        &log.appends()
            .append(request(&stale, 0, &row_events(1, 3, "setup")))
            .await,
    )?;

    let blobs: Vec<Bytes> = (0..4).map(|i| blob_bytes(100 + i, 4096)).collect();
    let shas: Vec<String> = blobs.iter().map(|b| sha256_hex(b)).collect();
    let events: Vec<Vec<DocumentEvent>> =
        (0..4).map(|i| row_events(9, 2, &format!("c{i}"))).collect();
    let with_blob = |doc_id, expected, i: usize| {
        let mut req: AppendRequest<'_> = request(doc_id, expected, &events[i]);
        req.blob = Some((shas[i].as_str(), blobs[i].clone()));
        req
    };
    let before = counters(log.appends().append_stats());
    let answers = log
        .appends()
        .append_group(&[
            with_blob(&fresh, 0, 0),
            with_blob(&stale, 1, 1),
            with_blob(&moving, 2, 2),
            with_blob(&ahead, 4, 3),
        ])
        .await;
    let after = counters(log.appends().append_stats());

    let (fresh_last, fresh_version) = committed(&answers[0])?;
    let (moving_last, moving_version) = committed(&answers[2])?;
    assert_eq!((fresh_version, moving_version), (2, 4));
    assert_eq!(conflict(&answers[1])?, (1, 3));
    assert_eq!(conflict(&answers[3])?, (4, 0));
    assert_eq!(
        fresh_last.xid, moving_last.xid,
        "one group, one transaction"
    );
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 4, 0]
    );
    assert_eq!([after[3] - before[3], after[4] - before[4]], [2, 2]);

    assert!(blob_stored(log, &shas[0]).await? && blob_stored(log, &shas[2]).await?);
    assert!(
        !blob_stored(log, &shas[1]).await?,
        "a conflicting command stores no blob"
    );
    assert!(
        !blob_stored(log, &shas[3]).await?,
        "a conflicting command stores no blob"
    );
    assert_eq!(stream_xids(log, &stale).await?.len(), 3);
    assert_eq!(log.reads().stream_state(&ahead).await?, None);
    let moving_events = stream_xids(log, &moving).await?;
    assert_eq!(moving_events.len(), 4);
    assert_eq!(moving_events[3].1, moving_last.position);
    assert_eq!(stream_xids(log, &fresh).await?[1].1, fresh_last.position);
    t.drop_database().await
}

/// A second command of a stream waits for the next group (so it never shares a transaction
/// with the first), and many racing commands of one stream through the queue are never
/// grouped together: one commits, the others conflict, and no group fails as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commands_of_one_stream_are_never_in_one_group() -> Result<()> {
    let t = TestLog::create("group_one_stream", 8).await?;
    let log = &t.log;
    let (x, y) = (doc("x"), doc("y"));
    let (x1, y1, x2) = (
        row_events(1, 1, "x1"),
        row_events(1, 2, "y1"),
        row_events(2, 1, "x2"),
    );
    let before = counters(log.appends().append_stats());
    let answers = log
        .appends()
        .append_group(&[
            request(&x, 0, &x1),
            request(&y, 0, &y1),
            request(&x, 1, &x2),
        ])
        .await;
    let (x1_last, _) = committed(&answers[0])?;
    let (y1_last, _) = committed(&answers[1])?;
    let (x2_last, x_version) = committed(&answers[2])?;
    assert_eq!(x_version, 2);
    assert_eq!(x1_last.xid, y1_last.xid, "x and y share the first group");
    assert!(
        x2_last.xid > x1_last.xid,
        "x's second command is in the next group"
    );
    assert_eq!(counters(log.appends().append_stats())[0] - before[0], 2);

    // Racing commands of one stream, all expecting version 0.
    let z = doc("z");
    let events: Vec<Vec<DocumentEvent>> = (0..16).map(|i| row_events(1, 1 + i % 3, "z")).collect();
    let before = counters(log.appends().append_stats());
    let answers = tokio::time::timeout(
        NO_HANG,
        futures::future::join_all(
            events
                .iter()
                .map(|e| log.appends().append(request(&z, 0, e))),
        ),
    )
    .await?;
    let winners: Vec<_> = answers.iter().filter(|a| a.is_ok()).collect();
    ensure!(winners.len() == 1, "one winner expected: {answers:?}");
    let (_, version) = committed(winners[0])?;
    for answer in answers.iter().filter(|a| a.is_err()) {
        assert_eq!(conflict(answer)?, (0, version));
    }
    let after = counters(log.appends().append_stats());
    assert_eq!(after[2] - before[2], 0, "no group held two commands of z");
    assert_eq!(after[1] - before[1], 16);
    assert_eq!(stream_xids(log, &z).await?.len() as i64, version);
    t.drop_database().await
}

/// Holds the stream row of `doc_id` (at `version`) in an open transaction of another writer
/// until the returned sender is dropped or sent to.
async fn hold_stream(
    log: &PgLog,
    doc_id: &DocId,
    version: i64,
) -> Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
)> {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (held_tx, held) = tokio::sync::oneshot::channel::<()>();
    let (log, doc_id) = (log.clone(), doc_id.clone());
    let holder = tokio::spawn(async move {
        let mut client = log.client().await?;
        let tx = client.transaction().await?;
        let events = row_events(version as u64 + 1, 1, "holder");
        committed(
            &log.appends()
                .append_in(&tx, request(&doc_id, version, &events))
                .await,
        )?;
        let _ = held_tx.send(());
        let _ = released.await;
        tx.rollback().await?;
        Ok(())
    });
    held.await
        .context("the holder failed before holding the row")?;
    Ok((release, holder))
}

/// A group statement that fails as a whole (here: the database's statement timeout, while
/// another writer's open transaction holds one of the group's streams) wrote nothing; its
/// commands are appended one by one, each with its own answer: the free streams commit (in
/// transactions of their own), the held one answers unavailable and holds only what the
/// other writer commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_fails_as_a_whole_falls_back_to_one_statement_per_command() -> Result<()> {
    let t = TestLog::create("group_fallback", 4).await?;
    let (held, free_a, free_b) = (doc("held"), doc("free-a"), doc("free-b"));
    committed(
        &t.log
            .appends()
            .append(request(&held, 0, &row_events(1, 1, "setup")))
            .await,
    )?;
    let admin = t.raw_client().await?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET statement_timeout = '1s'",
            t.database
        ))
        .await?;
    // A log whose connections all start with the timeout.
    let log = t.connect_again(4).await?;
    let (release, holder) = hold_stream(&t.log, &held, 1).await?;

    let (a, h, b) = (
        row_events(1, 2, "a"),
        row_events(2, 1, "h"),
        row_events(1, 1, "b"),
    );
    let before = counters(log.appends().append_stats());
    let answers = tokio::time::timeout(
        NO_HANG,
        log.appends().append_group(&[
            request(&free_a, 0, &a),
            request(&held, 1, &h),
            request(&free_b, 0, &b),
        ]),
    )
    .await?;
    let after = counters(log.appends().append_stats());
    let _ = release.send(());
    holder.await??;

    let (a_last, _) = committed(&answers[0])?;
    let (b_last, _) = committed(&answers[2])?;
    match &answers[1] {
        Err(LogError::Unavailable { message, .. }) => {
            assert!(message.contains("57014"), "a statement timeout: {message}")
        }
        other => bail!("expected the held stream's append to time out, got {other:?}"),
    }
    assert_ne!(
        a_last.xid, b_last.xid,
        "after the fallback each command is its own transaction"
    );
    assert_eq!(
        [after[0] - before[0], after[2] - before[2]],
        [0, 1],
        "no group statement succeeded, one fell back"
    );
    assert_eq!([after[3] - before[3], after[5] - before[5]], [2, 1]);
    assert_eq!(stream_xids(&t.log, &free_a).await?.len(), 2);
    assert_eq!(
        stream_xids(&t.log, &held).await?.len(),
        1,
        "the holder rolled back"
    );
    // The held stream takes appends again once the other writer is gone.
    committed(&log.appends().append(request(&held, 1, &h)).await)?;
    drop(log);
    t.drop_database().await
}

/// Stream ids `order-0` … `order-7` (sorted), each created with one event, `order-0` last:
/// neither the table's physical order nor the reverse order the tests name them in is
/// `stream_id` order.
async fn eight_streams(log: &PgLog) -> Result<Vec<DocId>> {
    let ids: Vec<DocId> = (0..8).map(|i| doc(&format!("order-{i}"))).collect();
    for d in ids[1..].iter().chain(&ids[..1]) {
        committed(
            &log.appends()
                .append(request(d, 0, &row_events(1, 1, "setup")))
                .await,
        )?;
    }
    Ok(ids)
}

/// Runs `update` (a statement that updates the stream rows of `ids`, named in reverse order)
/// while another transaction holds the row of `ids[0]`, as a projector's record of applied
/// versions does, which locks in `stream_id` order; once `update` waits, that transaction
/// takes the other rows too. It must find them free: `update` locks in `stream_id` order as
/// well, so it waits for the first row holding nothing. Locked in its arguments' order (or
/// a hash table's), `update` held rows while it waited, and the two deadlocked (PostgreSQL
/// failed one of them after `deadlock_timeout`; `tests/api.rs`'s batch test met it about
/// one run in six).
async fn waits_holding_nothing<T, F>(t: &TestLog, ids: &[DocId], update: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let mut record = t.raw_client().await?;
    let record = record.transaction().await?;
    let lock = "SELECT 1 FROM streams WHERE stream_id = $1 FOR UPDATE";
    record.execute(lock, &[&ids[0].as_str()]).await?;
    let update = tokio::spawn(update);
    let admin = t.raw_client().await?;
    eventually(NO_HANG, "the update to wait for the held row", || async {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await?
            .get(0);
        Ok((waiting > 0).then_some(()))
    })
    .await?;
    let mut held = Vec::new();
    for id in &ids[1..] {
        let nowait = format!("{lock} NOWAIT");
        if let Err(e) = record.execute(&nowait, &[&id.as_str()]).await {
            let message = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            held.push(format!("{id}: {message}"));
            break; // the transaction is aborted
        }
    }
    if held.is_empty() {
        record.commit().await?;
    } else {
        record.rollback().await?;
    }
    let done = tokio::time::timeout(NO_HANG, update).await??;
    ensure!(
        held.is_empty(),
        "the waiting update held other rows: {held:?}"
    );
    Ok(done)
}

/// A group locks the stream rows it moves in `stream_id` order (see
/// [`waits_holding_nothing`]), and commits its commands in one statement once the other
/// transaction is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_locks_the_streams_it_moves_in_stream_order() -> Result<()> {
    let t = TestLog::create("group_lock_order", 4).await?;
    let log = &t.log;
    let ids = eight_streams(log).await?;
    let before = counters(log.appends().append_stats());
    let group = {
        let (log, ids) = (log.clone(), ids.clone());
        async move {
            let events = row_events(2, 1, "moved");
            let reqs: Vec<AppendRequest<'_>> =
                ids.iter().rev().map(|d| request(d, 1, &events)).collect();
            log.appends().append_group(&reqs).await
        }
    };
    let answers = waits_holding_nothing(&t, &ids, group).await?;
    let after = counters(log.appends().append_stats());
    for answer in &answers {
        committed(answer)?;
    }
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 8, 0],
        "one group statement of all commands, no fallback"
    );
    t.drop_database().await
}

/// The readiness record locks its documents' stream rows in `stream_id` order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_record_locks_its_streams_in_stream_order() -> Result<()> {
    let t = TestLog::create("ready_lock_order", 4).await?;
    let log = &t.log;
    let ids = eight_streams(log).await?;
    let record = {
        let (log, ids) = (log.clone(), ids.clone());
        async move {
            let done: Vec<AppliedVersion> = ids
                .into_iter()
                .rev()
                .map(|doc_id| AppliedVersion { doc_id, version: 1 })
                .collect();
            log.store_records().record_ready(&done).await
        }
    };
    waits_holding_nothing(&t, &ids, record).await??;
    let ready: Vec<i64> = t
        .raw_client()
        .await?
        .query("SELECT ready_version FROM streams ORDER BY stream_id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ready, [1; 8], "every readiness version recorded");
    t.drop_database().await
}

/// The connection of a group statement is lost while the statement waits on another
/// writer's transaction: no command of the group is committed or reported committed; each
/// answers unavailable, and each lands once when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_connection_is_lost_commits_nothing_and_answers_unavailable() -> Result<()> {
    let t = TestLog::create("group_lost_connection", 4).await?;
    let (held, free) = (doc("held"), doc("free"));
    committed(
        &t.log
            .appends()
            .append(request(&held, 0, &row_events(1, 1, "setup")))
            .await,
    )?;
    let (release, holder) = hold_stream(&t.log, &held, 1).await?;

    let log = t.log.clone();
    let (free_events, held_events) = (row_events(1, 2, "free"), row_events(2, 1, "held"));
    let group = {
        let (log, free, held) = (log.clone(), free.clone(), held.clone());
        let (free_events, held_events) = (free_events.clone(), held_events.clone());
        tokio::spawn(async move {
            log.appends()
                .append_group(&[
                    request(&free, 0, &free_events),
                    request(&held, 1, &held_events),
                ])
                .await
        })
    };
    let admin = t.raw_client().await?;
    let database = t.database.clone();
    let pid: i32 = eventually(NO_HANG, "the group statement waiting on the held row", || {
        let (admin, database) = (&admin, &database);
        async move {
            Ok(admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
                     AND query LIKE '%WITH req AS%'",
                    &[database],
                )
                .await?
                .map(|r| r.get(0)))
        }
    })
    .await?;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    let answers = tokio::time::timeout(NO_HANG, group).await??;
    let _ = release.send(());
    holder.await??;

    for answer in &answers {
        ensure!(
            matches!(answer, Err(LogError::Unavailable { .. })),
            "expected unavailable, got {answer:?}"
        );
    }
    assert_eq!(
        log.reads().stream_state(&free).await?,
        None,
        "nothing of the group was committed"
    );
    assert_eq!(stream_xids(&log, &held).await?.len(), 1);
    let again = log
        .appends()
        .append_group(&[
            request(&free, 0, &free_events),
            request(&held, 1, &held_events),
        ])
        .await;
    committed(&again[0])?;
    committed(&again[1])?;
    assert_eq!(stream_xids(&log, &free).await?.len(), 2);
    assert_eq!(stream_xids(&log, &held).await?.len(), 2);
    drop(log);
    t.drop_database().await
}
