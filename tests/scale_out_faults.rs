//! Several `serve` processes under faults (issue 23): three processes behind a round-robin
//! TCP proxy take puts, replaces and deletes of a few shared documents from several clients
//! at once, while processes are killed (SIGKILL) and restarted, rolled one at a time (the
//! roll changes the partition count), and a rebuild of each store is requested.
//!
//! Every client retries a request until it gets an answer, with the same idempotency key, so
//! every write that committed is acknowledged exactly once. Afterwards, for every document:
//! the acknowledged writes have distinct versions, the newest one is the document's state in
//! the log and in all three stores field by field, a deleted document has nothing in any
//! store; `docledger verify` exits 0 and nothing is parked.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::cluster::{projections_at, Cluster, FAST_LEASES};
use projections::milvus::MilvusSink;
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::testing::StoreEnv;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

const DIM: usize = 8;
const DOCS: usize = 24;
const CLIENTS: usize = 4;

/// Accepts connections and sends each to the next backend that answers, round robin.
async fn round_robin(backends: Arc<Mutex<Vec<SocketAddr>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.lock().expect("backends").clone();
            let start = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for k in 0..backends.len() {
                    let target = backends[(start + k) % backends.len()];
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// What a put wrote, to compare with the stores.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    title: String,
    chunks: Vec<(String, Vec<f32>)>,
    blob: Option<Vec<u8>>,
}

/// An acknowledged write: the version it answered and what it wrote (None: a deletion).
#[derive(Clone, Debug)]
struct Ack {
    version: u64,
    wrote: Option<Written>,
}

fn content(doc: usize, client: usize, seq: usize) -> Written {
    let tag = format!("d{doc}-c{client}-s{seq}");
    let n = 1 + (client + seq) % 3;
    Written {
        title: format!("title {tag}"),
        chunks: (0..n)
            .map(|i| {
                let v = ((doc * 31 + client * 7 + seq * 3 + i) % 97) as f32 / 97.0;
                (format!("chunk {i} of {tag}"), vec![v; DIM])
            })
            .collect(),
        blob: seq
            .is_multiple_of(2)
            .then(|| format!("blob of {tag}").into_bytes()),
    }
}

fn put_body(w: &Written) -> Value {
    let mut b = json!({
        "title": w.title,
        "source_type": "faults",
        "attributes": {"marker": w.title},
        "chunks": w.chunks.iter().map(|(t, v)| json!({"text": t, "vector": v})).collect::<Vec<_>>(),
    });
    if let Some(bytes) = &w.blob {
        b["blob"] = json!({
            "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "content_type": "text/plain",
        });
    }
    b
}

/// Sends until an answer comes (a killed process cuts connections; 503 while a store or
/// the log is briefly unavailable), always with the same idempotency key.
async fn until_answered(make: impl Fn() -> reqwest::RequestBuilder, key: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match make().header("Idempotency-Key", key).send().await {
            Ok(res) if res.status().as_u16() != 503 => {
                let status = res.status().as_u16();
                return (status, res.json().await.unwrap_or(Value::Null));
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "{key}: no answer in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client_loop(
    http: reqwest::Client,
    base: String,
    client: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<BTreeMap<usize, Vec<Ack>>>>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // Overlapping documents: every client writes every document.
        let doc = (client * 5 + seq * 7) % DOCS;
        let url = format!("{base}/v1/documents/faults-{doc:02}");
        let key = format!("faults-{client}-{seq}");
        // Deletions one time in five; every other write a put of new content.
        let wrote = (!seq.is_multiple_of(5)).then(|| content(doc, client, seq));
        let (status, v) = match &wrote {
            None => until_answered(|| http.delete(&url), &key).await,
            Some(w) => {
                let body = put_body(w);
                until_answered(|| http.put(&url).json(&body), &key).await
            }
        };
        match status {
            200 if v["unchanged"] != true => {
                let version = v["version"].as_u64().expect("version");
                let ack = Ack { version, wrote };
                acks.lock().expect("acks").entry(doc).or_default().push(ack);
            }
            // Deleting a deleted document.
            404 if wrote.is_none() => {}
            // Lost the race twice to other writers: refused, nothing written.
            409 => assert_eq!(v["error"]["code"], "version_conflict", "{v}"),
            s => panic!("{key}: answered {s}: {v}"),
        }
    }
}

async fn request_rebuild(http: &reqwest::Client, base: &str, store: &str) {
    let (status, v) = until_answered(
        || http.post(format!("{base}/v1/projections/{store}/rebuild")),
        &format!("rebuild-{store}"),
    )
    .await;
    assert!(status == 202 || status == 409, "{store}: {status} {v}");
}

async fn rebuilds_done(http: &reqwest::Client, base: &str) -> Option<()> {
    for store in projections_at(http, base).await?.as_array()? {
        match store["rebuild"]["phase"].as_str() {
            None | Some("done") => {}
            Some("failed") => panic!("rebuild failed: {store}"),
            Some(_) => return None,
        }
    }
    Some(())
}

#[actix_rt::test]
async fn three_processes_under_kills_rolls_and_rebuilds_lose_nothing() {
    let mut cluster = Cluster::start("scale_out_faults", 3, FAST_LEASES).await;
    let backends: Vec<SocketAddr> = cluster
        .members
        .iter()
        .map(|m| m.listen.parse().expect("listen address"))
        .collect();
    let proxy = round_robin(Arc::new(Mutex::new(backends))).await;
    let base = format!("http://{proxy}");
    // One connection per request: each goes to the next process.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<BTreeMap<usize, Vec<Ack>>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client_loop(
                http.clone(),
                base.clone(),
                c,
                stop.clone(),
                acks.clone(),
            ))
        })
        .collect();

    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    pause(1500).await;
    // A SIGKILL, then a restart.
    cluster.kill(1).await;
    pause(1500).await;
    cluster.restart(1).await;
    request_rebuild(&http, &base, "milvus").await;
    pause(1000).await;
    // A rolling deploy that changes the partition count: each process in turn stops
    // gracefully and comes back with 3 partitions.
    for i in 0..3 {
        cluster.stop(i).await;
        cluster.set(i, "DOCLEDGER_PARTITIONS", "3");
        cluster.restart(i).await;
        pause(800).await;
        if i == 1 {
            request_rebuild(&http, &base, "mysql").await;
        }
    }
    cluster.kill(2).await;
    request_rebuild(&http, &base, "s3").await;
    pause(1000).await;
    cluster.restart(2).await;
    pause(1500).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    // Settle: rebuilds finished, projections caught up on every process.
    common::eventually(Duration::from_secs(180), "every rebuild to finish", || {
        rebuilds_done(&http, &base)
    })
    .await;
    cluster.caught_up(Duration::from_secs(120)).await;
    cluster
        .vars
        .insert("DOCLEDGER_PARTITIONS".into(), "3".into());

    let acks = acks.lock().expect("acks").clone();
    let total: usize = acks.values().map(Vec::len).sum();
    eprintln!("{total} acknowledged writes over {} documents", acks.len());
    assert!(total >= 30, "too few writes to mean anything: {total}");

    let vars = &cluster.vars;
    let mysql = MysqlSink::new(&vars["DOCLEDGER_MYSQL_URL"]).expect("mysql");
    let milvus = MilvusSink::connect(
        &StoreEnv::load().milvus(),
        &vars["DOCLEDGER_MILVUS_COLLECTION"],
        DIM,
    )
    .await
    .expect("milvus");
    let s3 = S3Sink::new(
        &vars["DOCLEDGER_S3_ENDPOINT"],
        &vars["DOCLEDGER_S3_ACCESS_KEY"],
        &vars["DOCLEDGER_S3_SECRET_KEY"],
        &vars["DOCLEDGER_S3_REGION"],
        &vars["DOCLEDGER_S3_BUCKET"],
    );
    for (doc, mut writes) in acks {
        let id = format!("faults-{doc:02}");
        writes.sort_by_key(|a| a.version);
        let versions: Vec<u64> = writes.iter().map(|a| a.version).collect();
        let mut distinct = versions.clone();
        distinct.dedup();
        assert_eq!(
            versions, distinct,
            "{id}: two acknowledged writes share a version"
        );
        let last = writes.last().expect("a write").clone();
        let (_, got) = until_answered(
            || http.get(format!("{base}/v1/documents/{id}")),
            &format!("get-{id}"),
        )
        .await;
        assert_eq!(
            got["version"].as_u64(),
            Some(last.version),
            "{id}: the newest acknowledged write is not the document's state: {got}"
        );
        let row = mysql.row(&id).await.expect("read mysql");
        let chunks = milvus.rows_of(&id).await.expect("read milvus");
        let object = s3.object(&id).await.expect("read s3");
        match &last.wrote {
            None => {
                assert_eq!(got["deleted"], true, "{id}: {got}");
                assert!(row.is_none(), "{id}: deleted, yet a row: {row:?}");
                assert!(chunks.is_empty(), "{id}: deleted, yet vectors: {chunks:?}");
                assert!(object.is_none(), "{id}: deleted, yet an object");
            }
            Some(w) => {
                let row = row.unwrap_or_else(|| panic!("{id}: no row"));
                assert_eq!((row.version, &row.title), (last.version, &w.title), "{id}");
                assert_eq!(row.attributes, json!({"marker": w.title}), "{id}");
                assert_eq!(row.chunk_count as usize, w.chunks.len(), "{id}");
                let stored: Vec<(String, Vec<f32>, u64)> = chunks
                    .iter()
                    .map(|c| (c.text.clone(), c.embedding.clone(), c.version))
                    .collect();
                let expected: Vec<(String, Vec<f32>, u64)> = w
                    .chunks
                    .iter()
                    .map(|(t, v)| (t.clone(), v.clone(), last.version))
                    .collect();
                assert_eq!(stored, expected, "{id}: Milvus");
                match &w.blob {
                    Some(bytes) => {
                        let object = object.unwrap_or_else(|| panic!("{id}: no object"));
                        assert_eq!(object.bytes.as_ref(), bytes.as_slice(), "{id}: S3 bytes");
                        assert_eq!(object.version, Some(last.version), "{id}: S3 version");
                    }
                    None => assert!(object.is_none(), "{id}: no blob, yet an object"),
                }
            }
        }
    }
    let (_, parked) = until_answered(
        || http.get(format!("{base}/v1/compensations")),
        "compensations",
    )
    .await;
    assert_eq!(
        parked["compensations"].as_array().map(Vec::len),
        Some(0),
        "nothing parked: {parked}"
    );
    let (code, out) = cluster.verify().await;
    assert_eq!(code, Some(0), "verify: {out}");
}
