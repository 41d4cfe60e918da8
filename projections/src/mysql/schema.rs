//! The MySQL catalogue's tables (docs/stores.md). Runs on MariaDB 10.11
//! and MySQL 8: no `AS new` aliases, `VALUES(col)` in upserts, `version` assigned last.

/// The catalogue table.
pub const DOCUMENTS: &str = "documents";

/// One row per live document. `doc_id` uses a binary collation: `Report-1` and `report-1`
/// are different documents.
pub const CREATE_DOCUMENTS: &str = r#"
CREATE TABLE IF NOT EXISTS documents (
    doc_id       VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version      BIGINT NOT NULL,
    title        VARCHAR(1024) NOT NULL,
    source_type  VARCHAR(64) NOT NULL,
    business_tag VARCHAR(255) NULL,
    attributes   JSON NOT NULL,
    blob_key     VARCHAR(300) CHARACTER SET ascii COLLATE ascii_bin NULL,
    blob_sha256  CHAR(64) CHARACTER SET ascii NULL,
    blob_size    BIGINT NULL,
    chunk_count  INT NOT NULL,
    status       ENUM('pending', 'ready') NOT NULL DEFAULT 'pending',
    updated_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (doc_id),
    KEY documents_status (status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
"#;

/// The MySQL projector's checkpoints, written in the same transaction as the rows, one per
/// partition of each partition count (`partition_count` 0: written before counts were kept).
pub const CREATE_CHECKPOINTS: &str = r#"
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    sink            VARCHAR(32) NOT NULL,
    partition_count INT NOT NULL DEFAULT 0,
    partition_index INT NOT NULL,
    log_id          CHAR(36) NOT NULL,
    epoch           INT NOT NULL,
    xid             BIGINT UNSIGNED NOT NULL,
    position        BIGINT NOT NULL,
    updated_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (sink, partition_count, partition_index)
) ENGINE = InnoDB
"#;

/// Brings a checkpoints table created before partition counts were kept to the current key.
pub const ADD_PARTITION_COUNT: &str = "ALTER TABLE projection_checkpoints
    ADD COLUMN partition_count INT NOT NULL DEFAULT 0 AFTER sink,
    DROP PRIMARY KEY, ADD PRIMARY KEY (sink, partition_count, partition_index)";

/// Fencing tokens: the newest lease generation that wrote each partition. A batch first
/// raises its partition's row to its own generation, in its transaction; a batch of an
/// older generation (a previous owner that has not noticed it lost the lease) finds a newer
/// one and is rolled back whole. Kept apart from the checkpoints, which a rebuild swaps.
pub const CREATE_FENCES: &str = r#"
CREATE TABLE IF NOT EXISTS projection_fences (
    sink            VARCHAR(32) NOT NULL,
    partition_count INT NOT NULL,
    partition_index INT NOT NULL,
    generation      BIGINT NOT NULL,
    PRIMARY KEY (sink, partition_count, partition_index)
) ENGINE = InnoDB
"#;

/// The version at which each deleted document was deleted: a put of an older version
/// delivered later (a stale owner, a re-read after a change of partition count) never
/// brings its row back. A later put has a higher version and is not shadowed.
pub const CREATE_TOMBSTONES: &str = r#"
CREATE TABLE IF NOT EXISTS document_tombstones (
    doc_id  VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (doc_id)
) ENGINE = InnoDB
"#;

/// Upsert guarded by version: an older version never overwrites a newer one; a newer
/// version brings its own `status` (`pending` from the projector until every store holds
/// it; a rebuild may insert `ready`). Used by the sink and the rebuild's shadow table.
/// MariaDB evaluates the assignments left to right with the row's updated values, so
/// `version` comes last.
pub const UPSERT_TAIL: &str = " ON DUPLICATE KEY UPDATE
    status = IF(VALUES(version) > version, VALUES(status), status),
    title = IF(VALUES(version) > version, VALUES(title), title),
    source_type = IF(VALUES(version) > version, VALUES(source_type), source_type),
    business_tag = IF(VALUES(version) > version, VALUES(business_tag), business_tag),
    attributes = IF(VALUES(version) > version, VALUES(attributes), attributes),
    blob_key = IF(VALUES(version) > version, VALUES(blob_key), blob_key),
    blob_sha256 = IF(VALUES(version) > version, VALUES(blob_sha256), blob_sha256),
    blob_size = IF(VALUES(version) > version, VALUES(blob_size), blob_size),
    chunk_count = IF(VALUES(version) > version, VALUES(chunk_count), chunk_count),
    version = GREATEST(version, VALUES(version))";

/// Columns of the upsert, in order.
pub const UPSERT_HEAD: &str = "INSERT INTO documents (doc_id, version, title, source_type, business_tag, attributes, blob_key, blob_sha256, blob_size, chunk_count, status) VALUES ";

/// Placeholders of one upsert row.
pub const UPSERT_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')";

/// Rows per upsert statement (11 placeholders each, far below the 65,535 limit).
pub const ROWS_PER_STATEMENT: usize = 1000;

/// `blob_key` of a document: the key of its S3 object (one key function for both stores).
pub fn blob_key(doc_id: &str) -> String {
    crate::s3::object_key(doc_id)
}
