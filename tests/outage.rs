//! Store outages and bad connections (issues 5 and 8): docledger talks to each store through
//! a TCP proxy of the test (`common::proxy`) that resets, drops or delays its connections
//! while documents are ingested. The stores themselves keep running (they are shared); to
//! docledger an outage behind the proxy is indistinguishable from a store that went down.
//!
//! - MariaDB, Milvus and S3 cut one at a time, then together (reset and dropped
//!   connections), then slow: afterwards every store matches the log (verify), every
//!   acknowledged command is in the log, no vector is duplicated, nothing was parked.
//! - PostgreSQL (the log) cut: commands are refused with 503, never acknowledged and lost;
//!   resent with the same idempotency key after the outage they land exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::{eventually, TestService};
use docledger::eventlog::PgLog;
use docledger::verify::Verifier;
use docledger::Stores;
use futures::StreamExt;
use serde_json::{json, Value};

const DIM: usize = 8;
/// Commands sent while each fault is in force: over the six phases, 1,008 documents are
/// created (and some replaced or deleted).
const DOCS_PER_PHASE: usize = 280;
/// Concurrent requests of the ingestion.
const CONCURRENCY: usize = 8;
/// How long each fault lasts at least.
const FAULT_FOR: Duration = Duration::from_secs(3);

