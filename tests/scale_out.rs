//! Several `docledger serve` processes on one log are one service (issue 23): every answer
//! rests on the log's state, not on a document state another process has moved past.
//!
//! Each sequence first makes process A cache a document's state, then moves the document
//! through process B, then asks A something its stale cache would answer wrongly.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use serde_json::{json, Value};

fn body(title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "scale-out",
        "chunks": [{"text": title, "vector": vec![0.25; 8]}],
    })
}

fn doc_url(base: &str, doc: &str) -> String {
    format!("{base}/v1/documents/{doc}")
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn answers_rest_on_the_log_not_on_another_process_s_cache() {
    let cluster = Cluster::start(
        "scale_out_answers",
        2,
        &[("DOCLEDGER_VERIFY_INTERVAL_SECS", "0")],
    )
    .await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    let http = reqwest::Client::new();

    // The sequence: X through A, Y through B, X again through A.
    let doc = doc_url(&a, "stale-put");
    let (s, v) = send(http.put(&doc).json(&body("X"))).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = send(http.put(doc_url(&b, "stale-put")).json(&body("Y"))).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (s, v) = send(http.put(&doc).json(&body("X"))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["unchanged"].as_bool()),
        (Some(3), Some(false)),
        "X over Y is a change, not an equal put: {v}"
    );
    let (_, got) = send(http.get(doc_url(&b, "stale-put"))).await;
    assert_eq!(
        (got["title"].as_str(), got["version"].as_u64()),
        (Some("X"), Some(3)),
        "{got}"
    );

    // The same with an idempotency key: the wrong answer would be stored for good.
    let doc = doc_url(&a, "stale-idem");
    send(http.put(&doc).json(&body("X"))).await;
    send(http.put(doc_url(&b, "stale-idem")).json(&body("Y"))).await;
    for attempt in 0..2 {
        let (s, v) = send(
            http.put(&doc)
                .header("Idempotency-Key", "stale-idem-1")
                .json(&body("X")),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["version"].as_u64(), v["unchanged"].as_bool()),
            (Some(3), Some(false)),
            "attempt {attempt}: {v}"
        );
    }

    // GET through A shows what B wrote.
    let doc = doc_url(&a, "stale-get");
    send(http.put(&doc).json(&body("first"))).await;
    send(http.get(&doc)).await;
    send(http.put(doc_url(&b, "stale-get")).json(&body("second"))).await;
    let (_, got) = send(http.get(&doc)).await;
    assert_eq!(
        (got["title"].as_str(), got["version"].as_u64()),
        (Some("second"), Some(2)),
        "{got}"
    );

    // DELETE: A saw the document deleted; B put it again; A's DELETE is not a 404.
    let doc = doc_url(&a, "stale-delete");
    send(http.put(&doc).json(&body("one"))).await;
    let (s, _) = send(http.delete(&doc)).await;
    assert_eq!(s, 200);
    let (s, v) = send(http.put(doc_url(&b, "stale-delete")).json(&body("two"))).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(3)), "{v}");
    let (s, v) = send(http.delete(&doc)).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(4)), "{v}");
    // And the reverse: A saw it live, B deleted it: A's DELETE is a 404, its PUT version 3.
    let doc = doc_url(&a, "stale-live");
    send(http.put(&doc).json(&body("one"))).await;
    send(http.delete(doc_url(&b, "stale-live"))).await;
    let (s, v) = send(http.delete(&doc)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (s, v) = send(http.put(&doc).json(&body("one"))).await;
    assert_eq!(
        (s, v["version"].as_u64(), v["unchanged"].as_bool()),
        (200, Some(3), Some(false)),
        "a put after a deletion is a new version: {v}"
    );

    // expected_version: A saw version 1, B made it 2; A honours expected_version 2 and
    // refuses 1.
    let doc = doc_url(&a, "stale-expected");
    send(http.put(&doc).json(&body("one"))).await;
    send(http.put(doc_url(&b, "stale-expected")).json(&body("two"))).await;
    let mut with_expected = body("three");
    with_expected["expected_version"] = json!(2);
    let (s, v) = send(http.put(&doc).json(&with_expected)).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(3)), "{v}");
    send(http.put(doc_url(&b, "stale-expected")).json(&body("four"))).await;
    let (s, v) = send(http.delete(&doc).json(&json!({"expected_version": 3}))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("version_conflict")),
        "the document is at 4: {v}"
    );
    let (s, v) = send(http.delete(&doc).json(&json!({"expected_version": 4}))).await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(5)), "{v}");

    // retry: A saw version 1, B made it 2; a retry through A re-drives version 2.
    let doc = doc_url(&a, "stale-retry");
    send(http.put(&doc).json(&body("one"))).await;
    send(http.put(doc_url(&b, "stale-retry")).json(&body("two"))).await;
    cluster.caught_up(Duration::from_secs(60)).await;
    // Consistent and nothing open: unchanged, at the version B wrote.
    let (s, v) = send(http.post(format!("{doc}/retry"))).await;
    assert_eq!(
        (s, v["version"].as_u64(), v["unchanged"].as_bool()),
        (200, Some(2), Some(true)),
        "{v}"
    );
    // B deletes it; A's retry re-drives the deletion (not a conflict, not a put).
    send(http.delete(doc_url(&b, "stale-retry"))).await;
    let (s, v) = send(
        http.post(format!("{doc}/retry"))
            .query(&[("consistency", "applied")]),
    )
    .await;
    assert!(s == 200, "{s}: {v}");
    let (_, got) = send(http.get(&doc)).await;
    assert_eq!(got["deleted"], true, "{got}");
    drop(cluster);
}
