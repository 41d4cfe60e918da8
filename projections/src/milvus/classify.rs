//! The one place that reads milvus-sdk-rust errors: gRPC status codes, Milvus server codes
//! and the SDK's own failures become an [`ErrorClass`].
//!
//! The rule: `Permanent` only when the request's content is at fault (an invalid parameter,
//! a field or dimension the schema does not have, data the SDK cannot encode), because a
//! permanent failure parks the change and asks for compensation. Everything about the
//! environment — connection, timeout, quota, rate limit, a node or collection that is not
//! ready, an unknown server failure — is `Transient`: the runner retries and shows the error
//! in the projection status until the store (or an operator) fixes it.

use ::milvus::v2::error::{Error, ServerError};

use crate::error::{ErrorClass, SinkError};

use super::NAME;

/// The store's name in messages.
pub(super) const STORE: &str = "Milvus";

/// gRPC status codes (the numbering is part of the gRPC spec, so it is stable).
mod grpc {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// Milvus 2.3+ server codes (`merr`) that blame the request's content.
mod server {
    /// `ErrCollectionIllegalSchema`.
    pub const ILLEGAL_SCHEMA: i32 = 105;
    /// `ErrIndexNotFound`.
    pub const INDEX_NOT_FOUND: i32 = 700;
    /// `ErrIndexNotSupported`.
    pub const INDEX_NOT_SUPPORTED: i32 = 701;
    /// `ErrParameterInvalid`: wrong dimension, too long a string, bad expression, ...
    pub const PARAMETER_INVALID: i32 = 1100;
    /// `ErrFieldNotFound`.
    pub const FIELD_NOT_FOUND: i32 = 1700;
    /// `ErrFieldInvalidName`.
    pub const FIELD_INVALID_NAME: i32 = 1701;
    /// `ErrInvalidInsertData`.
    pub const INVALID_INSERT_DATA: i32 = 1804;
    /// `ErrAliasCollectionNameConfilct` (sic): a collection still holds the alias' name.
    pub const ALIAS_COLLECTION_NAME_CONFLICT: i32 = 1601;
    /// `errUnexpected`: what Milvus 2.3 answers for anything unclassified, including a
    /// filter it cannot parse.
    pub const UNEXPECTED: i32 = (1 << 16) - 1;
    /// Servers before 2.4 put "retriable" into the code itself.
    pub const RETRIABLE_FLAG: i32 = 1 << 16;
    /// The reason part of a code.
    pub const REASON_MASK: i32 = (1 << 16) - 1;
}

/// How Milvus 2.3 starts the reason of an unparsable filter (sent with [`server::UNEXPECTED`]).
const UNPARSABLE_FILTER: &str = "cannot parse expression";

/// Legacy `common.ErrorCode`s (servers that send only those) that blame the content.
mod legacy {
    pub const ILLEGAL_ARGUMENT: i32 = 5;
    pub const ILLEGAL_DIMENSION: i32 = 7;
    pub const ILLEGAL_INDEX_TYPE: i32 = 8;
    pub const ILLEGAL_ROW_RECORD: i32 = 11;
    pub const ILLEGAL_VECTOR_ID: i32 = 12;
    pub const ILLEGAL_METRIC_TYPE: i32 = 23;
    /// Not a refusal: "no index yet".
    pub const INDEX_NOT_EXIST: i32 = 25;
    pub const UPSERT_AUTO_ID_TRUE: i32 = 51;
    pub const SCHEMA_MISMATCH: i32 = 62;
}

/// How the runner must treat `err`.
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Grpc(status) => classify_grpc(i32::from(status.code())),
        Error::Server(e) => classify_server(e),
        // Raised by the SDK before anything is sent: the request itself is wrong.
        Error::Conversion(_) | Error::Validation(_) => ErrorClass::Permanent,
        Error::RetryExhausted { source, .. } => classify(source),
        Error::Timeout(_)
        | Error::Cancelled(_)
        | Error::MalformedResponse(_)
        | Error::BulkImport(_)
        | Error::Unexpected(_) => ErrorClass::Transient,
        // `Error` is non-exhaustive: a new variant is not proof that the data is bad.
        _ => ErrorClass::Transient,
    }
}

fn classify_grpc(code: i32) -> ErrorClass {
    match code {
        grpc::INVALID_ARGUMENT
        | grpc::ALREADY_EXISTS
        | grpc::FAILED_PRECONDITION
        | grpc::OUT_OF_RANGE
        | grpc::UNIMPLEMENTED => ErrorClass::Permanent,
        // Unavailable, DeadlineExceeded, ResourceExhausted, Aborted, Cancelled, Unknown,
        // Internal, DataLoss, NotFound, PermissionDenied, Unauthenticated.
        _ => ErrorClass::Transient,
    }
}

