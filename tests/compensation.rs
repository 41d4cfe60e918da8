//! Compensation end to end against the real stores: MySQL permanently refuses a version (a
//! CHECK constraint added to the test's own `documents` table), the runner parks it, the
//! compensator sends `RequestCompensation`, and the document is rolled back (or withdrawn
//! when its first version is refused) until every store holds the same version. Also: a
//! parked change left by a previous process is compensated after a restart, and the retry
//! endpoint re-drives a document.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{eventually, TestService};
use docledger::Stores;
use mysql_async::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(30);

fn body(title: &str, chunks: &[&str], blob: &[u8]) -> Value {
    json!({
        "title": title,
        "source_type": "pdf",
        "chunks": chunks.iter().enumerate()
            .map(|(i, t)| json!({"text": t, "vector": (0..8).map(|k| i as f32 + k as f32 / 10.0).collect::<Vec<_>>()}))
            .collect::<Vec<_>>(),
        "blob": {
            "content_base64": base64::engine::general_purpose::STANDARD.encode(blob),
            "content_type": "text/plain",
        },
    })
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request is answered");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_doc(svc: &TestService, doc_id: &str) -> Value {
    let (status, doc) = send(reqwest::Client::new().get(svc.doc_url(doc_id, ""))).await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// Waits until the document is consistent at `version` with nothing open.
async fn settled(svc: &TestService, doc_id: &str, version: u64) -> Value {
    eventually(
        WAIT,
        &format!("{doc_id} consistent at v{version}"),
        || async {
            let doc = get_doc(svc, doc_id).await;
            (doc["version"] == version
                && doc["consistent"] == true
                && doc["ready"] == true
                && doc["compensations"].as_array().is_some_and(Vec::is_empty))
            .then_some(doc)
        },
    )
    .await
}

async fn compensations_of(svc: &TestService, doc_id: &str) -> Vec<Value> {
    let (status, list) = send(
        reqwest::Client::new()
            .get(svc.url("/v1/compensations"))
            .query(&[("doc_id", doc_id)]),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["compensations"]
        .as_array()
        .expect("compensations array")
        .clone()
}

/// What each store holds for `doc_id`: (MySQL version/title/status, Milvus versions, S3
/// version/sha256).
async fn stores_hold(
    stores: &Stores,
    doc_id: &str,
) -> (
    Option<(u64, String, String)>,
    Vec<u64>,
    Option<(Option<u64>, Option<String>)>,
) {
    let row = stores
        .mysql
        .row(doc_id)
        .await
        .expect("mysql row")
        .map(|r| (r.version, r.title, r.status));
    let chunks = stores
        .milvus
        .rows_of(doc_id)
        .await
        .expect("milvus rows")
        .into_iter()
        .map(|c| c.version)
        .collect();
    let object = stores
        .s3
        .object(doc_id)
        .await
        .expect("s3 object")
        .map(|o| (o.version, o.sha256));
    (row, chunks, object)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[actix_rt::test]
async fn a_version_mysql_refuses_is_rolled_back_and_a_refused_first_version_is_withdrawn() {
    let svc = TestService::start("compensation_rollback", &[]).await;
    let client = reqwest::Client::new();
    let stores = Stores::connect(&svc.config).await.expect("stores connect");

    // v1 is accepted everywhere.
    let (status, r) = send(
        client
            .put(svc.doc_url("doc-1", "?consistency=applied&timeout_ms=20000"))
            .json(&body("good", &["a", "b"], b"good bytes")),
    )
    .await;
    assert_eq!((status, r["version"].clone()), (200, json!(1)), "{r}");

    // From now on MySQL refuses the title `poison`, permanently.
    let mut conn = stores.mysql.pool().get_conn().await.expect("mysql conn");
    conn.query_drop("ALTER TABLE documents ADD CONSTRAINT no_poison CHECK (title <> 'poison')")
        .await
        .expect("add check constraint");
    drop(conn);

    // v2 is accepted by the log, Milvus and S3, refused by MySQL: rolled back to v1 as v3.
    let (status, r) = send(client.put(svc.doc_url("doc-1", "")).json(&body(
        "poison",
        &["x", "y", "z"],
        b"poison bytes",
    )))
    .await;
    assert_eq!((status, r["version"].clone()), (200, json!(2)), "{r}");
    let doc = settled(&svc, "doc-1", 3).await;
    assert_eq!(doc["title"], "good", "{doc}");
    assert_eq!(doc["chunk_count"], 2, "{doc}");
    assert_eq!(doc["stores"], json!({"mysql": 3, "milvus": 3, "s3": 3}));
    let (row, chunks, object) = stores_hold(&stores, "doc-1").await;
    assert_eq!(row, Some((3, "good".to_owned(), "ready".to_owned())));
    assert_eq!(
        chunks,
        vec![3, 3],
        "two chunks, all at the rolled-back version"
    );
    assert_eq!(object, Some((Some(3), Some(sha(b"good bytes")))));

    let list = compensations_of(&svc, "doc-1").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let c = &list[0];
    assert_eq!(
        (&c["doc_id"], &c["store"], &c["version"], &c["state"]),
        (
            &json!("doc-1"),
            &json!("mysql"),
            &json!(2),
            &json!("resolved")
        ),
        "{c}"
    );
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no_poison")),
        "the reason names the refusal: {c}"
    );
    assert_eq!(c["resolved_version"], 3, "{c}");
    assert_eq!(c["resolution"], "rolled back to version 1 as 3", "{c}");
    // The log tells the story: the compensation request, then v1's state at v3.
    let (_, events) = send(client.get(svc.doc_url("doc-1", "/events"))).await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        &types[6..],
        [
            "CompensationRequested",
            "BlobStored",
            "RowInserted",
            "VectorsIndexed"
        ]
    );

    // A first version MySQL refuses: nothing to roll back to, withdrawn from every store.
    let (status, r) = send(client.put(svc.doc_url("doc-2", "")).json(&body(
        "poison",
        &["p"],
        b"first and refused",
    )))
    .await;
    assert_eq!((status, r["version"].clone()), (200, json!(1)), "{r}");
    let doc = settled(&svc, "doc-2", 2).await;
    assert_eq!(doc["deleted"], true, "{doc}");
    assert_eq!(stores_hold(&stores, "doc-2").await, (None, vec![], None));
    let list = compensations_of(&svc, "doc-2").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["resolution"],
        "withdrawn from every store at version 2"
    );

    // Retrying a consistent document changes nothing.
    let (status, r) = send(client.post(svc.doc_url("doc-1", "/retry"))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["version"].clone(), r["unchanged"].clone()),
        (json!(3), json!(true))
    );

    svc.stop().await;
}

