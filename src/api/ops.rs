//! Operational endpoints: health, readiness, projection status and control.

use actix_web::{web, HttpRequest, HttpResponse};
use aggregates::StoreKind;

use super::dto::ErrorBody;
use super::error::ApiError;
use super::{authorize, AppState};
use crate::actors::projector::StoreStatus;
use crate::eventlog::control::ControlError;
use crate::rebuild::RebuildStatus;

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: the log answers (commands can be accepted).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Object), (status = 503, body = ErrorBody)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.log.reads().horizon().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// `GET /metrics`: OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::authorize_view(&req, &state.config)?;
    // During a log outage (exactly when an operator looks) the figures read from the log
    // are the last ones read, and docledger_log_up says so.
    let read = async {
        let stores = state.projections.status(&state.log).await?;
        let open = state
            .log
            .parked()
            .compensations(None, 1000)
            .await?
            .iter()
            .filter(|c| c.state.is_unsettled())
            .count();
        let bytes = state.log.reads().database_bytes().await?;
        Ok::<_, crate::eventlog::LogError>((stores, open, bytes))
    };
    let fresh = tokio::time::timeout(METRICS_LOG_TIMEOUT, read)
        .await
        .ok()
        .and_then(Result::ok);
    let log_up = fresh.is_some();
    let (stores, open_compensations, log_bytes) = {
        let mut cache = state
            .metrics_cache
            .lock()
            .map_err(|_| ApiError::Unavailable("metrics cache poisoned".into()))?;
        if let Some(fresh) = fresh {
            *cache = Some(fresh);
        }
        cache.clone().unwrap_or_default()
    };
    let verify = state.verifier.stats();
    let scrape = crate::api::scrape::Scrape {
        log_up,
        stores: &stores,
        open_compensations,
        log_bytes,
        live_actors: state.registry.live_actors(),
        appends: state.log.appends().append_stats(),
        verify: &verify,
    };
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(scrape.render(&state.metrics)))
}

/// Longest wait for the log's figures in `/metrics` before the last ones are served.
const METRICS_LOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /v1/projections`: per store state, positions, lag and last error.
#[utoipa::path(get, path = "/v1/projections", tag = "projections",
    responses((status = 200, body = Vec<StoreStatus>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn projections(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let status = state.projections.status(&state.log).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// `POST /v1/projections/{name}/pause|resume|rebuild`. A rebuild answers 202 with its
/// progress (then visible as `rebuild` in `GET /v1/projections`); while it runs, the store's
/// pause and resume are refused (409): the rebuild owns its runners' pause switch.
#[utoipa::path(post, path = "/v1/projections/{name}/{action}", tag = "projections",
    params(("name" = String, Path, description = "mysql | milvus | s3"), ("action" = String, Path, description = "pause | resume | rebuild")),
    responses((status = 200, body = Object), (status = 202, body = RebuildStatus), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn projection_action(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let (name, action) = path.into_inner();
    let Some(store) = StoreKind::from_name(&name) else {
        return Err(ApiError::NotFound(format!("no projection named {name:?}")));
    };
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        "rebuild" => {
            // Any process of the log takes the request up; its progress shows in every
            // process's `GET /v1/projections`.
            let requested = RebuildStatus {
                phase: "requested".into(),
                ..RebuildStatus::default()
            };
            state
                .log
                .control()
                .request_rebuild(store.name(), &requested)
                .await
                .map_err(control_error)?;
            return Ok(HttpResponse::Accepted().json(requested));
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no projection action {other:?}"
            )))
        }
    };
    state
        .log
        .control()
        .set_operator_pause(store.name(), paused)
        .await
        .map_err(control_error)?;
    // This process's runners at once; every other process's within its control poll.
    for runner in state.projections.of(&name) {
        runner.set_paused(paused);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"name": name, "paused": paused})))
}

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::RebuildRunning(store) => ApiError::RebuildRunning(format!(
            "a rebuild of {store} is requested or running and owns its pause switch"
        )),
        ControlError::Log(e) => e.into(),
    }
}

/// Anything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}

/// `GET /v1/openapi.json`: this API's OpenAPI description.
pub async fn openapi(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    Ok(HttpResponse::Ok().json(super::openapi::document()))
}
