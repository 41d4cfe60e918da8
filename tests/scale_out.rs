//! Several `docledger serve` processes on one log are one service (issue 23): every answer
//! rests on the log's state, not on a document state another process has moved past.
//!
//! Each sequence first makes process A cache a document's state, then moves the document
//! through process B, then asks A something its stale cache would answer wrongly.

mod common;

use std::time::Duration;

use common::cluster::{partitions_in, projections_at, Cluster, FAST_LEASES};
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

/// `rebuild` of the store in `GET /v1/projections` of `base`.
async fn rebuild_status(http: &reqwest::Client, base: &str, store: &str) -> Option<Value> {
    projections_at(http, base)
        .await?
        .as_array()?
        .iter()
        .find(|s| s["name"] == store)
        .map(|s| s["rebuild"].clone())
}

/// Partitions of `store` shown `state` by any of `bases`.
async fn wait_consistent(http: &reqwest::Client, base: &str, docs: &[String]) {
    for doc in docs {
        common::until_document(
            http,
            &doc_url(base, doc),
            Duration::from_secs(60),
            "the document to be consistent",
            |got| got["consistent"] == true,
        )
        .await;
    }
}

/// Pause, resume and rebuild asked of one process act on every partition of the store,
/// wherever it runs; a rebuild's progress shows on every process; a rebuild whose process
/// dies is finished by another one.
#[actix_rt::test]
async fn pause_resume_and_rebuild_act_on_every_process() {
    let mut cluster = Cluster::start("scale_out_control", 2, FAST_LEASES).await;
    let http = reqwest::Client::new();
    cluster.caught_up(Duration::from_secs(60)).await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    let bases = vec![a.clone(), b.clone()];
    // Each process owns some partitions (the setting: B owns one of Milvus' two).
    let running_a = partitions_in(&http, &bases[..1], "milvus", "running")
        .await
        .expect("status");
    let running_b = partitions_in(&http, &bases[1..], "milvus", "running")
        .await
        .expect("status");
    assert_eq!(
        running_a.len() + running_b.len(),
        2,
        "{running_a:?} {running_b:?}"
    );

    let docs: Vec<String> = (0..12).map(|i| format!("ctl-{i:02}")).collect();
    for (i, doc) in docs.iter().enumerate() {
        let base = &bases[i % 2];
        let (s, v) = send(http.put(doc_url(base, doc)).json(&body(doc))).await;
        assert_eq!(s, 200, "{v}");
    }
    wait_consistent(&http, &a, &docs).await;

    // Pause through A: both partitions stop, wherever they run.
    let (s, v) = send(http.post(format!("{a}/v1/projections/milvus/pause"))).await;
    assert_eq!(s, 200, "{v}");
    common::eventually(
        Duration::from_secs(10),
        "both Milvus partitions paused",
        || {
            let (http, bases) = (&http, &bases);
            async move {
                let paused = partitions_in(http, bases, "milvus", "paused").await?;
                (paused.len() == 2).then_some(())
            }
        },
    )
    .await;
    let paused_docs: Vec<String> = (0..6).map(|i| format!("ctl-paused-{i}")).collect();
    for (i, doc) in paused_docs.iter().enumerate() {
        send(http.put(doc_url(&bases[i % 2], doc)).json(&body(doc))).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for doc in &paused_docs {
        let (_, got) = send(http.get(doc_url(&b, doc))).await;
        assert_eq!(
            got["stores"]["milvus"],
            Value::Null,
            "paused, yet applied: {got}"
        );
    }
    // Resume through B: both partitions run again.
    let (s, v) = send(http.post(format!("{b}/v1/projections/milvus/resume"))).await;
    assert_eq!(s, 200, "{v}");
    wait_consistent(&http, &a, &paused_docs).await;

    // Rebuild through A while B owns a Milvus partition: it finishes, B shows its progress,
    // and documents put afterwards reach Milvus.
    let (s, v) = send(http.post(format!("{a}/v1/projections/milvus/rebuild"))).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = send(http.post(format!("{b}/v1/projections/milvus/rebuild"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("rebuild_running")),
        "one rebuild of a store at a time, cluster-wide: {v}"
    );
    let done = common::eventually(Duration::from_secs(120), "the rebuild to finish", || {
        let http = &http;
        let b = &b;
        async move {
            let status = rebuild_status(http, b, "milvus").await?;
            match status["phase"].as_str()? {
                "done" => Some(status),
                "failed" => panic!("rebuild failed: {status}"),
                _ => None,
            }
        }
    })
    .await;
    assert!(done["documents_done"].as_u64() >= Some(18), "{done}");
    let after: Vec<String> = (0..6).map(|i| format!("ctl-after-{i}")).collect();
    for (i, doc) in after.iter().enumerate() {
        send(http.put(doc_url(&bases[i % 2], doc)).json(&body(doc))).await;
    }
    wait_consistent(&http, &b, &after).await;

    // A rebuild whose process dies is finished by another: B is frozen, so A's rebuild of
    // S3 waits for B's partitions to pause; A is killed there; B, thawed, starts it over.
    cluster.signal(1, libc::SIGSTOP);
    let (s, v) = send(http.post(format!("{a}/v1/projections/s3/rebuild"))).await;
    assert_eq!(s, 202, "{v}");
    common::eventually(Duration::from_secs(30), "A's rebuild to wait for B", || {
        let (http, a) = (&http, &a);
        async move {
            let status = rebuild_status(http, a, "s3").await?;
            (status["phase"] == "pausing").then_some(())
        }
    })
    .await;
    cluster.kill(0).await;
    cluster.signal(1, libc::SIGCONT);
    let done = common::eventually(Duration::from_secs(120), "B to finish the rebuild", || {
        let (http, b) = (&http, &b);
        async move {
            let status = rebuild_status(http, b, "s3").await?;
            match status["phase"].as_str()? {
                "done" => Some(status),
                "failed" => panic!("rebuild failed: {status}"),
                _ => None,
            }
        }
    })
    .await;
    assert!(done["error"].is_null(), "{done}");
    cluster.restart(0).await;
    cluster.caught_up(Duration::from_secs(60)).await;
    let (code, out) = cluster.verify().await;
    assert_eq!(code, Some(0), "verify: {out}\n{}", cluster.logs());
}

/// A process whose runner fails fatally (its vector dimension is not the collection's) gives
/// the partition's lease back, and another process runs it: one misconfigured process never
/// stalls its share of the partitions for everyone.
#[actix_rt::test]
async fn a_runner_that_fails_fatally_gives_its_lease_back() {
    let mut cluster = Cluster::start("scale_out_fatal", 1, FAST_LEASES).await;
    let http = reqwest::Client::new();
    cluster.caught_up(Duration::from_secs(60)).await;
    let a = cluster.base(0);
    // B joins and takes its fair share (3 of the 6 leases), Milvus ones among them once it
    // held them all: its Milvus runners fail on the collection's dimension.
    let b = cluster.add(&[("DOCLEDGER_VECTOR_DIM", "16")]).await;
    let b = cluster.base(b);
    common::eventually(Duration::from_secs(30), "B to own a partition", || {
        let (http, b) = (&http, &b);
        async move {
            let owned = partitions_in(http, std::slice::from_ref(b), "mysql", "running")
                .await?
                .len()
                + partitions_in(http, std::slice::from_ref(b), "milvus", "failed")
                    .await?
                    .len()
                + partitions_in(http, std::slice::from_ref(b), "s3", "running")
                    .await?
                    .len();
            (owned > 0).then_some(())
        }
    })
    .await;
    let docs: Vec<String> = (0..16).map(|i| format!("fatal-{i:02}")).collect();
    for doc in &docs {
        let (s, v) = send(http.put(doc_url(&a, doc)).json(&body(doc))).await;
        assert_eq!(s, 200, "{v}");
    }
    // Both Milvus partitions end up running on A, and every document reaches Milvus.
    common::eventually(
        Duration::from_secs(60),
        "A to run both Milvus partitions",
        || {
            let (http, a) = (&http, &a);
            async move {
                let running =
                    partitions_in(http, std::slice::from_ref(a), "milvus", "running").await?;
                (running.len() == 2).then_some(())
            }
        },
    )
    .await;
    wait_consistent(&http, &a, &docs).await;
    drop(cluster);
}

/// One decision per parked change across processes, taken on the log's state: every process
/// runs a compensator, and two of them hold a document's actor at a version the third has
/// moved past when MySQL refuses that newer version.
#[actix_rt::test]
async fn every_parked_change_gets_one_compensation_decided_on_the_log() {
    let cluster = Cluster::start("scale_out_compensation", 3, FAST_LEASES).await;
    let http = reqwest::Client::new();
    let bases: Vec<String> = (0..3).map(|i| cluster.base(i)).collect();
    let docs: Vec<String> = (0..6).map(|i| format!("comp-{i}")).collect();
    for doc in &docs {
        let (s, v) = send(http.put(doc_url(&bases[0], doc)).json(&body("good"))).await;
        assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
        // Every process's actor of the document holds version 1.
        for base in &bases {
            send(http.get(doc_url(base, doc))).await;
        }
    }
    cluster.caught_up(Duration::from_secs(60)).await;
    // From now on MySQL refuses the title `poison`, permanently.
    let pool = mysql_async::Pool::new(
        mysql_async::Opts::from_url(&cluster.vars["DOCLEDGER_MYSQL_URL"]).expect("mysql url"),
    );
    let mut conn = pool.get_conn().await.expect("mysql");
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        "ALTER TABLE documents ADD CONSTRAINT no_poison CHECK (title <> 'poison')",
    )
    .await
    .expect("add check constraint");
    drop(conn);
    // Version 2 through one process each: the other two hold version 1.
    for (i, doc) in docs.iter().enumerate() {
        let (s, v) = send(http.put(doc_url(&bases[i % 3], doc)).json(&body("poison"))).await;
        assert_eq!((s, v["version"].as_u64()), (200, Some(2)), "{v}");
    }
    for doc in &docs {
        let got = common::until_document(
            &http,
            &doc_url(&bases[1], doc),
            Duration::from_secs(60),
            "the rollback",
            |got| got["version"] == 3 && got["consistent"] == true,
        )
        .await;
        assert_eq!(got["title"], "good", "{got}");
        let (_, list) = send(
            http.get(format!("{}/v1/compensations", bases[2]))
                .query(&[("doc_id", doc.as_str())]),
        )
        .await;
        let list = list["compensations"]
            .as_array()
            .expect("compensations")
            .clone();
        assert_eq!(list.len(), 1, "{doc}: {list:?}");
        assert_eq!(
            (&list[0]["state"], &list[0]["resolution"]),
            (&json!("resolved"), &json!("rolled back to version 1 as 3")),
            "{doc}: {list:?}"
        );
        let (_, events) = send(http.get(format!("{}/events", doc_url(&bases[0], doc)))).await;
        let requested = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "CompensationRequested")
            .count();
        assert_eq!(requested, 1, "{doc}: {events}");
    }
    pool.disconnect().await.expect("disconnect");
    drop(cluster);
}

