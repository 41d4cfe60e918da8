//! Given/when/then tests of the document aggregate (cqrs-es TestFramework) and property
//! tests: replaying a stream rebuilds the state the commands produced, whatever the commands.

use aggregates::{
    decide_retry, restore_point, BlobRef, Chunk, CompensationOutcome, CompensationState, Document,
    DocumentCommand, DocumentError, DocumentEvent, PutDocument, Restore, RetryDecision, RetryFacts,
};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

type DocumentTest = TestFramework<Document>;

fn chunk(index: u32, text: &str) -> Chunk {
    Chunk {
        index,
        text: text.into(),
        vector: vec![0.25, -1.0, 3.5],
    }
}

fn put(title: &str, chunks: Vec<Chunk>, blob: Option<BlobRef>) -> PutDocument {
    PutDocument {
        title: title.into(),
        source_type: "pdf".into(),
        business_tag: None,
        attributes: Default::default(),
        blob,
        chunks,
        expected_version: None,
    }
}

fn blob(seed: char) -> BlobRef {
    BlobRef {
        sha256: seed.to_string().repeat(64),
        size: 10,
        content_type: "text/plain".into(),
    }
}

fn events_of(version: u64, p: &PutDocument) -> Vec<DocumentEvent> {
    let mut out = Vec::new();
    if let Some(b) = &p.blob {
        out.push(DocumentEvent::BlobStored {
            version,
            sha256: b.sha256.clone(),
            size: b.size,
            content_type: b.content_type.clone(),
        });
    }
    out.push(DocumentEvent::RowInserted {
        version,
        title: p.title.clone(),
        source_type: p.source_type.clone(),
        business_tag: p.business_tag.clone(),
        attributes: p.attributes.clone(),
        blob_sha256: p.blob.as_ref().map(|b| b.sha256.clone()),
        blob_size: p.blob.as_ref().map(|b| b.size),
        chunk_count: p.chunks.len() as u32,
    });
    out.push(DocumentEvent::VectorsIndexed {
        version,
        chunks: p.chunks.clone(),
    });
    out
}

#[test]
fn a_new_document_stores_blob_row_and_vectors_at_version_1() {
    let p = put("t", vec![chunk(0, "a"), chunk(1, "b")], Some(blob('a')));
    DocumentTest::with(())
        .given_no_previous_events()
        .when(DocumentCommand::Put(p.clone()))
        .then_expect_events(events_of(1, &p));
}

#[test]
fn a_put_equal_to_the_current_state_appends_nothing() {
    let p = put("t", vec![chunk(0, "a")], Some(blob('a')));
    DocumentTest::with(())
        .given(events_of(1, &p))
        .when(DocumentCommand::Put(p))
        .then_expect_events(vec![]);
}

#[test]
fn a_changed_put_is_the_next_version_and_a_blobless_one_has_no_blob_event() {
    let first = put("t", vec![chunk(0, "a"), chunk(1, "b")], Some(blob('a')));
    let second = put("t2", vec![chunk(0, "a")], None);
    DocumentTest::with(())
        .given(events_of(1, &first))
        .when(DocumentCommand::Put(second.clone()))
        .then_expect_events(events_of(2, &second));
}

#[test]
fn expected_version_must_match() {
    let p = put("t", vec![], None);
    let mut stale = put("t2", vec![], None);
    stale.expected_version = Some(3);
    DocumentTest::with(())
        .given(events_of(1, &p))
        .when(DocumentCommand::Put(stale))
        .then_expect_error(DocumentError::VersionConflict {
            expected: 3,
            actual: 1,
        });
    let mut create_only = put("t2", vec![], None);
    create_only.expected_version = Some(0);
    DocumentTest::with(())
        .given(events_of(1, &p))
        .when(DocumentCommand::Put(create_only))
        .then_expect_error(DocumentError::VersionConflict {
            expected: 0,
            actual: 1,
        });
}

#[test]
fn delete_of_unknown_or_deleted_documents_is_not_found() {
    DocumentTest::with(())
        .given_no_previous_events()
        .when(DocumentCommand::Delete {
            expected_version: None,
        })
        .then_expect_error(DocumentError::NotFound);
    let mut history = events_of(1, &put("t", vec![], None));
    history.push(DocumentEvent::DocumentDeleted { version: 2 });
    DocumentTest::with(())
        .given(history)
        .when(DocumentCommand::Delete {
            expected_version: None,
        })
        .then_expect_error(DocumentError::NotFound);
}

