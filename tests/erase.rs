//! Erasure, through two real `serve` processes on one log: documents whose title,
//! attributes, chunk texts and blob carry a unique marker are erased (through the HTTP
//! endpoint of the process that did not write them, a batch line, and `docledger erase`),
//! while a bystander carrying a second marker stays. Then a full `pg_dump` of the log
//! database, a `mariadb-dump` of the catalogue, a query of every Milvus row and every S3
//! object hold the first marker zero times and the second one still; blob bytes the erased
//! document shared with a kept document stay; `docledger verify` proves the erasure; the
//! process whose cached actor still held the content answers `erased: true` without
//! content, and a later put there starts after the tombstone.

mod common;

use std::time::Duration;

use base64::Engine;
use common::cluster::{partitions_in, Cluster, FAST_LEASES};
use common::dumps::{milvus_rows, mysql_dump, occurrences, pg_dump, s3_objects};
use common::send;
use milvus::v2::prelude::{ListPersistentSegmentsRequest, SegmentState};
use serde_json::{json, Value};

const MARK: &str = "ERASEME7q3zx";
const KEEP: &str = "KEEPME9w2vy";

fn body(mark: &str, version: usize, blob: &[u8]) -> Value {
    json!({
        "title": format!("{mark} title v{version}"),
        "source_type": "pdf",
        "business_tag": "legal",
        "attributes": {"owner": format!("{mark} owner"), "v": version},
        "chunks": (0..3).map(|i| json!({
            "text": format!("{mark} chunk {i} of v{version}"),
            "vector": (0..8).map(|j| (i * 8 + j + version) as f32 / 100.0).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "blob": {
            "content_base64": base64::engine::general_purpose::STANDARD.encode(blob),
            "content_type": "text/plain",
        },
    })
}

fn doc_url(base: &str, doc_id: &str, rest: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(doc_id, percent_encoding::NON_ALPHANUMERIC);
    format!("{base}/v1/documents/{enc}{rest}")
}

async fn put(http: &reqwest::Client, base: &str, doc_id: &str, body: &Value) -> Value {
    let (status, answer) = send(http.put(doc_url(base, doc_id, "")).json(body)).await;
    assert_eq!(status, 200, "put {doc_id}: {answer}");
    answer
}

#[actix_rt::test]
async fn an_erased_document_leaves_no_trace_in_the_log_or_any_store() {
    let mut settings = FAST_LEASES.to_vec();
    settings.push(("DOCLEDGER_COMPACT_INTERVAL_SECS", "0"));
    let cluster = Cluster::start("erase", 2, &settings).await;
    let env = projections::testing::StoreEnv::require();
    let http = reqwest::Client::new();
    let (writer, eraser) = (cluster.base(0), cluster.base(1));

    // Bytes two documents share (no marker), and bytes only the secret's last version has.
    let shared = b"shared bytes of two documents, no marker here".to_vec();
    let secret_blob = format!("{MARK} the secret's own bytes {MARK}").into_bytes();

    // The secret: 22 versions through process 0 (its actor caches the content; 66 events,
    // so a snapshot holding the content is taken), the one before last with the shared
    // blob, the last with its own.
    for v in 1..=22 {
        let blob = if v == 22 { &secret_blob } else { &shared };
        put(&http, &writer, "secret", &body(MARK, v, blob)).await;
    }
    put(&http, &writer, "sharer", &body(KEEP, 1, &shared)).await;
    put(
        &http,
        &writer,
        "bystander",
        &body(KEEP, 1, format!("{KEEP} bytes").as_bytes()),
    )
    .await;
    for doc in ["secret-batch", "secret-cli"] {
        put(&http, &writer, doc, &body(MARK, 1, &secret_blob)).await;
    }
    cluster.caught_up(Duration::from_secs(120)).await;
    let log_before = pg_dump(&cluster.vars).await;
    assert!(
        occurrences(&log_before, MARK) > 0,
        "the marker is in the log before"
    );

    // Erase through the other process, right after one more version its projectors have
    // not applied yet.
    put(&http, &writer, "secret", &body(MARK, 23, &secret_blob)).await;
    let (status, erased) = send(http.post(doc_url(&eraser, "secret", ":erase"))).await;
    assert_eq!(status, 200, "erase: {erased}");
    let tombstone = erased["version"].as_u64().expect("version");
    assert_eq!(tombstone, 24, "{erased}");
    assert_eq!(
        erased["consistent"], true,
        "every store dropped it: {erased}"
    );

    // A batch line and the CLI erase the two others.
    let lines = common::batch_results(
        &http,
        &format!("{eraser}/v1/documents:batch?consistency=applied&timeout_ms=30000"),
        "{\"op\":\"erase\",\"doc_id\":\"secret-batch\"}\n".to_owned(),
    )
    .await;
    assert_eq!(lines[0]["status"], 200, "{lines:?}");
    let cli = common::docledger_command(&cluster.vars)
        .args(["erase", "secret-cli", "--url", &writer])
        .output()
        .await
        .expect("docledger erase runs");
    let cli_out = String::from_utf8_lossy(&cli.stdout).into_owned();
    assert!(
        cli.status.success(),
        "{cli_out}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        cli_out.contains("secret-cli: erased at version 2"),
        "{cli_out}"
    );

    // Unknown: 404, nothing appended. Erased again: unchanged.
    let (status, answer) = send(http.post(doc_url(&eraser, "never-seen", ":erase"))).await;
    assert_eq!(status, 404, "{answer}");
    let (status, again) = send(http.post(doc_url(&writer, "secret", ":erase"))).await;
    assert_eq!(
        (status, again["unchanged"].clone()),
        (200, json!(true)),
        "{again}"
    );
    let (status, answer) = send(http.post(doc_url(&writer, "secret", ""))).await;
    assert_eq!(status, 404, "a POST without the action: {answer}");

    cluster.caught_up(Duration::from_secs(120)).await;

    // The process whose actor held the content answers from the log.
    let (status, got) = send(http.get(doc_url(&writer, "secret", ""))).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (
            &got["deleted"],
            &got["erased"],
            &got["title"],
            &got["version"]
        ),
        (&json!(true), &json!(true), &Value::Null, &json!(tombstone)),
        "{got}"
    );
    let (_, events) = send(http.get(doc_url(&writer, "secret", "/events"))).await;
    let listed = events["events"].as_array().expect("events");
    assert_eq!(listed.len(), 23 * 3 + 1, "every event is listed: {events}");
    assert_eq!(occurrences(&events.to_string(), MARK), 0, "{events}");
    assert_eq!(listed[0]["type"], "BlobStored", "{}", listed[0]);
    assert_eq!(listed[0]["content_removed"], "erasure", "{}", listed[0]);
    assert_eq!(listed.last().expect("tombstone")["type"], "DocumentErased");

    // Nothing of the marker anywhere; the bystander and the shared bytes intact.
    let log = pg_dump(&cluster.vars).await;
    let catalogue = mysql_dump(&cluster.vars).await;
    let vectors = milvus_rows(&cluster.vars, &env).await;
    let objects = s3_objects(&cluster.vars, &env).await;
    for (what, dump) in [
        ("pg_dump of the log", &log),
        ("mariadb-dump", &catalogue),
        ("Milvus rows", &vectors),
        ("S3 objects", &objects),
    ] {
        assert_eq!(occurrences(dump, MARK), 0, "{what} still holds the marker");
        assert!(occurrences(dump, KEEP) > 0, "{what} lost the bystander");
    }
    assert!(
        occurrences(&log, std::str::from_utf8(&shared).expect("utf8")) > 0,
        "the bytes the secret shared with a kept document stay"
    );
    assert!(
        objects.contains("shared bytes of two documents"),
        "the sharer's object stays: {objects}"
    );

    // Verify proves it: the stores hold none of it, the log holds none of its content.
    let (code, report) = cluster.verify().await;
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("3 erased documents, 0 traces"), "{report}");
    // And the proof can fail: a snapshot of an erased version left behind is named.
    let log_db = common::log::connect(&cluster.vars["DOCLEDGER_EVENTSTORE_URL"])
        .await
        .expect("connect to the log");
    let plant = "INSERT INTO snapshots (stream_id, stream_version, state)
                 VALUES ('secret-cli', 3, '{\"version\": 1}')";
    log_db.execute(plant, &[]).await.expect("plant a snapshot");
    let (code, report) = cluster.verify().await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("log erasure secret-cli: snapshot at stream version 3"),
        "{report}"
    );
    // The document's own verification names it too, through either process; another
    // erased document's stays clean.
    for process in [&writer, &eraser] {
        let (_, got) = send(http.get(doc_url(process, "secret-cli", "?verify=true"))).await;
        let verification = &got["verification"];
        assert_eq!(verification["matches"], json!(false), "{got}");
        assert_eq!(
            verification["erasure_leaks"],
            json!(["snapshot at stream version 3"]),
            "{got}"
        );
        let (_, clean) = send(http.get(doc_url(process, "secret", "?verify=true"))).await;
        assert_eq!(
            (
                &clean["verification"]["matches"],
                &clean["verification"]["erasure_leaks"]
            ),
            (&json!(true), &json!([])),
            "{clean}"
        );
    }
    log_db
        .execute("DELETE FROM snapshots WHERE stream_id = 'secret-cli'", &[])
        .await
        .expect("remove it");

    // A later put through the process with the stale cache starts after the tombstone.
    let again = put(&http, &writer, "secret", &body("fresh", 1, b"fresh bytes")).await;
    assert_eq!(again["version"], tombstone + 1, "{again}");
    let (_, got) = send(http.get(doc_url(&eraser, "secret", ""))).await;
    assert_eq!(
        (&got["erased"], &got["deleted"]),
        (&json!(false), &json!(false)),
        "{got}"
    );
    assert_eq!(got["title"], "fresh title v1", "{got}");
}

