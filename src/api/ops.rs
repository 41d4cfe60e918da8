//! Operational endpoints: health, readiness, projection status and control.

use actix_web::{web, HttpRequest, HttpResponse};
use aggregates::StoreKind;

use super::error::ApiError;
use super::{authorize, AppState};

/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: the log answers (commands can be accepted).
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.log.horizon().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stores = state.projections.status(&state.log).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(
            crate::metrics::render(&stores, state.registry.live_actors())
                + &crate::metrics::render_verify(&state.verifier.stats()),
        ))
}

/// `GET /v1/projections`.
pub async fn projections(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let status = state.projections.status(&state.log).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// `POST /v1/projections/{name}/pause|resume` (`rebuild` comes with the rebuild work).
pub async fn projection_action(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let (name, action) = path.into_inner();
    if StoreKind::from_name(&name).is_none() {
        return Err(ApiError::NotFound(format!("no projection named {name:?}")));
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(ApiError::NotFound(format!(
                "no projection action {other:?}"
            )))
        }
    };
    for runner in state.projections.of(&name) {
        runner.set_paused(paused);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"name": name, "paused": paused})))
}

/// Anything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}
