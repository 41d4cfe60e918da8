"""The same folder through LangChain: chunks as `Document`s whose `source` is the file,
indexed into docledger with `langchain_core.indexing.index()` (a record manager and a
cleanup mode), then a similarity search that only sees ready document versions.

    python examples/langchain_pipeline.py examples/data "what does docledger keep in S3?"

Each file is one docledger document holding its chunks. Needs `docledger[langchain]`.
Environment as for retrieve.py. The record manager here lives in memory; keep a
persistent one (langchain's SQLRecordManager) between runs in a real pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.indexing import InMemoryRecordManager, index
from local_embedding import chunk_text, embed

from docledger import Client
from docledger.langchain import DocledgerVectorStore


class HashEmbeddings(Embeddings):
    """`local_embedding.embed` as LangChain embeddings."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text)


def chunks(folder: Path) -> list[Document]:
    return [
        Document(page_content=c, metadata={"source": p.relative_to(folder).as_posix()})
        for p in sorted(folder.rglob("*.txt"))
        for c in chunk_text(p.read_text(encoding="utf-8"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("question")
    parser.add_argument("--prefix", default="langchain/")
    parser.add_argument("--cleanup", default="full", choices=["incremental", "full", "scoped_full"])
    parser.add_argument("--url", default=os.environ.get("DOCLEDGER_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    with Client(args.url, token=os.environ.get("DOCLEDGER_TOKEN")) as client:
        store = DocledgerVectorStore(client, HashEmbeddings(), prefix=args.prefix)
        records = InMemoryRecordManager(namespace=f"docledger/{args.prefix}")
        records.create_schema()
        result = index(
            chunks(args.folder),
            records,
            store,
            cleanup=args.cleanup,
            source_id_key="source",
            key_encoder="sha256",
        )
        print(f"indexed: {result}")
        for doc, distance in store.similarity_search_with_score(args.question, k=2):
            print(f"{distance:.3f}  {doc.metadata['source']}  {doc.page_content[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
