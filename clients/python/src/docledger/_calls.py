"""Every API call of the contract as a `Call` (request plus parser), shared by `Client` and
`AsyncClient` so that both send exactly the same requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._core import (
    Call,
    command_result,
    consistency_params,
    listing_params,
    new_idempotency_key,
    wait_params,
)
from ._encoding import VectorEncoding, doc_path, dumps, put_body
from .models import (
    CommandResult,
    Compensation,
    Consistency,
    Delete,
    Document,
    DocumentPage,
    Erase,
    Event,
    Projection,
    Put,
)

STORES = ("mysql", "milvus", "s3")


def _key(given: str | None, auto: bool) -> dict[str, str]:
    key = given or (new_idempotency_key() if auto else None)
    return {"idempotency-key": key} if key else {}


def put(
    op: Put,
    *,
    consistency: Consistency,
    timeout_ms: int | None,
    encoding: VectorEncoding,
    auto_keys: bool,
) -> Call[CommandResult]:
    params, wait = consistency_params(consistency, timeout_ms)
    keyed = _key(op.idempotency_key, auto_keys)
    return Call(
        "PUT",
        doc_path(op.doc_id),
        command_result,
        params=params,
        content=dumps(put_body(op, encoding)),
        headers={"content-type": "application/json", **keyed},
        idempotent=bool(keyed),
        wait=wait,
    )


def delete(
    op: Delete, *, consistency: Consistency, timeout_ms: int | None, auto_keys: bool
) -> Call[CommandResult]:
    params, wait = consistency_params(consistency, timeout_ms)
    keyed = _key(op.idempotency_key, auto_keys)
    body = {} if op.expected_version is None else {"expected_version": op.expected_version}
    return Call(
        "DELETE",
        doc_path(op.doc_id),
        command_result,
        params=params,
        content=dumps(body) if body else None,
        headers={"content-type": "application/json", **keyed} if body else keyed,
        idempotent=bool(keyed),
        wait=wait,
    )


def erase(op: Erase, *, timeout_ms: int | None, auto_keys: bool) -> Call[CommandResult]:
    # An erasure always waits for the stores (there is no `consistency` parameter).
    params, wait = wait_params(timeout_ms)
    keyed = _key(op.idempotency_key, auto_keys)
    body = {} if op.expected_version is None else {"expected_version": op.expected_version}
    return Call(
        "POST",
        doc_path(op.doc_id) + ":erase",
        command_result,
        params=params or None,
        content=dumps(body) if body else None,
        headers={"content-type": "application/json", **keyed} if body else keyed,
        idempotent=bool(keyed),
        wait=wait,
    )


def get(doc_id: str, *, verify: bool) -> Call[Document]:
    return Call(
        "GET",
        doc_path(doc_id),
        lambda _s, body: Document.from_json(body),
        params={"verify": "true"} if verify else None,
    )


def events(doc_id: str) -> Call[list[Event]]:
    return Call(
        "GET",
        doc_path(doc_id) + "/events",
        lambda _s, body: [Event.from_json(e) for e in body["events"]],
    )


def retry(doc_id: str, *, consistency: Consistency, timeout_ms: int | None) -> Call[CommandResult]:
    params, wait = consistency_params(consistency, timeout_ms)
    # A re-drive of a consistent document changes nothing, so repeating it is harmless.
    return Call("POST", doc_path(doc_id) + "/retry", command_result, params=params, wait=wait)


def list_documents(
    prefix: str, after: str | None, limit: int | None, include_deleted: bool
) -> Call[DocumentPage]:
    return Call(
        "GET",
        "/v1/documents",
        lambda _s, body: DocumentPage.from_json(body),
        params=listing_params(prefix, after, limit, include_deleted),
    )


def compensations(doc_id: str | None, limit: int | None) -> Call[list[Compensation]]:
    params: dict[str, Any] = {}
    if doc_id is not None:
        params["doc_id"] = doc_id
    if limit is not None:
        params["limit"] = limit
    return Call(
        "GET",
        "/v1/compensations",
        lambda _s, body: [Compensation.from_json(c) for c in body["compensations"]],
        params=params or None,
    )


def projections() -> Call[list[Projection]]:
    return Call("GET", "/v1/projections", lambda _s, body: [Projection.from_json(p) for p in body])


def projection_action(store: str, action: str) -> Call[Mapping[str, Any]]:
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(STORES)}, got {store!r}")
    if action not in ("pause", "resume", "rebuild"):
        raise ValueError(f"action must be pause, resume or rebuild, got {action!r}")
    return Call(
        "POST",
        f"/v1/projections/{store}/{action}",
        lambda _s, body: body if isinstance(body, Mapping) else {"answer": body},
        # A repeated rebuild is refused (409 rebuild_running): retry only what was not sent.
        idempotent=action != "rebuild",
    )
