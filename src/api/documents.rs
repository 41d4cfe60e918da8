//! Document endpoints: put, delete, get, events and the NDJSON batch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use aggregates::{DocId, DocumentCommand};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesOrdered;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::body::{hold_until_sent, TimedBody};
use super::dto::{CommandResponse, ConsistencyQuery, ErrorBody, PutBody, StoresBody};
use super::error::ApiError;
use super::{authorize, AppState, DEFAULT_APPLIED_TIMEOUT, MAX_APPLIED_TIMEOUT};
use crate::actors::document::{CommandOutcome, ExecuteCommand};
use crate::eventlog::{IdempotencyKey, StreamState};

const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

fn doc_id_of(req: &HttpRequest) -> Result<DocId, ApiError> {
    doc_id_in(req.match_info().get("doc_id").unwrap_or_default())
}

/// The action of `POST /v1/documents/{doc_id}:erase` (a custom method after the id, as a
/// document id may itself hold `:`, the last `:erase` is the action).
const ERASE_ACTION: &str = ":erase";

/// The document id of `POST /v1/documents/{doc_id}:erase`.
fn erased_doc_id_of(req: &HttpRequest) -> Result<DocId, ApiError> {
    let raw = req.match_info().get("doc_id").unwrap_or_default();
    let id = raw.strip_suffix(ERASE_ACTION).ok_or_else(|| {
        ApiError::NotFound(format!(
            "POST {} names no action: the only one is POST /v1/documents/{{doc_id}}{ERASE_ACTION}",
            req.path()
        ))
    })?;
    doc_id_in(id)
}

fn doc_id_in(raw: &str) -> Result<DocId, ApiError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidDocId("doc_id is not valid UTF-8".into()))?;
    DocId::parse(&decoded).map_err(|e| ApiError::InvalidDocId(e.to_string()))
}

#[derive(Clone, Copy)]
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
        // A stream this command just created is in no store yet: projectors read committed
        // events only, and it has no earlier version whose rows they could hold. Answering
        // that state needs no read (the common case of an ingestion).
        let stream = if deadline.is_none() && outcome.created {
            None
        } else {
            state.log.reads().stream_state(doc_id).await?
        };
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
    let valid = if body.validates_inline() {
        body.validate(&state.config)?
    } else {
        let config = state.config.clone();
        web::block(move || body.validate(&config))
            .await
            .map_err(|e| ApiError::Unavailable(format!("validation worker failed: {e}")))??
    };
    let msg = ExecuteCommand {
        command: DocumentCommand::Put(valid.command),
        blob: valid.blob,
        idempotency,
        compensates: None,
    };
    let outcome = state.registry.execute(&doc_id, msg).await?;
    respond(state, &doc_id, outcome, wait).await
}

/// Executes a delete or an erasure (`command`), which carry no content.
async fn execute_removal(
    state: &AppState,
    doc_id: DocId,
    command: DocumentCommand,
    idempotency: Option<IdempotencyKey>,
    wait: Wait,
) -> Result<(StatusCode, CommandResponse), ApiError> {
    let msg = ExecuteCommand {
        command,
        blob: None,
        idempotency,
        compensates: None,
    };
    let outcome = state.registry.execute(&doc_id, msg).await?;
    respond(state, &doc_id, outcome, wait).await
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(invalid_json)
}

/// What put and delete take from a request before their own body decoding.
struct CommandRequest {
    doc_id: DocId,
    wait: Wait,
    body: web::Bytes,
    idempotency: Option<IdempotencyKey>,
}

/// A command's name (the idempotency key's canonical request starts with it) and where its
/// route holds the document id.
struct Op {
    name: &'static str,
    doc_id: fn(&HttpRequest) -> Result<DocId, ApiError>,
}

const PUT: Op = Op {
    name: "put",
    doc_id: doc_id_of,
};
const DELETE: Op = Op {
    name: "delete",
    doc_id: doc_id_of,
};
const ERASE: Op = Op {
    name: "erase",
    doc_id: erased_doc_id_of,
};

