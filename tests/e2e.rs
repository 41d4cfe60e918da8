//! One document end to end through the HTTP API, with MySQL, Milvus and S3 read directly
//! (raw clients, not docledger's adapters) to check the store contract (docs/stores.md) after a put, a
//! replace with fewer chunks and no blob, and a delete.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::send;
use common::TestService;
use milvus::v2::prelude::*;
use mysql_async::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn vector(seed: f32) -> Vec<f32> {
    (0..8).map(|i| seed + i as f32 / 10.0).collect()
}

fn body(title: &str, chunks: &[&str], blob: Option<&[u8]>) -> Value {
    let mut b = json!({
        "title": title,
        "source_type": "pdf",
        "business_tag": "finance",
        "attributes": {"lang": "en"},
        "chunks": chunks.iter().enumerate().map(|(i, t)| json!({"text": t, "vector": vector(i as f32)})).collect::<Vec<_>>(),
    });
    if let Some(bytes) = blob {
        b["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "content_type": "application/pdf",
        });
    }
    b
}

struct RawStores {
    mysql: mysql_async::Pool,
    milvus: ClientV2,
    s3: aws_sdk_s3::Client,
    collection: String,
    bucket: String,
}

/// version, title, blob_key, blob_sha256, blob_size, chunk_count, status.
type RowColumns = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    i32,
    String,
);

#[derive(Debug, PartialEq)]
struct MysqlRow {
    version: i64,
    title: String,
    blob_key: Option<String>,
    blob_sha256: Option<String>,
    blob_size: Option<i64>,
    chunk_count: i32,
    status: String,
}

impl RawStores {
    async fn connect(svc: &TestService) -> RawStores {
        let mysql = mysql_async::Pool::new(
            mysql_async::Opts::from_url(svc.config.mysql_url.expose()).expect("mysql url"),
        );
        let milvus = common::milvus_client(&svc.env).await;
        let s3conf = aws_sdk_s3::config::Builder::new()
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
        RawStores {
            mysql,
            milvus,
            s3: aws_sdk_s3::Client::from_conf(s3conf),
            collection: svc.config.milvus_collection.clone(),
            bucket: svc.config.s3_bucket.clone(),
        }
    }

    async fn row(&self, doc_id: &str) -> Option<MysqlRow> {
        let mut conn = self.mysql.get_conn().await.expect("mysql conn");
        let r: Option<RowColumns> = conn
            .exec_first(
                "SELECT version, title, blob_key, blob_sha256, blob_size, chunk_count, CAST(status AS CHAR)
                 FROM documents WHERE doc_id = ?",
                (doc_id,),
            )
            .await
            .expect("select row");
        r.map(|r| MysqlRow {
            version: r.0,
            title: r.1,
            blob_key: r.2,
            blob_sha256: r.3,
            blob_size: r.4,
            chunk_count: r.5,
            status: r.6,
        })
    }

    /// `(pk, chunk_index, version, text, embedding)` of every row of the document.
    async fn chunks(&self, doc_id: &str) -> Vec<(String, i64, i64, String, Vec<f32>)> {
        let q = self
            .milvus
            .query(
                QueryRequest::builder()
                    .collection_name(self.collection.as_str())
                    .filter(format!("doc_id == \"{doc_id}\""))
                    .output_fields(["pk", "chunk_index", "version", "text", "embedding"])
                    .consistency_level(ConsistencyLevel::Strong)
                    .build()
                    .expect("query request"),
            )
            .await
            .expect("milvus query");
        let mut out: Vec<(String, i64, i64, String, Vec<f32>)> = q
            .results()
            .rows()
            .expect("rows")
            .map(|r| {
                (
                    r.get_str("pk").expect("pk").to_owned(),
                    r.get_i64("chunk_index").expect("chunk_index"),
                    r.get_i64("version").expect("version"),
                    r.get_str("text").expect("text").to_owned(),
                    r.get_float_vector("embedding").expect("embedding").to_vec(),
                )
            })
            .collect();
        out.sort_by_key(|c| c.1);
        out
    }

