//! The HTTP contract: every error code refuses without changing anything, concurrency on one
//! document and across many, idempotent retries, authentication, size limits, the NDJSON
//! batch, the OpenAPI description and the `ingest` command. Real stores, real HTTP.

mod common;

use std::collections::HashSet;

use common::send;
use common::TestService;
use futures::StreamExt;
use serde_json::{json, Value};

fn doc_body(title: &str, n_chunks: usize) -> Value {
    json!({
        "title": title,
        "source_type": "note",
        "chunks": (0..n_chunks).map(|i| json!({"text": format!("{title} {i}"), "vector": vec![i as f32; 8]})).collect::<Vec<_>>(),
    })
}

/// `(version, number of events)` of a document as the API reports them.
async fn version_and_events(
    svc: &TestService,
    http: &reqwest::Client,
    doc: &str,
) -> (Value, usize) {
    let (_, got) = send(http.get(svc.doc_url(doc, ""))).await;
    let (_, events) = send(http.get(svc.doc_url(doc, "/events"))).await;
    (
        got["version"].clone(),
        events["events"].as_array().map_or(0, Vec::len),
    )
}

#[actix_rt::test]
async fn every_refusal_has_its_code_and_changes_nothing() {
    let svc = TestService::start(
        "api_refusals",
        &[
            ("DOCLEDGER_MAX_BODY_BYTES", "4096"),
            ("DOCLEDGER_MAX_BLOB_BYTES", "64"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let doc = "refusals/doc";
    let (status, _) = send(
        http.put(svc.doc_url(doc, ""))
            .json(&doc_body("original", 2)),
    )
    .await;
    assert_eq!(status, 200);
    let before = version_and_events(&svc, &http, doc).await;
    assert_eq!(before, (json!(1), 2));

    let mut unknown_field = doc_body("x", 1);
    unknown_field["chunks"][0]["vectr"] = json!([1]);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.put(svc.doc_url(doc, "")).body("{"), 400, "invalid_json"),
        (http.put(svc.doc_url(doc, "")).json(&unknown_field), 400, "invalid_json"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x"})), 400, "invalid_json"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x", "source_type": "s", "chunks": [{"text": "t", "vector": [1e39, 0, 0, 0, 0, 0, 0, 0]}]})), 400, "invalid_field"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x", "source_type": "s", "chunks": [{"text": "t", "vector": [1, 2]}]})), 400, "invalid_field"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x".repeat(1025), "source_type": "s"})), 400, "invalid_field"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x", "source_type": "s", "blob": {"content_base64": "***", "content_type": "text/plain"}})), 400, "invalid_field"),
        (http.put(svc.url("/v1/documents/a%22b")).json(&doc_body("x", 1)), 400, "invalid_doc_id"),
        (http.put(svc.url("/v1/documents/a%2F..%2Fb")).json(&doc_body("x", 1)), 400, "invalid_doc_id"),
        (http.put(svc.url("/v1/documents/%2Fa")).json(&doc_body("x", 1)), 400, "invalid_doc_id"),
        (http.put(svc.doc_url(doc, "?timeout_ms=5")).json(&doc_body("x", 1)), 400, "invalid_query"),
        (http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=abc")).json(&doc_body("x", 1)), 400, "invalid_query"),
        (http.put(svc.doc_url(doc, "")).header("Idempotency-Key", "").json(&doc_body("x", 1)), 400, "invalid_idempotency_key"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x", "source_type": "s", "expected_version": 5})), 409, "version_conflict"),
        (http.delete(svc.doc_url(doc, "")).json(&json!({"expected_version": 9})), 409, "version_conflict"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x".repeat(5000), "source_type": "s"})), 413, "payload_too_large"),
        (http.put(svc.doc_url(doc, "")).json(&json!({"title": "x", "source_type": "s", "blob": {"content_base64": "QUFB".repeat(40), "content_type": "text/plain"}})), 413, "payload_too_large"),
        (http.delete(svc.doc_url("never-seen", "")), 404, "not_found"),
        (http.get(svc.doc_url("never-seen", "")), 404, "not_found"),
        (http.get(svc.url("/v1/nothing-here")), 404, "not_found"),
    ];
    for (i, (req, want_status, want_code)) in cases.into_iter().enumerate() {
        let (status, body) = send(req).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "case {i}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}: {body}"
        );
        assert_eq!(
            version_and_events(&svc, &http, doc).await,
            before,
            "case {i} changed the document"
        );
    }
    svc.stop().await;
}

