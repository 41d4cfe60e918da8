//! Blue/green rebuild of the catalogue: a shadow table built from the log while the live
//! table keeps serving, then one atomic `RENAME TABLE` that swaps the rows and the MySQL
//! projector's checkpoints together.
//!
//! Invariants: only the rebuild writes the shadow tables, so they need no guard against a
//! concurrent writer (the version guard is kept anyway, so a page written twice after a
//! resumed rebuild is harmless); the swap renames `documents` and `projection_checkpoints`
//! in one statement, so the live table is never missing and its checkpoint always describes
//! exactly its rows (exactly once survives the rebuild).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use aggregates::{CatalogueEntry, LogCursor};
use futures::stream::{self, StreamExt, TryStreamExt};
use mysql_async::prelude::*;
use mysql_async::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::classify::sink_error;
use super::schema::{
    CREATE_CHECKPOINTS, CREATE_DOCUMENTS, DOCUMENTS, ROWS_PER_STATEMENT, UPSERT_TAIL,
};
use super::{entry_params, MysqlSink, NAME};
use crate::error::SinkError;
use crate::rebuild::{Rebuild, RebuildPage, RebuildStyle, RebuildTarget};
use crate::sink::{Batch, Change, Partition, Sink};

/// The table a rebuild fills.
pub const SHADOW_DOCUMENTS: &str = "documents_shadow";
/// The MySQL projector's checkpoints that go live with the shadow table.
pub const SHADOW_CHECKPOINTS: &str = "projection_checkpoints_shadow";
/// The live checkpoints table.
pub const CHECKPOINTS: &str = "projection_checkpoints";
/// Where the previous live table goes during the swap (dropped right after).
pub const OLD_DOCUMENTS: &str = "documents_old";
/// Where the previous checkpoints go during the swap (dropped right after).
pub const OLD_CHECKPOINTS: &str = "projection_checkpoints_old";

/// Upsert statements of one page sent at the same time (each on its own connection). The
/// documents of a page are distinct, so they never touch the same row.
pub const CONCURRENT_STATEMENTS: usize = 2;

/// Upsert statements a [`ShadowWriter`] keeps built and waiting behind the running ones, so
/// that a statement starts the moment another ends even while the next page is still being
/// read or built.
pub const QUEUED_STATEMENTS: usize = 2;

/// Columns of a catalogue insert, in [`entry_params`]' order plus `status`.
const INSERT_COLUMNS: &str = "(doc_id, version, title, source_type, business_tag, attributes, blob_key, blob_sha256, blob_size, chunk_count, status)";

/// Placeholders of one row.
const ROW_PLACEHOLDERS: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// `CREATE TABLE {table}` with the catalogue's columns and keys.
pub fn create_documents_table(table: &str) -> String {
    CREATE_DOCUMENTS.replacen(
        &format!("CREATE TABLE IF NOT EXISTS {DOCUMENTS} ("),
        &format!("CREATE TABLE {table} ("),
        1,
    )
}

fn create_checkpoints_table(table: &str) -> String {
    CREATE_CHECKPOINTS.replacen(
        &format!("CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ("),
        &format!("CREATE TABLE {table} ("),
        1,
    )
}

/// A multi-row `INSERT INTO {table}` of `rows` catalogue rows (11 values each, see
/// [`catalogue_values`]), with `tail` appended (`""` for a plain insert).
pub fn insert_statement(table: &str, rows: usize, tail: &str) -> String {
    format!(
        "INSERT INTO {table} {INSERT_COLUMNS} VALUES {}{tail}",
        vec![ROW_PLACEHOLDERS; rows].join(", ")
    )
}

/// The 11 values of a catalogue row for `change` (an upsert of a `RowInserted`), `None` for
/// anything else.
pub fn catalogue_values(doc_id: &str, change: &Change, ready: bool) -> Option<[Value; 11]> {
    let Change::Upsert(event) = change else {
        return None;
    };
    event
        .catalogue_entry()
        .map(|entry| entry_values(doc_id, entry, ready))
}