    /// `(bytes, metadata)` of the document's object.
    async fn object(
        &self,
        doc_id: &str,
    ) -> Option<(Vec<u8>, std::collections::HashMap<String, String>)> {
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(format!("docs/{doc_id}"))
            .send()
            .await
        {
            Ok(o) => {
                let meta = o.metadata().cloned().unwrap_or_default();
                let bytes = o.body.collect().await.expect("body").into_bytes().to_vec();
                Some((bytes, meta))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("get object: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
        }
    }
}

#[actix_rt::test]
async fn put_replace_delete_reach_every_store_exactly_as_the_contract_says() {
    let svc = TestService::start("e2e_put_replace_delete", &[]).await;
    let http = reqwest::Client::new();
    let doc = "reports/2026:Q3@finance/Report-1";
    let blob = b"%PDF-1.7 quarterly report bytes".to_vec();
    let sha = hex::encode(Sha256::digest(&blob));

    // Put: a blob, a row and three chunks.
    let (status, put) = send(
        http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=30000"))
            .json(&body(
                "Quarterly report",
                &["alpha", "beta", "gamma"],
                Some(&blob),
            )),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["version"], 1);
    assert_eq!(put["unchanged"], false);
    assert_eq!(put["consistent"], true, "{put}");
    assert_eq!(put["stores"], json!({"mysql": 1, "milvus": 1, "s3": 1}));

    let stores = RawStores::connect(&svc).await;
    let row = stores.row(doc).await.expect("row after put");
    assert_eq!(
        row,
        MysqlRow {
            version: 1,
            title: "Quarterly report".into(),
            blob_key: Some(format!("docs/{doc}")),
            blob_sha256: Some(sha.clone()),
            blob_size: Some(blob.len() as i64),
            chunk_count: 3,
            status: "ready".into(),
        }
    );
    let chunks = stores.chunks(doc).await;
    assert_eq!(chunks.len(), 3);
    for (i, (pk, index, version, text, embedding)) in chunks.iter().enumerate() {
        assert_eq!(pk, &format!("{doc}#{i}"));
        assert_eq!(*index, i as i64);
        assert_eq!(*version, 1);
        assert_eq!(text, ["alpha", "beta", "gamma"][i]);
        assert_eq!(embedding, &vector(i as f32));
    }
    let (bytes, meta) = stores.object(doc).await.expect("object after put");
    assert_eq!(bytes, blob);
    assert_eq!(meta.get("docledger-version").map(String::as_str), Some("1"));
    assert_eq!(meta.get("docledger-sha256"), Some(&sha));

    // The same put again changes nothing.
    let (status, again) = send(http.put(svc.doc_url(doc, "")).json(&body(
        "Quarterly report",
        &["alpha", "beta", "gamma"],
        Some(&blob),
    )))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["version"].clone(), again["unchanged"].clone()),
        (json!(1), json!(true))
    );
    // An answer to a command that did not create the document reads the stores' state.
    assert_eq!(
        again["stores"],
        json!({"mysql": 1, "milvus": 1, "s3": 1}),
        "{again}"
    );
    assert_eq!(again["consistent"], true, "{again}");

    // Replace: fewer chunks and no blob.
    let (status, replaced) = send(
        http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=30000"))
            .json(&body("Quarterly report (revised)", &["only"], None)),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["consistent"], true, "{replaced}");
    let row = stores.row(doc).await.expect("row after replace");
    assert_eq!(
        row,
        MysqlRow {
            version: 2,
            title: "Quarterly report (revised)".into(),
            blob_key: None,
            blob_sha256: None,
            blob_size: None,
            chunk_count: 1,
            status: "ready".into(),
        }
    );
    let chunks = stores.chunks(doc).await;
    assert_eq!(
        chunks.len(),
        1,
        "no chunk of version 1 may survive: {chunks:?}"
    );
    assert_eq!(
        (chunks[0].0.as_str(), chunks[0].2, chunks[0].3.as_str()),
        (format!("{doc}#0").as_str(), 2, "only")
    );
    assert!(
        stores.object(doc).await.is_none(),
        "a blob-less version has no object"
    );

    // GET shows the version and every store's applied version.
    let (status, got) = send(http.get(svc.doc_url(doc, ""))).await;
    assert_eq!(status, 200);
    assert_eq!(got["version"], 2);
    assert_eq!(got["stores"], json!({"mysql": 2, "milvus": 2, "s3": 2}));
    assert_eq!(got["consistent"], true);
    assert_eq!(got["chunk_count"], 1);

