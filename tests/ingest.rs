//! What a pipeline relies on (issue 26, points 4 to 6), against a real `serve` and the real
//! stores: `docledger ingest` through an HTTP front that answers 503 and cuts connections
//! after the service has applied a request (only the idempotency keys keep a line from
//! applying twice), standard input, tokens, refused lines reported by number, exit codes;
//! the document listing; the full sync, and no sync after a run that failed part way; a
//! batch that waits with `consistency=applied`.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::cluster::{Cluster, FAST_LEASES};
use common::TestService;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the front does with the n-th connection.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// Forward both ways.
    Pass,
    /// Answer 503 with `Retry-After: 1` without forwarding anything.
    Busy,
    /// Forward the request; forward this many bytes of the answer, then close both sides.
    CutAnswerAfter(usize),
    /// Forward one whole (chunked) answer, then close the connection.
    OneAnswer,
    /// Close at once.
    Close,
}

/// An HTTP front for the service: the connections' actions in order, then `rest`.
struct Front {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Front {
    async fn start(upstream: std::net::SocketAddr, script: Vec<Action>, rest: Action) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let script = Arc::new(Mutex::new(script.into_iter()));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let action = script.lock().expect("script").next().unwrap_or(rest);
                tokio::spawn(serve_one(client, upstream, action));
            }
        });
        Front { addr, connections }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_one(mut client: TcpStream, upstream: std::net::SocketAddr, action: Action) {
    match action {
        Action::Close => {}
        Action::Busy => {
            // Read the request's head so the client is not reset mid-send, then refuse.
            let mut head = [0u8; 1024];
            let _ = client.read(&mut head).await;
            let _ = client
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                )
                .await;
        }
        Action::Pass | Action::CutAnswerAfter(_) | Action::OneAnswer => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let mut sent = 0usize;
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let n = match action {
                    Action::CutAnswerAfter(limit) => n.min(limit.saturating_sub(sent)),
                    _ => n,
                };
                if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n;
                if let Action::OneAnswer = action {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(5).any(|w| w == b"0\r\n\r\n") {
                        break;
                    }
                }
            }
            up.abort();
        }
    }
}

fn put_body(doc: &str, title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "ingest-test",
        "chunks": [{"text": format!("{doc} {title}"), "vector": vec![0.5; 8]}],
    })
}

fn put_line(doc: &str, title: &str) -> Value {
    let mut line = put_body(doc, title);
    line["op"] = json!("put");
    line["doc_id"] = json!(doc);
    line
}

/// Runs `docledger ingest` with `args`, `stdin` on its standard input; (exit code, stdout,
/// stderr).
async fn ingest(svc: &TestService, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = common::docledger_command(&svc.vars)
        .arg("ingest")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docledger ingest starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("ingest runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(http: &reqwest::Client, svc: &TestService, doc: &str) -> Value {
    http.get(svc.doc_url(doc, ""))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// 300 lines without keys (puts, second puts, deletes) through a front whose first
/// connection answers 503 and whose second loses the answer after the service applied part
/// of the request: the run finishes, every document has exactly the versions of its lines.
#[actix_rt::test]
async fn ingest_sends_again_after_503_and_lost_answers_without_applying_twice() {
    let svc = TestService::start("ingest_retries", &[]).await;
    let front = Front::start(
        svc.addr,
        vec![Action::Busy, Action::CutAnswerAfter(3000)],
        Action::Pass,
    )
    .await;
    let mut lines = String::new();
    for round in ["first", "second"] {
        for i in 0..100 {
            lines.push_str(&put_line(&format!("r/{i}"), round).to_string());
            lines.push('\n');
        }
    }
    for i in 0..100 {
        lines.push_str(&json!({"op": "delete", "doc_id": format!("r/{i}")}).to_string());
        lines.push('\n');
        if i == 9 {
            break;
        }
    }
    let (code, out, err) = ingest(
        &svc,
        &["-", "--url", &front.url(), "--concurrency", "1"],
        &lines,
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("210 lines: 210 accepted, 0 unchanged, 0 refused"),
        "{out}\n{err}"
    );
    assert!(out.contains("requests sent again"), "{out}");
    assert!(front.connections.load(Ordering::SeqCst) >= 3);
    let http = reqwest::Client::new();
    for i in [0, 9] {
        let doc = get(&http, &svc, &format!("r/{i}")).await;
        assert_eq!(
            (doc["deleted"].as_bool(), doc["version"].as_u64()),
            (Some(true), Some(3)),
            "{doc}"
        );
    }
    for i in [10, 55, 99] {
        let doc = get(&http, &svc, &format!("r/{i}")).await;
        assert_eq!(doc["version"], 2, "one version per line, none twice: {doc}");
        assert_eq!(doc["title"], "second", "{doc}");
    }
    svc.stop().await;
}

/// Standard input and a token; a refused line is reported by number and id (exit 1); a
/// wrong token cannot run (exit 2) and changes nothing.
#[actix_rt::test]
async fn ingest_reports_refused_lines_and_says_how_the_run_ended() {
    let svc = TestService::start("ingest_codes", &[("DOCLEDGER_API_TOKENS", "right-token")]).await;
    let mut lines = String::new();
    lines.push_str(&format!("{}\n", put_line("c/one", "t")));
    lines.push_str(&format!("{}\n", put_line("c/two", "t")));
    let mut bad = put_line("c/bad", "t");
    bad["chunks"][0]["vector"] = json!([1.0, 2.0]);
    lines.push_str(&format!("{bad}\n\n"));
    lines.push_str(&format!("{}\n", put_line("c/four", "t")));
    let url = svc.url("");
    let (code, out, err) = ingest(
        &svc,
        &["-", "--url", &url, "--token", "right-token"],
        &lines,
    )
    .await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.contains("4 lines: 3 accepted, 0 unchanged, 1 refused"),
        "{out}"
    );
    assert!(
        err.contains("line 3 (doc_id c/bad): invalid_field"),
        "the refused line by number and id: {err}"
    );

    let (code, out, err) = ingest(
        &svc,
        &["-", "--url", &url, "--token", "wrong-token"],
        &format!("{}\n", put_line("c/five", "t")),
    )
    .await;
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("401"), "{err}");
    let http = reqwest::Client::new();
    let res = http
        .get(svc.doc_url("c/five", ""))
        .bearer_auth("right-token")
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
    svc.stop().await;
}

