//! The one error taxonomy of the projection runtime. Adapters classify their store's errors
//! once, in their `classify.rs`; the runner only ever looks at [`ErrorClass`].

/// How the runner must treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The store may accept the same request later (connection, timeout, 5xx, lock wait):
    /// retry with backoff, forever.
    Transient,
    /// The store refuses this data (constraint, schema, 4xx): retrying cannot help; the
    /// change is parked and compensation is requested.
    Permanent,
    /// The store (or the log) refused the write because another process owns the partition
    /// now (a newer fencing token was seen): the runner stops at once, parking nothing.
    Fenced,
}

impl ErrorClass {
    /// Label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fenced => "fenced",
        }
    }
}

/// A failure of a store adapter, already classified.
#[derive(Debug, thiserror::Error)]
#[error("{sink} {operation} failed ({}): {message}", class.as_str())]
pub struct SinkError {
    /// The sink (`mysql`, `milvus`, `s3`).
    pub sink: &'static str,
    /// What was being done (`upsert rows`, `put object`, ...).
    pub operation: &'static str,
    /// Transient or permanent.
    pub class: ErrorClass,
    /// The store's message, with context.
    pub message: String,
    /// The document concerned, when the failure is specific to one.
    pub doc_id: Option<String>,
}

impl SinkError {
    /// A transient failure.
    pub fn transient(
        sink: &'static str,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            sink,
            operation,
            class: ErrorClass::Transient,
            message: message.into(),
            doc_id: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(
        sink: &'static str,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            sink,
            operation,
            class: ErrorClass::Permanent,
            message: message.into(),
            doc_id: None,
        }
    }

    /// A write refused because a newer owner of the partition fenced it off.
    pub fn fenced(sink: &'static str, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            sink,
            operation,
            class: ErrorClass::Fenced,
            message: message.into(),
            doc_id: None,
        }
    }

    /// Names the document concerned.
    pub fn for_doc(mut self, doc_id: &str) -> Self {
        self.doc_id = Some(doc_id.to_owned());
        self
    }
}
