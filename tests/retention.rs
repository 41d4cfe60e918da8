//! Retention, through two real `serve` processes on one log that both run background
//! compaction passes, beside `docledger compact` processes killed with SIGKILL at random
//! moments: many documents with 20 versions each, every version's texts and blob carrying
//! their own markers, some documents deleted, one blob shared between documents, and new
//! versions that re-use bytes of versions being compacted while the passes run. Afterwards
//! a full `pg_dump` holds the markers of the kept versions only, nothing kept is lost, every
//! store rebuilt from the compacted log holds exactly what it held before, and `verify`
//! passes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::cluster::{Cluster, FAST_LEASES};
use common::dumps::{milvus_rows, occurrences, pg_dump, s3_objects};
use mysql_async::prelude::*;
use rand::Rng;
use serde_json::{json, Value};

/// Documents: more than one page of a retention pass (200).
const DOCS: usize = 230;
const VERSIONS: usize = 20;
/// Documents deleted after their last version.
const DELETED: [usize; 3] = [3, 77, 150];
/// Documents that get a 21st version, whose blob is the bytes of their first, while the
/// passes run.
const REUSED: [usize; 4] = [5, 80, 160, 229];

fn text_marker(d: usize, v: usize) -> String {
    format!("qT{d:03}v{v:02}q")
}

fn blob_marker(d: usize, v: usize) -> String {
    format!("qB{d:03}v{v:02}q")
}

fn doc_id(d: usize) -> String {
    format!("ret/{d:03}")
}

/// A document written by one process, then only by the other (see the test).
const STALE: usize = DOCS;

/// Document 0's blob at version 20 is document 1's at version 1 (shared bytes).
fn blob(d: usize, v: usize) -> String {
    match (d, v) {
        (0, 20) => format!("bytes of {}", blob_marker(1, 1)),
        _ => format!("bytes of {}", blob_marker(d, v)),
    }
}

