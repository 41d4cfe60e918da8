"""`Client`: the synchronous docledger client (httpx). `AsyncClient` in `aio` sends the
same requests (`_calls`) under the same retry policy (`_core`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from . import _calls
from ._core import (
    BatchRun,
    BatchSettings,
    Call,
    Done,
    RetryPolicy,
    auth_headers,
    consistency_params,
    step,
)
from ._encoding import VECTOR_ENCODINGS, VectorEncoding
from ._sync import SyncTally
from .models import (
    BatchResult,
    Blob,
    Chunk,
    CommandResult,
    Compensation,
    Consistency,
    Delete,
    Document,
    DocumentPage,
    Erase,
    Event,
    ListedDocument,
    Operation,
    Projection,
    Put,
    SyncReport,
    VectorLike,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"


class _Settings:
    """What both clients are configured with (checked once)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        vector_encoding: VectorEncoding,
        idempotency_keys: bool,
        lines_per_request: int,
        bytes_per_request: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        if vector_encoding not in VECTOR_ENCODINGS:
            raise ValueError(f"vector_encoding must be 'json' or 'b64', got {vector_encoding!r}")
        if lines_per_request < 1 or bytes_per_request < 1:
            raise ValueError("lines_per_request and bytes_per_request must be positive")
        self.base_url = base_url.rstrip("/")
        self.headers = auth_headers(token, headers)
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.policy = retry or RetryPolicy()
        self.encoding: VectorEncoding = vector_encoding
        self.auto_keys = idempotency_keys
        self.lines_per_request = lines_per_request
        self.bytes_per_request = bytes_per_request

    def batch(self, consistency: Consistency, timeout_ms: int | None) -> BatchRun:
        params, wait = consistency_params(consistency, timeout_ms)
        return BatchRun(
            BatchSettings(
                encoding=self.encoding,
                auto_keys=self.auto_keys,
                lines_per_request=self.lines_per_request,
                bytes_per_request=self.bytes_per_request,
                params=params,
                wait=wait,
                policy=self.policy,
            )
        )


