//! The catalogue's audit: a row is compared with the log's [`CatalogueEntry`] field by field
//! (plus its `blob_key`); `status` and `updated_at` are bookkeeping and not compared. The
//! bulk scan reads the table in `doc_id` order, a page at a time.

use std::collections::BTreeSet;

use aggregates::{CatalogueEntry, StoreChange, StoreKind, Version};
use sha2::{Digest, Sha256};

use super::schema::blob_key;
use super::{DocumentRow, MysqlSink};
use crate::audit::{
    wanted, Audit, Expected, ExpectedState, Finding, FindingKind, Progress, ScanOutcome,
};
use crate::error::SinkError;
use crate::sink::DocChange;

/// Catalogue rows read per page of a scan.
const MYSQL_PAGE: usize = 1000;

/// The compared fields of a catalogue row: its entry (but the version, compared on its own)
/// and its `blob_key`.
struct RowFields<'a> {
    entry: &'a CatalogueEntry,
    blob_key: Option<&'a str>,
}

impl RowFields<'_> {
    /// A stable digest of every compared field.
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |value: Option<&[u8]>| match value {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        };
        let e = self.entry;
        field(Some(e.title.as_bytes()));
        field(Some(e.source_type.as_bytes()));
        field(e.business_tag.as_deref().map(str::as_bytes));
        field(Some(e.attributes.as_bytes()));
        field(self.blob_key.map(str::as_bytes));
        field(e.blob_sha256.as_deref().map(str::as_bytes));
        field(e.blob_size.map(u64::to_le_bytes).as_ref().map(|b| &b[..]));
        field(Some(&e.chunk_count.to_le_bytes()));
        h.finalize().into()
    }

    /// The names and values of the fields that differ from `found`.
    fn differences(&self, found: &RowFields<'_>) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, want: String, have: String| {
            if want != have {
                out.push(format!("{name}: expected {want}, found {have}"));
            }
        };
        let (want, have) = (self.entry, found.entry);
        cmp("title", json(&want.title), json(&have.title));
        cmp(
            "source_type",
            json(&want.source_type),
            json(&have.source_type),
        );
        cmp(
            "business_tag",
            json(&want.business_tag),
            json(&have.business_tag),
        );
        cmp(
            "attributes",
            want.attributes.clone(),
            have.attributes.clone(),
        );
        cmp("blob_key", json(&self.blob_key), json(&found.blob_key));
        cmp(
            "blob_sha256",
            json(&want.blob_sha256),
            json(&have.blob_sha256),
        );
        cmp("blob_size", json(&want.blob_size), json(&have.blob_size));
        cmp(
            "chunk_count",
            want.chunk_count.to_string(),
            have.chunk_count.to_string(),
        );
        out
    }
}

/// The `blob_key` the catalogue keeps with `entry`: `docs/{doc_id}` when it has a blob.
fn entry_blob_key(doc_id: &str, entry: &CatalogueEntry) -> Option<String> {
    entry.blob_sha256.as_ref().map(|_| blob_key(doc_id))
}

/// A stored row as the entry it holds (its attributes as canonical JSON, whatever order
/// the store keeps their keys in).
fn entry_of_row(row: &DocumentRow) -> CatalogueEntry {
    CatalogueEntry {
        version: row.version,
        title: row.title.clone(),
        source_type: row.source_type.clone(),
        business_tag: row.business_tag.clone(),
        attributes: canonical_json(&row.attributes),
        blob_sha256: row.blob_sha256.clone(),
        blob_size: row.blob_size,
        chunk_count: row.chunk_count,
    }
}

