#!/usr/bin/env python3
"""The hardening probes, against a metafora binary: metrics size after invented-method
requests, detect time against text length, /health latency during big detects and uploads,
peak RSS of an upload, slow clients. Prints one JSON line per probe and a summary.

    python3 scripts/hardening_probes.py --binary target/release/metafora [--upload-mb 63]

Run it on an old and a new binary to compare (flags the old one does not know are left out).
Standard library only.
"""
import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, binary, extra, workdir):
        self.port = free_port()
        help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
        args = [binary, "serve", "--bind", f"127.0.0.1:{self.port}", "--device", "cpu",
                "--database-url", f"sqlite://{workdir}/db.sqlite", "--data-dir", f"{workdir}/data",
                "--max-upload-bytes", str(200 << 20)]
        for flag, value in extra:
            if flag in help_text:
                args += [flag] + ([value] if value is not None else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "METAFORA_LOG": "warn"})
        t = time.time()
        while time.time() - t < 120:
            try:
                if self.request("GET", "/health")[0] in (200, 503):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def request(self, method, path, body=None, headers=None, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if body is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def health_during(server, work):
    """Runs `work` (a list of callables) in threads; /health latencies meanwhile."""
    threads = [threading.Thread(target=w) for w in work]
    for t in threads:
        t.start()
    worst, samples = 0.0, 0
    while any(t.is_alive() for t in threads):
        t0 = time.time()
        try:
            server.request("GET", "/health", timeout=60)
        except OSError:
            pass
        worst = max(worst, time.time() - t0)
        samples += 1
        time.sleep(0.05)
    for t in threads:
        t.join()
    return worst, samples


def probe_metrics(binary, tmp, n):
    s = Server(binary, [("--api-key", "k")], tmp)
    try:
        auth = {"Authorization": "Bearer k"}
        before = len(s.request("GET", "/metrics", headers=auth)[1])
        rss0 = s.rss_kib()
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        for i in range(n):
            c.request("X%059d" % i, "/nope")
            c.getresponse().read()
        c.close()
        after = len(s.request("GET", "/metrics", headers=auth)[1])
        return {"probe": "metrics", "requests": n, "metrics_bytes_before": before,
                "metrics_bytes_after": after, "rss_growth_mib": round((s.rss_kib() - rss0) / 1024, 1)}
    finally:
        s.stop()


def probe_detect(binary, tmp):
    s = Server(binary, [], tmp)
    try:
        times = {}
        s.request("POST", "/v1/detect", json.dumps({"text": "a\n" * 1000}))
        for chars in [25_000, 50_000, 100_000, 200_000]:
            body = json.dumps({"text": "a\n" * (chars // 2)})
            t0 = time.time()
            code, _ = s.request("POST", "/v1/detect", body)
            times[chars] = round(time.time() - t0, 3)
            assert code == 200, code
        big = json.dumps({"text": "a\n" * 100_000})
        worst, samples = health_during(s, [lambda: s.request("POST", "/v1/detect", big)] * 2)
        return {"probe": "detect", "seconds_by_chars": times,
                "ratio_200k_25k": round(times[200_000] / times[25_000], 1),
                "health_worst_ms_during_two_200k": round(worst * 1000, 1), "health_samples": samples}
    finally:
        s.stop()


def make_upload(path, mb):
    rnd = random.Random(0)
    words = ["el", "cor", "de", "la", "pedra", "suau", "ampliar", "programa", "nit", "llum",
             "mar", "veu", "temps", "camí", "foc", "aigua", "paraula", "ciutat"]
    with open(path, "w") as f:
        size = 0
        while size < mb << 20:
            n = rnd.randint(5, 30)
            toks = [rnd.choice(words) for _ in range(n)]
            tags = ["B-METAPHOR" if rnd.random() < 0.05 else "O" for _ in range(n)]
            line = json.dumps({"tokens": toks, "tags": tags}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
    return os.path.getsize(path)


def upload(server, path):
    boundary = "metaforaprobe"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = os.path.getsize(path)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1200)
    c.putrequest("POST", "/v1/datasets")
    c.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    c.putheader("Content-Length", str(len(head) + size + len(tail)))
    c.endheaders()
    c.send(head)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            c.send(chunk)
    c.send(tail)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def probe_upload(binary, tmp, mb):
    path = os.path.join(tmp, "big.jsonl")
    size = make_upload(path, mb)
    s = Server(binary, [("--upload-timeout", "1200")], os.path.join(tmp, "one"))
    try:
        base = s.rss_kib()
        t0 = time.time()
        code, body = upload(s, path)
        took = time.time() - t0
        peak = s.rss_kib("VmHWM")
        one = {"status": code, "seconds": round(took, 1), "rss_before_mib": round(base / 1024, 1),
               "peak_rss_mib": round(peak / 1024, 1),
               "peak_minus_before_mib": round((peak - base) / 1024, 1)}
        if code != 201:
            one["error"] = body[:300].decode(errors="replace")
    finally:
        s.stop()
    s = Server(binary, [("--upload-timeout", "1200")], os.path.join(tmp, "two"))
    try:
        base = s.rss_kib()
        worst, samples = health_during(s, [lambda: upload(s, path)] * 2)
        peak = s.rss_kib("VmHWM")
        two = {"health_worst_ms": round(worst * 1000, 1), "health_samples": samples,
               "peak_minus_before_mib": round((peak - base) / 1024, 1)}
    finally:
        s.stop()
    return {"probe": "upload", "upload_mib": round(size / 2**20, 1), "one": one, "two_in_parallel": two}


def probe_slow(binary, tmp, n):
    s = Server(binary, [("--header-read-timeout", "10"), ("--request-timeout", "20")], tmp)
    try:
        held = [0.0] * n

        def slow(i):
            t0 = time.time()
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.settimeout(90)
            if i % 2 == 0:
                msg = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
            else:
                msg = (b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 200\r\n\r\n") + b" " * 200
                sock.sendall(msg[:msg.index(b"\r\n\r\n") + 4])
                msg = msg[msg.index(b"\r\n\r\n") + 4:]
            try:
                for b in msg:
                    sock.sendall(bytes([b]))
                    time.sleep(1.0)
                    if time.time() - t0 > 80:
                        break
            except OSError:
                pass
            try:
                sock.recv(4096)
            except OSError:
                pass
            sock.close()
            held[i] = time.time() - t0

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        time.sleep(2)
        t0 = time.time()
        s.request("GET", "/health", timeout=30)
        health = time.time() - t0
        for t in threads:
            t.join()
        return {"probe": "slow_clients", "connections": n, "one_byte_per_second": True,
                "held_seconds_headers_max": round(max(held[0::2]), 1),
                "held_seconds_body_max": round(max(held[1::2]), 1),
                "health_ms_meanwhile": round(health * 1000, 1)}
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--upload-mb", type=int, default=63)
    ap.add_argument("--metrics-requests", type=int, default=20_000)
    ap.add_argument("--only", default="metrics,detect,upload,slow")
    a = ap.parse_args()
    only = a.only.split(",")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in [("metrics", lambda d: probe_metrics(a.binary, d, a.metrics_requests)),
                         ("detect", lambda d: probe_detect(a.binary, d)),
                         ("upload", lambda d: probe_upload(a.binary, d, a.upload_mb)),
                         ("slow", lambda d: probe_slow(a.binary, d, 20))]:
            if name not in only:
                continue
            d = os.path.join(tmp, name)
            os.makedirs(d)
            try:
                r = fn(d)
            except Exception as e:  # a probe that breaks the old binary is a finding too
                r = {"probe": name, "error": repr(e)}
            print(json.dumps(r), flush=True)
            out.append(r)
    json.dump(out, sys.stderr)


if __name__ == "__main__":
    main()
