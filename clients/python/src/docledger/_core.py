"""The transport core shared by `Client` and `AsyncClient`, without I/O: what each call
sends, how an answer is read, the one retry policy, and the batch's bookkeeping. The two
clients only send requests and sleep.

Retries. A 503 `unavailable` or 408 `request_timeout` answer (the server changed nothing;
likewise a gateway's 429), a gateway's 502 or 504, a timeout and a lost connection are
retried with exponential backoff and full jitter, at least as long as `Retry-After` asks.
Puts, deletes and erasures carry an idempotency key made once per logical call and reused
by every retry, so an attempt that reached the server before its answer was lost is
answered, not applied twice. A call without a key (a rebuild, or keys switched off) is sent
again only when its request cannot have reached the server.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx

from . import errors
from ._encoding import VectorEncoding, batch_line
from .models import BatchResult, CommandResult, Delete, Erase, Operation, Put

T = TypeVar("T")

#: Answers that changed nothing and are worth another attempt (docledger's 503 and 408;
#: 429 from a gateway that sheds load).
RETRY_STATUSES = frozenset({408, 429, 503})
#: A gateway's answers when the request may or may not have reached docledger: sent again
#: only when that is safe (an idempotency key, a read).
AMBIGUOUS_STATUSES = frozenset({502, 504})
#: Transport failures that prove the request never left the client.
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits a random time up to
    `min(max_delay, base_delay * 2**(n-1))`, and at least `Retry-After` (capped at
    `max_retry_after`) when the server sent one."""

    max_attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.max_retry_after))


def new_idempotency_key() -> str:
    """A fresh key: 32 hex digits."""
    return uuid.uuid4().hex


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (the delta form), if the answer carries one."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def error_of(response: httpx.Response) -> errors.ApiError:
    """The exception an error answer stands for."""
    return errors.error_from_body(
        response.status_code, _json(response), response.headers.get("x-request-id")
    )


@dataclass
class Call(Generic[T]):
    """One logical API call: its request (the same bytes on every attempt) and how its
    successful answer is read."""

    method: str
    path: str
    parse: Callable[[int, Any], T]
    params: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    #: Extra read time, for a `consistency="applied"` wait.
    wait: float = 0.0

    def request(
        self, http: httpx.Client | httpx.AsyncClient, timeout: httpx.Timeout
    ) -> httpx.Request:
        extended = timeout if not self.wait else _extend(timeout, self.wait)
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            content=self.content,
            headers=self.headers,
            timeout=extended,
        )


