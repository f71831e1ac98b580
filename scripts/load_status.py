#!/usr/bin/env python3
"""Status polling under load while a job trains (issue: the service, "must show" 5).

Starts `metafora serve` (release build) on a temp database, queues a CPU job on the bundled
mini Catalan RoBERTa and demo data, lets it train alone for a few epochs, then runs
`wrk -c 32 -d 30s` against `GET /v1/jobs/{id}` and compares the training time of the epochs
that ran entirely under load with the ones that ran alone. Prints a JSON summary.

    cargo build --release && python3 scripts/load_status.py [--connections 32 --seconds 30]

Needs `wrk` (Debian: apt-get install wrk). Stdlib only.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def parse_ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/metafora"))
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--alone-epochs", type=int, default=5)
    ap.add_argument("--nice-wrk", type=int, default=0,
                    help="run wrk under `nice -n N` (it shares the CPUs with the server here)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")

    tmp = tempfile.mkdtemp(prefix="metafora-load-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [args.binary, "serve", "--bind", f"127.0.0.1:{port}", "--device", "cpu",
         "--database-url", f"sqlite://{tmp}/db.sqlite", "--data-dir", f"{tmp}/data"],
        stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/server.log", "w"),
        env={**os.environ, "METAFORA_LOG": "warn"})
    try:
        for _ in range(600):
            try:
                call(f"{base}/health")
                break
            except Exception:
                time.sleep(0.1)
        spec = {
            "model": {"checkpoint": os.path.join(ROOT, "assets/models/mini-roberta-ca")},
            "dataset": {"path": os.path.join(ROOT, "assets/data/ca_meta4xnli")},
            "training": {"learning_rate": 5e-5, "num_train_epochs": 100},
            "seed": 42,
        }
        job = call(f"{base}/v1/jobs", spec)["id"]
        arrivals = {}  # epoch -> wall time it was first seen
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    for e in call(f"{base}/v1/jobs/{job}/epochs")["epochs"]:
                        arrivals.setdefault(e["epoch"], (time.time(), e))
                except Exception:
                    pass
                time.sleep(0.1)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        # Epoch 1 warms up; then epochs 2..(1 + alone) train alone.
        while len(arrivals) < 1 + args.alone_epochs:
            time.sleep(0.2)
        wrk_cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.seconds}s",
                   "--latency", f"{base}/v1/jobs/{job}"]
        if args.nice_wrk:
            wrk_cmd = ["nice", "-n", str(args.nice_wrk)] + wrk_cmd
        w0 = time.time()
        out = subprocess.run(wrk_cmd, capture_output=True, text=True).stdout
        w1 = time.time()
        # One more epoch after the load, then stop the job.
        n = len(arrivals)
        while len(arrivals) < n + 1:
            time.sleep(0.2)
        stop.set()
        t.join()
        call(f"{base}/v1/jobs/{job}/cancel", {})

        seen = sorted(arrivals.items())
        alone, loaded = [], []
        for (k, (at, e)), (_, (prev_at, _)) in zip(seen[1:], seen[:-1]):
            if at <= w0:
                alone.append(e["train_seconds"])
            elif prev_at >= w0 and at <= w1:
                loaded.append(e["train_seconds"])
        lat = {p: parse_ms(v, u) for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
        reqs = re.search(r"(\d+) requests in", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: (.*)", out)
        mean = lambda v: sum(v) / len(v) if v else float("nan")
        summary = {
            "wrk": {"connections": args.connections, "seconds": args.seconds, "requests": int(reqs.group(1)) if reqs else None,
                    "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                    "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": sock.group(1) if sock else "none",
                    "latency_ms": lat},
            "epoch_train_seconds_alone": alone,
            "epoch_train_seconds_under_load": loaded,
            "slowdown": mean(loaded) / mean(alone) - 1.0,
        }
        print(out)
        print(json.dumps(summary, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
