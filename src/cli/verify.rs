//! `docledger verify [--repair] [--json]`: compares every store with the log, optionally
//! repairs what differs and verifies again. Talks to the stores directly (no running service
//! needed); safe while one runs, because repairs are guarded sink writes.

use std::io::IsTerminal;

use serde::Serialize;

use crate::config::Config;
use crate::eventlog::PgLog;
use crate::stores::Stores;
use crate::verify::{RepairSummary, Verifier, VerifyError, VerifyReport};

/// Everything `verify` did, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct VerifyOutcome {
    /// The first verification.
    pub report: VerifyReport,
    /// The repair, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairSummary>,
    /// The verification after the repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_repair: Option<VerifyReport>,
}

impl VerifyOutcome {
    /// Every store matches the log at the end (after the repair, when there was one).
    pub fn matches(&self) -> bool {
        self.after_repair.as_ref().unwrap_or(&self.report).matches()
    }
}

/// Progress on stderr when it is a terminal: one rewritten line per phase.
fn progress(phase: &str, done: u64) {
    if done.is_multiple_of(500) {
        eprint!("\r\x1b[2K{phase}: {done}");
    }
}

fn quiet(_: &str, _: u64) {}

/// Connects to the log and the stores named in `config`, verifies, and repairs when asked.
///
/// # Errors
/// [`VerifyError`] when the log or a store cannot be reached, or a read or write fails
/// midway.
pub async fn run(config: &Config, repair: bool) -> Result<VerifyOutcome, VerifyError> {
    let log = PgLog::connect_with_tls(&config.eventstore_url, 4, &config.tls).await?;
    let stores = Stores::connect(config).await?;
    let verifier = Verifier::new(log, stores, config.projection.partitions.get());
    let show: &(dyn Fn(&str, u64) + Sync) = if std::io::stderr().is_terminal() {
        &progress
    } else {
        &quiet
    };
    let report = verifier.verify_all(show).await?;
    let (repair, after_repair) = if repair && !report.matches() {
        let summary = verifier.repair(&report).await?;
        let after = verifier.verify_all(show).await?;
        (Some(summary), Some(after))
    } else {
        (None, None)
    };
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    Ok(VerifyOutcome {
        report,
        repair,
        after_repair,
    })
}
