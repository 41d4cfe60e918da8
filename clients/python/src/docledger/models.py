"""What goes to docledger (`Put`, `Delete`, `Erase`, `Chunk`, `Blob`) and what comes back
(typed results), as plain dataclasses. Results are read from the HTTP contract's JSON with
`from_json`, which ignores fields it does not know, so a newer server stays readable."""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from .errors import ApiError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    VectorLike = Sequence[float] | npt.NDArray[np.floating[Any]]
else:
    VectorLike = Sequence[float] | Any

Consistency = Literal["accepted", "applied"]
"""`accepted`: answered once durable in the log; `applied`: once every store holds it."""


@dataclass(frozen=True)
class Chunk:
    """A chunk of a document: its text and its embedding (a list of floats or a 1-D numpy
    array of exactly the server's `DOCLEDGER_VECTOR_DIM` finite values)."""

    text: str
    vector: VectorLike


BlobSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True)
class Blob:
    """The raw document stored in S3: bytes, a file path or a binary stream (read once, when
    the request is encoded)."""

    source: BlobSource
    content_type: str = "application/octet-stream"

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], content_type: str | None = None) -> Blob:
        """A file's bytes; the content type is guessed from its name unless given."""
        guessed = mimetypes.guess_type(str(path))[0]
        return cls(Path(path), content_type or guessed or "application/octet-stream")

    def read(self) -> bytes:
        """The blob's bytes."""
        src = self.source
        if isinstance(src, (bytes, bytearray, memoryview)):
            return bytes(src)
        if isinstance(src, (str, os.PathLike)):
            return Path(src).read_bytes()
        if isinstance(src, io.TextIOBase):
            raise TypeError("a blob stream must be binary (open the file with 'rb')")
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a blob stream must yield bytes, got {type(data).__name__}")
        return bytes(data)


@dataclass(frozen=True)
class Put:
    """Create or replace a document (a batch line, or the body of `Client.put`)."""

    doc_id: str
    title: str
    source_type: str
    chunks: Sequence[Chunk | tuple[str, VectorLike]] = ()
    blob: Blob | None = None
    business_tag: str | None = None
    attributes: Mapping[str, Any] | None = None
    expected_version: int | None = None
    idempotency_key: str | None = None
    """Set to control retries yourself; by default the client makes one per call."""


@dataclass(frozen=True)
class Delete:
    """Withdraw a document from every store (a batch line, or `Client.delete`)."""

    doc_id: str
    expected_version: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Erase:
    """Erase a document (GDPR art. 17): withdraw it from every store and remove its content
    from the log at once (a batch line, or `Client.erase`)."""

    doc_id: str
    expected_version: int | None = None
    idempotency_key: str | None = None


Operation = Put | Delete | Erase


@dataclass(frozen=True)
class Stores:
    """The version each store holds (None: none yet)."""

    mysql: int | None
    milvus: int | None
    s3: int | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Stores:
        return cls(d.get("mysql"), d.get("milvus"), d.get("s3"))


@dataclass(frozen=True)
class CommandResult:
    """The answer to a put, delete, erase or retry."""

    doc_id: str
    version: int
    log_position: int | None
    unchanged: bool
    stores: Stores
    consistent: bool
    timed_out: bool = False
    """True when a `consistency="applied"` wait (or an erasure's) ended before every store
    held `version` (HTTP 202): the command is accepted all the same."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, status: int = 200) -> CommandResult:
        return cls(
            doc_id=d["doc_id"],
            version=d["version"],
            log_position=d.get("log_position"),
            unchanged=d["unchanged"],
            stores=Stores.from_json(d.get("stores") or {}),
            consistent=d["consistent"],
            timed_out=status == 202,
        )


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob's digest, size and type."""

    sha256: str
    size: int
    content_type: str


@dataclass(frozen=True)
class Compensation:
    """A store's refusal of a version and what docledger did about it."""

    id: int
    doc_id: str
    store: str
    version: int
    reason: str
    state: str
    resolution: str | None
    resolved_version: int | None
    parked_at: str
    resolved_at: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Compensation:
        return cls(
            id=d["id"],
            doc_id=d["doc_id"],
            store=d["store"],
            version=d["version"],
            reason=d["reason"],
            state=d["state"],
            resolution=d.get("resolution"),
            resolved_version=d.get("resolved_version"),
            parked_at=d["parked_at"],
            resolved_at=d.get("resolved_at"),
        )


