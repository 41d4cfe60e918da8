//! `docledger verify [--repair]` against the real stores: each store is tampered with behind
//! docledger's back (raw clients, not docledger's adapters); verification must name every
//! difference precisely and fail, through the library, the HTTP API and the CLI binary, and
//! `--repair` must bring every store back to the log.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use common::{eventually, TestService};
use docledger::eventlog::PgLog;
use docledger::verify::{FindingKind, Verifier, VerifyReport};
use docledger::Stores;
use milvus::v2::prelude::*;
use mysql_async::prelude::*;
use serde_json::{json, Value};

const DIM: usize = 8;

fn vector(seed: f32) -> Vec<f32> {
    (0..DIM).map(|i| seed + i as f32 / 10.0).collect()
}

fn body(title: &str, chunks: usize, blob: Option<&[u8]>) -> Value {
    let mut b = json!({
        "title": title,
        "source_type": "pdf",
        "attributes": {"lang": "en", "pages": 3},
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

async fn verifier(svc: &TestService) -> Verifier {
    let log = PgLog::connect(&svc.config.eventstore_url, 4)
        .await
        .expect("log connects");
    let stores = Stores::connect(&svc.config).await.expect("stores connect");
    Verifier::new(log, stores, svc.config.projection.partitions.get())
}

fn kinds(report: &VerifyReport) -> BTreeSet<(&'static str, String, FindingKind)> {
    report
        .findings
        .iter()
        .map(|f| (f.store, f.doc_id.clone(), f.kind))
        .collect()
}

fn s3_client(svc: &TestService) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version_latest()
        .endpoint_url(&svc.env.s3_endpoint)
        .region(aws_sdk_s3::config::Region::new(svc.env.s3_region.clone()))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &svc.env.s3_access_key,
            &svc.env.s3_secret_key,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Tampers with every store: a deleted row, a changed title, an orphan vector, a dropped
/// chunk, an object whose bytes were overwritten (metadata kept), a stray object.
async fn tamper(svc: &TestService) {
    let mysql = mysql_async::Pool::new(
        mysql_async::Opts::from_url(svc.config.mysql_url.expose()).expect("mysql url"),
    );
    let mut conn = mysql.get_conn().await.expect("mysql conn");
    conn.exec_drop("DELETE FROM documents WHERE doc_id = ?", ("doc-1",))
        .await
        .expect("delete row");
    conn.exec_drop(
        "UPDATE documents SET title = 'evil' WHERE doc_id = ?",
        ("doc-2",),
    )
    .await
    .expect("change title");
    drop(conn);
    mysql.disconnect().await.expect("mysql disconnects");

    let milvus = common::milvus_client(&svc.env).await;
    let collection = svc.config.milvus_collection.as_str();
    let insert = InsertRequest::builder()
        .collection_name(collection)
        .columns(vec![
            FieldData::varchar("pk", vec!["ghost#0".to_owned()]),
            FieldData::varchar("doc_id", vec!["ghost".to_owned()]),
            FieldData::int64("chunk_index", vec![0]),
            FieldData::int64("version", vec![1]),
            FieldData::varchar("text", vec!["nobody's chunk".to_owned()]),
            FieldData::FloatVector {
                name: "embedding".to_owned(),
                values: vec![vector(9.0)],
            },
        ])
        .build()
        .expect("insert request");
    milvus.insert(insert).await.expect("insert orphan vector");
    let delete = DeleteRequest::builder()
        .collection_name(collection)
        .filter("pk in [\"doc-3#1\"]")
        .build()
        .expect("delete request");
    milvus.delete(delete).await.expect("drop a chunk");

    let s3 = s3_client(svc);
    let bucket = svc.config.s3_bucket.as_str();
    let original = s3
        .head_object()
        .bucket(bucket)
        .key("docs/doc-4")
        .send()
        .await
        .expect("head doc-4");
    s3.put_object()
        .bucket(bucket)
        .key("docs/doc-4")
        .body(b"overwritten bytes".to_vec().into())
        .set_metadata(original.metadata().cloned())
        .content_type("application/pdf")
        .send()
        .await
        .expect("overwrite object");
    s3.put_object()
        .bucket(bucket)
        .key("stray.txt")
        .body(b"who put this here".to_vec().into())
        .send()
        .await
        .expect("stray object");
}

async fn run_cli(svc: &TestService, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args(args)
        .env_remove("DOCLEDGER_CONFIG")
        .envs(&svc.vars)
        .env("DOCLEDGER_LOG", "warn")
        .output()
        .await
        .expect("docledger runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "docledger verify was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

#[actix_rt::test]
async fn verify_names_every_tampering_and_repair_restores_the_log_state() {
    let svc = TestService::start(
        "verify_tamper_repair",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "1"),
            ("DOCLEDGER_VERIFY_SAMPLE", "50"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let applied = "?consistency=applied&timeout_ms=30000";
    for i in 1..=5 {
        let doc = format!("doc-{i}");
        let blob = format!("%PDF bytes of {doc}");
        let res = http
            .put(svc.doc_url(&doc, applied))
            .json(&body(&doc, 3, Some(blob.as_bytes())))
            .send()
            .await
            .expect("put");
        assert_eq!(
            res.status(),
            200,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }
    // A replaced and a deleted document: verification follows the newest change.
    for (doc, b) in [("doc-5", body("doc-5 v2", 1, None))] {
        let res = http.put(svc.doc_url(doc, applied)).json(&b).send().await;
        assert_eq!(res.expect("put").status(), 200);
    }
    let res = http
        .put(svc.doc_url("gone", applied))
        .json(&body("gone", 2, Some(b"x")))
        .send()
        .await;
    assert_eq!(res.expect("put").status(), 200);
    let res = http.delete(svc.doc_url("gone", applied)).send().await;
    assert_eq!(res.expect("delete").status(), 200);

    let verifier = verifier(&svc).await;
    let clean = verifier.verify_all(&|_, _| {}).await.expect("verify");
    assert!(clean.matches(), "{}", clean.summary());
    assert_eq!(clean.num_documents, 6);

    // The Milvus key scan cuts the id space into [from, to) ranges of doc_id.
    let stores = Stores::connect(&svc.config).await.expect("stores connect");
    let keys = stores
        .milvus
        .keys_between(Some("doc-2"), Some("doc-4"))
        .await
        .expect("key scan");
    let docs: BTreeSet<&str> = keys.iter().map(|k| k.doc_id.as_str()).collect();
    assert_eq!(docs, BTreeSet::from(["doc-2", "doc-3"]));
    assert_eq!(keys.len(), 6);

    tamper(&svc).await;

    let report = verifier.verify_all(&|_, _| {}).await.expect("verify");
    let want: BTreeSet<_> = [
        ("milvus", "doc-3", FindingKind::ContentMismatch),
        ("milvus", "ghost", FindingKind::Extra),
        ("mysql", "doc-1", FindingKind::Missing),
        ("mysql", "doc-2", FindingKind::ContentMismatch),
        ("s3", "doc-4", FindingKind::ContentMismatch),
        ("s3", "stray.txt", FindingKind::Stray),
    ]
    .into_iter()
    .map(|(s, d, k)| (s, d.to_owned(), k))
    .collect();
    assert_eq!(kinds(&report), want, "{}", report.summary());
    assert!(
        report.findings.iter().all(|f| !f.in_flight),
        "{}",
        report.summary()
    );
    let differences = |store: &str, doc: &str| -> Vec<String> {
        report
            .findings
            .iter()
            .find(|f| f.store == store && f.doc_id == doc)
            .map(|f| f.differences.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        differences("mysql", "doc-2"),
        ["title: expected \"doc-2\", found \"evil\""]
    );
    assert_eq!(
        differences("milvus", "doc-3"),
        ["chunk_count: expected 3, found 2", "chunk 1: missing"]
    );
    let s3_diff = differences("s3", "doc-4");
    assert!(
        s3_diff
            .iter()
            .any(|d| d.starts_with("bytes sha256: expected")),
        "{s3_diff:?}"
    );
    assert!(!report.matches());

    // One document through the API.
    let res = http
        .get(svc.doc_url("doc-2", "?verify=true"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.expect("json");
    assert_eq!(got["verification"]["matches"], false, "{got}");
    assert_eq!(
        got["verification"]["findings"][0]["kind"],
        "content_mismatch"
    );
    let res = http
        .get(svc.doc_url("doc-5", "?verify=true"))
        .send()
        .await
        .expect("get");
    let got: Value = res.json().await.expect("json");
    assert_eq!(got["verification"]["matches"], true, "{got}");

    // The background verifier samples every document each second and shows the drift.
    let metrics_url = svc.url("/metrics");
    eventually(Duration::from_secs(30), "drift in /metrics", || {
        let http = http.clone();
        let url = metrics_url.clone();
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| l.starts_with("docledger_verify_drifted_documents ") && !l.ends_with(" 0"))
                .then_some(())
        }
    })
    .await;

    // The CLI: JSON report, non-zero exit; then --repair, zero exit.
    let (code, stdout) = run_cli(&svc, &["verify", "--json"]).await;
    assert_eq!(code, Some(1), "{stdout}");
    let json: Value = serde_json::from_str(&stdout).expect("verify --json prints JSON");
    assert_eq!(
        json["report"]["findings"].as_array().map(Vec::len),
        Some(6),
        "{json}"
    );
    let (code, stdout) = run_cli(&svc, &["verify", "--repair"]).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("every store matches the log"), "{stdout}");

    let after = verifier.verify_all(&|_, _| {}).await.expect("verify");
    assert!(after.matches(), "{}", after.summary());
    let (code, stdout) = run_cli(&svc, &["verify"]).await;
    assert_eq!(code, Some(0), "{stdout}");
    // The re-inserted row is ready again, as before the tampering.
    let res = http
        .get(svc.doc_url("doc-1", "?verify=true"))
        .send()
        .await
        .expect("get");
    let got: Value = res.json().await.expect("json");
    assert_eq!(got["verification"]["matches"], true, "{got}");
    let mysql = mysql_async::Pool::new(
        mysql_async::Opts::from_url(svc.config.mysql_url.expose()).expect("mysql url"),
    );
    let status: Option<String> = mysql
        .get_conn()
        .await
        .expect("conn")
        .exec_first(
            "SELECT CAST(status AS CHAR) FROM documents WHERE doc_id = ?",
            ("doc-1",),
        )
        .await
        .expect("status");
    assert_eq!(status.as_deref(), Some("ready"));
    mysql.disconnect().await.expect("disconnect");
    svc.stop().await;
}
