"""Every way a docledger call fails: one exception class per error code of the HTTP
contract (`{"error": {"code", "message"}}`), plus the client's own failures.

A refused request changed nothing on the server; `TransportError` means the client could
not get an answer (after its retries), so the outcome of that last attempt is unknown
(a retry with the same idempotency key settles it).
"""

from __future__ import annotations

from typing import Any


class DocledgerError(Exception):
    """Base of every error this package raises."""


class ApiError(DocledgerError):
    """The server refused a request; `code` is the contract's snake_case code."""

    code: str = "unknown"
    status: int

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class InvalidJson(ApiError):
    """400: the body is not JSON of the expected shape (an unknown field, say)."""

    code = "invalid_json"


class InvalidDocId(ApiError):
    """400: the document id breaks the contract's rules."""

    code = "invalid_doc_id"


class InvalidField(ApiError):
    """400: a field breaks a rule (wrong vector dimension, too many chunks, ...)."""

    code = "invalid_field"


class InvalidQuery(ApiError):
    """400: a query parameter is wrong."""

    code = "invalid_query"


class InvalidIdempotencyKey(ApiError):
    """400: an idempotency key was reused for another request."""

    code = "invalid_idempotency_key"


class Unauthorized(ApiError):
    """401: missing or wrong bearer token."""

    code = "unauthorized"


class NotFound(ApiError):
    """404: unknown document (or already deleted, for a delete)."""

    code = "not_found"


class RequestTimeout(ApiError):
    """408: the request body did not arrive in time (retried by the client)."""

    code = "request_timeout"


class VersionConflict(ApiError):
    """409: `expected_version` is not the document's version."""

    code = "version_conflict"


class RebuildRunning(ApiError):
    """409: a rebuild of the store is running."""

    code = "rebuild_running"


class PayloadTooLarge(ApiError):
    """413: a body, blob or batch line is over the server's limit."""

    code = "payload_too_large"


class Unavailable(ApiError):
    """503: a dependency is down or the document is overloaded (retried by the client)."""

    code = "unavailable"


class TransportError(DocledgerError):
    """No answer after every attempt: connection refused or lost, or a timeout."""


class SyncFailed(DocledgerError):
    """A sync run did not send every line successfully, so nothing was deleted."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


ERRORS_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidJson,
        InvalidDocId,
        InvalidField,
        InvalidQuery,
        InvalidIdempotencyKey,
        Unauthorized,
        NotFound,
        RequestTimeout,
        VersionConflict,
        RebuildRunning,
        PayloadTooLarge,
        Unavailable,
    )
}


def error_from_body(status: int, body: Any, request_id: str | None = None) -> ApiError:
    """The exception for an error answer `{"error": {"code", "message"}}`; an answer of
    another shape becomes a plain `ApiError` carrying the status."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        code = detail["code"]
        message = str(detail.get("message", ""))
        cls = ERRORS_BY_CODE.get(code, ApiError)
        return cls(message, status=status, code=code, request_id=request_id)
    return ApiError(
        f"unexpected answer: {str(body)[:200]}",
        status=status,
        code="unexpected_response",
        request_id=request_id,
    )
