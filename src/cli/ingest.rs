//! `docledger ingest FILE|- [--url URL] [--token T] [--concurrency N] [--sync-prefix P]`:
//! sends NDJSON batch lines to `POST /v1/documents:batch`, for pipelines that need to rely on
//! it.
//!
//! - Lines are spread over N lanes by a hash of their `doc_id`, so one document's lines keep
//!   their order while different documents go in parallel; each lane sends slices of lines,
//!   so memory stays bounded whatever the input's size. Input is read on its own thread
//!   (standard input may be a slow pipe).
//! - Every line without an `idempotency_key` gets one (`ingest-<run>-<line>`), so a request
//!   that is sent again after a lost connection, a 502/503/504/429 (honouring
//!   `Retry-After`) or an answer cut short repeats nothing: lines the service already
//!   applied answer from their keys. A line refused with 503 alone is sent again when it is
//!   its document's last line in its request; an earlier one is superseded by its
//!   document's later line, which the service applied after it.
//! - Each refused line is reported with its line number and `doc_id`; a summary ends the
//!   run. Exit codes: 0 every line accepted, 1 some refused, 2 the run could not finish.
//! - `--sync-prefix P`: after a run that finished with every line accepted, every live
//!   document whose id starts with P and that no line of the run named is deleted
//!   (LangChain's `full` cleanup); each delete names the version listed, so a document
//!   written since is kept. A run that did not finish, or had a line refused, deletes
//!   nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use super::http::{send_retrying, transient_status, PostError};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use projections::sink::stream_hash;
use projections::RetryPolicy;
use serde::Deserialize;
use tokio::sync::mpsc;

/// Lines per batch request.
const LINES_PER_REQUEST: usize = 500;
/// Documents per page when listing for a sync.
const LIST_PAGE: usize = 1000;

/// Where the lines come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Input {
    /// `-` is standard input, anything else a file.
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }
}

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The service.
    pub url: String,
    /// Batch requests in flight.
    pub concurrency: usize,
    /// `Bearer …`, when the service wants a token.
    pub bearer: Option<String>,
    /// Delete the live documents under this prefix that the run did not name.
    pub sync_prefix: Option<String>,
    /// Backoff of requests sent again.
    pub retry: RetryPolicy,
}

impl IngestOptions {
    /// The defaults for `url`: 4 lanes, no token, no sync, up to 10 attempts per request
    /// (0.2 s to 10 s apart).
    pub fn new(url: &str) -> IngestOptions {
        IngestOptions {
            url: url.trim_end_matches('/').to_owned(),
            concurrency: 4,
            bearer: None,
            sync_prefix: None,
            retry: RetryPolicy {
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
                max_attempts: Some(10),
            },
        }
    }
}

/// Counts of an ingestion.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// Lines answered.
    pub lines: usize,
    /// Lines that changed a document.
    pub accepted: usize,
    /// Lines accepted that changed nothing.
    pub unchanged: usize,
    /// Lines refused with 503 whose document's later line of the same request applied.
    pub superseded: usize,
    /// Refused lines by error code.
    pub refused: BTreeMap<String, usize>,
    /// Requests sent again (lost connection, 503, ...).
    pub resent: usize,
    /// What `--sync-prefix` did.
    pub sync: Option<SyncSummary>,
    /// `--sync-prefix` deleted nothing because lines were refused.
    pub sync_skipped: bool,
}

/// What a sync deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    /// The prefix.
    pub prefix: String,
    /// Live documents under it that the run named.
    pub kept: usize,
    /// Documents deleted.
    pub deleted: usize,
    /// Documents written since they were listed, left alone.
    pub changed: usize,
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
        self.superseded += other.superseded;
        self.resent += other.resent;
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
        if self.superseded > 0 {
            write!(f, ", {} superseded", self.superseded)?;
        }
        if self.resent > 0 {
            write!(f, " ({} requests sent again)", self.resent)?;
        }
        for (code, n) in &self.refused {
            write!(f, "\n  {code}: {n}")?;
        }
        if self.sync_skipped {
            write!(
                f,
                "\nsync skipped: {} lines were refused, so the run did not send everything",
                self.num_refused()
            )?;
        }
        if let Some(s) = &self.sync {
            write!(
                f,
                "\nsync {:?}: {} kept, {} deleted, {} changed since listed (kept)",
                s.prefix, s.kept, s.deleted, s.changed
            )?;
        }
        Ok(())
    }
}

