//! docledger's runtime: the PostgreSQL log, the document actors, the projectors, the HTTP API
//! and the command line's building blocks. `serve` is what `main` and the tests start.

pub mod config;
pub mod eventlog;
