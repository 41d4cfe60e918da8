//! The three store clients a process uses: the projectors', the rebuild's, the verifier's
//! and the tools'.

use std::sync::Arc;

use aggregates::StoreKind;
use projections::milvus::MilvusSink;
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::{AppliedVersion, SinkError, Store};

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
    /// request, so a service starts and takes commands while a store is unreachable.
    ///
    /// # Errors
    /// A permanent [`SinkError`] when a store's URL or setting can never work.
    pub async fn connect(config: &Config) -> Result<Stores, SinkError> {
        Ok(Stores {
            mysql: Arc::new(MysqlSink::with_tls(config.mysql_url.expose(), &config.tls)?),
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
/// orchestrators (rebuild, verify) are written once against the ports and run per store.
pub trait StoreVisitor {
    /// What the work gives.
    type Output;
    /// Does the work with `store`'s client.
    fn visit<S: Store>(self, store: &Arc<S>) -> Self::Output;
}

impl Stores {
    /// Marks `docs` ready where readiness is kept: the catalogue's rows of exactly these
    /// versions (a row at another version stays as it is).
    ///
    /// # Errors
    /// The classified [`SinkError`].
    pub async fn mark_ready(&self, docs: &[AppliedVersion]) -> Result<(), SinkError> {
        self.mysql.mark_ready(docs).await
    }

    /// Runs `visitor` with the client of `store`: the one place that maps a store to its
    /// adapter.
    pub fn visit<V: StoreVisitor>(&self, store: StoreKind, visitor: V) -> V::Output {
        match store {
            StoreKind::Mysql => visitor.visit(&self.mysql),
            StoreKind::Milvus => visitor.visit(&self.milvus),
            StoreKind::S3 => visitor.visit(&self.s3),
        }
    }
}
