//! Document endpoints: put, delete, get, events and the NDJSON batch.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use aggregates::{DocId, DocumentCommand};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::dto::{CommandResponse, ConsistencyQuery, PutBody, StoresBody};
use super::error::ApiError;
use super::{authorize, read_body, AppState, DEFAULT_APPLIED_TIMEOUT, MAX_APPLIED_TIMEOUT};
use crate::actors::document::{CommandOutcome, ExecuteCommand};
use crate::eventlog::{IdempotencyKey, StreamState, UNSETTLED_STATES};

const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

fn doc_id_of(req: &HttpRequest) -> Result<DocId, ApiError> {
    let raw = req.match_info().get("doc_id").unwrap_or_default();
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidDocId("doc_id is not valid UTF-8".into()))?;
    DocId::parse(&decoded).map_err(|e| ApiError::InvalidDocId(e.to_string()))
}

enum Wait {
    Accepted,
    Applied(Duration),
}

fn wait_of(q: &ConsistencyQuery) -> Result<Wait, ApiError> {
    match (q.consistency.as_deref(), q.timeout_ms) {
        (None | Some("accepted"), None) => Ok(Wait::Accepted),
        (None | Some("accepted"), Some(_)) => Err(ApiError::InvalidQuery(
            "timeout_ms only applies with consistency=applied".into(),
        )),
        (Some("applied"), t) => {
            let t = t.map_or(DEFAULT_APPLIED_TIMEOUT, Duration::from_millis);
            if t > MAX_APPLIED_TIMEOUT {
                return Err(ApiError::InvalidQuery(format!(
                    "timeout_ms is at most {}",
                    MAX_APPLIED_TIMEOUT.as_millis()
                )));
            }
            Ok(Wait::Applied(t))
        }
        (Some(other), _) => Err(ApiError::InvalidQuery(format!(
            "consistency must be accepted or applied, got {other:?}"
        ))),
    }
}

fn idempotency_of(req: &HttpRequest, canonical: &[u8]) -> Result<Option<IdempotencyKey>, ApiError> {
    match req.headers().get(IDEMPOTENCY_HEADER) {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES)
                .ok_or_else(|| {
                    ApiError::InvalidIdempotencyKey(format!(
                        "{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
                    ))
                })?;
            Ok(Some(IdempotencyKey::new(key.to_owned(), canonical)))
        }
    }
}

fn stores_of(s: Option<&StreamState>) -> StoresBody {
    StoresBody {
        mysql: s.and_then(|s| s.mysql),
        milvus: s.and_then(|s| s.milvus),
        s3: s.and_then(|s| s.s3),
    }
}

/// Answers a command, waiting for the stores when asked: 200 once every store holds the
/// version (or a newer one), 202 with the stores' state on timeout.
async fn respond(
    state: &AppState,
    doc_id: &DocId,
    outcome: CommandOutcome,
    wait: Wait,
) -> Result<(StatusCode, CommandResponse), ApiError> {
    let deadline = match wait {
        Wait::Accepted => None,
        Wait::Applied(t) => Some(Instant::now() + t),
    };
    let mut ready = state.ready.clone();
    loop {
        ready.mark_unchanged();
        let stream = state.log.stream_state(doc_id).await?;
        let settled = stream
            .as_ref()
            .is_some_and(|s| s.ready_version >= outcome.version || s.version > outcome.version);
        let consistent = stream
            .as_ref()
            .is_some_and(|s| s.version == outcome.version && s.consistent());
        let response = CommandResponse {
            doc_id: doc_id.to_string(),
            version: outcome.version,
            log_position: outcome.log_position,
            unchanged: outcome.unchanged,
            stores: stores_of(stream.as_ref()),
            consistent,
        };
        match deadline {
            None => return Ok((StatusCode::OK, response)),
            Some(_) if settled => return Ok((StatusCode::OK, response)),
            Some(d) if Instant::now() >= d => return Ok((StatusCode::ACCEPTED, response)),
            Some(d) => {
                // Woken by the tracker; the poll covers readiness reached by another process.
                let nap = (d - Instant::now()).min(Duration::from_millis(200));
                let _ = tokio::time::timeout(nap, ready.changed()).await;
            }
        }
    }
}

