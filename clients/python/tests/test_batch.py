"""Batches: streamed, bounded, in order, one refused line failing alone, retries of lines
whose first attempt was applied, and `consistency="applied"`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import docledger
from docledger import AsyncClient, Client, Delete, Put

from .conftest import DIM, FAST_RETRY, Service, vector
from .proxy import Fault, FaultProxy


def puts(prefix: str, n: int, *, create_only: bool = False) -> list[Put]:
    return [
        Put(
            f"{prefix}{i:04d}",
            title=f"doc {i}",
            source_type="s",
            chunks=[(f"chunk {i}", vector(i))],
            expected_version=0 if create_only else None,
        )
        for i in range(n)
    ]


def test_results_stream_in_order_while_the_input_is_read_lazily(
    service: Service, prefix: str
) -> None:
    pulled = 0

    def items() -> Iterator[Put]:
        nonlocal pulled
        for put in puts(prefix, 45):
            pulled += 1
            yield put

    with Client(service.url, lines_per_request=10) as client:
        stream = client.batch(items())
        first = next(stream)
        # One request of 10 lines was read (and one more item held back at most).
        assert pulled <= 11
        assert (first.line, first.ok, first.doc_id) == (1, True, f"{prefix}0000")
        rest = list(stream)
    assert [r.line for r in [first, *rest]] == list(range(1, 46))
    assert all(r.ok and r.result is not None and r.result.version == 1 for r in rest)


def test_a_refused_line_fails_alone(client: Client, prefix: str) -> None:
    items: list[Put | Delete] = list(puts(prefix, 3))
    items.insert(1, Put(prefix + "bad", title="t", source_type="s", chunks=[("x", [1.0] * 3)]))
    items.append(Delete(prefix + "never-there"))
    results = list(client.batch(items))
    assert [(r.line, r.status) for r in results] == [
        (1, 200),
        (2, 400),
        (3, 200),
        (4, 200),
        (5, 404),
    ]
    assert isinstance(results[1].error, docledger.InvalidField)
    assert isinstance(results[4].error, docledger.NotFound)
    assert results[4].op == "delete"


def test_lines_of_one_document_apply_in_order(client: Client, prefix: str) -> None:
    doc = prefix + "same"
    items: list[Put | Delete] = [
        Put(doc, title="one", source_type="s"),
        Delete(doc),
        Put(doc, title="three", source_type="s"),
        Put(doc, title="four", source_type="s"),
    ]
    results = list(client.batch(items))
    assert [r.result.version for r in results if r.result] == [1, 2, 3, 4]
    final = client.get(doc)
    assert (final.version, final.title, final.deleted) == (4, "four", False)


def test_a_cut_answer_is_resent_and_answered_from_the_keys(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    """The server applies all 20 lines, the client sees 7 answers, then the connection
    breaks. The 13 lines are sent again; each is `expected_version=0` (create only), so a
    line applied twice would be refused with 409 instead of answered."""
    proxy.fail(Fault("cut_after", path_contains=":batch", lines=7))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 20, create_only=True)))
    assert [r.line for r in results] == list(range(1, 21))
    assert [r.status for r in results] == [200] * 20, [str(r.error) for r in results if r.error]
    batches = proxy.requests(":batch")
    assert len(batches) == 2
    assert batches[1].body == b"".join(batches[0].body.splitlines(keepends=True)[7:])
    assert all(client.get(f"{prefix}{i:04d}").version == 1 for i in range(20))


def test_a_line_refused_with_503_is_retried_with_its_key(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    """The proxy turns line 3's answer into a 503 although the server applied it: its
    retry must be answered (200), not refused as a second creation (409)."""
    proxy.fail(Fault("line_unavailable", path_contains=":batch", lines=3))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 5, create_only=True)))
    assert [r.status for r in results] == [200] * 5
    assert [r.line for r in results] == [1, 2, 3, 4, 5]
    retried = proxy.requests(":batch")[1].body.splitlines()
    assert len(retried) == 1 and f"{prefix}0002".encode() in retried[0]


def test_a_whole_batch_refused_with_503_is_retried(proxy: FaultProxy, prefix: str) -> None:
    proxy.fail(Fault("unavailable", path_contains=":batch"))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 3)))
    assert [r.status for r in results] == [200, 200, 200]


def test_consistency_applied_waits_for_every_store(client: Client, prefix: str) -> None:
    results = list(client.batch(puts(prefix, 6), consistency="applied", timeout_ms=30_000))
    assert all(r.result is not None and r.result.consistent for r in results), [
        r.result for r in results
    ]
    assert all(
        r.result is not None and r.result.stores == docledger.Stores(1, 1, 1) for r in results
    )


def test_a_bad_item_stops_the_batch_after_the_lines_before_it(client: Client, prefix: str) -> None:
    items: list[object] = [
        *puts(prefix, 2),
        Put(prefix + "nan", "t", "s", [("x", [float("nan")] * DIM)]),
    ]
    got = []
    with pytest.raises(ValueError, match="finite"):
        for r in client.batch(items):  # type: ignore[arg-type]
            got.append(r)
    assert [r.doc_id for r in got] == [f"{prefix}0000", f"{prefix}0001"]
    with pytest.raises(docledger.NotFound):
        client.get(prefix + "nan")


def test_async_batch_from_an_async_iterable(service: Service, prefix: str) -> None:
    async def items():  # type: ignore[no-untyped-def]
        for put in puts(prefix, 12):
            yield put

    async def main() -> list[docledger.BatchResult]:
        async with AsyncClient(service.url, lines_per_request=5) as client:
            return [r async for r in client.batch(items())]

    results = asyncio.run(main())
    assert [r.line for r in results] == list(range(1, 13))
    assert all(r.ok for r in results)
