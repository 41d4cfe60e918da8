"""Sources become valid, distinct docledger ids (the contract's rules: 1-255 bytes of
`[A-Za-z0-9._:@/-]`, no leading or trailing `/`, no `..`)."""

from __future__ import annotations

import re

import pytest

from docledger._sources import source_doc_id

VALID = re.compile(r"[A-Za-z0-9._:@/-]{1,255}")


def valid(doc_id: str) -> bool:
    return (
        VALID.fullmatch(doc_id) is not None
        and len(doc_id.encode()) <= 255
        and not doc_id.startswith("/")
        and not doc_id.endswith("/")
        and ".." not in doc_id
    )


SOURCES = [
    "a.txt",
    "/abs/path/file.md",
    "dir/",
    "../up",
    "a..b",
    "...",
    "with space",
    "été",
    "a@b",
    "a@40b",
    "x" * 300,
    "x" * 300 + "y",
    "é" * 200,
]


@pytest.mark.parametrize("prefix", ["", "kb/"])
def test_every_source_gets_a_valid_distinct_id(prefix: str) -> None:
    ids = [source_doc_id(prefix, s) for s in SOURCES]
    assert all(valid(i) and i.startswith(prefix) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert source_doc_id(prefix, "a.txt") == prefix + "a.txt"


def test_an_empty_source_is_refused() -> None:
    with pytest.raises(ValueError):
        source_doc_id("", "")