async fn execute_put(
    state: &AppState,
    doc_id: DocId,
    body: PutBody,
    idempotency: Option<IdempotencyKey>,
    wait: Wait,
) -> Result<(StatusCode, CommandResponse), ApiError> {
    let config = state.config.clone();
    let valid = web::block(move || body.validate(&config))
        .await
        .map_err(|e| ApiError::Unavailable(format!("validation worker failed: {e}")))??;
    let msg = ExecuteCommand {
        command: DocumentCommand::Put(valid.command),
        blob: valid.blob,
        idempotency,
        compensates: None,
    };
    let outcome = state.registry.execute(&doc_id, msg).await?;
    respond(state, &doc_id, outcome, wait).await
}

async fn execute_delete(
    state: &AppState,
    doc_id: DocId,
    expected_version: Option<u64>,
    idempotency: Option<IdempotencyKey>,
    wait: Wait,
) -> Result<(StatusCode, CommandResponse), ApiError> {
    let msg = ExecuteCommand {
        command: DocumentCommand::Delete { expected_version },
        blob: None,
        idempotency,
        compensates: None,
    };
    let outcome = state.registry.execute(&doc_id, msg).await?;
    respond(state, &doc_id, outcome, wait).await
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// `PUT /v1/documents/{doc_id}`.
pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let wait = wait_of(&query)?;
    let bytes = read_body(&req, payload, state.config.max_body_bytes).await?;
    let body: PutBody = parse_json(&bytes)?;
    let canonical = [
        b"put\0".as_slice(),
        doc_id.as_str().as_bytes(),
        b"\0",
        &bytes,
    ]
    .concat();
    let idempotency = idempotency_of(&req, &canonical)?;
    let (status, response) = execute_put(&state, doc_id, body, idempotency, wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// Optional body of a delete.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    expected_version: Option<u64>,
}

/// `DELETE /v1/documents/{doc_id}`.
pub async fn delete(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let wait = wait_of(&query)?;
    let bytes = read_body(&req, payload, state.config.max_body_bytes).await?;
    let body: DeleteBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        parse_json(&bytes)?
    };
    let canonical = [
        b"delete\0".as_slice(),
        doc_id.as_str().as_bytes(),
        b"\0",
        &bytes,
    ]
    .concat();
    let idempotency = idempotency_of(&req, &canonical)?;
    let (status, response) =
        execute_delete(&state, doc_id, body.expected_version, idempotency, wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// `GET /v1/documents/{doc_id}`.
pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let Some(stream) = state.log.stream_state(&doc_id).await? else {
        return Err(ApiError::NotFound("document not found".into()));
    };
    let doc = state.registry.state(&doc_id).await?;
    let content = doc.content.as_ref().filter(|_| !doc.deleted);
    // Open compensations come from the parked changes (the durable record), not the actor.
    let compensations: Vec<_> = state
        .log
        .compensations(Some(&doc_id), MAX_DOC_COMPENSATIONS)
        .await?
        .into_iter()
        .filter(|c| UNSETTLED_STATES.contains(&c.state))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "doc_id": doc_id.as_str(),
        "version": doc.version,
        "deleted": doc.deleted,
        "title": content.map(|c| &c.title),
        "source_type": content.map(|c| &c.source_type),
        "business_tag": content.and_then(|c| c.business_tag.as_ref()),
        "attributes": content.map(|c| &c.attributes),
        "blob": content.and_then(|c| c.blob.as_ref()),
        "chunk_count": content.map_or(0, |c| c.chunk_count),
        "stores": stores_of(Some(&stream)),
        "consistent": stream.consistent(),
        "ready": stream.ready_version >= stream.version,
        "compensations": compensations,
    })))
}

/// Most compensations a document's `GET` lists.
const MAX_DOC_COMPENSATIONS: i64 = 100;

