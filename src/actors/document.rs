//! The document actor: holds one document's state in memory after one load, and handles its
//! commands strictly one at a time (`AtomicResponse`), so decide → append → apply never
//! interleaves with another command of the same document in this process. Several processes
//! may serve one log, so the cached state is never trusted for an answer: an append names the
//! event count it was decided on (a stale state is a log conflict: refresh, decide again
//! once, then report the conflict), and every answer that appends nothing, and every read,
//! is given on a state brought up to the log first (see
//! [`crate::eventlog::LogAppends::refresh`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use aggregates::{
    CompensationOutcome, DocId, Document, DocumentCommand, DocumentError, DocumentEvent,
    RetryDecision, RetryFacts,
};
use bytes::Bytes;
use tracing::{debug, warn, Instrument};

use crate::eventlog::{
    AppendRequest, Appended, IdempotencyKey, IdempotentResult, LogError, ParkedResolution, PgLog,
    ResolveTarget,
};

/// Every this many events a snapshot of the state is stored, so loading stays short.
const SNAPSHOT_EVERY_EVENTS: i64 = 64;

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// The document's version afterwards.
    pub version: u64,
    /// Log position of the command's last event; None when nothing was appended.
    pub log_position: Option<i64>,
    /// The command changed nothing (equal put, or an idempotent repeat of one).
    pub unchanged: bool,
    /// What a compensation did (only for [`DocumentCommand::RequestCompensation`]).
    pub compensation: Option<CompensationOutcome>,
    /// This command's append created the document's stream just now (so no store can hold
    /// anything of it yet); false for every other outcome, idempotent repeats included.
    pub created: bool,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused it.
    #[error(transparent)]
    Refused(#[from] DocumentError),
    /// The log failed or reported a conflict.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The actor could not be reached in time (mailbox full or stopped).
    #[error("document actor unavailable: {0}")]
    Busy(String),
}

/// Execute a command on the document.
#[derive(Message, Clone)]
#[rtype(result = "Result<CommandOutcome, CommandError>")]
pub struct ExecuteCommand {
    /// The command.
    pub command: DocumentCommand,
    /// Blob bytes of a put (verified against the command's sha256 by the caller).
    pub blob: Option<Bytes>,
    /// Optional idempotency key.
    pub idempotency: Option<IdempotencyKey>,
    /// The parked change a [`DocumentCommand::RequestCompensation`] compensates; it is
    /// resolved in the transaction that appends the compensation's events.
    pub compensates: Option<i64>,
}

/// Re-drive the document if its stores disagree or a parked change of it is open
/// (`POST /v1/documents/{doc_id}/retry`, decided by [`aggregates::decide_retry`] on the
/// log's record of the document); refused with [`DocumentError::NotFound`] for a document
/// the log has never seen.
#[derive(Message, Clone)]
#[rtype(result = "Result<CommandOutcome, CommandError>")]
pub struct Retry;

/// Most compensations of the document a [`Retry`] considers.
const MAX_RETRY_COMPENSATIONS: i64 = 100;

/// Read the current state.
#[derive(Message, Clone)]
#[rtype(result = "Result<Document, CommandError>")]
pub struct GetState;

/// Stop when idle (sent by the registry to keep the number of live actors bounded).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate;

/// Called when a document actor stops (the registry forgets it).
pub type OnStop = Arc<dyn Fn(&DocId, &Addr<DocumentActor>) + Send + Sync>;

/// One document.
pub struct DocumentActor {
    doc_id: DocId,
    log: PgLog,
    state: Option<Document>,
    last_active: Instant,
    idle_timeout: Duration,
    mailbox_capacity: usize,
    on_stop: OnStop,
}

impl DocumentActor {
    /// A new actor for `doc_id`; `on_stop` is called when it stops (the registry forgets it).
    pub fn new(
        doc_id: DocId,
        log: PgLog,
        idle_timeout: Duration,
        mailbox_capacity: usize,
        on_stop: OnStop,
    ) -> Self {
        Self {
            doc_id,
            log,
            state: None,
            last_active: Instant::now(),
            idle_timeout,
            mailbox_capacity,
            on_stop,
        }
    }
}