class Client:
    """A docledger client.

    Args:
        base_url: the service, e.g. `http://127.0.0.1:8080`.
        token: bearer token, when the service has `DOCLEDGER_API_TOKENS`.
        timeout: seconds for connecting and between bytes of an answer (a
            `consistency="applied"` call adds its wait).
        retry: the retry policy (503, 408, timeouts, lost connections).
        vector_encoding: `b64` (the default: `vector_b64`, little-endian float32, bit
            exact and cheaper to parse) or `json` (numbers).
        idempotency_keys: give each put, delete and erase (and batch line) its own key,
            reused by its retries, unless the call names one.
        lines_per_request, bytes_per_request: how a batch is cut into requests.
        http_client: an httpx client to use instead of a new one (its base URL is ignored).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        vector_encoding: VectorEncoding = "b64",
        idempotency_keys: bool = True,
        lines_per_request: int = 100,
        bytes_per_request: int = 8 << 20,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._s = _Settings(
            base_url,
            token,
            timeout,
            retry,
            vector_encoding,
            idempotency_keys,
            lines_per_request,
            bytes_per_request,
            headers,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self._http.base_url = httpx.URL(self._s.base_url)
        self._http.headers.update(self._s.headers)

    def close(self) -> None:
        """Closes the connections (only those of an httpx client this client made)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.send(call.request(self._http, self._s.timeout))
            except httpx.TransportError as e:
                outcome = e
            next_step = step(call, attempt, outcome, self._s.policy)
            if isinstance(next_step, Done):
                return next_step.value
            time.sleep(next_step.seconds)

    # -- documents -----------------------------------------------------------------------

    def put(
        self,
        doc_id: str,
        *,
        title: str,
        source_type: str,
        chunks: Sequence[Chunk | tuple[str, VectorLike]] = (),
        blob: Blob | None = None,
        business_tag: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
    ) -> CommandResult:
        """Creates or replaces a document (`unchanged` when it equals the current one).

        Raises:
            VersionConflict: `expected_version` is not the document's version.
            InvalidField, InvalidDocId, ...: the server refused it (nothing changed).
            TransportError: no answer after the retries.
        """
        op = Put(
            doc_id,
            title,
            source_type,
            chunks,
            blob,
            business_tag,
            attributes,
            expected_version,
            idempotency_key,
        )
        return self._run(
            _calls.put(
                op,
                consistency=consistency,
                timeout_ms=timeout_ms,
                encoding=self._s.encoding,
                auto_keys=self._s.auto_keys,
            )
        )

    def delete(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
    ) -> CommandResult:
        """Withdraws a document from every store.

        Raises:
            NotFound: unknown or already deleted.
        """
        op = Delete(doc_id, expected_version, idempotency_key)
        return self._run(
            _calls.delete(
                op, consistency=consistency, timeout_ms=timeout_ms, auto_keys=self._s.auto_keys
            )
        )

    def erase(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        timeout_ms: int | None = None,
    ) -> CommandResult:
        """Erases a document (GDPR art. 17): withdraws it from every store and removes
        every trace of its content from the log at once, without waiting for retention.
        Always waits for the stores (at most `timeout_ms`, 10000 by default): `consistent`
        once every store dropped it; `timed_out` (HTTP 202) when some store had not yet
        (the log is erased all the same, and the stores follow). A document erased already
        (and not written since) answers `unchanged`. Afterwards `get` shows it `erased` and
        `deleted`, without content, and its events only metadata; a later put of the id
        starts a new version.

        Raises:
            NotFound: never seen.
            VersionConflict: `expected_version` is not the document's version.
        """
        op = Erase(doc_id, expected_version, idempotency_key)
        return self._run(_calls.erase(op, timeout_ms=timeout_ms, auto_keys=self._s.auto_keys))

    def get(self, doc_id: str, *, verify: bool = False) -> Document:
        """A document's state (`verify=True` compares every store now).

        Raises:
            NotFound: never seen.
        """
        return self._run(_calls.get(doc_id, verify=verify))

    def events(self, doc_id: str) -> list[Event]:
        """A document's history."""
        return self._run(_calls.events(doc_id))

    def retry(
        self, doc_id: str, *, consistency: Consistency = "accepted", timeout_ms: int | None = None
    ) -> CommandResult:
        """Re-drives a document whose stores disagree or whose compensation is open."""
        return self._run(_calls.retry(doc_id, consistency=consistency, timeout_ms=timeout_ms))

    def list_documents(
        self,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int | None = None,
        include_deleted: bool = False,
    ) -> DocumentPage:
        """One page of the documents whose id starts with `prefix`, in id order."""
        return self._run(_calls.list_documents(prefix, after, limit, include_deleted))

    def iter_documents(
        self, prefix: str = "", *, include_deleted: bool = False, page_size: int = 1000
    ) -> Iterator[ListedDocument]:
        """Every document under `prefix`, page by page."""
        after: str | None = None
        while True:
            page = self.list_documents(
                prefix, after=after, limit=page_size, include_deleted=include_deleted
            )
            yield from page.documents
            if page.next_after is None:
                return
            after = page.next_after

    # -- batches -------------------------------------------------------------------------

    def batch(
        self,
        items: Iterable[Operation],
        *,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
    ) -> Iterator[BatchResult]:
        """Sends `items` (`Put`, `Delete` and `Erase`) as NDJSON and yields each line's
        result in input order, as it arrives. Memory stays bounded: the items are read as
        requests are cut (see `lines_per_request`), never all at once. An `Erase` line is
        answered with the batch's `consistency` (unlike `erase`, which always waits for the
        stores). A refused line is a result with `error`; the batch goes on. Lines refused
        with 503 and lines a lost connection left unanswered are sent again with their
        idempotency key.

        Raises:
            TypeError, ValueError: an item cannot be encoded; and whatever `items` raises
                (either way, once the lines before it were sent and answered).
            ApiError: the whole request was refused (401, a bad query).
            TransportError: no answer after the retries.
        """
        run = self._s.batch(consistency, timeout_ms)
        source = iter(items)
        held: Operation | None = None
        bad_item: Exception | None = None
        exhausted = False
        while True:
            while not exhausted and bad_item is None and not run.full:
                if held is None:
                    try:
                        held = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as e:  # the input failed: send what it gave, then raise
                        bad_item = e
                        break
                try:
                    if not run.offer(held):
                        break
                except (TypeError, ValueError) as e:
                    bad_item = e
                    break
                held = None
            if not run.lines:
                if bad_item is not None:
                    raise bad_item
                return
            yield from self._send_request(run)

    def _send_request(self, run: BatchRun) -> Iterator[BatchResult]:
        while (body := run.request_body()) is not None:
            try:
                response = self._http.send(
                    run.batch_request(self._http, self._s.timeout, body), stream=True
                )
                try:
                    if response.status_code != 200:
                        response.read()
                        run.on_refused(response)
                    else:
                        for raw in response.iter_lines():
                            run.on_result_line(raw)
                            yield from run.ready()
                finally:
                    response.close()
            except httpx.TransportError as e:
                run.on_transport_error(e)
            delay = run.after_request()
            yield from run.ready()
            if delay is None:
                return
            time.sleep(delay)

    def sync(
        self,
        items: Iterable[Operation],
        *,
        prefix: str,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> SyncReport:
        """Sends `items` as a batch, then deletes every live document under `prefix` that
        the run did not send (LangChain's `full` cleanup). Every item must be under
        `prefix`. A document written by someone else since it was listed is kept.

        Raises:
            SyncFailed: a line was refused; nothing was deleted (its `report` says what
                the run did). Also when a deletion of the cleanup was refused.
            ValueError, TypeError, ApiError, TransportError: the run stopped part way;
                nothing was deleted.
        """
        tally = SyncTally(prefix)
        for r in self.batch(
            (tally.take(op) for op in items), consistency=consistency, timeout_ms=timeout_ms
        ):
            tally.record(r)
            if on_result is not None:
                on_result(r)
        tally.check_run()
        for r in self.batch(
            tally.deletions(self.iter_documents(prefix)),
            consistency=consistency,
            timeout_ms=timeout_ms,
        ):
            tally.record_cleanup(r)
        return tally.check_cleanup()

    # -- operations ----------------------------------------------------------------------

    def compensations(
        self, doc_id: str | None = None, limit: int | None = None
    ) -> list[Compensation]:
        """Open compensations first, then recent resolved ones."""
        return self._run(_calls.compensations(doc_id, limit))

    def projections(self) -> list[Projection]:
        """Every store's projector state."""
        return self._run(_calls.projections())

    def pause(self, store: str) -> Mapping[str, Any]:
        """Pauses a store's projectors (`mysql`, `milvus` or `s3`) on every process."""
        return self._run(_calls.projection_action(store, "pause"))

    def resume(self, store: str) -> Mapping[str, Any]:
        """Resumes a store's projectors."""
        return self._run(_calls.projection_action(store, "resume"))

    def rebuild(self, store: str) -> Mapping[str, Any]:
        """Starts a blue/green rebuild of a store from the log.

        Raises:
            RebuildRunning: one is already running.
        """
        return self._run(_calls.projection_action(store, "rebuild"))
