//! Request bodies read under the server's limits, and refusals that free the connection.
//!
//! A [`TimedBody`] hands out a request body's pieces only while they keep coming: a pause
//! longer than `DOCLEDGER_BODY_IDLE_TIMEOUT_MS` between two pieces, or (for bodies read whole)
//! a body not complete within `DOCLEDGER_BODY_TIMEOUT_MS`, is a 408 `request_timeout`. A
//! client trickling its body (slowloris) therefore holds a connection for a bounded time.
//!
//! Answering before the body was read to its end must also close the connection: actix
//! would otherwise drain a dropped chunked body to its end at the client's pace, which is
//! the trickle we are refusing. [`TimedBody::refuse`] keeps the unread body alive until the
//! answer is sent, so actix answers with `Connection: close` and shuts the connection down;
//! [`hold_ignored_body`] does the same for requests whose handlers take no body (a GET).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures::StreamExt;
use tokio::time::Instant;

use super::error::ApiError;
use crate::config::HttpConfig;

/// A request body whose pieces must keep arriving.
pub struct TimedBody {
    payload: web::Payload,
    idle: Duration,
    /// When the whole body must be in; `None` for streaming bodies (a batch).
    deadline: Option<Instant>,
    total: Duration,
}

impl TimedBody {
    /// A body read whole: both the idle timeout and the total deadline apply (from now).
    pub fn whole(payload: web::Payload, http: &HttpConfig) -> TimedBody {
        TimedBody {
            payload,
            idle: http.body_idle_timeout,
            deadline: Some(Instant::now() + http.body_timeout),
            total: http.body_timeout,
        }
    }

    /// A streaming body (NDJSON batch): only the idle timeout applies, so it may run for as
    /// long as pieces keep arriving.
    pub fn streaming(payload: web::Payload, http: &HttpConfig) -> TimedBody {
        TimedBody {
            payload,
            idle: http.body_idle_timeout,
            deadline: None,
            total: http.body_timeout,
        }
    }

    /// The next piece of the body; `Ok(None)` at its end.
    ///
    /// # Errors
    /// [`ApiError::RequestTimeout`] when no piece came within the idle timeout or the total
    /// deadline passed; [`ApiError::InvalidJson`] when the body broke off.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        let idle_until = Instant::now() + self.idle;
        let (until, what) = match self.deadline {
            Some(deadline) if deadline < idle_until => (
                deadline,
                format!(
                    "the request body was not received within {} ms",
                    self.total.as_millis()
                ),
            ),
            _ => (
                idle_until,
                format!(
                    "no request body bytes arrived for {} ms",
                    self.idle.as_millis()
                ),
            ),
        };
        match tokio::time::timeout_at(until, self.payload.next()).await {
            Err(_) => Err(ApiError::RequestTimeout(what)),
            Ok(None) => Ok(None),
            Ok(Some(Ok(piece))) => Ok(Some(piece)),
            Ok(Some(Err(e))) => Err(ApiError::InvalidJson(format!(
                "reading the body failed: {e}"
            ))),
        }
    }

    /// Reads the whole body, refusing (413) before reading when `Content-Length` is over
    /// `limit` and as soon as the bytes read pass it.
    ///
    /// # Errors
    /// [`ApiError::PayloadTooLarge`]; the errors of [`TimedBody::next`].
    pub async fn read_whole(&mut self, req: &HttpRequest, limit: usize) -> Result<Bytes, ApiError> {
        let too_large =
            || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
        while let Some(piece) = self.next().await? {
            if body.len() + piece.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        Ok(body.freeze())
    }

    /// The error answer for `error`, holding this (possibly unread) body until it is sent,
    /// so the connection is closed rather than drained.
    pub fn refuse(self, error: &ApiError) -> HttpResponse {
        hold_until_sent(error.error_response(), self)
    }
}

/// Middleware (`App::wrap_fn`): a request whose method carries no body in this API (all but
/// PUT, POST and DELETE) has its body, if any, held unread until the answer is sent, so a
/// client trickling a body nobody reads loses its connection after the answer instead of
/// keeping it for as long as it trickles.
pub fn hold_ignored_body<S, B>(
    mut req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let ignored = (![Method::PUT, Method::POST, Method::DELETE].contains(req.method()))
        .then(|| req.take_payload());
    let call = service.call(req);
    async move {
        let response = call.await?;
        Ok(match ignored {
            Some(payload) => response
                .map_body(|_, body| HoldUntilSent {
                    body: BoxBody::new(body),
                    _held: payload,
                })
                .map_into_boxed_body(),
            None => response.map_into_boxed_body(),
        })
    }
}

/// `response` with `held` kept alive until the response's body has been sent.
pub fn hold_until_sent<H: Unpin + 'static>(response: HttpResponse, held: H) -> HttpResponse {
    response
        .map_body(|_, body| HoldUntilSent { body, _held: held })
        .map_into_boxed_body()
}

/// A response body that owns something (the request body it did not read) until actix has
/// sent it and decided what to do with the connection.
struct HoldUntilSent<H> {
    body: BoxBody,
    _held: H,
}

impl<H: Unpin> MessageBody for HoldUntilSent<H> {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