/// The 11 values of `doc_id`'s catalogue row holding `entry`, written `ready` or `pending`.
pub fn entry_values(doc_id: &str, entry: CatalogueEntry, ready: bool) -> [Value; 11] {
    let [a, b, c, d, e, f, g, h, i, j] = entry_params(doc_id, entry);
    let status = if ready { "ready" } else { "pending" };
    [a, b, c, d, e, f, g, h, i, j, Value::from(status)]
}

/// Runs one statement on a pooled connection (autocommit).
async fn exec_pooled(
    pool: mysql_async::Pool,
    operation: &'static str,
    sql: String,
    params: Vec<Value>,
) -> Result<(), SinkError> {
    let mut conn = pool.get_conn().await.map_err(sink_error("connect"))?;
    // Bulk statements repeat the same text (a full statement of `ROWS_PER_STATEMENT` rows):
    // the connection keeps it prepared when it goes back to the pool instead of being
    // reset, which would drop the prepared statement and make the next one parse and
    // describe its 11,000 placeholders again. Nothing here changes the session's state.
    conn.reset_connection(false);
    conn.exec_drop(sql, params)
        .await
        .map_err(sink_error(operation))
}

/// Runs `statements` (SQL and parameters) on up to `concurrency` pooled connections.
///
/// # Errors
/// The first classified failure.
pub async fn run_concurrently(
    pool: &mysql_async::Pool,
    operation: &'static str,
    statements: Vec<(String, Vec<Value>)>,
    concurrency: usize,
) -> Result<(), SinkError> {
    // Collected before entering the stream (rust-lang/rust#89976).
    let sends: Vec<_> = statements
        .into_iter()
        .map(|(sql, params)| exec_pooled(pool.clone(), operation, sql, params))
        .collect();
    stream::iter(sends)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Catalogue rows of documents new to the shadow table (each document's final state,
/// read once), as the parameters of plain multi-row inserts of [`ROWS_PER_STATEMENT`]
/// rows: built where the rows are read ([`NewRows::push`]), sent by
/// [`ShadowWriter::insert_new`].
#[derive(Default)]
pub struct NewRows {
    /// Each statement's parameters (11 a row), the last one possibly not full.
    statements: Vec<Vec<Value>>,
    /// The rows written `pending`.
    pending: Vec<(String, u64)>,
    num_rows: usize,
}

impl NewRows {
    /// Adds `doc_id`'s row holding `entry`, written `ready` or `pending`.
    pub fn push(&mut self, doc_id: &str, entry: CatalogueEntry, ready: bool) {
        if self.num_rows.is_multiple_of(ROWS_PER_STATEMENT) {
            self.statements
                .push(Vec::with_capacity(ROWS_PER_STATEMENT * 11));
        }
        if !ready {
            self.pending.push((doc_id.to_owned(), entry.version));
        }
        let params = self.statements.last_mut().expect("pushed above");
        params.extend(entry_values(doc_id, entry, ready));
        self.num_rows += 1;
    }
}

/// Fills the shadow table page after page without waiting for a page's inserts before the
/// next page is read and built: upsert statements run in the background, at most
/// [`CONCURRENT_STATEMENTS`] at a time (each on its own pooled connection, in the order
/// they were queued), with up to [`QUEUED_STATEMENTS`] more waiting for a turn, and
/// [`ShadowWriter::write_changes`] returns once its page's last statement is queued.
///
/// Order where it matters: a statement never runs next to one holding the same document
/// (it waits for it: no lock-order deadlock between two multi-row upserts, and the version
/// guard decides between the two versions whichever lands first); a page's guarded deletes
/// run only after every earlier upsert finished (an older upsert landing after a deletion
/// would bring the row back). [`ShadowWriter::finish`] waits for everything: call it before
/// the swap. Dropping the writer aborts what is still running (an abandoned rebuild).
pub struct ShadowWriter {
    /// The live sink: its pool writes the shadow table, and the switch swaps the tables.
    sink: MysqlSink,
    /// Turns to run a statement (first come, first served).
    turns: Arc<Semaphore>,
    /// Most statements running or waiting for a turn.
    capacity: usize,
    running: JoinSet<Result<(), SinkError>>,
    /// The documents of each running statement.
    docs_of: HashMap<tokio::task::Id, Vec<String>>,
    /// Every document some running statement writes.
    in_flight: HashSet<String>,
    /// The rows written `pending`, in order (a later entry may supersede an earlier one).
    pending: Vec<(String, u64)>,
    /// Some [`ShadowWriter::insert_new`] statement may still be running (its documents are
    /// not in `in_flight`: an upsert waits for all of them).
    new_rows_running: bool,
}

impl ShadowWriter {
    /// Writes a coalesced page of the log: its upserts start in the background (in
    /// multi-row statements of [`ROWS_PER_STATEMENT`]), then its deletes run after every
    /// earlier write. `ready(doc_id, version)` says whether a row is written `ready`.
    ///
    /// # Errors
    /// A classified [`SinkError`] of this page's deletes or of any earlier statement.
    pub async fn write_changes(
        &mut self,
        batch: &Batch,
        ready: impl Fn(&str, u64) -> bool,
    ) -> Result<(), SinkError> {
        let mut removes: Vec<(&str, u64)> = Vec::new();
        // Each statement's parameters are built in place, a statement's worth at a time.
        let mut docs: Vec<String> = Vec::with_capacity(ROWS_PER_STATEMENT);
        let mut params: Vec<Value> = Vec::with_capacity(ROWS_PER_STATEMENT * 11);
        for c in &batch.changes {
            match &c.change {
                Change::Remove | Change::Erase | Change::Purge => {
                    removes.push((c.doc_id.as_str(), c.version))
                }
                change => {
                    let ready = ready(c.doc_id.as_str(), c.version);
                    if let Some(values) = catalogue_values(c.doc_id.as_str(), change, ready) {
                        params.extend(values);
                        docs.push(c.doc_id.to_string());
                        if !ready {
                            self.pending.push((c.doc_id.to_string(), c.version));
                        }
                    }
                }
            }
            if docs.len() == ROWS_PER_STATEMENT {
                self.start_upsert(&mut docs, &mut params).await?;
            }
        }
        if !docs.is_empty() {
            self.start_upsert(&mut docs, &mut params).await?;
        }
        if removes.is_empty() {
            return Ok(());
        }
        self.finish().await?;
        let deletes = removes
            .chunks(ROWS_PER_STATEMENT)
            .map(|docs| {
                let cond = vec!["(doc_id = ? AND version < ?)"; docs.len()].join(" OR ");
                let params = docs
                    .iter()
                    .flat_map(|(d, v)| [Value::from(*d), Value::from(*v)])
                    .collect();
                (
                    format!("DELETE FROM {SHADOW_DOCUMENTS} WHERE {cond}"),
                    params,
                )
            })
            .collect();
        run_concurrently(&self.sink.pool, "delete shadow rows", deletes, 1).await
    }

    /// Queues plain inserts of `rows`, in the background like [`ShadowWriter::write_changes`]'s. No
    /// other statement may hold these documents: each is new to the table, and a later
    /// [`ShadowWriter::write_changes`] first waits for every such insert (an upsert of one of them
    /// landing first would make its insert fail as a duplicate).
    ///
    /// # Errors
    /// A classified [`SinkError`] of an earlier statement.
    pub async fn insert_new(&mut self, rows: NewRows) -> Result<(), SinkError> {
        self.pending.extend(rows.pending);
        self.new_rows_running |= !rows.statements.is_empty();
        for params in rows.statements {
            let sql = insert_statement(SHADOW_DOCUMENTS, params.len() / 11, "");
            self.start(Vec::new(), sql, params).await?;
        }
        Ok(())
    }

    /// Queues the upsert of `docs`' rows (`params`, 11 a row), leaving both empty.
    async fn start_upsert(
        &mut self,
        docs: &mut Vec<String>,
        params: &mut Vec<Value>,
    ) -> Result<(), SinkError> {
        let sql = insert_statement(SHADOW_DOCUMENTS, docs.len(), UPSERT_TAIL);
        let docs = std::mem::replace(docs, Vec::with_capacity(ROWS_PER_STATEMENT));
        let params = std::mem::replace(params, Vec::with_capacity(ROWS_PER_STATEMENT * 11));
        self.start(docs, sql, params).await
    }

    /// Queues one statement once there is room and no queued or running statement holds
    /// any of its documents (`docs`; empty for [`ShadowWriter::insert_new`]'s, after which
    /// the first statement with documents waits until all have finished).
    async fn start(
        &mut self,
        docs: Vec<String>,
        sql: String,
        params: Vec<Value>,
    ) -> Result<(), SinkError> {
        if !docs.is_empty() && std::mem::take(&mut self.new_rows_running) {
            self.finish().await?;
        }
        while self.running.len() >= self.capacity || docs.iter().any(|d| self.in_flight.contains(d))
        {
            self.join_next().await?;
        }
        let (pool, turns) = (self.sink.pool.clone(), self.turns.clone());
        let handle = self.running.spawn(async move {
            let _turn = turns.acquire_owned().await.map_err(|e| {
                SinkError::permanent(NAME, "write shadow rows", format!("no turn: {e}"))
            })?;
            exec_pooled(pool, "write shadow rows", sql, params).await
        });
        self.in_flight.extend(docs.iter().cloned());
        self.docs_of.insert(handle.id(), docs);
        Ok(())
    }

    /// Waits for one running statement.
    async fn join_next(&mut self) -> Result<(), SinkError> {
        let Some(done) = self.running.join_next_with_id().await else {
            return Ok(());
        };
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(e) => {
                return Err(SinkError::permanent(
                    NAME,
                    "write shadow rows",
                    format!("statement task ended abnormally: {e}"),
                ))
            }
        };
        for doc in self.docs_of.remove(&id).unwrap_or_default() {
            self.in_flight.remove(&doc);
        }
        result
    }

    /// `(doc_id, version)` of every row written `pending` so far, oldest first; a document
    /// written again later appears again (or not at all when written `ready`): the caller
    /// checks the version it finds against the log.
    pub fn pending(&self) -> &[(String, u64)] {
        &self.pending
    }

    /// Waits until every statement started so far has finished.
    ///
    /// # Errors
    /// The first classified failure among them.
    pub async fn finish(&mut self) -> Result<(), SinkError> {
        while !self.running.is_empty() {
            self.join_next().await?;
        }
        self.new_rows_running = false;
        Ok(())
    }
}

impl MysqlSink {
    async fn admin_exec(&self, operation: &'static str, sql: String) -> Result<(), SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        conn.query_drop(sql).await.map_err(sink_error(operation))
    }

    async fn table_exists(&self, table: &str) -> Result<bool, SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        let n: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (&self.database, table),
            )
            .await
            .map_err(sink_error("look up table"))?;
        Ok(n.unwrap_or(0) > 0)
    }

    /// Starts a rebuild: drops what an interrupted rebuild left (shadow and old tables) and
    /// creates empty shadow tables.
    ///
    /// # Errors
    /// A classified [`SinkError`].
    pub async fn create_shadow(&self) -> Result<(), SinkError> {
        self.admin_exec(
            "drop stale shadow tables",
            format!(
                "DROP TABLE IF EXISTS {SHADOW_DOCUMENTS}, {SHADOW_CHECKPOINTS}, {OLD_DOCUMENTS}, {OLD_CHECKPOINTS}"
            ),
        )
        .await?;
        self.admin_exec(
            "create shadow table",
            create_documents_table(SHADOW_DOCUMENTS),
        )
        .await?;
        self.admin_exec(
            "create shadow checkpoints",
            create_checkpoints_table(SHADOW_CHECKPOINTS),
        )
        .await
    }

    /// A writer filling the shadow table (see [`ShadowWriter`]); [`MysqlSink::create_shadow`]
    /// first.
    pub fn shadow_writer(&self) -> ShadowWriter {
        ShadowWriter {
            sink: self.clone(),
            turns: Arc::new(Semaphore::new(CONCURRENT_STATEMENTS)),
            capacity: CONCURRENT_STATEMENTS + QUEUED_STATEMENTS,
            running: JoinSet::new(),
            docs_of: HashMap::new(),
            in_flight: HashSet::new(),
            pending: Vec::new(),
            new_rows_running: false,
        }
    }

    /// Makes the shadow table live: writes the checkpoint `end` of every partition into the
    /// shadow checkpoints, then renames both shadow tables over the live ones in one
    /// statement (atomic: readers see the old table or the new one, never none), then drops
    /// the old ones.
    ///
    /// # Errors
    /// A classified [`SinkError`]; before the rename nothing live has changed.
    pub fn swap_shadow(
        &self,
        log_id: &str,
        partitions: u32,
        end: LogCursor,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + '_ {
        let log_id = log_id.to_owned();
        async move {
            let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
            for part in Partition::all(partitions) {
                conn.exec_drop(
                    format!(
                        "REPLACE INTO {SHADOW_CHECKPOINTS} (sink, partition_count, partition_index, log_id, epoch, xid, position)
                         VALUES (?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (NAME, part.count, part.index, &log_id, end.epoch, end.xid, end.position),
                )
                .await
                .map_err(sink_error("write shadow checkpoint"))?;
            }
            let mut renames = Vec::new();
            if self.table_exists(DOCUMENTS).await? {
                renames.push(format!("{DOCUMENTS} TO {OLD_DOCUMENTS}"));
            }
            renames.push(format!("{SHADOW_DOCUMENTS} TO {DOCUMENTS}"));
            if self.table_exists(CHECKPOINTS).await? {
                renames.push(format!("{CHECKPOINTS} TO {OLD_CHECKPOINTS}"));
            }
            renames.push(format!("{SHADOW_CHECKPOINTS} TO {CHECKPOINTS}"));
            conn.query_drop(format!("RENAME TABLE {}", renames.join(", ")))
                .await
                .map_err(sink_error("swap shadow table"))?;
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS {OLD_DOCUMENTS}, {OLD_CHECKPOINTS}"
            ))
            .await
            .map_err(sink_error("drop old table"))?;
            Ok(())
        }
    }
}

