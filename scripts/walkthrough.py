#!/usr/bin/env python3
"""Runs the README walkthrough and checks each command's output against what the README shows.

The walkthrough is the text between `<!-- walkthrough:start -->` and `<!-- walkthrough:end -->`.
In its ```console blocks, a line starting with `$ ` is a command; the lines after it, up to the
next command or the end of the block, are its expected output. In expected output `…` matches
any text; leading/trailing spaces are ignored. Commands run in order in one bash shell, so
variables set by one (`JOB=$(...)`) are seen by the next. Needs a server on localhost:8080.

Usage: python3 scripts/walkthrough.py [README.md]
"""
import os
import re
import subprocess
import sys
import tempfile


def steps(readme):
    text = open(readme, encoding="utf-8").read()
    m = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", text, re.S)
    if not m:
        sys.exit("no walkthrough section in " + readme)
    out = []
    for block in re.findall(r"```console\n(.*?)```", m.group(1), re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append([line[2:], []])
            elif out:
                out[-1][1].append(line)
    return out


def matches(pattern, line):
    parts = [re.escape(p) for p in pattern.strip().split("…")]
    return re.fullmatch(".*?".join(parts), line.strip()) is not None


def main():
    readme = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "README.md")
    todo = steps(readme)
    with tempfile.TemporaryDirectory() as tmp:
        script = ["set -u"]
        for i, (cmd, _) in enumerate(todo):
            script.append(f"{{ {cmd}\n}} > {tmp}/{i}.out 2>&1; echo $? > {tmp}/{i}.rc")
        subprocess.run(["bash", "-c", "\n".join(script)], timeout=1800, check=False)
        failed = 0
        for i, (cmd, expected) in enumerate(todo):
            got = open(f"{tmp}/{i}.out", encoding="utf-8", errors="replace").read().splitlines()
            rc = open(f"{tmp}/{i}.rc").read().strip()
            ok = rc == "0" and len(got) == len(expected) and all(matches(e, g) for e, g in zip(expected, got))
            print(("ok   " if ok else "FAIL ") + cmd)
            if not ok:
                failed += 1
                print(f"  exit {rc}\n  expected:\n" + "\n".join("    " + e for e in expected) + "\n  got:\n" + "\n".join("    " + g for g in got))
        print(f"walkthrough: {len(todo) - failed}/{len(todo)} commands as the README shows")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