#[test]
fn delete_is_the_next_version_and_a_put_after_it_revives_the_document() {
    let p = put("t", vec![chunk(0, "a")], None);
    DocumentTest::with(())
        .given(events_of(1, &p))
        .when(DocumentCommand::Delete {
            expected_version: Some(1),
        })
        .then_expect_events(vec![DocumentEvent::DocumentDeleted { version: 2 }]);
    let mut history = events_of(1, &p);
    history.push(DocumentEvent::DocumentDeleted { version: 2 });
    // The same content as before the delete is a change: the document comes back.
    DocumentTest::with(())
        .given(history)
        .when(DocumentCommand::Put(p.clone()))
        .then_expect_events(events_of(3, &p));
}

#[test]
fn invalid_puts_are_refused() {
    let cases = [
        put("", vec![], None),
        put(&"x".repeat(1025), vec![], None),
        put("t", vec![chunk(1, "a")], None),
        put(
            "t",
            vec![
                chunk(0, "a"),
                Chunk {
                    index: 1,
                    text: "b".into(),
                    vector: vec![1.0],
                },
            ],
            None,
        ),
        put(
            "t",
            vec![Chunk {
                index: 0,
                text: "a".into(),
                vector: vec![f32::NAN, 1.0, 2.0],
            }],
            None,
        ),
        put(
            "t",
            vec![],
            Some(BlobRef {
                sha256: "ABC".into(),
                size: 1,
                content_type: "x".into(),
            }),
        ),
    ];
    for p in cases {
        let result = DocumentTest::with(())
            .given_no_previous_events()
            .when(DocumentCommand::Put(p))
            .inspect_result();
        assert!(
            matches!(result, Err(DocumentError::Invalid(_))),
            "{result:?}"
        );
    }
}

fn compensation(version: u64, restore: Restore) -> DocumentCommand {
    DocumentCommand::RequestCompensation {
        version,
        target: "mysql".into(),
        reason: "refused".into(),
        restore,
    }
}

fn requested(version: u64) -> DocumentEvent {
    DocumentEvent::CompensationRequested {
        version,
        target: "mysql".into(),
        reason: "refused".into(),
    }
}

#[test]
fn a_refused_current_version_is_rolled_back_to_the_restore_point_as_a_new_version() {
    let v1 = put("good", vec![chunk(0, "a")], Some(blob('a')));
    let v2 = put("poison", vec![chunk(0, "b")], Some(blob('b')));
    let mut history = events_of(1, &v1);
    history.extend(events_of(2, &v2));
    let command = compensation(
        2,
        Restore::Version {
            version: 1,
            content: v1.clone(),
        },
    );
    let mut expected = vec![requested(2)];
    expected.extend(events_of(3, &v1));
    DocumentTest::with(())
        .given(history.clone())
        .when(command.clone())
        .then_expect_events(expected.clone());
    let doc = Document::replay(&history);
    let (_, outcome) = doc.decide_compensation(&command);
    assert_eq!(outcome, CompensationOutcome::RolledBack { from: 1, to: 3 });
    history.extend(expected);
    let after = Document::replay(&history);
    assert_eq!(after.version, 3);
    assert!(after.compensations.is_empty(), "the rollback settles it");
    assert_eq!(
        after.content.as_ref().map(|c| c.title.as_str()),
        Some("good")
    );
}

#[test]
fn a_refused_first_version_is_withdrawn() {
    let v1 = put("poison", vec![], None);
    DocumentTest::with(())
        .given(events_of(1, &v1))
        .when(compensation(1, Restore::Withdraw))
        .then_expect_events(vec![
            requested(1),
            DocumentEvent::DocumentDeleted { version: 2 },
        ]);
}

