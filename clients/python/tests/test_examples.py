"""Each example run end to end, as a user would run it, against the test service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from docledger import Client

from .conftest import DIM, EXAMPLES, Service


def run_example(service: Service, *args: str | Path) -> str:
    env = {
        **service.env,
        "DOCLEDGER_URL": service.url,
        "DOCLEDGER_VECTOR_DIM": str(DIM),
    }
    done = subprocess.run(
        [sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_ingest_then_retrieve_then_sync(
    service: Service, client: Client, prefix: str, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    shutil.copytree(EXAMPLES / "data", folder)
    out = run_example(service, EXAMPLES / "ingest_folder.py", folder, "--prefix", prefix)
    assert out.count("version 1 (changed)") == 3
    out = run_example(
        service,
        EXAMPLES / "retrieve.py",
        "which store keeps the raw document blob",
        "--prefix",
        prefix,
        "-k",
        "1",
    )
    assert f"{prefix}s3.txt v1" in out
    (folder / "milvus.txt").unlink()
    out = run_example(service, EXAMPLES / "ingest_folder.py", folder, "--prefix", prefix, "--sync")
    assert "0 changed, 2 unchanged" in out and f"deleted 1: {prefix}milvus.txt" in out
    assert client.get(prefix + "milvus.txt").deleted


def test_langchain_example(service: Service, prefix: str) -> None:
    out = run_example(
        service,
        EXAMPLES / "langchain_pipeline.py",
        EXAMPLES / "data",
        "what does docledger keep in S3 as an object",
        "--prefix",
        prefix,
    )
    assert "'num_added': 6" in out
    assert out.splitlines()[1].split()[1] == "s3.txt"


def test_llama_index_example(service: Service, client: Client, prefix: str, tmp_path: Path) -> None:
    args = (
        EXAMPLES / "llama_index_pipeline.py",
        EXAMPLES / "data",
        "how is the log ordered in PostgreSQL",
        "--prefix",
        prefix,
        "--state",
        tmp_path / "state",
    )
    out = run_example(service, *args)
    assert "ingested" in out and out.splitlines()[1].split()[1] == "postgres.txt"
    again = run_example(service, *args)
    assert "ingested 0 new or changed nodes" in again
    assert [d.version for d in client.iter_documents(prefix)] == [1, 1, 1]