#[actix_rt::test]
async fn concurrent_puts_to_one_document_lose_no_update() {
    let svc = TestService::start("api_same_doc", &[]).await;
    let http = reqwest::Client::new();
    let doc = "contended";
    let puts = (0..32).map(|i| {
        let req = http
            .put(svc.doc_url(doc, ""))
            .json(&doc_body(&format!("writer {i}"), 1));
        async move { send(req).await }
    });
    let results: Vec<(u16, Value)> = futures::future::join_all(puts).await;
    let mut versions: Vec<u64> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["version"].as_u64().expect("version")
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=32).collect::<Vec<u64>>(),
        "every put is its own version, none lost"
    );
    assert_eq!(version_and_events(&svc, &http, doc).await, (json!(32), 64));
    svc.stop().await;
}

#[actix_rt::test]
async fn a_thousand_documents_in_parallel_are_each_in_the_log_once() {
    let svc = TestService::start("api_many_docs", &[]).await;
    let http = reqwest::Client::new();
    let n = 1000;
    let results: Vec<(u16, Value)> = futures::stream::iter((0..n).map(|i| {
        let req = http
            .put(svc.doc_url(&format!("many/{i}"), ""))
            .json(&doc_body(&format!("doc {i}"), 1));
        async move { send(req).await }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    assert!(
        results.iter().all(|(s, b)| *s == 200 && b["version"] == 1),
        "every put acknowledged at version 1"
    );
    let (client, conn) =
        tokio_postgres::connect(svc.config.eventstore_url.expose(), tokio_postgres::NoTls)
            .await
            .expect("log database");
    actix_rt::spawn(conn);
    let rows = client
        .query(
            "SELECT stream_id, count(*) FROM events GROUP BY stream_id",
            &[],
        )
        .await
        .expect("count events");
    let streams: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(streams.len(), n);
    assert!(
        rows.iter().all(|r| r.get::<_, i64>(1) == 2),
        "one RowInserted and one VectorsIndexed each"
    );
    svc.stop().await;
}

#[actix_rt::test]
async fn idempotent_retries_get_the_first_answer() {
    let svc = TestService::start("api_idempotency", &[]).await;
    let http = reqwest::Client::new();
    let body = doc_body("once", 2);
    let first = send(
        http.put(svc.doc_url("idem", ""))
            .header("Idempotency-Key", "k-1")
            .json(&body),
    )
    .await;
    assert_eq!(first.0, 200);
    // A concurrent change in between must not change the retry's answer.
    let (s, _) = send(
        http.put(svc.doc_url("idem", ""))
            .json(&doc_body("other", 1)),
    )
    .await;
    assert_eq!(s, 200);
    for _ in 0..3 {
        let retry = send(
            http.put(svc.doc_url("idem", ""))
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
        .await;
        assert_eq!(retry.0, 200);
        assert_eq!(
            (
                &retry.1["version"],
                &retry.1["log_position"],
                &retry.1["unchanged"]
            ),
            (
                &first.1["version"],
                &first.1["log_position"],
                &first.1["unchanged"]
            )
        );
    }
    let (s, e) = send(
        http.put(svc.doc_url("idem", ""))
            .header("Idempotency-Key", "k-1")
            .json(&doc_body("different", 1)),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    assert_eq!(version_and_events(&svc, &http, "idem").await, (json!(2), 4));
    svc.stop().await;
}

#[actix_rt::test]
async fn tokens_guard_every_v1_endpoint() {
    let svc = TestService::start(
        "api_auth",
        &[
            ("DOCLEDGER_API_TOKENS", "alpha-token,beta-token"),
            ("DOCLEDGER_READ_TOKENS", "reader-token"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let endpoints = [
        ("PUT", svc.doc_url("a", "")),
        ("DELETE", svc.doc_url("a", "")),
        ("GET", svc.doc_url("a", "")),
        ("GET", svc.doc_url("a", "/events")),
        ("POST", svc.url("/v1/documents:batch")),
        ("GET", svc.url("/v1/projections")),
        ("POST", svc.url("/v1/projections/mysql/pause")),
        ("GET", svc.url("/v1/openapi.json")),
        ("GET", svc.url("/v1/compensations")),
        ("POST", svc.doc_url("a", "/retry")),
    ];
    for (method, url) in &endpoints {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer alpha-toke"),
            Some("alpha-token"),
        ] {
            let mut req = http.request(m.clone(), url).json(&doc_body("t", 1));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let (status, body) = send(req).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {url} {auth:?}"
            );
        }
    }
    let (status, _) = send(
        http.put(svc.doc_url("a", ""))
            .bearer_auth("beta-token")
            .json(&doc_body("t", 1)),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        http.get(svc.url("/v1/projections"))
            .bearer_auth("alpha-token"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        http.post(svc.url("/v1/projections/mysql/resume"))
            .bearer_auth("alpha-token"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(http.get(svc.url("/healthz"))).await;
    assert_eq!(status, 200, "health checks need no token");

    // The read-only views need a token too: an API or read token, as a bearer token or as
    // the password of Basic authentication (a browser's login prompt on the status page).
    use base64::Engine;
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("anyone:{password}"))
        )
    };
    for path in ["/", "/metrics"] {
        for refused in [
            None,
            Some("Bearer wrong".to_owned()),
            Some("Bearer reader-toke".to_owned()),
            Some(basic("wrong")),
        ] {
            let mut req = http.get(svc.url(path));
            if let Some(a) = &refused {
                req = req.header("authorization", a);
            }
            let res = req.send().await.expect("answer");
            assert_eq!(res.status(), 401, "{path} {refused:?}");
            let challenge = res
                .headers()
                .get("www-authenticate")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(challenge.starts_with("Basic realm="), "{path}: {challenge}");
            let body: Value = res.json().await.expect("json");
            assert!(
                !body.to_string().contains("docledger_"),
                "{path}: nothing of the view without a token: {body}"
            );
        }
        for granted in [
            "Bearer alpha-token".to_owned(),
            "Bearer reader-token".to_owned(),
            basic("beta-token"),
            basic("reader-token"),
        ] {
            let res = http
                .get(svc.url(path))
                .header("authorization", &granted)
                .send()
                .await
                .expect("answer");
            assert_eq!(res.status(), 200, "{path} {granted}");
        }
    }
    // A read token opens only the views.
    let (status, _) = send(
        http.get(svc.url("/v1/projections"))
            .bearer_auth("reader-token"),
    )
    .await;
    assert_eq!(status, 401, "a read token is not an API token");
    svc.stop().await;
}

#[actix_rt::test]
async fn batch_answers_each_line_in_order_and_a_bad_line_fails_alone() {
    let svc = TestService::start("api_batch", &[]).await;
    let http = reqwest::Client::new();
    let mut lines = Vec::new();
    for i in 0..5 {
        let mut l = doc_body(&format!("b{i}"), 1);
        l["op"] = json!("put");
        l["doc_id"] = json!(format!("batch/{i}"));
        lines.push(l.to_string());
    }
    lines.insert(2, "{not json".to_owned());
    lines.insert(
        3,
        json!({"op": "put", "doc_id": "bad id", "title": "t", "source_type": "s"}).to_string(),
    );
    lines.push(json!({"op": "delete", "doc_id": "batch/0"}).to_string());
    lines.push(json!({"op": "delete", "doc_id": "batch/never"}).to_string());
    lines.push(json!({"op": "upsert", "doc_id": "batch/9"}).to_string());
    let res = http
        .post(svc.url("/v1/documents:batch"))
        .body(lines.join("\n"))
        .send()
        .await
        .expect("batch");
    assert_eq!(res.status().as_u16(), 200);
    let out: Vec<Value> = res
        .text()
        .await
        .expect("text")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let statuses: Vec<u64> = out
        .iter()
        .map(|v| v["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 200, 400, 400, 200, 200, 200, 200, 404, 400]);
    let lines_no: Vec<u64> = out
        .iter()
        .map(|v| v["line"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(lines_no, (1..=10).collect::<Vec<u64>>());
    assert_eq!(out[2]["error"]["code"], "invalid_json");
    assert_eq!(out[3]["error"]["code"], "invalid_doc_id");
    assert_eq!(
        out[7]["result"]["version"], 2,
        "the delete of batch/0 is its version 2"
    );
    let (status, got) = send(http.get(svc.doc_url("batch/4", ""))).await;
    assert_eq!((status, got["title"].as_str()), (200, Some("b4")));
    svc.stop().await;
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(svc: &TestService, http: &reqwest::Client, name: &str) -> f64 {
    let (_, text) = send(http.get(svc.url("/metrics"))).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Deadlocks PostgreSQL broke in the log database at `log_url`, once the service using it
/// is stopped (a backend adds its count to `pg_stat_database` when it exits).
async fn deadlocks_once_closed(log_url: &str) -> i64 {
    let client = common::log::connect(log_url)
        .await
        .expect("connect to the log");
    let stats = "SELECT (SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND pid <> pg_backend_pid()),
                        (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database())";
    common::eventually(
        std::time::Duration::from_secs(30),
        "the service's connections to close",
        || async {
            let row = client.query_one(stats, &[]).await.ok()?;
            (row.get::<_, i64>(0) == 0).then_some(())
        },
    )
    .await;
    // The last backend's count may land just after it left pg_stat_activity.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    client
        .query_one(stats, &[])
        .await
        .expect("read pg_stat_database")
        .get(1)
}

/// Lines of different documents run together (their appends share group commits), while the
/// lines of one document apply in input order: each later line of a document expects the
/// version its earlier line made, so any reordering would answer 409.
#[actix_rt::test]
async fn batch_runs_documents_together_and_each_documents_lines_in_order() {
    const DOCS: usize = 40;
    let svc = TestService::start("api_batch_together", &[]).await;
    let http = reqwest::Client::new();
    let mut lines = Vec::new();
    for round in 0..3u64 {
        for d in 0..DOCS {
            let doc_id = format!("together/{d}");
            let line = match round {
                0 | 1 => {
                    let mut l = doc_body(&format!("{doc_id} round {round}"), 2);
                    l["op"] = json!("put");
                    l["doc_id"] = json!(doc_id);
                    if round == 1 {
                        l["expected_version"] = json!(1);
                    }
                    l
                }
                _ => json!({"op": "delete", "doc_id": doc_id, "expected_version": 2}),
            };
            lines.push(line.to_string());
        }
    }
    let groups_before = metric(&svc, &http, "docledger_log_append_groups_total").await;
    let grouped_before = metric(&svc, &http, "docledger_log_append_grouped_commands_total").await;
    let fallback_before = metric(&svc, &http, "docledger_log_append_fallback_commands_total").await;
    let res = http
        .post(svc.url("/v1/documents:batch"))
        .body(lines.join("\n"))
        .send()
        .await
        .expect("batch");
    assert_eq!(res.status().as_u16(), 200);
    let out: Vec<Value> = res
        .text()
        .await
        .expect("text")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(out.len(), 3 * DOCS);
    for (i, line) in out.iter().enumerate() {
        assert_eq!(line["line"], json!(i + 1), "results in input order");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["result"]["version"], json!(i / DOCS + 1), "{line}");
    }
    let groups = metric(&svc, &http, "docledger_log_append_groups_total").await - groups_before;
    let grouped =
        metric(&svc, &http, "docledger_log_append_grouped_commands_total").await - grouped_before;
    let fallback =
        metric(&svc, &http, "docledger_log_append_fallback_commands_total").await - fallback_before;
    println!("{grouped} commands in {groups} groups, {fallback} appended one by one");
    assert_eq!(
        (grouped as usize, fallback),
        (3 * DOCS, 0.0),
        "every line's append committed in a group statement (a group fell back to one by one \
         when its statement failed as a whole: before group appends locked their streams in \
         stream order, a deadlock with a projector's record did that about one run in six)"
    );
    assert!(
        groups < grouped,
        "{grouped} appends in {groups} groups: no two lines were in flight together"
    );
    let (status, got) = send(http.get(svc.doc_url("together/7", ""))).await;
    assert_eq!((status, &got["deleted"]), (200, &json!(true)));
    common::projections_caught_up(&http, &svc.url(""), std::time::Duration::from_secs(60)).await;
    let log_url = svc.config.eventstore_url.expose().to_owned();
    svc.stop().await;
    assert_eq!(
        deadlocks_once_closed(&log_url).await,
        0,
        "group appends and the projectors' records of the same documents never deadlock"
    );
}

#[actix_rt::test]
async fn openapi_describes_the_contract_and_ingest_sends_a_file() {
    let svc = TestService::start("api_openapi_ingest", &[]).await;
    let http = reqwest::Client::new();
    let (status, doc) = send(http.get(svc.url("/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/documents/{doc_id}",
        "/v1/documents:batch",
        "/v1/projections",
        "/v1/documents/{doc_id}/events",
        "/v1/documents/{doc_id}/retry",
        "/v1/compensations",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["PutBody"]["properties"]["chunks"].is_object());

    let dir = std::env::temp_dir().join(&svc.name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("docs.ndjson");
    let mut text = String::new();
    for i in 0..1200 {
        let mut l = doc_body(&format!("ingested {i}"), 1);
        l["op"] = json!("put");
        l["doc_id"] = json!(format!("ingest/{i}"));
        text.push_str(&l.to_string());
        text.push('\n');
    }
    text.push_str("{\"op\":\"put\",\"doc_id\":\"ingest/bad\"}\n");
    std::fs::write(&file, text).expect("write ndjson");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args([
            "ingest",
            file.to_str().expect("utf-8 path"),
            "--url",
            &svc.url(""),
        ])
        .output()
        .await
        .expect("run docledger ingest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1201 lines: 1200 accepted, 0 unchanged, 1 refused")
            && stdout.contains("invalid_json: 1"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused line makes ingest exit 1"
    );
    let (status, got) = send(http.get(svc.doc_url("ingest/1199", ""))).await;
    assert_eq!((status, got["version"].clone()), (200, json!(1)));
    std::fs::remove_dir_all(&dir).ok();
    svc.stop().await;
}

/// A store that refuses to be prepared (here S3, with a secret key the server does not know)
/// is retried, and `/v1/projections` says so with the store's error, instead of showing the
/// partitions idle; the other stores run and the log accepts commands meanwhile.
#[actix_rt::test]
async fn a_store_refusing_preparation_is_shown_retrying_with_its_error() {
    let svc = TestService::start(
        "api_refused_prepare",
        &[
            (
                "DOCLEDGER_S3_SECRET_KEY",
                "not-the-secret-key-of-this-store",
            ),
            ("DOCLEDGER_RETRY_BASE_MS", "20"),
            ("DOCLEDGER_RETRY_MAX_MS", "200"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let (status, _) = send(
        http.put(svc.doc_url("refused/a", ""))
            .json(&doc_body("t", 1)),
    )
    .await;
    assert_eq!(
        status, 200,
        "the log accepts commands while a store is down"
    );
    let projections = common::eventually(
        std::time::Duration::from_secs(60),
        "s3 shown retrying while mysql runs",
        || {
            let http = http.clone();
            let url = svc.url("/v1/projections");
            async move {
                let (_, p) = send(http.get(url)).await;
                let state = |name: &str| {
                    p.as_array()?
                        .iter()
                        .find(|s| s["name"] == name)
                        .map(|s| s["state"].clone())
                };
                (state("s3")? == json!("retrying") && state("mysql")? == json!("running"))
                    .then_some(p)
            }
        },
    )
    .await;
    let s3 = projections
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "s3"))
        .cloned()
        .unwrap_or_default();
    let error = s3["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("create bucket"), "{s3}");
    assert!(
        !error.contains("not-the-secret-key-of-this-store"),
        "the secret stays out of the status: {s3}"
    );
    svc.stop().await;
}

/// Every answer carries a request id (the client's when it sends a plain one, else a new
/// one), and the access log has one line per request with that id, its method, path and
/// status (the `serve` binary at `info`).
#[actix_rt::test]
async fn every_request_has_an_id_in_its_answer_and_in_the_access_log() {
    let (_env, name, vars) = common::service_vars("api_access_log", &[]);
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").to_string()
    };
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let mut server = common::spawn_serve_logged(&vars, &listen, &log, "info", &[]);
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    common::wait_ready(&http, &base, &log).await;

    let res = http
        .put(format!("{base}/v1/documents/access-1"))
        .header("x-request-id", "pipeline-run-42:doc-1")
        .json(&doc_body("t", 1))
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-request-id"],
        "pipeline-run-42:doc-1",
        "echoed"
    );
    let res = http
        .get(format!("{base}/v1/documents/access-1"))
        .header("x-request-id", "no spaces <allowed>")
        .send()
        .await
        .expect("get");
    let generated = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        generated.len() == 16 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "a bad id is replaced by a new one: {generated}"
    );
    let res = http
        .get(format!("{base}/v1/documents/access-missing"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
    let missing = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let _ = server.start_kill();
    let _ = server.wait().await;
    let text = std::fs::read_to_string(&log).expect("server log");
    let text = text.replace("\u{1b}[", "");
    for (id, method, path, status) in [
        (
            "pipeline-run-42:doc-1",
            "PUT",
            "/v1/documents/access-1",
            "200",
        ),
        (generated.as_str(), "GET", "/v1/documents/access-1", "200"),
        (
            missing.as_str(),
            "GET",
            "/v1/documents/access-missing",
            "404",
        ),
    ] {
        assert!(
            text.lines().any(|l| l.contains(id)
                && l.contains(method)
                && l.contains(path)
                && l.contains(status)),
            "no access log line for {id} {method} {path} {status}:\n{text}"
        );
    }
}
