"""Read access to the Milvus collection docledger maintains (docs/stores.md): one
row per chunk, `pk = "{doc_id}#{chunk_index}"`, with `doc_id`, `chunk_index`,
`version`, `text` and an L2 HNSW-indexed `embedding`. docledger is the only writer; this
module never writes.

Needs `pymilvus` (the `langchain` and `llama-index` extras bring it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import NotFound
from .models import Document, VectorLike

if TYPE_CHECKING:
    from .client import Client

FIELD_PK = "pk"
FIELD_DOC_ID = "doc_id"
FIELD_CHUNK_INDEX = "chunk_index"
FIELD_VERSION = "version"
FIELD_TEXT = "text"
FIELD_EMBEDDING = "embedding"

#: Most rows one Milvus search or query answers.
MAX_ROWS = 16_384
#: HNSW search breadth at least (it must also be at least the number of hits asked for).
MIN_EF = 64


@dataclass(frozen=True)
class ChunkRow:
    """A chunk as Milvus holds it; `distance` is set for search hits (L2: lower is nearer),
    `embedding` for rows read with their vectors."""

    doc_id: str
    chunk_index: int
    version: int
    text: str
    distance: float | None = None
    embedding: list[float] | None = None


def _literal(value: str) -> str:
    """A double-quoted filter literal; refuses what it cannot quote safely (valid doc ids
    never hold these characters)."""
    if any(c in value for c in '"\\') or any(ord(c) < 32 for c in value):
        raise ValueError(f"cannot use {value!r} in a Milvus filter")
    return f'"{value}"'


class ChunkCollection:
    """docledger's chunk collection, read through pymilvus.

    Args:
        uri: Milvus, e.g. `http://127.0.0.1:19530` (`DOCLEDGER_MILVUS_URL`).
        token: `user:password` when Milvus has authentication on (`DOCLEDGER_MILVUS_TOKEN`).
        db_name: the Milvus database.
        collection: docledger's collection (`DOCLEDGER_MILVUS_COLLECTION`).
        consistency_level: of searches and reads; `Strong` sees every write docledger
            made before the call.
    """

    def __init__(
        self,
        uri: str = "http://127.0.0.1:19530",
        *,
        token: str | None = None,
        db_name: str = "default",
        collection: str = "doc_chunks",
        consistency_level: str = "Strong",
    ) -> None:
        from pymilvus import MilvusClient

        self.collection = collection
        self.consistency_level = consistency_level
        self._client = MilvusClient(uri=uri, token=token or "", db_name=db_name)

    @classmethod
    def from_env(
        cls, collection: str | None = None, env: Mapping[str, str] | None = None
    ) -> ChunkCollection:
        """The collection as docledger's own settings name it: `DOCLEDGER_MILVUS_URL`,
        `DOCLEDGER_MILVUS_TOKEN` (or `DOCLEDGER_MILVUS_USER` and `_PASSWORD`),
        `DOCLEDGER_MILVUS_DATABASE` and `DOCLEDGER_MILVUS_COLLECTION`."""
        env = os.environ if env is None else env
        token = env.get("DOCLEDGER_MILVUS_TOKEN") or None
        user, password = env.get("DOCLEDGER_MILVUS_USER"), env.get("DOCLEDGER_MILVUS_PASSWORD")
        if token is None and user and password is not None:
            token = f"{user}:{password}"
        return cls(
            env.get("DOCLEDGER_MILVUS_URL", "http://127.0.0.1:19530"),
            token=token,
            db_name=env.get("DOCLEDGER_MILVUS_DATABASE") or "default",
            collection=collection or env.get("DOCLEDGER_MILVUS_COLLECTION", "doc_chunks"),
        )

    def close(self) -> None:
        self._client.close()

    def search(
        self,
        vector: VectorLike,
        limit: int,
        *,
        doc_id_prefix: str = "",
        doc_ids: Sequence[str] | None = None,
    ) -> list[ChunkRow]:
        """The `limit` rows nearest to `vector` (L2), nearest first, among the documents
        whose id starts with `doc_id_prefix` (and is one of `doc_ids`, when given)."""
        if not 1 <= limit <= MAX_ROWS:
            raise ValueError(f"limit must be 1 to {MAX_ROWS}, got {limit}")
        if doc_ids is not None and not doc_ids:
            return []
        data = [float(x) for x in (vector.tolist() if hasattr(vector, "tolist") else vector)]
        hits = self._client.search(
            collection_name=self.collection,
            data=[data],
            limit=limit,
            filter=_filter(doc_id_prefix, doc_ids),
            output_fields=[FIELD_DOC_ID, FIELD_CHUNK_INDEX, FIELD_VERSION, FIELD_TEXT],
            search_params={"metric_type": "L2", "params": {"ef": max(MIN_EF, limit)}},
            consistency_level=self.consistency_level,
        )
        rows = []
        for hit in hits[0] if hits else []:
            entity: dict[str, Any] = hit.get("entity", hit)
            rows.append(
                ChunkRow(
                    doc_id=entity[FIELD_DOC_ID],
                    chunk_index=int(entity[FIELD_CHUNK_INDEX]),
                    version=int(entity[FIELD_VERSION]),
                    text=entity[FIELD_TEXT],
                    distance=float(hit["distance"]),
                )
            )
        return rows

    def rows(self, doc_id: str) -> list[ChunkRow]:
        """Every row of a document with its embedding, by chunk index."""
        got = self._client.query(
            collection_name=self.collection,
            filter=f"{FIELD_DOC_ID} == {_literal(doc_id)}",
            output_fields=[
                FIELD_DOC_ID,
                FIELD_CHUNK_INDEX,
                FIELD_VERSION,
                FIELD_TEXT,
                FIELD_EMBEDDING,
            ],
            limit=MAX_ROWS,
            consistency_level=self.consistency_level,
        )
        rows = [
            ChunkRow(
                doc_id=r[FIELD_DOC_ID],
                chunk_index=int(r[FIELD_CHUNK_INDEX]),
                version=int(r[FIELD_VERSION]),
                text=r[FIELD_TEXT],
                embedding=[float(x) for x in r[FIELD_EMBEDDING]],
            )
            for r in got
        ]
        return sorted(rows, key=lambda r: r.chunk_index)


def _filter(prefix: str, doc_ids: Sequence[str] | None) -> str:
    parts = []
    if prefix:
        # `like` takes `%` as its wildcard; doc ids never hold `%` (`_` may match any
        # character in newer Milvus, so callers check the prefix of what comes back).
        parts.append(f"{FIELD_DOC_ID} like {_literal(prefix + '%')}")
    if doc_ids is not None:
        parts.append(f"{FIELD_DOC_ID} in [{', '.join(_literal(d) for d in doc_ids)}]")
    return " and ".join(parts)


@dataclass(frozen=True)
class ReadyHit:
    """A search hit whose document version is ready: `row.version == document.version`
    and every store holds it."""

    row: ChunkRow
    document: Document


def search_ready(
    client: Client,
    collection: ChunkCollection,
    vector: VectorLike,
    k: int,
    *,
    prefix: str = "",
    doc_ids: Sequence[str] | None = None,
    keep: Callable[[ReadyHit], bool] | None = None,
) -> list[ReadyHit]:
    """The `k` chunks nearest to `vector` (L2) among documents under `prefix` (and in
    `doc_ids`, when given), keeping only rows of a document's current version when that
    version is `ready` in every store (and for which `keep` holds): a deleted document, a
    version still being applied and rows of an older version are left out. One `GET` per
    document among the hits; Milvus is asked again for more rows when too many were left
    out."""
    if k < 1:
        return []
    limit = min(MAX_ROWS, max(4 * k, k + 16))
    docs: dict[str, Document | None] = {}
    while True:
        rows = collection.search(vector, limit, doc_id_prefix=prefix, doc_ids=doc_ids)
        hits: list[ReadyHit] = []
        for row in rows:
            if not row.doc_id.startswith(prefix):
                continue
            if row.doc_id not in docs:
                try:
                    docs[row.doc_id] = client.get(row.doc_id)
                except NotFound:
                    docs[row.doc_id] = None
            doc = docs[row.doc_id]
            if doc is None or doc.deleted or not doc.ready or doc.version != row.version:
                continue
            hit = ReadyHit(row, doc)
            if keep is not None and not keep(hit):
                continue
            hits.append(hit)
            if len(hits) == k:
                return hits
        if len(rows) < limit or limit >= MAX_ROWS:
            return hits
        limit = min(MAX_ROWS, limit * 4)
