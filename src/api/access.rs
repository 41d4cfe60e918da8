//! The access log: every request gets a request id (the client's `X-Request-Id` when it
//! sends a sane one, else a new one), echoed in the answer's `X-Request-Id`, and one line at
//! `info` with the method, the path (not the query string, which a caller may not want in
//! logs), the status and the time taken, inside a `request{id}` span so that what the
//! request causes (a command's span, a store error) carries the same id. The same middleware
//! counts the answer and its time in `/metrics`, by route pattern (never the path, which
//! holds document ids) and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::Instrument;

use crate::metrics::{ResponseLabels, RouteLabels};

/// The request id header, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client.
const MAX_CLIENT_ID: usize = 128;

/// The client's request id when it is short and plain (letters, digits, `-_.:`), else a new
/// random one.
fn request_id(req: &ServiceRequest) -> String {
    let sent = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_CLIENT_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match sent {
        Some(id) => id.to_owned(),
        None => {
            use rand::Rng;
            format!("{:016x}", rand::rng().random::<u64>())
        }
    }
}

/// Middleware (`App::wrap_fn`): the request's id, span, answer header and access log line.
pub fn access_log<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let id = request_id(&req);
    let metrics = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map(|state| state.metrics.clone());
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let span = tracing::info_span!("request", id = %id);
    let started = Instant::now();
    let call = span.in_scope(|| service.call(req));
    async move {
        let result = call.await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(mut res) => {
                let status = res.status().as_u16();
                tracing::info!(method, path, status, elapsed_ms, "request");
                if let Some(metrics) = metrics {
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    metrics
                        .http_requests
                        .get_or_create(&ResponseLabels {
                            method: method.clone(),
                            route: route.clone(),
                            status: status.to_string(),
                        })
                        .inc();
                    metrics
                        .http_duration
                        .get_or_create(&RouteLabels { method, route })
                        .observe(elapsed_ms / 1e3);
                }
                if let Ok(value) = HeaderValue::from_str(&id) {
                    res.headers_mut()
                        .insert(HeaderName::from_static(REQUEST_ID), value);
                }
                Ok(res)
            }
            Err(e) => {
                tracing::info!(method, path, error = %e, elapsed_ms, "request");
                Err(e)
            }
        }
    }
    .instrument(span)
}
