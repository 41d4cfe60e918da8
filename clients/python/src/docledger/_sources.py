"""What the LangChain and LlamaIndex stores share: a *source* (a LangChain `source`, a
LlamaIndex `ref_doc_id`) is one docledger document whose chunks are the source's chunks.

- A write merges chunks into their source's document by chunk id (a chunk with a known id
  is replaced in place, a new one appended) and sends one put per source, guarded by the
  version read (`expected_version`; on 409 it reads and merges again). Chunks already
  stored come from Milvus (the rows of exactly the version read: texts and vectors), so
  the frameworks may send only the chunks that changed.
- The document's `attributes` hold `{"source": ..., "chunks": [{"id", "metadata"}, ...]}`
  in chunk order: each chunk's id and metadata, so searches can rebuild the framework's
  objects and deletions by chunk id find their source.
- A search reads Milvus and keeps only rows of a document's current version when that
  version is ready in every store (`GET` says `ready`), so a half-applied change or a
  deleted document is never returned.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors
from .client import Client
from .milvus import ChunkCollection, ChunkRow, ReadyHit, search_ready
from .models import Delete, Document, Operation, Put, VectorLike

ATTR_SOURCE = "source"
ATTR_CHUNKS = "chunks"
MAX_DOC_ID_BYTES = 255
MAX_TITLE_CHARS = 1024
#: Rounds of read, merge and put before a document that keeps changing is given up.
MAX_MERGE_ROUNDS = 5
_KEEP = re.compile(r"[A-Za-z0-9._:/-]")


def source_doc_id(prefix: str, source: str) -> str:
    """The docledger id of a source: `prefix` plus the source with every character outside
    `[A-Za-z0-9._:/-]` (and `@` itself, and what would make `..`, a leading or trailing
    `/`) written as `@XX` per UTF-8 byte; over 255 bytes, cut and ended by `@@` and a
    digest. Distinct sources get distinct ids."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"a source must be a non-empty string, got {source!r}")
    out: list[str] = [prefix]
    for i, ch in enumerate(source):
        prev = out[-1][-1:] if out[-1] else ""
        at_edge = (i == 0 and not prefix) or i == len(source) - 1
        if _KEEP.fullmatch(ch) and not (ch == "." and prev == ".") and not (ch == "/" and at_edge):
            out.append(ch)
        else:
            out.append("".join(f"@{b:02X}" for b in ch.encode()))
    doc_id = "".join(out)
    if len(doc_id) > MAX_DOC_ID_BYTES:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        head = doc_id[: MAX_DOC_ID_BYTES - 18]
        head = re.sub(r"@[0-9A-F]?$", "", head)  # never cut an escape in two
        doc_id = f"{head}@@{digest}"
    return doc_id


@dataclass
class StoredChunk:
    """A chunk of a source: its id (unique in the store), text, vector and metadata."""

    id: str
    text: str
    vector: VectorLike
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """A search result: a chunk of a ready document version."""

    source: str
    doc_id: str
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    distance: float
    version: int


@dataclass
class _Current:
    version: int  # 0: never written
    chunks: list[StoredChunk]
    source: str = ""


class _Moved(Exception):
    """The document changed while its rows were read: read it again."""


