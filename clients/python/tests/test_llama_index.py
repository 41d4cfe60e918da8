"""The LlamaIndex store: nodes grouped by `ref_doc_id` into one docledger document, an
`IngestionPipeline` with `upserts_and_delete`, `delete(ref_doc_id)`, and queries that only
see ready versions."""

from __future__ import annotations

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from local_embedding import embed

from docledger import Client
from docledger.llama_index import DocledgerVectorStore
from docledger.milvus import ChunkCollection

from .conftest import DIM


class HashEmbedding(BaseEmbedding):
    def _get_query_embedding(self, query: str) -> list[float]:
        return embed(query, DIM)

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed(text, DIM)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return embed(query, DIM)


def texts_of(client: Client, collection: ChunkCollection, doc_id: str) -> list[str] | None:
    doc = client.get(doc_id)
    if doc.deleted:
        assert collection.rows(doc_id) == []
        return None
    return [r.text for r in collection.rows(doc_id)]


def test_ingestion_pipeline_upserts_and_deletes(
    client: Client, collection: ChunkCollection, prefix: str
) -> None:
    store = DocledgerVectorStore(client, collection=collection, prefix=prefix)
    docstore = SimpleDocumentStore()

    def run(docs: list[Document]) -> int:
        pipeline = IngestionPipeline(
            transformations=[SentenceSplitter(chunk_size=24, chunk_overlap=0), HashEmbedding()],
            vector_store=store,
            docstore=docstore,
            docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
        )
        return len(pipeline.run(documents=docs))

    long_text = " ".join(f"Sentence number {i} about owls and their nests." for i in range(6))
    first = [
        Document(text=long_text, id_="owls"),
        Document(text="Bees make honey in hives.", id_="bees"),
        Document(text="Cats sleep all day long.", id_="cats"),
    ]
    assert run(first) > 3
    owls = texts_of(client, collection, store.doc_id("owls"))
    assert owls is not None and len(owls) > 1, (
        "the nodes of one document form one docledger document"
    )
    assert client.get(store.doc_id("owls")).version == 1
    # bees changes, cats is gone, owls is unchanged.
    second = [
        Document(text=long_text, id_="owls"),
        Document(text="Bees dance to point at flowers.", id_="bees"),
    ]
    assert run(second) == 1
    assert texts_of(client, collection, store.doc_id("bees")) == ["Bees dance to point at flowers."]
    assert texts_of(client, collection, store.doc_id("cats")) is None
    assert texts_of(client, collection, store.doc_id("owls")) == owls
    assert client.get(store.doc_id("owls")).version == 1

    retriever = VectorStoreIndex.from_vector_store(store, embed_model=HashEmbedding()).as_retriever(
        similarity_top_k=1
    )
    [hit] = retriever.retrieve("bees dance flowers")
    assert (
        hit.node.ref_doc_id == "bees"
        and hit.node.get_content() == "Bees dance to point at flowers."
    )
    assert 0 < (hit.score or 0) <= 1


def test_add_merges_by_node_id_and_delete_removes_the_document(
    client: Client, collection: ChunkCollection, prefix: str
) -> None:
    store = DocledgerVectorStore(client, collection=collection, prefix=prefix)

    def node(node_id: str, text: str, ref: str = "doc", **meta: str) -> TextNode:
        n = TextNode(id_=node_id, text=text, metadata=meta, embedding=embed(text, DIM))
        n.relationships = {}
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

        n.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
        return n

    store.add([node("n1", "red apples", colour="red"), node("n2", "green pears", colour="green")])
    store.add(
        [node("n3", "yellow bananas", colour="yellow"), node("n1", "red cherries", colour="red")]
    )
    doc_id = store.doc_id("doc")
    assert texts_of(client, collection, doc_id) == ["red cherries", "green pears", "yellow bananas"]
    assert client.get(doc_id).version == 2

    query = VectorStoreQuery(query_embedding=embed("green pears", DIM), similarity_top_k=2)
    result = store.query(query)
    assert result.ids is not None and result.ids[0] == "n2"
    assert result.nodes is not None and result.nodes[0].metadata == {"colour": "green"}
    only_red = store.query(
        VectorStoreQuery(
            query_embedding=embed("green pears", DIM),
            similarity_top_k=2,
            filters=MetadataFilters(
                filters=[MetadataFilter(key="colour", value="red", operator=FilterOperator.EQ)]
            ),
        )
    )
    assert only_red.ids == ["n1"]
    assert [n.get_content() for n in store.get_nodes(["n3", "n9"])] == ["yellow bananas"]

    store.delete_nodes(["n2"])
    assert texts_of(client, collection, doc_id) == ["red cherries", "yellow bananas"]
    store.delete("doc")
    assert texts_of(client, collection, doc_id) is None
    assert store.query(query).ids == []
    store.delete("doc")  # unknown or deleted: nothing to do
