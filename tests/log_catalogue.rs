//! Each stream row's final catalogue state (migration 4) against real PostgreSQL: every
//! append path keeps it equal to the document's newest catalogue event, the migration fills
//! it in for a log written before it, and a catalogue scan returns it in one snapshot, with
//! the events of documents whose row does not hold it and an end cursor that the next
//! events come after.

mod common;

use aggregates::{CatalogueEntry, DocId, DocumentEvent, StoreKind};
use anyhow::{ensure, Result};
use docledger::eventlog::{AppendRequest, CataloguePage, IdempotencyKey, PgLog};

use common::{doc, request, row_event, TestLog};

/// What a stream row holds as its document's catalogue state, beside what the events say it
/// should be: `(version, type, event version, payload as jsonb text)` for both.
type StatePair = (Option<String>, Option<String>);

async fn state_and_newest_event(t: &TestLog, doc_id: &DocId) -> Result<StatePair> {
    let client = t.raw_client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT concat_ws('|', catalogue_version, catalogue_type,
                                      catalogue_event_version, catalogue::jsonb::text)
                       FROM streams WHERE stream_id = $1 AND catalogue IS NOT NULL),
                    (SELECT concat_ws('|', payload->>'version', event_type, event_version,
                                      payload::text)
                       FROM events WHERE stream_id = $1 AND event_type = ANY($2)
                      ORDER BY stream_version DESC LIMIT 1)",
            &[&doc_id.as_str(), &StoreKind::Mysql.event_types()],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn assert_state_is_newest_event(t: &TestLog, doc_id: &DocId) -> Result<()> {
    let (state, newest) = state_and_newest_event(t, doc_id).await?;
    ensure!(newest.is_some(), "{doc_id} has no catalogue event");
    ensure!(
        state == newest,
        "{doc_id}: row holds {state:?}, newest event is {newest:?}"
    );
    Ok(())
}

