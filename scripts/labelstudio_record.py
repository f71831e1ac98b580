#!/usr/bin/env python3
"""Records the request bodies a real Label Studio sends to an ML backend, as test fixtures.

Starts Label Studio (see labelstudio_loop.py: fresh data dir, sqlite, loopback, legacy API
token) and a recording ML backend (http.server in this process) that answers
  GET  /health   {"status": "UP", "model_class": "x"}
  POST /setup    {"model_version": "rec-1"}
  POST /predict  {"results": [one empty prediction per task]}
  POST /webhook  {"status": "ok"}
and keeps every request. Then drives Label Studio through its API: a project with the
span-labelling config and 5 Catalan tasks (one with an emoji), the backend connected
(POST /api/ml), predictions retrieved (Data Manager action retrieve_tasks_predictions), an
annotation created, updated and deleted, training triggered (POST /api/ml/{id}/train), then
start_training_on_annotation_update switched on and 3 more annotations (emoji task included),
and the project exported as JSON.

Writes into --out (default tests/fixtures/labelstudio/):
  setup.json, predict.json, webhook_<action>.json (first body of each webhook action, e.g.
  webhook_annotation_created.json, webhook_start_training.json), export.json, requests.json
  (every request in order: method, path, a few headers, action, fixture file).

Usage: python3 scripts/labelstudio_record.py [--ls-venv DIR] [--out DIR] [--keep-work DIR]
"""
import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labelstudio_loop import (  # noqa: E402
    DEFAULT_VENV, REPO, Failure, Processes, free_port, install_signal_handlers, log, ls_version,
    start_label_studio,
)

# Ours, CC0-1.0.
SENTENCES = [
    "El temps vola 🕊️ quan l'home somriu.",
    "La seva veu era un riu de mel.",
    "Aquella notícia li va trencar el cor.",
    "Els preus s'enfilen cada estiu.",
    "Vam dinar a la platja amb els cosins.",
]
KEEP_HEADERS = ("content-type", "user-agent", "authorization", "accept")