/// Authorises, reads the document id, the consistency wait and the body (within the size
/// and time limits), and keys an `Idempotency-Key` to the canonical request
/// `op \0 doc_id \0 body`. A refusal is the whole answer; it closes the connection when the
/// body was not read to its end.
async fn command_request(
    req: &HttpRequest,
    payload: web::Payload,
    query: &ConsistencyQuery,
    state: &AppState,
    op: &Op,
) -> Result<CommandRequest, HttpResponse> {
    let mut body = TimedBody::whole(payload, &state.config.http);
    let read = async {
        authorize(req, &state.config)?;
        let doc_id = (op.doc_id)(req)?;
        let wait = wait_of(query)?;
        let bytes = body.read_whole(req, state.config.max_body_bytes).await?;
        Ok::<_, ApiError>((doc_id, wait, bytes))
    };
    let (doc_id, wait, body) = match read.await {
        Ok(read) => read,
        Err(e) => return Err(body.refuse(&e)),
    };
    let canonical = [
        op.name.as_bytes(),
        b"\0",
        doc_id.as_str().as_bytes(),
        b"\0",
        &body,
    ]
    .concat();
    let idempotency = idempotency_of(req, &canonical).map_err(|e| e.error_response())?;
    Ok(CommandRequest {
        doc_id,
        wait,
        body,
        idempotency,
    })
}

