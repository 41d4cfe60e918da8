"""The full-sync mode: after a run that landed whole, the live documents under the prefix
that it did not send are deleted; after a run that failed part way, none is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import docledger
from docledger import AsyncClient, Client, Put

from .conftest import DIM, FAST_RETRY, Service, vector
from .proxy import Fault, FaultProxy


def put(doc_id: str, title: str = "t") -> Put:
    return Put(doc_id, title=title, source_type="s", chunks=[("x", vector(len(doc_id)))])


def live(client: Client, prefix: str) -> list[str]:
    return [d.doc_id for d in client.iter_documents(prefix)]


@pytest.fixture
def seeded(client: Client, prefix: str) -> str:
    """a, b, c under the prefix; one document beside it that no sync may touch."""
    for r in client.batch([put(prefix + x) for x in "abc"] + [put(prefix[:-1] + "-outside")]):
        assert r.ok
    return prefix


def test_listing_is_paged_in_id_order_without_deleted_documents(
    client: Client, seeded: str
) -> None:
    client.delete(seeded + "b")
    first = client.list_documents(seeded, limit=1)
    assert [d.doc_id for d in first.documents] == [seeded + "a"]
    assert first.next_after == seeded + "a"
    second = client.list_documents(seeded, after=first.next_after, limit=5)
    assert [d.doc_id for d in second.documents] == [seeded + "c"]
    assert second.next_after is None
    with_deleted = client.list_documents(seeded, include_deleted=True)
    assert [(d.doc_id, d.deleted) for d in with_deleted.documents] == [
        (seeded + "a", False),
        (seeded + "b", True),
        (seeded + "c", False),
    ]


def test_sync_deletes_what_the_run_did_not_send(client: Client, seeded: str) -> None:
    report = client.sync(
        [put(seeded + "a"), put(seeded + "b", "new"), put(seeded + "d")], prefix=seeded
    )
    assert report.deleted == [seeded + "c"]
    assert (report.sent, report.changed, report.unchanged) == (3, 2, 1)
    assert live(client, seeded) == [seeded + x for x in "abd"]
    assert not client.get(seeded[:-1] + "-outside").deleted


def test_sync_after_a_refused_line_deletes_nothing(client: Client, seeded: str) -> None:
    bad = Put(seeded + "bad", title="t", source_type="s", chunks=[("x", [0.5] * (DIM + 1))])
    with pytest.raises(docledger.SyncFailed) as e:
        client.sync([put(seeded + "a"), bad], prefix=seeded)
    assert [r.doc_id for r in e.value.report.refused] == [seeded + "bad"]
    assert e.value.report.deleted == []
    assert live(client, seeded) == [seeded + x for x in "abc"]


def test_sync_whose_input_breaks_part_way_deletes_nothing(client: Client, seeded: str) -> None:
    def items() -> Iterator[Put]:
        yield put(seeded + "a")
        raise OSError("the source folder went away")

    with pytest.raises(OSError):
        client.sync(items(), prefix=seeded)
    assert live(client, seeded) == [seeded + x for x in "abc"]


def test_sync_whose_connection_keeps_failing_deletes_nothing(
    proxy: FaultProxy, client: Client, seeded: str
) -> None:
    proxy.fail(*[Fault("drop", path_contains=":batch") for _ in range(10)])
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy, pytest.raises(docledger.TransportError):
        via_proxy.sync([put(seeded + "a")], prefix=seeded)
    assert all(s.method != "GET" for s in proxy.requests("/v1/documents?")), "it listed anyway"
    assert live(client, seeded) == [seeded + x for x in "abc"]


def test_sync_refuses_a_line_outside_its_prefix(client: Client, seeded: str) -> None:
    with pytest.raises(ValueError, match="outside the sync prefix"):
        client.sync([put(seeded + "a"), put("elsewhere/x")], prefix=seeded)
    assert live(client, seeded) == [seeded + x for x in "abc"]


def test_async_sync(service: Service, client: Client, seeded: str) -> None:
    async def main() -> docledger.SyncReport:
        async with AsyncClient(service.url) as aclient:
            return await aclient.sync([put(seeded + "c")], prefix=seeded)

    report = asyncio.run(main())
    assert sorted(report.deleted) == [seeded + "a", seeded + "b"]
    assert live(client, seeded) == [seeded + "c"]