class SourceDocuments:
    """Sources as docledger documents (see the module's doc)."""

    def __init__(
        self,
        client: Client,
        collection: ChunkCollection,
        *,
        prefix: str = "",
        source_type: str,
        apply_timeout_ms: int = 30_000,
        rows_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.collection = collection
        self.prefix = prefix
        self.source_type = source_type
        self.apply_timeout_ms = apply_timeout_ms
        self.rows_timeout = rows_timeout
        #: chunk id -> doc id, as last seen (checked against the document before use).
        self._where: dict[str, str] = {}

    def doc_id(self, source: str) -> str:
        return source_doc_id(self.prefix, source)

    # -- reading a source ----------------------------------------------------------------

    def _chunk_entries(self, doc: Document) -> list[dict[str, Any]]:
        attrs = doc.attributes or {}
        entries = attrs.get(ATTR_CHUNKS)
        if not isinstance(entries, list) or len(entries) != doc.chunk_count:
            raise errors.DocledgerError(
                f"document {doc.doc_id!r} was not written by this store (its attributes do "
                f"not list its {doc.chunk_count} chunks)"
            )
        return entries

    def _current(self, doc_id: str, *, with_chunks: bool) -> _Current:
        deadline = time.monotonic() + self.rows_timeout
        while True:
            try:
                doc = self.client.get(doc_id)
            except errors.NotFound:
                return _Current(0, [])
            if doc.deleted:
                return _Current(doc.version, [])
            entries = self._chunk_entries(doc)
            for e in entries:
                self._where[e["id"]] = doc_id
            source = str((doc.attributes or {}).get(ATTR_SOURCE) or doc_id)
            if not with_chunks:
                chunks = [StoredChunk(e["id"], "", [], e["metadata"]) for e in entries]
                return _Current(doc.version, chunks, source)
            try:
                rows = self._rows_at(doc, deadline)
            except _Moved:
                continue
            chunks = [
                StoredChunk(e["id"], r.text, r.embedding or [], e["metadata"])
                for e, r in zip(entries, rows, strict=True)
            ]
            return _Current(doc.version, chunks, source)

    def _rows_at(self, doc: Document, deadline: float) -> list[ChunkRow]:
        """The Milvus rows of exactly `doc`'s version, waiting while Milvus catches up."""
        while True:
            rows = self.collection.rows(doc.doc_id)
            if any(r.version > doc.version for r in rows):
                raise _Moved
            if len(rows) == doc.chunk_count and all(r.version == doc.version for r in rows):
                return rows
            if time.monotonic() > deadline:
                raise errors.DocledgerError(
                    f"Milvus does not hold version {doc.version} of {doc.doc_id!r} after "
                    f"{self.rows_timeout:.0f} s (see GET /v1/projections); its chunks are "
                    f"needed to merge the new ones"
                )
            time.sleep(0.1)

    # -- writing -------------------------------------------------------------------------

    def _put(self, doc_id: str, source: str, version: int, chunks: Sequence[StoredChunk]) -> Put:
        return Put(
            doc_id,
            title=source[:MAX_TITLE_CHARS],
            source_type=self.source_type,
            chunks=[(c.text, c.vector) for c in chunks],
            attributes={
                ATTR_SOURCE: source,
                ATTR_CHUNKS: [{"id": c.id, "metadata": c.metadata} for c in chunks],
            },
            expected_version=version,
        )

    def _send(self, ops: Mapping[str, Operation]) -> list[str]:
        """Sends one line per document, waiting until the stores hold it; the documents
        whose line met a concurrent change (409)."""
        moved = []
        for r in self.client.batch(
            ops.values(), consistency="applied", timeout_ms=self.apply_timeout_ms
        ):
            if r.ok or r.status == 404:
                continue
            if r.status == 409:
                moved.append(r.doc_id)
                continue
            assert r.error is not None
            raise r.error
        return moved

    def upsert(self, groups: Mapping[str, Sequence[StoredChunk]]) -> None:
        """Merges each source's chunks into its document (one new version per source)."""
        todo = {self.doc_id(s): (s, list(chunks)) for s, chunks in groups.items() if chunks}
        for _ in range(MAX_MERGE_ROUNDS):
            if not todo:
                return
            ops: dict[str, Operation] = {}
            for doc_id, (source, new) in todo.items():
                current = self._current(doc_id, with_chunks=True)
                merged = {c.id: c for c in current.chunks}
                merged.update((c.id, c) for c in new)
                ops[doc_id] = self._put(doc_id, source, current.version, list(merged.values()))
            moved = set(self._send(ops))
            for doc_id, (_source, new) in todo.items():
                if doc_id not in moved:
                    for c in new:
                        self._where[c.id] = doc_id
            todo = {d: todo[d] for d in moved}
        raise errors.DocledgerError(f"documents kept changing while being merged: {sorted(todo)}")

    def _locate(self, chunk_ids: Iterable[str]) -> dict[str, set[str]]:
        """The documents holding these chunks, by doc id; ids not found are gone already.
        Ids not seen by this process yet are looked up in every live document under the
        prefix (one `GET` each)."""
        wanted = set(chunk_ids)
        if any(i not in self._where for i in wanted):
            for listed in self.client.iter_documents(self.prefix):
                try:
                    self._current(listed.doc_id, with_chunks=False)
                except errors.DocledgerError:
                    continue  # another writer's document under the prefix: not ours
        where: dict[str, set[str]] = {}
        for i in wanted:
            if i in self._where:
                where.setdefault(self._where[i], set()).add(i)
        return where

    def remove(self, chunk_ids: Iterable[str]) -> None:
        """Removes chunks by id: one new version per affected source, and a source left
        without chunks is deleted."""
        todo = self._locate(chunk_ids)
        for _ in range(MAX_MERGE_ROUNDS):
            if not todo:
                return
            ops: dict[str, Operation] = {}
            for doc_id, ids in todo.items():
                current = self._current(doc_id, with_chunks=False)
                keep = [c for c in current.chunks if c.id not in ids]
                if len(keep) == len(current.chunks):
                    continue  # none of them is there (any more)
                if keep:
                    current = self._current(doc_id, with_chunks=True)
                    keep = [c for c in current.chunks if c.id not in ids]
                    ops[doc_id] = self._put(doc_id, current.source, current.version, keep)
                else:
                    ops[doc_id] = Delete(doc_id, expected_version=current.version)
            moved = set(self._send(ops))
            for doc_id in ops.keys() - moved:
                for i in todo[doc_id]:
                    self._where.pop(i, None)
            todo = {d: todo[d] for d in moved}
        raise errors.DocledgerError(
            f"documents kept changing while chunks were removed: {sorted(todo)}"
        )

    def delete_sources(self, sources: Iterable[str]) -> None:
        """Deletes whole sources (one deletion each; unknown ones are ignored)."""
        ops: dict[str, Operation] = {self.doc_id(s): Delete(self.doc_id(s)) for s in sources}
        for r in self.client.batch(
            ops.values(), consistency="applied", timeout_ms=self.apply_timeout_ms
        ):
            if not r.ok and r.status != 404:
                assert r.error is not None
                raise r.error

    def chunks(self, chunk_ids: Sequence[str]) -> list[tuple[str, StoredChunk]]:
        """The stored chunks with these ids, with their source, in the order asked."""
        found: dict[str, tuple[str, StoredChunk]] = {}
        for doc_id in self._locate(chunk_ids):
            current = self._current(doc_id, with_chunks=True)
            for c in current.chunks:
                found[c.id] = (current.source, c)
        return [found[i] for i in chunk_ids if i in found]

    # -- searching -----------------------------------------------------------------------

    def search(
        self,
        vector: VectorLike,
        k: int,
        sources: Sequence[str] | None = None,
        keep: Callable[[Hit], bool] | None = None,
    ) -> list[Hit]:
        """The `k` nearest chunks of ready document versions (of `sources`, when given, and
        for which `keep` holds), nearest first."""
        doc_ids = [self.doc_id(s) for s in sources] if sources is not None else None
        made: dict[tuple[str, int], Hit] = {}

        def wanted(ready: ReadyHit) -> bool:
            hit = self._hit(ready)
            if hit is None or (keep is not None and not keep(hit)):
                return False
            made[(hit.doc_id, ready.row.chunk_index)] = hit
            return True

        found = search_ready(
            self.client,
            self.collection,
            vector,
            k,
            prefix=self.prefix,
            doc_ids=doc_ids,
            keep=wanted,
        )
        return [made[(r.row.doc_id, r.row.chunk_index)] for r in found]

    def _hit(self, ready: ReadyHit) -> Hit | None:
        doc, row = ready.document, ready.row
        try:
            entry = self._chunk_entries(doc)[row.chunk_index]
        except (errors.DocledgerError, IndexError):
            return None  # not a document of this store
        return Hit(
            source=str((doc.attributes or {}).get(ATTR_SOURCE, doc.doc_id)),
            doc_id=doc.doc_id,
            chunk_id=entry["id"],
            text=row.text,
            metadata=dict(entry["metadata"]),
            distance=row.distance or 0.0,
            version=row.version,
        )
