//! A rebuild's observable progress: phase, documents done out of the log's documents, rate
//! and ETA, for `GET /v1/projections` and the command line's progress bar.

use std::sync::Mutex;
use std::time::Instant;

pub use crate::eventlog::{RebuildStatus, PHASE_DONE, PHASE_FAILED};

/// Shared progress of one rebuild.
#[derive(Debug)]
pub struct RebuildProgress {
    started: Instant,
    state: Mutex<RebuildStatus>,
    /// Seconds spent in each phase so far, in order, and when the current one began.
    timings: Mutex<PhaseTimings>,
}

#[derive(Debug)]
struct PhaseTimings {
    finished: Vec<(String, f64)>,
    current_since: Instant,
}

impl Default for RebuildProgress {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            state: Mutex::new(RebuildStatus {
                phase: "preparing".into(),
                ..RebuildStatus::default()
            }),
            timings: Mutex::new(PhaseTimings {
                finished: Vec::new(),
                current_since: now,
            }),
        }
    }
}

impl RebuildProgress {
    fn update(&self, f: impl FnOnce(&mut RebuildStatus)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// Enters `phase` (ending the current one: see [`RebuildProgress::phase_seconds`]).
    pub fn phase(&self, phase: &str) {
        let mut previous = None;
        self.update(|s| {
            if s.phase != phase {
                previous = Some(std::mem::replace(&mut s.phase, phase.to_owned()));
            }
        });
        // Entering the phase it is already in (the first, `preparing`) ends nothing.
        if let Some(previous) = previous {
            self.end_phase(previous);
        }
    }

    fn end_phase(&self, phase: String) {
        if let Ok(mut t) = self.timings.lock() {
            let now = Instant::now();
            let seconds = now.duration_since(t.current_since).as_secs_f64();
            t.current_since = now;
            t.finished.push((phase, seconds));
        }
    }

    /// Seconds spent in each phase that has ended, in order (a phase entered twice appears
    /// twice): where a rebuild's time went.
    pub fn phase_seconds(&self) -> Vec<(String, f64)> {
        self.timings
            .lock()
            .map(|t| t.finished.clone())
            .unwrap_or_default()
    }

    /// Sets the documents the log knows.
    pub fn total(&self, total: u64) {
        self.update(|s| s.documents_total = total);
    }

    /// Counts `documents` more done and `events` more read.
    pub fn advance(&self, documents: u64, events: u64) {
        self.update(|s| {
            s.documents_done += documents;
            s.events_read += events;
        });
    }

    /// Ends in failure.
    pub fn fail(&self, error: String) {
        let mut previous = String::new();
        self.update(|s| {
            previous = std::mem::replace(&mut s.phase, PHASE_FAILED.into());
            s.error = Some(error);
        });
        self.end_phase(previous);
    }

    /// A copy with rate, ETA and elapsed time computed now.
    pub fn snapshot(&self) -> RebuildStatus {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut s = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        if s.elapsed_seconds == 0.0 || !s.finished() {
            s.elapsed_seconds = elapsed;
            s.rate_per_second = if elapsed > 0.0 {
                s.documents_done as f64 / elapsed
            } else {
                0.0
            };
            s.eta_seconds = (s.phase == "building" && s.rate_per_second > 0.0).then(|| {
                s.documents_total.saturating_sub(s.documents_done) as f64 / s.rate_per_second
            });
        }
        s
    }

    /// Freezes the elapsed time and rate (called once at the end).
    pub fn finish(&self) {
        let snap = self.snapshot();
        if !snap.finished() {
            self.end_phase(snap.phase.clone());
        }
        self.update(|s| {
            s.elapsed_seconds = snap.elapsed_seconds;
            s.rate_per_second = snap.rate_per_second;
            s.eta_seconds = None;
            if s.phase != PHASE_FAILED {
                s.phase = PHASE_DONE.into();
            }
        });
    }
}
