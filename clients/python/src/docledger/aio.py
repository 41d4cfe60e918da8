"""`AsyncClient`: the asyncio twin of `Client`, sending the same requests (`_calls`) under
the same retry policy and batch bookkeeping (`_core`); only the I/O differs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from . import _calls
from ._core import BatchRun, Call, Done, RetryPolicy, step
from ._encoding import VectorEncoding
from ._sync import SyncTally
from .client import DEFAULT_URL, _Settings
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


async def _aiter(items: Iterable[Operation] | AsyncIterable[Operation]) -> AsyncIterator[Operation]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncClient:
    """The asyncio docledger client; arguments as for `Client`."""

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
        http_client: httpx.AsyncClient | None = None,
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
        self._http = http_client or httpx.AsyncClient()
        self._http.base_url = httpx.URL(self._s.base_url)
        self._http.headers.update(self._s.headers)

    async def aclose(self) -> None:
        """Closes the connections (only those of an httpx client this client made)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.send(call.request(self._http, self._s.timeout))
            except httpx.TransportError as e:
                outcome = e
            next_step = step(call, attempt, outcome, self._s.policy)
            if isinstance(next_step, Done):
                return next_step.value
            await asyncio.sleep(next_step.seconds)

    async def put(
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
        """See `Client.put`."""
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
        return await self._run(
            _calls.put(
                op,
                consistency=consistency,
                timeout_ms=timeout_ms,
                encoding=self._s.encoding,
                auto_keys=self._s.auto_keys,
            )
        )

    async def delete(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
    ) -> CommandResult:
        """See `Client.delete`."""
        op = Delete(doc_id, expected_version, idempotency_key)
        return await self._run(
            _calls.delete(
                op, consistency=consistency, timeout_ms=timeout_ms, auto_keys=self._s.auto_keys
            )
        )

    async def erase(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        timeout_ms: int | None = None,
    ) -> CommandResult:
        """See `Client.erase`."""
        op = Erase(doc_id, expected_version, idempotency_key)
        return await self._run(_calls.erase(op, timeout_ms=timeout_ms, auto_keys=self._s.auto_keys))

    async def get(self, doc_id: str, *, verify: bool = False) -> Document:
        """See `Client.get`."""
        return await self._run(_calls.get(doc_id, verify=verify))

    async def events(self, doc_id: str) -> list[Event]:
        """See `Client.events`."""
        return await self._run(_calls.events(doc_id))

    async def retry(
        self, doc_id: str, *, consistency: Consistency = "accepted", timeout_ms: int | None = None
    ) -> CommandResult:
        """See `Client.retry`."""
        return await self._run(_calls.retry(doc_id, consistency=consistency, timeout_ms=timeout_ms))

    async def list_documents(
        self,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int | None = None,
        include_deleted: bool = False,
    ) -> DocumentPage:
        """See `Client.list_documents`."""
        return await self._run(_calls.list_documents(prefix, after, limit, include_deleted))

    async def iter_documents(
        self, prefix: str = "", *, include_deleted: bool = False, page_size: int = 1000
    ) -> AsyncIterator[ListedDocument]:
        """See `Client.iter_documents`."""
        after: str | None = None
        while True:
            page = await self.list_documents(
                prefix, after=after, limit=page_size, include_deleted=include_deleted
            )
            for d in page.documents:
                yield d
            if page.next_after is None:
                return
            after = page.next_after

    async def batch(
        self,
        items: Iterable[Operation] | AsyncIterable[Operation],
        *,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
    ) -> AsyncIterator[BatchResult]:
        """See `Client.batch`; `items` may also be an async iterable."""
        run = self._s.batch(consistency, timeout_ms)
        source = _aiter(items)
        held: Operation | None = None
        bad_item: Exception | None = None
        exhausted = False
        while True:
            while not exhausted and bad_item is None and not run.full:
                if held is None:
                    try:
                        held = await anext(source)
                    except StopAsyncIteration:
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
            async for r in self._send_request(run):
                yield r

    async def _send_request(self, run: BatchRun) -> AsyncIterator[BatchResult]:
        while (body := run.request_body()) is not None:
            try:
                response = await self._http.send(
                    run.batch_request(self._http, self._s.timeout, _abody(body)), stream=True
                )
                try:
                    if response.status_code != 200:
                        await response.aread()
                        run.on_refused(response)
                    else:
                        async for raw in response.aiter_lines():
                            run.on_result_line(raw)
                            for r in run.ready():
                                yield r
                finally:
                    await response.aclose()
            except httpx.TransportError as e:
                run.on_transport_error(e)
            delay = run.after_request()
            for r in run.ready():
                yield r
            if delay is None:
                return
            await asyncio.sleep(delay)

    async def sync(
        self,
        items: Iterable[Operation] | AsyncIterable[Operation],
        *,
        prefix: str,
        consistency: Consistency = "accepted",
        timeout_ms: int | None = None,
        on_result: Callable[[BatchResult], None] | None = None,
    ) -> SyncReport:
        """See `Client.sync`."""
        tally = SyncTally(prefix)

        async def run_items() -> AsyncIterator[Operation]:
            async for op in _aiter(items):
                yield tally.take(op)

        async for r in self.batch(run_items(), consistency=consistency, timeout_ms=timeout_ms):
            tally.record(r)
            if on_result is not None:
                on_result(r)
        tally.check_run()

        async def deletions() -> AsyncIterator[Operation]:
            async for d in self.iter_documents(prefix):
                for op in tally.deletions([d]):
                    yield op

        async for r in self.batch(deletions(), consistency=consistency, timeout_ms=timeout_ms):
            tally.record_cleanup(r)
        return tally.check_cleanup()

    async def compensations(
        self, doc_id: str | None = None, limit: int | None = None
    ) -> list[Compensation]:
        """See `Client.compensations`."""
        return await self._run(_calls.compensations(doc_id, limit))

    async def projections(self) -> list[Projection]:
        """See `Client.projections`."""
        return await self._run(_calls.projections())

    async def pause(self, store: str) -> Mapping[str, Any]:
        """See `Client.pause`."""
        return await self._run(_calls.projection_action(store, "pause"))

    async def resume(self, store: str) -> Mapping[str, Any]:
        """See `Client.resume`."""
        return await self._run(_calls.projection_action(store, "resume"))

    async def rebuild(self, store: str) -> Mapping[str, Any]:
        """See `Client.rebuild`."""
        return await self._run(_calls.projection_action(store, "rebuild"))


async def _abody(lines: Iterable[bytes]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line
