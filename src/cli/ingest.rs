//! `docledger ingest FILE.ndjson [--url URL] [--concurrency N]`: sends the file's lines to
//! `POST /v1/documents:batch`. Lines are spread over N lanes by a hash of their `doc_id`, so
//! one document's lines keep their order while different documents go in parallel; each lane
//! sends slices of lines, so memory stays bounded whatever the file's size. A progress bar
//! shows on a terminal; a summary (accepted, unchanged, refused by code) ends the run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use projections::sink::stream_hash;
use tokio::sync::mpsc;

/// Lines per batch request.
const LINES_PER_REQUEST: usize = 500;

/// Counts of an ingestion.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// Lines sent.
    pub lines: usize,
    /// Lines that changed a document.
    pub accepted: usize,
    /// Lines accepted that changed nothing.
    pub unchanged: usize,
    /// Refused lines by error code.
    pub refused: BTreeMap<String, usize>,
}

impl IngestSummary {
    /// Number of refused lines.
    pub fn num_refused(&self) -> usize {
        self.refused.values().sum()
    }

    fn add(&mut self, other: &IngestSummary) {
        self.lines += other.lines;
        self.accepted += other.accepted;
        self.unchanged += other.unchanged;
        for (code, n) in &other.refused {
            *self.refused.entry(code.clone()).or_default() += n;
        }
    }
}

impl std::fmt::Display for IngestSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lines: {} accepted, {} unchanged, {} refused",
            self.lines,
            self.accepted,
            self.unchanged,
            self.num_refused()
        )?;
        for (code, n) in &self.refused {
            write!(f, "\n  {code}: {n}")?;
        }
        Ok(())
    }
}

async fn send_lane(
    client: reqwest::Client,
    endpoint: String,
    bearer: Option<String>,
    mut lines: mpsc::Receiver<String>,
    progress: ProgressBar,
) -> anyhow::Result<IngestSummary> {
    let mut summary = IngestSummary::default();
    let mut body = String::new();
    let mut n = 0usize;
    loop {
        let next = lines.recv().await;
        if let Some(line) = &next {
            body.push_str(line);
            body.push('\n');
            n += 1;
        }
        if n == 0 || (n < LINES_PER_REQUEST && next.is_some()) {
            if next.is_none() {
                return Ok(summary);
            }
            continue;
        }
        let mut req = client
            .post(&endpoint)
            .header("content-type", "application/x-ndjson")
            .body(std::mem::take(&mut body));
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
        for answer in res.text().await?.lines() {
            let v: serde_json::Value = serde_json::from_str(answer)?;
            summary.lines += 1;
            match v["status"].as_u64() {
                Some(s) if (200..300).contains(&s) => {
                    if v["result"]["unchanged"] == true {
                        summary.unchanged += 1;
                    } else {
                        summary.accepted += 1;
                    }
                }
                _ => {
                    let code = v["error"]["code"].as_str().unwrap_or("unknown").to_owned();
                    progress.suspend(|| eprintln!("refused: {} ({})", v["error"]["message"], code));
                    *summary.refused.entry(code).or_default() += 1;
                }
            }
        }
        progress.inc(n as u64);
        n = 0;
        if next.is_none() {
            return Ok(summary);
        }
    }
}

/// Ingests `file` through the service at `url` over `concurrency` lanes.
///
/// # Errors
/// When the file cannot be read or the service cannot be reached or refuses a whole batch.
pub async fn ingest(
    file: &Path,
    url: &str,
    concurrency: usize,
    bearer: Option<String>,
) -> anyhow::Result<IngestSummary> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("open {}", file.display()))?
        .len();
    let reader = BufReader::new(
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
    );
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/documents:batch", url.trim_end_matches('/'));
    let lanes = concurrency.max(1);
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos} lines sent, {per_sec}, {elapsed} ({msg})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.set_message(format!("{} bytes file", size));
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<String>(LINES_PER_REQUEST * 2);
        senders.push(tx);
        tasks.push(tokio::spawn(send_lane(
            client.clone(),
            endpoint.clone(),
            bearer.clone(),
            rx,
            progress.clone(),
        )));
    }
    let mut read_error = None;
    for line in reader.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        // A line without a readable doc_id still goes to the server, which explains the refusal.
        let lane = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| {
                v["doc_id"]
                    .as_str()
                    .map(|d| stream_hash(d) as usize % lanes)
            })
            .unwrap_or(0);
        if senders[lane].send(line).await.is_err() {
            break; // the lane failed; its error is reported below
        }
    }
    drop(senders);
    let mut summary = IngestSummary::default();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => summary.add(&s),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("ingest lane failed: {e}"));
            }
        }
    }
    progress.finish_and_clear();
    if let Some(e) = read_error {
        return Err(e).context("read line");
    }
    if let Some(e) = first_error {
        return Err(e.context(format!("after {summary}")));
    }
    Ok(summary)
}
