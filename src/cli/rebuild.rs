//! `docledger rebuild mysql|milvus|s3|all`.
//!
//! By default through the running service (`POST /v1/projections/{name}/rebuild`, then
//! `GET /v1/projections` for progress): the service owns the projectors, so only it can
//! pause them for the hand-over; ingestion continues meanwhile. `--standalone` rebuilds in
//! this process against the stores directly, for when no service runs (after a disaster,
//! before the first start); it refuses while a service answers at `--url`, because a
//! service's projectors would keep writing the old store across the switch.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use aggregates::StoreKind;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::eventlog::PgLog;
use crate::rebuild::{RebuildProgress, RebuildStatus, Rebuilder};
use crate::stores::Stores;

/// How often progress is refreshed.
const POLL: Duration = Duration::from_millis(250);

/// The stores named on the command line.
///
/// # Errors
/// An unknown name.
pub fn stores_of(name: &str) -> anyhow::Result<Vec<StoreKind>> {
    if name == "all" {
        return Ok(StoreKind::ALL.to_vec());
    }
    StoreKind::from_name(name)
        .map(|s| vec![s])
        .with_context(|| format!("unknown store {name:?}: mysql | milvus | s3 | all"))
}

fn bar(store: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{prefix:>6} {msg:<12} [{bar:40}] {pos}/{len} docs {per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(store.to_owned());
    Some(bar)
}

fn show(bar: Option<&ProgressBar>, status: &RebuildStatus) {
    if let Some(bar) = bar {
        bar.set_length(status.documents_total.max(status.documents_done));
        bar.set_position(status.documents_done);
        bar.set_message(status.phase.clone());
    }
}

fn line(store: &str, status: &RebuildStatus) -> String {
    format!(
        "{store}: {} — {} documents in {:.1}s ({:.0} documents/s), {} events read{}",
        status.phase,
        status.documents_done,
        status.elapsed_seconds,
        status.rate_per_second,
        status.events_read,
        status
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"))
    )
}

/// Rebuilds through the service at `url`; returns one summary line per store.
///
/// # Errors
/// The service cannot be reached, refuses, or a rebuild fails.
pub async fn through_service(
    url: &str,
    bearer: Option<String>,
    stores: &[StoreKind],
) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| match &bearer {
        Some(b) => r.header("Authorization", b),
        None => r,
    };
    let mut lines = Vec::new();
    for store in stores {
        let name = store.name();
        let res = auth(http.post(format!("{url}/v1/projections/{name}/rebuild")))
            .send()
            .await
            .with_context(|| {
                format!("no service answers at {url} (use --standalone when none runs)")
            })?;
        if !res.status().is_success() {
            bail!(
                "the service refused to rebuild {name}: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        let bar = bar(name);
        let status = loop {
            tokio::time::sleep(POLL).await;
            let all: Vec<serde_json::Value> = auth(http.get(format!("{url}/v1/projections")))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let status: Option<RebuildStatus> = all
                .iter()
                .find(|s| s["name"] == name)
                .and_then(|s| serde_json::from_value(s["rebuild"].clone()).ok());
            let Some(status) = status else { continue };
            show(bar.as_ref(), &status);
            if status.finished() {
                break status;
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if status.error.is_some() {
            bail!("{}", line(name, &status));
        }
        lines.push(line(name, &status));
    }
    Ok(lines)
}

/// Rebuilds in this process (no service may run: checked at `url`).
///
/// # Errors
/// A service answers at `url`, the log or a store cannot be reached, or a rebuild fails.
pub async fn standalone(
    config: &Config,
    url: &str,
    stores: &[StoreKind],
) -> anyhow::Result<Vec<String>> {
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?
        .get(format!("{url}/healthz"))
        .send()
        .await;
    if probe.is_ok_and(|r| r.status().is_success()) {
        bail!("a service answers at {url}: rebuild through it (without --standalone), it owns the projectors");
    }
    let log = PgLog::connect_with_tls(&config.eventstore_url, 8, &config.tls).await?;
    let connected = Stores::connect(config).await?;
    let rebuilder = Rebuilder::new(log, connected, config.projection.partitions.get(), false)
        .with_page_events(config.projection.rebuild_page_events);
    let cancel = CancellationToken::new();
    let mut lines = Vec::new();
    for store in stores {
        let progress = Arc::new(RebuildProgress::default());
        let bar = bar(store.name());
        let ticker = {
            let progress = progress.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    show(bar.as_ref(), &progress.snapshot());
                    tokio::time::sleep(POLL).await;
                }
            })
        };
        let result = rebuilder.rebuild(*store, &progress, &cancel).await;
        ticker.abort();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let status = progress.snapshot();
        result.with_context(|| line(store.name(), &status))?;
        lines.push(line(store.name(), &status));
    }
    Ok(lines)
}
