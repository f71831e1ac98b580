#!/usr/bin/env python3
"""Functions longer than a limit (default 120 lines) in src/, outside `#[cfg(test)]` modules.

    python3 scripts/long_functions.py [--limit N] [--top K] [src]
"""
import argparse
import re
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("src", nargs="?", default="src")
ap.add_argument("--limit", type=int, default=120)
ap.add_argument("--top", type=int, default=0, help="print the K longest whatever the limit")
args = ap.parse_args()

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")

def blank_strings(line: str) -> str:
    line = re.sub(r'r#*"[^"]*"#*', '""', line)
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return re.sub(r"//.*", "", line)

found = []
for path in sorted(Path(args.src).rglob("*.rs")):
    lines = path.read_text().splitlines()
    in_test = False
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            break  # test modules sit at the end of a file
        m = FN.match(lines[i])
        if m and not lines[i].rstrip().endswith(";"):
            depth, start, opened = 0, i, False
            j = i
            while j < len(lines):
                code = blank_strings(lines[j])
                depth += code.count("{") - code.count("}")
                opened |= "{" in code
                if opened and depth <= 0:
                    break
                j += 1
            found.append((j - start + 1, f"{path}:{start + 1}", m.group(6)))
            i = start + 1  # nested fns are counted too
            continue
        i += 1

found.sort(reverse=True)
shown = found[: args.top] if args.top else [f for f in found if f[0] > args.limit]
for n, where, name in shown:
    print(f"{n:5} {where} {name}")
over = [f for f in found if f[0] > args.limit]
print(f"{len(over)} function(s) over {args.limit} lines")
