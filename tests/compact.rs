//! The compaction pass of the log, through the real binary (`docledger compact`) beside a
//! running service: idempotency keys past their TTL are deleted, in pages, once each even
//! when two processes compact at the same time, and a key sent again after that is a new
//! request; a key still within its TTL keeps binding its request.

mod common;

use std::time::Duration;

use common::TestService;
use serde_json::{json, Value};

fn body(title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "pdf",
        "chunks": [{"text": format!("{title} chunk"), "vector": vec![0.25f32; 8]}],
    })
}

async fn put(svc: &TestService, doc: &str, key: &str, title: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(svc.doc_url(doc, ""))
        .header("Idempotency-Key", key)
        .json(&body(title))
        .send()
        .await
        .expect("put")
}

/// Runs `docledger compact --json` against the service's log (idempotency keys live an
/// hour, settled records a day).
async fn compact(svc: &TestService) -> Value {
    let out = common::docledger_command(&svc.vars)
        .args(["compact", "--json"])
        .env("DOCLEDGER_IDEMPOTENCY_TTL_SECS", "3600")
        .env("DOCLEDGER_RETAIN_DAYS", "1")
        .output()
        .await
        .expect("docledger compact runs");
    assert!(
        out.status.success(),
        "docledger compact failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// Puts `old-doc` with `old-key` and `fresh-doc` with `fresh-key`, then makes `old-key` two
/// hours old; returns a connection to the service's log.
async fn old_and_fresh_key(svc: &TestService) -> tokio_postgres::Client {
    for (doc, key) in [("old-doc", "old-key"), ("fresh-doc", "fresh-key")] {
        let res = put(svc, doc, key, "first").await;
        assert_eq!(res.status(), 200);
    }
    let log = common::log::connect(svc.config.eventstore_url.expose())
        .await
        .expect("connect to the log");
    log.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours' WHERE key = 'old-key'",
        &[],
    )
    .await
    .expect("age a key");
    log
}

/// Every idempotency key the log holds, in order.
async fn keys(log: &tokio_postgres::Client) -> Option<Vec<String>> {
    let rows = log
        .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

#[actix_rt::test]
async fn expired_idempotency_keys_are_deleted_once_and_then_bind_nothing() {
    let svc = TestService::start("compact_keys", &[("DOCLEDGER_COMPACT_INTERVAL_SECS", "0")]).await;
    // One key two hours old, and more old keys than one page of deletes holds.
    let log = old_and_fresh_key(&svc).await;
    log.execute(
        "INSERT INTO idempotency_keys (key, stream_id, request_hash, result, created_at)
         SELECT 'bulk-' || n, 'bulk', '\\x00', 'null', now() - interval '1 day'
         FROM generate_series(1, 25000) AS n",
        &[],
    )
    .await
    .expect("old keys");

    // Before the pass, the old key still binds its request.
    let res = put(&svc, "old-doc", "old-key", "second").await;
    assert_eq!(
        res.status(),
        400,
        "{}",
        res.text().await.unwrap_or_default()
    );

    // Two processes compact at once: every expired key is deleted, each by one of them.
    let (a, b) = tokio::join!(compact(&svc), compact(&svc));
    let expired = |r: &Value| r["idempotency_keys_expired"].as_u64().expect("a count");
    assert_eq!(expired(&a) + expired(&b), 25_001, "{a} {b}");
    assert_eq!(keys(&log).await.expect("read keys"), ["fresh-key"]);
    assert_eq!(
        expired(&compact(&svc).await),
        0,
        "nothing is left to expire"
    );

    // The expired key is a new request now; the fresh one still binds its own.
    let res = put(&svc, "old-doc", "old-key", "second").await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["version"], 2, "{answer}");
    let res = put(&svc, "fresh-doc", "fresh-key", "second").await;
    assert_eq!(
        res.status(),
        400,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let res = put(&svc, "fresh-doc", "fresh-key", "first").await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["version"], 1, "the first answer again: {answer}");
    svc.stop().await;
}

#[actix_rt::test]
async fn a_serving_process_expires_keys_in_the_background() {
    let svc = TestService::start(
        "compact_background",
        &[
            ("DOCLEDGER_COMPACT_INTERVAL_SECS", "1"),
            ("DOCLEDGER_IDEMPOTENCY_TTL_SECS", "3600"),
        ],
    )
    .await;
    let log = old_and_fresh_key(&svc).await;
    common::eventually(Duration::from_secs(30), "the expired key to go", || {
        let log = &log;
        async move { (keys(log).await? == ["fresh-key"]).then_some(()) }
    })
    .await;
    // /metrics counts the pass's removal and shows the log's size.
    let text = reqwest::get(svc.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let samples = common::metric_samples(&text);
    let value = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(value("docledger_compaction_removed_total"), 1.0, "{text}");
    assert!(value("docledger_compaction_passes_total") >= 1.0, "{text}");
    assert!(value("docledger_log_database_bytes") > 1e6, "{text}");
    svc.stop().await;
}

#[actix_rt::test]
async fn only_settled_old_compensations_below_a_version_every_store_held_are_pruned() {
    let svc = TestService::start(
        "compact_compensations",
        &[("DOCLEDGER_COMPACT_INTERVAL_SECS", "0")],
    )
    .await;
    for (key, title) in [("v1", "first"), ("v2", "second")] {
        let res = put(&svc, "doc", key, title).await;
        assert_eq!(res.status(), 200);
    }
    let log = common::log::connect(svc.config.eventstore_url.expose())
        .await
        .expect("connect to the log");
    common::eventually(Duration::from_secs(30), "version 2 ready", || {
        let log = &log;
        async move {
            let row = log
                .query_one(
                    "SELECT ready_version FROM streams WHERE stream_id = 'doc'",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 2).then_some(())
        }
    })
    .await;
    // What the compensator leaves alone: resolved ones, and one for the operator.
    for (error, version, resolved, resolved_version, needs_operator) in [
        (
            "old, settled, below v2",
            1i64,
            Some("10 days"),
            Some(2i64),
            false,
        ),
        ("recent, settled", 1, Some("2 hours"), Some(2), false),
        ("old, for the operator", 1, None, None, true),
        ("old, restoring v3", 1, Some("10 days"), Some(3), false),
        ("old, of the ready version", 2, Some("10 days"), None, false),
    ] {
        log.execute(
            "INSERT INTO parked_changes (sink, stream_id, version, position, error, parked_at,
                 resolved_at, resolution, resolved_version, needs_operator)
             VALUES ('milvus', 'doc', $1, 1, $2, now() - interval '11 days',
                 now() - $3::text::interval, 'restored', $4, $5)",
            &[
                &version,
                &error,
                &resolved,
                &resolved_version,
                &needs_operator,
            ],
        )
        .await
        .expect("a parked change");
    }
    let report = compact(&svc).await;
    assert_eq!(report["compensations_pruned"], 1, "{report}");
    let left: Vec<String> = log
        .query("SELECT error FROM parked_changes ORDER BY id", &[])
        .await
        .expect("read parked changes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left,
        [
            "recent, settled",
            "old, for the operator",
            "old, restoring v3",
            "old, of the ready version"
        ]
    );
    svc.stop().await;
}
