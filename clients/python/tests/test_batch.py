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
    """The server applies all 20 lines, then another writer changes the last 13 documents,
    then the client sees 7 answers and the connection breaks. The 13 lines are sent again:
    answered from their keys, they must not overwrite the other writer's versions."""

    def other_writer() -> None:
        for r in client.batch(Put(p.doc_id, "other", "s") for p in puts(prefix, 20)[7:]):
            assert r.ok

    proxy.fail(Fault("cut_after", path_contains=":batch", lines=7, after_forward=other_writer))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 20)))
    assert [r.line for r in results] == list(range(1, 21))
    assert [(r.status, r.result and r.result.version) for r in results] == [(200, 1)] * 20
    batches = proxy.requests(":batch")
    assert len(batches) == 2
    assert batches[1].body == b"".join(batches[0].body.splitlines(keepends=True)[7:])
    docs = [client.get(f"{prefix}{i:04d}") for i in range(20)]
    assert [(d.version, d.title) for d in docs[:7]] == [(1, f"doc {i}") for i in range(7)]
    assert [(d.version, d.title) for d in docs[7:]] == [(2, "other")] * 13, "a line applied twice"


def test_a_line_refused_with_503_is_retried_with_its_key(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    """The proxy turns line 3's answer into a 503 although the server applied it, and
    another writer changes that document meanwhile: the retry must be answered from the
    key, not applied over the other writer's change."""
    doc = f"{prefix}0002"
    proxy.fail(
        Fault(
            "line_unavailable",
            path_contains=":batch",
            lines=3,
            after_forward=lambda: client.put(doc, title="other", source_type="s"),
        )
    )
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 5)))
    assert [(r.line, r.status) for r in results] == [(i, 200) for i in range(1, 6)]
    assert results[2].result is not None and results[2].result.version == 1
    retried = proxy.requests(":batch")[1].body.splitlines()
    assert len(retried) == 1 and doc.encode() in retried[0]
    assert (client.get(doc).version, client.get(doc).title) == (2, "other")


def test_a_create_only_line_whose_answer_was_lost_is_answered(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    """`expected_version=0` (create only) lines applied, their answers lost, sent again:
    the same key must give the same answer, not a 409 (the server decides the refusal
    before it looks the key up: see the report of issue 26)."""
    proxy.fail(Fault("cut_after", path_contains=":batch", lines=2))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        results = list(via_proxy.batch(puts(prefix, 5, create_only=True)))
    assert [r.status for r in results] == [200] * 5, [str(r.error) for r in results if r.error]


def test_a_batch_without_keys_is_not_sent_again_after_a_cut(proxy: FaultProxy, prefix: str) -> None:
    proxy.fail(Fault("cut_after", path_contains=":batch", lines=1))
    got = []
    with (
        Client(proxy.url, retry=FAST_RETRY, idempotency_keys=False) as unkeyed,
        pytest.raises(docledger.TransportError, match="without an idempotency key"),
    ):
        got.extend(unkeyed.batch(puts(prefix, 3)))
    assert [r.line for r in got] == [1]
    assert len(proxy.requests(":batch")) == 1


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
