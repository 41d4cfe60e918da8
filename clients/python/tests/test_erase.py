"""Erasure (GDPR art. 17) against a real `serve`: `erase` answers once every store dropped
the document, `get` shows it erased without content, its events keep only metadata (a
marker the document carried is found zero times), an unknown id is `NotFound`, a second
erasure is `unchanged`, a store late past `timeout_ms` gives a 202 (`timed_out`), retries
reuse one idempotency key, and batches carry erase lines."""

from __future__ import annotations

import asyncio
import json
import secrets
from urllib.parse import quote

import httpx
import pytest

import docledger
from docledger import AsyncClient, Blob, Chunk, Client, Delete, Erase, Put
from docledger._encoding import batch_line, doc_path

from .conftest import FAST_RETRY, Service, eventually, vector
from .proxy import Fault, FaultProxy


def marked_put(client: Client, doc_id: str) -> str:
    """Puts `doc_id` with a unique marker in its title, chunk text, attributes and blob, and
    returns the marker (found in the document's events before the erasure)."""
    marker = "erase-marker-" + secrets.token_hex(8)
    client.put(
        doc_id,
        title=f"subject {marker}",
        source_type="crm",
        attributes={"note": marker},
        blob=Blob(f"record of {marker}".encode(), "text/plain"),
        chunks=[Chunk(f"the customer {marker} asked", vector(1)), (marker, vector(2))],
        consistency="applied",
        timeout_ms=30_000,
    )
    assert client.get(doc_id).title == f"subject {marker}"
    return marker