fn body(title: &str, chunks: usize, blob: bool) -> Value {
    use base64::Engine;
    let mut b = json!({
        "title": title,
        "source_type": "outage-test",
        "chunks": (0..chunks)
            .map(|i| json!({"text": format!("{title} chunk {i}"), "vector": vec![i as f32 + 0.25; DIM]}))
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

/// One command of the ingestion and the state it leaves: `Some(chunks)` or deleted.
#[derive(Clone, Debug)]
struct Op {
    doc: String,
    title: String,
    /// None = delete.
    chunks: Option<usize>,
}

/// The commands of phase `phase`: new documents, replaces of the previous phase's, deletes.
fn phase_ops(phase: usize) -> Vec<Op> {
    (0..DOCS_PER_PHASE)
        .map(|i| {
            // Indexes 0..=2 (mod 5) create documents; 3 and 4 replace (with one chunk) or
            // delete ones that 0 and 1 created in the previous phase.
            let (doc, chunks) = match i % 5 {
                3 if phase > 0 => (format!("out/p{}-d{}", phase - 1, i - 3), Some(1)),
                4 if phase > 0 => (format!("out/p{}-d{}", phase - 1, i - 3), None),
                _ => (format!("out/p{phase}-d{i}"), Some(1 + i % 4)),
            };
            Op {
                title: format!("{doc} in phase {phase}"),
                doc,
                chunks,
            }
        })
        .collect()
}

/// Sends `ops` with bounded concurrency; every one must be acknowledged (the log is up).
async fn ingest(svc: &TestService, http: &reqwest::Client, ops: Vec<Op>) {
    // One document's commands stay in order: all of a phase touch distinct documents.
    futures::stream::iter(ops)
        .map(|op| async move {
            let res = match op.chunks {
                Some(n) => {
                    http.put(svc.doc_url(&op.doc, ""))
                        .json(&body(&op.title, n, n % 2 == 1))
                        .send()
                        .await
                }
                None => http.delete(svc.doc_url(&op.doc, "")).send().await,
            }
            .expect("request reaches the service");
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{} not acknowledged: {text}", op.doc);
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Proxies in front of MariaDB, Milvus and S3, each doing `fault` from the start, and a
/// service of test `test` whose store URLs go through them (the log's stays direct).
async fn behind_proxies(test: &str, fault: Fault) -> (TestService, [Proxy; 3]) {
    let env = projections::testing::StoreEnv::require();
    let proxies = [
        Proxy::to_url(&env.mysql_url).await,
        Proxy::to_url(&env.milvus_uri).await,
        Proxy::to_url(&env.s3_endpoint).await,
    ];
    for proxy in &proxies {
        proxy.set(fault);
    }
    let svc = TestService::start_rewritten(
        test,
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_RETRY_MAX_MS", "500"),
        ],
        |vars| {
            for (key, proxy) in [
                "DOCLEDGER_MYSQL_URL",
                "DOCLEDGER_MILVUS_URL",
                "DOCLEDGER_S3_ENDPOINT",
            ]
            .into_iter()
            .zip(&proxies)
            {
                let direct = vars[key].clone();
                vars.insert(key.to_owned(), proxy.url_for(&direct));
            }
        },
    )
    .await;
    (svc, proxies)
}

#[actix_rt::test]
async fn store_outages_during_ingestion_converge_without_loss_or_duplicates() {
    let (svc, [mysql, milvus, s3]) = behind_proxies("outage_stores", Fault::Pass).await;
    let http = reqwest::Client::new();
    let all = [&mysql, &milvus, &s3];
    let phases: Vec<(&str, Vec<&Proxy>, Fault)> = vec![
        ("mariadb reset", vec![&mysql], Fault::Reset),
        ("milvus reset", vec![&milvus], Fault::Reset),
        ("s3 reset", vec![&s3], Fault::Reset),
        ("all dropped", all.to_vec(), Fault::Drop),
        ("all reset", all.to_vec(), Fault::Reset),
        (
            "all slow",
            all.to_vec(),
            Fault::Delay(Duration::from_millis(20)),
        ),
    ];
    let started = Instant::now();
    let mut expected: BTreeMap<String, Option<usize>> = BTreeMap::new();
    let mut num_ops = 0usize;
    for (phase, (name, proxies, fault)) in phases.into_iter().enumerate() {
        let since = Instant::now();
        for p in &proxies {
            p.set(fault);
        }
        let ops = phase_ops(phase);
        num_ops += ops.len();
        for op in &ops {
            expected.insert(op.doc.clone(), op.chunks);
        }
        ingest(&svc, &http, ops).await;
        // Hold the fault for its whole duration, whatever the ingestion took.
        tokio::time::sleep(FAULT_FOR.saturating_sub(since.elapsed())).await;
        for p in &proxies {
            p.set(Fault::Pass);
        }
        eprintln!("phase {name}: {:?}", since.elapsed());
    }
    let faults_done = started.elapsed();
    common::projections_caught_up(&http, &svc.url(""), Duration::from_secs(180)).await;
    let caught_up = started.elapsed();

    // Nothing parked: an outage is transient, never a refusal.
    let comps: Value = http
        .get(svc.url("/v1/compensations"))
        .send()
        .await
        .expect("compensations")
        .json()
        .await
        .expect("json");
    assert_eq!(
        comps["compensations"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "an outage was parked as a refusal: {comps}"
    );
    // The stores hold exactly the log's state, and the log every acknowledged command.
    let log = PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log connects");
    let stores = Stores::connect(&svc.config).await.expect("stores connect");
    let report = Verifier::new(log, stores.clone(), svc.config.projection.partitions.get())
        .verify_all(&|_, _| {})
        .await
        .expect("verify runs");
    assert!(
        report.matches(),
        "verify after outages: {}",
        report.summary()
    );
    futures::stream::iter(&expected)
        .map(|(doc, chunks)| {
            let http = &http;
            let url = svc.doc_url(doc, "");
            async move {
                let got: Value = http
                    .get(url)
                    .send()
                    .await
                    .expect("get")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(got["deleted"] == true, chunks.is_none(), "{doc}: {got}");
                assert_eq!(got["consistent"], true, "{doc}: {got}");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    // No duplicate vectors: exactly chunk_count rows per live document, none of deleted ones.
    let ids: Vec<&str> = expected.keys().map(String::as_str).collect();
    let mut rows_per_doc: BTreeMap<String, usize> = BTreeMap::new();
    for row in stores.milvus.rows_of_docs(&ids).await.expect("milvus rows") {
        *rows_per_doc.entry(row.doc_id).or_default() += 1;
    }
    for (doc, chunks) in &expected {
        assert_eq!(
            rows_per_doc.get(doc).copied().unwrap_or(0),
            chunks.unwrap_or(0),
            "{doc}: vectors"
        );
    }
    let stats = |p: &Proxy| {
        let s = p.stats();
        (
            s.faults.load(Ordering::Relaxed),
            s.resets.load(Ordering::Relaxed),
        )
    };
    eprintln!(
        "outages: {num_ops} commands, {} documents, faults/resets mysql {:?} milvus {:?} s3 {:?}; \
         faults over after {faults_done:?}, caught up after {caught_up:?}, checked after {:?}",
        expected.len(),
        stats(&mysql),
        stats(&milvus),
        stats(&s3),
        started.elapsed()
    );
    assert!(stats(&mysql).1 > 0 && stats(&milvus).1 > 0 && stats(&s3).1 > 0);
    svc.stop().await;
}

#[actix_rt::test]
async fn a_log_outage_refuses_commands_with_503_and_loses_nothing() {
    let env = projections::testing::StoreEnv::require();
    let pg = Proxy::to_url(&env.pg_url).await;
    let svc = TestService::start_rewritten(
        "outage_log",
        &[("DOCLEDGER_VERIFY_INTERVAL_SECS", "0")],
        |vars| {
            let direct = vars["DOCLEDGER_EVENTSTORE_URL"].clone();
            vars.insert("DOCLEDGER_EVENTSTORE_URL".to_owned(), pg.url_for(&direct));
        },
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let put = |doc: String, key: String| {
        let http = http.clone();
        let url = svc.doc_url(&doc, "");
        async move {
            let res = http
                .put(url)
                .header("Idempotency-Key", key)
                .json(&body(&doc, 2, true))
                .send()
                .await
                .expect("the service answers");
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    for i in 0..10 {
        let (status, v) = put(format!("log/before-{i}"), format!("k-before-{i}")).await;
        assert_eq!(status, 200, "{v}");
    }
    let scrape = || {
        let http = http.clone();
        let url = svc.url("/metrics");
        async move {
            let res = http.get(url).send().await.expect("metrics answer");
            (res.status().as_u16(), res.text().await.expect("text"))
        }
    };
    let (status, before) = scrape().await;
    assert_eq!(status, 200);
    assert!(before.contains("docledger_log_up 1"), "{before}");

    // The log goes away: every command is refused with 503 and a code, none acknowledged.
    pg.set(Fault::Reset);
    // /metrics still answers, from memory, saying the log is down.
    let (status, during) = scrape().await;
    assert_eq!(status, 200, "metrics during a log outage: {during}");
    assert!(during.contains("docledger_log_up 0"), "{during}");
    assert!(
        during.contains("docledger_projection_lag_events{sink=\"mysql\""),
        "the last figures read from the log: {during}"
    );
    let mut refused = Vec::new();
    for i in 0..10 {
        let doc = format!("log/during-{i}");
        let (status, v) = put(doc.clone(), format!("k-during-{i}")).await;
        assert_eq!(status, 503, "{doc} while the log is down: {v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        refused.push(doc);
    }
    pg.set(Fault::Pass);

    // Back: the refused commands, resent with their keys, land exactly once; the earlier
    // ones are there exactly once too.
    for (i, doc) in refused.iter().enumerate() {
        let key = format!("k-during-{i}");
        let (status, v) = eventually(
            Duration::from_secs(30),
            "the log to accept commands again",
            || {
                let (doc, key) = (doc.clone(), key.clone());
                async move {
                    let (status, v) = put(doc, key).await;
                    (status != 503).then_some((status, v))
                }
            },
        )
        .await;
        assert_eq!(status, 200, "{doc}: {v}");
        let (again, v2) = put(doc.clone(), key).await;
        assert_eq!((again, &v2["version"]), (200, &v["version"]), "{doc}");
    }
    let docs = (0..10)
        .map(|i| format!("log/before-{i}"))
        .chain(refused.iter().cloned());
    for doc in docs {
        let events: Value = http
            .get(svc.doc_url(&doc, "/events"))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("json");
        let types: Vec<&str> = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(
            types,
            ["BlobStored", "RowInserted", "VectorsIndexed"],
            "{doc}: exactly one put in the log"
        );
    }
    common::projections_caught_up(&http, &svc.url(""), Duration::from_secs(60)).await;
    let log = PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log connects");
    let stores = Stores::connect(&svc.config).await.expect("stores connect");
    let report = Verifier::new(log, stores, svc.config.projection.partitions.get())
        .verify_all(&|_, _| {})
        .await
        .expect("verify runs");
    assert!(
        report.matches(),
        "verify after the log outage: {}",
        report.summary()
    );
    svc.stop().await;
}

/// `serve` starts and takes commands while MySQL, Milvus and S3 are all unreachable (their
/// connections reset from the first one): each store shows `retrying` with its error, and
/// once they answer every accepted document reaches them.
#[actix_rt::test]
async fn serve_starts_and_takes_commands_while_every_store_is_unreachable() {
    let (svc, [mysql, milvus, s3]) = behind_proxies("outage_at_start", Fault::Reset).await;
    let http = reqwest::Client::new();
    let docs: Vec<String> = (0..5).map(|i| format!("down-at-start-{i}")).collect();
    for doc in &docs {
        let res = http
            .put(svc.doc_url(doc, ""))
            .json(&json!({
                "title": doc,
                "source_type": "outage",
                "chunks": [{"text": doc, "vector": vec![0.5; 8]}],
                "blob": {"content_base64": "aGVsbG8=", "content_type": "text/plain"},
            }))
            .send()
            .await
            .expect("put");
        assert_eq!(
            res.status(),
            200,
            "accepted into the log while every store is down"
        );
    }
    eventually(
        Duration::from_secs(30),
        "every store shown retrying with its error",
        || {
            let http = &http;
            let url = svc.url("/v1/projections");
            async move {
                let all: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                all.as_array()?
                    .iter()
                    .all(|s| s["state"] == "retrying" && s["last_error"].is_string())
                    .then_some(())
            }
        },
    )
    .await;
    for proxy in [&mysql, &milvus, &s3] {
        proxy.set(Fault::Pass);
    }
    for doc in &docs {
        common::until_document(
            &http,
            &svc.doc_url(doc, ""),
            Duration::from_secs(60),
            "the document in every store",
            |got| got["consistent"] == true && got["ready"] == true,
        )
        .await;
    }
    svc.stop().await;
}
