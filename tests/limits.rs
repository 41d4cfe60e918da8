//! Limits that hold (issue 8), against the real service and stores: bodies over
//! `DOCLEDGER_MAX_BODY_BYTES` (413), documents over `DOCLEDGER_MAX_CHUNKS` (400), batch lines
//! over `DOCLEDGER_MAX_BATCH_LINE_BYTES` (a 413 line, the other lines go on), clients that
//! send their request too slowly (408 and the connection closed, while others are served),
//! `consistency=applied` waits beyond their maximum, and connections beyond
//! `DOCLEDGER_MAX_CONNECTIONS` (they wait until one closes). Misbehaving clients are raw TCP
//! connections; every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::{LogContents, TestService};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Slack on top of a configured timeout before a test calls the service late.
const MARGIN: Duration = Duration::from_secs(3);

fn put_line(doc_id: &str, num_chunks: usize) -> Value {
    json!({
        "op": "put",
        "doc_id": doc_id,
        "title": format!("title of {doc_id}"),
        "source_type": "note",
        "chunks": (0..num_chunks)
            .map(|i| json!({"text": format!("chunk {i}"), "vector": vec![i as f32; 8]}))
            .collect::<Vec<_>>(),
    })
}

fn put_body(doc_id: &str, num_chunks: usize) -> Value {
    let mut body = put_line(doc_id, num_chunks);
    let fields = body.as_object_mut().expect("an object");
    fields.remove("op");
    fields.remove("doc_id");
    body
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("the service answers");
    let status = res.status().as_u16();
    let text = res.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// `contents` without the documents `added`, which must be there.
fn without(mut contents: LogContents, added: &[&str]) -> LogContents {
    for doc in added {
        assert!(
            contents.events_per_stream.remove(*doc).is_some(),
            "{doc} should be in the log: {contents:?}"
        );
    }
    contents
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON result line"))
            .collect()
    }
}

/// A raw HTTP/1.1 connection, for clients that misbehave: it writes what it is told, when
/// it is told, and reads responses itself.
struct Raw {
    reader: OwnedReadHalf,
    writer: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
    started: Instant,
}

impl Raw {
    async fn connect(svc: &TestService) -> Raw {
        let stream = TcpStream::connect(svc.addr).await.expect("connect");
        let (reader, writer) = stream.into_split();
        Raw {
            reader,
            writer: Some(writer),
            buf: Vec::new(),
            started: Instant::now(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let writer = self.writer.as_mut().expect("the writer is still here");
        writer.write_all(bytes).await.expect("write");
    }

    /// Writes `pieces` one by one, `every` apart, in the background, until they run out or
    /// the server stops taking them.
    fn trickle(&mut self, pieces: Vec<Vec<u8>>, every: Duration) -> tokio::task::JoinHandle<()> {
        let mut writer = self.writer.take().expect("the writer is still here");
        tokio::spawn(async move {
            for piece in pieces {
                if writer.write_all(&piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
            // Keep the connection open (no FIN) as a stalled client would.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(writer);
        })
    }

    /// Reads more bytes; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.reader.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, if one arrives within `within`.
    async fn response(&mut self, within: Duration) -> Option<Response> {
        tokio::time::timeout(within, self.read_response())
            .await
            .ok()
            .flatten()
    }

    async fn read_response(&mut self) -> Option<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.drain(..head_end);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_owned())
        };
        let mut body = Vec::new();
        if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if !self.fill().await {
                    return None;
                }
            }
            body = self.buf.drain(..len).collect();
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("a chunk size");
                while self.buf.len() < line_end + 2 + size + 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        Some(Response { status, head, body })
    }

    /// True when the server closes the connection (end of stream or reset) within `within`;
    /// whatever it still sends is read and dropped.
    async fn closed_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async { while self.fill().await {} })
            .await
            .is_ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[actix_rt::test]
