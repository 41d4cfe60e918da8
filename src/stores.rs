//! The three store clients a process uses: the projectors', the rebuild's, the verifier's
//! and the tools'.

use std::sync::Arc;

use projections::audit::AuditedStore;
use projections::milvus::MilvusSink;
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::{LogSource, SinkError};

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

    /// Every store behind its sink and audit ports, in [`aggregates::StoreKind::ALL`]'s
    /// order: the one place the verifier learns which stores there are. `L` is the log
    /// their checkpoints and repairs read.
    pub fn audited<L: LogSource>(&self) -> [&dyn AuditedStore<L>; 3] {
        [&*self.mysql, &*self.milvus, &*self.s3]
    }
}
