//! Versioned migrations of the log database, applied in order under an advisory lock by
//! `docledger migrate` and at every start. Never edit a released migration: add one.

/// Advisory lock key serialising migrations across processes ("docledger" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x646f_636c_6564;

/// `(version, name, sql)`.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial log schema", MIGRATION_1),
    (2, "compensation of parked changes", MIGRATION_2),
    (3, "cheaper storage of vectors and blobs", MIGRATION_3),
    (4, "each document's final catalogue state", MIGRATION_4),
    (
        5,
        "cluster-wide projection ownership and control",
        MIGRATION_5,
    ),
    (6, "document listing in byte order", MIGRATION_6),
    (7, "idempotency keys expire", MIGRATION_7),
    (8, "retention and erasure of content", MIGRATION_8),
    (9, "room for in-page updates of stream rows", MIGRATION_9),
];

/// Every document's stream row is written five times: its append, each store's
/// applied-version record and its readiness record. An update can stay on its page (a HOT
/// update: no new entries in the table's two indexes) only when the page has room; at the
/// default fillfactor of 100 a bench run saw 30 % of them do. Half of each new page is
/// left free for them. Affects new pages only (`VACUUM FULL` rewrites the old ones).
const MIGRATION_9: &str = r#"
ALTER TABLE streams SET (fillfactor = 50);
"#;

/// Retention and erasure remove events' content in place (`eventlog::content`).
/// - `streams.content_floor`: no event of the stream at or below this document version
///   holds content (0: nothing removed); a retention pass starts above it, and a snapshot
///   of a version at or below it is never written.
/// - `events_blob_refs`: which events still holding content refer to a blob, so a blob is
///   deleted once none does.
const MIGRATION_8: &str = r#"
ALTER TABLE streams ADD COLUMN content_floor bigint NOT NULL DEFAULT 0;
CREATE INDEX events_blob_refs ON events ((payload->>'sha256')) WHERE event_type = 'BlobStored';
"#;

/// Idempotency keys expire after `DOCLEDGER_IDEMPOTENCY_TTL_SECS`: the compaction pass finds
/// the oldest ones through this index instead of scanning every key.
const MIGRATION_7: &str = r#"
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
"#;

/// `GET /v1/documents?prefix=…&after=…` pages through the documents in byte order of their
/// ids: an index in the "C" collation serves both the prefix range and the order, whatever
/// the database's default collation. (Built inside the migration's transaction: appends
/// wait while it is built, about a second per million documents.)
const MIGRATION_6: &str = r#"
CREATE INDEX streams_by_id_bytes ON streams (stream_id COLLATE "C");
"#;

/// What several `serve` processes on one log share about their projectors.
/// - `projection_partitions`: one row per (store, partition count, partition) ever leased.
///   `generation` grows by one each time a process takes the lease (the fencing token of
///   the owner's writes); `released` says the last owner handed it over after its runner
///   stopped (false after a crash); `paused_epoch` is the newest pause request the owner's
///   runner was seen idle under (see `projection_control.pause_epoch`).
/// - `projection_control`: one row per store: an operator's pause, and the store's
///   rebuild (requested, running, done or failed; whether it holds the store's runners
///   paused; its progress as the API shows it). `pause_epoch` grows with each rebuild's
///   pause: a rebuild waits until every partition acknowledges its epoch. `partitions` is
///   the store's partition count in force (its layout); a process configured with another
///   count takes over only once no process of this one holds a lease (see `lease`).
/// - `projection_checkpoints` is keyed by partition count too: a layout's checkpoints never
///   stand for another layout's slices of the log. Rows from before this migration have
///   count 0 (unknown); a layout that starts with no checkpoints of its own starts at the
///   lowest checkpoint of the layout before it (re-applying is idempotent, skipping is not):
///   such a row is `seeded` until its runner first saves it, and a sink that keeps its own
///   checkpoint and has none for the layout starts from a seeded row (otherwise from the
///   start of the log, as for a store that was emptied).
const MIGRATION_5: &str = r#"
ALTER TABLE projection_checkpoints ADD COLUMN partitions integer NOT NULL DEFAULT 0,
                                   ADD COLUMN seeded boolean NOT NULL DEFAULT false;