#[test]
fn superseded_unknown_and_refused_deletions_append_nothing() {
    let v1 = put("a", vec![], None);
    let v2 = put("b", vec![], None);
    let mut history = events_of(1, &v1);
    history.extend(events_of(2, &v2));
    let doc = Document::replay(&history);
    for (version, outcome) in [
        (1, CompensationOutcome::Superseded { by: 2 }),
        (3, CompensationOutcome::Unknown),
        (0, CompensationOutcome::Unknown),
    ] {
        let (events, got) = doc.decide_compensation(&compensation(version, Restore::Withdraw));
        assert!(events.is_empty());
        assert_eq!(got, outcome);
    }
    history.push(DocumentEvent::DocumentDeleted { version: 3 });
    let deleted = Document::replay(&history);
    let (events, got) = deleted.decide_compensation(&compensation(3, Restore::Withdraw));
    assert!(events.is_empty());
    assert_eq!(got, CompensationOutcome::NeedsOperator);
    assert!(!got.resolves());
}

#[test]
fn the_restore_point_is_the_newest_earlier_version_no_store_refused() {
    let v1 = put("one", vec![chunk(0, "a")], Some(blob('a')));
    let v2 = put("two", vec![chunk(0, "b")], None);
    let v3 = put("three", vec![], None);
    let mut history = events_of(1, &v1);
    history.extend(events_of(2, &v2));
    history.extend(events_of(3, &v3));
    let none = std::collections::BTreeSet::new();
    assert_eq!(
        restore_point(&history, &none, 3),
        Restore::Version {
            version: 2,
            content: v2.clone()
        }
    );
    let refused_2: std::collections::BTreeSet<u64> = [2, 3].into();
    assert_eq!(
        restore_point(&history, &refused_2, 3),
        Restore::Version {
            version: 1,
            content: v1.clone()
        }
    );
    assert_eq!(restore_point(&history, &none, 1), Restore::Withdraw);
    // A deletion before the refused version: the document was withdrawn then.
    let mut deleted = events_of(1, &v1);
    deleted.push(DocumentEvent::DocumentDeleted { version: 2 });
    deleted.extend(events_of(3, &v3));
    assert_eq!(restore_point(&deleted, &none, 3), Restore::Withdraw);
    // A refused rollback is not rolled back again (it would be refused again): withdraw.
    let mut rolled = history.clone();
    rolled.push(requested(3));
    rolled.extend(events_of(4, &v1));
    assert_eq!(restore_point(&rolled, &[3, 4].into(), 4), Restore::Withdraw);
}

#[test]
fn redrive_re_emits_the_current_state_as_a_new_version() {
    let v1 = put("one", vec![chunk(0, "a")], None);
    DocumentTest::with(())
        .given(events_of(1, &v1))
        .when(DocumentCommand::Redrive {
            current_version: 1,
            content: Some(v1.clone()),
        })
        .then_expect_events(events_of(2, &v1));
    let mut history = events_of(1, &v1);
    history.push(DocumentEvent::DocumentDeleted { version: 2 });
    DocumentTest::with(())
        .given(history)
        .when(DocumentCommand::Redrive {
            current_version: 2,
            content: None,
        })
        .then_expect_events(vec![DocumentEvent::DocumentDeleted { version: 3 }]);
    DocumentTest::with(())
        .given(events_of(1, &v1))
        .when(DocumentCommand::Redrive {
            current_version: 5,
            content: Some(v1),
        })
        .then_expect_error(DocumentError::VersionConflict {
            expected: 5,
            actual: 1,
        });
}

fn retry_facts(stores_consistent: bool, compensations: &[CompensationState]) -> RetryFacts {
    RetryFacts {
        version: 3,
        deleted: false,
        stores_consistent,
        compensations: compensations.to_vec(),
    }
}

#[test]
fn a_retry_of_a_consistent_document_with_nothing_open_changes_nothing() {
    use CompensationState::{Resolved, Restoring};
    for settled in [&[][..], &[Resolved], &[Resolved, Restoring]] {
        // Given every store at the current version and no open parked change,
        // when a retry is asked for, then nothing is redriven.
        assert_eq!(
            decide_retry(&retry_facts(true, settled)),
            RetryDecision::Unchanged { version: 3 },
            "{settled:?}"
        );
    }
}

