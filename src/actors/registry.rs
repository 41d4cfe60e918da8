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
    CommandError, CommandOutcome, DocumentActor, ExecuteCommand, GetState, Passivate,
};
use crate::config::ActorConfig;
use crate::eventlog::PgLog;

/// Shards of the id → actor map (less lock contention between API workers).
const SHARDS: usize = 16;

/// How long a request waits for its document actor before answering 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Shard = Mutex<HashMap<DocId, Addr<DocumentActor>>>;

struct Inner {
    shards: Vec<Shard>,
    arbiters: Vec<ArbiterHandle>,
    log: PgLog,
    config: ActorConfig,
    live: AtomicUsize,
}

/// Routes commands to document actors. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// A registry starting actors on `arbiters` (at least one).
    pub fn new(log: PgLog, config: ActorConfig, arbiters: Vec<ArbiterHandle>) -> Registry {
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

    fn addr(&self, doc_id: &DocId) -> Addr<DocumentActor> {
        let mut evict = None;
        let addr = {
            let mut shard = self
                .shard(doc_id)
                .lock()
                .expect("registry shard lock poisoned");
            if let Some(addr) = shard.get(doc_id).filter(|a| a.connected()) {
                return addr.clone();
            }
            if self.inner.live.load(Ordering::Relaxed) >= self.inner.config.max_live {
                evict = shard
                    .iter()
                    .find(|(id, _)| *id != doc_id)
                    .map(|(_, a)| a.clone());
            }
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let on_stop = Arc::new(move |id: &DocId, addr: &Addr<DocumentActor>| {
                if let Some(inner) = weak.upgrade() {
                    inner.live.fetch_sub(1, Ordering::Relaxed);
                    let shard = &inner.shards[stream_hash(id.as_str()) as usize % SHARDS];
                    if let Ok(mut map) = shard.lock() {
                        if map.get(id) == Some(addr) {
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
            shard.insert(doc_id.clone(), addr.clone());
            addr
        };
        if let Some(other) = evict {
            other.do_send(Passivate);
        }
        addr
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
        for _ in 0..2 {
            let addr = self.addr(doc_id);
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
        for _ in 0..2 {
            let addr = self.addr(doc_id);
            match tokio::time::timeout(REQUEST_TIMEOUT, addr.send(GetState)).await {
                Ok(Ok(result)) => return result,
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
}
