"""Ask docledger's Milvus collection for the chunks nearest to a question, keeping only
document versions that every store holds (`ready`).

    python examples/retrieve.py "which store keeps the raw document?" --prefix demo/

Needs `docledger[milvus]`. Environment: DOCLEDGER_URL, DOCLEDGER_TOKEN,
DOCLEDGER_VECTOR_DIM, and Milvus as docledger sees it (what `. scripts/env.sh` exports):
DOCLEDGER_MILVUS_URL, DOCLEDGER_MILVUS_TOKEN, DOCLEDGER_MILVUS_COLLECTION.
"""

from __future__ import annotations

import argparse
import os
import sys

from local_embedding import embed

from docledger import Client
from docledger.milvus import ChunkCollection, search_ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--prefix", default="")
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--url", default=os.environ.get("DOCLEDGER_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    collection = ChunkCollection.from_env()
    with Client(args.url, token=os.environ.get("DOCLEDGER_TOKEN")) as client:
        hits = search_ready(client, collection, embed(args.question), args.k, prefix=args.prefix)
    for hit in hits:
        print(f"{hit.row.distance:.3f}  {hit.row.doc_id} v{hit.row.version}  {hit.row.text[:70]}")
    collection.close()
    return 0 if hits else 1


if __name__ == "__main__":
    sys.exit(main())
