//! A crash between a store write and its checkpoint (issue 5, STYLE.md §7): the runner's
//! named failpoints (`projections` feature `failpoints`) stop every partition of every store
//! right after its write reached the store, before the applied versions are recorded or the
//! log-side checkpoint is saved; the service is restarted on the same stores and must
//! converge (verify passes, every document consistent, no duplicate vectors) while no
//! checkpoint ever moves backwards. Two rounds swap the crash points, so each store crashes
//! once after its write and once between its record and its checkpoint.
//!
//! One test per binary: the failpoint registry is global to the process.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, TestService};
use docledger::eventlog::PgLog;
use docledger::verify::Verifier;
use docledger::Stores;
use projections::runner::{failpoint_name, FAILPOINT_AFTER_APPLY, FAILPOINT_BEFORE_CHECKPOINT};
use projections::{LogSource, Partition, Sink};
use serde_json::{json, Value};

const DIM: usize = 8;
const PARTITIONS: u32 = 2;
const SINKS: [&str; 3] = ["mysql", "milvus", "s3"];

fn body(title: &str, chunks: usize, blob: bool) -> Value {
    use base64::Engine;
    let mut b = json!({
        "title": title,
        "source_type": "crash-test",
        "chunks": (0..chunks)
            .map(|i| json!({"text": format!("{title} chunk {i}"), "vector": vec![i as f32 + 0.5; DIM]}))
            .collect::<Vec<_>>(),
    });
    if blob {
        b["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(format!("{title} bytes")),
            "content_type": "text/plain",
        });
    }
    b
}

/// `(sink, partition)` → log-side checkpoint position (the log's `projection_checkpoints`),
/// plus MySQL's own checkpoint under `mysql-own`.
async fn checkpoints(log: &PgLog, stores: &Stores) -> BTreeMap<(String, u32), i64> {
    let mut out = BTreeMap::new();
    for part in Partition::all(PARTITIONS) {
        for sink in SINKS {
            let cp = LogSource::load_checkpoint(log, sink, part)
                .await
                .expect("read checkpoint");
            out.insert(
                (sink.to_owned(), part.index),
                cp.map_or(0, |(_, c)| c.position),
            );
        }
        let own = stores
            .mysql
            .checkpoint(part)
            .await
            .expect("read mysql's own checkpoint");
        out.insert(
            ("mysql-own".to_owned(), part.index),
            own.map_or(0, |(_, c)| c.position),
        );
    }
    out
}

fn assert_not_backwards(
    before: &BTreeMap<(String, u32), i64>,
    after: &BTreeMap<(String, u32), i64>,
) {
    for (key, was) in before {
        let now = after.get(key).copied().unwrap_or(0);
        assert!(
            now >= *was,
            "checkpoint {key:?} moved backwards: {was} -> {now}"
        );
    }
}

/// Waits until every partition of every store stopped at its failpoint.
async fn wait_until_every_runner_crashed(svc: &TestService, http: &reqwest::Client) {
    eventually(
        Duration::from_secs(60),
        "every runner to stop at its failpoint",
        || {
            let url = svc.url("/v1/projections");
            async move {
                let p: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let all_failed = p.as_array()?.iter().all(|store| {
                    store["partitions"].as_array().is_some_and(|parts| {
                        parts.iter().all(|part| {
                            part["state"] == "failed"
                                && part["last_error"]
                                    .as_str()
                                    .is_some_and(|e| e.contains("simulated crash"))
                        })
                    })
                });
                all_failed.then_some(())
            }
        },
    )
    .await;
}