/// One input line on its way.
#[derive(Debug, Clone)]
struct Line {
    /// 1-based line number in the input.
    no: usize,
    doc_id: Option<String>,
    text: String,
}

/// What the service answered for one line.
#[derive(Debug, Deserialize)]
struct Answer {
    status: u16,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    error: serde_json::Value,
}

/// The fields of a line the client needs; the rest is skipped, not decoded.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    doc_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<std::borrow::Cow<'a, str>>,
}

/// The line with an idempotency key of this run when it has none (inserted after its `{`,
/// so the bytes of its other fields are sent as they came).
fn keyed(text: String, run: &str, no: usize, has_key: bool) -> String {
    let trimmed = text.trim_start();
    if has_key || !trimmed.starts_with('{') {
        return text;
    }
    let rest = trimmed[1..].trim_start();
    let separator = if rest.starts_with('}') { "" } else { "," };
    format!("{{\"idempotency_key\":\"ingest-{run}-{no}\"{separator}{rest}")
}

/// Sends requests of one lane and reads their answers.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    endpoint: String,
    bearer: Option<String>,
    retry: RetryPolicy,
    progress: ProgressBar,
}

impl Sender {
    /// One batch request and its answers, one per line.
    async fn post(&self, lines: &[Line]) -> Result<Vec<Answer>, PostError> {
        let mut body = String::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
        for line in lines {
            body.push_str(&line.text);
            body.push('\n');
        }
        let mut req = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        let transient = |why: String, retry_after: Option<Duration>| {
            Err(PostError::Transient { why, retry_after })
        };
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => return transient(format!("POST {}: {e}", self.endpoint), None),
        };
        let status = res.status().as_u16();
        if let Some(retry_after) = transient_status(&res) {
            let text = res.text().await.unwrap_or_default();
            return transient(format!("HTTP {status}: {text}"), retry_after);
        }
        if !(200..300).contains(&status) {
            return Err(PostError::Fatal(anyhow::anyhow!(
                "the batch was refused with HTTP {status}: {}",
                res.text().await.unwrap_or_default()
            )));
        }
        let text = match res.text().await {
            Ok(text) => text,
            Err(e) => return transient(format!("reading the answer: {e}"), None),
        };
        let answers: Vec<Answer> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("the service answered a line that is not JSON")?;
        // An answer cut short (connection lost, a stalled body's last 408 line): the lines
        // already applied answer from their keys when sent again.
        if answers.len() != lines.len()
            || answers.iter().any(|a| a.error["code"] == "request_timeout")
        {
            return transient(
                format!("{} answers for {} lines", answers.len(), lines.len()),
                None,
            );
        }
        Ok(answers)
    }

    /// `lines` answered, sent again after transient failures (the one retry policy,
    /// honouring `Retry-After`).
    async fn send(&self, lines: &[Line], resent: &mut usize) -> anyhow::Result<Vec<Answer>> {
        send_retrying(
            &self.retry,
            |attempt, why| {
                self.progress.suspend(|| {
                    eprintln!(
                        "attempt {attempt} of {} lines failed, sending again: {why}",
                        lines.len()
                    )
                });
                *resent += 1;
            },
            || self.post(lines),
        )
        .await
    }

    /// Sends `lines` (one slice of a lane) and counts their answers; lines refused with 503
    /// that are their document's last in the slice are sent again.
    async fn slice(&self, mut lines: Vec<Line>, summary: &mut IngestSummary) -> anyhow::Result<()> {
        let mut attempt = 0;
        while !lines.is_empty() {
            let answers = self.send(&lines, &mut summary.resent).await?;
            let last_of_doc: HashMap<&str, usize> = lines
                .iter()
                .enumerate()
                .filter_map(|(i, l)| Some((l.doc_id.as_deref()?, i)))
                .collect();
            let mut again = Vec::new();
            for (i, (line, answer)) in lines.iter().zip(&answers).enumerate() {
                if answer.status == 503 {
                    let last = line
                        .doc_id
                        .as_deref()
                        .is_some_and(|d| last_of_doc.get(d) == Some(&i));
                    if last {
                        again.push(line.clone());
                    } else {
                        summary.superseded += 1;
                        summary.lines += 1;
                    }
                    continue;
                }
                summary.lines += 1;
                if (200..300).contains(&answer.status) {
                    if answer.result["unchanged"] == true {
                        summary.unchanged += 1;
                    } else {
                        summary.accepted += 1;
                    }
                } else {
                    let code = answer.error["code"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_owned();
                    let message = answer.error["message"].as_str().unwrap_or_default();
                    self.progress.suspend(|| {
                        eprintln!(
                            "line {} (doc_id {}): {code}: {message}",
                            line.no,
                            line.doc_id.as_deref().unwrap_or("?")
                        )
                    });
                    *summary.refused.entry(code).or_default() += 1;
                }
            }
            self.progress.inc((lines.len() - again.len()) as u64);
            if !again.is_empty() {
                attempt += 1;
                if self.retry.max_attempts.is_some_and(|m| attempt >= m) {
                    bail!(
                        "{} lines still refused with 503 after {attempt} attempts (first: line {})",
                        again.len(),
                        again[0].no
                    );
                }
                summary.resent += 1;
                self.retry.backoff(attempt).await;
            }
            lines = again;
        }
        Ok(())
    }
}

