//! Crash cycles with the real binary (issue 8): `docledger serve` is killed with SIGKILL at
//! random moments and started again, at least 20 times, while workers send puts, replaces
//! and deletes, each with its own idempotency key and a title no other command uses.
//! Afterwards:
//! - `docledger verify` (the binary) exits 0: every store holds exactly the log's state;
//! - every acknowledged command is in the log exactly once (its key, its events);
//! - every unacknowledged command is wholly present (key and all its events) or wholly absent.
//!
//! `SOAK_CYCLES=N` runs N cycles instead (the soak variant).

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, service_vars, spawn_serve, wait_ready};
use docledger::config::Config;
use docledger::eventlog::PgLog;
use rand::Rng;
use serde_json::{json, Value};
use tokio::process::Command;

const DIM: usize = 8;
const CYCLES: usize = 20;
const WORKERS: usize = 6;
const DOCS_PER_WORKER: usize = 8;
/// How long a server lives before it is killed: uniformly in this range.
const LIFETIME_MS: std::ops::Range<u64> = 200..1200;

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// 200 with this version.
    Acked(u64),
    /// Answered with a refusal that changed nothing (404 of a delete of a deleted document).
    Refused(u16),
    /// No answer, or 5xx: may or may not have happened.
    Unknown,
}

#[derive(Clone, Debug)]
struct Sent {
    doc: String,
    key: String,
    /// Some(title) for a put, None for a delete.
    title: Option<String>,
    blob: bool,
    outcome: Outcome,
}

fn body(title: &str, chunks: usize, blob: bool) -> Value {
    use base64::Engine;
    let mut b = json!({
        "title": title,
        "source_type": "crash-cycles",
        "chunks": (0..chunks)
            .map(|i| json!({"text": format!("{title} chunk {i}"), "vector": vec![i as f32 + 0.75; DIM]}))
            .collect::<Vec<_>>(),
    });
    if blob {
        b["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(format!("{title} bytes")),
            "content_type": "text/plain",
        });
    }
    b
}

/// Sends commands for its own documents until `stop`, recording each outcome.
async fn worker(id: usize, base: String, stop: Arc<AtomicBool>, sent: Arc<Mutex<Vec<Sent>>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (doc_index, roll, chunks) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..DOCS_PER_WORKER),
                rng.random_range(0..100),
                rng.random_range(1..=4usize),
            )
        };
        let doc = format!("cycle/w{id}-d{doc_index}");
        let url = format!("{base}/v1/documents/{}", doc.replace('/', "%2F"));
        let key = format!("w{id}-c{n}");
        let (title, blob) = if roll < 80 {
            (Some(format!("{doc} command {key}")), roll % 2 == 0)
        } else {
            (None, false)
        };
        let request = match &title {
            Some(t) => http.put(&url).json(&body(t, chunks, blob)),
            None => http.delete(&url),
        };
        let outcome = match request.header("Idempotency-Key", &key).send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let v: Value = res.json().await.unwrap_or(Value::Null);
                match status {
                    200 => Outcome::Acked(v["version"].as_u64().expect("a version")),
                    404 if title.is_none() => Outcome::Refused(404),
                    s if s >= 500 => Outcome::Unknown,
                    s => panic!("{doc}: unexpected answer {s}: {v}"),
                }
            }
            Err(_) => Outcome::Unknown,
        };
        if outcome == Outcome::Unknown {
            // The server is down or dying: do not spin while it restarts.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent.lock().expect("lock").push(Sent {
            doc,
            key,
            title,
            blob,
            outcome,
        });
    }
}