    // Delete removes it everywhere; a second delete is 404.
    let (status, deleted) =
        send(http.delete(svc.doc_url(doc, "?consistency=applied&timeout_ms=30000"))).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["version"], 3);
    assert_eq!(deleted["consistent"], true, "{deleted}");
    assert!(stores.row(doc).await.is_none());
    assert!(stores.chunks(doc).await.is_empty());
    assert!(stores.object(doc).await.is_none());
    let (status, err) = send(http.delete(svc.doc_url(doc, ""))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, got) = send(http.get(svc.doc_url(doc, ""))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (got["deleted"].clone(), got["version"].clone()),
        (json!(true), json!(3))
    );

    // The events endpoint lists the whole history without vectors or blob bytes.
    let (status, events) = send(http.get(svc.doc_url(doc, "/events"))).await;
    assert_eq!(status, 200);
    let types: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "BlobStored",
            "RowInserted",
            "VectorsIndexed",
            "RowInserted",
            "VectorsIndexed",
            "DocumentDeleted"
        ]
    );
    assert!(!events.to_string().contains("\"vector\""));

    // A command that creates a document is answered, once durable, with no store holding it
    // (nothing can before the append commits); the stores then catch up.
    let fresh = "reports/fresh";
    let (status, created) = send(http.put(svc.doc_url(fresh, "")).json(&body(
        "Fresh",
        &["one"],
        Some(&blob),
    )))
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        (
            created["version"].clone(),
            created["unchanged"].clone(),
            created["consistent"].clone()
        ),
        (json!(1), json!(false), json!(false))
    );
    assert_eq!(
        created["stores"],
        json!({"mysql": null, "milvus": null, "s3": null})
    );
    let (status, applied) = send(
        http.put(svc.doc_url(fresh, "?consistency=applied&timeout_ms=30000"))
            .json(&body("Fresh", &["one"], Some(&blob))),
    )
    .await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(
        applied["stores"],
        json!({"mysql": 1, "milvus": 1, "s3": 1}),
        "{applied}"
    );

    svc.stop().await;
}

