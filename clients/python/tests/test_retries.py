"""Retries through a proxy that answers 503, swallows answers and delays them, in front of
the real `serve`. The sequences that matter are those where the first attempt reached
the server: only the idempotency key keeps its retry from being applied again."""

from __future__ import annotations

import asyncio
import time

import pytest

import docledger
from docledger import AsyncClient, Client, RetryPolicy

from .conftest import FAST_RETRY, Service, free_port, vector
from .proxy import Fault, FaultProxy


def keys(proxy: FaultProxy, path: str) -> list[str | None]:
    return [s.headers.get("idempotency-key") for s in proxy.requests(path)]


def test_503_is_retried_after_retry_after_with_the_same_key(proxy: FaultProxy, prefix: str) -> None:
    doc = prefix + "a"
    proxy.fail(Fault("unavailable", retry_after="1"), Fault("unavailable", retry_after="1"))
    policy = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.01)
    with Client(proxy.url, retry=policy) as client:
        started = time.monotonic()
        result = client.put(doc, title="t", source_type="s", chunks=[("x", vector(1))])
        elapsed = time.monotonic() - started
    assert result.version == 1 and not result.unchanged
    assert elapsed >= 2.0, "Retry-After: 1 was not honoured"
    sent = keys(proxy, "/v1/documents/")
    assert len(sent) == 3 and sent[0] and len(set(sent)) == 1


def test_503_until_the_attempts_run_out(proxy: FaultProxy, prefix: str) -> None:
    proxy.fail(*[Fault("unavailable") for _ in range(3)])
    policy = RetryPolicy(max_attempts=3, base_delay=0.01)
    with Client(proxy.url, retry=policy) as client, pytest.raises(docledger.Unavailable) as e:
        client.put(prefix + "x", title="t", source_type="s")
    assert e.value.status == 503
    assert len(proxy.requests("/v1/documents/")) == 3


def test_a_put_whose_answer_was_lost_is_not_applied_twice(
    proxy: FaultProxy, service: Service, prefix: str
) -> None:
    """The put reaches the server, its answer is lost, another writer changes the document,
    then the client retries: the retry must get the first answer back, not overwrite the
    other writer's change."""
    doc = prefix + "lost-answer"
    direct = Client(service.url)

    def other_writer() -> None:
        direct.put(doc, title="other writer", source_type="s", chunks=[("o", vector(9))])

    proxy.fail(Fault("drop", method="PUT", after_forward=other_writer))
    with Client(proxy.url, retry=FAST_RETRY) as client:
        result = client.put(doc, title="mine", source_type="s", chunks=[("m", vector(8))])
    assert result.version == 1, "the retry was answered as a new write"
    final = direct.get(doc)
    assert (final.version, final.title) == (2, "other writer"), "the lost put was applied again"
    sent = keys(proxy, "/v1/documents/")
    assert len(sent) == 2 and sent[0] is not None and sent[0] == sent[1]
    direct.close()


def test_a_delete_whose_answer_was_lost_is_answered_not_refused(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    doc = prefix + "delete"
    client.put(doc, title="t", source_type="s")
    proxy.fail(Fault("drop", method="DELETE"))
    with Client(proxy.url, retry=FAST_RETRY) as via_proxy:
        result = via_proxy.delete(doc)  # without the key, the retry would be a 404
    assert result.version == 2
    assert client.get(doc).deleted


def test_a_timed_out_attempt_is_retried_with_its_key(
    proxy: FaultProxy, client: Client, prefix: str
) -> None:
    doc = prefix + "slow"
    client.put(doc, title="v1", source_type="s")
    proxy.fail(Fault("delay", method="PUT", seconds=2.5))
    with Client(proxy.url, retry=FAST_RETRY, timeout=1.0) as slow:
        result = slow.put(doc, title="v2", source_type="s", expected_version=1)
    # The first attempt was applied (v2); its retry re-sent expected_version=1, which only
    # the stored answer turns into success instead of a 409.
    assert result.version == 2
    assert client.get(doc).version == 2


def test_no_server_is_a_transport_error_after_the_attempts() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(max_attempts=3, base_delay=0.01)
    with (
        Client(url, retry=policy) as client,
        pytest.raises(docledger.TransportError, match="after 3 attempt"),
    ):
        client.get("anything")


def test_a_rebuild_is_not_resent_once_it_may_have_reached_the_server(
    proxy: FaultProxy,
) -> None:
    proxy.fail(Fault("unavailable", path_contains="/rebuild"))
    proxy.fail(Fault("drop", path_contains="/rebuild"))
    with Client(proxy.url, retry=FAST_RETRY) as client, pytest.raises(docledger.TransportError):
        client.rebuild("mysql")
    # The 503 was retried (nothing happened), the lost answer was not (it may have started).
    assert len(proxy.requests("/rebuild")) == 2


def test_async_client_retries_with_the_same_key(
    proxy: FaultProxy, service: Service, prefix: str
) -> None:
    doc = prefix + "async"
    proxy.fail(Fault("unavailable"), Fault("drop", method="PUT"))

    async def main() -> None:
        async with AsyncClient(proxy.url, retry=FAST_RETRY) as client:
            result = await client.put(doc, title="t", source_type="s", chunks=[("x", vector(3))])
            assert result.version == 1
            assert (await client.get(doc)).version == 1

    asyncio.run(main())
    sent = keys(proxy, "/v1/documents/")
    assert sent[0] is not None and sent[:3] == [sent[0]] * 3


def test_a_gateway_502_is_retried_only_with_a_key(proxy: FaultProxy, prefix: str) -> None:
    """502 may come after the request reached docledger: sent again only under a key."""
    proxy.fail(Fault("unavailable", status=502, path_contains="with-key"))
    proxy.fail(Fault("unavailable", status=502, path_contains="without-key"))
    with Client(proxy.url, retry=FAST_RETRY) as keyed:
        assert keyed.put(prefix + "with-key", title="t", source_type="s").version == 1
    assert len(proxy.requests("with-key")) == 2
    unkeyed = Client(proxy.url, retry=FAST_RETRY, idempotency_keys=False)
    with unkeyed, pytest.raises(docledger.ApiError) as e:
        unkeyed.put(prefix + "without-key", title="t", source_type="s")
    assert e.value.status == 502
    assert len(proxy.requests("without-key")) == 1