impl Actor for DocumentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        let check = (self.idle_timeout / 2).max(Duration::from_millis(100));
        ctx.run_interval(check, |act, ctx| {
            if act.last_active.elapsed() >= act.idle_timeout {
                debug!(doc_id = %act.doc_id, "passivating idle document actor");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        (self.on_stop)(&self.doc_id, &ctx.address());
    }
}

impl Handler<Passivate> for DocumentActor {
    type Result = ();
    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<GetState> for DocumentActor {
    type Result = AtomicResponse<Self, Result<Document, CommandError>>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let log = self.log.clone();
        let doc_id = self.doc_id.clone();
        let cached = self.state.clone();
        AtomicResponse::new(Box::pin(
            async move {
                // The cache is a guess: another process may have appended since.
                match cached {
                    Some(doc) => log
                        .appends()
                        .refresh(&doc_id, doc)
                        .await
                        .map(|(doc, _)| doc)
                        .map_err(CommandError::from),
                    None => log
                        .appends()
                        .load(&doc_id)
                        .await
                        .map_err(CommandError::from),
                }
            }
            .into_actor(self)
            .map(|result, act, _| {
                if let Ok(doc) = &result {
                    act.state = Some(doc.clone());
                }
                result
            }),
        ))
    }
}

impl Handler<ExecuteCommand> for DocumentActor {
    type Result = AtomicResponse<Self, Result<CommandOutcome, CommandError>>;

    fn handle(&mut self, msg: ExecuteCommand, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let log = self.log.clone();
        let doc_id = self.doc_id.clone();
        let cached = self.state.clone();
        let kind = match &msg.command {
            DocumentCommand::Put(_) => "put",
            DocumentCommand::Delete { .. } => "delete",
            DocumentCommand::Erase { .. } => "erase",
            DocumentCommand::RequestCompensation { .. } => "compensate",
            DocumentCommand::Redrive { .. } => "retry",
        };
        let span = tracing::info_span!("command", doc_id = %doc_id, kind);
        AtomicResponse::new(Box::pin(
            execute(log, doc_id, cached, msg)
                .instrument(span)
                .into_actor(self)
                .map(|(state, result), act, _| {
                    // On failure the state may be stale (another writer): reload next time.
                    act.state = state;
                    result
                }),
        ))
    }
}

impl Handler<Retry> for DocumentActor {
    type Result = AtomicResponse<Self, Result<CommandOutcome, CommandError>>;

    fn handle(&mut self, _: Retry, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let log = self.log.clone();
        let doc_id = self.doc_id.clone();
        let cached = self.state.clone();
        let span = tracing::info_span!("command", doc_id = %doc_id, kind = "retry");
        AtomicResponse::new(Box::pin(
            retry(log, doc_id, cached)
                .instrument(span)
                .into_actor(self)
                .map(|(state, result), act, _| {
                    act.state = state;
                    result
                }),
        ))
    }
}

/// Reads what the log records about the document, lets [`aggregates::decide_retry`] decide,
/// and carries out a redrive through [`execute`] (which closes the open parked changes).
async fn retry(
    log: PgLog,
    doc_id: DocId,
    cached: Option<Document>,
) -> (Option<Document>, Result<CommandOutcome, CommandError>) {
    let decision = match retry_facts(&log, &doc_id).await {
        Ok(Some(facts)) => aggregates::decide_retry(&facts),
        Ok(None) => return (cached, Err(DocumentError::NotFound.into())),
        Err(e) => return (cached, Err(e.into())),
    };
    let (version, deleted) = match decision {
        RetryDecision::Unchanged { version } => {
            let outcome = CommandOutcome {
                version,
                log_position: None,
                unchanged: true,
                compensation: None,
                created: false,
            };
            return (cached, Ok(outcome));
        }
        RetryDecision::Redrive { version, deleted } => (version, deleted),
    };
    // The full state is read from the stream: the aggregate keeps a digest of the chunks.
    let content = if deleted {
        None
    } else {
        match log.parked().content_at(&doc_id, version).await {
            Ok(content) => content,
            Err(e) => return (cached, Err(e.into())),
        }
    };
    let command = DocumentCommand::Redrive {
        current_version: version,
        content,
    };
    let msg = ExecuteCommand {
        command,
        blob: None,
        idempotency: None,
        compensates: None,
    };
    execute(log, doc_id, cached, msg).await
}

/// The log's record of the document for a retry; `None` when the log has never seen it.
async fn retry_facts(log: &PgLog, doc_id: &DocId) -> Result<Option<RetryFacts>, LogError> {
    let Some(stream) = log.reads().stream_state(doc_id).await? else {
        return Ok(None);
    };
    // The parked changes are the durable record of compensations (not the cached state).
    let compensations = log
        .parked()
        .compensations(Some(doc_id), MAX_RETRY_COMPENSATIONS)
        .await?
        .into_iter()
        .map(|c| c.state)
        .collect();
    Ok(Some(RetryFacts {
        version: stream.version,
        deleted: stream.deleted,
        stores_consistent: stream.consistent(),
        compensations,
    }))
}

/// decide → append → apply, with one refresh-and-retry on a log conflict.
///
/// The cached state is only a guess when several processes serve one log: another one may
/// have appended since. An append is checked by the log itself (it names the event count it
/// was decided on), so a stale guess there costs a conflict, a refresh and a second decision.
/// Every other answer (unchanged, a refusal, a compensation that appends nothing) is given
/// only on a state read from the log during this command: a cached state is refreshed
/// first (one indexed read of the events after it; none in a single process) and the
/// command decided again if it moved.
async fn execute(
    log: PgLog,
    doc_id: DocId,
    cached: Option<Document>,
    msg: ExecuteCommand,
) -> (Option<Document>, Result<CommandOutcome, CommandError>) {
    let (mut state, mut fresh) = match cached {
        Some(s) => (s, false),
        None => match log.appends().load(&doc_id).await {
            Ok(s) => (s, true),
            Err(e) => return (None, Err(e.into())),
        },
    };
    let mut conflicts = 0;
    loop {
        let decided = match &msg.command {
            DocumentCommand::RequestCompensation { .. } => {
                let (events, outcome) = state.decide_compensation(&msg.command);
                Ok((events, Some(outcome)))
            }
            command => state.decide(command).map(|events| (events, None)),
        };
        let appends = matches!(&decided, Ok((events, _)) if !events.is_empty());
        if !appends && !fresh {
            match log.appends().refresh(&doc_id, state).await {
                Ok((current, moved)) => {
                    state = current;
                    fresh = true;
                    if moved {
                        debug!(doc_id = %doc_id, "cached state was behind the log; deciding again");
                        continue;
                    }
                }
                Err(e) => return (None, Err(e.into())),
            }
        }
        let (events, compensation) = match decided {
            Ok(decided) => decided,
            Err(refusal) => {
                // A retry whose first attempt was applied gets that attempt's answer, not the
                // refusal its own effect now causes (a repeated delete would be 404).
                if let Some(key) = &msg.idempotency {
                    match log.appends().idempotent_result(key).await {
                        Ok(Some(first)) => return (Some(state), Ok(outcome(first))),
                        Ok(None) => {}
                        Err(e) => return (Some(state), Err(e.into())),
                    }
                }
                return (Some(state), Err(refusal.into()));
            }
        };
        let resolution = resolution_of(&doc_id, &msg, compensation.as_ref(), state.version + 1);
        if events.is_empty() {
            if let (Some(resolution), Some(outcome)) = (&resolution, &compensation) {
                let done = match (outcome.resolves(), &resolution.target) {
                    (true, _) => log.parked().resolve_parked(resolution).await.map(|_| ()),
                    (false, ResolveTarget::One(id)) => {
                        log.parked()
                            .mark_needs_operator(*id, &resolution.resolution)
                            .await
                    }
                    (false, ResolveTarget::OpenOf(_)) => Ok(()),
                };
                if let Err(e) = done {
                    return (Some(state), Err(e.into()));
                }
                return (
                    Some(state.clone()),
                    Ok(CommandOutcome {
                        version: state.version,
                        log_position: None,
                        unchanged: true,
                        compensation,
                        created: false,
                    }),
                );
            }
            let result = IdempotentResult {
                version: state.version,
                log_position: None,
                unchanged: true,
            };
            let result = match &msg.idempotency {
                Some(key) => match log.appends().record_idempotent(&doc_id, key, &result).await {
                    Ok(first) => first,
                    Err(e) => return (Some(state), Err(e.into())),
                },
                None => result,
            };
            return (Some(state), Ok(outcome(result)));
        }
        let mut next = state.clone();
        for e in &events {
            next.apply_event(e);
        }
        let blob = blob_of(&events, msg.blob.as_ref());
        let request = AppendRequest {
            doc_id: &doc_id,
            expected_stream_version: state.stream_version,
            events: &events,
            doc_version: next.version,
            deleted: next.deleted,
            blob,
            idempotency: msg.idempotency.as_ref(),
            resolves: resolution.as_ref(),
        };
        match log.appends().append(request).await {
            Ok(Appended::Committed {
                last,
                stream_version,
            }) => {
                debug_assert_eq!(stream_version, next.stream_version);
                if next.stream_version / SNAPSHOT_EVERY_EVENTS
                    > state.stream_version / SNAPSHOT_EVERY_EVENTS
                {
                    let (log, doc_id, snapshot) = (log.clone(), doc_id.clone(), next.clone());
                    actix::spawn(async move {
                        if let Err(e) = log.appends().save_snapshot(&doc_id, &snapshot).await {
                            warn!(doc_id = %doc_id, error = %e, "saving snapshot failed (load will replay)");
                        }
                    });
                }
                let result = CommandOutcome {
                    version: next.version,
                    log_position: Some(last.position),
                    unchanged: false,
                    compensation,
                    created: state.stream_version == 0,
                };
                return (Some(next), Ok(result));
            }
            Ok(Appended::AlreadyResolved) => {
                // Another compensator handled it; our state may be behind its events.
                let result = CommandOutcome {
                    version: state.version,
                    log_position: None,
                    unchanged: true,
                    compensation: None,
                    created: false,
                };
                return (None, Ok(result));
            }
            Ok(Appended::Duplicate(first)) => {
                // Our state may be behind the first request's effect: reload next time.
                return (None, Ok(outcome(first)));
            }
            Err(LogError::Conflict { .. }) if conflicts == 0 => {
                conflicts += 1;
                debug!(doc_id = %doc_id, "append conflict, refreshing and deciding again");
                match log.appends().refresh(&doc_id, state).await {
                    Ok((current, _)) => {
                        state = current;
                        fresh = true;
                    }
                    Err(e) => return (None, Err(e.into())),
                }
            }
            Err(e) => return (None, Err(e.into())),
        }
    }
}

fn outcome(r: IdempotentResult) -> CommandOutcome {
    CommandOutcome {
        version: r.version,
        log_position: r.log_position,
        unchanged: r.unchanged,
        compensation: None,
        created: false,
    }
}

/// Which parked changes the command resolves, and how: a compensation closes its own parked
/// change; a retry closes every open one of the document (its new version supersedes them).
fn resolution_of(
    doc_id: &DocId,
    msg: &ExecuteCommand,
    compensation: Option<&CompensationOutcome>,
    next_version: u64,
) -> Option<ParkedResolution> {
    match (&msg.command, msg.compensates, compensation) {
        (DocumentCommand::RequestCompensation { .. }, Some(id), Some(outcome)) => {
            Some(ParkedResolution {
                target: ResolveTarget::One(id),
                resolution: outcome.describe(),
                resolved_version: outcome.restoring_version(),
            })
        }
        (DocumentCommand::Redrive { .. }, _, _) => Some(ParkedResolution {
            target: ResolveTarget::OpenOf(doc_id.clone()),
            resolution: format!("superseded by a retry at version {next_version}"),
            resolved_version: Some(next_version),
        }),
        _ => None,
    }
}

fn blob_of<'a>(events: &'a [DocumentEvent], bytes: Option<&Bytes>) -> Option<(&'a str, Bytes)> {
    events.iter().find_map(|e| match (e, bytes) {
        (DocumentEvent::BlobStored { sha256, .. }, Some(b)) => Some((sha256.as_str(), b.clone())),
        _ => None,
    })
}
