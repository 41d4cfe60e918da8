"""The client's calls against a real `serve`: typed results, one exception per error code,
vectors from lists and numpy arrays, blobs from bytes, files and streams, bad input
refused before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest

import docledger
from docledger import Blob, Chunk, Client
from docledger._encoding import encode_vector

from .conftest import DIM, Service, vector


def test_put_get_events_delete_round_trip(client: Client, prefix: str, collection) -> None:
    doc_id = prefix + "report:Q3@2024.pdf"
    blob = b"%PDF-1.7 quarterly"
    first = client.put(
        doc_id,
        title="Q3",
        source_type="pdf",
        attributes={"lang": "en"},
        business_tag="finance",
        blob=Blob(blob, "application/pdf"),
        chunks=[Chunk("revenue grew", vector(1)), ("costs fell", np.array(vector(2)))],
        consistency="applied",
        timeout_ms=30_000,
    )
    assert (first.doc_id, first.version, first.unchanged) == (doc_id, 1, False)
    assert first.consistent and not first.timed_out
    assert first.stores == docledger.Stores(1, 1, 1)

    doc = client.get(doc_id)
    assert (doc.version, doc.deleted, doc.ready, doc.consistent) == (1, False, True, True)
    assert (doc.title, doc.source_type, doc.business_tag) == ("Q3", "pdf", "finance")
    assert doc.attributes == {"lang": "en"}
    assert doc.chunk_count == 2
    assert doc.blob == docledger.BlobInfo(
        hashlib.sha256(blob).hexdigest(), len(blob), "application/pdf"
    )
    rows = collection.rows(doc_id)
    assert [r.text for r in rows] == ["revenue grew", "costs fell"]
    assert rows[1].embedding == [float(np.float32(x)) for x in vector(2)]

    again = client.put(
        doc_id,
        title="Q3",
        source_type="pdf",
        attributes={"lang": "en"},
        business_tag="finance",
        blob=Blob(io.BytesIO(blob), "application/pdf"),
        chunks=[("revenue grew", vector(1)), ("costs fell", vector(2))],
    )
    assert again.unchanged and again.version == 1

    events = client.events(doc_id)
    assert [e.stream_version for e in events] == sorted(e.stream_version for e in events)
    assert all(isinstance(e, docledger.Event) and e.type for e in events)

    gone = client.delete(doc_id, consistency="applied", timeout_ms=30_000)
    assert gone.version == 2 and gone.consistent
    assert client.get(doc_id).deleted
    assert collection.rows(doc_id) == []
    with pytest.raises(docledger.NotFound) as e:
        client.delete(doc_id)
    assert e.value.status == 404 and e.value.code == "not_found"


def test_blob_from_a_file_with_a_guessed_type(client: Client, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"plain text")
    client.put(prefix + "notes", title="n", source_type="txt", blob=Blob.from_path(path))
    blob = client.get(prefix + "notes").blob
    assert blob is not None and blob.content_type == "text/plain" and blob.size == 10


def test_each_error_code_has_its_exception(client: Client, prefix: str) -> None:
    with pytest.raises(docledger.InvalidDocId):
        client.put("../escape", title="t", source_type="s")
    with pytest.raises(docledger.InvalidField) as wrong_dim:
        client.put(prefix + "d", title="t", source_type="s", chunks=[("x", [0.5] * (DIM - 1))])
    assert "(64 float32 values)" in str(wrong_dim.value)
    with pytest.raises(docledger.NotFound):
        client.get(prefix + "never-written")
    client.put(prefix + "v", title="t", source_type="s")
    with pytest.raises(docledger.VersionConflict):
        client.put(prefix + "v", title="u", source_type="s", expected_version=7)
    client.put(prefix + "k", title="t", source_type="s", idempotency_key=prefix + "key")
    with pytest.raises(docledger.InvalidIdempotencyKey):
        client.put(prefix + "k", title="other", source_type="s", idempotency_key=prefix + "key")
    with pytest.raises(docledger.InvalidQuery):
        client.compensations(limit=5000)
    # Every refusal above changed nothing.
    assert client.get(prefix + "v").version == 1
    assert client.get(prefix + "k").title == "t"


def test_bad_input_is_refused_before_sending(client: Client, prefix: str) -> None:
    doc = prefix + "bad"
    with pytest.raises(ValueError, match=r"chunks\[0\].vector\[3\]"):
        client.put(doc, title="t", source_type="s", chunks=[("x", [0, 0, 0, float("nan")])])
    with pytest.raises(ValueError, match="finite 32-bit"):
        client.put(doc, title="t", source_type="s", chunks=[("x", np.full(DIM, 1e39))])
    with pytest.raises(ValueError, match="1-D"):
        client.put(doc, title="t", source_type="s", chunks=[("x", np.zeros((2, DIM)))])
    with pytest.raises(TypeError, match="not a number"):
        client.put(doc, title="t", source_type="s", chunks=[("x", ["0.5"] * DIM)])
    with pytest.raises(ValueError, match="consistency"):
        client.put(doc, title="t", source_type="s", consistency="eventually")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_ms only applies"):
        client.put(doc, title="t", source_type="s", timeout_ms=5)
    with pytest.raises(TypeError, match="binary"):
        client.put(doc, title="t", source_type="s", blob=Blob(io.StringIO("text")))  # type: ignore[arg-type]
    with pytest.raises(docledger.NotFound):
        client.get(doc)


def test_vector_b64_is_little_endian_float32() -> None:
    values = [0.1, -2.5, 3.4e38, 1e-45]
    field = encode_vector(values, "b64", "v")
    raw = base64.b64decode(field["vector_b64"])
    assert len(raw) == 4 * len(values)
    assert list(struct.unpack("<4f", raw)) == [float(np.float32(v)) for v in values]
    assert base64.b64decode(encode_vector(np.array(values), "b64", "v")["vector_b64"]) == raw
    assert encode_vector(values, "json", "v") == {"vector": values}


def test_both_encodings_reach_milvus_bit_for_bit(service: Service, prefix: str, collection) -> None:
    """`vector_b64` (the default) and JSON numbers store the same float32 bits."""
    values = np.array(vector(5), dtype="<f4")
    values[0] = np.float32(-0.0)
    values[1] = np.frombuffer(b"\x01\x00\x00\x00", dtype="<f4")[0]  # smallest subnormal
    for encoding in ("b64", "json"):
        with Client(service.url, vector_encoding=encoding) as c:
            c.put(
                prefix + encoding,
                title="t",
                source_type="s",
                chunks=[("x", values)],
                consistency="applied",
                timeout_ms=30_000,
            )
        (row,) = collection.rows(prefix + encoding)
        got = np.array(row.embedding, dtype="<f4")
        assert got.tobytes() == values.tobytes(), encoding


def test_operations_are_typed(client: Client) -> None:
    projections = client.projections()
    assert {p.name for p in projections} == {"mysql", "milvus", "s3"}
    assert all(isinstance(p.lag_events, int) for p in projections)
    assert isinstance(client.compensations(), list)
    with pytest.raises(ValueError, match="store must be"):
        client.pause("redis")