def raw_events(service: Service, doc_id: str) -> str:
    """The events list exactly as the server sends it (every field, known or not)."""
    answer = httpx.get(service.url + doc_path(doc_id) + "/events", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.text


def assert_erased(client: Client, service: Service, doc_id: str, marker: str, version: int) -> None:
    doc = client.get(doc_id)
    assert (doc.version, doc.erased, doc.deleted) == (version, True, True)
    assert (doc.title, doc.source_type, doc.attributes, doc.blob) == (None, None, None, None)
    assert doc.chunk_count == 0
    assert raw_events(service, doc_id).count(marker) == 0
    events = client.events(doc_id)
    assert events[-1].type == "DocumentErased" and events[-1].data["version"] == version
    # Every event that held content keeps only its metadata (a deletion held none).
    kept = {e.type for e in events if e.content_removed != "erasure"}
    assert kept <= {"DocumentDeleted", "DocumentErased"}, kept
    assert {"RowInserted", "VectorsIndexed"} <= {e.type for e in events}
    assert not any(marker in json.dumps(e.data) for e in events)


def test_erase_removes_the_content_from_the_log_and_every_store(
    client: Client, service: Service, prefix: str, collection
) -> None:
    doc_id = prefix + "subject:42@crm/a"  # `:`, `@` and `/`, percent-encoded in one segment
    marker = marked_put(client, doc_id)
    before = raw_events(service, doc_id)
    assert before.count(marker) >= 4, "the marker must be findable before the erasure"
    assert len(collection.rows(doc_id)) == 2

    result = client.erase(doc_id, timeout_ms=30_000)

    assert isinstance(result, docledger.CommandResult)
    assert (result.doc_id, result.version, result.unchanged) == (doc_id, 2, False)
    assert result.consistent and not result.timed_out
    assert result.log_position is not None
    assert result.stores == docledger.Stores(2, 2, 2)
    assert_erased(client, service, doc_id, marker, version=2)
    assert collection.rows(doc_id) == []
    listed = client.list_documents(prefix, include_deleted=True).documents
    assert [(d.doc_id, d.deleted) for d in listed] == [(doc_id, True)]


def test_erasing_an_unknown_id_is_not_found(client: Client, prefix: str) -> None:
    # The same call erases a known id (a wrong route would be a 404 `not_found` too).
    client.put(prefix + "known", title="t", source_type="s")
    assert client.erase(prefix + "known").version == 2
    with pytest.raises(docledger.NotFound) as e:
        client.erase(prefix + "never-written")
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(docledger.NotFound):
        client.get(prefix + "never-written")
    listed = client.list_documents(prefix, include_deleted=True).documents
    assert [d.doc_id for d in listed] == [prefix + "known"]


def test_erasing_again_is_unchanged(client: Client, service: Service, prefix: str) -> None:
    doc_id = prefix + "twice"
    marker = marked_put(client, doc_id)
    first = client.erase(doc_id)
    assert (first.version, first.unchanged, first.consistent) == (2, False, True)
    again = client.erase(doc_id)
    assert (again.version, again.unchanged, again.consistent) == (2, True, True)
    assert_erased(client, service, doc_id, marker, version=2)
    # A later put starts a new version after the tombstone's, and is no longer erased.
    client.put(doc_id, title="new", source_type="s")
    doc = client.get(doc_id)
    assert (doc.version, doc.erased, doc.deleted, doc.title) == (3, False, False, "new")


def test_an_erasure_of_a_deleted_document_removes_its_content(
    client: Client, service: Service, prefix: str
) -> None:
    doc_id = prefix + "deleted-first"
    marker = marked_put(client, doc_id)
    client.delete(doc_id)
    assert marker in raw_events(service, doc_id), "a delete keeps the history"
    assert client.erase(doc_id).version == 3
    assert_erased(client, service, doc_id, marker, version=3)


def test_erase_with_a_wrong_expected_version_changes_nothing(client: Client, prefix: str) -> None:
    doc_id = prefix + "guarded"
    client.put(doc_id, title="kept", source_type="s")
    with pytest.raises(docledger.VersionConflict) as e:
        client.erase(doc_id, expected_version=7)
    assert e.value.status == 409
    doc = client.get(doc_id)
    assert (doc.version, doc.erased, doc.title) == (1, False, "kept")
    assert client.erase(doc_id, expected_version=1).version == 2
    assert client.get(doc_id).erased


def test_an_erase_whose_answer_was_lost_is_answered_from_its_key(
    proxy: FaultProxy, client: Client, service: Service, prefix: str
) -> None:
    """The erasure reaches the server and its answer is lost: the retry carries the same key
    and gets the first answer (`unchanged: false`) back; without the key it would be a new
    erasure, answered `unchanged: true`."""
    doc_id = prefix + "lost:answer"
    marker = marked_put(client, doc_id)
    proxy.fail(Fault("drop", method="POST", path_contains=":erase"))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        result = via_proxy.erase(doc_id, timeout_ms=30_000)
    assert (result.version, result.unchanged, result.consistent) == (2, False, True)
    sent = proxy.requests(":erase")
    assert [s.path for s in sent] == [
        f"/v1/documents/{quote(doc_id, safe='')}:erase?timeout_ms=30000"
    ] * 2
    keys = [s.headers.get("idempotency-key") for s in sent]
    assert keys[0] and keys == [keys[0]] * 2
    assert [s.body for s in sent] == [b"", b""]
    assert_erased(client, service, doc_id, marker, version=2)


def test_erase_sends_expected_version_and_a_given_key(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    doc_id = prefix + "keyed"
    client.put(doc_id, title="t", source_type="s")
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        result = via_proxy.erase(doc_id, expected_version=1, idempotency_key=prefix + "k")
        # The same key and request again: the stored answer, not a 409 for version 1.
        again = via_proxy.erase(doc_id, expected_version=1, idempotency_key=prefix + "k")
    assert (result.version, result.unchanged) == (2, False)
    assert again == result
    sent = proxy.requests(":erase")
    assert [json.loads(s.body) for s in sent] == [{"expected_version": 1}] * 2
    assert [s.headers.get("idempotency-key") for s in sent] == [prefix + "k"] * 2
    assert all("timeout_ms" not in s.path and "consistency" not in s.path for s in sent)


def test_erase_refuses_a_bad_timeout_before_sending(client: Client, prefix: str) -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        client.erase(prefix + "x", timeout_ms=-1)
    with pytest.raises(ValueError, match="non-empty"):
        client.erase("")


def test_an_erasure_a_store_has_not_applied_in_time_is_202(
    client: Client, service: Service, prefix: str
) -> None:
    doc_id = prefix + "slow-store"
    marker = marked_put(client, doc_id)
    client.pause("s3")
    try:
        result = client.erase(doc_id, timeout_ms=0)
        assert result.timed_out and not result.consistent and not result.unchanged
        assert result.version == 2 and result.stores.s3 == 1
        # The log is erased at once, whatever the stores hold.
        assert raw_events(service, doc_id).count(marker) == 0
    finally:
        client.resume("s3")
    eventually(lambda: True if client.get(doc_id).consistent else None, "S3 to drop it")
    assert_erased(client, service, doc_id, marker, version=2)


def test_batch_erase_lines(client: Client, service: Service, prefix: str) -> None:
    erased = prefix + "batch:erased"
    marker = marked_put(client, erased)
    items: list[Put | Delete | Erase] = [
        Put(prefix + "kept", title=f"kept {marker}", source_type="s"),
        Erase(erased),
        Erase(prefix + "never-there"),
        Put(prefix + "guarded", title="t", source_type="s"),
        Erase(prefix + "guarded", expected_version=5),
        Erase(erased),
    ]
    results = list(client.batch(items, consistency="applied", timeout_ms=30_000))
    assert [(r.line, r.op, r.status) for r in results] == [
        (1, "put", 200),
        (2, "erase", 200),
        (3, "erase", 404),
        (4, "put", 200),
        (5, "erase", 409),
        (6, "erase", 200),
    ]
    assert results[1].result is not None
    assert (results[1].result.version, results[1].result.unchanged) == (2, False)
    assert results[1].result.consistent
    assert isinstance(results[2].error, docledger.NotFound)
    assert isinstance(results[4].error, docledger.VersionConflict)
    assert results[5].result is not None and results[5].result.unchanged
    assert_erased(client, service, erased, marker, version=2)
    assert client.get(prefix + "kept").title == f"kept {marker}", "another document stays whole"
    assert not client.get(prefix + "guarded").erased


def test_an_erase_line_is_encoded_like_a_delete_line() -> None:
    assert batch_line(Erase("a/b:c"), "b64", None) == b'{"op":"erase","doc_id":"a/b:c"}\n'
    assert batch_line(Erase("a", expected_version=3), "b64", "k") == (
        b'{"op":"erase","doc_id":"a","expected_version":3,"idempotency_key":"k"}\n'
    )
    with pytest.raises(ValueError, match="non-empty"):
        batch_line(Erase(""), "b64", None)


def test_a_batch_erase_line_whose_answer_was_lost_is_answered_from_its_key(
    proxy: FaultProxy, client: Client, service: Service, prefix: str
) -> None:
    doc_id = prefix + "batch-lost"
    marker = marked_put(client, doc_id)
    proxy.fail(Fault("cut_after", path_contains=":batch", lines=0))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        [result] = list(via_proxy.batch([Erase(doc_id)], consistency="applied"))
    assert (result.op, result.status) == ("erase", 200)
    assert result.result is not None and not result.result.unchanged
    bodies = [s.body for s in proxy.requests(":batch")]
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert json.loads(bodies[0])["op"] == "erase" and json.loads(bodies[0])["idempotency_key"]
    assert_erased(client, service, doc_id, marker, version=2)


def test_async_erase(service: Service, client: Client, prefix: str) -> None:
    doc_id = prefix + "async"
    marker = marked_put(client, doc_id)

    async def main() -> tuple[docledger.CommandResult, docledger.Document]:
        async with AsyncClient(service.url, retry=FAST_RETRY) as aclient:
            result = await aclient.erase(doc_id, timeout_ms=30_000)
            with pytest.raises(docledger.NotFound):
                await aclient.erase(prefix + "never-there")
            return result, await aclient.get(doc_id)

    result, doc = asyncio.run(main())
    assert (result.version, result.unchanged, result.consistent) == (2, False, True)
    assert doc.erased and doc.deleted and doc.title is None
    assert_erased(client, service, doc_id, marker, version=2)