async fn oversized_bodies_chunk_lists_and_batch_lines_are_refused_and_append_nothing() {
    let svc = TestService::start(
        "limits_sizes",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_MAX_BODY_BYTES", "4096"),
            ("DOCLEDGER_MAX_CHUNKS", "3"),
            ("DOCLEDGER_MAX_BATCH_LINE_BYTES", "1024"),
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let (status, body) = send(
        http.put(svc.doc_url("limits/base", ""))
            .json(&put_body("limits/base", 2)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let before = svc.log_contents().await;

    // A body declared larger than the limit, and one that grows past it while it is read.
    let (status, body) = send(
        http.put(svc.doc_url("limits/large", ""))
            .header("content-type", "application/json")
            .body(format!(
                "{{\"title\":\"{}\",\"source_type\":\"s\"}}",
                "x".repeat(5000)
            )),
    )
    .await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"), "{body}");
    let mut raw = Raw::connect(&svc).await;
    raw.write(
        b"PUT /v1/documents/limits%2Fchunked HTTP/1.1\r\nHost: t\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    raw.write(&chunk(b"{\"title\":\"")).await;
    for _ in 0..5 {
        raw.write(&chunk(&[b'x'; 1000])).await;
    }
    let refused = raw
        .response(MARGIN)
        .await
        .expect("an answer before the body ends");
    assert_eq!(
        (refused.status, code(&refused.json())),
        (413, "payload_too_large"),
        "{refused:?}"
    );
    assert!(
        raw.closed_within(MARGIN).await,
        "the connection of a refused, unfinished chunked body is closed, not drained"
    );

    // More chunks than allowed: refused with its code; exactly the limit is fine.
    let (status, body) = send(
        http.put(svc.doc_url("limits/four", ""))
            .json(&put_body("limits/four", 4)),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_field"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 3")),
        "{body}"
    );
    let (status, body) = send(
        http.put(svc.doc_url("limits/three", ""))
            .json(&put_body("limits/three", 3)),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // consistency=applied waits at most 300 s: more is refused, the maximum is accepted.
    let (status, body) = send(
        http.put(svc.doc_url("limits/applied", "?consistency=applied&timeout_ms=300001"))
            .json(&put_body("limits/applied", 1)),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    let (status, body) = send(
        http.put(svc.doc_url("limits/applied", "?consistency=applied&timeout_ms=300000"))
            .json(&put_body("limits/applied", 1)),
    )
    .await;
    assert_eq!((status, &body["consistent"]), (200, &json!(true)), "{body}");

    // A batch: lines over the line limit (a whole one, one far larger than a read, and a
    // last one without newline) and over the chunk limit fail alone; the others land.
    let huge_line = |doc: &str, size: usize| {
        let mut line = put_line(doc, 1);
        line["title"] = json!("y".repeat(size));
        line.to_string()
    };
    let lines = [
        put_line("limits/b1", 1).to_string(),
        put_line("limits/b-four", 4).to_string(),
        huge_line("limits/b-huge", 2000),
        put_line("limits/b2", 3).to_string(),
        huge_line("limits/b-huger", 300_000),
        put_line("limits/b3", 1).to_string(),
        huge_line("limits/b-last", 1500),
    ];
    let res = http
        .post(svc.url("/v1/documents:batch"))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .expect("batch");
    assert_eq!(res.status().as_u16(), 200);
    let text = res.text().await.expect("batch answer");
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let got: Vec<(u64, u64, &str)> = results
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap_or_default(),
                r["status"].as_u64().unwrap_or_default(),
                code(r),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 200, ""),
            (2, 400, "invalid_field"),
            (3, 413, "payload_too_large"),
            (4, 200, ""),
            (5, 413, "payload_too_large"),
            (6, 200, ""),
            (7, 413, "payload_too_large"),
        ],
        "{text}"
    );
    assert!(
        results[2]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 1024 bytes")),
        "{text}"
    );

    let after = svc.log_contents().await;
    assert_eq!(
        without(
            after,
            &[
                "limits/three",
                "limits/applied",
                "limits/b1",
                "limits/b2",
                "limits/b3"
            ]
        ),
        before,
        "the log holds exactly the accepted documents"
    );
    svc.stop().await;
}

