//! `docledger erase DOC_ID… [--url URL] [--token T] [--timeout-ms N]`: erases documents
//! through a running service (`POST /v1/documents/{doc_id}:erase`), one after the other,
//! and prints one line per document.
//!
//! Each erasure carries an idempotency key, so a request sent again after a lost connection
//! or a 502/503/504/429 (honouring `Retry-After`) answers as the first one did. Exit codes:
//! 0 every document erased and dropped by every store; 1 some document unknown, refused, or
//! not yet dropped by every store within the timeout (erased in the log all the same);
//! 2 the run could not finish.

use std::fmt;

use projections::RetryPolicy;

use super::http::{send_retrying, transient_status, PostError};

/// How one document's erasure ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erased {
    /// Erased from the log; every store dropped it (`version`: the tombstone's).
    Done {
        /// The tombstone's version.
        version: u64,
        /// It was erased already: nothing changed.
        unchanged: bool,
    },
    /// Erased from the log; some store had not dropped it within the timeout.
    Pending {
        /// The tombstone's version.
        version: u64,
        /// The stores' applied versions as answered.
        stores: serde_json::Value,
    },
    /// Refused (unknown document, invalid id, conflict, ...).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error's code and message.
        error: String,
    },
}

/// One document's line of the run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseLine {
    /// The document.
    pub doc_id: String,
    /// How it ended.
    pub outcome: Erased,
}

impl EraseLine {
    /// Whether the document is erased everywhere.
    pub fn is_done(&self) -> bool {
        matches!(self.outcome, Erased::Done { .. })
    }
}

impl fmt::Display for EraseLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Erased::Done { version, unchanged } => write!(
                f,
                "{}: erased at version {version}{}; no store holds it",
                self.doc_id,
                if *unchanged { " (already)" } else { "" }
            ),
            Erased::Pending { version, stores } => write!(
                f,
                "{}: erased from the log at version {version}; stores not all done: {stores}",
                self.doc_id
            ),
            Erased::Refused { status, error } => {
                write!(f, "{}: refused ({status}): {error}", self.doc_id)
            }
        }
    }
}

/// Erases `doc_ids` through the service at `url`, waiting up to `timeout_ms` each.
///
/// # Errors
/// When a request still fails after `retry`'s attempts, or an answer cannot be read.
pub async fn erase(
    url: &str,
    bearer: Option<&str>,
    doc_ids: &[String],
    timeout_ms: u64,
    retry: &RetryPolicy,
) -> anyhow::Result<Vec<EraseLine>> {
    let client = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut lines = Vec::with_capacity(doc_ids.len());
    for (i, doc_id) in doc_ids.iter().enumerate() {
        let target = format!(
            "{}/v1/documents/{}:erase",
            url.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(doc_id, percent_encoding::NON_ALPHANUMERIC)
        );
        let key = format!("erase-{run}-{i}");
        let post = || async {
            let mut req = client
                .post(&target)
                .query(&[("timeout_ms", timeout_ms)])
                .header("idempotency-key", &key);
            if let Some(b) = bearer {
                req = req.header("authorization", b);
            }
            let res = req.send().await.map_err(|e| PostError::Transient {
                why: e.to_string(),
                retry_after: None,
            })?;
            let status = res.status().as_u16();
            let transient = transient_status(&res);
            let text = res.text().await.map_err(|e| PostError::Transient {
                why: format!("answer cut short: {e}"),
                retry_after: None,
            })?;
            if let Some(retry_after) = transient {
                return Err(PostError::Transient {
                    why: format!("{status}: {text}"),
                    retry_after,
                });
            }
            let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                PostError::Fatal(anyhow::anyhow!(
                    "erase {doc_id}: answer {status} is not JSON ({e}): {text}"
                ))
            })?;
            Ok((status, body))
        };
        let (status, body) = send_retrying(
            retry,
            |attempt, why| {
                eprintln!("erase {doc_id}: attempt {attempt} failed, sending again: {why}")
            },
            post,
        )
        .await
        .map_err(|e| e.context(format!("erase {doc_id}")))?;
        let version = body["version"].as_u64();
        let outcome = match (status, version) {
            (200, Some(version)) => Erased::Done {
                version,
                unchanged: body["unchanged"] == true,
            },
            (202, Some(version)) => Erased::Pending {
                version,
                stores: body["stores"].clone(),
            },
            _ => Erased::Refused {
                status,
                error: format!(
                    "{}: {}",
                    body["error"]["code"].as_str().unwrap_or("unknown"),
                    body["error"]["message"].as_str().unwrap_or_default()
                ),
            },
        };
        lines.push(EraseLine {
            doc_id: doc_id.clone(),
            outcome,
        });
    }
    Ok(lines)
}