fn line(d: usize, v: usize, blob_bytes: &str) -> String {
    let t = text_marker(d, v);
    json!({
        "op": "put",
        "doc_id": doc_id(d),
        "title": format!("{t} title"),
        "source_type": "txt",
        "attributes": {"marker": t},
        "chunks": (0..2).map(|i| json!({
            "text": format!("{t} chunk {i}"),
            "vector": (0..8).map(|j| (d + v + i + j) as f32 / 64.0).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "blob": {
            "content_base64": base64::engine::general_purpose::STANDARD.encode(blob_bytes),
            "content_type": "text/plain",
        },
    })
    .to_string()
}

async fn batch(http: &reqwest::Client, base: &str, lines: Vec<String>) {
    let answers = common::batch_results(
        http,
        &format!("{base}/v1/documents:batch"),
        lines.join("\n"),
    )
    .await;
    for a in &answers {
        assert_eq!(a["status"], 200, "{a}");
    }
}

/// `docledger compact --json` with the test's retention (3 versions, no days).
fn compact(cluster: &Cluster) -> tokio::process::Command {
    let mut command = common::docledger_command(&cluster.vars);
    command
        .args(["compact", "--json"])
        .env("DOCLEDGER_LOG", "warn")
        .kill_on_drop(true);
    command
}

/// A catalogue row: doc_id, version, title, attributes, blob sha256, chunks, status.
type Row = (String, i64, String, String, Option<String>, i32, String);

/// The catalogue's rows, without their write times.
async fn catalogue(cluster: &Cluster) -> Vec<String> {
    let pool = mysql_async::Pool::new(
        mysql_async::Opts::from_url(&cluster.vars["DOCLEDGER_MYSQL_URL"]).expect("mysql url"),
    );
    let mut conn = pool.get_conn().await.expect("mysql");
    let rows: Vec<Row> = conn
        .query(
            "SELECT doc_id, version, title, CAST(attributes AS CHAR), blob_sha256, chunk_count,
                    CAST(status AS CHAR) FROM documents ORDER BY doc_id",
        )
        .await
        .expect("select");
    drop(conn);
    pool.disconnect().await.expect("disconnect");
    rows.into_iter().map(|r| format!("{r:?}")).collect()
}

/// What every store holds: catalogue rows, Milvus rows, S3 objects.
async fn stores(
    cluster: &Cluster,
    env: &projections::testing::StoreEnv,
) -> (Vec<String>, String, String) {
    (
        catalogue(cluster).await,
        milvus_rows(&cluster.vars, env).await,
        s3_objects(&cluster.vars, env).await,
    )
}

#[actix_rt::test]
async fn compaction_keeps_what_retention_keeps_and_every_store_rebuilds_the_same() {
    let mut settings = FAST_LEASES.to_vec();
    settings.extend([
        ("DOCLEDGER_RETAIN_VERSIONS", "3"),
        ("DOCLEDGER_RETAIN_DAYS", "0"),
        // Both processes run passes of their own all along.
        ("DOCLEDGER_COMPACT_INTERVAL_SECS", "1"),
    ]);
    let cluster = Cluster::start("retention", 2, &settings).await;
    let env = projections::testing::StoreEnv::require();
    let http = reqwest::Client::new();
    let bases = [cluster.base(0), cluster.base(1)];

    for v in 1..=VERSIONS {
        let lines = (0..DOCS).map(|d| line(d, v, &blob(d, v))).collect();
        batch(&http, &bases[v % 2], lines).await;
    }
    // A document whose process 0 wrote versions 1-5 only: its actor there still holds the
    // state of version 5 when the passes fold versions 1-17 into one row.
    for v in 1..=VERSIONS {
        let base = &bases[usize::from(v > 5)];
        batch(&http, base, vec![line(STALE, v, &blob(STALE, v))]).await;
    }
    let deletes = DELETED
        .iter()
        .map(|d| json!({"op": "delete", "doc_id": doc_id(*d)}).to_string())
        .collect();
    batch(&http, &bases[0], deletes).await;
    cluster.caught_up(Duration::from_secs(300)).await;

    // Passes killed at random moments, while versions re-using compacted bytes arrive
    // through the other process and both processes run their own passes.
    let reuse = async {
        for d in REUSED {
            batch(&http, &bases[1], vec![line(d, VERSIONS + 1, &blob(d, 1))]).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let kills = async {
        let mut killed = 0;
        for _ in 0..6 {
            let mut child = compact(&cluster).spawn().expect("docledger compact starts");
            let wait = rand::rng().random_range(50..600);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if child.start_kill().is_ok() {
                killed += 1;
            }
            let _ = child.wait().await;
        }
        killed
    };
    let ((), killed) = tokio::join!(reuse, kills);
    assert!(killed > 0, "no pass was killed");
    cluster.caught_up(Duration::from_secs(300)).await;
    let out = compact(&cluster).output().await.expect("docledger compact");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    let again = compact(&cluster).output().await.expect("docledger compact");
    let again: Value = serde_json::from_slice(&again.stdout).expect("json report");
    assert_eq!(
        again["content_removed"],
        json!({"documents": 0, "events": 0, "blobs": 0}),
        "a pass after a complete one removes nothing (the first: {report})"
    );

    // The process whose actor holds version 5, cached inside the folded run, writes the
    // next version.
    let mut body: Value =
        serde_json::from_str(&line(STALE, VERSIONS + 1, "stale bytes")).expect("json");
    for routing in ["op", "doc_id"] {
        body.as_object_mut().expect("object").remove(routing);
    }
    let stale = http
        .put(format!("{}/v1/documents/ret%2F{STALE:03}", bases[0]))
        .json(&body)
        .send()
        .await
        .expect("put");
    let status = stale.status().as_u16();
    let answer: Value = stale.json().await.expect("json");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], VERSIONS as u64 + 1, "{answer}");
    cluster.caught_up(Duration::from_secs(300)).await;

    // The dump holds the kept versions' markers only.
    let dump = pg_dump(&cluster.vars).await;
    let mut wrong: BTreeMap<String, String> = BTreeMap::new();
    for d in 0..DOCS {
        let last = if REUSED.contains(&d) {
            VERSIONS + 1
        } else {
            VERSIONS
        };
        for v in 1..=last {
            let kept = !DELETED.contains(&d) && v + 3 > last;
            let text = occurrences(&dump, &text_marker(d, v)) > 0;
            if text != kept {
                wrong.insert(
                    text_marker(d, v),
                    format!("text present: {text}, kept: {kept}"),
                );
            }
            if (d, v) == (0, VERSIONS) || v > VERSIONS {
                continue; // bytes of another version (see `blob` and `REUSED`)
            }
            // Blob bytes stay while a kept version of any document refers to them.
            let blob_kept = kept
                || (REUSED.contains(&d) && v == 1)
                || (d == 1 && v == 1 && !DELETED.contains(&0));
            let bytes = occurrences(&dump, &blob_marker(d, v)) > 0;
            if bytes != blob_kept {
                wrong.insert(
                    blob_marker(d, v),
                    format!("bytes present: {bytes}, kept: {blob_kept}"),
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{} markers wrong: {wrong:?}", wrong.len());

    // The events list shows what retention removed.
    let (status, events) = {
        let res = http
            .get(format!("{}/v1/documents/ret%2F010/events", bases[1]))
            .send()
            .await
            .expect("events");
        (
            res.status().as_u16(),
            res.json::<Value>().await.expect("json"),
        )
    };
    assert_eq!(status, 200, "{events}");
    let removed: Vec<(u64, bool)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["data"]["version"].as_u64().expect("version"),
                e["content_removed"] == "retention",
            )
        })
        .collect();
    assert!(
        removed.iter().all(|(v, r)| *r == (*v <= 17)),
        "versions 1-17 lost their content, 18-20 kept it: {removed:?}"
    );

    // Every store rebuilt from the compacted log holds what it held.
    let (code, report) = cluster.verify().await;
    assert_eq!(code, Some(0), "{report}");
    let before = stores(&cluster, &env).await;
    let rebuild = common::docledger_command(&cluster.vars)
        .args(["rebuild", "all", "--url", &bases[0]])
        .env("DOCLEDGER_LOG", "warn")
        .output()
        .await
        .expect("docledger rebuild");
    let said = String::from_utf8_lossy(&rebuild.stdout).into_owned();
    assert!(
        rebuild.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    cluster.caught_up(Duration::from_secs(300)).await;
    let after = stores(&cluster, &env).await;
    let differ = |a: &str, b: &str| -> Vec<String> {
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(3)
            .map(|(x, y)| format!("before: {x}\n after: {y}"))
            .collect()
    };
    assert_eq!(before.0, after.0, "the catalogue after the rebuild: {said}");
    assert!(
        before.1 == after.1,
        "Milvus after the rebuild: {:?}",
        differ(&before.1, &after.1)
    );
    assert!(
        before.2 == after.2,
        "S3 after the rebuild: {:?}",
        differ(&before.2, &after.2)
    );
    assert_eq!(
        before.0.len(),
        DOCS + 1 - DELETED.len(),
        "with the stale document"
    );
    let (code, report) = cluster.verify().await;
    assert_eq!(code, Some(0), "{report}");
}