/// The listing pages in byte order and leaves deleted documents out unless asked; bad
/// queries are refused. Then a full sync: what the run did not name under the prefix goes,
/// nothing else; and a run that fails part way deletes nothing.
#[actix_rt::test]
async fn listing_pages_and_full_sync_deletes_only_after_a_finished_run() {
    let svc = TestService::start("ingest_sync", &[]).await;
    let http = reqwest::Client::new();
    for doc in ["kb/a", "kb/b", "kb/c", "kb/c/1", "kb0", "other/x"] {
        let res = http
            .put(svc.doc_url(doc, ""))
            .json(&put_body(doc, "v1"))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status(), 200);
    }
    let res = http
        .delete(svc.doc_url("kb/c/1", ""))
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let page = |query: &str| {
        let url = svc.url(&format!("/v1/documents{query}"));
        let http = http.clone();
        async move {
            let res = http.get(url).send().await.expect("list");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    let ids = |v: &Value| -> Vec<String> {
        v["documents"]
            .as_array()
            .expect("documents")
            .iter()
            .map(|d| d["doc_id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (s, first) = page("?prefix=kb/&limit=2").await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(ids(&first), ["kb/a", "kb/b"]);
    assert_eq!(first["next_after"], "kb/b");
    let (_, second) = page("?prefix=kb/&limit=2&after=kb/b").await;
    assert_eq!(
        ids(&second),
        ["kb/c"],
        "kb/c/1 is deleted, kb0 is not under kb/"
    );
    assert_eq!(second["next_after"], Value::Null);
    let (_, all) = page("?prefix=kb/&include_deleted=true").await;
    assert_eq!(ids(&all), ["kb/a", "kb/b", "kb/c", "kb/c/1"]);
    assert_eq!(all["documents"][3]["deleted"], true);
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?prefix=a%20b",
        "?after=/x",
        "?colour=red",
    ] {
        let (s, v) = page(bad).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }

    // A run that fails part way (its second request never gets through) deletes nothing.
    let front = Front::start(svc.addr, vec![Action::OneAnswer], Action::Close).await;
    let mut lines = String::new();
    for i in 0..600 {
        lines.push_str(&format!("{}\n", put_line(&format!("bulk/{i}"), "x")));
    }
    lines.push_str(&format!("{}\n", put_line("kb/a", "v2")));
    let (code, out, err) = ingest(
        &svc,
        &[
            "-",
            "--url",
            &front.url(),
            "--concurrency",
            "1",
            "--attempts",
            "2",
            "--sync-prefix",
            "kb/",
        ],
        &lines,
    )
    .await;
    assert_eq!(code, Some(2), "{out}\n{err}");
    let (_, after_failure) = page("?prefix=kb/").await;
    assert_eq!(
        ids(&after_failure),
        ["kb/a", "kb/b", "kb/c"],
        "nothing deleted"
    );

    // A run with a refused line deletes nothing either.
    let mut bad = put_line("kb/a", "v2");
    bad["chunks"][0]["vector"] = json!([1.0]);
    let url = svc.url("");
    let (code, out, err) = ingest(
        &svc,
        &["-", "--url", &url, "--sync-prefix", "kb/"],
        &format!("{bad}\n{}\n", put_line("kb/d", "v1")),
    )
    .await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("sync skipped: 1 lines were refused"), "{out}");
    let (_, after_refusal) = page("?prefix=kb/").await;
    assert_eq!(
        ids(&after_refusal),
        ["kb/a", "kb/b", "kb/c", "kb/d"],
        "nothing deleted"
    );

    let lines = format!("{}\n{}\n", put_line("kb/a", "v2"), put_line("kb/d", "v1"));
    let (code, out, err) =
        ingest(&svc, &["-", "--url", &url, "--sync-prefix", "kb/"], &lines).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("sync \"kb/\": 2 kept, 2 deleted, 0 changed since listed"),
        "{out}"
    );
    let (_, synced) = page("?prefix=kb").await;
    assert_eq!(ids(&synced), ["kb/a", "kb/d", "kb0"], "kb0 is outside kb/");
    let other = get(&http, &svc, "other/x").await;
    assert_eq!(other["deleted"], false);
    svc.stop().await;
}

/// `consistency=applied` on a batch: every line answers once its document is in every
/// store; an unknown query parameter is refused before any line runs.
#[actix_rt::test]
async fn a_batch_waits_for_its_documents_with_consistency_applied() {
    let svc = TestService::start(
        "ingest_batch_applied",
        &[("DOCLEDGER_PROJECTOR_LINGER_MS", "300")],
    )
    .await;
    let http = reqwest::Client::new();
    let body: String = (0..5)
        .map(|i| format!("{}\n", put_line(&format!("w/{i}"), "t")))
        .collect();
    let lines = common::batch_results(
        &http,
        &svc.url("/v1/documents:batch?consistency=applied&timeout_ms=30000"),
        body.clone(),
    )
    .await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(
            line["result"]["consistent"], true,
            "waited for every store: {line}"
        );
    }
    let doc = get(&http, &svc, "w/0").await;
    assert_eq!(doc["ready_version"], doc["version"], "{doc}");
    let refused = http
        .post(svc.url("/v1/documents:batch?consistency=applied&timeout=5"))
        .header("content-type", "application/x-ndjson")
        .body(format!("{}\n", put_line("w/never", "t")))
        .send()
        .await
        .expect("batch");
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "invalid_query", "{error}");
    let never = http
        .get(svc.doc_url("w/never", ""))
        .send()
        .await
        .expect("get");
    assert_eq!(never.status(), 404, "a refused batch ran no line");
    svc.stop().await;
}

