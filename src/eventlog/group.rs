//! Group commit of plain appends: the appends without idempotency key or parked change to
//! resolve, each one statement of its own otherwise, are queued to a few appender tasks; each
//! task takes whatever is queued when it is free (never waiting for more: at low load a
//! group is one command and adds no latency) and writes the whole group with one statement,
//! so one transaction and one WAL flush for all of them.
//!
//! What must hold, as for a single append: each command gets exactly its own answer, committed
//! with its own cursor and stream version, or [`LogError::Conflict`] when its stream guard
//! failed, which writes nothing for it (blob included) and changes nothing for the others; a
//! group never holds two commands of one stream (the second waits for the next group), so
//! each stream's versions stay contiguous and in order; the group is one transaction, so its
//! events share one xid and readers below the xmin horizon see all of them or none. A group
//! statement that fails as a whole on a live connection (deadlock with another process,
//! statement timeout, ...) wrote nothing: its commands are appended again one by one, each
//! with its own answer. A lost connection answers [`LogError::Unavailable`] to every command
//! of the group, as it would to a single append: the group may or may not have committed, and
//! the caller does not report either.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::error::Severity;
use tokio_postgres::types::ToSql;
use tracing::{debug, warn};

use super::append::{cursor_of, insert_events, prepared, EncodedAppend};
use super::{AppendRequest, AppendStats, Appended, LogAppends, LogError};
use crate::config::AppendGroupConfig;

/// Commands waiting per appender task and per command of a group before callers wait: the
/// queue holds a few groups' worth, so a burst forms full groups without unbounded memory.
const QUEUED_GROUPS_PER_TASK: usize = 4;

/// The plain appends of several streams in one statement: the per-command arrays (`$1`–`$9`
/// and the catalogue state `$16`–`$19`, numbered by `WITH ORDINALITY`) create or move each
/// stream row from its expected count;
/// only the commands whose stream moved get their blob (once per sha256) and their events
/// (the per-event arrays `$10`–`$15`, joined to their command by number, inserted in command
/// and version order, so each stream's positions follow its versions). One statement sent
/// on its own, so one implicit transaction: a conflicting command writes nothing, and the
/// others' events share one xid. The rows it moves are locked first, in `stream_id` order,
/// like every other statement that updates several stream rows (the projectors' applied
/// versions and readiness): left to the join's order, a group and a projector's record of
/// the same documents deadlocked, and PostgreSQL broke it after `deadlock_timeout` by failing
/// one of them (the group then went one by one).
const APPEND_GROUP: &str = r#"
WITH req AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::boolean[],
                         $6::integer[], $7::bytea[], $8::bigint[], $9::bytea[], $16::bigint[],
                         $17::text[], $18::smallint[], $19::json[]) WITH ORDINALITY
        AS r(stream_id, expected, new_version, doc_version, deleted, stream_hash,
             sha256, size, content, catalogue_version, catalogue_type, catalogue_event_version,
             catalogue, cmd)
), created AS (
    INSERT INTO streams (stream_id, stream_version, doc_version, deleted, catalogue_version,
                         catalogue_type, catalogue_event_version, catalogue)
    SELECT stream_id, new_version, doc_version, deleted, catalogue_version, catalogue_type,
           catalogue_event_version, catalogue
      FROM req WHERE expected = 0
    ORDER BY stream_id
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), locked AS (
    SELECT s.stream_id FROM streams s
     WHERE s.stream_id IN (SELECT stream_id FROM req WHERE expected > 0)
     ORDER BY s.stream_id
       FOR UPDATE
), moved AS (
    UPDATE streams s
       SET stream_version = r.new_version, doc_version = r.doc_version, deleted = r.deleted,
           updated_at = now(),
           catalogue_version = COALESCE(r.catalogue_version, s.catalogue_version),
           catalogue_type = COALESCE(r.catalogue_type, s.catalogue_type),
           catalogue_event_version = COALESCE(r.catalogue_event_version,
                                              s.catalogue_event_version),
           catalogue = COALESCE(r.catalogue, s.catalogue)
      FROM req r
     WHERE s.stream_id = r.stream_id AND s.stream_version = r.expected AND r.expected > 0
       AND s.stream_id IN (SELECT stream_id FROM locked)
    RETURNING s.stream_id
), ok AS (
    SELECT req.* FROM req
     WHERE req.stream_id IN (SELECT stream_id FROM created UNION ALL SELECT stream_id FROM moved)
), blob AS (
    INSERT INTO blobs (sha256, size, content)
    SELECT DISTINCT ON (sha256) sha256, size, content FROM ok WHERE sha256 IS NOT NULL
    ORDER BY sha256
    ON CONFLICT (sha256) DO UPDATE SET size = blobs.size WHERE false
)
INSERT INTO events (epoch, stream_id, stream_version, stream_hash, event_type, event_version, payload, vectors)
SELECT (SELECT epoch FROM log_meta), ok.stream_id, e.stream_version, ok.stream_hash,
       e.event_type, e.event_version, e.payload, e.vectors
