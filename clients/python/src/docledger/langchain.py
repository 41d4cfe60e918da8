"""A LangChain `VectorStore` over docledger (extra `docledger[langchain]`).

Each source (the `source` metadata of a chunk, or what `source_key` names) is one
docledger document holding that source's chunks: `add_documents` groups the chunks it is
given by source and writes one new version per source, merging them by id with the
chunks already stored; `delete(ids)` removes chunks by id, one new version per source (a
source left empty is deleted); `delete_sources` deletes whole sources. Retrieval reads
the Milvus collection docledger maintains and returns only chunks of document versions
that every store holds (`ready`).

It works under `langchain_core.indexing.index()` with every cleanup mode (`None`,
`incremental`, `full`, `scoped_full`): `index()` sends only new or changed chunks
(content-hash ids) and deletes stale ones by id, which is what the merge expects. A source
whose chunks changed therefore takes two versions there (the new chunks merged, then the
stale ones removed); a source `index()` finds unchanged takes none.

Deleting by id needs each chunk's source: this store remembers what it wrote and read;
an id it has not seen (another process wrote it) is found by reading every live document
under the prefix once per `delete` call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ._sources import Hit, SourceDocuments, StoredChunk
from .client import Client
from .milvus import ChunkCollection

__all__ = ["DocledgerVectorStore"]


class DocledgerVectorStore(VectorStore):
    """LangChain vector store whose chunks live in docledger (see the module's doc).

    Args:
        client: the docledger client that writes.
        embedding: embeds chunk texts on write and queries on search.
        collection: docledger's Milvus collection, read for searches and merges
            (default: `ChunkCollection.from_env()`).
        prefix: prepended to every docledger id this store writes (`docs/`, say): the
            store's namespace, and what a search is restricted to.
        source_key: the metadata key naming a chunk's source, or a function of the chunk.
        source_type: the docledger `source_type` of the documents written.
        apply_timeout_ms: how long a write waits for every store to hold it.
    """

    def __init__(
        self,
        client: Client,
        embedding: Embeddings,
        *,
        collection: ChunkCollection | None = None,
        prefix: str = "",
        source_key: str | Callable[[Document], str] = "source",
        source_type: str = "langchain",
        apply_timeout_ms: int = 30_000,
    ) -> None:
        self._embedding = embedding
        self._source_key = source_key
        self._sources = SourceDocuments(
            client,
            collection or ChunkCollection.from_env(),
            prefix=prefix,
            source_type=source_type,
            apply_timeout_ms=apply_timeout_ms,
        )

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def doc_id(self, source: str) -> str:
        """The docledger id of a source's document."""
        return self._sources.doc_id(source)

    def _source_of(self, doc: Document) -> str:
        source: Any = (
            self._source_key(doc)
            if callable(self._source_key)
            else doc.metadata.get(self._source_key)
        )
        if not isinstance(source, str) or not source:
            raise ValueError(
                f"chunk {doc.page_content[:40]!r} has no source: set metadata "
                f"[{self._source_key!r}] (or pass source_key) so it can be grouped"
            )
        return source

    # -- writing -------------------------------------------------------------------------

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Adds chunks (replacing those with the same id) and returns their ids; one new
        docledger version per source touched."""
        ids: Sequence[str | None] | None = kwargs.pop("ids", None)
        if ids is not None and len(ids) != len(documents):
            raise ValueError(f"{len(ids)} ids for {len(documents)} documents")
        chunk_ids = [
            (ids[i] if ids is not None else None) or d.id or str(uuid.uuid4())
            for i, d in enumerate(documents)
        ]
        vectors = self._embedding.embed_documents([d.page_content for d in documents])
        groups: dict[str, list[StoredChunk]] = {}
        for doc, cid, vector in zip(documents, chunk_ids, vectors, strict=True):
            chunk = StoredChunk(cid, doc.page_content, vector, dict(doc.metadata))
            groups.setdefault(self._source_of(doc), []).append(chunk)
        self._sources.upsert(groups)
        return chunk_ids

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        metas = metadatas or [{} for _ in texts]
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
        return self.add_documents(docs, ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Removes chunks by id, grouped by source: one new version per source, and a
        source left without chunks is deleted. Unknown ids are ignored."""
        if ids is None:
            raise ValueError("delete needs ids (delete_sources deletes whole sources)")
        self._sources.remove(ids)
        return True

    def delete_sources(self, sources: Iterable[str]) -> None:
        """Deletes whole sources; unknown ones are ignored."""
        self._sources.delete_sources(sources)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored chunks with these ids (those that exist)."""
        return [
            Document(id=c.id, page_content=c.text, metadata=c.metadata)
            for _source, c in self._sources.chunks(list(ids))
        ]

    # -- searching -----------------------------------------------------------------------

    @staticmethod
    def _document(hit: Hit) -> Document:
        return Document(id=hit.chunk_id, page_content=hit.text, metadata=hit.metadata)

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, *, sources: Sequence[str] | None = None
    ) -> list[tuple[Document, float]]:
        """The `k` nearest chunks with their L2 distance (lower is nearer)."""
        return [
            (self._document(h), h.distance) for h in self._sources.search(embedding, k, sources)
        ]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, **kwargs)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The `k` chunks nearest to `query` among ready document versions; `sources=[...]`
        restricts the search to those sources."""
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self._euclidean_relevance_score_fn

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> DocledgerVectorStore:
        """A store (`client=` and the other arguments of the constructor in `kwargs`)
        holding `texts`."""
        store = cls(embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
