"""Test fixtures: one real `docledger serve` (the binary) for the session, on a free port,
with its own log database, MySQL database, Milvus collection and S3 bucket named
`t_py_<pid>_<hex>` (the Rust tests' sweeper removes such leftovers once this process is
gone), against the stores `scripts/stores.sh up` started (`. scripts/env.sh` exports
them). Tests isolate themselves inside it by document-id prefix. No store is mocked.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from docledger import Client, RetryPolicy
from docledger.milvus import ChunkCollection

from .proxy import FaultProxy, start_proxy

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
DIM = 64
HOW_TO_START = "start the stores with `scripts/stores.sh up`, then `. scripts/env.sh`"
REQUIRED = (
    "DOCLEDGER_EVENTSTORE_URL",
    "DOCLEDGER_MYSQL_URL",
    "DOCLEDGER_MILVUS_URL",
    "DOCLEDGER_S3_ENDPOINT",
)

T = TypeVar("T")

sys.path.insert(0, str(EXAMPLES))


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout, say) ends the run like Ctrl-C, so fixtures stop `serve`."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Polls `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    port: int
    name: str
    env: dict[str, str]
    log: Path

    def milvus(self) -> ChunkCollection:
        return ChunkCollection.from_env(self.name, self.env)


def _binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = Path(os.environ.get("DOCLEDGER_BIN", target / "debug" / "docledger"))
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it with `cargo build --bin docledger`")
    return binary


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    missing = [k for k in REQUIRED if not os.environ.get(k)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: {HOW_TO_START}")
    name = f"t_py_{os.getpid()}_{secrets.token_hex(4)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCLEDGER_")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("DOCLEDGER_")})
    env.update(
        {
            "DOCLEDGER_EVENTSTORE_URL": with_database(os.environ["DOCLEDGER_EVENTSTORE_URL"], name),
            "DOCLEDGER_MYSQL_URL": with_database(os.environ["DOCLEDGER_MYSQL_URL"], name),
            "DOCLEDGER_MILVUS_COLLECTION": name,
            "DOCLEDGER_S3_BUCKET": name.replace("_", "-"),
            "DOCLEDGER_VECTOR_DIM": str(DIM),
            "DOCLEDGER_LISTEN": f"127.0.0.1:{port}",
            "DOCLEDGER_IDLE_POLL_MS": "100",
            "DOCLEDGER_RETRY_MAX_MS": "1000",
            "DOCLEDGER_VERIFY_INTERVAL_SECS": "0",
            "DOCLEDGER_LOG": os.environ.get("DOCLEDGER_LOG", "warn"),
        }
    )
    env.pop("DOCLEDGER_API_TOKENS", None)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(_binary()), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    url = f"http://127.0.0.1:{port}"
    service = Service(url, port, name, env, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"docledger serve exited ({proc.returncode}): {log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docledger serve not ready after 90 s: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield service
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _drop_collection(service)


def _drop_collection(service: Service) -> None:
    """Embedded Milvus keeps every loaded collection in memory: drop ours (best effort)."""
    try:
        milvus = service.milvus()
        milvus._client.drop_collection(service.name)
        milvus.close()
    except Exception as e:  # cleanup never fails the run
        print(f"could not drop collection {service.name}: {e}", file=sys.stderr)


FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.05, max_delay=0.5)


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, retry=FAST_RETRY, timeout=30) as c:
        yield c


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A document-id prefix of this test's own."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60]
    return f"{name}-{secrets.token_hex(3)}/"


@pytest.fixture
def proxy(service: Service) -> Iterator[FaultProxy]:
    p, stop = start_proxy(service.port)
    yield p
    stop()


@pytest.fixture(scope="session")
def collection(service: Service) -> Iterator[ChunkCollection]:
    c = service.milvus()
    yield c
    c.close()


def vector(seed: int, dim: int = DIM) -> list[float]:
    """A deterministic test vector."""
    return [((seed * 31 + i * 7) % 17) / 17.0 for i in range(dim)]