ALTER TABLE projection_checkpoints DROP CONSTRAINT projection_checkpoints_pkey;
ALTER TABLE projection_checkpoints ADD PRIMARY KEY (sink, partitions, partition);
CREATE TABLE projection_partitions (
    sink         text NOT NULL,
    partitions   integer NOT NULL,
    partition    integer NOT NULL,
    generation   bigint NOT NULL,
    owner        text NOT NULL,
    released     boolean NOT NULL DEFAULT false,
    paused_epoch bigint NOT NULL DEFAULT 0,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, partitions, partition)
);
CREATE TABLE projection_control (
    sink           text PRIMARY KEY,
    paused         boolean NOT NULL DEFAULT false,
    pause_epoch    bigint NOT NULL DEFAULT 0,
    rebuild_state  text CHECK (rebuild_state IN ('requested', 'running', 'done', 'failed')),
    rebuild_pause  boolean NOT NULL DEFAULT false,
    rebuild_runner text,
    rebuild_status jsonb,
    partitions     integer,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_control (sink) VALUES ('mysql'), ('milvus'), ('s3');
"#;

/// Each stream row keeps its document's final catalogue state: the payload of its newest
/// event that carries a catalogue change (`RowInserted` or `DocumentDeleted`, which hold the
/// whole row, see `StoreKind::event_types`), written by every append in the same statement
/// that moves the row. A catalogue rebuild reads these rows in one scan instead of every
/// historical event. `catalogue_version` is the document version of that state; a row
/// where it differs from `doc_version` (written by a binary that predates this migration)
/// is stale, and the rebuild reads that document's events instead. `json`, not `jsonb`:
/// the text is stored and sent back as it came, never parsed into a tree nor queried.
/// Existing rows are filled from the events (a sort of the log's catalogue events, once).
const MIGRATION_4: &str = r#"
ALTER TABLE streams
    ADD COLUMN catalogue_version       bigint,
    ADD COLUMN catalogue_type          text,
    ADD COLUMN catalogue_event_version smallint,
    ADD COLUMN catalogue               json;
UPDATE streams s
   SET catalogue_version = (e.payload->>'version')::bigint,
       catalogue_type = e.event_type,
       catalogue_event_version = e.event_version,
       catalogue = e.payload::json
  FROM (SELECT DISTINCT ON (stream_id) stream_id, event_type, event_version, payload
          FROM events
         WHERE event_type IN ('RowInserted', 'DocumentDeleted')
         ORDER BY stream_id, stream_version DESC) e
 WHERE s.stream_id = e.stream_id;
"#;

/// Embeddings are incompressible floats: store them out of line without trying to compress
/// them (pglz spent CPU on every append for nothing). Blob bytes keep compression, with lz4
/// where the server has it (much cheaper than pglz; text still shrinks). Affects new rows only.
const MIGRATION_3: &str = r#"
ALTER TABLE events ALTER COLUMN vectors SET STORAGE EXTERNAL;
DO $$
BEGIN
    ALTER TABLE blobs ALTER COLUMN content SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available: blobs keep the default compression';
END
$$;
"#;

/// The log's tables. Invariants:
/// - `events`: one row per event; `(stream_id, stream_version)` unique (optimistic appends);
///   `xid` is the appending transaction's id, and readers order by `(epoch, xid, position)`.
/// - `streams`: one row per document, locked by every append of that document, holding its
///   event count (the append's expected version), its document version and each store's
///   applied version (the consistency tracker); since migration 4 also its final catalogue
///   state.
/// - `blobs`: bytes once per sha256, written in the append's transaction.
const MIGRATION_1: &str = r#"
CREATE TABLE log_meta (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    log_id     uuid NOT NULL,
    epoch      integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE streams (
    stream_id      text PRIMARY KEY,
    stream_version bigint NOT NULL,
    doc_version    bigint NOT NULL,
    deleted        boolean NOT NULL DEFAULT false,
    mysql_version  bigint NOT NULL DEFAULT 0,
    milvus_version bigint NOT NULL DEFAULT 0,
    s3_version     bigint NOT NULL DEFAULT 0,
    ready_version  bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    epoch          integer NOT NULL,
    xid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL,
    stream_hash    integer NOT NULL CHECK (stream_hash >= 0),
    event_type     text NOT NULL,
    event_version  smallint NOT NULL,
    payload        jsonb NOT NULL,
    vectors        bytea,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_log_order ON events (epoch, xid, position);

CREATE TABLE blobs (
    sha256  bytea PRIMARY KEY,
    size    bigint NOT NULL,
    content bytea NOT NULL
);

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    stream_id    text NOT NULL,
    request_hash bytea NOT NULL,
    result       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    stream_id      text PRIMARY KEY,
    stream_version bigint NOT NULL,
    state          jsonb NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_checkpoints (
    sink       text NOT NULL,
    partition  integer NOT NULL,
    log_id     uuid NOT NULL,
    epoch      integer NOT NULL,
    xid        xid8 NOT NULL,
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, partition)
);

CREATE TABLE parked_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink        text NOT NULL,
    stream_id   text NOT NULL,
    version     bigint NOT NULL,
    position    bigint NOT NULL,
    error       text NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX parked_changes_open ON parked_changes (stream_id) WHERE resolved_at IS NULL;
"#;

/// Compensation bookkeeping on parked changes. Invariants: a parked change is resolved
/// (`resolved_at`) in the same transaction that appends its compensation's events, so it is
/// compensated exactly once; `resolution` says what was done and `resolved_version` is the
/// version whose consistency restores the document; `needs_operator` marks a change the
/// domain cannot compensate (a refused deletion), which the compensator then leaves alone.
const MIGRATION_2: &str = r#"
ALTER TABLE parked_changes
    ADD COLUMN resolution       text,
    ADD COLUMN resolved_version bigint,
    ADD COLUMN needs_operator   boolean NOT NULL DEFAULT false;
CREATE INDEX parked_changes_pending ON parked_changes (id)
    WHERE resolved_at IS NULL AND NOT needs_operator;
CREATE INDEX parked_changes_recent ON parked_changes (parked_at DESC);
"#;