async fn run_lane(
    sender: Sender,
    mut lines: mpsc::Receiver<Line>,
) -> anyhow::Result<IngestSummary> {
    let mut summary = IngestSummary::default();
    let mut slice = Vec::with_capacity(LINES_PER_REQUEST);
    loop {
        let next = lines.recv().await;
        let end = next.is_none();
        if let Some(line) = next {
            slice.push(line);
        }
        if slice.len() >= LINES_PER_REQUEST || (end && !slice.is_empty()) {
            sender
                .slice(std::mem::take(&mut slice), &mut summary)
                .await?;
        }
        if end {
            return Ok(summary);
        }
    }
}

/// Reads `input` on a thread of its own, numbering and keying its lines.
fn spawn_reader(
    input: Input,
    run: String,
    prefix: Option<String>,
    lanes: Vec<mpsc::Sender<Line>>,
) -> std::thread::JoinHandle<anyhow::Result<HashSet<String>>> {
    std::thread::spawn(move || {
        let reader: Box<dyn BufRead> = match &input {
            Input::Stdin => Box::new(std::io::stdin().lock()),
            Input::File(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
            )),
        };
        let mut named = HashSet::new();
        for (i, line) in reader.lines().enumerate() {
            let text = line.with_context(|| format!("read line {}", i + 1))?;
            if text.trim().is_empty() {
                continue;
            }
            let no = i + 1;
            // A line without a readable doc_id still goes to the server, which explains the
            // refusal.
            let head = serde_json::from_str::<Head<'_>>(&text).ok();
            let doc_id = head
                .as_ref()
                .and_then(|h| h.doc_id.as_deref().map(str::to_owned));
            let has_key = head.as_ref().is_some_and(|h| h.idempotency_key.is_some());
            if let (Some(prefix), Some(doc)) = (&prefix, &doc_id) {
                if doc.starts_with(prefix.as_str()) {
                    named.insert(doc.clone());
                }
            }
            let lane = doc_id
                .as_deref()
                .map_or(0, |d| stream_hash(d) as usize % lanes.len());
            let line = Line {
                no,
                doc_id,
                text: keyed(text, &run, no, has_key),
            };
            if lanes[lane].blocking_send(line).is_err() {
                break; // the lane failed; its error is reported
            }
        }
        Ok(named)
    })
}