/// `PUT /v1/documents/{doc_id}`: create or replace.
#[utoipa::path(put, path = "/v1/documents/{doc_id}", tag = "documents",
    params(("doc_id" = String, Path, description = "1-255 bytes of [A-Za-z0-9._:@/-], one percent-encoded segment"),
           ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key"), ConsistencyQuery),
    request_body = PutBody,
    responses(
        (status = 200, description = "accepted (and applied, with consistency=applied)", body = CommandResponse),
        (status = 202, description = "consistency=applied timed out; stores' state included", body = CommandResponse),
        (status = 400, description = "invalid input (invalid_json, invalid_doc_id, invalid_field, invalid_query, invalid_idempotency_key)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 409, description = "version_conflict", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let r = match command_request(&req, payload, &query, &state, &PUT).await {
        Ok(r) => r,
        Err(refused) => return Ok(refused),
    };
    let body: PutBody = parse_json(&r.body)?;
    let (status, response) = execute_put(&state, r.doc_id, body, r.idempotency, r.wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// Optional body of a delete.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    expected_version: Option<u64>,
}

/// `DELETE /v1/documents/{doc_id}`: withdraw from every store.
#[utoipa::path(delete, path = "/v1/documents/{doc_id}", tag = "documents",
    params(("doc_id" = String, Path), ("Idempotency-Key" = Option<String>, Header), ConsistencyQuery),
    responses(
        (status = 200, body = CommandResponse), (status = 202, body = CommandResponse),
        (status = 400, description = "invalid input (invalid_json, invalid_doc_id, invalid_field, invalid_query, invalid_idempotency_key)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "unknown or already deleted", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive in time", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    removal(req, payload, &query, &state, &DELETE, |expected_version| {
        DocumentCommand::Delete { expected_version }
    })
    .await
}

/// A delete or an erasure (`op`) from its request: the optional body
/// `{"expected_version": n}` goes into `command`.
async fn removal(
    req: HttpRequest,
    payload: web::Payload,
    query: &ConsistencyQuery,
    state: &AppState,
    op: &Op,
    command: impl FnOnce(Option<u64>) -> DocumentCommand,
) -> Result<HttpResponse, ApiError> {
    let r = match command_request(&req, payload, query, state, op).await {
        Ok(r) => r,
        Err(refused) => return Ok(refused),
    };
    let body: DeleteBody = if r.body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        parse_json(&r.body)?
    };
    let command = command(body.expected_version);
    let (status, response) =
        execute_removal(state, r.doc_id, command, r.idempotency, r.wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// Query of `POST /v1/documents/{doc_id}:erase`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    /// Wait at most this long for the stores to drop the document (default 10000, at most
    /// as for `consistency=applied`).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/documents/{doc_id}:erase`: withdraws the document from every store and removes
/// every trace of its content from the log at once, in the transaction that appends its
/// tombstone (no retention). Answers once every store dropped it (the erasure's version
/// applied everywhere; Milvus' deletion flushed), or 202 with the stores' state after
/// `timeout_ms`. An erased document erased again answers `unchanged`. Body: empty, or
/// `{"expected_version": n}`.
#[utoipa::path(post, path = "/v1/documents/{doc_id}:erase", tag = "documents",
    params(("doc_id" = String, Path), ("Idempotency-Key" = Option<String>, Header), EraseQuery),
    responses(
        (status = 200, description = "erased: no store holds the document, the log holds none of its content", body = CommandResponse),
        (status = 202, description = "erased in the log; some store had not dropped it within timeout_ms", body = CommandResponse),
        (status = 400, description = "invalid input (invalid_json, invalid_doc_id, invalid_query, invalid_idempotency_key)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "unknown document", body = ErrorBody),
        (status = 409, description = "version_conflict", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn erase(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<EraseQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let consistency = ConsistencyQuery {
        consistency: Some("applied".to_owned()),
        timeout_ms: query.timeout_ms,
    };
    removal(
        req,
        payload,
        &consistency,
        &state,
        &ERASE,
        |expected_version| DocumentCommand::Erase { expected_version },
    )
    .await
}

/// Query of `GET /v1/documents/{doc_id}`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Also compare every store with the log for this document (`verification` field).
    #[serde(default)]
    verify: bool,
}

/// `GET /v1/documents/{doc_id}`: current state and per-store applied versions
/// (`?verify=true` adds `verification`).
#[utoipa::path(get, path = "/v1/documents/{doc_id}", tag = "documents",
    params(("doc_id" = String, Path), GetQuery),
    responses((status = 200, description = "the document (deleted: true after a delete)", body = Object),
        (status = 400, description = "invalid input (invalid_json, invalid_doc_id, invalid_field, invalid_query, invalid_idempotency_key)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    req: HttpRequest,
    query: web::Query<GetQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let Some(stream) = state.log.reads().stream_state(&doc_id).await? else {
        return Err(ApiError::NotFound("document not found".into()));
    };
    let doc = state.registry.state(&doc_id).await?;
    let content = doc.content.as_ref().filter(|_| !doc.deleted);
    // Open compensations come from the parked changes (the durable record), not the actor.
    let compensations: Vec<_> = state
        .log
        .parked()
        .compensations(Some(&doc_id), MAX_DOC_COMPENSATIONS)
        .await?
        .into_iter()
        .filter(|c| c.state.is_unsettled())
        .collect();
    let mut body = serde_json::json!({
        "doc_id": doc_id.as_str(),
        "version": doc.version,
        "deleted": doc.deleted,
        "erased": doc.erased,
        "title": content.map(|c| &c.title),
        "source_type": content.map(|c| &c.source_type),
        "business_tag": content.and_then(|c| c.business_tag.as_ref()),
        "attributes": content.map(|c| &c.attributes),
        "blob": content.and_then(|c| c.blob.as_ref()),
        "chunk_count": content.map_or(0, |c| c.chunk_count),
        "stores": stores_of(Some(&stream)),
        "consistent": stream.consistent(),
        "ready": stream.ready_version >= stream.version,
        // The newest version every store held at once (0: none yet).
        "ready_version": stream.ready_version,
        "compensations": compensations,
    });
    if query.verify {
        let verification = state.verifier.verify_document(&doc_id).await?;
        body["verification"] = serde_json::to_value(verification)
            .map_err(|e| ApiError::Unavailable(format!("encoding the verification: {e}")))?;
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Most compensations a document's `GET` lists.
const MAX_DOC_COMPENSATIONS: i64 = 100;

/// `POST /v1/documents/{doc_id}/retry`: re-drives a document whose stores disagree or
/// whose compensation needs an operator, by re-emitting its current state (or its deletion)
/// as a new version. State transfer makes every store converge on that version; every open
/// parked change of the document is resolved with it (superseded). A document that is
/// consistent and has nothing open answers `unchanged` without appending. Takes the same
/// `consistency` query as a put.
#[utoipa::path(post, path = "/v1/documents/{doc_id}/retry", tag = "documents",
    params(("doc_id" = String, Path), ConsistencyQuery),
    responses((status = 200, body = CommandResponse), (status = 202, body = CommandResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry(
    req: HttpRequest,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let wait = wait_of(&query)?;
    let outcome = state.registry.retry(&doc_id).await?;
    let (status, response) = respond(&state, &doc_id, outcome, wait).await?;
    Ok(HttpResponse::build(status).json(response))
}

/// Query of `GET /v1/documents`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only ids that start with this (any characters a document id may hold; `/` may end it).
    #[serde(default)]
    prefix: Option<String>,
    /// Only ids after this one in byte order: the `next_after` of the previous page.
    #[serde(default)]
    after: Option<String>,
    /// Most documents in the page (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
    /// Deleted documents too (default false).
    #[serde(default)]
    include_deleted: bool,
}

/// Most documents in one page of `GET /v1/documents`.
pub const MAX_LIST_LIMIT: usize = 1000;

/// `GET /v1/documents`: the documents whose ids start with `prefix`, in byte order of their
/// ids, a page at a time (`next_after` is the `after` of the next page, `null` after the
/// last one). Deleted documents are left out unless `include_deleted=true`. A document
/// created while a listing pages on shows in it when its id sorts after the page already
/// read: what a full sync needs (documents sent before the listing began are all there).
#[utoipa::path(get, path = "/v1/documents", tag = "documents",
    params(ListQuery),
    responses((status = 200, description = "{documents: [{doc_id, version, deleted, ready}], next_after}", body = Object),
        (status = 400, description = "invalid_query or invalid_doc_id", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be 1 to {MAX_LIST_LIMIT}"
        )));
    }
    let prefix = query.prefix.as_deref().unwrap_or_default();
    if prefix.len() > aggregates::MAX_DOC_ID_BYTES
        || !prefix.bytes().all(aggregates::is_doc_id_byte)
    {
        return Err(ApiError::InvalidQuery(format!(
            "prefix must be at most {} characters of [A-Za-z0-9._:@/-]",
            aggregates::MAX_DOC_ID_BYTES
        )));
    }
    let after = match query.after.as_deref() {
        None => "",
        Some(after) => {
            DocId::validate(after).map_err(|e| ApiError::InvalidDocId(format!("after: {e}")))?;
            after
        }
    };
    let mut documents = state
        .log
        .reads()
        .list_documents(prefix, after, limit + 1, query.include_deleted)
        .await?;
    let more = documents.len() > limit;
    documents.truncate(limit);
    let next_after = more
        .then(|| documents.last().map(|d| d.doc_id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "documents": documents,
        "next_after": next_after,
    })))
}

/// Query of `GET /v1/compensations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
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
#[utoipa::path(get, path = "/v1/compensations", tag = "compensations",
    params(CompensationsQuery),
    responses((status = 200, description = "{compensations: [...]}", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
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
    let list = state
        .log
        .parked()
        .compensations(doc_id.as_ref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "compensations": list })))
}

/// `GET /v1/documents/{doc_id}/events`: the document's events without vectors or bytes.
#[utoipa::path(get, path = "/v1/documents/{doc_id}/events", tag = "documents",
    params(("doc_id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, description = "invalid input (invalid_json, invalid_doc_id, invalid_field, invalid_query, invalid_idempotency_key)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.config)?;
    let doc_id = doc_id_of(&req)?;
    let mut events: Vec<serde_json::Value> = Vec::new();
    for e in state.log.reads().stream_events(&doc_id).await? {
        if e.event_type != "ContentRemoved" {
            events.push(serde_json::json!({
                "stream_version": e.stream_version,
                "log_position": e.log_position,
                "type": e.event_type,
                "event_version": e.event_version,
                "data": e.data,
                "recorded_at": e.recorded_at,
            }));
            continue;
        }
        // A run whose content retention or an erasure removed, folded into one row: listed
        // as the events it stands for, each with its own type, place, time and metadata.
        let cause = e.data["cause"].clone();
        for m in e.data["removed"].as_array().into_iter().flatten() {
            let mut data = serde_json::Map::new();
            for key in ["version", "sha256", "size", "chunk_count", "target"] {
                if let Some(v) = m.get(key) {
                    data.insert(key.to_owned(), v.clone());
                }
            }
            events.push(serde_json::json!({
                "stream_version": m["stream_version"],
                "log_position": e.log_position,
                "type": m["type"],
                "event_version": e.event_version,
                "content_removed": cause,
                "data": data,
                "recorded_at": m["recorded_at"],
            }));
        }
    }
    if events.is_empty() {
        return Err(ApiError::NotFound("document not found".into()));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"doc_id": doc_id.as_str(), "events": events})))
}

