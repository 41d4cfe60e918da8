//! The HTTP API (DESIGN.md's contract): handlers map requests to commands and answers;
//! they hold no SQL and no domain rules.

pub mod body;
pub mod documents;
pub mod dto;
pub mod error;
pub mod line;
pub mod openapi;
pub mod ops;
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
        .route("/v1/documents/{doc_id}", web::put().to(documents::put))
        .route(
            "/v1/documents/{doc_id}",
            web::delete().to(documents::delete),
        )
        .route("/v1/documents/{doc_id}", web::get().to(documents::get))
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
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let mut ok = false;
    for token in &config.api_tokens {
        ok |= constant_time_eq(presented.as_bytes(), token.expose().as_bytes());
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