/// The catalogue is rebuilt blue/green from each document's final state: a shadow table
/// filled beside the live one, then swapped in with the projector's checkpoints.
impl Rebuild for MysqlSink {
    type Target = ShadowWriter;
    const STYLE: RebuildStyle = RebuildStyle::BlueGreen;
    const FROM_FINAL_STATES: bool = true;

    async fn begin_rebuild(&self) -> Result<ShadowWriter, SinkError> {
        // A table dropped behind docledger's back is recreated (empty) so that its runners
        // stop retrying and can be paused.
        self.prepare().await?;
        self.create_shadow().await?;
        Ok(self.shadow_writer())
    }
}

impl RebuildTarget for ShadowWriter {
    async fn write(&mut self, page: RebuildPage) -> Result<(), SinkError> {
        match page {
            RebuildPage::Changes { batch, consistent } => {
                self.write_changes(&batch, |doc, _| consistent.contains(doc))
                    .await
            }
            RebuildPage::States(mut states) => {
                // In the catalogue's key order: MariaDB appends each statement's rows to its
                // B-tree instead of inserting them between each other in append order.
                states.sort_unstable_by(|a, b| a.doc_id.cmp(&b.doc_id));
                let mut rows = NewRows::default();
                for state in states {
                    if let Some(entry) = state.entry {
                        rows.push(&state.doc_id, entry, state.ready);
                    }
                }
                self.insert_new(rows).await
            }
        }
    }

    async fn switch(
        &mut self,
        log_id: &str,
        partitions: u32,
        end: LogCursor,
    ) -> Result<(), SinkError> {
        // Every row in before the shadow goes live.
        self.finish().await?;
        self.sink.swap_shadow(log_id, partitions, end).await
    }

    fn pending(&self) -> &[(String, u64)] {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_tables_have_the_live_schema_under_another_name() {
        let sql = create_documents_table(SHADOW_DOCUMENTS);
        assert!(sql.contains("CREATE TABLE documents_shadow ("), "{sql}");
        assert!(sql.contains("PRIMARY KEY (doc_id)"));
        let sql = create_checkpoints_table(SHADOW_CHECKPOINTS);
        assert!(
            sql.contains("CREATE TABLE projection_checkpoints_shadow ("),
            "{sql}"
        );
        assert_eq!(
            insert_statement("t", 2, "").matches('?').count(),
            22,
            "11 values a row"
        );
    }
}