def _extend(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    read = None if timeout.read is None else timeout.read + seconds
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


@dataclass(frozen=True)
class Wait:
    seconds: float


def step(
    call: Call[T], attempt: int, outcome: httpx.Response | httpx.TransportError, policy: RetryPolicy
) -> Done[T] | Wait:
    """What to do after attempt `attempt` of `call` gave `outcome`: the result, or how long
    to wait before the next attempt.

    Raises:
        errors.ApiError: the server refused the call (after the retries, for 503 and 408).
        errors.TransportError: no answer after the retries.
    """
    if isinstance(outcome, httpx.TransportError):
        retriable = call.idempotent or isinstance(outcome, UNSENT_ERRORS)
        if not retriable or attempt >= policy.max_attempts:
            raise errors.TransportError(
                f"{call.method} {call.path}: no answer after {attempt} attempt(s): "
                f"{type(outcome).__name__}: {outcome}"
            ) from outcome
        return Wait(policy.delay(attempt))
    if outcome.status_code in (200, 202):
        return Done(call.parse(outcome.status_code, _json(outcome)))
    error = error_of(outcome)
    retriable = outcome.status_code in RETRY_STATUSES or (
        call.idempotent and outcome.status_code in AMBIGUOUS_STATUSES
    )
    if retriable and attempt < policy.max_attempts:
        return Wait(policy.delay(attempt, retry_after(outcome)))
    raise error


def consistency_params(consistency: str, timeout_ms: int | None) -> tuple[dict[str, Any], float]:
    """Query parameters for a consistency choice, and the read time the wait adds."""
    if consistency not in ("accepted", "applied"):
        raise ValueError(f"consistency must be 'accepted' or 'applied', got {consistency!r}")
    if consistency == "accepted":
        if timeout_ms is not None:
            raise ValueError("timeout_ms only applies with consistency='applied'")
        return {}, 0.0
    params, wait = wait_params(timeout_ms)
    return {"consistency": "applied", **params}, wait


def wait_params(timeout_ms: int | None) -> tuple[dict[str, Any], float]:
    """The `timeout_ms` parameter of a call that waits for the stores (`consistency=applied`,
    an erasure), and the read time the wait adds."""
    if timeout_ms is None:
        return {}, 10.0  # the server's default wait
    if not isinstance(timeout_ms, int) or timeout_ms < 0:
        raise ValueError(f"timeout_ms must be a non-negative integer, got {timeout_ms!r}")
    return {"timeout_ms": timeout_ms}, timeout_ms / 1000


def command_result(status: int, body: Any) -> CommandResult:
    return CommandResult.from_json(body, status=status)


# ---------------------------------------------------------------------------------------
# Batches


@dataclass
class _Line:
    number: int
    doc_id: str
    op: Literal["put", "delete", "erase"]
    data: bytes
    keyed: bool
    answer: BatchResult | None = None
    #: The last retriable refusal, kept to report if the retries run out.
    refusal: BatchResult | None = None


@dataclass
class BatchSettings:
    """How a batch is cut into requests and retried."""

    encoding: VectorEncoding
    auto_keys: bool
    lines_per_request: int
    bytes_per_request: int
    params: dict[str, Any]
    wait: float
    policy: RetryPolicy


class BatchRun:
    """The bookkeeping of one `batch()` call, without I/O.

    The input is cut into requests of at most `lines_per_request` lines and about
    `bytes_per_request` bytes, holding at most one line per document: a document's line is
    therefore answered, or retried, before its next line is sent, which keeps each
    document's lines in order through retries. (httpx sends a request's whole body before
    it reads the answer, so one endless request could fill both sockets' buffers and stall;
    bounded requests keep memory bounded too.) Lines refused with 503/408 and lines left
    unanswered by a lost connection are sent again with their idempotency key; results
    come out in input order as soon as every line before them is answered.
    """

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.lines: list[_Line] = []
        self._docs: set[str] = set()
        self._bytes = 0
        self._emitted = 0
        self._count = 0
        self.attempt = 0
        self._sent: list[_Line] = []
        self._retry_after: float | None = None
        self._last_transport_error: httpx.TransportError | None = None
        #: The last request may have been applied without its answers reaching us.
        self._ambiguous = False

    # -- filling a request ---------------------------------------------------------------

    def offer(self, op: Operation) -> bool:
        """Takes `op` into the next request; False when it must wait for the request after
        (the request is full, or already holds a line of its document).

        Raises:
            TypeError, ValueError: `op` cannot be encoded.
        """
        if not isinstance(op, (Put, Delete, Erase)):
            raise TypeError(
                f"a batch item must be a Put, a Delete or an Erase, got {type(op).__name__}"
            )
        s = self.settings
        if self.lines and (
            op.doc_id in self._docs
            or len(self.lines) >= s.lines_per_request
            or self._bytes >= s.bytes_per_request
        ):
            return False
        key = op.idempotency_key or (new_idempotency_key() if s.auto_keys else None)
        data = batch_line(op, s.encoding, key)
        self._count += 1
        kind: Literal["put", "delete", "erase"] = (
            "put" if isinstance(op, Put) else "delete" if isinstance(op, Delete) else "erase"
        )
        self.lines.append(_Line(self._count, op.doc_id, kind, data, keyed=key is not None))
        self._docs.add(op.doc_id)
        self._bytes += len(data)
        return True

    @property
    def full(self) -> bool:
        s = self.settings
        return len(self.lines) >= s.lines_per_request or self._bytes >= s.bytes_per_request

    # -- one request ---------------------------------------------------------------------

    def request_body(self) -> Iterator[bytes] | None:
        """The next request's lines (unanswered ones, in order), or None when every line of
        this request is answered."""
        self._sent = [line for line in self.lines if line.answer is None]
        if not self._sent:
            return None
        self.attempt += 1
        self._retry_after = None
        self._last_transport_error = None
        self._ambiguous = False
        return iter([line.data for line in self._sent])

    def on_result_line(self, raw: bytes | str) -> None:
        """Reads one answer line of the current request."""
        text = raw.strip()
        if not text:
            return
        try:
            d = json.loads(text)
            index = int(d["line"]) - 1
            status = int(d["status"])
        except (ValueError, KeyError, TypeError) as e:
            raise errors.ApiError(
                f"unreadable batch answer line: {text[:200]!r}",
                status=200,
                code="unexpected_response",
            ) from e
        if not 0 <= index < len(self._sent):
            return  # a closing line beyond the lines sent (a stalled body), nothing to map
        line = self._sent[index]
        if line.answer is not None:
            return
        if "result" in d:
            result = BatchResult(
                line.number,
                line.doc_id,
                line.op,
                status,
                result=command_result(status, d["result"]),
            )
        else:
            error = errors.error_from_body(status, d)
            result = BatchResult(line.number, line.doc_id, line.op, status, error=error)
            if status in RETRY_STATUSES:
                line.refusal = result
                return
        line.answer = result

    def on_refused(self, response: httpx.Response) -> None:
        """The whole request was refused. 503, 408 and 429 are retried, and a gateway's 502
        and 504; anything else ends the batch.

        Raises:
            errors.ApiError: the refusal, when it is not retriable.
        """
        if response.status_code in AMBIGUOUS_STATUSES:
            self._ambiguous = True
        elif response.status_code not in RETRY_STATUSES:
            raise error_of(response)
        self._retry_after = retry_after(response)

    def on_transport_error(self, error: httpx.TransportError) -> None:
        """The connection broke: unanswered lines are sent again (same keys)."""
        self._last_transport_error = error
        self._ambiguous = not isinstance(error, UNSENT_ERRORS)

    def ready(self) -> list[BatchResult]:
        """Answered lines not handed out yet, in input order."""
        out: list[BatchResult] = []
        while self._emitted < len(self.lines) and self.lines[self._emitted].answer is not None:
            answer = self.lines[self._emitted].answer
            assert answer is not None
            out.append(answer)
            self._emitted += 1
        if self._emitted == len(self.lines):
            self._reset()
        return out

    def after_request(self) -> float | None:
        """After a request ended: seconds to wait before sending its unanswered lines again,
        or None when nothing is left to send.

        Raises:
            errors.TransportError: the connection kept failing through every attempt.
        """
        waiting = [line for line in self.lines if line.answer is None]
        if not waiting:
            return None
        unkeyed = [w for w in waiting if not w.keyed and w.refusal is None]
        if self._ambiguous and unkeyed:
            raise errors.TransportError(
                f"batch: line {unkeyed[0].number} ({unkeyed[0].doc_id}) may have been applied "
                f"but its answer was lost, and without an idempotency key it cannot be sent "
                f"again safely: {self._last_transport_error!r}"
            ) from self._last_transport_error
        if self.attempt >= self.settings.policy.max_attempts:
            if self._last_transport_error is not None or any(w.refusal is None for w in waiting):
                raise errors.TransportError(
                    f"batch: {len(waiting)} line(s) unanswered after {self.attempt} attempt(s): "
                    f"{self._last_transport_error!r}"
                ) from self._last_transport_error
            for w in waiting:  # give up: the last refusal is the line's answer
                w.answer = w.refusal
            return None
        return self.settings.policy.delay(self.attempt, self._retry_after)

    def _reset(self) -> None:
        self.lines = []
        self._docs = set()
        self._bytes = 0
        self._emitted = 0
        self.attempt = 0

    def batch_request(
        self, http: httpx.Client | httpx.AsyncClient, timeout: httpx.Timeout, body: Any
    ) -> httpx.Request:
        return http.build_request(
            "POST",
            "/v1/documents:batch",
            params=self.settings.params,
            content=body,
            headers={"content-type": "application/x-ndjson"},
            timeout=_extend(timeout, self.settings.wait),
        )


def check_sync_item(op: Operation, prefix: str) -> Operation:
    """Refuses a sync line outside the prefix: it could never be cleaned up by the sync."""
    if not isinstance(op, (Put, Delete, Erase)):
        raise TypeError(
            f"a batch item must be a Put, a Delete or an Erase, got {type(op).__name__}"
        )
    if not op.doc_id.startswith(prefix):
        raise ValueError(f"doc_id {op.doc_id!r} is outside the sync prefix {prefix!r}")
    return op


def listing_params(
    prefix: str, after: str | None, limit: int | None, include_deleted: bool
) -> dict[str, Any]:
    params: dict[str, Any] = {"prefix": prefix}
    if after is not None:
        params["after"] = after
    if limit is not None:
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be 1 to 1000, got {limit}")
        params["limit"] = limit
    if include_deleted:
        params["include_deleted"] = "true"
    return params


def auth_headers(token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"user-agent": "docledger-python/0.1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers
