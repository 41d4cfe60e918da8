"""Request bodies: a put's JSON, a batch line, a vector as JSON numbers or as `vector_b64`
(base64 of little-endian float32). Every body is encoded once per logical call, so each
retry sends the same bytes under the same idempotency key.

Bad input (a NaN, a 2-D array, a string among the floats) is refused here with a
`ValueError` or `TypeError` naming the chunk, before anything is sent.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from .models import Chunk, Delete, Erase, Operation, Put, VectorLike

VectorEncoding = Literal["json", "b64"]
"""How chunk vectors travel: `json` (a list of numbers, `vector`) or `b64` (`vector_b64`,
little-endian float32; the server accepts it once issue 28 lands)."""

VECTOR_ENCODINGS: tuple[VectorEncoding, ...] = ("json", "b64")


def doc_path(doc_id: str) -> str:
    """`/v1/documents/{doc_id}` with the id as one percent-encoded segment."""
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"doc_id must be a non-empty string, got {doc_id!r}")
    return "/v1/documents/" + quote(doc_id, safe="")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _floats(vector: VectorLike, where: str) -> list[float] | Any:
    """The vector as a list of finite floats, or as a 1-D float32 numpy array when given
    a numpy array."""
    if hasattr(vector, "__array__") and hasattr(vector, "ndim"):
        import numpy as np

        array = np.asarray(vector)
        if array.ndim != 1:
            raise ValueError(f"{where} must be 1-D, got an array of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise TypeError(f"{where} must hold real numbers, got dtype {array.dtype}")
        with np.errstate(over="ignore"):
            as_f32 = array.astype("<f4")
        if not np.isfinite(as_f32).all():
            raise ValueError(f"{where} holds a value that is not a finite 32-bit float")
        return as_f32
    if isinstance(vector, (str, bytes)) or not hasattr(vector, "__iter__"):
        raise TypeError(f"{where} must be a sequence of floats, got {type(vector).__name__}")
    values = list(vector)
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{where}[{i}] is {type(x).__name__}, not a number")
        if not math.isfinite(x) or abs(x) > 3.4028234663852886e38:
            raise ValueError(f"{where}[{i}] = {x!r} is not a finite 32-bit float")
    return values


def encode_vector(vector: VectorLike, encoding: VectorEncoding, where: str) -> dict[str, Any]:
    """The chunk field carrying `vector`: `{"vector": [...]}` or `{"vector_b64": "..."}`."""
    values = _floats(vector, where)
    if encoding == "json":
        return {"vector": values if isinstance(values, list) else values.tolist()}
    if isinstance(values, list):
        return {"vector_b64": base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()}
    return {"vector_b64": base64.b64encode(values.tobytes()).decode()}


def _chunk(c: Chunk | tuple[str, VectorLike], encoding: VectorEncoding, i: int) -> dict[str, Any]:
    if isinstance(c, Chunk):
        text, vector = c.text, c.vector
    elif isinstance(c, tuple) and len(c) == 2:
        text, vector = c
    else:
        raise TypeError(
            f"chunks[{i}] must be a Chunk or a (text, vector) pair, got {type(c).__name__}"
        )
    if not isinstance(text, str):
        raise TypeError(f"chunks[{i}].text must be a string, got {type(text).__name__}")
    return {"text": text, **encode_vector(vector, encoding, f"chunks[{i}].vector")}


def put_body(put: Put, encoding: VectorEncoding) -> dict[str, Any]:
    """The JSON object of a PUT (without the routing fields of a batch line)."""
    body: dict[str, Any] = {"title": put.title, "source_type": put.source_type}
    if put.business_tag is not None:
        body["business_tag"] = put.business_tag
    if put.attributes is not None:
        if not isinstance(put.attributes, Mapping):
            raise TypeError("attributes must be a mapping")
        body["attributes"] = dict(put.attributes)
    if put.blob is not None:
        body["blob"] = {
            "content_base64": base64.b64encode(put.blob.read()).decode("ascii"),
            "content_type": put.blob.content_type,
        }
    if put.chunks:
        body["chunks"] = [_chunk(c, encoding, i) for i, c in enumerate(put.chunks)]
    if put.expected_version is not None:
        body["expected_version"] = put.expected_version
    return body


def batch_line(op: Operation, encoding: VectorEncoding, idempotency_key: str | None) -> bytes:
    """One NDJSON line (newline included) for `op`."""
    if isinstance(op, Put):
        line: dict[str, Any] = {"op": "put", "doc_id": op.doc_id, **put_body(op, encoding)}
    elif isinstance(op, (Delete, Erase)):
        line = {"op": "delete" if isinstance(op, Delete) else "erase", "doc_id": op.doc_id}
        if op.expected_version is not None:
            line["expected_version"] = op.expected_version
    else:
        raise TypeError(
            f"a batch item must be a Put, a Delete or an Erase, got {type(op).__name__}"
        )
    if not isinstance(op.doc_id, str) or not op.doc_id:
        raise ValueError(f"doc_id must be a non-empty string, got {op.doc_id!r}")
    if idempotency_key is not None:
        line["idempotency_key"] = idempotency_key
    return dumps(line) + b"\n"
