"""Ingest a folder of text files into docledger: each file is one document (its bytes as
the blob, its paragraphs as chunks embedded locally), sent as one streamed NDJSON batch.

    python examples/ingest_folder.py examples/data --prefix demo/ --sync

With `--sync`, every document under the prefix that this run did not send (a file that
was removed) is deleted afterwards, and nothing is deleted if any line was refused.
Environment: DOCLEDGER_URL (default http://127.0.0.1:8080), DOCLEDGER_TOKEN,
DOCLEDGER_VECTOR_DIM (default 384).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from local_embedding import chunk_text, embed

from docledger import Blob, Chunk, Client, Put, SyncFailed


def documents(folder: Path, prefix: str) -> Iterator[Put]:
    """One put per `.txt` file, read only when the batch asks for it."""
    for path in sorted(folder.rglob("*.txt")):
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(folder).as_posix()
        yield Put(
            doc_id=prefix + relative,
            title=path.stem,
            source_type="text",
            chunks=[Chunk(c, embed(c)) for c in chunk_text(text)],
            blob=Blob.from_path(path, "text/plain"),
            attributes={"path": relative},
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prefix", default="files/", help="doc id prefix (default files/)")
    parser.add_argument("--sync", action="store_true", help="delete what this run did not send")
    parser.add_argument("--url", default=os.environ.get("DOCLEDGER_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args()
    with Client(args.url, token=os.environ.get("DOCLEDGER_TOKEN")) as client:
        items = documents(args.folder, args.prefix)
        if args.sync:
            try:
                report = client.sync(items, prefix=args.prefix, consistency="applied")
            except SyncFailed as e:
                print(f"sync failed, nothing deleted: {e}", file=sys.stderr)
                return 1
            print(
                f"sent {report.sent}: {report.changed} changed, {report.unchanged} unchanged; "
                f"deleted {len(report.deleted)}: {', '.join(report.deleted) or '-'}"
            )
            return 0
        refused = 0
        for r in client.batch(items, consistency="applied"):
            if r.ok:
                assert r.result is not None
                state = "unchanged" if r.result.unchanged else "changed"
                print(f"{r.doc_id}: version {r.result.version} ({state})")
            else:
                refused += 1
                print(f"{r.doc_id}: refused: {r.error}", file=sys.stderr)
        return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