class Recorder:
    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()

    def serve(self, port):
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _record(self, body):
                hdrs = {k.lower(): v for k, v in self.headers.items() if k.lower() in KEEP_HEADERS}
                if "authorization" in hdrs:
                    hdrs["authorization"] = hdrs["authorization"].split(" ")[0] + " …"
                with rec.lock:
                    rec.requests.append({"seq": len(rec.requests), "time": time.time(), "method": self.command,
                                         "path": self.path, "headers": hdrs, "body": body})

            def _answer(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._record(None)
                if self.path.rstrip("/") == "/health":
                    self._answer({"status": "UP", "model_class": "x"})
                else:
                    self._answer({"error": "not found"}, 404)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", errors="replace")}
                self._record(body)
                path = self.path.rstrip("/")
                if path == "/setup":
                    self._answer({"model_version": "rec-1"})
                elif path == "/predict":
                    tasks = (body or {}).get("tasks") or []
                    self._answer({"results": [{"result": [], "score": 0.0, "model_version": "rec-1"} for _ in tasks]})
                elif path == "/webhook":
                    self._answer({"status": "ok"})
                else:
                    self._answer({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return len(self.requests)

    def since(self, n):
        with self.lock:
            return self.requests[n:]


def region(text, word):
    """A METAPHOR region over the first whole-word `word`, start/end in code points (Python str
    indices)."""
    start = re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text).start()
    return {"from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
            "value": {"start": start, "end": start + len(word), "text": word, "labels": ["METAPHOR"]}}


def settle(rec, quiet=1.0, timeout=30):
    """Waits until the recorder has seen no request for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    n = rec.count()
    last = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if rec.count() != n:
            n, last = rec.count(), time.monotonic()
        elif time.monotonic() - last >= quiet:
            return


def actions(reqs):
    return [(r["path"], (r["body"] or {}).get("action") if isinstance(r["body"], dict) else None) for r in reqs]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ls-venv", default=str(DEFAULT_VENV))
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "labelstudio"))
    ap.add_argument("--keep-work", help="keep Label Studio's data dir and log here (default: a temporary dir, removed)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.keep_work) if args.keep_work else Path(tempfile.mkdtemp(prefix="metafora-ls-record-"))
    work.mkdir(parents=True, exist_ok=True)
    install_signal_handlers()
    procs = Processes()
    rec = Recorder()
    steps_log = []
    try:
        version = ls_version(args.ls_venv)
        ls_port, rec_port = free_port(), free_port()
        rec.serve(rec_port)
        ls, _, start_s = start_label_studio(procs, args.ls_venv, work, ls_port, work / "label-studio.log")
        log(f"Label Studio {version} up in {start_s:.1f} s; recorder on 127.0.0.1:{rec_port}")

        def step(name, fn):
            n = rec.count()
            t0 = time.monotonic()
            r = fn()
            settle(rec)
            got = actions(rec.since(n))
            steps_log.append({"step": name, "seconds": round(time.monotonic() - t0, 2), "requests": got})
            log(f"{name}: {got}")
            return r

        project = ls.create_project("metafora recording")
        ls.import_tasks(project, [{"data": {"text": t}} for t in SENTENCES])
        tasks = {t["data"]["text"]: t["id"] for t in ls.tasks(project)}
        ml = step("connect ML backend (POST /api/ml)",
                  lambda: ls.connect_ml(project, f"http://127.0.0.1:{rec_port}", "recorder"))
        step("retrieve predictions (POST /api/dm/actions?id=retrieve_tasks_predictions)",
             lambda: ls.retrieve_predictions(project))
        t_cor = SENTENCES[2]
        ann = step("create annotation (POST /api/tasks/{id}/annotations)",
                   lambda: ls.annotate(tasks[t_cor], [region(t_cor, "trencar")]))
        step("update annotation (PATCH /api/annotations/{id})",
             lambda: ls.update_annotation(ann["id"], [region(t_cor, "trencar"), region(t_cor, "cor")]))
        step("delete annotation (DELETE /api/annotations/{id})", lambda: ls.delete_annotation(ann["id"]))
        step("train (POST /api/ml/{id}/train)", lambda: ls.train(ml["id"]))
        step("PATCH project start_training_on_annotation_update=true",
             lambda: ls.set_train_on_update(project, True))
        t_emoji, t_riu, t_preus = SENTENCES[0], SENTENCES[1], SENTENCES[3]
        step("create annotation with train-on-update (emoji task)",
             lambda: ls.annotate(tasks[t_emoji], [region(t_emoji, "vola"), region(t_emoji, "somriu")]))
        step("create annotation with train-on-update", lambda: ls.annotate(tasks[t_riu], [region(t_riu, "riu")]))
        step("create annotation with train-on-update (empty result)", lambda: ls.annotate(tasks[t_preus], []))
        export = ls.export(project)
        ml_after = ls.ml(ml["id"])

        # ---- fixtures
        def dump(name, obj):
            (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            log(f"wrote {out / name}")

        index = []
        written = set()
        for r in rec.requests:
            path = r["path"].rstrip("/")
            action = r["body"].get("action") if isinstance(r["body"], dict) else None
            name = None
            if path == "/setup":
                name = "setup.json"
            elif path == "/predict":
                name = "predict.json"
            elif path == "/webhook" and action:
                name = f"webhook_{action.lower()}.json"
            if name and name not in written:
                dump(name, r["body"])
                written.add(name)
            else:
                name = None
            index.append({"seq": r["seq"], "method": r["method"], "path": r["path"], "headers": r["headers"],
                          "action": action, "fixture": name})
        dump("export.json", export)
        dump("requests.json", {"label_studio_version": version, "recorded": time.strftime("%Y-%m-%d"),
                               "steps": steps_log, "requests": index,
                               "ml_backend_after": {k: ml_after.get(k) for k in ("state", "model_version", "error_message")}})
        log(f"{len(rec.requests)} requests recorded; fixtures: {sorted(written)}")
    except Failure as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        procs.stop_all()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
