//! Command-line work beyond `serve`: the demo and NDJSON ingestion, both through the HTTP
//! API (the path pipelines use), and verification, which reads the stores directly.

pub mod demo;
pub mod erase;
mod http;
pub mod ingest;
pub mod rebuild;
pub mod verify;

/// `Authorization` header value for the first configured token, if any.
pub fn bearer(config: &crate::config::Config) -> Option<String> {
    config
        .api_tokens
        .first()
        .map(|t| format!("Bearer {}", t.expose()))
}

/// `Authorization` header value for `--token`, else for the first configured token.
pub fn bearer_or(token: Option<String>, config: &crate::config::Config) -> Option<String> {
    token
        .map(|t| format!("Bearer {t}"))
        .or_else(|| bearer(config))
}
