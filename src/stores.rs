//! The three store clients a process uses: the projectors', the rebuild's, the verifier's
//! and the tools'.

use std::marker::PhantomData;
use std::sync::Arc;

use aggregates::StoreKind;
use futures::future::BoxFuture;
use projections::audit::AuditedStore;
use projections::milvus::MilvusSink;
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::{AppliedVersion, LogSource, Sink, SinkError, Store};

use crate::config::Config;

/// The three store clients, shared by projectors and tools.
#[derive(Clone)]
pub struct Stores {
    /// MySQL catalogue.
    pub mysql: Arc<MysqlSink>,
    /// Milvus vectors.
    pub milvus: Arc<MilvusSink>,
    /// S3 blobs.
    pub s3: Arc<S3Sink>,
}

impl Stores {
    /// The clients of the three stores named in `config`, over TLS where a URL asks for it
    /// (trusting `config.tls`). Nothing is sent yet: each client connects at its first
    /// request, so a service starts and takes commands while a store is unreachable. Must
    /// be called on a runtime that outlives the clients' users (the service's main one).
    ///
    /// # Errors
    /// A permanent [`SinkError`] when a store's URL or setting can never work.
    pub async fn connect(config: &Config) -> Result<Stores, SinkError> {
        let mysql = MysqlSink::with_tls(config.mysql_url.expose(), &config.tls)?;
        // The pool's background work runs here, on the caller's runtime (the service's
        // main one), not on the runtime of whichever request comes first.
        mysql.bind_to_current_runtime();
        Ok(Stores {
            mysql: Arc::new(mysql),
            milvus: Arc::new(MilvusSink::lazy(
                &config.milvus_access(),
                &config.milvus_collection,
                config.vector_dim,
            )?),
            s3: Arc::new(S3Sink::with_tls(
                config.s3_endpoint.expose().trim_end_matches('/'),
                &config.s3_credentials,
                &config.s3_region,
                &config.s3_bucket,
                &config.tls,
            )?),
        })
    }
}

/// Work to do with one store's client, whichever adapter it is ([`Stores::visit`]): the
/// runtime (projectors, tracker, rebuild, verify) is written once against the ports and
/// runs per store.
pub trait StoreVisitor<'s> {
    /// What the work gives.
    type Output;
    /// Does the work with `store`'s client.
    fn visit<S: Store>(self, store: &'s Arc<S>) -> Self::Output;
}

impl Stores {
    /// Runs `visitor` with the client of `store`: the one place that maps a store to its
    /// adapter.
    pub fn visit<'s, V: StoreVisitor<'s>>(&'s self, store: StoreKind, visitor: V) -> V::Output {
        match store {
            StoreKind::Mysql => visitor.visit(&self.mysql),
            StoreKind::Milvus => visitor.visit(&self.milvus),
            StoreKind::S3 => visitor.visit(&self.s3),
        }
    }

    /// Every store behind its audit port, in [`StoreKind::ALL`]'s order. `L` is the log
    /// their checkpoints and repairs read.
    pub fn audited<L: LogSource>(&self) -> [&dyn AuditedStore<L>; StoreKind::ALL.len()] {
        StoreKind::ALL.map(|store| self.visit(store, AsAudited(PhantomData)))
    }

    /// Marks `docs` ready in every store that keeps readiness ([`Sink::KEEPS_READINESS`]:
    /// the catalogue), where it holds exactly these versions.
    ///
    /// # Errors
    /// The classified [`SinkError`] of the first store that fails.
    pub async fn mark_ready(&self, docs: &[AppliedVersion]) -> Result<(), SinkError> {
        for store in StoreKind::ALL {
            self.visit(store, MarkReady(docs)).await?;
        }
        Ok(())
    }
}

/// A store as the verifier sees it.
struct AsAudited<L>(PhantomData<L>);

impl<'s, L: LogSource> StoreVisitor<'s> for AsAudited<L> {
    type Output = &'s dyn AuditedStore<L>;

    fn visit<S: Store>(self, store: &'s Arc<S>) -> Self::Output {
        &**store
    }
}

/// [`Sink::mark_ready`] of a store that keeps readiness.
struct MarkReady<'d>(&'d [AppliedVersion]);

impl<'s, 'd: 's> StoreVisitor<'s> for MarkReady<'d> {
    type Output = BoxFuture<'s, Result<(), SinkError>>;

    fn visit<S: Store>(self, store: &'s Arc<S>) -> Self::Output {
        Box::pin(async move {
            if S::KEEPS_READINESS {
                store.mark_ready(self.0).await
            } else {
                Ok(())
            }
        })
    }
}
