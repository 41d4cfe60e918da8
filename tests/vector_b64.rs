//! Binary vectors on the wire (issue 28, point 1): a chunk's embedding as `vector_b64`
//! (base64 of little-endian float32) reaches Milvus bit for bit, by PUT and by batch line,
//! including the values a decimal round trip is most likely to disturb (negative zero,
//! subnormals, the extremes, random bit patterns); and every malformed form is refused with
//! `invalid_field`, changing nothing.

mod common;

use base64::Engine;
use common::TestService;
use projections::milvus::MilvusSink;
use rand::Rng;
use serde_json::{json, Value};

const DIM: usize = 8;

fn b64(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Finite float32 values: the awkward ones, then random bit patterns.
fn awkward_vectors(n: usize) -> Vec<Vec<f32>> {
    let mut rng = rand::rng();
    let mut out = vec![vec![
        -0.0,
        f32::from_bits(1),           // smallest subnormal
        f32::from_bits(0x807f_ffff), // largest negative subnormal
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        0.1,
        1.0 / 3.0,
    ]];
    while out.len() < n {
        out.push(
            (0..DIM)
                .map(|_| loop {
                    let v = f32::from_bits(rng.random::<u32>());
                    if v.is_finite() {
                        break v;
                    }
                })
                .collect(),
        );
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

async fn milvus_bits(svc: &TestService, doc: &str) -> Vec<Vec<u32>> {
    let sink = MilvusSink::connect(&svc.env.milvus(), &svc.config.milvus_collection, DIM)
        .await
        .expect("milvus");
    let mut rows = sink.rows_of(doc).await.expect("rows");
    rows.sort_by_key(|r| r.chunk_index);
    rows.iter().map(|r| bits(&r.embedding)).collect()
}

#[actix_rt::test]
async fn vector_b64_reaches_milvus_bit_for_bit_by_put_and_batch() {
    let svc = TestService::start("vector_b64", &[]).await;
    let http = reqwest::Client::new();
    let vectors = awkward_vectors(4);
    let chunks: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"text": format!("chunk {i}"), "vector_b64": b64(v)}))
        .collect();
    let res = http
        .put(svc.doc_url("b64/put", "?consistency=applied&timeout_ms=30000"))
        .json(&json!({"title": "t", "source_type": "s", "chunks": chunks}))
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let want: Vec<Vec<u32>> = vectors.iter().map(|v| bits(v)).collect();
    assert_eq!(milvus_bits(&svc, "b64/put").await, want);

    // A batch line, mixing both encodings in one document.
    let line = json!({
        "op": "put", "doc_id": "b64/line", "title": "t", "source_type": "s",
        "chunks": [
            {"text": "binary", "vector_b64": b64(&vectors[1])},
            {"text": "numbers", "vector": vec![0.5; DIM]},
        ],
    });
    let results = common::batch_results(
        &http,
        &svc.url("/v1/documents:batch?consistency=applied&timeout_ms=30000"),
        format!("{line}\n"),
    )
    .await;
    assert_eq!(results[0]["status"], 200, "{results:?}");
    assert_eq!(
        milvus_bits(&svc, "b64/line").await,
        vec![bits(&vectors[1]), bits(&[0.5; DIM])]
    );
    let (code, out) = {
        let out = common::docledger_command(&svc.vars)
            .arg("verify")
            .env("DOCLEDGER_LOG", "warn")
            .output()
            .await
            .expect("verify runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "verify compares the vectors' bits: {out}");
    svc.stop().await;
}

#[actix_rt::test]
async fn malformed_vector_b64_is_refused_and_changes_nothing() {
    let svc = TestService::start("vector_b64_refused", &[]).await;
    let http = reqwest::Client::new();
    let good = b64(&[0.25; DIM]);
    let nan = b64(&[0.25, 0.25, f32::NAN, 0.25, 0.25, 0.25, 0.25, 0.25]);
    let short = b64(&[0.25; DIM - 1]);
    for (chunk, says) in [
        (
            json!({"text": "t", "vector_b64": good, "vector": vec![0.25; DIM]}),
            "both",
        ),
        (json!({"text": "t"}), "needs vector or vector_b64"),
        (json!({"text": "t", "vector_b64": short}), "expected 32"),
        (
            json!({"text": "t", "vector_b64": "not base64!"}),
            "not base64",
        ),
        (json!({"text": "t", "vector_b64": nan}), "not a finite"),
        (json!({"text": "t", "vector_b64": 12}), "invalid type"),
    ] {
        let res = http
            .put(svc.doc_url("b64/refused", ""))
            .json(&json!({"title": "t", "source_type": "s", "chunks": [chunk]}))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status(), 400, "{chunk}");
        let body: Value = res.json().await.expect("json");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{chunk}: {body}");
        let line = json!({"op": "put", "doc_id": "b64/refused", "title": "t", "source_type": "s", "chunks": [chunk]});
        let results =
            common::batch_results(&http, &svc.url("/v1/documents:batch"), format!("{line}\n"))
                .await;
        assert_eq!(results[0]["status"], 400, "{line}: {results:?}");
    }
    let res = http
        .get(svc.doc_url("b64/refused", ""))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404, "nothing was accepted");
    svc.stop().await;
}
