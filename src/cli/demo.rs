//! `docledger demo`: ingests generated documents end to end through the running service,
//! replaces one with fewer chunks and deletes another, then reads MySQL, Milvus and S3
//! directly and prints what each holds and whether all three agree with the log.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::dto::CommandResponse;
use crate::config::Config;
use crate::stores::Stores;

/// What one document should look like in the stores.
struct Expected {
    doc_id: String,
    version: u64,
    deleted: bool,
    chunks: Vec<String>,
    blob_sha256: Option<String>,
}

/// The demo's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoReport {
    /// Documents that match in every store.
    pub matching: usize,
    /// Human-readable mismatches.
    pub mismatches: Vec<String>,
}

fn generate(
    i: usize,
    dim: usize,
    chunks: usize,
    with_blob: bool,
) -> (serde_json::Value, Vec<String>, Option<String>) {
    let mut rng = rand::rng();
    let texts: Vec<String> = (0..chunks)
        .map(|c| format!("document {i} chunk {c}: {}", rng.random::<u64>()))
        .collect();
    let chunk_json: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| {
            let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            json!({"text": t, "vector": v})
        })
        .collect();
    let mut body = json!({
        "title": format!("Demo document {i}"),
        "source_type": "demo",
        "business_tag": "docledger-demo",
        "attributes": {"index": i, "generated": true},
        "chunks": chunk_json,
    });
    let mut sha = None;
    if with_blob {
        let bytes: Vec<u8> = (0..4096).map(|_| rng.random_range(b'a'..=b'z')).collect();
        sha = Some(hex::encode(Sha256::digest(&bytes)));
        body["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "content_type": "text/plain",
        });
    }
    (body, texts, sha)
}

