//! The one place that reads aws-sdk-s3 errors: SDK failure kinds, HTTP statuses and S3
//! error codes become an [`ErrorClass`].
//!
//! Transient: the request never got an answer (dispatch, I/O, timeout) or the answer says
//! "later" (5xx, 429, 408, `SlowDown`, `RequestTimeout`). Permanent: any other 4xx, i.e. S3
//! refuses this request. Two 4xx are about the environment rather than the request and stay
//! transient so that no document is parked for them: 401/403 (credentials, clock skew,
//! policy) and `NoSuchBucket` (the bucket vanished; `prepare` recreates it on restart).

use aws_sdk_s3::config::http::HttpResponse;
use std::error::Error;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::{ErrorClass, SinkError};

use super::NAME;

/// S3 error codes that mean "try again" whatever their HTTP status.
const RETRY_CODES: [&str; 4] = [
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
];
/// S3 error code of a missing bucket.
const NO_SUCH_BUCKET: &str = "NoSuchBucket";

/// How the runner must treat `err`.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    match err {
        // The SDK could not even build the request from what we gave it.
        SdkError::ConstructionFailure(_) => ErrorClass::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorClass::Transient,
        SdkError::ResponseError(e) => classify_status(e.raw().status().as_u16(), None),
        SdkError::ServiceError(e) => classify_status(e.raw().status().as_u16(), e.err().code()),
        // `SdkError` is non-exhaustive: a new kind is not proof that the request is bad.
        _ => ErrorClass::Transient,
    }
}

/// Classifies an S3 answer by HTTP status and S3 error code.
pub fn classify_status(status: u16, code: Option<&str>) -> ErrorClass {
    if code.is_some_and(|c| RETRY_CODES.contains(&c) || c == NO_SUCH_BUCKET) {
        return ErrorClass::Transient;
    }
    match status {
        401 | 403 | 408 | 429 => ErrorClass::Transient,
        400..=499 => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// What an operator needs to read about `err`: for an S3 answer its HTTP status, code and
/// message; for a failed TLS handshake why it failed; otherwise the chain of causes. (`DisplayErrorContext` prints the same chain but
/// appends the whole `Debug` dump, raw response included: too much for a status page or a
/// compensation reason stored in the log.)
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
{
    if let SdkError::ServiceError(e) = err {
        let status = e.raw().status().as_u16();
        let code = e.err().code().unwrap_or("no error code");
        return match e.err().message() {
            Some(message) if !message.is_empty() => format!("HTTP {status} {code}: {message}"),
            _ => format!("HTTP {status} {code}"),
        };
    }
    if let Some(why) = crate::tls::describe_for("S3", err) {
        return why;
    }
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// `err` as a classified [`SinkError`] of `operation` on `doc_id`'s object.
pub fn sink_error<E>(
    operation: &'static str,
    doc_id: Option<&str>,
    err: &SdkError<E, HttpResponse>,
) -> SinkError
where
    E: ProvideErrorMetadata + Error + 'static,
{
    let error = SinkError {
        sink: NAME,
        operation,
        class: classify(err),
        message: describe(err),
        doc_id: None,
    };
    match doc_id {
        Some(doc) => error.for_doc(doc),
        None => error,
    }
}

/// A key that DeleteObjects reported as not deleted, classified by its S3 error code
/// (the per-key answer has no HTTP status; access problems stay transient as above).
pub fn delete_key_error(doc_id: &str, code: Option<&str>, message: Option<&str>) -> SinkError {
    let class = match code {
        Some("AccessDenied") => ErrorClass::Transient,
        Some(c) => classify_status(400, Some(c)),
        None => ErrorClass::Transient,
    };
    SinkError {
        sink: NAME,
        operation: "delete objects",
        class,
        message: format!(
            "{}: {}",
            code.unwrap_or("no error code"),
            message.unwrap_or_default()
        ),
        doc_id: None,
    }
    .for_doc(doc_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_classes() {
        for status in [500, 502, 503, 504, 429, 408, 401, 403] {
            assert_eq!(
                classify_status(status, None),
                ErrorClass::Transient,
                "{status}"
            );
        }
        for status in [400, 404, 405, 409, 411, 413] {
            assert_eq!(
                classify_status(status, None),
                ErrorClass::Permanent,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_codes_and_a_missing_bucket_are_transient_whatever_the_status() {
        assert_eq!(
            classify_status(400, Some("RequestTimeout")),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_status(404, Some("NoSuchBucket")),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_status(400, Some("InvalidArgument")),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_status(400, Some("EntityTooLarge")),
            ErrorClass::Permanent
        );
    }
}
