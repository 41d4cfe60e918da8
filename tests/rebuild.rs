//! Rebuilding each store from the log while ingestion runs, against the real stores: the
//! store is dropped, cleared or corrupted behind docledger's back (raw clients), a rebuild
//! runs (API or CLI) while puts, replaces and deletes keep arriving, and afterwards
//! `verify` passes and every acknowledged write is there.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{eventually, TestService};
use docledger::eventlog::PgLog;
use docledger::verify::Verifier;
use docledger::Stores;
use milvus::v2::prelude::*;
use mysql_async::prelude::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DIM: usize = 8;

fn vector(seed: f32) -> Vec<f32> {
    (0..DIM).map(|i| seed + i as f32 / 10.0).collect()
}

fn body(title: &str, chunks: usize, blob: Option<&[u8]>) -> Value {
    let mut b = json!({
        "title": title,
        "source_type": "pdf",
        "attributes": {"lang": "en"},
        "chunks": (0..chunks).map(|i| json!({"text": format!("{title} chunk {i}"), "vector": vector(i as f32)})).collect::<Vec<_>>(),
    });
    if let Some(bytes) = blob {
        b["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "content_type": "application/pdf",
        });
    }
    b
}

/// What the service acknowledged last per document: `Some(version)` or `None` (deleted).
type Acked = Arc<Mutex<BTreeMap<String, Option<u64>>>>;

async fn put(http: &reqwest::Client, svc: &TestService, doc: &str, b: &Value, acked: &Acked) {
    let res = http
        .put(svc.doc_url(doc, ""))
        .json(b)
        .send()
        .await
        .expect("put");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let got: Value = res.json().await.expect("json");
    let version = got["version"].as_u64().expect("version");
    acked
        .lock()
        .expect("lock")
        .insert(doc.to_owned(), Some(version));
}

async fn delete(http: &reqwest::Client, svc: &TestService, doc: &str, acked: &Acked) {
    let res = http
        .delete(svc.doc_url(doc, ""))
        .send()
        .await
        .expect("delete");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    acked.lock().expect("lock").insert(doc.to_owned(), None);
}

/// Documents with blobs, chunks, replacements with fewer chunks and no blob, deletions.
async fn seed(svc: &TestService, acked: &Acked, n: usize) {
    let http = reqwest::Client::new();
    for i in 0..n {
        let doc = format!("doc-{i:03}");
        let blob = format!("%PDF bytes of {doc}");
        put(
            &http,
            svc,
            &doc,
            &body(&doc, 3, Some(blob.as_bytes())),
            acked,
        )
        .await;
    }
    for i in (0..n).step_by(7) {
        let doc = format!("doc-{i:03}");
        put(
            &http,
            svc,
            &doc,
            &body(&format!("{doc} v2"), 1, None),
            acked,
        )
        .await;
    }
    for i in (3..n).step_by(11) {
        delete(&http, svc, &format!("doc-{i:03}"), acked).await;
    }
}

/// Puts, replaces and deletes through the API until `stop`, recording what was acknowledged.
fn ingest_until(
    svc: &TestService,
    acked: Acked,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let base = svc.url("");
    let docs_url = move |doc: &str| {
        let enc = percent_encoding::utf8_percent_encode(doc, percent_encoding::NON_ALPHANUMERIC);
        format!("{base}/v1/documents/{enc}")
    };
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0u64;
        while !stop.is_cancelled() {
            let doc = format!("live-{:03}", n % 40);
            let res = if n % 9 == 8 {
                http.delete(docs_url(&doc)).send().await.expect("delete")
            } else {
                let blob = format!("live bytes {n}");
                let b = body(
                    &format!("{doc} at {n}"),
                    1 + (n % 4) as usize,
                    (!n.is_multiple_of(3)).then_some(blob.as_bytes()),
                );
                http.put(docs_url(&doc)).json(&b).send().await.expect("put")
            };
            match res.status().as_u16() {
                200 => {
                    let got: Value = res.json().await.expect("json");
                    let deleted = n % 9 == 8;
                    acked.lock().expect("lock").insert(
                        doc,
                        (!deleted).then(|| got["version"].as_u64().expect("version")),
                    );
                }
                404 => {} // deleting what is already deleted
                other => panic!(
                    "ingestion refused: {other} {}",
                    res.text().await.unwrap_or_default()
                ),
            }
            n += 1;
        }
        n
    })
}

async fn verifier(svc: &TestService) -> Verifier {
    let log = PgLog::connect(&svc.config.eventstore_url, 4)
        .await
        .expect("log");
    let stores = Stores::connect(&svc.config).await.expect("stores");
    Verifier::new(log, stores, svc.config.projection.partitions.get())
}