/// Restarts after a crash and waits for convergence, checking the checkpoints never go back.
async fn restart_and_converge(
    svc: TestService,
    http: &reqwest::Client,
    expected: &BTreeMap<String, Option<usize>>,
) -> TestService {
    let log = PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log connects");
    let stores = Stores::connect(&svc.config).await.expect("stores connect");
    let at_crash = checkpoints(&log, &stores).await;
    let svc = svc.restart().await;
    let last = std::sync::Mutex::new(at_crash.clone());
    eventually(
        Duration::from_secs(90),
        "every document to be consistent after the restart",
        || {
            let svc = &svc;
            let (log, stores) = (&log, &stores);
            let last = &last;
            async move {
                let now = checkpoints(log, stores).await;
                {
                    let mut last = last.lock().expect("lock");
                    assert_not_backwards(&last, &now);
                    *last = now;
                }
                for doc in expected.keys() {
                    let got: Value = http
                        .get(svc.doc_url(doc, ""))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    if got["consistent"] != true {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let after = checkpoints(&log, &stores).await;
    assert_not_backwards(&at_crash, &after);

    // The stores hold exactly what the log says, rows are ready, no vector is duplicated.
    let verifier = Verifier::new(log.clone(), stores.clone(), PARTITIONS);
    let report = verifier.verify_all(&|_, _| {}).await.expect("verify runs");
    assert!(
        report.matches(),
        "verify after restart: {}",
        report.summary()
    );
    for (doc, chunks) in expected {
        let rows = stores.milvus.rows_of(doc).await.expect("milvus rows");
        let row = stores.mysql.row(doc).await.expect("mysql row");
        match chunks {
            Some(n) => {
                assert_eq!(rows.len(), *n, "{doc}: vectors");
                assert_eq!(row.map(|r| r.status), Some("ready".to_owned()), "{doc}");
            }
            None => {
                assert!(rows.is_empty(), "{doc}: deleted but has vectors");
                assert!(row.is_none(), "{doc}: deleted but has a row");
            }
        }
    }
    svc
}

#[actix_rt::test]
async fn a_crash_between_store_write_and_checkpoint_converges_after_restart() {
    assert!(
        fail::has_failpoints(),
        "build the tests with the projections feature `failpoints` (a dev-dependency of docledger)"
    );
    let scenario = fail::FailScenario::setup();
    let partitions = PARTITIONS.to_string();
    let svc = TestService::start(
        "crash_failpoint",
        &[
            ("DOCLEDGER_PARTITIONS", partitions.as_str()),
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let log = PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log connects");
    let stores = Stores::connect(&svc.config).await.expect("stores connect");

    // Round 1: MySQL and S3 crash right after their write, Milvus after recording its
    // applied versions but before its checkpoint.
    let round1 = [
        ("mysql", FAILPOINT_AFTER_APPLY),
        ("milvus", FAILPOINT_BEFORE_CHECKPOINT),
        ("s3", FAILPOINT_AFTER_APPLY),
    ];
    for (sink, point) in round1 {
        fail::cfg(failpoint_name(sink, point), "return").expect("configure failpoint");
    }
    let mut expected: BTreeMap<String, Option<usize>> = BTreeMap::new();
    for i in 0..40 {
        let doc = format!("crash/doc-{i}");
        let chunks = 1 + i % 4;
        let res = http
            .put(svc.doc_url(&doc, ""))
            .json(&body(&format!("{doc} v1"), chunks, true))
            .send()
            .await
            .expect("put");
        assert_eq!(
            res.status(),
            200,
            "{doc}: {}",
            res.text().await.unwrap_or_default()
        );
        expected.insert(doc, Some(chunks));
    }
    wait_until_every_runner_crashed(&svc, &http).await;

    // The crash window is real: the stores were written, the log-side checkpoints were not.
    let at_crash = checkpoints(&log, &stores).await;
    for part in Partition::all(PARTITIONS) {
        for sink in ["mysql", "milvus", "s3"] {
            assert_eq!(
                at_crash[&(sink.to_owned(), part.index)],
                0,
                "{sink}/{}: the log-side checkpoint moved before the crash",
                part.index
            );
        }
        assert!(
            at_crash[&("mysql-own".to_owned(), part.index)] > 0,
            "mysql commits its own checkpoint with its rows"
        );
    }
    // The first command: in the first batch of its partition in every store.
    let written = "crash/doc-0".to_owned();
    assert!(stores.s3.object(&written).await.expect("s3 read").is_some());
    assert!(stores
        .mysql
        .row(&written)
        .await
        .expect("mysql read")
        .is_some());
    assert!(!stores
        .milvus
        .rows_of(&written)
        .await
        .expect("milvus read")
        .is_empty());
    let state = log
        .reads()
        .stream_state(&aggregates::DocId::parse(&written).expect("id"))
        .await
        .expect("stream state")
        .expect("known stream");
    assert_eq!(
        (state.mysql, state.milvus, state.s3),
        (None, Some(1), None),
        "only milvus recorded its applied version before crashing"
    );
    for (sink, point) in round1 {
        fail::remove(failpoint_name(sink, point));
    }
    let svc = restart_and_converge(svc, &http, &expected).await;

    // Round 2: the other crash point for each store, over replaces, deletes and new documents.
    let round2 = [
        ("mysql", FAILPOINT_BEFORE_CHECKPOINT),
        ("milvus", FAILPOINT_AFTER_APPLY),
        ("s3", FAILPOINT_BEFORE_CHECKPOINT),
    ];
    for (sink, point) in round2 {
        fail::cfg(failpoint_name(sink, point), "return").expect("configure failpoint");
    }
    for i in 0..40 {
        let doc = format!("crash/doc-{i}");
        let res = match i % 4 {
            0 => {
                expected.insert(doc.clone(), None);
                http.delete(svc.doc_url(&doc, "")).send().await
            }
            1 => {
                expected.insert(doc.clone(), Some(2));
                http.put(svc.doc_url(&doc, ""))
                    .json(&body(&format!("{doc} v2"), 2, false))
                    .send()
                    .await
            }
            _ => {
                let new = format!("crash/new-{i}");
                expected.insert(new.clone(), Some(3));
                http.put(svc.doc_url(&new, ""))
                    .json(&body(&format!("{new} v1"), 3, true))
                    .send()
                    .await
            }
        }
        .expect("command");
        assert_eq!(
            res.status(),
            200,
            "{doc}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    wait_until_every_runner_crashed(&svc, &http).await;
    for (sink, point) in round2 {
        fail::remove(failpoint_name(sink, point));
    }
    let svc = restart_and_converge(svc, &http, &expected).await;
    svc.stop().await;
    scenario.teardown();
}
