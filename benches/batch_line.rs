//! CPU cost of decoding one NDJSON batch line of the bench's document shape (a 4 KiB blob,
//! 8 chunks of 384-dimensional vectors, about 40 KB of JSON), in this process, no store:
//!
//! - baseline: the line as a `serde_json::Map` of `Value`s, routing fields taken out, the
//!   PUT body decoded from the remaining `Value` (how batch lines were decoded before);
//! - two passes: the routing fields (everything else skipped), then the body from the bytes
//!   (how a delete or a refused line is decoded);
//! - one pass: the body decoded while the routing fields are taken out (a put line).
//!
//! Run with `cargo bench --bench batch_line`; `BENCH_LINES` sets the lines decoded per
//! scenario (default 4000). Each scenario runs three times; the best is printed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine;
use docledger::api::dto::PutBody;
use docledger::api::line;
use serde_json::{json, Value};

const CHUNKS: usize = 8;
const DIM: usize = 384;
const BLOB_BYTES: usize = 4096;

/// A put line with pseudo-random vectors and blob (a fixed seed per line).
fn put_line(n: u64) -> Vec<u8> {
    let mut state = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    let chunks: Vec<Value> = (0..CHUNKS)
        .map(|i| {
            let vector: Vec<f32> = (0..DIM)
                .map(|_| next() as f32 / u32::MAX as f32 * 2.0 - 1.0)
                .collect();
            json!({"text": format!("chunk {i} of document {n}"), "vector": vector})
        })
        .collect();
    let blob: Vec<u8> = (0..BLOB_BYTES).map(|_| next() as u8).collect();
    serde_json::to_vec(&json!({
        "op": "put",
        "doc_id": format!("bench/doc-{n}"),
        "title": format!("Document {n}"),
        "source_type": "pdf",
        "business_tag": "bench",
        "attributes": {"lang": "en", "n": n},
        "blob": {
            "content_base64": base64::engine::general_purpose::STANDARD.encode(blob),
            "content_type": "application/pdf"
        },
        "chunks": chunks
    }))
    .expect("json")
}

fn baseline(l: &[u8]) -> PutBody {
    let mut rest: serde_json::Map<String, Value> = serde_json::from_slice(l).expect("map");
    for field in line::ROUTING_FIELDS {
        rest.remove(*field);
    }
    serde_json::from_value(Value::Object(rest)).expect("put body")
}

fn two_passes(l: &[u8]) -> PutBody {
    let head = line::head(l).expect("head");
    black_box(head);
    line::body(l).expect("put body")
}

fn one_pass(l: &[u8]) -> PutBody {
    line::body_with_head::<PutBody>(l).expect("one pass").0
}

/// The best of three timings of decoding every line.
fn best_of_three(lines: &[Vec<u8>], decode: fn(&[u8]) -> PutBody) -> Duration {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for l in lines {
                black_box(decode(black_box(l)));
            }
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let n: u64 = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let lines: Vec<Vec<u8>> = (0..n).map(put_line).collect();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    println!(
        "{n} put lines, {:.1} KB each: {CHUNKS} chunks x {DIM} dims, {BLOB_BYTES} B blob",
        bytes as f64 / n as f64 / 1e3
    );
    // Every decoder reads the same body.
    for l in lines.iter().take(8) {
        let want = format!("{:?}", baseline(l));
        assert_eq!(format!("{:?}", two_passes(l)), want);
        assert_eq!(format!("{:?}", one_pass(l)), want);
    }
    let base = best_of_three(&lines, baseline);
    println!("| decoder | us/line | MB/s | vs baseline |");
    println!("|---|--:|--:|--:|");
    for (name, decode) in [
        (
            "baseline: Value, then the body",
            baseline as fn(&[u8]) -> PutBody,
        ),
        ("two passes: routing, then the body", two_passes),
        ("one pass: the body, routing taken out", one_pass),
    ] {
        let took = if name.starts_with("baseline") {
            base
        } else {
            best_of_three(&lines, decode)
        };
        println!(
            "| {name} | {:.1} | {:.0} | {:.2}x |",
            took.as_secs_f64() * 1e6 / n as f64,
            bytes as f64 / took.as_secs_f64() / 1e6,
            base.as_secs_f64() / took.as_secs_f64()
        );
    }
}
