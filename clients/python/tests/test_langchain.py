"""The LangChain store under `langchain_core.indexing.index()` with every cleanup mode,
against docledger: what is deleted and what is not, one docledger document per source,
and searches that only see ready versions."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.indexing import InMemoryRecordManager, index
from local_embedding import embed

from docledger import Client
from docledger.langchain import DocledgerVectorStore
from docledger.milvus import ChunkCollection

from .conftest import DIM, eventually


class HashEmbeddings(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [embed(t, DIM) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text, DIM)


def chunks(sources: dict[str, list[str]]) -> list[Document]:
    return [
        Document(page_content=text, metadata={"source": source, "n": i})
        for source, texts in sources.items()
        for i, text in enumerate(texts)
    ]


FIRST = {
    "s1.txt": ["alpha one", "alpha two"],
    "s2.txt": ["beta"],
    "s3.txt": ["gamma", "delta"],
}
# s1 changes a chunk, s2 is gone from the source, s3 loses a chunk and gains none.
SECOND = {
    "s1.txt": ["alpha one", "alpha two changed"],
    "s3.txt": ["gamma"],
}
EXPECTED: dict[str | None, tuple[dict[str, list[str] | None], int]] = {
    None: (
        {
            "s1.txt": ["alpha one", "alpha two", "alpha two changed"],
            "s2.txt": ["beta"],
            "s3.txt": ["gamma", "delta"],
        },
        0,
    ),
    "incremental": (
        {"s1.txt": ["alpha one", "alpha two changed"], "s2.txt": ["beta"], "s3.txt": ["gamma"]},
        2,
    ),
    "full": (
        {"s1.txt": ["alpha one", "alpha two changed"], "s2.txt": None, "s3.txt": ["gamma"]},
        3,
    ),
    "scoped_full": (
        {"s1.txt": ["alpha one", "alpha two changed"], "s2.txt": ["beta"], "s3.txt": ["gamma"]},
        2,
    ),
}


def stored(
    client: Client, collection: ChunkCollection, store: DocledgerVectorStore, source: str
) -> list[str] | None:
    """The chunk texts docledger holds for a source (None: deleted), checked in Milvus and
    against the document's own list of chunks."""
    doc = client.get(store.doc_id(source))
    if doc.deleted:
        assert collection.rows(doc.doc_id) == []
        return None
    assert doc.ready
    rows = collection.rows(doc.doc_id)
    assert all(r.version == doc.version for r in rows)
    assert doc.attributes is not None and len(doc.attributes["chunks"]) == len(rows)
    return [r.text for r in rows]


@pytest.mark.parametrize("cleanup", [None, "incremental", "full", "scoped_full"])
def test_index_cleanup_modes(
    client: Client, collection: ChunkCollection, prefix: str, cleanup: str | None
) -> None:
    records = InMemoryRecordManager(namespace=prefix)
    records.create_schema()
    store = DocledgerVectorStore(client, HashEmbeddings(), collection=collection, prefix=prefix)
    first = index(
        chunks(FIRST), records, store, cleanup=cleanup, source_id_key="source", key_encoder="sha256"
    )  # type: ignore[arg-type]
    assert first["num_added"] == 5
    # One docledger document per source, each written once for its chunks.
    assert [(d.doc_id, d.version) for d in client.iter_documents(prefix)] == [
        (store.doc_id(s), 1) for s in sorted(FIRST)
    ]
    # A second process: nothing cached, so deletions by id must find their sources.
    again = DocledgerVectorStore(client, HashEmbeddings(), collection=collection, prefix=prefix)
    second = index(
        chunks(SECOND),
        records,
        again,
        cleanup=cleanup,
        source_id_key="source",
        key_encoder="sha256",
    )  # type: ignore[arg-type]
    want, num_deleted = EXPECTED[cleanup]
    assert second["num_deleted"] == num_deleted
    assert second["num_added"] == 1 and second["num_skipped"] == 2
    got = {source: stored(client, collection, again, source) for source in FIRST}
    assert got == want
    # Indexing the same input again changes nothing in docledger.
    versions = {d.doc_id: d.version for d in client.iter_documents(prefix)}
    third = index(
        chunks(SECOND),
        records,
        again,
        cleanup=cleanup,
        source_id_key="source",
        key_encoder="sha256",
    )  # type: ignore[arg-type]
    assert third["num_added"] == 0 and third["num_deleted"] == 0
    assert {d.doc_id: d.version for d in client.iter_documents(prefix)} == versions


def test_search_returns_only_ready_versions(
    client: Client, collection: ChunkCollection, prefix: str
) -> None:
    store = DocledgerVectorStore(
        client, HashEmbeddings(), collection=collection, prefix=prefix, apply_timeout_ms=200
    )
    ids = store.add_documents(chunks({"kb.txt": ["the kraken sleeps in the deep sea"]}))
    [hit] = store.similarity_search("kraken deep sea", k=1)
    assert (hit.id, hit.page_content, hit.metadata) == (
        ids[0],
        "the kraken sleeps in the deep sea",
        {"source": "kb.txt", "n": 0},
    )
    client.pause("s3")
    try:
        store.add_documents(
            [Document(page_content="the kraken wakes", metadata={"source": "kb.txt"})]
        )
        doc_id = store.doc_id("kb.txt")
        # Milvus holds version 2 while S3 does not: a plain Milvus search would return it.
        eventually(
            lambda: True if {r.version for r in collection.rows(doc_id)} == {2} else None,
            "Milvus to hold version 2",
        )
        assert not client.get(doc_id).ready
        assert store.similarity_search("kraken", k=5) == []
    finally:
        client.resume("s3")
    found = eventually(lambda: store.similarity_search("kraken", k=5) or None, "version 2 ready")
    assert sorted(d.page_content for d in found) == [
        "the kraken sleeps in the deep sea",
        "the kraken wakes",
    ]


def test_delete_by_id_and_by_source(
    client: Client, collection: ChunkCollection, prefix: str
) -> None:
    store = DocledgerVectorStore(client, HashEmbeddings(), collection=collection, prefix=prefix)
    ids = store.add_documents(chunks({"a.md": ["one", "two"], "b.md": ["three"]}))
    assert [d.page_content for d in store.get_by_ids([ids[1], "unknown", ids[2]])] == [
        "two",
        "three",
    ]
    store.delete([ids[0], "unknown"])
    assert stored(client, collection, store, "a.md") == ["two"]
    store.delete([ids[1]])
    assert stored(client, collection, store, "a.md") is None
    store.delete_sources(["b.md", "never.md"])
    assert stored(client, collection, store, "b.md") is None
    assert store.similarity_search("one two three", k=3) == []


def test_sources_that_are_not_doc_ids_are_encoded(
    client: Client, collection: ChunkCollection, prefix: str
) -> None:
    store = DocledgerVectorStore(client, HashEmbeddings(), collection=collection, prefix=prefix)
    odd = "/home/me/My Notes/../été.txt/"
    store.add_documents([Document(page_content="hello", metadata={"source": odd})])
    [doc] = store.similarity_search("hello", k=1, sources=[odd])
    assert doc.metadata["source"] == odd
    assert client.get(store.doc_id(odd)).attributes["source"] == odd  # type: ignore[index]
    with pytest.raises(ValueError, match="no source"):
        store.add_documents([Document(page_content="orphan")])
