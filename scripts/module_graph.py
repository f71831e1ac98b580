#!/usr/bin/env python3
"""Edges between the crate's top-level modules (from `crate::` paths in src/), cycles among
them, and modules that import the CLI. Exit 1 on a cycle or a CLI import, so `.ci/run` fails
when a back-edge comes in.

    python3 scripts/module_graph.py [src]      # prints the graph and what is wrong
"""
import re
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
# Binaries and the crate root wire everything together; they are not layers.
ROOTS = {"main", "lib"}
CLI = {"cli"}

def module_of(path: Path) -> str:
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".rs")

def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)

edges: dict[str, set[str]] = {}
modules = {module_of(p) for p in src.rglob("*.rs")} - ROOTS
for path in src.rglob("*.rs"):
    m = module_of(path)
    if m in ROOTS:
        continue
    text = strip_comments(path.read_text())
    # Test modules may reach anywhere; they are not part of the layering.
    text = re.split(r"#\[cfg\(test\)\]", text)[0]
    used = set(re.findall(r"crate::(\w+)", text))
    # `use crate::{a, b::c}` groups
    for group in re.findall(r"crate::\{([^}]*)\}", text):
        used |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
    edges.setdefault(m, set()).update(u for u in used if u in modules and u != m)

def cycles() -> list[list[str]]:
    # Strongly connected components (Tarjan) with more than one module.
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out

for m in sorted(modules):
    print(f"{m} -> {', '.join(sorted(edges.get(m, ()))) or '(nothing)'}")
bad = False
for comp in cycles():
    inner = [f"{a}->{b}" for a in comp for b in sorted(edges.get(a, ())) if b in comp]
    print(f"CYCLE among {', '.join(comp)}: {' '.join(inner)}")
    bad = True
cli_users = sorted(m for m, e in edges.items() if e & CLI)
if cli_users:
    print(f"IMPORTS THE CLI: {', '.join(cli_users)}")
    bad = True
print("module graph: " + ("NOT OK" if bad else "ok (no cycles, nothing imports the CLI)"))
sys.exit(1 if bad else 0)