#[actix_rt::test]
async fn sigkill_cycles_lose_no_acknowledged_command_and_converge() {
    let cycles = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES);
    let (_env, name, vars) = service_vars(
        "crash_cycles",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_RETRY_MAX_MS", "300"),
        ],
    );
    let config = Config::load(None, &vars).expect("valid configuration");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let server_log = std::env::temp_dir().join(format!("{name}.log"));
    let http = reqwest::Client::new();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut server = spawn_serve(&vars, &listen, &server_log);
    wait_ready(&http, &base, &server_log).await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(id, base.clone(), stop.clone(), sent.clone())))
        .collect();
    let started = Instant::now();
    for _ in 0..cycles {
        let lifetime = rand::rng().random_range(LIFETIME_MS);
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        server.start_kill().expect("SIGKILL");
        server.wait().await.expect("reap the killed server");
        server = spawn_serve(&vars, &listen, &server_log);
        wait_ready(&http, &base, &server_log).await;
    }
    let cycling = started.elapsed();
    // A little traffic on the last server, then stop the workers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    // Converge, then the binary's verify must pass.
    common::projections_caught_up(&http, &base, Duration::from_secs(120)).await;
    // Readiness is marked just after the projections' records: let the tracker finish.
    let verify = eventually(Duration::from_secs(30), "docledger verify to pass", || {
        let vars = &vars;
        async move {
            let out = Command::new(env!("CARGO_BIN_EXE_docledger"))
                .arg("verify")
                .env_remove("DOCLEDGER_CONFIG")
                .envs(vars)
                .env("DOCLEDGER_LOG", "warn")
                .output()
                .await
                .expect("docledger verify runs");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.code() == Some(0)).then_some(stdout)
        }
    })
    .await;
    server.start_kill().expect("SIGKILL");
    let _ = server.wait().await;

    // Every command against the log, read directly.
    let log = PgLog::connect(&config.eventstore_url, 2)
        .await
        .expect("log connects");
    let client = log.client().await.expect("log connection");
    let sent = sent.lock().expect("lock").clone();
    let (mut acked, mut unknown, mut present) = (0, 0, 0);
    for s in &sent {
        let key: Option<(String, Value)> = client
            .query_opt(
                "SELECT stream_id, result FROM idempotency_keys WHERE key = $1",
                &[&s.key],
            )
            .await
            .expect("read key")
            .map(|r| (r.get(0), r.get(1)));
        let events_of = |sql: &'static str, arg: String| {
            let client = &client;
            let doc = s.doc.clone();
            async move {
                client
                    .query(sql, &[&doc, &arg])
                    .await
                    .expect("read events")
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            }
        };
        // The events the command appended, found by its unique title (puts) or by the
        // version its key recorded (deletes).
        let own: Vec<(String, i64)> = match (&s.title, &key) {
            (Some(title), _) => {
                let rows = events_of(
                    "SELECT event_type, (payload->>'version')::bigint FROM events
                     WHERE stream_id = $1 AND event_type = 'RowInserted' AND payload->>'title' = $2",
                    title.clone(),
                )
                .await;
                assert!(
                    rows.len() <= 1,
                    "{}: put {} appended twice: {rows:?}",
                    s.doc,
                    s.key
                );
                match rows.first() {
                    Some((_, version)) => {
                        events_of(
                            "SELECT event_type, (payload->>'version')::bigint FROM events
                             WHERE stream_id = $1 AND (payload->>'version') = $2
                               AND event_type IN ('BlobStored', 'RowInserted', 'VectorsIndexed')",
                            version.to_string(),
                        )
                        .await
                    }
                    None => Vec::new(),
                }
            }
            (None, Some((_, result))) => match result["log_position"].as_i64() {
                Some(_) => {
                    events_of(
                        "SELECT event_type, (payload->>'version')::bigint FROM events
                         WHERE stream_id = $1 AND event_type = 'DocumentDeleted'
                           AND (payload->>'version') = $2",
                        result["version"].to_string(),
                    )
                    .await
                }
                None => Vec::new(),
            },
            (None, None) => Vec::new(),
        };
        let whole = match &s.title {
            Some(_) => {
                let types: Vec<&str> = own.iter().map(|(t, _)| t.as_str()).collect();
                let want: &[&str] = if s.blob {
                    &["BlobStored", "RowInserted", "VectorsIndexed"]
                } else {
                    &["RowInserted", "VectorsIndexed"]
                };
                let mut sorted = types.clone();
                sorted.sort_unstable();
                assert!(
                    own.is_empty() || sorted == want,
                    "{}: command {} is partly in the log: {own:?}",
                    s.doc,
                    s.key
                );
                !own.is_empty()
            }
            None => {
                if let Some((_, result)) = &key {
                    if result["log_position"].is_i64() {
                        assert_eq!(own.len(), 1, "{}: delete {}: {own:?}", s.doc, s.key);
                    }
                }
                key.is_some()
            }
        };
        assert_eq!(
            whole,
            key.is_some(),
            "{}: command {}'s key and events disagree (key {key:?}, events {own:?})",
            s.doc,
            s.key
        );
        match s.outcome {
            Outcome::Acked(version) => {
                acked += 1;
                assert!(
                    whole,
                    "{}: acknowledged command {} is not in the log",
                    s.doc, s.key
                );
                let recorded = key.as_ref().map(|(_, r)| r["version"].as_u64());
                assert_eq!(recorded, Some(Some(version)), "{}: {}", s.doc, s.key);
            }
            Outcome::Unknown => {
                unknown += 1;
                present += usize::from(whole);
            }
            Outcome::Refused(status) => {
                assert!(
                    !whole,
                    "{}: refused ({status}) command {} changed the log",
                    s.doc, s.key
                )
            }
        }
    }
    eprintln!(
        "crash cycles: {cycles} SIGKILLs in {cycling:?}, {} commands ({acked} acknowledged, \
         {unknown} unanswered of which {present} landed), verify: {}",
        sent.len(),
        verify.lines().next().unwrap_or("")
    );
    assert!(acked > 0, "no command was acknowledged");
}
