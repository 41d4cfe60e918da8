//! `ApiError`: every way a request fails, each mapped to exactly one status and one
//! snake_case code, rendered as `{"error":{"code":…,"message":…}}`. A request that fails
//! changed nothing.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use aggregates::DocumentError;

use crate::actors::document::CommandError;
use crate::eventlog::LogError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON of the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    /// The document id breaks the contract's rules.
    #[error("{0}")]
    InvalidDocId(String),
    /// A field breaks a rule.
    #[error("{0}")]
    InvalidField(String),
    /// A query parameter is wrong.
    #[error("{0}")]
    InvalidQuery(String),
    /// An idempotency key was reused for another request.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// A read-only view (`/`, `/metrics`) without a valid token: also offers Basic
    /// authentication, so a browser asks for one.
    #[error("missing or invalid token (bearer, or the password of basic authentication)")]
    UnauthorizedView,
    /// Unknown document, or deleted for a delete.
    #[error("{0}")]
    NotFound(String),
    /// `expected_version` does not match, or a concurrent writer won twice.
    #[error("{0}")]
    VersionConflict(String),
    /// Body or blob beyond the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body did not arrive in time (`DOCLEDGER_BODY_TIMEOUT_MS`,
    /// `DOCLEDGER_BODY_IDLE_TIMEOUT_MS`).
    #[error("{0}")]
    RequestTimeout(String),
    /// A rebuild of the store is running (a second rebuild, or a pause/resume of its runners).
    #[error("{0}")]
    RebuildRunning(String),
    /// A dependency is down or the document actor is overloaded; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The contract's snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidDocId(_) => "invalid_doc_id",
            ApiError::InvalidField(_) => "invalid_field",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::Unauthorized | ApiError::UnauthorizedView => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::VersionConflict(_) => "version_conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::RebuildRunning(_) => "rebuild_running",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidDocId(_)
            | ApiError::InvalidField(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::UnauthorizedView => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::VersionConflict(_) | ApiError::RebuildRunning(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unavailable(_)) {
            res.insert_header(("Retry-After", "1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, ApiError::UnauthorizedView) {
            res.insert_header((
                "WWW-Authenticate",
                "Basic realm=\"docledger\", charset=\"UTF-8\"",
            ));
        }
        res.json(self.body())
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Conflict { .. } => {
                ApiError::VersionConflict(format!("{e}; retry with the current version"))
            }
            LogError::IdempotencyKeyReused { .. } => ApiError::InvalidIdempotencyKey(e.to_string()),
            LogError::Unavailable { .. } | LogError::Corrupt { .. } => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Refused(DocumentError::NotFound) => {
                ApiError::NotFound("document not found".into())
            }
            CommandError::Refused(r @ DocumentError::VersionConflict { .. }) => {
                ApiError::VersionConflict(r.to_string())
            }
            CommandError::Refused(DocumentError::Invalid(m)) => ApiError::InvalidField(m),
            CommandError::Log(e) => e.into(),
            CommandError::Busy(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<crate::verify::VerifyError> for ApiError {
    fn from(e: crate::verify::VerifyError) -> Self {
        match e {
            crate::verify::VerifyError::Log(e) => e.into(),
            crate::verify::VerifyError::Store(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}
