//! Routes commands to document actors by id, starting them on demand on one of the worker
//! arbiters (chosen by a hash of the id, so both cores are used) and forgetting them when
//! they stop. Idle actors passivate themselves; beyond the cap the registry asks others to
//! stop, so memory stays bounded however many documents exist. Two actors of one document
//! may briefly coexist (one stopping, one starting): the log's expected-version check keeps
//! that safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::prelude::*;
use actix::MailboxError;
use aggregates::{DocId, Document};
use projections::sink::stream_hash;

use super::document::{
    CommandError, CommandOutcome, DocumentActor, ExecuteCommand, GetState, Passivate, Retry,
};
use crate::config::ActorConfig;
use crate::eventlog::{LogError, PgLog};
use crate::metrics::{CommandLabels, Latencies};

/// Shards of the id → actor map (less lock contention between API workers).
const SHARDS: usize = 16;

/// How long a request waits for its document actor before answering 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A live actor and the number of requests sent to it and not yet answered.
#[derive(Clone)]
struct Entry {
    addr: Addr<DocumentActor>,
    in_flight: Arc<AtomicUsize>,
}

type Shard = Mutex<HashMap<DocId, Entry>>;

/// Decrements an actor's in-flight count when the request ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Inner {
    shards: Vec<Shard>,
    arbiters: Vec<ArbiterHandle>,
    log: PgLog,
    config: ActorConfig,
    live: AtomicUsize,
    /// Command latency, by command and outcome.
    latency: Latencies<CommandLabels>,
}