/// Runs the demo against the service at `url`, reading the stores named in `config`.
///
/// # Errors
/// When the service or a store cannot be reached.
pub async fn run(
    config: &Config,
    url: &str,
    docs: usize,
    bearer: Option<String>,
) -> anyhow::Result<DemoReport> {
    let client = reqwest::Client::new();
    let base = url.trim_end_matches('/').to_owned();
    let started = Instant::now();
    // One command (`what` names it in errors), its answer once every store applied it.
    let send = |req: reqwest::RequestBuilder, what: String| {
        let req = match &bearer {
            Some(b) => req.header("authorization", b),
            None => req,
        };
        async move {
            let res = req.send().await.with_context(|| what.clone())?;
            let status = res.status();
            let text = res.text().await?;
            if !status.is_success() {
                bail!("{what} answered {status}: {text}");
            }
            Ok::<CommandResponse, anyhow::Error>(serde_json::from_str(&text)?)
        }
    };
    let doc_url = |doc_id: &str, rest: &str| {
        format!(
            "{base}/v1/documents/{}{rest}",
            percent_encoding::utf8_percent_encode(doc_id, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    const APPLIED: &str = "?consistency=applied&timeout_ms=60000";
    let put = |doc_id: String, body: serde_json::Value| {
        send(
            client.put(doc_url(&doc_id, APPLIED)).json(&body),
            format!("PUT {doc_id}"),
        )
    };

    let mut expected: Vec<Expected> = Vec::with_capacity(docs);
    let mut requests = Vec::with_capacity(docs);
    for i in 0..docs {
        let doc_id = format!("demo/doc-{i:05}");
        let (body, chunks, blob_sha256) = generate(i, config.vector_dim, 2 + i % 7, i % 5 != 4);
        expected.push(Expected {
            doc_id: doc_id.clone(),
            version: 0,
            deleted: false,
            chunks,
            blob_sha256,
        });
        requests.push(put(doc_id, body));
    }
    println!("ingesting {docs} documents through {base} ...");
    let results: Vec<anyhow::Result<CommandResponse>> =
        futures::stream::iter(requests).buffered(8).collect().await;
    let mut consistent_on_answer = 0;
    for (e, r) in expected.iter_mut().zip(results) {
        let r = r?;
        e.version = r.version;
        consistent_on_answer += usize::from(r.consistent);
    }
    println!(
        "ingested {docs} documents in {:.2}s; {consistent_on_answer} answered consistent in all three stores",
        started.elapsed().as_secs_f64()
    );

    if docs >= 2 {
        // Replace the first document with fewer chunks, delete the second, erase the third.
        let (body, chunks, sha) = generate(0, config.vector_dim, 1, true);
        let r = put(expected[0].doc_id.clone(), body).await?;
        expected[0].version = r.version;
        expected[0].chunks = chunks;
        expected[0].blob_sha256 = sha;
        println!(
            "replaced {} with 1 chunk (version {})",
            expected[0].doc_id, r.version
        );
        let r = send(
            client.delete(doc_url(&expected[1].doc_id, APPLIED)),
            format!("DELETE {}", expected[1].doc_id),
        )
        .await?;
        expected[1].version = r.version;
        expected[1].deleted = true;
        println!("deleted {} (version {})", expected[1].doc_id, r.version);
        if docs >= 3 {
            // Erase the third: no store holds it, and the log keeps none of its content.
            let r = send(
                client.post(doc_url(&expected[2].doc_id, ":erase?timeout_ms=60000")),
                format!("erase {}", expected[2].doc_id),
            )
            .await?;
            expected[2].version = r.version;
            expected[2].deleted = true;
            println!(
                "erased {} (version {}): no store holds it, the log keeps none of its content",
                expected[2].doc_id, r.version
            );
        }
    }

    let stores = Stores::connect(config).await?;
    let mut report = DemoReport {
        matching: 0,
        mismatches: Vec::new(),
    };
    let (mut rows, mut ready, mut vectors, mut objects) = (0usize, 0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    for e in &expected {
        let mut problems = check(&stores, e).await?;
        while !problems.is_empty() && Instant::now() < deadline {
            // Readiness is reported once the stores hold the version; give stragglers time.
            tokio::time::sleep(Duration::from_millis(200)).await;
            problems = check(&stores, e).await?;
        }
        if let Some(row) = stores.mysql.row(&e.doc_id).await? {
            rows += 1;
            ready += usize::from(row.status == "ready");
        }
        vectors += stores.milvus.rows_of(&e.doc_id).await?.len();
        objects += usize::from(stores.s3.object(&e.doc_id).await?.is_some());
        if problems.is_empty() {
            report.matching += 1;
        } else {
            report.mismatches.extend(problems);
        }
    }
    println!();
    println!("store   holds");
    println!("mysql   {rows} rows in `documents` ({ready} ready)");
    println!(
        "milvus  {vectors} chunk rows in `{}`",
        config.milvus_collection
    );
    println!(
        "s3      {objects} objects under s3://{}/docs/",
        config.s3_bucket
    );
    println!();
    if report.mismatches.is_empty() {
        println!("all three stores agree with the log for all {docs} documents");
    } else {
        println!("{} documents disagree:", docs - report.matching);
        for m in &report.mismatches {
            println!("  {m}");
        }
    }
    Ok(report)
}

async fn check(stores: &Stores, e: &Expected) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let id = &e.doc_id;
    let row = stores.mysql.row(id).await?;
    let mut chunks = stores.milvus.rows_of(id).await?;
    chunks.sort_by_key(|c| c.chunk_index);
    let object = stores.s3.object(id).await?;
    if e.deleted {
        if row.is_some() {
            problems.push(format!("{id}: deleted but MySQL still has its row"));
        }
        if !chunks.is_empty() {
            problems.push(format!(
                "{id}: deleted but Milvus still has {} chunks",
                chunks.len()
            ));
        }
        if object.is_some() {
            problems.push(format!("{id}: deleted but S3 still has its object"));
        }
        return Ok(problems);
    }
    match &row {
        None => problems.push(format!("{id}: MySQL has no row")),
        Some(r) => {
            if r.version != e.version
                || r.chunk_count as usize != e.chunks.len()
                || r.blob_sha256 != e.blob_sha256
            {
                problems.push(format!(
                    "{id}: MySQL row differs (version {} chunks {})",
                    r.version, r.chunk_count
                ));
            }
            if r.status != "ready" {
                problems.push(format!("{id}: MySQL row is {}", r.status));
            }
        }
    }
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    let want: Vec<&str> = e.chunks.iter().map(String::as_str).collect();
    if texts != want || chunks.iter().any(|c| c.version != e.version) {
        problems.push(format!(
            "{id}: Milvus holds {} chunks, expected {}",
            chunks.len(),
            e.chunks.len()
        ));
    }
    match (&object, &e.blob_sha256) {
        (None, None) => {}
        (Some(o), Some(sha)) if o.sha256.as_ref() == Some(sha) && o.version == Some(e.version) => {}
        (o, _) => problems.push(format!(
            "{id}: S3 object differs (present: {})",
            o.is_some()
        )),
    }
    Ok(problems)
}