FROM unnest($10::bigint[], $11::bigint[], $12::text[], $13::smallint[], $14::jsonb[],
            $15::bytea[]) WITH ORDINALITY
     AS e(cmd, stream_version, event_type, event_version, payload, vectors, ord)
JOIN ok ON ok.cmd = e.cmd
ORDER BY e.ord
RETURNING stream_id, stream_version, epoch, xid::text, position
"#;

/// The event counts of the streams whose commands conflicted, read after the group.
const READ_STREAM_VERSIONS: &str =
    "SELECT stream_id, stream_version FROM streams WHERE stream_id = ANY($1)";

/// One command's answer.
type Reply = oneshot::Sender<Result<Appended, LogError>>;

/// A queued command and where its answer goes.
struct Queued {
    cmd: EncodedAppend,
    reply: Reply,
}

/// What group selection needs of a queued item.
trait Grouped {
    fn stream(&self) -> &str;
    fn num_bytes(&self) -> usize;
}

impl Grouped for Queued {
    fn stream(&self) -> &str {
        &self.cmd.doc_id
    }
    fn num_bytes(&self) -> usize {
        self.cmd.num_bytes()
    }
}

/// A command of [`LogAppends::append_group`], numbered by its place in the request.
impl Grouped for (usize, EncodedAppend) {
    fn stream(&self) -> &str {
        &self.1.doc_id
    }
    fn num_bytes(&self) -> usize {
        self.1.num_bytes()
    }
}

/// The next group: items taken in order from `carried`, then from `more`, at most
/// `max_commands` of them and `max_bytes` (the first is taken whatever its size), never two
/// of one stream. Items skipped for their stream stay in `carried`, ahead of the items that
/// were not reached, so every stream's items keep their order.
fn take_group<T: Grouped>(
    carried: &mut VecDeque<T>,
    mut more: impl FnMut() -> Option<T>,
    config: &AppendGroupConfig,
) -> Vec<T> {
    let mut group: Vec<T> = Vec::new();
    let mut streams: HashSet<String> = HashSet::new();
    let mut skipped: VecDeque<T> = VecDeque::new();
    let mut num_bytes = 0;
    // Items pulled from `more` beyond what a group can hold wait in `carried`: bound them.
    let mut num_pulled_allowed = config.max_commands.saturating_sub(carried.len());
    while group.len() < config.max_commands {
        let item = match carried.pop_front() {
            Some(item) => item,
            None if num_pulled_allowed > 0 => match more() {
                Some(item) => {
                    num_pulled_allowed -= 1;
                    item
                }
                None => break,
            },
            None => break,
        };
        if streams.contains(item.stream()) {
            skipped.push_back(item);
            continue;
        }
        if !group.is_empty() && num_bytes + item.num_bytes() > config.max_bytes {
            carried.push_front(item);
            break;
        }
        num_bytes += item.num_bytes();
        streams.insert(item.stream().to_owned());
        group.push(item);
    }
    while let Some(item) = skipped.pop_back() {
        carried.push_front(item);
    }
    group
}

/// The queue of plain appends; cheap to clone. The appender tasks end when every clone is
/// dropped and the queue is drained.
#[derive(Clone)]
pub(super) struct GroupAppender {
    queue: mpsc::Sender<Queued>,
    config: AppendGroupConfig,
}