/// While a store's projectors are paused, an erasure answers 202 after `timeout_ms` with the
/// stores' state, yet the log already holds none of the content; once they resume, the
/// store drops the document and the erasure completes.
#[actix_rt::test]
async fn an_erasure_waiting_on_a_paused_store_answers_202_with_the_log_already_clean() {
    let mut settings = FAST_LEASES.to_vec();
    settings.push(("DOCLEDGER_COMPACT_INTERVAL_SECS", "0"));
    let cluster = Cluster::start("erase_paused", 2, &settings).await;
    let http = reqwest::Client::new();
    let (a, b) = (cluster.base(0), cluster.base(1));
    put(
        &http,
        &a,
        "held",
        &body(MARK, 1, format!("{MARK} bytes").as_bytes()),
    )
    .await;
    cluster.caught_up(Duration::from_secs(120)).await;

    let (status, paused) = send(http.post(format!("{a}/v1/projections/milvus/pause"))).await;
    assert_eq!(status, 200, "{paused}");
    // The pause is asked of every process; each runner stops after its batch in flight.
    cluster
        .until(
            Duration::from_secs(60),
            "both Milvus partitions paused",
            || {
                let (http, bases) = (&http, [a.clone(), b.clone()]);
                async move {
                    let paused = partitions_in(http, &bases, "milvus", "paused").await?;
                    (paused.len() == 2).then_some(())
                }
            },
        )
        .await;
    let (status, erased) = send(http.post(doc_url(&b, "held", ":erase?timeout_ms=1500"))).await;
    assert_eq!(status, 202, "{erased}");
    assert_eq!(erased["version"], 2, "{erased}");
    assert_eq!(erased["consistent"], false, "{erased}");
    assert_eq!(
        erased["stores"]["milvus"], 1,
        "Milvus still holds version 1: {erased}"
    );
    assert_eq!(
        occurrences(&pg_dump(&cluster.vars).await, MARK),
        0,
        "the log holds none of the content before every store dropped it"
    );

    let (status, resumed) = send(http.post(format!("{b}/v1/projections/milvus/resume"))).await;
    assert_eq!(status, 200, "{resumed}");
    cluster.caught_up(Duration::from_secs(120)).await;
    let (_, got) = send(http.get(doc_url(&a, "held", ""))).await;
    assert_eq!(
        (&got["consistent"], &got["erased"]),
        (&json!(true), &json!(true)),
        "{got}"
    );
    let (code, report) = cluster.verify().await;
    assert_eq!(code, Some(0), "{report}");
    // The projector flushed the erasure before it counted as applied: the collection's one
    // version of `held` was only ever in a growing segment (Milvus seals an idle one after
    // minutes), and a flush persists it with the deletion, which Milvus' compaction applies.
    let milvus = common::milvus_client(&projections::testing::StoreEnv::require()).await;
    let segments = milvus
        .list_persistent_segments(
            ListPersistentSegmentsRequest::builder()
                .collection_name(cluster.vars["DOCLEDGER_MILVUS_COLLECTION"].as_str())
                .build()
                .expect("request"),
        )
        .await
        .expect("list persistent segments");
    let flushed: Vec<_> = segments
        .segments()
        .iter()
        .filter(|s| s.get_state() == SegmentState::Flushed)
        .map(|s| s.get_row_count())
        .collect();
    assert!(
        !flushed.is_empty(),
        "no flushed segment after the erasure: {segments:?}"
    );
}
