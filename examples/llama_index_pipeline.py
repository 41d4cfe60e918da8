"""The same folder through LlamaIndex: an `IngestionPipeline` (sentence splitter, local
embedding, a docstore with the `upserts_and_delete` strategy) writing into docledger, then
a retriever over the same store.

    python examples/llama_index_pipeline.py examples/data "how is the log ordered?" --state /tmp/li

Each file is one LlamaIndex document, so one docledger document holding its nodes. With
`--state DIR` the pipeline's docstore is kept between runs: an unchanged file is skipped,
a changed one replaced, a removed one deleted. Needs `docledger[llama-index]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.storage.docstore import SimpleDocumentStore
from local_embedding import embed

from docledger import Client
from docledger.llama_index import DocledgerVectorStore


class HashEmbedding(BaseEmbedding):
    """`local_embedding.embed` as a LlamaIndex embedding."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return embed(query)


def documents(folder: Path) -> list[Document]:
    return [
        Document(
            text=p.read_text(encoding="utf-8"),
            id_=p.relative_to(folder).as_posix(),
            metadata={"file_name": p.name},
        )
        for p in sorted(folder.rglob("*.txt"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("question")
    parser.add_argument("--prefix", default="llama/")
    parser.add_argument("--state", type=Path, help="keep the pipeline's docstore here")
    parser.add_argument("--url", default=os.environ.get("DOCLEDGER_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    with Client(args.url, token=os.environ.get("DOCLEDGER_TOKEN")) as client:
        store = DocledgerVectorStore(client, prefix=args.prefix)
        pipeline = IngestionPipeline(
            transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), HashEmbedding()],
            vector_store=store,
            docstore=SimpleDocumentStore(),
            docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
        )
        if args.state is not None and args.state.exists():
            pipeline.load(str(args.state))
        nodes = pipeline.run(documents=documents(args.folder))
        if args.state is not None:
            pipeline.persist(str(args.state))
        print(f"ingested {len(nodes)} new or changed nodes")
        retriever = VectorStoreIndex.from_vector_store(
            store, embed_model=HashEmbedding()
        ).as_retriever(similarity_top_k=2)
        for hit in retriever.retrieve(args.question):
            print(f"{hit.score:.3f}  {hit.node.ref_doc_id}  {hit.node.get_content()[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