/// Routes commands to document actors. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// A registry starting actors on `arbiters` (at least one), timing each command into
    /// `latency`.
    pub fn new(
        log: PgLog,
        config: ActorConfig,
        arbiters: Vec<ArbiterHandle>,
        latency: Latencies<CommandLabels>,
    ) -> Registry {
        assert!(
            !arbiters.is_empty(),
            "the registry needs at least one arbiter"
        );
        Registry {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                arbiters,
                log,
                config,
                live: AtomicUsize::new(0),
                latency,
            }),
        }
    }

    /// Number of live document actors.
    pub fn live_actors(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    fn shard(&self, doc_id: &DocId) -> &Shard {
        &self.inner.shards[stream_hash(doc_id.as_str()) as usize % SHARDS]
    }

    /// The document's live actor, started when there is none, with one more request counted
    /// in flight (the count before it is returned too). The count is taken under the shard's
    /// lock, the same lock an eviction holds while it looks for an idle actor, so an actor a
    /// request has found or started is never evicted before the request reaches it.
    fn entry(&self, doc_id: &DocId) -> (Entry, usize) {
        let mut evict = None;
        let (entry, before) = {
            let mut shard = self
                .shard(doc_id)
                .lock()
                .expect("registry shard lock poisoned");
            if let Some(entry) = shard.get(doc_id).filter(|e| e.addr.connected()) {
                let before = entry.in_flight.fetch_add(1, Ordering::AcqRel);
                return (entry.clone(), before);
            }
            if self.inner.live.load(Ordering::Relaxed) >= self.inner.config.max_live {
                // Evict an idle actor (no request counted on it): this shard first, then any
                // other shard not locked right now (try_lock: never wait on a second lock).
                // It leaves the map at once, so no later request is sent to it while it stops;
                // a request for its document starts a new actor, which reads the log.
                let take_idle = |map: &mut HashMap<DocId, Entry>| {
                    let id = map
                        .iter()
                        .find(|(id, e)| *id != doc_id && e.in_flight.load(Ordering::Acquire) == 0)
                        .map(|(id, _)| id.clone())?;
                    map.remove(&id).map(|e| e.addr)
                };
                evict = take_idle(&mut shard).or_else(|| {
                    self.inner
                        .shards
                        .iter()
                        .filter_map(|other| other.try_lock().ok())
                        .find_map(|mut map| take_idle(&mut map))
                });
            }
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let on_stop = Arc::new(move |id: &DocId, addr: &Addr<DocumentActor>| {
                if let Some(inner) = weak.upgrade() {
                    inner.live.fetch_sub(1, Ordering::Relaxed);
                    let shard = &inner.shards[stream_hash(id.as_str()) as usize % SHARDS];
                    if let Ok(mut map) = shard.lock() {
                        if map.get(id).map(|e| &e.addr) == Some(addr) {
                            map.remove(id);
                        }
                    }
                }
            });
            let arbiter = &self.inner.arbiters
                [stream_hash(doc_id.as_str()) as usize % self.inner.arbiters.len()];
            let (id, log, cfg) = (
                doc_id.clone(),
                self.inner.log.clone(),
                self.inner.config.clone(),
            );
            let addr = DocumentActor::start_in_arbiter(arbiter, move |_| {
                DocumentActor::new(id, log, cfg.idle_timeout, cfg.mailbox_capacity, on_stop)
            });
            self.inner.live.fetch_add(1, Ordering::Relaxed);
            let entry = Entry {
                addr,
                in_flight: Arc::new(AtomicUsize::new(1)),
            };
            shard.insert(doc_id.clone(), entry.clone());
            (entry, 0)
        };
        if let Some(other) = evict {
            other.do_send(Passivate);
        }
        (entry, before)
    }

    /// Reserves a place in the document's mailbox, or refuses at once when it is full
    /// (back-pressure: the API answers 503 with Retry-After instead of queueing without bound).
    fn reserve(&self, doc_id: &DocId) -> Result<(Addr<DocumentActor>, InFlight), CommandError> {
        let (entry, before) = self.entry(doc_id);
        let guard = InFlight(entry.in_flight);
        if before >= self.inner.config.mailbox_capacity {
            return Err(CommandError::Busy(format!(
                "document {doc_id} already has {before} requests waiting; retry later"
            )));
        }
        Ok((entry.addr, guard))
    }

    /// Executes a command on the document's actor.
    ///
    /// # Errors
    /// The actor's [`CommandError`], or [`CommandError::Busy`] when it cannot be reached in time.
    pub async fn execute(
        &self,
        doc_id: &DocId,
        msg: ExecuteCommand,
    ) -> Result<CommandOutcome, CommandError> {
        let command = msg.command.kind();
        self.timed(command, self.ask(doc_id, msg)).await
    }

    /// Re-drives the document if it needs it ([`Retry`]); timed as a `redrive` command.
    ///
    /// # Errors
    /// As [`Registry::execute`].
    pub async fn retry(&self, doc_id: &DocId) -> Result<CommandOutcome, CommandError> {
        // The command a retry executes when it appends: `aggregates::DocumentCommand::kind`'s name.
        self.timed("redrive", self.ask(doc_id, Retry)).await
    }

    /// Awaits `command`, recording its latency by command and outcome.
    async fn timed(
        &self,
        command: &'static str,
        result: impl std::future::Future<Output = Result<CommandOutcome, CommandError>>,
    ) -> Result<CommandOutcome, CommandError> {
        let started = std::time::Instant::now();
        let result = result.await;
        let outcome = match &result {
            Ok(o) if o.unchanged => "unchanged",
            Ok(_) => "committed",
            Err(CommandError::Refused(_))
            | Err(CommandError::Log(LogError::IdempotencyKeyReused { .. })) => "refused",
            Err(CommandError::Log(LogError::Conflict { .. })) => "conflict",
            Err(CommandError::Log(_)) => "unavailable",
            Err(CommandError::Busy(_)) => "busy",
        };
        self.inner
            .latency
            .get_or_create(&CommandLabels { command, outcome })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Sends `msg` to the document's actor (a fresh one if it stopped on the way).
    async fn ask<M, T>(&self, doc_id: &DocId, msg: M) -> Result<T, CommandError>
    where
        M: Message<Result = Result<T, CommandError>> + Clone + Send + 'static,
        T: Send + 'static,
        DocumentActor: Handler<M>,
    {
        for _ in 0..2 {
            let (addr, _in_flight) = self.reserve(doc_id)?;
            match tokio::time::timeout(REQUEST_TIMEOUT, addr.send(msg.clone())).await {
                Ok(Ok(result)) => return result,
                // Stopped between lookup and send (passivation): start a fresh one.
                Ok(Err(MailboxError::Closed)) => continue,
                Ok(Err(MailboxError::Timeout)) | Err(_) => {
                    return Err(CommandError::Busy(
                        "timed out waiting for the document actor".into(),
                    ))
                }
            }
        }
        Err(CommandError::Busy("document actor keeps stopping".into()))
    }

    /// The document's current state.
    ///
    /// # Errors
    /// As [`Registry::execute`].
    pub async fn state(&self, doc_id: &DocId) -> Result<Document, CommandError> {
        self.ask(doc_id, GetState).await
    }
}
