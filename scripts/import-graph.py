#!/usr/bin/env python3
"""scripts/import-graph.py [REV] - the import graph of the `docledger` crate's top-level
modules (src/*), read from `crate::` paths in the source at git revision REV (default: the
work tree). Prints the edges, the cycles between modules, the arrows that run upward (a
module reaching the crate root's own items, or its parent through `super::super`), and the
largest files of the workspace."""

import re
import subprocess
import sys
from collections import defaultdict

rev = sys.argv[1] if len(sys.argv) > 1 else None


def files():
    if rev:
        out = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    else:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return [f for f in out.split() if f.endswith(".rs")]


def read(path):
    if rev:
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    return open(path).read()


all_files = files()
src = [f for f in all_files if f.startswith("src/")]
modules = sorted({f.split("/")[1].removesuffix(".rs") for f in src} - {"lib", "main"})
root_items = set()
lib = read("src/lib.rs")
for m in re.finditer(
    r"^pub (?:async )?(?:fn|struct|enum|trait|type|const|use [\w:]+::)\s*(\w+)",
    lib,
    re.MULTILINE,
):
    root_items.add(m.group(1))
for m in re.finditer(r"^pub use [\w:]+::\{([^}]*)\}", lib, re.MULTILINE):
    root_items.update(x.strip() for x in m.group(1).split(","))

edges = defaultdict(set)
upward = []
for f in src:
    me = f.split("/")[1].removesuffix(".rs")
    if me in ("lib", "main"):
        continue
    text = read(f)
    # `use crate::{a, b::c}` and `crate::x::` in paths
    for m in re.finditer(r"crate::\{([^}]*)\}", text):
        for part in m.group(1).split(","):
            name = part.strip().split("::")[0]
            if name in modules and name != me:
                edges[me].add(name)
            elif name in root_items:
                upward.append((f, name))
    for m in re.finditer(r"crate::(\w+)", text):
        name = m.group(1)
        if name in modules and name != me:
            edges[me].add(name)
        elif name in root_items:
            upward.append((f, name))
    if "super::super" in text:
        upward.append((f, "super::super"))

# cycles: strongly connected components of more than one module
index = {}
low = {}
stack = []
on = set()
sccs = []
counter = [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


for v in modules:
    if v not in index:
        strong(v)

print(f"# import graph of src/ at {rev or 'the work tree'}")
for m in modules:
    print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
print(f"\nedges: {sum(len(v) for v in edges.values())}")
print(f"cycles: {len(sccs)}" + "".join(f"\n  {' <-> '.join(c)}" for c in sccs))
print(
    f"upward arrows: {len(set(upward))}"
    + "".join(f"\n  {f} -> crate::{n}" for f, n in sorted(set(upward)))
)
sizes = sorted(
    ((len(read(f).splitlines()), f) for f in all_files if not f.startswith("target/")),
    reverse=True,
)[:8]
print("largest files:" + "".join(f"\n  {n:5} {f}" for n, f in sizes))