/// A retry whose first attempt was applied is answered as the first attempt was, even when
/// the command would now be refused: a repeated delete is not 404, a repeated create-only
/// put is not 409. The same key for another request is still refused. Two processes on
/// one log, and each retry goes to the process that did not take the first attempt (its
/// actor never saw the document: it decides on the log's state, refuses, and finds the
/// key). A batch waiting with `consistency=applied` through either process sees the
/// documents the other process's projectors apply.
#[actix_rt::test]
async fn a_retry_whose_first_attempt_landed_gets_the_first_answer() {
    let cluster = Cluster::start("ingest_idempotent_refusal", 2, FAST_LEASES).await;
    let http = reqwest::Client::new();
    let url = |i: usize| format!("{}/v1/documents/k%2Fdoc", cluster.base(i));
    let mut create = put_body("k/doc", "t");
    create["expected_version"] = json!(0);
    let mut answers = Vec::new();
    for i in 0..2 {
        let res = http
            .put(url(i))
            .header("idempotency-key", "create-1")
            .json(&create)
            .send()
            .await
            .expect("put");
        answers.push((
            res.status().as_u16(),
            res.json::<Value>().await.expect("json"),
        ));
    }
    assert_eq!(answers[0].0, 200, "{:?}", answers[0].1);
    assert_eq!(
        answers[1].0, 200,
        "the retry of a create-only put: {:?}",
        answers[1].1
    );
    assert_eq!(answers[1].1["version"], answers[0].1["version"]);
    let mut deletes = Vec::new();
    for i in [1, 0] {
        let res = http
            .delete(url(i))
            .header("idempotency-key", "delete-1")
            .send()
            .await
            .expect("delete");
        deletes.push((
            res.status().as_u16(),
            res.json::<Value>().await.expect("json"),
        ));
    }
    assert_eq!(deletes[0].0, 200, "{:?}", deletes[0].1);
    assert_eq!(
        deletes[1].0, 200,
        "the retry of a delete: {:?}",
        deletes[1].1
    );
    assert_eq!(deletes[1].1["version"], 2);
    let other = http
        .delete(url(1))
        .header("idempotency-key", "create-1")
        .send()
        .await
        .expect("delete");
    assert_eq!(other.status(), 400, "a key is one request's");
    let unkeyed = http.delete(url(0)).send().await.expect("delete");
    assert_eq!(
        unkeyed.status(),
        404,
        "without a key, deleting twice is refused"
    );

    let body: String = (0..6)
        .map(|i| format!("{}\n", put_line(&format!("k/applied-{i}"), "t")))
        .collect();
    for i in 0..2 {
        let lines = common::batch_results(
            &http,
            &format!(
                "{}/v1/documents:batch?consistency=applied&timeout_ms=30000",
                cluster.base(i)
            ),
            body.replace("\"t\"", &format!("\"t{i}\"")),
        )
        .await;
        assert_eq!(lines.len(), 6);
        for line in &lines {
            assert_eq!(line["status"], 200, "{line}");
            assert_eq!(
                line["result"]["consistent"], true,
                "through process {i}: {line}"
            );
        }
    }
}