#[test]
fn a_retry_redrives_a_document_whose_stores_disagree_or_with_an_open_parked_change() {
    use CompensationState::{NeedsOperator, Open, Resolved, Restoring};
    let redrive = RetryDecision::Redrive {
        version: 3,
        deleted: false,
    };
    for (consistent, states) in [
        (false, &[][..]),
        (false, &[Resolved, Restoring]),
        (true, &[Open]),
        (true, &[Resolved, NeedsOperator]),
    ] {
        assert_eq!(
            decide_retry(&retry_facts(consistent, states)),
            redrive,
            "{consistent} {states:?}"
        );
    }
    // A deletion is redriven as a deletion: it needs no content.
    let deleted = RetryFacts {
        deleted: true,
        ..retry_facts(false, &[])
    };
    assert_eq!(
        decide_retry(&deleted),
        RetryDecision::Redrive {
            version: 3,
            deleted: true
        }
    );
}

#[test]
fn compensation_states_have_one_name_each() {
    for state in CompensationState::ALL {
        assert_eq!(state.as_str().parse::<CompensationState>(), Ok(state));
        assert_eq!(
            serde_json::to_value(state).expect("a state serializes"),
            serde_json::Value::from(state.as_str())
        );
    }
    assert!("closed".parse::<CompensationState>().is_err());
    let unsettled: Vec<_> = CompensationState::ALL
        .into_iter()
        .filter(|s| s.is_unsettled())
        .map(CompensationState::as_str)
        .collect();
    assert_eq!(unsettled, ["open", "needs_operator", "restoring"]);
}

fn arb_command() -> impl Strategy<Value = DocumentCommand> {
    let put_cmd = (
        0u8..3,
        0usize..4,
        proptest::option::of(0u8..3),
        proptest::option::of(0u64..6),
    )
        .prop_map(|(title, n, blob_seed, expected)| {
            let mut p = put(
                &format!("title {title}"),
                (0..n as u32)
                    .map(|i| chunk(i, &format!("text {i}")))
                    .collect(),
                blob_seed.map(|s| blob((b'a' + s) as char)),
            );
            p.expected_version = expected;
            DocumentCommand::Put(p)
        });
    prop_oneof![
        4 => put_cmd,
        1 => proptest::option::of(0u64..6).prop_map(|expected_version| DocumentCommand::Delete { expected_version }),
    ]
}

proptest! {
    /// Whatever commands arrive, replaying the events they produced rebuilds exactly the
    /// state the aggregate reached, versions grow by one per accepted change, and every
    /// accepted change yields exactly one change per store.
    #[test]
    fn replaying_the_stream_rebuilds_the_same_state(commands in proptest::collection::vec(arb_command(), 0..25)) {
        let mut doc = Document::default();
        let mut stream = Vec::new();
        for command in &commands {
            let before = doc.version;
            if let Ok(events) = doc.decide(command) {
                if !events.is_empty() {
                    prop_assert!(events.iter().all(|e| e.version() == before + 1));
                    for store in aggregates::StoreKind::ALL {
                        prop_assert_eq!(events.iter().filter(|e| e.change_for(store).is_some()).count(), 1);
                    }
                }
                for e in &events {
                    doc.apply_event(e);
                }
                stream.extend(events);
            }
        }
        prop_assert_eq!(Document::replay(&stream), doc.clone());
        let roundtrip: Vec<DocumentEvent> = serde_json::from_value(serde_json::to_value(&stream).expect("serialize")).expect("deserialize");
        prop_assert_eq!(Document::replay(&roundtrip), doc);
    }
}