/// The digest of a stored row's compared fields.
fn row_digest(row: &DocumentRow) -> [u8; 32] {
    let entry = entry_of_row(row);
    RowFields {
        entry: &entry,
        blob_key: row.blob_key.as_deref(),
    }
    .digest()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// JSON with object keys sorted at every level, so equal values print equally whatever the
/// store did to the key order.
fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&json(k));
                    out.push(':');
                    write(&map[k.as_str()], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

impl Audit for MysqlSink {
    type Found = Option<DocumentRow>;

    fn expect(doc_id: &str, change: &StoreChange<'_>) -> ExpectedState {
        let StoreChange::Upsert(event) = change else {
            return ExpectedState::Absent;
        };
        event
            .catalogue_entry()
            .map_or(ExpectedState::Absent, |entry| {
                let key = entry_blob_key(doc_id, &entry);
                ExpectedState::Row(
                    RowFields {
                        entry: &entry,
                        blob_key: key.as_deref(),
                    }
                    .digest(),
                )
            })
    }

    async fn scan(
        &self,
        expected: Expected<'_>,
        progress: &Progress<'_>,
    ) -> Result<ScanOutcome, SinkError> {
        let mut out = ScanOutcome::default();
        let mut matched: BTreeSet<&str> = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let rows = self.rows_after(after.as_deref(), MYSQL_PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.doc_id.clone());
            for row in &rows {
                out.num_items += 1;
                match expected.get(&row.doc_id) {
                    Some((id, e))
                        if e.version == row.version
                            && e.state == ExpectedState::Row(row_digest(row)) =>
                    {
                        matched.insert(id);
                    }
                    _ => out.suspect(&row.doc_id),
                }
            }
            progress("mysql", out.num_items);
        }
        for (doc_id, e) in expected.iter() {
            if matches!(e.state, ExpectedState::Row(_)) && !matched.contains(doc_id) {
                out.suspect(doc_id);
            }
        }
        Ok(out)
    }

    async fn read(&self, doc_id: &str) -> Result<Option<DocumentRow>, SinkError> {
        self.row(doc_id).await
    }

    fn compare(
        doc_id: &str,
        change: Option<&DocChange>,
        found: &Option<DocumentRow>,
    ) -> Option<Finding> {
        let store = StoreKind::Mysql;
        let (event, version) = wanted(change);
        let want = event.and_then(|e| e.catalogue_entry());
        match (want, found) {
            (None, None) => None,
            (None, Some(row)) => Some(
                Finding::new(store, doc_id, FindingKind::Extra)
                    .versions(version, Some(row.version)),
            ),
            (Some(_), None) => {
                Some(Finding::new(store, doc_id, FindingKind::Missing).versions(version, None))
            }
            (Some(want), Some(row)) => {
                let found = Some(row.version);
                if Some(row.version) != version {
                    return Some(
                        Finding::new(store, doc_id, FindingKind::StaleVersion)
                            .versions(version, found),
                    );
                }
                let want_key = entry_blob_key(doc_id, &want);
                let have = entry_of_row(row);
                let differences = RowFields {
                    entry: &want,
                    blob_key: want_key.as_deref(),
                }
                .differences(&RowFields {
                    entry: &have,
                    blob_key: row.blob_key.as_deref(),
                });
                (!differences.is_empty()).then(|| Finding {
                    differences,
                    ..Finding::new(store, doc_id, FindingKind::ContentMismatch)
                        .versions(version, found)
                })
            }
        }
    }

    /// The guard deletes rows older than the removal.
    fn removal_version(found: Version) -> Version {
        found + 1
    }

    /// The catalogue holds nothing a document cannot own (its scan reports no strays).
    async fn delete_stray(&self, _key: &str) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::row;

    #[test]
    fn row_differences_name_each_field() {
        let want = row(1, "one", Some("ab")).catalogue_entry().expect("row");
        let key = entry_blob_key("a", &want);
        let want = RowFields {
            entry: &want,
            blob_key: key.as_deref(),
        };
        let mut evil = want.entry.clone();
        let have = RowFields {
            entry: &evil,
            blob_key: key.as_deref(),
        };
        assert!(want.differences(&have).is_empty());
        assert_eq!(want.digest(), have.digest());
        evil.title = "evil".into();
        evil.chunk_count = 9;
        let have = RowFields {
            entry: &evil,
            blob_key: None,
        };
        assert_ne!(want.digest(), have.digest());
        assert_eq!(
            want.differences(&have),
            [
                "title: expected \"one\", found \"evil\"",
                "blob_key: expected \"docs/a\", found null",
                "chunk_count: expected 0, found 9"
            ]
        );
    }

    #[test]
    fn a_stored_row_digests_like_the_event_that_wrote_it() {
        let event = row(2, "two", Some("ab"));
        let entry = event.catalogue_entry().expect("row");
        let stored = DocumentRow {
            doc_id: "a".into(),
            version: 2,
            title: entry.title.clone(),
            source_type: entry.source_type.clone(),
            business_tag: None,
            attributes: serde_json::json!({}),
            blob_key: Some(blob_key("a")),
            blob_sha256: entry.blob_sha256.clone(),
            blob_size: entry.blob_size,
            chunk_count: 0,
            status: "pending".into(),
        };
        assert_eq!(
            MysqlSink::expect("a", &StoreChange::Upsert(&event)),
            ExpectedState::Row(row_digest(&stored))
        );
        assert_eq!(
            MysqlSink::expect("a", &StoreChange::Remove(3)),
            ExpectedState::Absent
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":null}}"#).expect("json");
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }
}
