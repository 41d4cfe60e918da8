"""A small deterministic embedding for the examples and tests: no model to download.

Each lowercase word (and each pair of neighbouring words) is hashed into one of `dim`
buckets with a sign; the counts are L2-normalised. Texts sharing words land near each
other, which is enough to show retrieval end to end. Use a real model in production.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re

WORD = re.compile(r"[a-z0-9]+")


def dimension() -> int:
    """The vector size docledger expects (`DOCLEDGER_VECTOR_DIM`, 384 by default)."""
    return int(os.environ.get("DOCLEDGER_VECTOR_DIM", "384"))


def embed(text: str, dim: int | None = None) -> list[float]:
    """The embedding of `text`: `dim` floats, unit length (all zeros for a text without
    words)."""
    dim = dim or dimension()
    words = WORD.findall(text.lower())
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    vector = [0.0] * dim
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dim
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def chunk_text(text: str, max_chars: int = 400) -> list[str]:
    """Paragraphs, each cut into pieces of at most `max_chars` characters at word ends."""
    chunks: list[str] = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        piece = ""
        for word in paragraph.split():
            if piece and len(piece) + 1 + len(word) > max_chars:
                chunks.append(piece)
                piece = word
            else:
                piece = f"{piece} {word}" if piece else word
        if piece:
            chunks.append(piece)
    return chunks