#[actix_rt::test]
async fn slow_clients_get_408_and_lose_their_connection_while_others_are_served() {
    let request_timeout = Duration::from_millis(1000);
    let body_timeout = Duration::from_millis(2000);
    let idle_timeout = Duration::from_millis(1000);
    let svc = TestService::start(
        "limits_slow",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_REQUEST_TIMEOUT_MS", "1000"),
            ("DOCLEDGER_BODY_TIMEOUT_MS", "2000"),
            ("DOCLEDGER_BODY_IDLE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let before = svc.log_contents().await;
    let pause = Duration::from_millis(200);

    // A head that trickles in, one header byte at a time.
    let slow_head = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(b"GET /healthz HTTP/1.1\r\n").await;
        let _writer = raw.trickle(
            b"X-Slow: abcdefghijklmnopqrstuvwxyz0123456789"
                .iter()
                .map(|b| vec![*b])
                .collect(),
            pause,
        );
        let res = raw.response(request_timeout + MARGIN).await;
        let elapsed = raw.started.elapsed();
        assert_eq!(
            res.as_ref().map(|r| r.status),
            Some(408),
            "slow head: {res:?}"
        );
        // The HTTP server's timers run on a clock it refreshes every 500 ms.
        assert!(
            elapsed >= request_timeout - Duration::from_millis(500),
            "slow head answered after {elapsed:?}"
        );
        assert!(
            raw.closed_within(MARGIN).await,
            "slow head: connection closed"
        );
        elapsed
    };

    // A declared body that trickles in fast enough for the idle timeout, too slowly for the
    // whole-body deadline.
    let slow_body = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(
            b"PUT /v1/documents/limits%2Fslow HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n",
        )
        .await;
        let _writer = raw.trickle(vec![b"{\"title\":\"".to_vec(); 100], pause);
        let res = raw
            .response(body_timeout + MARGIN)
            .await
            .expect("slow body: an answer");
        let elapsed = raw.started.elapsed();
        assert_eq!(
            (res.status, code(&res.json())),
            (408, "request_timeout"),
            "slow body: {res:?}"
        );
        assert!(
            elapsed >= body_timeout,
            "slow body answered after {elapsed:?}"
        );
        assert!(
            raw.closed_within(MARGIN).await,
            "slow body: connection closed"
        );
        elapsed
    };

    // A body that stops arriving.
    let stalled_body = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(
            b"PUT /v1/documents/limits%2Fstalled HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"title\"",
        )
        .await;
        let res = raw
            .response(idle_timeout + MARGIN)
            .await
            .expect("stalled body: an answer");
        let elapsed = raw.started.elapsed();
        assert_eq!(
            (res.status, code(&res.json())),
            (408, "request_timeout"),
            "stalled body: {res:?}"
        );
        assert!(
            elapsed >= idle_timeout,
            "stalled body answered after {elapsed:?}"
        );
        assert!(
            raw.closed_within(MARGIN).await,
            "stalled body: connection closed"
        );
        elapsed
    };

    // A chunked body trickling in: actix would drain it after the answer; it must not.
    let chunked_body = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(
            b"PUT /v1/documents/limits%2Fchunked HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await;
        let _writer = raw.trickle(vec![chunk(b"     "); 150], pause);
        let res = raw
            .response(body_timeout + MARGIN)
            .await
            .expect("chunked body: an answer");
        let elapsed = raw.started.elapsed();
        assert_eq!(
            (res.status, code(&res.json())),
            (408, "request_timeout"),
            "chunked body: {res:?}"
        );
        assert!(
            res.head.contains("connection: close"),
            "chunked body: the answer announces the close: {res:?}"
        );
        assert!(
            raw.closed_within(MARGIN).await,
            "chunked body: connection closed while the client still trickles"
        );
        elapsed
    };

    // A body nobody reads (a GET's), trickling in chunks: answered, then the connection
    // closes instead of waiting for the body's end.
    let ignored_body = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let _writer = raw.trickle(vec![chunk(b"     "); 150], pause);
        let res = raw.response(MARGIN).await.expect("ignored body: an answer");
        assert_eq!(res.status, 200, "ignored body: {res:?}");
        assert!(
            raw.closed_within(MARGIN).await,
            "ignored body: connection closed while the client still trickles"
        );
        raw.started.elapsed()
    };

    // A batch streams for longer than the whole-body deadline while lines keep coming, and
    // ends with a 408 line when they stop.
    let num_lines = 8;
    let batch = async {
        let mut raw = Raw::connect(&svc).await;
        raw.write(
            b"POST /v1/documents:batch HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await;
        let pieces = (0..num_lines)
            .map(|i| {
                let mut line = put_line(&format!("limits/stream-{i}"), 1).to_string();
                line.push('\n');
                chunk(line.as_bytes())
            })
            .collect();
        let _writer = raw.trickle(pieces, Duration::from_millis(400));
        let res = raw
            .response(Duration::from_millis(400) * num_lines as u32 + idle_timeout + MARGIN)
            .await
            .expect("batch: an answer");
        let elapsed = raw.started.elapsed();
        let lines = res.lines();
        assert_eq!(lines.len(), num_lines + 1, "batch: {lines:?}");
        for (i, line) in lines[..num_lines].iter().enumerate() {
            assert_eq!(
                (line["line"].as_u64(), line["status"].as_u64()),
                (Some(i as u64 + 1), Some(200)),
                "batch: {line}"
            );
        }
        let last = &lines[num_lines];
        assert_eq!(
            (last["status"].as_u64(), code(last)),
            (Some(408), "request_timeout"),
            "batch: {last}"
        );
        assert!(elapsed > body_timeout, "the batch streamed for {elapsed:?}");
        assert!(raw.closed_within(MARGIN).await, "batch: connection closed");
        elapsed
    };

    // Meanwhile everybody else is served.
    let others = async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let mut served = 0;
        for _ in 0..20 {
            let res = http
                .get(svc.url("/healthz"))
                .send()
                .await
                .expect("served meanwhile");
            assert_eq!(res.status().as_u16(), 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        served
    };

    let (head, body, stalled, chunked, ignored, batch, served) = tokio::join!(
        slow_head,
        slow_body,
        stalled_body,
        chunked_body,
        ignored_body,
        batch,
        others
    );
    eprintln!(
        "408 after: slow head {head:?}, slow body {body:?}, stalled body {stalled:?}, \
         chunked body {chunked:?}; ignored body closed after {ignored:?}; batch streamed \
         {batch:?}; {served} other requests served meanwhile"
    );

    let streamed: Vec<String> = (0..num_lines)
        .map(|i| format!("limits/stream-{i}"))
        .collect();
    let streamed: Vec<&str> = streamed.iter().map(String::as_str).collect();
    assert_eq!(
        without(svc.log_contents().await, &streamed),
        before,
        "timed-out requests appended nothing"
    );
    svc.stop().await;
}

#[actix_rt::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let svc = TestService::start(
        "limits_connections",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_MAX_CONNECTIONS", "4"),
            ("DOCLEDGER_HTTP_WORKERS", "2"),
            ("DOCLEDGER_KEEP_ALIVE_MS", "60000"),
            ("DOCLEDGER_REQUEST_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let limit = 4;

    // The admitted connections, each served and then kept open (idle, kept alive). The
    // start-up probe's connection may still be closing: each gets a generous wait.
    let mut admitted = Vec::new();
    for i in 0..limit {
        let mut raw = Raw::connect(&svc).await;
        raw.write(HEALTHZ).await;
        let res = raw.response(Duration::from_secs(10)).await;
        assert_eq!(res.map(|r| r.status), Some(200), "admitted connection {i}");
        admitted.push(raw);
    }

    // One more: connected (the kernel's backlog) but not served while the limit is held.
    let mut excess = Raw::connect(&svc).await;
    excess.write(HEALTHZ).await;
    assert!(
        excess.response(Duration::from_millis(1500)).await.is_none(),
        "a connection beyond the limit was served"
    );
    // The admitted ones are still served.
    for (i, raw) in admitted.iter_mut().enumerate() {
        raw.write(HEALTHZ).await;
        let res = raw.response(MARGIN).await;
        assert_eq!(
            res.map(|r| r.status),
            Some(200),
            "admitted connection {i}, again"
        );
    }
    // One closes: the waiting one is served.
    drop(admitted.remove(0));
    let res = excess.response(Duration::from_secs(10)).await;
    assert_eq!(
        res.map(|r| r.status),
        Some(200),
        "the waiting connection after one closed"
    );

    // At the limit again: the next one waits, and is served once everything else closed.
    let mut next = Raw::connect(&svc).await;
    next.write(HEALTHZ).await;
    assert!(
        next.response(Duration::from_millis(1500)).await.is_none(),
        "a connection beyond the limit was served"
    );
    drop(admitted);
    drop(excess);
    let res = next.response(Duration::from_secs(10)).await;
    assert_eq!(res.map(|r| r.status), Some(200), "the service recovered");
    drop(next);
    svc.stop().await;
}

#[actix_rt::test]
async fn idle_connections_close_after_the_keep_alive_and_without_it_after_each_answer() {
    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let keep_alive = Duration::from_millis(1000);
    let svc = TestService::start(
        "limits_keepalive",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_KEEP_ALIVE_MS", "1000"),
        ],
    )
    .await;
    let mut raw = Raw::connect(&svc).await;
    for _ in 0..2 {
        raw.write(HEALTHZ).await;
        let res = raw.response(MARGIN).await.expect("an answer");
        assert_eq!(res.status, 200);
        assert!(!res.head.contains("connection: close"), "{res:?}");
    }
    let idle_from = Instant::now();
    assert!(
        raw.closed_within(keep_alive + MARGIN).await,
        "an idle connection is closed after the keep-alive"
    );
    let idle = idle_from.elapsed();
    // The HTTP server's timers run on a clock it refreshes every 500 ms.
    assert!(
        idle >= keep_alive - Duration::from_millis(500),
        "closed after {idle:?}"
    );
    svc.stop().await;

    // Without keep-alive each connection carries one request, so the head timeout (which
    // the HTTP server applies to a connection's first request) covers every request.
    let svc = TestService::start(
        "limits_no_keepalive",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_KEEP_ALIVE_MS", "0"),
        ],
    )
    .await;
    let mut raw = Raw::connect(&svc).await;
    raw.write(HEALTHZ).await;
    let res = raw.response(MARGIN).await.expect("an answer");
    assert_eq!(res.status, 200);
    assert!(res.head.contains("connection: close"), "{res:?}");
    assert!(
        raw.closed_within(MARGIN).await,
        "closed after its one answer"
    );
    eprintln!(
        "keep-alive: idle connection closed after {idle:?}; without keep-alive, after each answer"
    );
    svc.stop().await;
}