/// A batch line, decoded: which document, its optional idempotency key and the command.
struct BatchLine {
    doc_id: DocId,
    idempotency: Option<IdempotencyKey>,
    op: BatchOp,
}

enum BatchOp {
    Put(PutBody),
    Delete(DeleteBody),
    Erase(DeleteBody),
}

/// Decodes a batch line: the PUT body plus `op`, `doc_id` and an optional `idempotency_key`;
/// the rest goes to the same strict decoders as PUT and DELETE, so unknown fields are
/// refused here too. A well-formed put line is read once; any other line is read for its
/// routing fields first, then for the body its `op` names (see [`line`](super::line)).
fn parse_batch_line(line: &[u8]) -> Result<BatchLine, ApiError> {
    parse_put_line_in_one_pass(line).unwrap_or_else(|| parse_batch_line_in_two_passes(line))
}

/// A line whose body decodes as a PUT body and whose `op` is `put`, decoded in one pass;
/// `None` for any other line.
fn parse_put_line_in_one_pass(line: &[u8]) -> Option<Result<BatchLine, ApiError>> {
    let (put, head) = super::line::body_with_head::<PutBody>(line).ok()?;
    matches!(&head.op.0, Some(serde_json::Value::String(op)) if op == "put")
        .then(|| route_batch_line(line, head, |_| Ok(BatchOp::Put(put))))
}

