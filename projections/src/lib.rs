//! docledger's projections: the store adapters (MySQL, Milvus, S3) and the single runtime
//! that drives them — one read → coalesce → apply → checkpoint loop, one retry policy, one
//! error taxonomy. Stores plug in through the ports each implements in its own folder:
//! [`Sink`] (apply), [`Rebuild`] (rebuild from the log) and [`Audit`] (what verification
//! compares and repairs); the log plugs in through [`LogSource`].

pub mod audit;
pub mod error;
pub mod milvus;
pub mod mysql;
pub mod rebuild;
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
pub use rebuild::{FinalState, Rebuild, RebuildPage, RebuildStyle, RebuildTarget, TargetCounts};
pub use retry::RetryPolicy;
pub use runner::{Runner, RunnerConfig, RunnerStatus};
pub use sink::{Applied, Batch, DocChange, Partition, Sink};
pub use source::{AppliedVersion, LogSource, SourceError, StorePage};

/// Everything a store adapter implements: live apply ([`Sink`]), rebuild from the log
/// ([`Rebuild`]) and audit ([`Audit`]). A store plugs into docledger by implementing these
/// in its own folder and registering its client in one place (`docledger::stores`).
pub trait Store: Rebuild + Audit {}

impl<S: Rebuild + Audit> Store for S {}