/// A blob's body is validated on the HTTP worker when its text is small and on the blocking
/// pool when it is large (over 64 KiB of base64): both paths store the same bytes, answer a
/// refusal with the same code, and a refused body changes nothing.
#[actix_rt::test]
async fn small_and_large_blobs_are_checked_alike_on_either_validation_path() {
    use base64::Engine;
    use sha2::{Digest, Sha256};

    let svc = TestService::start(
        "limits_blob_validation_paths",
        &[("DOCLEDGER_MAX_BLOB_BYTES", "100000")],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let with_blob = |doc: &str, blob_text: String| {
        let mut body = put_body(doc, 1);
        body["blob"] = json!({"content_base64": blob_text, "content_type": "application/pdf"});
        body
    };
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    // 30,000 bytes are 40,000 characters of base64 (checked in place); 90,000 bytes are
    // 120,000 (checked on the blocking pool).
    for (doc, size, in_place) in [
        ("limits/blob-small", 30_000usize, true),
        ("limits/blob-large", 90_000, false),
    ] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let sent = with_blob(doc, encode(&bytes));
        let parsed: docledger::api::dto::PutBody =
            serde_json::from_value(sent.clone()).expect("a put body");
        assert_eq!(parsed.validates_inline(), in_place, "{doc} takes its path");
        let (status, body) = send(
            http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=30000"))
                .json(&sent),
        )
        .await;
        assert_eq!(status, 200, "{doc}: {body}");
        assert_eq!(body["consistent"], true, "{doc}: {body}");
        let (status, events) = send(http.get(svc.doc_url(doc, "/events"))).await;
        assert_eq!(status, 200, "{events}");
        let stored = events["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["type"] == "BlobStored"))
            .unwrap_or_else(|| panic!("{doc}: no BlobStored in {events}"));
        assert_eq!(
            (
                stored["data"]["sha256"].as_str(),
                stored["data"]["size"].as_u64()
            ),
            (
                Some(hex::encode(Sha256::digest(&bytes)).as_str()),
                Some(size as u64)
            ),
            "{doc}: {stored}"
        );
    }

    let before = svc.log_contents().await;
    // Refused alike on both paths: a blob over DOCLEDGER_MAX_BLOB_BYTES once decoded (the
    // text is within the early estimate's slack), and text that is not base64.
    let over = encode(&vec![1u8; 100_001]);
    let cases = [
        ("limits/blob-over", over, 413, "payload_too_large"),
        (
            "limits/blob-bad-small",
            "!".repeat(1_000),
            400,
            "invalid_field",
        ),
        (
            "limits/blob-bad-large",
            "!".repeat(100_000),
            400,
            "invalid_field",
        ),
    ];
    for (doc, text, want_status, want_code) in cases {
        let (status, body) = send(http.put(svc.doc_url(doc, "")).json(&with_blob(doc, text))).await;
        assert_eq!(
            (status, code(&body)),
            (want_status, want_code),
            "{doc}: {body}"
        );
    }
    assert_eq!(
        svc.log_contents().await,
        before,
        "refused blobs change nothing"
    );
    svc.stop().await;
}

/// A chunk text longer than the vector store's text field (65,535 UTF-8 bytes) is refused
/// at the API, in a PUT and in a batch line, and appends nothing (it used to be accepted,
/// then refused by Milvus, parked and withdrawn); exactly the limit is accepted and reaches
/// every store.
#[actix_rt::test]
async fn a_chunk_text_the_vector_store_would_refuse_is_refused_at_the_api() {
    let svc = TestService::start(
        "limits_chunk_text",
        &[("DOCLEDGER_VERIFY_INTERVAL_SECS", "0")],
    )
    .await;
    let http = reqwest::Client::new();
    let with_text = |text: String| {
        let mut body = put_body("x", 1);
        body["chunks"][0]["text"] = json!(text);
        body
    };
    let before = svc.log_contents().await;
    // 32,768 two-byte characters: within a character count, over the byte limit.
    for (doc, text) in [
        ("limits/text-ascii", "x".repeat(65_536)),
        ("limits/text-utf8", "é".repeat(32_768)),
    ] {
        let (status, body) = send(http.put(svc.doc_url(doc, "")).json(&with_text(text))).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_field"),
            "{doc}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("65535")),
            "{body}"
        );
    }
    let mut line = with_text("y".repeat(65_536));
    line["op"] = json!("put");
    line["doc_id"] = json!("limits/text-line");
    let res = http
        .post(svc.url("/v1/documents:batch"))
        .header("content-type", "application/x-ndjson")
        .body(line.to_string())
        .send()
        .await
        .expect("batch");
    let text = res.text().await.expect("batch answer");
    let result: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert_eq!(
        (result["status"].as_u64(), code(&result)),
        (Some(400), "invalid_field"),
        "{result}"
    );
    assert_eq!(svc.log_contents().await, before, "nothing appended");

    let (status, body) = send(
        http.put(svc.doc_url("limits/text-max", ""))
            .json(&with_text("z".repeat(65_535))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    common::until_document(
        &http,
        &svc.doc_url("limits/text-max", ""),
        Duration::from_secs(60),
        "the longest text in every store",
        |got| got["consistent"] == true,
    )
    .await;
    svc.stop().await;
}