#[actix_rt::test]
async fn a_parked_change_left_by_a_previous_process_is_compensated_after_restart() {
    let svc = TestService::start("compensation_restart", &[]).await;
    let client = reqwest::Client::new();
    for (title, blob) in [("first", b"one".as_slice()), ("second", b"two".as_slice())] {
        let (status, r) = send(
            client
                .put(svc.doc_url("doc-r", "?consistency=applied&timeout_ms=20000"))
                .json(&body(title, &["c"], blob)),
        )
        .await;
        assert_eq!(status, 200, "{r}");
    }
    // The process stops right after a store refused v2 and the runner parked it, before the
    // compensator ran: all that survives is the parked row.
    let svc_config = svc.config.clone();
    let log = docledger::eventlog::PgLog::connect(&svc_config.eventstore_url, 1)
        .await
        .expect("log connects");
    let svc = {
        svc.stop().await;
        let client = log.client().await.expect("log connection");
        client
            .execute(
                "INSERT INTO parked_changes (sink, stream_id, version, position, error)
                 VALUES ('milvus', 'doc-r', 2, 0, 'simulated refusal before a crash')",
                &[],
            )
            .await
            .expect("insert parked row");
        TestService::start_again(svc_config).await
    };
    let doc = settled(&svc, "doc-r", 3).await;
    assert_eq!(doc["title"], "first", "{doc}");
    let list = compensations_of(&svc, "doc-r").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["state"], "resolved");
    assert_eq!(list[0]["reason"], "simulated refusal before a crash");

    // Retry re-drives a document: its current state as a new version, everywhere.
    let client_log = log.client().await.expect("log connection");
    client_log
        .execute(
            "INSERT INTO parked_changes (sink, stream_id, version, position, error, needs_operator)
             VALUES ('s3', 'doc-r', 3, 0, 'left for an operator', true)",
            &[],
        )
        .await
        .expect("insert parked row");
    let (status, r) =
        send(client.post(svc.doc_url("doc-r", "/retry?consistency=applied&timeout_ms=20000")))
            .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["version"].clone(), r["consistent"].clone()),
        (json!(4), json!(true))
    );
    let doc = settled(&svc, "doc-r", 4).await;
    assert_eq!(doc["title"], "first", "{doc}");
    let list = compensations_of(&svc, "doc-r").await;
    assert!(list.iter().all(|c| c["state"] == "resolved"), "{list:?}");
    svc.stop().await;
}
