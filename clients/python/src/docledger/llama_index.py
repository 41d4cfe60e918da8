"""A LlamaIndex vector store over docledger (extra `docledger[llama-index]`).

Each LlamaIndex document (`ref_doc_id`) is one docledger document holding its nodes:
`add(nodes)` groups nodes by `ref_doc_id` and writes one new version per document,
merging them by node id with the nodes already stored; `delete(ref_doc_id)` deletes the
document from every store. `query` reads the Milvus collection docledger maintains and
returns only nodes of document versions that every store holds (`ready`).

With an `IngestionPipeline` and a docstore, `upserts` deletes a changed document and adds
its new nodes (two docledger versions: the deletion, then the new content), and
`upserts_and_delete` also deletes the documents missing from the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import (
    build_metadata_filter_fn,
    metadata_dict_to_node,
    node_to_metadata_dict,
)

from ._sources import Hit, SourceDocuments, StoredChunk
from .client import Client
from .milvus import ChunkCollection

__all__ = ["DocledgerVectorStore"]


class DocledgerVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store whose nodes live in docledger (see the module's doc).

    Args:
        client: the docledger client that writes.
        collection: docledger's Milvus collection (default: `ChunkCollection.from_env()`).
        prefix: prepended to every docledger id this store writes; searches stay in it.
        source_type: the docledger `source_type` of the documents written.
        apply_timeout_ms: how long a write waits for every store to hold it.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    prefix: str = ""
    source_type: str = "llama_index"

    _sources: SourceDocuments = PrivateAttr()

    def __init__(
        self,
        client: Client,
        *,
        collection: ChunkCollection | None = None,
        prefix: str = "",
        source_type: str = "llama_index",
        apply_timeout_ms: int = 30_000,
    ) -> None:
        super().__init__(prefix=prefix, source_type=source_type)  # type: ignore[call-arg]
        self._sources = SourceDocuments(
            client,
            collection or ChunkCollection.from_env(),
            prefix=prefix,
            source_type=source_type,
            apply_timeout_ms=apply_timeout_ms,
        )

    @classmethod
    def class_name(cls) -> str:
        return "DocledgerVectorStore"

    @property
    def client(self) -> Client:
        return self._sources.client

    def doc_id(self, ref_doc_id: str) -> str:
        """The docledger id of a LlamaIndex document."""
        return self._sources.doc_id(ref_doc_id)

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Adds nodes (replacing those with the same id), one new docledger version per
        `ref_doc_id`; a node without one is its own document."""
        groups: dict[str, list[StoredChunk]] = {}
        for node in nodes:
            vector = node.get_embedding()  # raises when the node has no embedding
            chunk = StoredChunk(
                node.node_id,
                node.get_content(metadata_mode=MetadataMode.NONE),
                vector,
                node_to_metadata_dict(node, remove_text=True, flat_metadata=False),
            )
            groups.setdefault(node.ref_doc_id or node.node_id, []).append(chunk)
        self._sources.upsert(groups)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Deletes a document's nodes from every store (nothing when unknown)."""
        self._sources.delete_sources([ref_doc_id])

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: Any = None,
        **delete_kwargs: Any,
    ) -> None:
        """Removes nodes by id (one new version per document; an empty one is deleted)."""
        if filters is not None or node_ids is None:
            raise NotImplementedError("delete_nodes takes node_ids only")
        self._sources.remove(node_ids)

    def get_nodes(self, node_ids: list[str] | None = None, filters: Any = None) -> list[BaseNode]:
        """The stored nodes with these ids."""
        if filters is not None or node_ids is None:
            raise NotImplementedError("get_nodes takes node_ids only")
        return [self._node(c.metadata, c.text) for _s, c in self._sources.chunks(node_ids)]

    @staticmethod
    def _node(metadata: dict[str, Any], text: str) -> BaseNode:
        return metadata_dict_to_node(metadata, text=text)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The `similarity_top_k` nodes nearest to `query_embedding` among ready document
        versions, restricted to `doc_ids` / `node_ids` / metadata `filters` when given.
        Similarities are `1 / (1 + L2 distance)`."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise NotImplementedError(f"query mode {query.mode} is not supported (only default)")
        if query.query_embedding is None:
            raise ValueError("query_embedding is required")
        metadata_of: dict[str, dict[str, Any]] = {}
        filter_fn = build_metadata_filter_fn(
            lambda node_id: metadata_of.get(node_id, {}), query.filters
        )
        # Empty lists mean no restriction, as in LlamaIndex's own stores (a retriever over
        # `VectorStoreIndex.from_vector_store` passes `node_ids=[]`).
        node_ids = set(query.node_ids) if query.node_ids else None

        def keep(hit: Hit) -> bool:
            metadata_of[hit.chunk_id] = hit.metadata
            return (node_ids is None or hit.chunk_id in node_ids) and filter_fn(hit.chunk_id)

        hits = self._sources.search(
            query.query_embedding, query.similarity_top_k, sources=query.doc_ids or None, keep=keep
        )
        return VectorStoreQueryResult(
            nodes=[self._node(h.metadata, h.text) for h in hits],
            similarities=[1.0 / (1.0 + h.distance) for h in hits],
            ids=[h.chunk_id for h in hits],
        )
