//! MySQL/MariaDB errors to [`ErrorClass`], decided once, here.

use mysql_async::Error;

use crate::error::{ErrorClass, SinkError};

/// Server error codes worth retrying: deadlock, lock wait timeout, too many connections,
/// server shutdown, read-only failover, query interrupted, and a database or table that is
/// missing (1049, 1146: the store was dropped behind docledger's back — an environment
/// problem that a restart's `prepare` or a rebuild fixes, never a reason to park data).
const TRANSIENT_SERVER_CODES: &[u16] = &[
    1213, 1205, 1040, 1053, 1290, 1317, 1927, 2006, 2013, 1049, 1146,
];

/// The store's name in messages.
const STORE: &str = "MySQL";

/// Classifies a client error (a failed TLS handshake is a connection failure: transient).
pub fn classify(e: &Error) -> ErrorClass {
    match e {
        Error::Server(s) if TRANSIENT_SERVER_CODES.contains(&s.code) => ErrorClass::Transient,
        // The server refused this statement's data: constraint, length, JSON, type.
        Error::Server(_) => ErrorClass::Permanent,
        // Connection, I/O, driver and URL problems may heal (server restarting, network).
        _ => ErrorClass::Transient,
    }
}

/// A classified [`SinkError`] for `operation`.
pub fn sink_error(operation: &'static str) -> impl FnOnce(Error) -> SinkError {
    move |e| SinkError {
        sink: super::NAME,
        operation,
        class: classify(&e),
        message: crate::tls::describe_for(STORE, &e).unwrap_or_else(|| e.to_string()),
        doc_id: None,
    }
}