/// Waits until verify passes (projection lag drains), then checks every acknowledged write.
async fn assert_converged(svc: &TestService, acked: &Acked) {
    let verifier = verifier(svc).await;
    let last = Arc::new(Mutex::new(String::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let report = verifier.verify_all(&|_, _| {}).await.expect("verify");
        if report.matches() {
            break;
        }
        *last.lock().expect("lock") = report.summary();
        assert!(
            tokio::time::Instant::now() < deadline,
            "verify still fails 90 s after the rebuild:\n{}",
            last.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let http = reqwest::Client::new();
    let acked = acked.lock().expect("lock").clone();
    for (doc, version) in &acked {
        let res = http.get(svc.doc_url(doc, "")).send().await.expect("get");
        let got: Value = res.json().await.expect("json");
        match version {
            Some(v) => {
                assert_eq!(got["version"].as_u64(), Some(*v), "{doc}: {got}");
                assert_eq!(got["deleted"], false, "{doc}: {got}");
            }
            None => assert_eq!(got["deleted"], true, "{doc}: {got}"),
        }
        assert_eq!(got["consistent"], true, "{doc}: {got}");
    }
}

/// Starts a rebuild through the API and waits for it to finish, checking its progress.
async fn rebuild_via_api(svc: &TestService, store: &str) -> Value {
    let http = reqwest::Client::new();
    let res = http
        .post(svc.url(&format!("/v1/projections/{store}/rebuild")))
        .send()
        .await
        .expect("rebuild");
    assert_eq!(
        res.status(),
        202,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let url = svc.url("/v1/projections");
    eventually(Duration::from_secs(120), "the rebuild to finish", || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let all: Vec<Value> = http.get(&url).send().await.ok()?.json().await.ok()?;
            let entry = all.iter().find(|s| s["name"] == store)?;
            let status = entry["rebuild"].clone();
            match status["phase"].as_str()? {
                "done" => Some(status),
                "failed" => panic!("rebuild failed: {status}"),
                _ => None,
            }
        }
    })
    .await
}

fn mysql_pool(svc: &TestService) -> mysql_async::Pool {
    mysql_async::Pool::new(
        mysql_async::Opts::from_url(svc.config.mysql_url.expose()).expect("mysql url"),
    )
}

async fn milvus_client(svc: &TestService) -> ClientV2 {
    common::milvus_client(&svc.env).await
}

/// Posts a pause or resume of `store`'s projectors.
async fn switch_projectors(http: &reqwest::Client, svc: &TestService, store: &str, action: &str) {
    let res = http
        .post(svc.url(&format!("/v1/projections/{store}/{action}")))
        .send()
        .await
        .expect("pause or resume");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

/// A rebuild records, for each document it wrote past the store's checkpoint, that the store
/// holds the version it wrote. Here the document changed twice while Milvus' projectors were
/// paused, and the rebuild read its two versions in two pages (one event a page), the older
/// first. The record named the document twice and PostgreSQL's `UPDATE ... FROM` kept one
/// of them, the older: Milvus held version 2, the log said 1, and the document never became
/// consistent (seen as `"stores":{"milvus":47,"mysql":48,"s3":48}` under ingestion).
#[actix_rt::test]
async fn a_rebuild_records_the_newest_version_of_a_document_read_in_two_pages() {
    let svc = TestService::start(
        "rebuild_records_newest",
        &[("DOCLEDGER_REBUILD_PAGE_EVENTS", "1")],
    )
    .await;
    let http = reqwest::Client::new();
    let acked: Acked = Arc::default();
    switch_projectors(&http, &svc, "milvus", "pause").await;
    put(
        &http,
        &svc,
        "twice",
        &body("first", 2, Some(b"one")),
        &acked,
    )
    .await;
    put(
        &http,
        &svc,
        "twice",
        &body("second", 3, Some(b"two")),
        &acked,
    )
    .await;
    let url = svc.doc_url("twice", "");
    let held = |want: Value| {
        let (http, url) = (http.clone(), url.clone());
        move || {
            let (http, url, want) = (http.clone(), url.clone(), want.clone());
            async move {
                let got: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (got["stores"] == want).then_some(got)
            }
        }
    };
    eventually(
        Duration::from_secs(30),
        "MySQL and S3 at version 2, Milvus paused before version 1",
        held(json!({"mysql": 2, "milvus": null, "s3": 2})),
    )
    .await;

    rebuild_via_api(&svc, "milvus").await;
    // The operator's pause outlives the rebuild: only the rebuild's record moved Milvus.
    let got = eventually(
        Duration::from_secs(10),
        "every store recorded at version 2",
        held(json!({"mysql": 2, "milvus": 2, "s3": 2})),
    )
    .await;
    assert_eq!(got["consistent"], true, "{got}");
    switch_projectors(&http, &svc, "milvus", "resume").await;
    assert_converged(&svc, &acked).await;
    svc.stop().await;
}

/// Pages of a few events, so every rebuild reads the log in many pages ahead of its writer
/// (the default page holds 5000 events, more than these tests append).
const SMALL_PAGES: &[(&str, &str)] = &[("DOCLEDGER_REBUILD_PAGE_EVENTS", "7")];

#[actix_rt::test]
async fn mysql_dropped_is_rebuilt_while_ingesting() {
    let svc = TestService::start("rebuild_mysql", SMALL_PAGES).await;
    let acked: Acked = Arc::default();
    seed(&svc, &acked, 40).await;
    // Stream rows as a binary older than the final catalogue state (log migration 4) leaves
    // them: no state (doc-000..009), or a state behind its document (doc-010..019, some
    // replaced or deleted since) that holds another document's row. The rebuild must read
    // these documents' events instead.
    let log = PgLog::connect(&svc.config.eventstore_url, 1)
        .await
        .expect("log");
    log.client()
        .await
        .expect("client")
        .batch_execute(
            "UPDATE streams SET catalogue_version = NULL, catalogue_type = NULL,
                 catalogue_event_version = NULL, catalogue = NULL
              WHERE stream_id < 'doc-010';
             UPDATE streams SET catalogue_version = doc_version - 1,
                 catalogue = (SELECT catalogue FROM streams WHERE stream_id = 'doc-030')
              WHERE stream_id >= 'doc-010' AND stream_id < 'doc-020'",
        )
        .await
        .expect("make stream rows stale");
    drop(log);
    let pool = mysql_pool(&svc);
    let mut conn = pool.get_conn().await.expect("conn");
    conn.query_drop("DROP TABLE documents")
        .await
        .expect("drop table");
    drop(conn);

    let stop = CancellationToken::new();
    let ingestion = ingest_until(&svc, acked.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = rebuild_via_api(&svc, "mysql").await;
    assert!(status["documents_done"].as_u64() >= Some(30), "{status}");
    // A second rebuild while ingesting: the live table is swapped, never missing.
    let again = rebuild_via_api(&svc, "mysql").await;
    assert_eq!(again["phase"], "done");
    stop.cancel();
    let writes = ingestion.await.expect("ingestion");
    assert!(writes > 0);
    assert_converged(&svc, &acked).await;

    let (rows, ready): (u64, u64) = pool
        .get_conn()
        .await
        .expect("conn")
        .query_first("SELECT COUNT(*), SUM(status = 'ready') FROM documents")
        .await
        .expect("count")
        .expect("a row");
    let live = acked
        .lock()
        .expect("lock")
        .values()
        .filter(|v| v.is_some())
        .count() as u64;
    assert_eq!((rows, ready), (live, live));
    let leftovers: Vec<String> = pool
        .get_conn()
        .await
        .expect("conn")
        .query("SHOW TABLES LIKE '%\\_%'")
        .await
        .expect("tables");
    assert_eq!(
        leftovers,
        [
            "document_tombstones",
            "projection_checkpoints",
            "projection_fences"
        ],
        "no shadow or old table is left"
    );
    pool.disconnect().await.expect("disconnect");
    svc.stop().await;
}

#[actix_rt::test]
async fn milvus_dropped_is_rebuilt_behind_an_alias_while_ingesting() {
    let svc = TestService::start("rebuild_milvus", SMALL_PAGES).await;
    let acked: Acked = Arc::default();
    seed(&svc, &acked, 40).await;
    let milvus = milvus_client(&svc).await;
    let collection = svc.config.milvus_collection.clone();
    milvus
        .drop_collection(
            DropCollectionRequest::builder()
                .collection_name(&collection)
                .build()
                .expect("request"),
        )
        .await
        .expect("drop collection");

    let stop = CancellationToken::new();
    let ingestion = ingest_until(&svc, acked.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    rebuild_via_api(&svc, "milvus").await;
    // The name is now an alias; a second rebuild moves it to a new generation atomically.
    rebuild_via_api(&svc, "milvus").await;
    stop.cancel();
    ingestion.await.expect("ingestion");
    assert_converged(&svc, &acked).await;

    let listed = milvus
        .list_collections(ListCollectionsRequest::builder().build().expect("request"))
        .await
        .expect("list");
    let generations: Vec<&String> = listed
        .collection_names()
        .iter()
        .filter(|c| c.starts_with(&format!("{collection}__g")))
        .collect();
    assert_eq!(
        generations.len(),
        1,
        "old generations are dropped: {generations:?}"
    );
    // A restart prepares the store through the alias.
    let svc = svc.restart().await;
    assert_converged(&svc, &acked).await;
    for g in generations {
        let _ = milvus
            .drop_alias(
                DropAliasRequest::builder()
                    .alias(&collection)
                    .build()
                    .expect("request"),
            )
            .await;
        let _ = milvus
            .drop_collection(
                DropCollectionRequest::builder()
                    .collection_name(g)
                    .build()
                    .expect("request"),
            )
            .await;
    }
    svc.stop().await;
}

#[actix_rt::test]
async fn s3_corrupted_is_rebuilt_in_place_through_the_cli_while_ingesting() {
    let svc = TestService::start("rebuild_s3", SMALL_PAGES).await;
    let acked: Acked = Arc::default();
    seed(&svc, &acked, 40).await;
    let stores = Stores::connect(&svc.config).await.expect("stores");
    // Behind docledger's back: objects deleted, one stray, one stamped with a wrong version.
    stores
        .s3
        .delete_keys(&["docs/doc-001".into(), "docs/doc-002".into()])
        .await
        .expect("delete");
    stores
        .s3
        .put_raw("docs/ghost", "boo".into())
        .await
        .expect("stray");
    stores
        .s3
        .put_raw("docs/doc-004", "wrong bytes".into())
        .await
        .expect("corrupt");

    let stop = CancellationToken::new();
    let ingestion = ingest_until(&svc, acked.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args(["rebuild", "s3", "--url", &svc.url("")])
        .env_remove("DOCLEDGER_CONFIG")
        .envs(&svc.vars)
        .env("DOCLEDGER_LOG", "warn")
        .output()
        .await
        .expect("docledger runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("s3: done"), "{stdout}");
    stop.cancel();
    ingestion.await.expect("ingestion");
    assert_converged(&svc, &acked).await;

    // Standalone is refused while the service answers.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args(["rebuild", "all", "--standalone", "--url", &svc.url("")])
        .env_remove("DOCLEDGER_CONFIG")
        .envs(&svc.vars)
        .env("DOCLEDGER_LOG", "warn")
        .output()
        .await
        .expect("docledger runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a service answers"));
    // With the service stopped, a standalone rebuild of every store; the restarted
    // service continues from the rebuilt stores' checkpoints.
    let config = svc.config.clone();
    let vars = svc.vars.clone();
    let url = svc.url("");
    svc.stop().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args(["rebuild", "all", "--standalone", "--url", &url])
        .env_remove("DOCLEDGER_CONFIG")
        .envs(&vars)
        .env("DOCLEDGER_LOG", "warn")
        .output()
        .await
        .expect("docledger runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for store in ["mysql", "milvus", "s3"] {
        assert!(stdout.contains(&format!("{store}: done")), "{stdout}");
    }
    let svc = TestService::start_again(config).await;
    assert_converged(&svc, &acked).await;
    svc.stop().await;
}

/// A document the catalogue's projector never applied (an operator paused it) is written by
/// a catalogue rebuild from its final state, and the projector resumes from the rebuild's
/// checkpoint, past the document. The document must still become ready: the resumed
/// projector records the versions between its log-side checkpoint and the one the rebuild
/// moved (the generic rebuild leaves that to it for a store that keeps its own checkpoint).
#[actix_rt::test]
async fn a_catalogue_rebuild_records_the_versions_it_wrote_for_a_paused_projector() {
    let svc = TestService::start("rebuild_records_paused", &[]).await;
    let http = reqwest::Client::new();
    let res = http
        .post(svc.url("/v1/projections/mysql/pause"))
        .send()
        .await
        .expect("pause");
    assert!(res.status().is_success(), "{}", res.status());
    let acked: Acked = Arc::default();
    put(
        &http,
        &svc,
        "paused-doc",
        &body("paused", 2, Some(b"bytes")),
        &acked,
    )
    .await;
    let url = svc.url("/v1/projections");
    eventually(
        Duration::from_secs(60),
        "milvus and s3 to apply the put",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let all: Vec<Value> = http.get(&url).send().await.ok()?.json().await.ok()?;
                all.iter()
                    .filter(|s| s["name"] != "mysql")
                    .all(|s| s["lag_events"] == 0)
                    .then_some(())
            }
        },
    )
    .await;
    rebuild_via_api(&svc, "mysql").await;
    let res = http
        .post(svc.url("/v1/projections/mysql/resume"))
        .send()
        .await
        .expect("resume");
    assert!(res.status().is_success(), "{}", res.status());
    let doc_url = svc.doc_url("paused-doc", "");
    eventually(
        Duration::from_secs(30),
        "the document to become ready",
        || {
            let http = http.clone();
            let doc_url = doc_url.clone();
            async move {
                let got: Value = http.get(&doc_url).send().await.ok()?.json().await.ok()?;
                (got["consistent"] == true).then_some(())
            }
        },
    )
    .await;
    svc.stop().await;
}