/// `POST /v1/documents/{doc_id}/retry`: re-drives a document whose stores disagree or
/// whose compensation needs an operator, by re-emitting its current state (or its deletion)
/// as a new version. State transfer makes every store converge on that version; every open
/// parked change of the document is resolved with it (superseded). A document that is
/// consistent and has nothing open answers `unchanged` without appending. Takes the same
/// `consistency` query as a put.
pub async fn retry(
    req: HttpRequest,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let wait = wait_of(&query)?;
    let Some(stream) = state.log.stream_state(&doc_id).await? else {
        return Err(ApiError::NotFound("document not found".into()));
    };
    let open = state
        .log
        .compensations(Some(&doc_id), MAX_DOC_COMPENSATIONS)
        .await?
        .iter()
        .any(|c| c.state == "open" || c.state == "needs_operator");
    if stream.consistent() && !open {
        let outcome = CommandOutcome {
            version: stream.version,
            log_position: None,
            unchanged: true,
            compensation: None,
        };
        let (status, response) = respond(&state, &doc_id, outcome, wait).await?;
        return Ok(HttpResponse::build(status).json(response));
    }
    let content = if stream.deleted {
        None
    } else {
        state.log.content_at(&doc_id, stream.version).await?
    };
    let msg = ExecuteCommand {
        command: DocumentCommand::Redrive {
            current_version: stream.version,
            content,
        },
        blob: None,
        idempotency: None,
        compensates: None,
    };
    let outcome = state.registry.execute(&doc_id, msg).await?;
    let (status, response) = respond(&state, &doc_id, outcome, wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// Query of `GET /v1/compensations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationsQuery {
    /// Most entries (default 100, at most 1000).
    #[serde(default)]
    limit: Option<i64>,
    /// Only this document's.
    #[serde(default)]
    doc_id: Option<String>,
}

/// `GET /v1/compensations`: open compensations first (waiting, needing an operator, or
/// restoring), then the most recent resolved ones; each with its document, store, refused
/// version, the store's reason, its state and what was done.
pub async fn compensations(
    req: HttpRequest,
    query: web::Query<CompensationsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidQuery("limit must be 1 to 1000".into()));
    }
    let doc_id = query
        .doc_id
        .as_deref()
        .map(DocId::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidDocId(e.to_string()))?;
    let list = state.log.compensations(doc_id.as_ref(), limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "compensations": list })))
}

/// `GET /v1/documents/{doc_id}/events`.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let events = state.log.stream_events(&doc_id).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound("document not found".into()));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"doc_id": doc_id.as_str(), "events": events})))
}

/// One NDJSON batch line: the put body plus `op`, `doc_id` and an optional key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    op: String,
    doc_id: String,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

async fn batch_line(
    state: &AppState,
    line: &[u8],
) -> Result<(StatusCode, CommandResponse), ApiError> {
    let parsed: BatchLine = parse_json(line)?;
    let doc_id = DocId::parse(&parsed.doc_id).map_err(|e| ApiError::InvalidDocId(e.to_string()))?;
    let idempotency = match parsed.idempotency_key {
        Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
            return Err(ApiError::InvalidIdempotencyKey(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} characters"
            )))
        }
        Some(k) => Some(IdempotencyKey::new(k, line)),
        None => None,
    };
    let rest = serde_json::Value::Object(parsed.rest);
    match parsed.op.as_str() {
        "put" => {
            let body: PutBody =
                serde_json::from_value(rest).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            execute_put(state, doc_id, body, idempotency, Wait::Accepted).await
        }
        "delete" => {
            let body: DeleteBody =
                serde_json::from_value(rest).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            execute_delete(
                state,
                doc_id,
                body.expected_version,
                idempotency,
                Wait::Accepted,
            )
            .await
        }
        other => Err(ApiError::InvalidField(format!(
            "op must be put or delete, got {other:?}"
        ))),
    }
}

/// `POST /v1/documents:batch`: NDJSON in, one result line per input line, in order. A bad
/// line fails alone. Lines are read as they arrive, so memory is bounded by the longest line.
pub async fn batch(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use futures::StreamExt;
    authorize(&req, &state.config)?;
    let limit = state.config.max_body_bytes;
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut line_no = 0usize;
    let mut finished = false;
    while !finished {
        match payload.next().await {
            Some(chunk) => {
                let chunk = chunk
                    .map_err(|e| ApiError::InvalidJson(format!("reading the body failed: {e}")))?;
                pending.extend_from_slice(&chunk);
            }
            None => {
                finished = true;
                pending.push(b'\n');
            }
        }
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            line_no += 1;
            let result = match batch_line(&state, line).await {
                Ok((status, r)) => {
                    serde_json::json!({"line": line_no, "status": status.as_u16(), "result": r})
                }
                Err(e) => {
                    use actix_web::ResponseError;
                    serde_json::json!({"line": line_no, "status": e.status_code().as_u16(), "error": e.body()["error"]})
                }
            };
            out.extend_from_slice(result.to_string().as_bytes());
            out.push(b'\n');
        }
        if pending.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "batch line {} is larger than {limit} bytes",
                line_no + 1
            )));
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .body(out))
}