fn blob_stored(version: u64) -> DocumentEvent {
    DocumentEvent::BlobStored {
        version,
        sha256: "ab".repeat(32),
        size: 3,
        content_type: "text/plain".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_path_keeps_the_newest_catalogue_state() -> Result<()> {
    let t = TestLog::create("catalogue_state_appends", 4).await?;
    let log = &t.log;

    // The single statement: several catalogue events in one command (the newest counts),
    // then a command without catalogue event (the state stays), then a deletion.
    let single = doc("single");
    log.appends()
        .append(request(
            &single,
            0,
            &[row_event(1, "first"), row_event(1, "second")],
        ))
        .await?;
    assert_state_is_newest_event(&t, &single).await?;
    log.appends()
        .append(request(&single, 2, &[blob_stored(1)]))
        .await?;
    assert_state_is_newest_event(&t, &single).await?;
    let (state, _) = state_and_newest_event(&t, &single).await?;
    ensure!(
        state.as_deref().is_some_and(|s| s.contains("second")),
        "{state:?}"
    );
    log.appends()
        .append(request(
            &single,
            3,
            &[DocumentEvent::DocumentDeleted { version: 2 }],
        ))
        .await?;
    assert_state_is_newest_event(&t, &single).await?;

    // The transactional path (idempotency key).
    let keyed = doc("keyed");
    let key = IdempotencyKey::new("key-1".into(), b"request");
    let events = [row_event(1, "keyed")];
    log.appends()
        .append(AppendRequest {
            idempotency: Some(&key),
            ..request(&keyed, 0, &events)
        })
        .await?;
    assert_state_is_newest_event(&t, &keyed).await?;

    // The group statement: created and moved rows in one statement, with and without a
    // catalogue event.
    let (a, b, c) = (doc("group-a"), doc("group-b"), doc("group-c"));
    log.appends()
        .append(request(&b, 0, &[row_event(1, "b v1")]))
        .await?;
    log.appends()
        .append(request(&c, 0, &[row_event(1, "c v1")]))
        .await?;
    let (ea, eb, ec) = (
        [row_event(1, "a v1")],
        [row_event(2, "b v2")],
        [blob_stored(1)],
    );
    let results = log
        .appends()
        .append_group(&[
            request(&a, 0, &ea),
            request(&b, 1, &eb),
            request(&c, 1, &ec),
        ])
        .await;
    ensure!(results.iter().all(Result::is_ok), "{results:?}");
    for d in [&a, &b, &c] {
        assert_state_is_newest_event(&t, d).await?;
    }
    t.drop_database().await
}

/// Migration 4 on a log written before it: the rows get the state the events imply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_fills_the_state_in_from_the_events() -> Result<()> {
    let t = TestLog::create("catalogue_state_migration", 4).await?;
    let docs: Vec<DocId> = (0..5).map(|i| doc(&format!("old-{i}"))).collect();
    for (i, d) in docs.iter().enumerate() {
        log_history(&t.log, d, i).await?;
    }
    let client = t.raw_client().await?;
    client
        .batch_execute(
            "ALTER TABLE streams DROP COLUMN catalogue_version, DROP COLUMN catalogue_type,
                 DROP COLUMN catalogue_event_version, DROP COLUMN catalogue;
             DELETE FROM schema_migrations WHERE version = 4",
        )
        .await?;
    let migrated = t.connect_again(2).await?;
    for d in &docs {
        assert_state_is_newest_event(&t, d).await?;
    }
    // The filled-in states are jsonb's text, not serde_json's: the catalogue rows read from
    // them are still exactly the projector's.
    let mut scan = migrated.store_records().scan_catalogue().await?;
    let mut seen = 0;
    while let Some(page) = scan.next(100).await? {
        let CataloguePage::States(states) = page else {
            anyhow::bail!("every migrated row holds its state");
        };
        for state in states.states() {
            let state = state?;
            let i: usize = state.doc_id.trim_start_matches("old-").parse()?;
            ensure!(
                state.row == final_row(i),
                "{}: {:?} != {:?}",
                state.doc_id,
                state.row,
                final_row(i)
            );
            seen += 1;
        }
    }
    ensure!(seen == docs.len(), "{seen} states");
    drop(migrated);
    t.drop_database().await
}

/// A `RowInserted` whose attributes PostgreSQL's `jsonb` writes differently from
/// `serde_json` (keys of several lengths, nested, strings with spaces and escapes).
fn rich_row(version: u64, title: &str) -> DocumentEvent {
    let attributes = serde_json::json!({
        "pages": 12,
        "lang": "en",
        "note": "two words, \"quoted\": {not: json}",
        "nested": {"zz": [1, 2.5, -3e-7], "a": null, "mm": true},
        "x": "",
    });
    let serde_json::Value::Object(attributes) = attributes else {
        unreachable!("an object literal")
    };
    DocumentEvent::RowInserted {
        version,
        title: format!("{title} \u{e9}\t\"x\""),
        source_type: "pdf".into(),
        business_tag: Some("finance".into()),
        attributes,
        blob_sha256: Some("ab".repeat(32)),
        blob_size: Some(3),
        chunk_count: 4,
    }
}

/// The catalogue row `log_history(_, _, i)` leaves (`None`: deleted).
fn final_row(i: usize) -> Option<CatalogueEntry> {
    if i % 3 == 2 {
        return None;
    }
    let v = if i % 2 == 1 { 2 } else { 1 };
    rich_row(v, &format!("v{v}")).catalogue_entry()
}

/// Puts, replaces and maybe deletes `d`, depending on `i`.
async fn log_history(log: &PgLog, d: &DocId, i: usize) -> Result<()> {
    log.appends()
        .append(request(d, 0, &[blob_stored(1), rich_row(1, "v1")]))
        .await?;
    if i % 2 == 1 {
        log.appends()
            .append(request(d, 2, &[rich_row(2, "v2")]))
            .await?;
    }
    if i % 3 == 2 {
        let at = if i % 2 == 1 { 3 } else { 2 };
        let version = if i % 2 == 1 { 3 } else { 2 };
        log.appends()
            .append(request(
                d,
                at,
                &[DocumentEvent::DocumentDeleted { version }],
            ))
            .await?;
    }
    Ok(())
}

/// The scan returns one state per document whose row holds it, then the catalogue events of
/// the others (a row left behind by an older binary: no state, or a state older than its
/// document), and ends where the events appended after its start begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reads_states_then_the_events_of_stale_rows() -> Result<()> {
    let t = TestLog::create("catalogue_scan", 4).await?;
    let log = &t.log;
    let docs: Vec<DocId> = (0..9).map(|i| doc(&format!("scan-{i}"))).collect();
    for (i, d) in docs.iter().enumerate() {
        log_history(log, d, i).await?;
    }
    let client = t.raw_client().await?;
    // scan-0: no state at all; scan-1 (replaced at version 2): a state one version behind.
    client
        .batch_execute(
            "UPDATE streams SET catalogue_version = NULL, catalogue_type = NULL,
                 catalogue_event_version = NULL, catalogue = NULL WHERE stream_id = 'scan-0';
             UPDATE streams SET catalogue_version = 1 WHERE stream_id = 'scan-1'",
        )
        .await?;

    let mut scan = log.store_records().scan_catalogue().await?;
    let end = scan.end();
    // Appended after the scan started: neither in it nor before its end.
    let late = doc("late");
    let late_cursor = match log
        .appends()
        .append(request(&late, 0, &[row_event(1, "late")]))
        .await?
    {
        docledger::eventlog::Appended::Committed { last, .. } => last,
        other => anyhow::bail!("{other:?}"),
    };
    ensure!(late_cursor > end, "{late_cursor:?} after {end:?}");

    let mut states: Vec<(String, u64, Option<CatalogueEntry>)> = Vec::new();
    let mut stale_events: Vec<(String, DocumentEvent)> = Vec::new();
    // Pages of 2, so each part spans pages.
    while let Some(page) = scan.next(2).await? {
        match page {
            CataloguePage::States(s) => {
                ensure!(stale_events.is_empty(), "states come first");
                ensure!(s.len() <= 2);
                ensure!(s.end() == end, "states stand at the scan's end");
                for state in s.states() {
                    let state = state?;
                    ensure!(!state.ready, "no store holds {}", state.doc_id);
                    states.push((state.doc_id.to_owned(), state.version, state.row));
                }
            }
            CataloguePage::Events(raw) => {
                for e in raw.decode()? {
                    stale_events.push((e.doc_id.to_string(), e.event));
                }
            }
        }
    }
    let mut state_docs: Vec<&str> = states.iter().map(|(d, _, _)| d.as_str()).collect();
    state_docs.sort_unstable();
    ensure!(
        state_docs == ["scan-2", "scan-3", "scan-4", "scan-5", "scan-6", "scan-7", "scan-8"],
        "{state_docs:?}"
    );
    // Each state is the document's final row, exactly as the projector writes it; scan-5
    // was replaced and then deleted: no row, at version 3.
    for (d, version, row) in &states {
        let i: usize = d.trim_start_matches("scan-").parse()?;
        ensure!(*row == final_row(i), "{d}: {row:?} != {:?}", final_row(i));
        let expected = match (i % 2, i % 3) {
            (1, 2) => 3,
            (1, _) | (0, 2) => 2,
            _ => 1,
        };
        ensure!(*version == expected, "{d} at version {version}");
    }
    let stale: Vec<(&str, u64)> = stale_events
        .iter()
        .map(|(d, e)| (d.as_str(), e.version()))
        .collect();
    ensure!(
        stale == [("scan-0", 1), ("scan-1", 1), ("scan-1", 2)],
        "{stale:?}"
    );
    ensure!(
        scan.next(2).await?.is_none(),
        "a finished scan stays finished"
    );
    t.drop_database().await
}