#[test]
fn erase_of_an_unknown_document_is_not_found_and_of_any_known_one_is_a_tombstone() {
    let erase = DocumentCommand::Erase {
        expected_version: None,
    };
    DocumentTest::with(())
        .given_no_previous_events()
        .when(erase.clone())
        .then_expect_error(DocumentError::NotFound);
    let p = put("t", vec![chunk(0, "a")], Some(blob('a')));
    let mut history = events_of(1, &p);
    DocumentTest::with(())
        .given(history.clone())
        .when(erase.clone())
        .then_expect_events(vec![DocumentEvent::DocumentErased { version: 2 }]);
    // A deleted document still holds content in the log: erasing it is a new version too.
    history.push(DocumentEvent::DocumentDeleted { version: 2 });
    DocumentTest::with(())
        .given(history.clone())
        .when(erase.clone())
        .then_expect_events(vec![DocumentEvent::DocumentErased { version: 3 }]);
    // Erased already: nothing left to remove.
    history.push(DocumentEvent::DocumentErased { version: 3 });
    DocumentTest::with(())
        .given(history.clone())
        .when(erase)
        .then_expect_events(vec![]);
    let erased = Document::replay(&history);
    assert!(erased.erased && erased.deleted && erased.content.is_none());
    // A put afterwards starts after the tombstone and is no longer erased.
    let again = put("new", vec![chunk(0, "b")], None);
    DocumentTest::with(())
        .given(history.clone())
        .when(DocumentCommand::Put(again.clone()))
        .then_expect_events(events_of(4, &again));
    let mut revived = erased.clone();
    for e in events_of(4, &again) {
        revived.apply_event(&e);
    }
    assert!(!revived.erased && !revived.deleted && revived.version == 4);
    // A retry of an erased document erases again (the stores flush the removal again).
    DocumentTest::with(())
        .given(history)
        .when(DocumentCommand::Redrive {
            current_version: 3,
            content: None,
        })
        .then_expect_events(vec![DocumentEvent::DocumentErased { version: 4 }]);
}

/// What retention leaves of a run of events (`first` is the first one's stream version):
/// one event standing for all of them.
fn removed(events: &[DocumentEvent], first: i64) -> DocumentEvent {
    DocumentEvent::ContentRemoved {
        version: events[0].version(),
        cause: aggregates::RemovalCause::Retention,
        removed: events
            .iter()
            .zip(first..)
            .map(|(e, stream_version)| aggregates::RemovedEvent {
                event_type: e.type_name().to_owned(),
                version: e.version(),
                stream_version,
                recorded_at: String::new(),
                sha256: None,
                size: None,
                chunk_count: None,
                target: None,
            })
            .collect(),
    }
}

#[test]
fn a_history_whose_old_versions_lost_their_content_replays_to_the_same_state() {
    let versions: Vec<PutDocument> = (0..5u32)
        .map(|v| {
            put(
                &format!("title {v}"),
                (0..=v).map(|i| chunk(i, &format!("v{v} c{i}"))).collect(),
                (v % 2 == 0).then(|| blob((b'a' + v as u8) as char)),
            )
        })
        .collect();
    let full: Vec<DocumentEvent> = versions
        .iter()
        .enumerate()
        .flat_map(|(i, p)| events_of(i as u64 + 1, p))
        .collect();
    // Versions 1-3 keep only their metadata, folded into one event.
    let cut = full
        .iter()
        .position(|e| e.version() > 3)
        .expect("newer versions");
    let mut compacted = vec![removed(&full[..cut], 1)];
    compacted.extend(full[cut..].iter().cloned());
    let (a, b) = (Document::replay(&full), Document::replay(&compacted));
    assert_eq!(
        (a.version, &a.content, a.stream_version),
        (b.version, &b.content, b.stream_version)
    );
    // A compensation of the current version restores the newest version with content.
    let refused = [5].into_iter().collect();
    match restore_point(&compacted, &refused, 5) {
        Restore::Version { version, content } => {
            assert_eq!(version, 4);
            assert_eq!(content.title, "title 3");
        }
        Restore::Withdraw => panic!("version 4 holds its content"),
    }
    // None left below the kept versions: withdraw rather than restore nothing.
    let refused = [4, 5].into_iter().collect();
    assert_eq!(restore_point(&compacted, &refused, 5), Restore::Withdraw);
}

/// The chunk digest is part of every stored state and snapshot: its bytes never change.
/// Expected: sha256 over, per chunk, the index (u32 LE), the text's length (u64 LE) and
/// bytes, the vector's length (u64 LE) and each value's bits (f32 LE), computed apart
/// (Python's `hashlib` and `struct`).
#[test]
fn the_chunk_digest_is_stable() {
    let chunks = [
        aggregates::Chunk {
            index: 0,
            text: "revenue grew".into(),
            vector: vec![1.0, -0.5, 3.25],
        },
        aggregates::Chunk {
            index: 1,
            text: String::new(),
            vector: vec![f32::MIN_POSITIVE, -0.0, 0.1],
        },
    ];
    assert_eq!(
        aggregates::document::chunk_digest(&chunks),
        "882241ca52d4c38ef38eee2da44849b062284e56f0ae7071ca9ce6044f27e8d5"
    );
}
