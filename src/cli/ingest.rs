//! `docledger ingest FILE.ndjson`: sends the file to `POST /v1/documents:batch` in slices of
//! lines, so memory stays bounded whatever the file's size, and prints a summary.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context};

/// Lines per batch request.
const LINES_PER_REQUEST: usize = 500;

/// Counts of an ingestion.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Lines sent.
    pub lines: usize,
    /// Lines answered 2xx.
    pub ok: usize,
    /// Lines refused.
    pub failed: usize,
}

/// Ingests `file` through the service at `url`.
///
/// # Errors
/// When the file cannot be read or the service cannot be reached.
pub async fn ingest(
    file: &Path,
    url: &str,
    bearer: Option<String>,
) -> anyhow::Result<IngestSummary> {
    let reader = BufReader::new(
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
    );
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/documents:batch", url.trim_end_matches('/'));
    let mut summary = IngestSummary::default();
    let mut lines = reader.lines();
    loop {
        let mut body = String::new();
        let mut n = 0;
        for line in lines.by_ref() {
            let line = line.context("read line")?;
            if line.trim().is_empty() {
                continue;
            }
            body.push_str(&line);
            body.push('\n');
            n += 1;
            if n == LINES_PER_REQUEST {
                break;
            }
        }
        if n == 0 {
            break;
        }
        let mut req = client
            .post(&endpoint)
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(b) = &bearer {
            req = req.header("authorization", b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("POST {endpoint}"))?;
        if !res.status().is_success() {
            let status = res.status();
            bail!(
                "batch refused with {status}: {}",
                res.text().await.unwrap_or_default()
            );
        }
        for line in res.text().await?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            summary.lines += 1;
            match v["status"].as_u64() {
                Some(s) if (200..300).contains(&s) => summary.ok += 1,
                _ => {
                    summary.failed += 1;
                    eprintln!("line {}: {}", summary.lines, v["error"]);
                }
            }
        }
    }
    Ok(summary)
}
