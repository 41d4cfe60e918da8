//! The HTTP API (the contract in docs/api.md): handlers map requests to commands and answers;
//! they hold no SQL and no domain rules.

pub mod access;
pub mod body;
pub mod documents;
pub mod dto;
pub mod error;
pub mod line;
pub mod openapi;
pub mod ops;
pub mod scrape;
mod status_page;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use actix_web::HttpRequest;
use tokio::sync::watch;

use crate::actors::projector::ProjectionView;
use crate::actors::registry::Registry;
use crate::config::Config;
use crate::eventlog::PgLog;
use crate::verify::Verifier;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// What this process measures, exposed by `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What `/metrics` last read from the log (store status, open compensations): served
    /// again, with `docledger_log_up 0`, while the log cannot be read.
    pub metrics_cache: Arc<std::sync::Mutex<Option<LogFigures>>>,
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Routes commands to document actors.
    pub registry: Registry,
    /// The log (reads).
    pub log: PgLog,
    /// The projectors' status.
    pub projections: ProjectionView,
    /// Changes whenever the tracker marked documents ready.
    pub ready: watch::Receiver<u64>,
    /// This process, as the status page names it (`host:port (pid N)`).
    pub instance: String,
    /// Recent projection status, for the status page.
    pub history: crate::actors::history::StatusHistory,
    /// Compares stores with the log (`?verify=true`, background verifier metrics).
    pub verifier: Verifier,
}

/// What `/metrics` reads from the log: every store's status and the open compensations.
pub type LogFigures = (Vec<crate::actors::projector::StoreStatus>, usize, i64);

/// Longest wait a `consistency=applied` request may ask for.
pub const MAX_APPLIED_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait when `consistency=applied` comes without `timeout_ms`.
pub const DEFAULT_APPLIED_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(status_page::page))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/v1/documents:batch", web::post().to(documents::batch))
        .route("/v1/documents", web::get().to(documents::list))
        .route("/v1/documents/{doc_id}", web::put().to(documents::put))
        .route(
            "/v1/documents/{doc_id}",
            web::delete().to(documents::delete),
        )
        .route("/v1/documents/{doc_id}", web::get().to(documents::get))
        // `POST /v1/documents/{doc_id}:erase`: the id segment ends with the action.
        .route("/v1/documents/{doc_id}", web::post().to(documents::erase))
        .route(
            "/v1/documents/{doc_id}/events",
            web::get().to(documents::events),
        )
        .route("/v1/openapi.json", web::get().to(ops::openapi))
        .route(
            "/v1/documents/{doc_id}/retry",
            web::post().to(documents::retry),
        )
        .route("/v1/compensations", web::get().to(documents::compensations))
        .route("/v1/projections", web::get().to(ops::projections))
        .route(
            "/v1/projections/{name}/{action}",
            web::post().to(ops::projection_action),
        )
        .default_service(web::to(ops::not_found));
}

/// Checks the bearer token when tokens are configured (constant-time comparison).
///
/// # Errors
/// [`ApiError::Unauthorized`].
pub fn authorize(req: &HttpRequest, config: &Config) -> Result<(), ApiError> {
    if config.api_tokens.is_empty() {
        return Ok(());
    }
    let presented = presented_token(req, false).ok_or(ApiError::Unauthorized)?;
    if any_matches(&presented, &config.api_tokens) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Checks access to the read-only views (`/`, `/metrics`) when any token is configured: an
/// API token or a read token (`DOCLEDGER_READ_TOKENS`), as a bearer token (Prometheus) or
/// as the password of Basic authentication (what a browser asks for on the status page).
///
/// # Errors
/// [`ApiError::UnauthorizedView`].
pub fn authorize_view(req: &HttpRequest, config: &Config) -> Result<(), ApiError> {
    if config.api_tokens.is_empty() && config.read_tokens.is_empty() {
        return Ok(());
    }
    let presented = presented_token(req, true).ok_or(ApiError::UnauthorizedView)?;
    if any_matches(&presented, &config.api_tokens) || any_matches(&presented, &config.read_tokens) {
        Ok(())
    } else {
        Err(ApiError::UnauthorizedView)
    }
}

/// The token of the request's `Authorization`: `Bearer <token>`, or with `basic`, the
/// password of `Basic base64(user:password)`.
fn presented_token(req: &HttpRequest, basic: bool) -> Option<String> {
    use base64::Engine;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    if let Some(token) = header.strip_prefix("Bearer ") {
        return Some(token.to_owned());
    }
    let encoded = header.strip_prefix("Basic ").filter(|_| basic)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Whether `presented` is one of `tokens`, compared in constant time whatever the lengths.
fn any_matches(presented: &str, tokens: &[crate::config::Secret]) -> bool {
    let mut ok = false;
    for token in tokens {
        ok |= constant_time_eq(presented.as_bytes(), token.expose().as_bytes());
    }
    ok
}

/// Compares the SHA-256 digests of `a` and `b` byte by byte without an early exit: the time
/// does not depend on where they differ, nor on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