/// What an appender task writes with.
#[derive(Clone)]
struct GroupWriter {
    pool: Pool,
    stats: Arc<AppendStats>,
    notify: mpsc::Sender<()>,
}

impl GroupAppender {
    /// Starts `config.tasks` appender tasks sharing one queue.
    pub(super) fn spawn(
        pool: Pool,
        stats: Arc<AppendStats>,
        notify: mpsc::Sender<()>,
        config: AppendGroupConfig,
    ) -> GroupAppender {
        let capacity = config.tasks * config.max_commands * QUEUED_GROUPS_PER_TASK;
        let (queue, rx) = mpsc::channel(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let writer = GroupWriter {
            pool,
            stats,
            notify,
        };
        for _ in 0..config.tasks {
            tokio::spawn(run_appender(rx.clone(), writer.clone(), config.clone()));
        }
        GroupAppender { queue, config }
    }

    /// Queues one plain append and waits for its own answer.
    pub(super) async fn append(&self, cmd: EncodedAppend) -> Result<Appended, LogError> {
        let (reply, answer) = oneshot::channel();
        let gone = || LogError::Unavailable {
            operation: "queue append",
            message: "the log's appender tasks have stopped".into(),
        };
        self.queue
            .send(Queued { cmd, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl LogAppends<'_> {
    /// Appends `reqs` as the appender tasks would if they found them queued together, now,
    /// without the queue: consecutive plain appends form groups (distinct streams, within the
    /// configured limits; a second command of a stream goes to the next group), each one
    /// statement; any other request is appended alone. For tools and tests that need to know
    /// which commands share a transaction; the service queues through [`LogAppends::append`].
    /// Returns each request's own answer, in order (counted in [`AppendStats`] like appends).
    pub async fn append_group(self, reqs: &[AppendRequest<'_>]) -> Vec<Result<Appended, LogError>> {
        let limits = self
            .log
            .group
            .as_ref()
            .map_or_else(AppendGroupConfig::default, |g| g.config.clone());
        let writer = GroupWriter {
            pool: self.log.pool.clone(),
            stats: self.log.stats.clone(),
            notify: self.log.notify.clone(),
        };
        let mut answers: Vec<Option<Result<Appended, LogError>>> =
            reqs.iter().map(|_| None).collect();
        let mut pending: VecDeque<(usize, EncodedAppend)> = VecDeque::new();
        for (at, req) in reqs
            .iter()
            .enumerate()
            .map(|(at, r)| (at, Some(r)))
            .chain([(reqs.len(), None)])
        {
            match req.filter(|r| r.is_plain()).map(EncodedAppend::new) {
                Some(Ok(cmd)) => {
                    pending.push_back((at, cmd));
                    continue;
                }
                Some(Err(e)) => answers[at] = Some(Err(e)),
                None => {}
            }
            // A request that is not part of the run of plain ones (or the end) ends the run.
            while !pending.is_empty() {
                let started = std::time::Instant::now();
                let (places, cmds): (Vec<usize>, Vec<EncodedAppend>) =
                    take_group(&mut pending, || None, &limits)
                        .into_iter()
                        .unzip();
                for (place, answer) in places.into_iter().zip(writer.write(&cmds).await) {
                    self.count_append(&answer, started.elapsed());
                    answers[place] = Some(answer);
                }
            }
            if let Some(req) = req.filter(|r| !r.is_plain()) {
                answers[at] = Some(self.append(req.clone()).await);
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every request was answered"))
            .collect()
    }
}

/// One appender task: takes a group (waiting only while it holds nothing and nothing at all
/// is queued), writes it, answers each command, and again until the queue is closed and
/// drained. Commands it took but could not group (a second one of a stream in the group,
/// or over the byte budget) it keeps for its next group, ahead of newer ones.
async fn run_appender(
    rx: Arc<Mutex<mpsc::Receiver<Queued>>>,
    writer: GroupWriter,
    config: AppendGroupConfig,
) {
    let mut carried: VecDeque<Queued> = VecDeque::new();
    loop {
        let group = if carried.is_empty() {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => carried.push_back(first),
                None => return,
            }
            take_group(&mut carried, || rx.try_recv().ok(), &config)
        } else {
            // Never wait for the queue with commands in hand: another task may hold it
            // while it waits for a command that will not come.
            match rx.try_lock() {
                Ok(mut rx) => take_group(&mut carried, || rx.try_recv().ok(), &config),
                Err(_) => take_group(&mut carried, || None, &config),
            }
        };
        let (cmds, replies): (Vec<EncodedAppend>, Vec<Reply>) =
            group.into_iter().map(|q| (q.cmd, q.reply)).unzip();
        let answers = writer.write(&cmds).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that went away no longer wants its answer; the append stands.
            let _ = reply.send(answer);
        }
    }
}

/// Whether a failed group statement may be retried command by command: the server refused
/// the statement (so its transaction rolled back and wrote nothing) and the connection
/// still works. A lost connection or a server going down is not: the commit may have
/// happened, and each command answers unavailable.
fn retry_one_by_one(error: &tokio_postgres::Error, client: &tokio_postgres::Client) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code().code();
    db.parsed_severity() == Some(Severity::Error)
        && !code.starts_with("08") // connection exception
        && !code.starts_with("57P") // the server or database going away
        && !client.is_closed()
}

impl GroupWriter {
    /// Writes one group; one answer per command, in order.
    async fn write(&self, cmds: &[EncodedAppend]) -> Vec<Result<Appended, LogError>> {
        let unavailable = |e: &LogError| {
            cmds.iter()
                .map(|_| {
                    Err(LogError::Unavailable {
                        operation: "append group",
                        message: e.to_string(),
                    })
                })
                .collect()
        };
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(e) => return unavailable(&LogError::pool("get connection")(e)),
        };
        let answers = match insert_group(&client, cmds).await {
            Ok(answers) => {
                self.stats.groups.fetch_add(1, Relaxed);
                self.stats
                    .grouped_commands
                    .fetch_add(cmds.len() as u64, Relaxed);
                answers
            }
            Err(GroupError::Statement(e)) if retry_one_by_one(&e, &client) => {
                warn!(commands = cmds.len(), error = %super::db_message(&e),
                      "append group failed as a whole, appending its commands one by one");
                self.stats.group_fallbacks.fetch_add(1, Relaxed);
                self.stats
                    .fallback_commands
                    .fetch_add(cmds.len() as u64, Relaxed);
                let mut answers = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    answers.push(insert_events(&client, cmd).await.map(|last| {
                        Appended::Committed {
                            last,
                            stream_version: cmd.new_stream_version,
                        }
                    }));
                }
                answers
            }
            Err(GroupError::Statement(e)) => {
                // Not back to the pool: the connection is lost or about to be.
                drop(deadpool_postgres::Object::take(client));
                return unavailable(&LogError::db("append group")(e));
            }
            Err(GroupError::Log(e)) => return unavailable(&e),
        };
        if answers
            .iter()
            .any(|a| matches!(a, Ok(Appended::Committed { .. })))
        {
            // See `LogAppends::wake_readers`: a full channel means a NOTIFY is already due.
            let _ = self.notify.try_send(());
        }
        answers
    }
}

/// How a group statement failed.
enum GroupError {
    /// The statement itself (may be retried one by one, see [`retry_one_by_one`]).
    Statement(tokio_postgres::Error),
    /// Preparing it.
    Log(LogError),
}

/// Sends [`APPEND_GROUP`] for `cmds` (distinct streams); one answer per command, in order.
async fn insert_group(
    client: &deadpool_postgres::Object,
    cmds: &[EncodedAppend],
) -> Result<Vec<Result<Appended, LogError>>, GroupError> {
    debug_assert_eq!(
        cmds.iter().map(|c| &c.doc_id).collect::<HashSet<_>>().len(),
        cmds.len(),
        "a group never holds two commands of one stream"
    );
    let statement = prepared(client, APPEND_GROUP, "prepare group append")
        .await
        .map_err(GroupError::Log)?;
    let stream_ids: Vec<&str> = cmds.iter().map(|c| c.doc_id.as_str()).collect();
    let expected: Vec<i64> = cmds.iter().map(|c| c.expected_stream_version).collect();
    let new_versions: Vec<i64> = cmds.iter().map(|c| c.new_stream_version).collect();
    let doc_versions: Vec<i64> = cmds.iter().map(|c| c.doc_version).collect();
    let deleted: Vec<bool> = cmds.iter().map(|c| c.deleted).collect();
    let hashes: Vec<i32> = cmds.iter().map(|c| c.stream_hash).collect();
    let shas: Vec<Option<&[u8]>> = cmds
        .iter()
        .map(|c| c.blob.as_ref().map(|(sha, _)| &sha[..]))
        .collect();
    let sizes: Vec<Option<i64>> = cmds
        .iter()
        .map(|c| c.blob.as_ref().map(|(_, b)| b.len() as i64))
        .collect();
    let contents: Vec<Option<&[u8]>> = cmds
        .iter()
        .map(|c| c.blob.as_ref().map(|(_, b)| &b[..]))
        .collect();
    let catalogues: Vec<_> = cmds.iter().map(EncodedAppend::catalogue).collect();
    let catalogue_versions: Vec<Option<i64>> = catalogues.iter().map(|c| c.version).collect();
    let catalogue_types: Vec<Option<&str>> = catalogues.iter().map(|c| c.event_type).collect();
    let catalogue_event_versions: Vec<Option<i16>> =
        catalogues.iter().map(|c| c.event_version).collect();
    let catalogue_payloads: Vec<Option<&serde_json::Value>> =
        catalogues.iter().map(|c| c.payload).collect();
    let num_events: usize = cmds.iter().map(|c| c.events.len()).sum();
    let mut event_cmds: Vec<i64> = Vec::with_capacity(num_events);
    let mut versions: Vec<i64> = Vec::with_capacity(num_events);
    let mut types: Vec<&str> = Vec::with_capacity(num_events);
    let mut event_versions: Vec<i16> = Vec::with_capacity(num_events);
    let mut payloads: Vec<&serde_json::Value> = Vec::with_capacity(num_events);
    let mut vectors: Vec<Option<&[u8]>> = Vec::with_capacity(num_events);
    for (number, cmd) in (1i64..).zip(cmds) {
        for (version, event) in cmd.versions.iter().zip(&cmd.events) {
            event_cmds.push(number);
            versions.push(*version);
            types.push(&event.event_type);
            event_versions.push(event.event_version);
            payloads.push(&event.payload);
            vectors.push(event.vectors.as_deref());
        }
    }
    let params: [&(dyn ToSql + Sync); 19] = [
        &stream_ids,
        &expected,
        &new_versions,
        &doc_versions,
        &deleted,
        &hashes,
        &shas,
        &sizes,
        &contents,
        &event_cmds,
        &versions,
        &types,
        &event_versions,
        &payloads,
        &vectors,
        &catalogue_versions,
        &catalogue_types,
        &catalogue_event_versions,
        &catalogue_payloads,
    ];
    let rows = client
        .query(&statement, &params)
        .await
        .map_err(GroupError::Statement)?;

    // The number of events and the last event of each command whose stream moved (a stream
    // is in the group once).
    let index: HashMap<&str, usize> = stream_ids.iter().copied().zip(0..).collect();
    let mut written: Vec<(usize, Option<tokio_postgres::Row>)> =
        cmds.iter().map(|_| (0, None)).collect();
    for row in rows {
        let Some(&at) = index.get(row.get::<_, &str>(0)) else {
            continue;
        };
        let (num_rows, last) = &mut written[at];
        *num_rows += 1;
        if last
            .as_ref()
            .is_none_or(|l| row.get::<_, i64>(1) > l.get::<_, i64>(1))
        {
            *last = Some(row);
        }
    }
    let committed = |at: usize| written[at].0 == cmds[at].events.len();
    let conflicting: Vec<&str> = (0..cmds.len())
        .filter(|at| !committed(*at))
        .map(|at| stream_ids[at])
        .collect();
    // The group committed: from here on a failure only withholds the conflicts' answers.
    let actual: Result<HashMap<String, i64>, LogError> = async {
        if conflicting.is_empty() {
            return Ok(HashMap::new());
        }
        debug!(
            conflicts = conflicting.len(),
            commands = cmds.len(),
            "append group with conflicts"
        );
        // On the group's own connection (see `insert_events`): the statement committed, so
        // this sees the stream rows that stopped the conflicting commands.
        let read = prepared(client, READ_STREAM_VERSIONS, "prepare stream versions read").await?;
        Ok(client
            .query(&read, &[&conflicting])
            .await
            .map_err(LogError::db("read stream versions"))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }
    .await;
    Ok(cmds
        .iter()
        .zip(&written)
        .enumerate()
        .map(|(at, (cmd, (_, last)))| match (last, &actual) {
            (Some(last), _) if committed(at) => Ok(Appended::Committed {
                last: cursor_of(last, 2),
                stream_version: cmd.new_stream_version,
            }),
            (_, Ok(actual)) => Err(cmd.conflict(actual.get(&cmd.doc_id).copied().unwrap_or(0))),
            (_, Err(e)) => Err(LogError::Unavailable {
                operation: "read stream versions",
                message: e.to_string(),
            }),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(&'static str, usize);

    impl Grouped for Item {
        fn stream(&self) -> &str {
            self.0
        }
        fn num_bytes(&self) -> usize {
            self.1
        }
    }

    fn config(max_commands: usize, max_bytes: usize) -> AppendGroupConfig {
        AppendGroupConfig {
            max_commands,
            tasks: 1,
            max_bytes,
        }
    }

    fn names(items: &[Item]) -> Vec<&'static str> {
        items.iter().map(|i| i.0).collect()
    }

    #[test]
    fn takes_what_is_queued_up_to_the_command_limit() {
        let mut queue: VecDeque<Item> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|s| Item(s, 10))
            .collect();
        let mut carried = VecDeque::new();
        let group = take_group(&mut carried, || queue.pop_front(), &config(3, 1000));
        assert_eq!(names(&group), ["a", "b", "c"]);
        assert!(carried.is_empty());
        assert_eq!(queue.len(), 1, "d stays queued for the next group");
        let group = take_group(&mut carried, || queue.pop_front(), &config(3, 1000));
        assert_eq!(names(&group), ["d"], "no waiting for more");
    }

    #[test]
    fn never_two_commands_of_one_stream_and_their_order_is_kept() {
        let mut queue: VecDeque<Item> = ["a", "b", "a", "c", "a", "b"]
            .into_iter()
            .map(|s| Item(s, 10))
            .collect();
        let mut carried = VecDeque::new();
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 1000));
        assert_eq!(names(&group), ["a", "b", "c"]);
        assert_eq!(
            carried.iter().map(|i| i.0).collect::<Vec<_>>(),
            ["a", "a", "b"]
        );
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 1000));
        assert_eq!(names(&group), ["a", "b"]);
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 1000));
        assert_eq!(names(&group), ["a"]);
        assert!(carried.is_empty() && queue.is_empty());
    }

    #[test]
    fn the_byte_budget_closes_a_group_but_never_refuses_its_first_command() {
        let mut queue: VecDeque<Item> = vec![Item("big", 5000), Item("a", 60), Item("b", 60)]
            .into_iter()
            .collect();
        let mut carried = VecDeque::new();
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 100));
        assert_eq!(names(&group), ["big"]);
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 100));
        assert_eq!(names(&group), ["a"]);
        let group = take_group(&mut carried, || queue.pop_front(), &config(10, 100));
        assert_eq!(names(&group), ["b"]);
    }

    #[test]
    fn items_skipped_for_their_stream_are_bounded_by_the_group_size() {
        // One stream only: each group takes one, and at most a group's worth waits outside
        // the queue.
        let mut queue: VecDeque<Item> = (0..100).map(|_| Item("a", 1)).collect();
        let mut carried = VecDeque::new();
        for _ in 0..10 {
            let group = take_group(&mut carried, || queue.pop_front(), &config(4, 1000));
            assert_eq!(group.len(), 1);
            assert!(carried.len() <= 4, "{} carried", carried.len());
        }
        assert_eq!(carried.len() + queue.len(), 90);
    }
}
