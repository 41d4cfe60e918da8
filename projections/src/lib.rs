//! docledger's projections: the store adapters (MySQL, Milvus, S3) and the single runtime
//! that drives them — one read → coalesce → apply → checkpoint loop, one retry policy, one
//! error taxonomy. Stores plug in through [`Sink`] (and verification audits them through
//! [`Audit`]); the log plugs in through [`LogSource`].

pub mod audit;
pub mod error;
pub mod milvus;
pub mod mysql;
pub mod retry;
pub mod runner;
pub mod s3;
pub mod sink;
pub mod source;
pub mod testing;
pub mod tls;

pub use audit::{Audit, AuditError, AuditedStore, Finding, FindingKind};
pub use error::{ErrorClass, SinkError};
// `self::`: the `milvus` module shares its name with the milvus-sdk-rust crate.
pub use self::milvus::MilvusSink;
pub use self::s3::S3Sink;
pub use retry::RetryPolicy;
pub use runner::{Runner, RunnerConfig, RunnerStatus};
pub use sink::{Applied, Batch, DocChange, Partition, Sink};
pub use source::{AppliedVersion, LogSource, SourceError, StorePage};