@dataclass(frozen=True)
class Document:
    """A document's state (`Client.get`)."""

    doc_id: str
    version: int
    deleted: bool
    title: str | None
    source_type: str | None
    business_tag: str | None
    attributes: dict[str, Any] | None
    blob: BlobInfo | None
    chunk_count: int
    stores: Stores
    consistent: bool
    ready: bool
    """Every store holds `version`."""
    compensations: list[Compensation] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    erased: bool = False
    """The document was erased (then `deleted` is True and no content is left), until it is
    put again."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Document:
        blob = d.get("blob")
        return cls(
            doc_id=d["doc_id"],
            version=d["version"],
            deleted=d["deleted"],
            title=d.get("title"),
            source_type=d.get("source_type"),
            business_tag=d.get("business_tag"),
            attributes=d.get("attributes"),
            blob=BlobInfo(blob["sha256"], blob["size"], blob["content_type"]) if blob else None,
            chunk_count=d.get("chunk_count", 0),
            stores=Stores.from_json(d.get("stores") or {}),
            consistent=d["consistent"],
            ready=d["ready"],
            compensations=[Compensation.from_json(c) for c in d.get("compensations") or []],
            verification=d.get("verification"),
            erased=d.get("erased", False),
        )


@dataclass(frozen=True)
class Event:
    """One event of a document's history (no vectors, no blob bytes)."""

    stream_version: int
    log_position: int
    type: str
    event_version: int
    data: dict[str, Any]
    recorded_at: str
    content_removed: str | None = None
    """`"retention"` or `"erasure"` when the event's content was removed (then `data` holds
    only its metadata); None when it keeps its content."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        return cls(
            stream_version=d["stream_version"],
            log_position=d["log_position"],
            type=d["type"],
            event_version=d["event_version"],
            data=d.get("data") or {},
            recorded_at=d["recorded_at"],
            content_removed=d.get("content_removed"),
        )


@dataclass(frozen=True)
class Projection:
    """A store's projector state (`Client.projections`); `raw` holds every field."""

    name: str
    state: str
    applied_position: int
    head_position: int
    lag_events: int
    lag_seconds: float
    last_error: str | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Projection:
        return cls(
            name=d["name"],
            state=d["state"],
            applied_position=d["applied_position"],
            head_position=d["head_position"],
            lag_events=d["lag_events"],
            lag_seconds=d["lag_seconds"],
            last_error=d.get("last_error"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class ListedDocument:
    """A document as `GET /v1/documents` lists it."""

    doc_id: str
    version: int
    deleted: bool
    ready: bool | None = None
    """Every store holds `version` (None: the server did not say)."""


@dataclass(frozen=True)
class DocumentPage:
    """One page of a listing; `next_after` is None on the last page."""

    documents: list[ListedDocument]
    next_after: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DocumentPage:
        return cls(
            documents=[
                ListedDocument(x["doc_id"], x["version"], x["deleted"], x.get("ready"))
                for x in d["documents"]
            ],
            next_after=d.get("next_after"),
        )


@dataclass(frozen=True)
class BatchResult:
    """The answer to one batch line: `result` when it was accepted, `error` when refused."""

    line: int
    """1-based position of the line in the batch's input."""
    doc_id: str
    op: Literal["put", "delete", "erase"]
    status: int
    result: CommandResult | None = None
    error: ApiError | None = None

    @property
    def ok(self) -> bool:
        """The line was accepted (the server answered 200 or 202)."""
        return self.error is None


@dataclass
class SyncReport:
    """What a sync run did. Documents are deleted only when `refused` is empty."""

    sent: int = 0
    changed: int = 0
    unchanged: int = 0
    refused: list[BatchResult] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    """Live documents under the prefix that the run did not send, now deleted."""
    kept: list[BatchResult] = field(default_factory=list)
    """Deletions refused because the document changed since it was listed (409)."""
