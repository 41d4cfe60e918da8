//! Hostile input (issue 8): property-generated malformed requests against the HTTP API and
//! the NDJSON batch decoder of a running service. Every one must be answered with a 4xx and
//! a snake_case error code (a batch: one such result per line), nothing may panic (the
//! service keeps answering) and nothing may change (the log holds exactly what it held).
//!
//! The cases come from proptest strategies run with a deterministic seed (the async service
//! cannot run inside proptest's synchronous runner, so there is no shrinking: a failure
//! prints its whole input). `HOSTILE_CASES=N` runs N cases (default 200);
//! `HOSTILE_RANDOM=1` draws them from a random seed instead of the fixed one.

mod common;

use std::time::Duration;

use aggregates::DocId;
use common::TestService;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

const DIM: usize = 8;
const TARGET: &str = "hostile/target";

fn valid_body() -> Value {
    json!({
        "title": "a valid title",
        "source_type": "pdf",
        "chunks": [{"text": "x", "vector": vec![0.5; DIM]}],
    })
}

/// Ids that `DocId::parse` refuses: quotes, control characters, Milvus filter syntax,
/// `..`, leading or trailing `/`, too long.
fn bad_doc_id() -> impl Strategy<Value = String> {
    let bad_char = prop_oneof![
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just(" ".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\n".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("é".to_owned()),
        Just("%".to_owned()),
        "[\\x01-\\x1f;|&()=!<>\\[\\]{}$*?`~#+,]".prop_map(|s| s),
    ];
    prop_oneof![
        ("[a-z0-9]{0,8}", bad_char, "[a-z0-9]{0,8}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        Just("a\" || doc_id != \"".to_owned()),
        Just("x\" or 1==1 or doc_id == \"".to_owned()),
        "[a-z]{0,4}".prop_map(|s| format!("{s}/../etc/passwd")),
        "[a-z]{1,4}".prop_map(|s| format!("{s}..{s}")),
        Just("..".to_owned()),
        "[a-z]{1,8}".prop_map(|s| format!("/{s}")),
        "[a-z]{1,8}".prop_map(|s| format!("{s}/")),
        (256usize..400).prop_map(|n| "a".repeat(n)),
    ]
    .prop_filter("must be an invalid id", |s| DocId::parse(s).is_err())
}

/// PUT bodies that must be refused.
fn bad_put_body() -> impl Strategy<Value = Vec<u8>> {
    let with = |f: fn(&mut Value)| {
        let mut b = valid_body();
        f(&mut b);
        b.to_string().into_bytes()
    };
    prop_oneof![
        // Random bytes (invalid UTF-8 included).
        proptest::collection::vec(any::<u8>(), 0..300),
        // Invalid UTF-8 inside a string.
        proptest::collection::vec(0x80u8..=0xff, 1..8)
            .prop_filter("invalid UTF-8", |b| std::str::from_utf8(b).is_err())
            .prop_map(|bad| {
            let mut b = br#"{"title":""#.to_vec();
            b.extend(bad);
            b.extend(br#"","source_type":"s"}"#);
            b
        }),
        // Deeper than any decoder should follow.
        (200usize..20_000).prop_map(|depth| {
            format!(
                r#"{{"title":"t","source_type":"s","attributes":{{"a":{}{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes()
        }),
        // Numbers no float holds, or that are not numbers at all.
        prop_oneof![
            Just("1e400"),
            Just("-1e400"),
            Just("1e39"),
            Just("-3.5e38"),
            Just("NaN"),
            Just("Infinity"),
            Just("-Infinity"),
            Just("1e999999999999"),
            Just("123456789012345678901234567890e10"),
            Just("\"1.0\""),
            Just("null"),
        ]
        .prop_map(|x| {
            format!(
                r#"{{"title":"t","source_type":"s","chunks":[{{"text":"x","vector":[{x},0,0,0,0,0,0,0]}}]}}"#
            )
            .into_bytes()
        }),
        // Versions out of range.
        prop_oneof![
            Just("18446744073709551616"),
            Just("-1"),
            Just("1e30"),
            Just("1.5"),
            Just("\"7\""),
        ]
        .prop_map(|v| format!(r#"{{"title":"t","source_type":"s","expected_version":{v}}}"#)
            .into_bytes()),
        // Oversize fields.
        (1025usize..3000).prop_map(|n| json!({"title": "t".repeat(n), "source_type": "s"})
            .to_string()
            .into_bytes()),
        (65usize..500).prop_map(|n| json!({"title": "t", "source_type": "s".repeat(n)})
            .to_string()
            .into_bytes()),
        // Wrong dimension.
        (0usize..40)
            .prop_filter("not the configured dimension", |n| *n != DIM)
            .prop_map(|n| json!({"title": "t", "source_type": "s",
                "chunks": [{"text": "x", "vector": vec![0.5; n]}]})
            .to_string()
            .into_bytes()),
        // Missing, mistyped and unknown fields, bad blobs.
        Just(with(|b| {
            b.as_object_mut().map(|o| o.remove("title"));
        })),
        Just(with(|b| b["title"] = json!(12))),
        Just(with(|b| b["title"] = json!(""))),
        Just(with(|b| b["chunks"] = json!("x"))),
        Just(with(|b| b["chunks"][0]["vector"] = json!(vec!["a"; DIM]))),
        Just(with(|b| b["attributes"] = json!([1, 2]))),
        Just(with(|b| b["titel"] = json!("typo"))),
        Just(with(|b| b["blob"] = json!({"content_base64": "!!!not base64", "content_type": "a/b"}))),
        Just(with(|b| b["blob"] = json!({"content_base64": "aGk="}))),
        Just(b"[]".to_vec()),
        Just(b"null".to_vec()),
        Just(b"\"a string\"".to_vec()),
    ]
}

/// One hostile request.
#[derive(Debug, Clone)]
enum Case {
    /// PUT, DELETE and GET of a document whose id is invalid (with a valid body).
    BadId(String),
    /// PUT of a bad body to a valid id.
    BadBody(Vec<u8>),
    /// A valid body with a bad idempotency key or query.
    BadHeaderOrQuery { key: Option<String>, query: String },
    /// An NDJSON batch of bad lines.
    Batch(Vec<Vec<u8>>),
}

fn case() -> impl Strategy<Value = Case> {
    let batch_line = prop_oneof![
        bad_put_body().prop_map(|mut b| {
            // Mostly garbage; a line may not contain a newline (that splits it).
            b.retain(|c| *c != b'\n');
            b
        }),
        bad_doc_id().prop_map(|id| {
            let mut b = valid_body();
            b["op"] = json!("put");
            b["doc_id"] = json!(id);
            b.to_string().into_bytes()
        }),
        "[a-z]{0,10}".prop_map(|op| {
            let mut b = valid_body();
            b["op"] = json!(if op == "put" || op == "delete" {
                "upsert"
            } else {
                &op
            });
            b["doc_id"] = json!(TARGET);
            b.to_string().into_bytes()
        }),
        Just(
            json!({"op": "put", "doc_id": TARGET})
                .to_string()
                .into_bytes()
        ),
        Just(json!({"op": "delete"}).to_string().into_bytes()),
        Just(
            json!({"op": "delete", "doc_id": TARGET, "extra": 1})
                .to_string()
                .into_bytes()
        ),
        Just(
            json!({"op": "delete", "doc_id": "never-seen-doc"})
                .to_string()
                .into_bytes()
        ),
        (256usize..400).prop_map(|n| {
            let mut b = valid_body();
            b["op"] = json!("put");
            b["doc_id"] = json!(TARGET);
            b["idempotency_key"] = json!("k".repeat(n));
            b.to_string().into_bytes()
        }),
    ];
    prop_oneof![
        bad_doc_id().prop_map(Case::BadId),
        bad_put_body().prop_map(Case::BadBody),
        (
            prop_oneof![
                Just(None),
                Just(Some(String::new())),
                (256usize..400).prop_map(|n| Some("k".repeat(n))),
            ],
            prop_oneof![
                Just(String::new()),
                "[a-z]{1,12}".prop_map(|c| format!("?consistency={c}x")),
                Just("?consistency=applied&timeout_ms=-1".to_owned()),
                Just("?consistency=applied&timeout_ms=99999999999999999999".to_owned()),
                Just("?timeout_ms=abc".to_owned()),
                Just("?unknown=1".to_owned()),
            ],
        )
            .prop_filter("something must be wrong", |(k, q)| {
                !(k.is_none() && q.is_empty())
            })
            .prop_map(|(key, query)| Case::BadHeaderOrQuery { key, query }),
        proptest::collection::vec(batch_line, 1..6).prop_map(Case::Batch),
    ]
}

fn encoded(doc_id: &str) -> String {
    percent_encoding::utf8_percent_encode(doc_id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A 4xx with a snake_case code, or a panic naming the case.
fn assert_refusal(case: &Case, what: &str, status: u16, body: &Value) {
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        (400..500).contains(&status)
            && !code.is_empty()
            && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{what} of {case:?} answered {status} {body}"
    );
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = req.send().await.expect("the service answers (no panic)");
    let status = res.status().as_u16();
    (status, res.text().await.expect("a body"))
}

async fn run_case(svc: &TestService, http: &reqwest::Client, case: &Case) {
    let json = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    match case {
        Case::BadId(id) => {
            let url = svc.url(&format!("/v1/documents/{}", encoded(id)));
            for (what, req) in [
                ("PUT", http.put(&url).json(&valid_body())),
                ("DELETE", http.delete(&url)),
                ("GET", http.get(&url)),
                ("GET events", http.get(format!("{url}/events"))),
            ] {
                let (status, text) = send(req).await;
                assert_refusal(case, what, status, &json(&text));
            }
        }
        Case::BadBody(bytes) => {
            let (status, text) = send(
                http.put(svc.doc_url(TARGET, ""))
                    .header("content-type", "application/json")
                    .body(bytes.clone()),
            )
            .await;
            assert_refusal(case, "PUT", status, &json(&text));
        }
        Case::BadHeaderOrQuery { key, query } => {
            let mut req = http
                .put(svc.doc_url(TARGET, query))
                .json(&json!({"title": "would change it", "source_type": "s"}));
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            let (status, text) = send(req).await;
            assert_refusal(case, "PUT", status, &json(&text));
        }
        Case::Batch(lines) => {
            let mut body = Vec::new();
            for l in lines {
                body.extend_from_slice(l);
                body.push(b'\n');
            }
            let (status, text) = send(
                http.post(svc.url("/v1/documents:batch"))
                    .header("content-type", "application/x-ndjson")
                    .body(body),
            )
            .await;
            assert_eq!(status, 200, "batch {case:?}: {text}");
            let expected = lines
                .iter()
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count();
            let results: Vec<Value> = text.lines().map(json).collect();
            assert_eq!(results.len(), expected, "batch {case:?}: {text}");
            for r in &results {
                let status = r["status"].as_u64().unwrap_or_default() as u16;
                assert_refusal(case, "batch line", status, r);
            }
        }
    }
}

#[actix_rt::test]
async fn hostile_requests_get_a_4xx_with_a_code_and_change_nothing() {
    let num_cases: u32 = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let svc = TestService::start(
        "hostile_input",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_MAX_BODY_BYTES", "1048576"),
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let (status, text) = send(http.put(svc.doc_url(TARGET, "")).json(&valid_body())).await;
    assert_eq!(status, 200, "{text}");

    let log = docledger::eventlog::PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log connects");
    let client = log.client().await.expect("log connection");
    let snapshot = || async {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM streams),
                        (SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM blobs)",
                &[],
            )
            .await
            .expect("read the log");
        (0..4).map(|i| row.get::<_, i64>(i)).collect::<Vec<_>>()
    };
    let before = snapshot().await;

    // Deterministic in CI; HOSTILE_RANDOM=1 explores new cases on each run.
    let mut runner = if std::env::var("HOSTILE_RANDOM").is_ok() {
        TestRunner::default()
    } else {
        TestRunner::deterministic()
    };
    let strategy = case();
    let mut kinds = [0u32; 4];
    for _ in 0..num_cases {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        kinds[match &case {
            Case::BadId(_) => 0,
            Case::BadBody(_) => 1,
            Case::BadHeaderOrQuery { .. } => 2,
            Case::Batch(_) => 3,
        }] += 1;
        run_case(&svc, &http, &case).await;
    }

    assert_eq!(
        snapshot().await,
        before,
        "a refused request changed the log"
    );
    let (status, text) = send(http.get(svc.doc_url(TARGET, ""))).await;
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (status, &doc["version"], &doc["title"]),
        (200, &json!(1), &json!("a valid title"))
    );
    let (status, _) = send(http.get(svc.url("/healthz"))).await;
    assert_eq!(status, 200);
    eprintln!(
        "hostile input: {num_cases} cases (bad ids {}, bad bodies {}, bad keys/queries {}, batches {}), all refused, log unchanged",
        kinds[0], kinds[1], kinds[2], kinds[3]
    );
    svc.stop().await;
}