/// A process cut off from the log (its connections stall, as in a network partition) gives
/// its leases up within the lease query timeout, its runners aborted: it stops counting as
/// an owner by itself, without waiting for the network to come back. Healed, it takes its
/// share again and every write made meanwhile through the other process lands.
#[actix_rt::test]
async fn a_process_cut_off_from_the_log_gives_its_leases_up_in_bounded_time() {
    let mut cluster = Cluster::start("scale_out_cutoff", 0, FAST_LEASES).await;
    let direct = cluster.vars["DOCLEDGER_EVENTSTORE_URL"].clone();
    let pg = common::proxy::Proxy::to_url(&direct).await;
    let a = cluster
        .add(&[("DOCLEDGER_EVENTSTORE_URL", pg.url_for(&direct).as_str())])
        .await;
    let b = cluster.add(&[]).await;
    cluster.caught_up(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let (base_a, base_b) = (cluster.base(a), cluster.base(b));
    let running_a = partitions_in(&http, std::slice::from_ref(&base_a), "mysql", "running")
        .await
        .expect("status");
    assert!(!running_a.is_empty(), "A owns a partition before the cut");

    pg.set(common::proxy::Fault::Drop);
    let cut = std::time::Instant::now();
    let log_a = cluster.members[a].log.clone();
    let gave_up = common::eventually(Duration::from_secs(10), "A to give its leases up", || {
        let log_a = log_a.clone();
        async move {
            std::fs::read_to_string(&log_a)
                .ok()?
                .contains("lease connection failed; giving up every lease")
                .then(|| cut.elapsed())
        }
    })
    .await;
    eprintln!("A gave its leases up {gave_up:?} after its log connections stalled");
    let docs: Vec<String> = (0..8).map(|i| format!("cutoff-{i}")).collect();
    for doc in &docs {
        let (s, v) = send(http.put(doc_url(&base_b, doc)).json(&body(doc))).await;
        assert_eq!(s, 200, "{v}");
    }
    pg.set(common::proxy::Fault::Pass);
    wait_consistent(&http, &base_b, &docs).await;
    cluster.caught_up(Duration::from_secs(60)).await;
    let (code, out) = cluster.verify().await;
    assert_eq!(code, Some(0), "verify: {out}");
}

/// The processes' /metrics summed as a dashboard sums them: every (store, partition) gauge
/// comes from exactly one process, its owner, and shows it running (a standby partition is
/// not reported as stopped, nor its lag counted twice); the histograms and counters of both
/// processes add up to exactly the work sent: each document's versions are written through
/// both processes in turn (the second through the process whose actor did not decide the
/// first), each command is timed once, each version made consistent is observed once.
#[actix_rt::test]
async fn two_processes_metrics_add_up_to_one_service() {
    let cluster = Cluster::start("scale_out_metrics", 2, FAST_LEASES).await;
    cluster.caught_up(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let docs: Vec<String> = (0..6).map(|i| format!("metered-{i}")).collect();
    for round in 0..2 {
        for (i, doc) in docs.iter().enumerate() {
            let base = cluster.base((i + round) % 2);
            let (s, v) = send(
                http.put(doc_url(&base, doc))
                    .json(&body(&format!("{doc} v{round}"))),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            wait_consistent(&http, &base, std::slice::from_ref(doc)).await;
        }
    }
    // One equal put: answered `unchanged`, timed as such.
    let (s, v) = send(
        http.put(doc_url(&cluster.base(1), &docs[0]))
            .json(&body(&format!("{} v1", docs[0]))),
    )
    .await;
    assert_eq!((s, v["unchanged"].as_bool()), (200, Some(true)), "{v}");
    cluster.caught_up(Duration::from_secs(60)).await;

    let mut all = Vec::new();
    for i in 0..2 {
        let text = http
            .get(format!("{}/metrics", cluster.base(i)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
        let samples = common::metric_samples(&text);
        let one = |name: &str| {
            samples
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value)
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert!(one("process_resident_memory_bytes") > 0.0);
        assert!(one("process_cpu_seconds_total") > 0.0);
        assert!(samples.iter().any(|s| s.name == "docledger_build_info"
            && s.labels
                .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))));
        common::assert_histograms_consistent(&samples);
        all.extend(samples);
    }
    let sum = |name: &str, labels: &[&str]| -> f64 {
        all.iter()
            .filter(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
            .map(|s| s.value)
            .sum()
    };
    let puts = (2 * docs.len()) as f64;
    assert_eq!(
        sum(
            "docledger_command_duration_seconds_count",
            &["command=\"put\"", "outcome=\"committed\""]
        ),
        puts
    );
    assert_eq!(
        sum(
            "docledger_command_duration_seconds_count",
            &["command=\"put\"", "outcome=\"unchanged\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "docledger_http_requests_total",
            &[
                "method=\"PUT\"",
                "route=\"/v1/documents/{doc_id}\"",
                "status=\"200\""
            ]
        ),
        puts + 1.0
    );
    // Each version waited for became consistent once, observed by one process.
    assert_eq!(sum("docledger_time_to_consistent_seconds_count", &[]), puts);
    for sink in ["mysql", "milvus", "s3"] {
        let label = format!("sink=\"{sink}\"");
        let batches = sum("docledger_projection_batches_total", &[&label]);
        assert!(batches >= 1.0, "{sink}");
        assert_eq!(
            sum(
                "docledger_projection_batch_duration_seconds_count",
                &[&label]
            ),
            batches,
            "{sink}: every batch timed once"
        );
    }

    let mut series: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    for s in &all {
        if s.name == "docledger_projection_running" || s.name == "docledger_projection_lag_events" {
            series
                .entry((s.name.clone(), s.labels.clone()))
                .or_default()
                .push(s.value);
        }
    }
    for name in [
        "docledger_projection_running",
        "docledger_projection_lag_events",
    ] {
        let of_name: Vec<_> = series.iter().filter(|((n, _), _)| n == name).collect();
        assert_eq!(
            of_name.len(),
            6,
            "{name}: 3 stores x 2 partitions: {series:?}"
        );
        for ((_, labels), values) in of_name {
            assert_eq!(
                values.len(),
                1,
                "{name}{{{labels}}} reported by both processes"
            );
            let want = if name.ends_with("running") { 1.0 } else { 0.0 };
            assert_eq!(values[0], want, "{name}{{{labels}}}");
        }
    }
    drop(cluster);
}