#[actix_rt::test]
async fn ids_are_case_sensitive_and_bad_requests_change_nothing() {
    let svc = TestService::start("e2e_ids_and_refusals", &[]).await;
    let http = reqwest::Client::new();
    for (doc, title) in [("Report-1", "upper"), ("report-1", "lower")] {
        let (status, r) = send(
            http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=30000"))
                .json(&body(title, &["x"], Some(title.as_bytes()))),
        )
        .await;
        assert_eq!(status, 200, "{r}");
    }
    let stores = RawStores::connect(&svc).await;
    assert_eq!(stores.row("Report-1").await.expect("upper").title, "upper");
    assert_eq!(stores.row("report-1").await.expect("lower").title, "lower");
    assert_eq!(
        stores.object("Report-1").await.expect("upper object").0,
        b"upper"
    );

    let mut typo = body("t", &["x"], None);
    typo["titel"] = json!("typo");
    let bad_dim =
        json!({"title": "t", "source_type": "s", "chunks": [{"text": "x", "vector": [1.0, 2.0]}]});
    let cases = [
        (svc.doc_url("Report-1", ""), typo, 400, "invalid_json"),
        (svc.doc_url("Report-1", ""), bad_dim, 400, "invalid_field"),
        (
            svc.doc_url("Report-1", ""),
            json!({"title": "", "source_type": "s"}),
            400,
            "invalid_field",
        ),
        (
            svc.doc_url("Report-1", ""),
            json!({"title": "t", "source_type": "s", "expected_version": 7}),
            409,
            "version_conflict",
        ),
        (
            svc.url("/v1/documents/a%20b"),
            json!({"title": "t", "source_type": "s"}),
            400,
            "invalid_doc_id",
        ),
        (
            svc.doc_url("Report-1", "?consistency=eventually"),
            json!({"title": "t", "source_type": "s"}),
            400,
            "invalid_query",
        ),
    ];
    for (url, b, want_status, want_code) in cases {
        let (status, r) = send(http.put(&url).json(&b)).await;
        assert_eq!(
            (status, r["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{url}: {r}"
        );
    }
    let (status, r) = send(http.put(svc.doc_url("Report-1", "")).body("{not json")).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    // Nothing of that changed the document.
    let (_, got) = send(http.get(svc.doc_url("Report-1", ""))).await;
    assert_eq!(got["version"], 1);
    assert_eq!(got["title"], "upper");
    let (status, _) = send(http.get(svc.doc_url("never-seen", ""))).await;
    assert_eq!(status, 404);

    // The projections endpoint reports every store.
    let (status, p) = send(http.get(svc.url("/v1/projections"))).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = p
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["mysql", "milvus", "s3"]);
    common::projections_caught_up(&http, &svc.url(""), Duration::from_secs(30)).await;
    let metrics = http
        .get(svc.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("docledger_log_oldest_running_transaction_seconds "),
        "{metrics}"
    );
    assert!(
        metrics.contains("docledger_projection_lag_events{sink=\"milvus\",partition=\"1\"} 0"),
        "{metrics}"
    );
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Two puts committed; every refusal above was decided before the log was touched.
    assert_eq!(
        value("docledger_log_appends_total{outcome=\"committed\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        value("docledger_log_appends_total{outcome=\"conflict\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        value("docledger_log_append_duration_seconds_count"),
        2.0,
        "{metrics}"
    );
    for sink in ["mysql", "milvus", "s3"] {
        let changes = value(&format!(
            "docledger_projection_changes_total{{sink=\"{sink}\""
        ));
        assert_eq!(changes, 2.0, "{sink} wrote each document once: {metrics}");
        assert!(
            value(&format!(
                "docledger_projection_batches_total{{sink=\"{sink}\""
            )) >= 1.0
        );
    }
    assert_eq!(value("docledger_projection_parked_total"), 0.0);
    assert_eq!(value("docledger_compensations_open "), 0.0);
    svc.stop().await;
}

/// Batches each store's projectors have applied since they started, by store.
async fn batches_by_store(http: &reqwest::Client, svc: &TestService) -> Vec<(String, u64)> {
    let (status, p) = send(http.get(svc.url("/v1/projections"))).await;
    assert_eq!(status, 200, "{p}");
    p.as_array()
        .expect("array of stores")
        .iter()
        .map(|s| {
            let name = s["name"].as_str().expect("store name").to_owned();
            let partitions = s["partitions"].as_array().expect("partitions");
            let n = partitions
                .iter()
                .map(|p| p["batches"].as_u64().expect("batches"))
                .sum();
            (name, n)
        })
        .collect()
}

/// `DOCLEDGER_PROJECTOR_LINGER_MS`: after a batch that was not full, a projector reads again
/// no sooner than the linger after its previous read, so commands sent one by one are
/// applied in a few batches instead of one each; a command after a quiet spell is applied at
/// once. With the linger at 0, MySQL took 7 batches for the ten PUTs below.
#[actix_rt::test]
async fn single_puts_are_applied_together_within_the_linger_and_a_lone_one_at_once() {
    let svc = TestService::start(
        "e2e_linger",
        &[
            ("DOCLEDGER_PROJECTOR_LINGER_MS", "1500"),
            ("DOCLEDGER_PARTITIONS", "1"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // Every store prepared, its projectors running and idle.
    common::projections_caught_up(&http, &svc.url(""), Duration::from_secs(60)).await;

    // A quiet service: the lone PUT is applied without waiting for the linger.
    let started = Instant::now();
    let (status, put) = send(
        http.put(svc.doc_url("lone", "?consistency=applied&timeout_ms=1000"))
            .json(&body("lone", &["alpha"], Some(b"lone bytes"))),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["consistent"], true, "{put}");
    assert!(started.elapsed() < Duration::from_millis(1400));

    // Each store's projector now lingers 1.5 s after that batch; ten PUTs sent one by one
    // meanwhile are read together (two batches if the sending outlasts the linger).
    let before = batches_by_store(&http, &svc).await;
    for i in 0..10 {
        let (status, put) = send(
            http.put(svc.doc_url(&format!("one-by-one-{i}"), ""))
                .json(&body("one by one", &["alpha", "beta"], Some(b"bytes"))),
        )
        .await;
        assert_eq!(status, 200, "{put}");
    }
    for i in 0..10 {
        let url = svc.doc_url(&format!("one-by-one-{i}"), "");
        common::eventually(Duration::from_secs(30), "every PUT consistent", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let d: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (d["consistent"] == true).then_some(())
            }
        })
        .await;
    }
    let after = batches_by_store(&http, &svc).await;
    assert_eq!(after.len(), 3, "{after:?}");
    for ((store, b), (_, a)) in before.iter().zip(&after) {
        assert!(
            (1..=2).contains(&(a - b)),
            "{store}: {} batches for ten single PUTs within the linger",
            a - b
        );
    }
    svc.stop().await;
}