fn classify_server(err: &ServerError) -> ErrorClass {
    let code = err.code();
    if code == server::UNEXPECTED && err.reason().starts_with(UNPARSABLE_FILTER) {
        return ErrorClass::Permanent;
    }
    if code != 0 {
        if code & server::RETRIABLE_FLAG != 0 {
            return ErrorClass::Transient;
        }
        return match code & server::REASON_MASK {
            server::ILLEGAL_SCHEMA
            | server::INDEX_NOT_SUPPORTED
            | server::PARAMETER_INVALID
            | server::FIELD_NOT_FOUND
            | server::FIELD_INVALID_NAME
            | server::INVALID_INSERT_DATA => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        };
    }
    match err.legacy_code() {
        legacy::ILLEGAL_ARGUMENT
        | legacy::ILLEGAL_DIMENSION
        | legacy::ILLEGAL_INDEX_TYPE
        | legacy::ILLEGAL_ROW_RECORD
        | legacy::ILLEGAL_VECTOR_ID
        | legacy::ILLEGAL_METRIC_TYPE
        | legacy::UPSERT_AUTO_ID_TRUE
        | legacy::SCHEMA_MISMATCH => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// Whether `err` says the collection has no index (Milvus 2.3 answers "list indexes" of an
/// unindexed collection with an error instead of an empty list).
pub fn is_index_not_found(err: &Error) -> bool {
    match err {
        Error::Server(e) => {
            e.code() & server::REASON_MASK == server::INDEX_NOT_FOUND
                || (e.code() == 0 && e.legacy_code() == legacy::INDEX_NOT_EXIST)
        }
        Error::RetryExhausted { source, .. } => is_index_not_found(source),
        _ => false,
    }
}

/// Whether `err` says an alias cannot be created because a collection holds its name: a
/// collection made under that name meanwhile, or one dropped whose name Milvus has not
/// released yet (it removes a dropped collection's name in a step after answering).
pub fn is_alias_name_conflict(err: &Error) -> bool {
    match err {
        Error::Server(e) => {
            e.code() & server::REASON_MASK == server::ALIAS_COLLECTION_NAME_CONFLICT
        }
        Error::RetryExhausted { source, .. } => is_alias_name_conflict(source),
        _ => false,
    }
}

/// `err` as a classified [`SinkError`] of `operation`.
pub fn sink_error(operation: &'static str, err: &Error) -> SinkError {
    SinkError {
        sink: NAME,
        operation,
        class: classify(err),
        message: crate::tls::describe_for(STORE, err).unwrap_or_else(|| err.to_string()),
        doc_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_transport_failures_are_transient_and_bad_requests_permanent() {
        // Unavailable, DeadlineExceeded, ResourceExhausted, Internal.
        for code in [14, 4, 8, 13] {
            assert_eq!(classify_grpc(code), ErrorClass::Transient, "{code}");
        }
        for code in [3, 11, 12] {
            assert_eq!(classify_grpc(code), ErrorClass::Permanent, "{code}");
        }
    }

    fn server_with(code: i32, legacy_code: i32, reason: &str) -> Error {
        // The SDK's (doc-hidden) proto types are the only way to build a server error.
        #[allow(deprecated)] // `error_code` is deprecated but still sent by Milvus 2.3
        let status = ::milvus::proto::common::Status {
            code,
            error_code: legacy_code,
            reason: reason.into(),
            ..Default::default()
        };
        Error::from(status)
    }

    fn server(code: i32, legacy_code: i32) -> Error {
        server_with(code, legacy_code, "test")
    }

    #[test]
    fn server_codes_blame_the_data_only_when_the_request_is_invalid() {
        assert_eq!(classify(&server(1100, 5)), ErrorClass::Permanent);
        assert_eq!(classify(&server(0, 7)), ErrorClass::Permanent);
        // Service not ready (retriable flag set by 2.3 servers), collection not loaded,
        // rate limit, unexpected.
        assert_eq!(classify(&server(1 | (1 << 16), 56)), ErrorClass::Transient);
        assert_eq!(classify(&server(101, 1)), ErrorClass::Transient);
        assert_eq!(classify(&server(0, 49)), ErrorClass::Transient);
        assert_eq!(classify(&server(65535, 1)), ErrorClass::Transient);
        // What Milvus 2.3.5 really answers for `doc_id ==`.
        let unparsable = server_with(65535, 1, "cannot parse expression: doc_id ==, error: x");
        assert_eq!(classify(&unparsable), ErrorClass::Permanent);
        assert!(is_index_not_found(&server_with(
            700,
            25,
            "index not found[indexName=]"
        )));
    }

    #[test]
    fn an_alias_name_taken_by_a_collection_is_told_apart() {
        // What Milvus 2.3.5 answered in the scale-out test's rebuild.
        let conflict = server_with(
            1601,
            1,
            "alias and collection name conflict[database=default][alias=t_x]",
        );
        assert!(is_alias_name_conflict(&conflict));
        assert!(is_alias_name_conflict(&Error::RetryExhausted {
            attempts: 1,
            source: Box::new(conflict),
        }));
        assert!(!is_alias_name_conflict(&server(1600, 1)));
        assert!(!is_alias_name_conflict(&Error::Timeout("rpc".into())));
    }

    #[test]
    fn sdk_timeouts_are_transient_and_retry_exhaustion_keeps_the_cause() {
        assert_eq!(
            classify(&Error::Timeout("rpc".into())),
            ErrorClass::Transient
        );
        let exhausted = Error::RetryExhausted {
            attempts: 1,
            source: Box::new(Error::Timeout("rpc".into())),
        };
        assert_eq!(classify(&exhausted), ErrorClass::Transient);
    }
}