/// The routing fields first, then the body that `op` names.
fn parse_batch_line_in_two_passes(line: &[u8]) -> Result<BatchLine, ApiError> {
    let head = super::line::head(line).map_err(invalid_json)?;
    route_batch_line(line, head, |op| match op {
        "put" => Ok(BatchOp::Put(super::line::body(line).map_err(invalid_json)?)),
        "delete" => Ok(BatchOp::Delete(
            super::line::body(line).map_err(invalid_json)?,
        )),
        "erase" => Ok(BatchOp::Erase(
            super::line::body(line).map_err(invalid_json)?,
        )),
        other => Err(ApiError::InvalidField(format!(
            "op must be put, delete or erase, got {other:?}"
        ))),
    })
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::InvalidJson(e.to_string())
}

/// Checks a batch line's routing fields, then decodes its body with `decode(op)`.
fn route_batch_line(
    line: &[u8],
    head: super::line::LineHead,
    decode: impl FnOnce(&str) -> Result<BatchOp, ApiError>,
) -> Result<BatchLine, ApiError> {
    let take_str = |field: &str, value: super::line::Field| -> Result<Option<String>, ApiError> {
        match value.0 {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::InvalidJson(format!("{field} must be a string"))),
        }
    };
    let op = take_str("op", head.op)?
        .ok_or_else(|| ApiError::InvalidJson("missing field `op`".into()))?;
    let doc_id = take_str("doc_id", head.doc_id)?
        .ok_or_else(|| ApiError::InvalidJson("missing field `doc_id`".into()))?;
    let idempotency_key = take_str("idempotency_key", head.idempotency_key)?;
    let doc_id = DocId::parse(&doc_id).map_err(|e| ApiError::InvalidDocId(e.to_string()))?;
    let idempotency = match idempotency_key {
        Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
            return Err(ApiError::InvalidIdempotencyKey(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} characters"
            )))
        }
        Some(k) => Some(IdempotencyKey::new(k, line)),
        None => None,
    };
    Ok(BatchLine {
        doc_id,
        idempotency,
        op: decode(&op)?,
    })
}

async fn execute_batch_line(
    state: &AppState,
    line: BatchLine,
    wait: Wait,
) -> Result<(StatusCode, CommandResponse), ApiError> {
    match line.op {
        BatchOp::Put(body) => execute_put(state, line.doc_id, body, line.idempotency, wait).await,
        BatchOp::Delete(body) => {
            let command = DocumentCommand::Delete {
                expected_version: body.expected_version,
            };
            execute_removal(state, line.doc_id, command, line.idempotency, wait).await
        }
        BatchOp::Erase(body) => {
            let command = DocumentCommand::Erase {
                expected_version: body.expected_version,
            };
            execute_removal(state, line.doc_id, command, line.idempotency, wait).await
        }
    }
}