/// Ingests `input` through the service.
///
/// # Errors
/// When the input cannot be read, or the service cannot be reached or refuses a whole
/// request after the retries: the run did not finish (and a sync deleted nothing).
pub async fn ingest(input: Input, options: &IngestOptions) -> anyhow::Result<IngestSummary> {
    let client = reqwest::Client::new();
    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos} lines answered, {per_sec}, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let sender = Sender {
        client: client.clone(),
        endpoint: format!("{}/v1/documents:batch", options.url),
        bearer: options.bearer.clone(),
        retry: options.retry,
        progress: progress.clone(),
    };
    let run = {
        use rand::Rng;
        format!("{:016x}", rand::rng().random::<u64>())
    };
    let lanes = options.concurrency.max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Line>(LINES_PER_REQUEST * 2);
        senders.push(tx);
        tasks.push(tokio::spawn(run_lane(sender.clone(), rx)));
    }
    let reader = spawn_reader(input, run.clone(), options.sync_prefix.clone(), senders);
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
    let named = tokio::task::spawn_blocking(move || reader.join())
        .await
        .map_err(|e| anyhow::anyhow!("input reader: {e}"))?
        .map_err(|_| anyhow::anyhow!("input reader panicked"))?;
    progress.finish_and_clear();
    if let Some(e) = first_error {
        return Err(e.context(format!("after {summary}")));
    }
    let named = named.with_context(|| format!("after {summary}"))?;
    // A refused line is a document the run meant to keep or change: a sync would treat it
    // as never sent and might delete it.
    summary.sync_skipped = options.sync_prefix.is_some() && summary.num_refused() > 0;
    if let Some(prefix) = options
        .sync_prefix
        .as_ref()
        .filter(|_| !summary.sync_skipped)
    {
        let sync = sync(
            &sender,
            &client,
            options,
            prefix,
            &named,
            &run,
            &mut summary,
        )
        .await?;
        summary.sync = Some(sync);
    }
    Ok(summary)
}

/// Deletes every live document under `prefix` that `named` does not hold.
async fn sync(
    sender: &Sender,
    client: &reqwest::Client,
    options: &IngestOptions,
    prefix: &str,
    named: &HashSet<String>,
    run: &str,
    summary: &mut IngestSummary,
) -> anyhow::Result<SyncSummary> {
    let mut out = SyncSummary {
        prefix: prefix.to_owned(),
        ..SyncSummary::default()
    };
    let mut stale = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = client
            .get(format!("{}/v1/documents", options.url))
            .query(&[("prefix", prefix), ("limit", &LIST_PAGE.to_string())]);
        if let Some(after) = &after {
            req = req.query(&[("after", after)]);
        }
        if let Some(b) = &options.bearer {
            req = req.header("authorization", b);
        }
        let res = req.send().await.context("list the documents to sync")?;
        let status = res.status();
        let page: serde_json::Value = res.json().await.context("read the listing")?;
        if !status.is_success() {
            bail!("listing refused with {status}: {page}");
        }
        for doc in page["documents"].as_array().into_iter().flatten() {
            let (Some(id), Some(version)) = (doc["doc_id"].as_str(), doc["version"].as_u64())
            else {
                bail!("unexpected listing entry: {doc}");
            };
            if named.contains(id) {
                out.kept += 1;
            } else {
                stale.push((id.to_owned(), version));
            }
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    for chunk in stale.chunks(LINES_PER_REQUEST) {
        let lines: Vec<Line> = chunk
            .iter()
            .enumerate()
            .map(|(i, (id, version))| Line {
                no: i + 1,
                doc_id: Some(id.clone()),
                text: serde_json::json!({
                    "op": "delete",
                    "doc_id": id,
                    "expected_version": version,
                    "idempotency_key": format!("ingest-{run}-sync-{id}"),
                })
                .to_string(),
            })
            .collect();
        let answers = sender.send(&lines, &mut summary.resent).await?;
        for (line, answer) in lines.iter().zip(answers) {
            match answer.status {
                200..=299 => out.deleted += 1,
                // Written or deleted since it was listed: not this sync's to delete.
                404 | 409 => out.changed += 1,
                status => bail!(
                    "deleting {} refused with {status}: {}",
                    line.doc_id.as_deref().unwrap_or("?"),
                    answer.error
                ),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_a_key_gets_one_of_the_run_and_keeps_its_bytes() {
        let line = r#"{"op":"put","doc_id":"a","title":"t  x"}"#.to_owned();
        let keyed = keyed(line, "run1", 7, false);
        assert_eq!(
            keyed,
            r#"{"idempotency_key":"ingest-run1-7","op":"put","doc_id":"a","title":"t  x"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&keyed).expect("json");
        assert_eq!(v["title"], "t  x");
        assert!(keyed_unchanged(r#"{"idempotency_key":"k","op":"delete"}"#));
        assert_eq!(
            super::keyed("{}".into(), "r", 1, false),
            r#"{"idempotency_key":"ingest-r-1"}"#
        );
        assert_eq!(super::keyed("not json".into(), "r", 1, false), "not json");
    }

    fn keyed_unchanged(line: &str) -> bool {
        super::keyed(line.to_owned(), "r", 1, true) == line
    }
}
