//! A short in-memory history of projection status for the status page's charts: every few
//! seconds the sampler records, per store, the events applied so far and the lag. Only a
//! view for humans: losing it on restart loses nothing that matters.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::projector::ProjectionView;
use crate::eventlog::PgLog;

/// Samples kept (at the default interval: ten minutes).
pub const HISTORY_SAMPLES: usize = 120;
/// Time between samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// One store at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSample {
    /// `mysql` | `milvus` | `s3`.
    pub name: &'static str,
    /// Events applied by this process so far.
    pub events_applied: u64,
    /// Unapplied events.
    pub lag_events: i64,
}

/// All stores at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Per store.
    pub stores: Vec<StoreSample>,
}

/// The ring of recent samples. Cheap to clone.
#[derive(Clone, Default)]
pub struct StatusHistory {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl StatusHistory {
    /// A copy of the samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a sample, dropping the oldest beyond [`HISTORY_SAMPLES`].
    pub fn push(&self, sample: Sample) {
        if let Ok(mut s) = self.samples.lock() {
            if s.len() == HISTORY_SAMPLES {
                s.pop_front();
            }
            s.push_back(sample);
        }
    }

    /// Samples the projections every `interval` until `cancel`.
    pub async fn run(
        self,
        log: PgLog,
        view: ProjectionView,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match view.status(&log).await {
                Ok(stores) => self.push(Sample {
                    at_ms: projections::runner::now_ms(),
                    stores: stores
                        .iter()
                        .map(|s| StoreSample {
                            name: s.name,
                            events_applied: s.partitions.iter().map(|p| p.events_applied).sum(),
                            lag_events: s.lag_events,
                        })
                        .collect(),
                }),
                // A missed sample only leaves a gap in a chart.
                Err(e) => debug!(error = %e, "status sample skipped"),
            }
        }
    }
}