/// Most batch lines executing at once. Lines of different documents run together, so their
/// appends can share the log's group commits; results still go out in input order.
const MAX_BATCH_LINES_IN_FLIGHT: usize = 32;

/// `POST /v1/documents:batch`: NDJSON in, one result line per input line, in order. A bad
/// line fails alone; a line longer than `DOCLEDGER_MAX_BATCH_LINE_BYTES` is refused alone
/// (413 `payload_too_large`, skipped to its newline without being kept). Lines are read as
/// they arrive; up to [`MAX_BATCH_LINES_IN_FLIGHT`] lines of different documents execute at
/// once (a line whose document has one in flight waits for it, so each document's lines
/// apply in order), so memory is bounded by that many lines. The batch runs for as long as
/// its lines keep arriving; a pause longer than `DOCLEDGER_BODY_IDLE_TIMEOUT_MS` ends it with
/// a 408 `request_timeout` line and closes the connection.
#[utoipa::path(post, path = "/v1/documents:batch", tag = "documents",
    params(ConsistencyQuery),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "one {\"op\":\"put\"|\"delete\"|\"erase\",\"doc_id\":…} per line; a put line is the PUT body plus op, doc_id, optional idempotency_key"),
    responses((status = 200, content_type = "application/x-ndjson",
        description = "one {line, status, result|error} per input line, in order; an over-long line gets status 413, a stalled body a last line with status 408", body = String),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn batch(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = TimedBody::streaming(payload, &state.config.http);
    let wait = match authorize(&req, &state.config).and_then(|()| wait_of(&query)) {
        Ok(wait) => wait,
        Err(e) => return Ok(body.refuse(&e)),
    };
    let reader = BatchReader {
        body,
        pending: Vec::new(),
        head: 0,
        scanned: 0,
        line_no: 0,
        finished: false,
        skipping: false,
        limit: state.config.max_batch_line_bytes,
        wait,
        state,
        in_flight: FuturesOrdered::new(),
        in_flight_docs: VecDeque::new(),
        waiting: None,
        fatal: None,
    };
    // A batch that ends early keeps its reader (and so the unread request body) until the
    // answer is sent, so that the connection is closed instead of drained.
    let unread = std::rc::Rc::new(std::cell::Cell::new(None));
    let park = unread.clone();
    // Results stream out as lines complete, in input order.
    let lines = futures::stream::unfold(Some(reader), move |reader| {
        let park = park.clone();
        async move {
            let mut reader = reader?;
            match reader.next_result().await {
                Some(Ok(line)) => Some((Ok::<_, actix_web::Error>(line), Some(reader))),
                Some(Err(fatal)) => {
                    park.set(Some(reader));
                    Some((Ok(fatal), None))
                }
                None => None,
            }
        }
    });
    let response = HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(lines);
    Ok(hold_until_sent(response, unread))
}

struct BatchReader {
    body: TimedBody,
    /// Body bytes received; those before `head` are taken (lines already admitted), those
    /// from `head` to `scanned` hold no newline. A line is taken by moving `head`, and the
    /// taken prefix is dropped only once it is the larger part: a batch's body is copied a
    /// bounded number of times and searched once, however its pieces arrive.
    pending: Vec<u8>,
    head: usize,
    scanned: usize,
    line_no: usize,
    finished: bool,
    /// Discarding the rest of a line that was refused for its size.
    skipping: bool,
    limit: usize,
    /// Each line's wait (`consistency=applied`: until its document is in every store).
    wait: Wait,
    state: web::Data<AppState>,
    /// Result lines of the lines executing, in input order.
    in_flight: FuturesOrdered<LocalBoxFuture<'static, web::Bytes>>,
    /// The document of each line in `in_flight` (None for a line refused before executing).
    in_flight_docs: VecDeque<Option<DocId>>,
    /// A decoded line whose document has an earlier line in flight.
    waiting: Option<(usize, BatchLine)>,
    /// The last line of a batch that cannot go on (body broken off or stalled), sent once
    /// every earlier line answered.
    fatal: Option<web::Bytes>,
}

impl BatchReader {
    /// The next result line, in input order; `Err` carries a last line for a batch that
    /// cannot go on (body broken off or stalled).
    async fn next_result(&mut self) -> Option<Result<web::Bytes, web::Bytes>> {
        use futures::StreamExt;
        loop {
            self.admit_lines();
            let can_read = !self.finished && self.fatal.is_none() && self.waiting.is_none();
            if self.in_flight.is_empty() {
                if let Some(fatal) = self.fatal.take() {
                    return Some(Err(fatal));
                }
                if !can_read {
                    return None;
                }
            }
            let full = self.in_flight.len() >= MAX_BATCH_LINES_IN_FLIGHT;
            let body = &mut self.body;
            let piece = async {
                if can_read && !full {
                    body.next().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                biased;
                Some(result) = self.in_flight.next() => {
                    self.in_flight_docs.pop_front();
                    return Some(Ok(result));
                }
                piece = piece => match piece {
                    Ok(Some(piece)) => self.receive(&piece),
                    Ok(None) => {
                        self.finished = true;
                        self.receive(b"\n");
                    }
                    Err(e) => {
                        self.finished = true;
                        let mut last = error_line(self.line_no + 1, &e);
                        last["error"]["message"] =
                            format!("{e}; the rest of the batch was not read").into();
                        self.fatal = Some(to_line(&last));
                    }
                },
            }
        }
    }

    /// Appends a piece of the body, first dropping the taken prefix when it is the larger part.
    fn receive(&mut self, piece: &[u8]) {
        if self.head > 0 && self.head >= self.pending.len() / 2 {
            self.pending.drain(..self.head);
            self.scanned -= self.head;
            self.head = 0;
        }
        self.pending.extend_from_slice(piece);
    }

    /// Drops every received byte not taken yet.
    fn discard_pending(&mut self) {
        self.pending.clear();
        self.head = 0;
        self.scanned = 0;
    }

    /// A result known before executing (a refused line), queued in input order.
    fn answer_now(&mut self, result: web::Bytes) {
        self.in_flight
            .push_back(Box::pin(futures::future::ready(result)));
        self.in_flight_docs.push_back(None);
    }

    /// Starts the complete lines read so far, up to the in-flight bound, stopping at a line
    /// whose document has one in flight (it starts once that one answered). A line over the
    /// size limit is answered 413 and skipped to its newline without being kept.
    fn admit_lines(&mut self) {
        while self.in_flight.len() < MAX_BATCH_LINES_IN_FLIGHT {
            let (line_no, line) = match self.waiting.take() {
                Some(waiting) => waiting,
                None => {
                    let from = self.scanned.max(self.head);
                    let newline = memchr::memchr(b'\n', &self.pending[from..]).map(|at| from + at);
                    if self.skipping {
                        match newline {
                            Some(nl) => {
                                self.head = nl + 1;
                                self.scanned = self.head;
                                self.skipping = false;
                                continue;
                            }
                            None => {
                                self.discard_pending();
                                return;
                            }
                        }
                    }
                    let Some(nl) = newline else {
                        self.scanned = self.pending.len();
                        if self.pending.len() - self.head > self.limit {
                            // Refused before its end arrives: the rest of it is discarded
                            // as it comes.
                            self.line_no += 1;
                            self.discard_pending();
                            self.skipping = true;
                            let e = self.line_too_large();
                            self.answer_now(to_line(&error_line(self.line_no, &e)));
                            continue;
                        }
                        return;
                    };
                    let start = self.head;
                    self.head = nl + 1;
                    self.scanned = self.head;
                    let line = &self.pending[start..nl];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.line_no += 1;
                    if line.len() > self.limit {
                        let e = self.line_too_large();
                        self.answer_now(to_line(&error_line(self.line_no, &e)));
                        continue;
                    }
                    match parse_batch_line(line) {
                        Ok(parsed) => (self.line_no, parsed),
                        Err(e) => {
                            self.answer_now(to_line(&error_line(self.line_no, &e)));
                            continue;
                        }
                    }
                }
            };
            if self
                .in_flight_docs
                .iter()
                .flatten()
                .any(|d| *d == line.doc_id)
            {
                self.waiting = Some((line_no, line));
                return;
            }
            let (state, wait) = (self.state.clone(), self.wait);
            self.in_flight_docs.push_back(Some(line.doc_id.clone()));
            self.in_flight.push_back(Box::pin(async move {
                let result = match execute_batch_line(&state, line, wait).await {
                    Ok((status, r)) => {
                        serde_json::json!({"line": line_no, "status": status.as_u16(), "result": r})
                    }
                    Err(e) => error_line(line_no, &e),
                };
                to_line(&result)
            }));
        }
    }

    fn line_too_large(&self) -> ApiError {
        ApiError::PayloadTooLarge(format!(
            "batch line {} is larger than {} bytes; it was skipped",
            self.line_no, self.limit
        ))
    }
}

fn error_line(line_no: usize, e: &ApiError) -> serde_json::Value {
    serde_json::json!({"line": line_no, "status": e.status_code().as_u16(), "error": e.body()["error"]})
}

fn to_line(v: &serde_json::Value) -> web::Bytes {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    web::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a decoded line amounts to, comparable.
    fn outcome(r: Result<BatchLine, ApiError>) -> String {
        match r {
            Ok(l) => {
                let op = match l.op {
                    BatchOp::Put(b) => format!("put {b:?}"),
                    BatchOp::Delete(b) => format!("delete {b:?}"),
                    BatchOp::Erase(b) => format!("erase {b:?}"),
                };
                format!("{} {} {op}", l.doc_id.as_str(), l.idempotency.is_some())
            }
            Err(e) => format!("error {e}"),
        }
    }

    #[test]
    fn a_line_is_answered_as_if_its_routing_fields_were_read_first() {
        let put = r#""title":"t","source_type":"pdf","chunks":[{"text":"x","vector":[0.5,1]}]"#;
        let lines = [
            format!(r#"{{"op":"put","doc_id":"a",{put}}}"#),
            format!(r#"{{{put},"doc_id":"a","op":"put","idempotency_key":"k"}}"#),
            format!(r#"{{{put},"doc_id":"a","op":"put","idempotency_key":""}}"#),
            format!(r#"{{{put},"doc_id":"../x","op":"put"}}"#),
            format!(r#"{{{put},"op":"put"}}"#),
            format!(r#"{{{put},"doc_id":"a","op":"replace"}}"#),
            format!(r#"{{{put},"doc_id":"a","op":7}}"#),
            format!(r#"{{{put},"doc_id":"a","op":"delete"}}"#),
            format!(r#"{{{put},"doc_id":"a","op":"put","extra":1}}"#),
            format!(r#"{{"extra":1,{put},"doc_id":"a","op":"put"}}"#),
            r#"{"op":"delete","doc_id":"a","expected_version":3}"#.to_owned(),
            r#"{"expected_version":3,"doc_id":"a","op":"delete"}"#.to_owned(),
            r#"{"op":"put","doc_id":"a","source_type":"pdf"}"#.to_owned(),
            r#"{"op":"put","doc_id":"a","title":"t","source_type":"pdf","title":"u"}"#.to_owned(),
            r#"{"op":"put","doc_id":"a""#.to_owned(),
            r#"[1,2]"#.to_owned(),
        ];
        // Lines 0-4 are well-formed puts (the last three refused for their routing fields):
        // they take the one pass, every other line the two.
        for (i, line) in lines.iter().enumerate() {
            let one_pass = parse_put_line_in_one_pass(line.as_bytes());
            assert_eq!(one_pass.is_some(), i <= 4, "{line}");
            let got = outcome(parse_batch_line(line.as_bytes()));
            let want = outcome(parse_batch_line_in_two_passes(line.as_bytes()));
            assert_eq!(got, want, "{line}");
            if let Some(one_pass) = one_pass {
                assert_eq!(outcome(one_pass), want, "{line}");
            }
        }
        // And the cases above are what they say.
        assert!(outcome(parse_batch_line(lines[1].as_bytes())).starts_with("a true put"));
        assert!(outcome(parse_batch_line(lines[10].as_bytes())).starts_with("a false delete"));
        assert!(outcome(parse_batch_line(lines[8].as_bytes())).contains("unknown field `extra`"));
        assert!(outcome(parse_batch_line(lines[7].as_bytes())).contains("unknown field `title`"));
    }
}
