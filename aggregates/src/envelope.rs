//! Identifiers and envelopes shared by the log, the actors and the projectors.
//!
//! Invariants kept here: a [`DocId`] is always valid by the contract's rules (so it can be
//! used as a MySQL key, a Milvus filter literal and an S3 key without escaping), and
//! [`LogCursor`]s order exactly like the log does: by epoch, then transaction id, then position.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A document's version: 1 for the first accepted change, +1 for each further one; 0 = never seen.
pub type Version = u64;

/// Longest `doc_id`, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 255;

/// A validated document id: 1–255 bytes of `[A-Za-z0-9._:@/-]`, not starting or ending with
/// `/`, without `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocId(String);

/// Why a string is not a valid [`DocId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocIdError {
    /// Empty or longer than [`MAX_DOC_ID_BYTES`].
    #[error("doc_id must be 1 to {MAX_DOC_ID_BYTES} bytes, got {0}")]
    Length(usize),
    /// A byte outside `[A-Za-z0-9._:@/-]`.
    #[error("doc_id contains a character outside [A-Za-z0-9._:@/-] at byte {0}")]
    Character(usize),
    /// Starts or ends with `/`.
    #[error("doc_id must not start or end with '/'")]
    Slash,
    /// Contains `..`.
    #[error("doc_id must not contain '..'")]
    DotDot,
}

/// Whether `b` may appear in a document id.
pub fn is_doc_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'/' | b'-')
}

impl DocId {
    /// Validates `s` by the contract's rules.
    ///
    /// # Errors
    /// [`DocIdError`] naming the first rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self, DocIdError> {
        Self::validate(s)?;
        Ok(Self(s.to_owned()))
    }

    /// Checks `s` by the contract's rules without keeping it.
    ///
    /// # Errors
    /// [`DocIdError`] naming the first rule `s` breaks.
    pub fn validate(s: &str) -> Result<(), DocIdError> {
        if s.is_empty() || s.len() > MAX_DOC_ID_BYTES {
            return Err(DocIdError::Length(s.len()));
        }
        if let Some(at) = s.bytes().position(|b| !is_doc_id_byte(b)) {
            return Err(DocIdError::Character(at));
        }
        if s.starts_with('/') || s.ends_with('/') {
            return Err(DocIdError::Slash);
        }
        if s.contains("..") {
            return Err(DocIdError::DotDot);
        }
        Ok(())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DocId {
    type Error = DocIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DocId> for String {
    fn from(value: DocId) -> Self {
        value.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DocId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A point in the global log order: `(epoch, xid, position)`, compared in that order.
///
/// `xid` is the PostgreSQL `xid8` of the appending transaction; `position` the event's
/// identity column. Readers only return events whose transaction is older than every running
/// one, ordered and paged by this whole tuple, so a cursor never passes an event that could
/// still commit. `epoch` grows when the log database is restored or migrated, so events
/// written after that sort after everything before it even if transaction ids restart lower.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogCursor {
    /// Log epoch (starts at 1; 0 = before the first event).
    pub epoch: i32,
    /// Transaction id (`xid8`) of the appending transaction.
    pub xid: u64,
    /// The event's position (identity column).
    pub position: i64,
}

impl LogCursor {
    /// Before the first event of the log.
    pub const START: LogCursor = LogCursor {
        epoch: 0,
        xid: 0,
        position: 0,
    };
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.epoch, self.xid, self.position)
    }
}

/// An event as read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent<E> {
    /// Where the event sits in the global order.
    pub cursor: LogCursor,
    /// The document (stream) it belongs to.
    pub doc_id: DocId,
    /// 1-based sequence number of the event within its stream.
    pub stream_version: i64,
    /// Milliseconds since the Unix epoch at which the log recorded it.
    pub recorded_at_ms: i64,
    /// The event itself.
    pub event: E,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_id_rules() {
        for ok in ["a", "Report-1", "x/y", "a:b@c.d_e-f", &"z".repeat(255)] {
            assert!(DocId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(DocId::parse(""), Err(DocIdError::Length(0)));
        assert_eq!(DocId::parse(&"z".repeat(256)), Err(DocIdError::Length(256)));
        assert_eq!(DocId::parse("a b"), Err(DocIdError::Character(1)));
        assert_eq!(DocId::parse("a\"b"), Err(DocIdError::Character(1)));
        assert_eq!(DocId::parse("/a"), Err(DocIdError::Slash));
        assert_eq!(DocId::parse("a/"), Err(DocIdError::Slash));
        assert_eq!(DocId::parse("a/../b"), Err(DocIdError::DotDot));
        assert_eq!(DocId::parse("é"), Err(DocIdError::Character(0)));
    }

    #[test]
    fn cursor_orders_by_epoch_then_xid_then_position() {
        let a = LogCursor {
            epoch: 1,
            xid: 900,
            position: 5,
        };
        let b = LogCursor {
            epoch: 1,
            xid: 901,
            position: 2,
        };
        let c = LogCursor {
            epoch: 2,
            xid: 3,
            position: 1,
        };
        assert!(LogCursor::START < a && a < b && b < c);
    }
}
