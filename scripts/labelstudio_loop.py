#!/usr/bin/env python3
"""End-to-end check of metafora as the ML backend of a real Label Studio (1.23.x from PyPI).

Starts Label Studio (fresh data dir, sqlite, loopback) and `metafora serve` (fresh data dir and
database), both on free loopback ports with their logs in --out, then:

  1. creates a project (span labelling, label METAPHOR) with 30 Catalan tasks taken from
     assets/data/ca_meta4xnli/{test,validation}.jsonl (gold tags kept for step 4);
  2. connects metafora as the project's ML backend (`POST /api/ml`, URL .../labelstudio); Label
     Studio calls /health and /setup itself;
  3. asks Label Studio to retrieve predictions for all tasks (Data Manager action
     `retrieve_tasks_predictions`), reads back what Label Studio stored and checks every region
     covers whole words;
  4. sets `start_training_on_annotation_update` and submits 20 annotations (gold tags, one
     region per metaphor word), so Label Studio sends its own webhooks to metafora;
  5. triggers training through Label Studio (`POST /api/ml/{id}/train` → START_TRAINING) and
     follows metafora's `GET /v1/projects/{id}` (`training.job_id`, null when idle;
     `training.another_run_requested`) and `GET /v1/jobs/{job}` until no job is queued or
     running; prints the project's `last_decision` (deployed, candidate/incumbent validation F1).
     With start_training_on_annotation_update Label Studio already sent START_TRAINING on every
     saved annotation (before that annotation's ANNOTATION_CREATED), so a job may be running
     before the explicit trigger; all jobs seen are reported;
  6. retrieves predictions again: a new model_version if metafora now serves a new model (the
     decision said deployed), none if not; regions whole words again;
  7. bulk predictions (`POST /v1/predictions`, format labelstudio) over the whole dataset,
     imported into a new Label Studio project (369 tasks with predictions);
  8. writes a JSON summary (also to --out/summary.json). Exit status 0 only if every check
     passed.

Both servers are stopped at exit (also on Ctrl-C, SIGTERM or an error); --keep keeps their data
directories (under --out) for inspection.

Needs only the standard library; Label Studio runs from its own virtualenv (--ls-venv):
    python3 -m venv ~/.cache/metafora-ls/venv
    ~/.cache/metafora-ls/venv/bin/pip install 'label-studio==1.23.*'

Usage: python3 scripts/labelstudio_loop.py --metafora target/release/metafora [--out DIR] [--keep]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "assets" / "data" / "ca_meta4xnli"
DEFAULT_VENV = Path.home() / ".cache" / "metafora-ls" / "venv"

LABEL_CONFIG = """<View>
  <Labels name="label" toName="text">
    <Label value="METAPHOR" background="red"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""

# First user of the fresh Label Studio. The token is Label Studio's legacy API token (header
# `Authorization: Token ...`), enabled for the organisation by --enable-legacy-api-token.
LS_USER = "loop@example.com"
LS_PASSWORD = "loop-password-123"
LS_TOKEN = "metafora-loop-token-0123456789"

# Label Studio's Django dev server takes ~30 s to start on a fresh data dir (migrations).
LS_START_TIMEOUT = 300
METAFORA_START_TIMEOUT = 120


class Failure(Exception):
    """A step could not go on (a server did not answer as expected)."""


class Fatal(Failure):
    """A Failure that waiting will not cure (e.g. a route the server does not have)."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- HTTP


def http(method, url, body=None, headers=None, timeout=60, raw=None):
    """One request. Returns (status, parsed JSON or text). Raises Failure on connection errors.
    `body` is sent as JSON; `raw` (bytes) as is."""
    data = None
    hdrs = dict(headers or {})
    if raw is not None:
        data = raw
    elif body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise Failure(f"{method} {url}: {e}") from None
    text = payload.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def expect(status_body, ok, what):
    status, body = status_body
    if status not in ok:
        raise Failure(f"{what}: HTTP {status}: {str(body)[:2000]}")
    return body


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


class Processes:
    """Servers started by this script, each in its own process group; stopped at exit."""

    def __init__(self):
        self.procs = []  # (name, Popen, log file)

    def start(self, name, argv, env, log_path, cwd=None):
        logf = open(log_path, "ab")
        p = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, p, logf))
        log(f"started {name} (pid {p.pid}), log {log_path}")
        return p

    def stop_all(self):
        for name, p, logf in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(timeout=10)
                log(f"stopped {name} (pid {p.pid})")
            else:
                # The leader is gone; children it left in the group may not be.
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            logf.close()
        self.procs = []


def install_signal_handlers():
    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def wait_until(what, fn, timeout, interval=1.0, proc=None, log_path=None):
    """Calls fn() until it returns a truthy value; Failure after `timeout` seconds or when
    `proc` exits."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log_path and Path(log_path).exists():
                tail = Path(log_path).read_text(errors="replace")[-3000:]
            raise Failure(f"{what}: the process exited with {proc.returncode}\n{tail}")
        try:
            v = fn()
            if v:
                return v
        except Fatal:
            raise
        except Failure as e:
            last_err = e
        time.sleep(interval)
    raise Failure(f"{what}: not done after {timeout} s" + (f" (last error: {last_err})" if last_err else ""))


# ---------------------------------------------------------------- Label Studio


class LabelStudio:
    def __init__(self, base, token=LS_TOKEN):
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Token {token}"}

    def call(self, method, path, body=None, ok=(200, 201, 204), timeout=120, raw=None, headers=None):
        h = dict(self.headers)
        h.update(headers or {})
        return expect(http(method, self.base + path, body, h, timeout=timeout, raw=raw), ok, f"Label Studio {method} {path}")

    # projects and tasks
    def create_project(self, title, label_config=LABEL_CONFIG):
        return self.call("POST", "/api/projects", {"title": title, "label_config": label_config})["id"]

    def import_tasks(self, project, tasks, timeout=300):
        return self.call("POST", f"/api/projects/{project}/import", raw=json.dumps(tasks).encode(),
                         headers={"Content-Type": "application/json"}, timeout=timeout)

    def tasks(self, project):
        out, page = [], 1
        while True:
            status, body = http("GET", f"{self.base}/api/tasks?project={project}&page={page}&page_size=500",
                                headers=self.headers, timeout=120)
            if status == 404 and page > 1:
                break
            body = expect((status, body), (200,), "Label Studio GET /api/tasks")
            got = body.get("tasks", []) if isinstance(body, dict) else body
            out.extend(got)
            total = body.get("total", len(out)) if isinstance(body, dict) else len(out)
            if not got or len(out) >= total:
                break
            page += 1
        return sorted(out, key=lambda t: t["id"])

    def predictions(self, project):
        body = self.call("GET", f"/api/predictions?project={project}")
        return body["results"] if isinstance(body, dict) and "results" in body else body

    # ML backend
    def connect_ml(self, project, url, title):
        return self.call("POST", "/api/ml", {"project": project, "url": url, "title": title, "is_interactive": False},
                         timeout=60)

    def ml(self, ml_id):
        return self.call("GET", f"/api/ml/{ml_id}")

    def retrieve_predictions(self, project, timeout=900):
        """Data Manager action: Label Studio calls the backend's /health, /setup, then /predict with
        the selected tasks that have no prediction of the backend's current model_version."""
        return self.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
                         {"selectedItems": {"all": True, "excluded": []}}, timeout=timeout)

    def train(self, ml_id, timeout=300):
        """Label Studio POSTs {"action": "START_TRAINING", "project": {...}} to the backend's
        /webhook (feature flag ff_back_dev_1417..., on in 1.23). Answers 200 even when the backend
        failed: the backend's state/error_message tell."""
        return self.call("POST", f"/api/ml/{ml_id}/train", {}, timeout=timeout)

    def set_train_on_update(self, project, on):
        # Label Studio stores this as min_annotations_to_start_training = 1 (or 0): with it, every
        # saved annotation makes Label Studio call ml_backend.train() (START_TRAINING) besides the
        # ANNOTATION_* webhook.
        return self.call("PATCH", f"/api/projects/{project}", {"start_training_on_annotation_update": bool(on)})

    # annotations
    def annotate(self, task_id, result, timeout=300):
        return self.call("POST", f"/api/tasks/{task_id}/annotations",
                         {"result": result, "was_cancelled": False, "ground_truth": False, "lead_time": 1.0},
                         timeout=timeout)

    def update_annotation(self, ann_id, result, timeout=300):
        return self.call("PATCH", f"/api/annotations/{ann_id}", {"result": result}, timeout=timeout)

    def delete_annotation(self, ann_id, timeout=300):
        return self.call("DELETE", f"/api/annotations/{ann_id}", timeout=timeout)

    def export(self, project, all_tasks=False):
        """The project's JSON export (annotated tasks only unless all_tasks; predictions as ids)."""
        q = "&download_all_tasks=true" if all_tasks else ""
        return self.call("GET", f"/api/projects/{project}/export?exportType=JSON{q}", timeout=300)


def start_label_studio(procs, venv, workdir, port, log_path):
    """Starts `label-studio start` on 127.0.0.1:port with a fresh data dir under workdir; returns
    (LabelStudio, Popen, seconds until the API answered)."""
    exe = Path(venv) / "bin" / "label-studio"
    if not exe.exists():
        raise Failure(f"{exe} not found; install Label Studio: python3 -m venv {venv} && "
                      f"{venv}/bin/pip install 'label-studio==1.23.*'")
    data = Path(workdir) / "ls-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        # Label Studio refuses ML backends and webhooks on loopback/private addresses otherwise.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        # No calls to pypi.org / analytics at start.
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "PYTHONUNBUFFERED": "1",
    })
    argv = [str(exe), "start", "--no-browser", "--data-dir", str(data), "--internal-host", "127.0.0.1",
            "-p", str(port), "--username", LS_USER, "--password", LS_PASSWORD, "--user-token", LS_TOKEN,
            "--enable-legacy-api-token"]
    t0 = time.monotonic()
    p = procs.start("label-studio", argv, env, log_path, cwd=str(workdir))
    ls = LabelStudio(f"http://127.0.0.1:{port}")

    def ready():
        status, body = http("GET", ls.base + "/api/current-user/whoami", headers=ls.headers, timeout=10)
        return status == 200 and isinstance(body, dict) and body.get("email") == LS_USER

    wait_until("Label Studio start", ready, LS_START_TIMEOUT, interval=1.0, proc=p, log_path=log_path)
    return ls, p, time.monotonic() - t0


def ls_version(venv):
    """label-studio's version in the virtualenv (None if it cannot be read); warns off 1.23.x."""
    try:
        out = subprocess.run([str(Path(venv) / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('label-studio'))"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    v = out.stdout.strip() or None
    if v and not v.startswith("1.23."):
        log(f"warning: Label Studio {v}; this script was written against 1.23.x")
    return v


# ---------------------------------------------------------------- text spans


def chunks(text):
    """Whitespace-separated chunks as (start, end) code-point offsets (Python str indices)."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def is_edge(ch):
    """Punctuation (or a symbol) that may sit at a word's edge outside a region: anything not
    alphanumeric, as metafora's src/data/annotations.rs (`petites.` → `petites`, `«Hola` →
    `Hola`)."""
    return not ch.isalnum()


def word_bounds(text):
    """Allowed region starts and ends: a chunk's start or the start of its core, a chunk's end
    or the end of its core, where the core is the chunk without its leading and trailing
    non-alphanumerics (the whole chunk when it has no alphanumeric, e.g. an emoji)."""
    starts, ends = set(), set()
    for s, e in chunks(text):
        starts.add(s)
        ends.add(e)
        alnum = [i for i in range(s, e) if not is_edge(text[i])]
        if alnum:
            starts.add(alnum[0])
            ends.add(alnum[-1] + 1)
    return starts, ends


def region_problems(text, region):
    """Why a labels region is not a whole-word span of `text` ([] if it is)."""
    v = region.get("value") or {}
    start, end = v.get("start"), v.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        return [f"start/end not integers: {start!r}/{end!r}"]
    if not 0 <= start < end <= len(text):
        return [f"bad span {start}..{end} for a text of {len(text)} code points"]
    starts, ends = word_bounds(text)
    out = []
    if start not in starts:
        out.append(f"start {start} is inside a word")
    if end not in ends:
        out.append(f"end {end} is inside a word")
    if "text" in v and v["text"] != text[start:end]:
        out.append(f"value.text {v['text']!r} != text[{start}:{end}] {text[start:end]!r}")
    if out:
        s0 = max(0, start - 10)
        out.append(f"span {text[start:end]!r} in …{text[s0:end + 10]!r}…")
    return out


def check_whole_words(tasks_by_id, predictions, model_version=None):
    """Returns (regions checked, violations) over the predictions (optionally of one version)."""
    n, bad = 0, []
    for p in predictions:
        if model_version is not None and p.get("model_version") != model_version:
            continue
        task_id = p.get("task")
        text = tasks_by_id[task_id]["data"]["text"]
        for r in p.get("result") or []:
            if r.get("type") != "labels":
                continue
            n += 1
            probs = region_problems(text, r)
            if probs:
                bad.append({"task": task_id, "value": r.get("value"), "problems": probs})
    return n, bad


# ---------------------------------------------------------------- data


def load_sentences():
    rows = []
    for split in ("test", "validation"):
        path = DATASET / f"{split}.jsonl"
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append({"tokens": r["tokens"], "tags": r["tags"], "text": " ".join(r["tokens"])})
    return rows


def pick_tasks(rows, n=30, n_metaphor=20):
    """n sentences: the first n_metaphor with a metaphor and the first others, interleaved so that
    the first 20 tasks (the annotated ones) hold both kinds."""
    met = [r for r in rows if any(r["tags"])][:n_metaphor]
    plain = [r for r in rows if not any(r["tags"])][: n - len(met)]
    out = []
    while met or plain:
        for src, k in ((met, 2), (plain, 1)):
            for _ in range(k):
                if src:
                    out.append(src.pop(0))
    return out[:n]


def gold_regions(row):
    """One METAPHOR region per gold word, offsets in code points, trailing punctuation left out."""
    out, pos = [], 0
    for tok, tag in zip(row["tokens"], row["tags"]):
        start = pos
        pos += len(tok) + 1
        if tag != 1:
            continue
        word = tok
        while len(word) > 1 and is_edge(word[-1]):
            word = word[:-1]
        end = start + len(word)
        assert row["text"][start:end] == word
        out.append({"from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
                    "value": {"start": start, "end": end, "text": word, "labels": ["METAPHOR"]}})
    return out


# ---------------------------------------------------------------- metafora


class Metafora:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def get(self, path, ok=(200,), timeout=60):
        status, body = http("GET", self.base + path, timeout=timeout)
        if status == 404 and "route not found" in json.dumps(body):
            raise Fatal(f"metafora GET {path}: this binary has no such route: {body}")
        return expect((status, body), ok, f"metafora GET {path}")

    def try_get(self, path, timeout=60):
        return http("GET", self.base + path, timeout=timeout)


def start_metafora(procs, binary, workdir, port, log_path, extra_args):
    data = Path(workdir) / "metafora-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", str(data),
            "--database-url", f"sqlite://{data}/m.db"] + list(extra_args)
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    t0 = time.monotonic()
    p = procs.start("metafora", argv, env, log_path, cwd=str(workdir))
    mf = Metafora(f"http://127.0.0.1:{port}")

    def ready():
        status, body = mf.try_get("/labelstudio/health", timeout=5)
        return status == 200 and isinstance(body, dict) and body.get("status") == "UP" and body

    health = wait_until("metafora start", ready, METAFORA_START_TIMEOUT, interval=0.5, proc=p, log_path=log_path)
    return mf, p, time.monotonic() - t0, health


def find_key(obj, name):
    """First value under key `name` anywhere in obj (depth first)."""
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        for v in obj.values():
            r = find_key(v, name)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = find_key(v, name)
            if r is not None:
                return r
    return None


def job_of(project):
    """The training job the metafora project shows: `training.job_id` (`training` is null when
    no job is queued or running), or None."""
    training = project.get("training") if isinstance(project, dict) else None
    if not isinstance(training, dict):
        return None
    v = training.get("job_id")
    if isinstance(v, dict):
        v = v.get("id")
    return v if isinstance(v, str) and v else None


def another_run_requested(project):
    training = project.get("training") if isinstance(project, dict) else None
    return isinstance(training, dict) and bool(training.get("another_run_requested"))


def numbers_with(obj, *words, path=""):
    """{path: number} for numeric leaves whose path holds all `words` (case-insensitive)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numbers_with(v, *words, path=f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if all(w in path.lower() for w in words):
            out[path] = obj
    return out


ENDED = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args):
        self.args = args
        self.checks = []  # {"name", "ok", "detail"}
        self.phases = {}  # name -> seconds
        self.summary = {"checks": self.checks, "phases_s": self.phases}

    def check(self, name, ok, detail=None):
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        shown = f": {detail}" if detail is not None and not ok else ""
        log(("ok    " if ok else "FAIL  ") + name + (shown[:800] + " …" if len(shown) > 800 else shown))
        return ok

    def phase(self, name):
        run = self

        class P:
            def __enter__(self):
                self.t0 = time.monotonic()
                log(f"== {name}")

            def __exit__(self, *exc):
                run.phases[name] = round(time.monotonic() - self.t0, 2)

        return P()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metafora", required=True, help="the metafora binary")
    ap.add_argument("--ls-venv", default=str(DEFAULT_VENV), help="virtualenv with label-studio installed")
    ap.add_argument("--out", help="directory for logs and summary.json (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the servers' data directories under --out")
    ap.add_argument("--metafora-arg", action="append", default=[],
                    help="extra argument for `metafora serve` (repeatable), e.g. --metafora-arg=--device=cpu")
    ap.add_argument("--no-train-on-update", action="store_true",
                    help="leave start_training_on_annotation_update off in step 4 (then only step 5 sends START_TRAINING)")
    ap.add_argument("--train-timeout", type=float, default=3600, help="seconds to wait for the training job")
    ap.add_argument("--bulk-timeout", type=float, default=1800, help="seconds to wait for bulk predictions")
    args = ap.parse_args()

    binary = Path(args.metafora).resolve()
    if not binary.exists():
        sys.exit(f"no metafora binary at {binary}")
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="metafora-ls-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    install_signal_handlers()
    procs = Processes()
    run = Run(args)
    s = run.summary
    s["out"] = str(out)
    t_all = time.monotonic()
    try:
        steps(run, procs, binary, out, work)
    except Failure as e:
        run.check("run completed", False, str(e))
    except KeyboardInterrupt:
        run.check("run completed", False, "interrupted")
    except SystemExit as e:
        run.check("run completed", False, f"signal/exit {e.code}")
    except Exception as e:  # a bug here or an answer of an unexpected shape
        traceback.print_exc()
        run.check("run completed", False, f"{type(e).__name__}: {e}")
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            s["kept_data_dir"] = str(work)
        s["total_s"] = round(time.monotonic() - t_all, 2)
        failed = [c["name"] for c in run.checks if not c["ok"]]
        s["failed_checks"] = failed
        s["ok"] = not failed and bool(run.checks)
        (out / "summary.json").write_text(json.dumps(s, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(json.dumps(s, indent=2, ensure_ascii=False))
        log(f"summary in {out / 'summary.json'}; " + ("ALL CHECKS PASSED" if s["ok"] else f"FAILED: {failed}"))
    sys.exit(0 if s["ok"] else 1)


def steps(run, procs, binary, out, work):
    """Steps 0-4 are needed by everything after them; a Failure there ends the run. Steps 5-6
    (training, predictions again) and 7 (bulk predictions) are independent of each other."""
    args, s = run.args, run.summary
    ctx = {}

    # ---- 0. servers
    with run.phase("0_start"):
        s["label_studio_version"] = ls_version(args.ls_venv)
        ls_port = free_port()
        mf_port = free_port()
        while mf_port == ls_port:
            mf_port = free_port()
        ls, _, t = start_label_studio(procs, args.ls_venv, work, ls_port, out / "label-studio.log")
        s["label_studio_start_s"] = round(t, 2)
        log(f"Label Studio {s['label_studio_version']} on {ls.base} ({s['label_studio_start_s']} s)")
        mf, _, t, health = start_metafora(procs, binary, work, mf_port, out / "metafora.log", args.metafora_arg)
        s["metafora_start_s"] = round(t, 2)
        s["metafora_health"] = health
        log(f"metafora on {mf.base} ({s['metafora_start_s']} s): {health}")
    ctx.update(ls=ls, mf=mf)

    step_project(run, ctx)
    step_connect(run, ctx)
    step_predict(run, ctx)
    step_annotate(run, ctx)
    for name, fn in (("steps 5-6 (training, predictions again)", step_train_and_repredict),
                     ("step 7 (bulk predictions)", step_bulk)):
        try:
            fn(run, ctx)
        except Failure as e:
            run.check(f"{name} completed", False, str(e))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            traceback.print_exc()
            run.check(f"{name} completed", False, f"unexpected answer: {type(e).__name__}: {e}")


def step_project(run, ctx):
    s, ls = run.summary, ctx["ls"]
    with run.phase("1_project"):
        rows = pick_tasks(load_sentences())
        project = ls.create_project("metafora loop")
        imp = ls.import_tasks(project, [{"data": {"text": r["text"]}} for r in rows])
        tasks = ls.tasks(project)
        run.check("step1: 30 tasks imported", len(tasks) == 30 and imp.get("task_count", 30) == 30,
                  {"import": imp, "listed": len(tasks)})
        by_text = {}
        for t in tasks:
            by_text.setdefault(t["data"]["text"], t)
        for r in rows:
            r["task_id"] = by_text[r["text"]]["id"]
        s["project"] = project
        s["tasks"] = len(tasks)
    ctx.update(rows=rows, project=project, tasks_by_id={t["id"]: t for t in tasks})


def step_connect(run, ctx):
    s, ls, mf, project = run.summary, ctx["ls"], ctx["mf"], ctx["project"]
    with run.phase("2_connect"):
        url = f"{mf.base}/labelstudio"
        ml = ls.connect_ml(project, url, "metafora")
        ml_id = ml["id"]
        ml = ls.ml(ml_id)
        s["ml_backend"] = {"id": ml_id, "url": url, "state": ml.get("state"), "model_version": ml.get("model_version")}
        run.check("step2: Label Studio connected the backend (health + setup answered)",
                  ml.get("state") == "CO" and bool(ml.get("model_version")),
                  {"state": ml.get("state"), "model_version": ml.get("model_version"), "error": ml.get("error_message")})
        status, proj = mf.try_get(f"/v1/projects/{project}")
        s["metafora_project_after_setup"] = proj if status == 200 else {"http_status": status, "body": proj}
        run.check(f"step2: metafora GET /v1/projects/{project} knows the project (setup arrived)",
                  status == 200 and isinstance(proj, dict), None if status == 200 else f"HTTP {status}: {proj}")
    ctx["ml_id"] = ml_id


def step_predict(run, ctx):
    s, ls, project, tasks_by_id = run.summary, ctx["ls"], ctx["project"], ctx["tasks_by_id"]
    with run.phase("3_predict"):
        t0 = time.monotonic()
        res = ls.retrieve_predictions(project)
        s["predict1_s"] = round(time.monotonic() - t0, 2)
        preds = ls.predictions(project)
        versions = sorted({p.get("model_version") for p in preds}, key=str)
        s["predict1"] = {"action": res, "predictions": len(preds), "model_versions": versions}
        run.check("step3: one prediction per task",
                  len(preds) == len(tasks_by_id) and {p["task"] for p in preds} == set(tasks_by_id),
                  {"predictions": len(preds), "tasks": len(tasks_by_id)})
        run.check("step3: one model_version", len(versions) == 1 and bool(versions[0]), versions)
        s["model_version_before"] = versions[0] if versions else None
        n, bad = check_whole_words(tasks_by_id, preds)
        s["predict1"]["regions"] = n
        s["predict1"]["whole_word_violations"] = bad
        run.check(f"step3: all {n} predicted regions are whole words", not bad,
                  f"{len(bad)} violations, e.g. {bad[:3]}")
    ctx["v_before"] = s["model_version_before"]


def step_annotate(run, ctx):
    s, ls, mf, project, rows = run.summary, ctx["ls"], ctx["mf"], ctx["project"], ctx["rows"]
    with run.phase("4_annotate"):
        on = not run.args.no_train_on_update
        ls.set_train_on_update(project, on)
        p = ls.call("GET", f"/api/projects/{project}")
        run.check(f"step4: start_training_on_annotation_update = {on}",
                  p.get("start_training_on_annotation_update") is on, p.get("start_training_on_annotation_update"))
        ann_ids, n_regions = [], 0
        t0 = time.monotonic()
        for r in rows[:20]:
            result = gold_regions(r)
            n_regions += len(result)
            a = ls.annotate(r["task_id"], result)
            ann_ids.append(a["id"])
        s["annotations"] = {"count": len(ann_ids), "regions": n_regions,
                            "with_metaphor": sum(1 for r in rows[:20] if any(r["tags"])),
                            "seconds": round(time.monotonic() - t0, 2)}
        ml = ls.ml(ctx["ml_id"])
        run.check("step4: backend not in error after the annotation webhooks",
                  ml.get("state") != "ER" and not ml.get("error_message"),
                  {"state": ml.get("state"), "error": ml.get("error_message")})
        status, proj = mf.try_get(f"/v1/projects/{project}")
        s["metafora_project_after_annotations"] = proj if status == 200 else {"http_status": status, "body": proj}


def step_train_and_repredict(run, ctx):
    s, ls, mf, project, ml_id = run.summary, ctx["ls"], ctx["mf"], ctx["project"], ctx["ml_id"]
    tasks_by_id, v_before = ctx["tasks_by_id"], ctx["v_before"]
    # ---- 5. training
    with run.phase("5_train"):
        before = mf.get(f"/v1/projects/{project}")
        s["job_before_trigger"] = job_of(before)
        decision_before = before.get("last_decision")
        t0 = time.monotonic()
        ls.train(ml_id)
        ml = ls.ml(ml_id)
        s["ml_backend_after_train"] = {"state": ml.get("state"), "error": ml.get("error_message")}
        run.check("step5: Label Studio sent START_TRAINING without error",
                  ml.get("state") != "ER" and not ml.get("error_message"),
                  {"state": ml.get("state"), "error": ml.get("error_message")})
        # START_TRAINING queues a job, or joins the queued/running one (which then asks for another
        # run after it: training.another_run_requested). With train-on-update a job may already be
        # running from the annotations. Follow the project until no job is queued or running and
        # no further run is asked for; the decision is the project's last_decision then.
        seen = [s["job_before_trigger"]] if s["job_before_trigger"] else []
        state = {"idle_since": None, "pending": another_run_requested(before)}
        deadline = time.monotonic() + run.args.train_timeout

        def idle():
            proj = mf.get(f"/v1/projects/{project}")
            j = job_of(proj)
            if j:
                if j not in seen:
                    seen.append(j)
                    log(f"training job {j} ({(proj.get('training') or {}).get('status')})")
                state["idle_since"] = None
                state["pending"] = another_run_requested(proj)
                if (proj.get("training") or {}).get("status") in ENDED:
                    ended_at = state.setdefault(("ended", j), time.monotonic())
                    if time.monotonic() - ended_at > 60:
                        raise Fatal(f"job {j} ended but the project still shows it after 60 s: {proj.get('training')}")
                return False
            if state["idle_since"] is None:
                state["idle_since"] = time.monotonic()
            quiet = time.monotonic() - state["idle_since"]
            changed = proj.get("last_decision") != decision_before
            # Settled: no job for 3 s (60 s when the last job had another run asked for, which
            # is queued when it settles).
            if (seen or changed) and quiet >= (60 if state["pending"] else 3):
                return proj
            if not seen and not changed and time.monotonic() - t0 > 120:
                raise Fatal("no training job appeared within 120 s of START_TRAINING and last_decision did not change")
            return False

        proj = wait_until("training settles", idle, max(1.0, deadline - time.monotonic()), interval=1.0)
        followed = [{"id": j, "status": mf.get(f"/v1/jobs/{j}").get("status")} for j in seen]
        for f in followed:
            log(f"job {f['id']}: {f['status']}")
        s["train_s"] = round(time.monotonic() - t0, 2)
        s["training_jobs"] = followed
        if s["job_before_trigger"]:
            log(f"note: job {s['job_before_trigger']} was already queued/running before the explicit trigger "
                "(a START_TRAINING sent on an annotation); the trigger joined it or asked for another run")
        run.check("step5: a training job ran and the last one succeeded",
                  bool(followed) and followed[-1]["status"] == "succeeded", followed)
        decision = proj.get("last_decision")
        s["decision"] = decision
        s["metafora_project_after_training"] = proj
        deployed = decision.get("deployed") if isinstance(decision, dict) else None
        s["decision_figures"] = {
            "deployed": deployed,
            "candidate_f1": numbers_with(decision, "candidate", "f1"),
            "incumbent_f1": numbers_with(decision, "incumbent", "f1"),
            "reason": decision.get("reason") if isinstance(decision, dict) else None,
        }
        run.check("step5: project shows last_decision with deployed true/false", isinstance(deployed, bool), decision)
        log(f"decision: deployed={deployed} candidate F1 {s['decision_figures']['candidate_f1']} "
            f"incumbent F1 {s['decision_figures']['incumbent_f1']} ({s['decision_figures']['reason']})")

    # ---- 6. predictions after training
    with run.phase("6_predict_again"):
        health = mf.get("/labelstudio/health")
        v_now = health.get("model_version")
        changed = v_now != v_before
        s["model_version_served_after_training"] = v_now
        # What the decision says must match what is served. With train-on-update an earlier job
        # may have deployed a model even when the last decision was "not deployed".
        earlier_jobs = len(s.get("training_jobs") or []) > 1
        if deployed is True:
            run.check("step6: decision deployed → metafora serves a new model_version", changed,
                      {"before": v_before, "now": v_now})
        elif deployed is False:
            if changed and earlier_jobs:
                log(f"note: last decision NOT deployed, but an earlier job of this run deployed {v_now}")
            else:
                log(f"NOT DEPLOYED: the candidate lost, so the model_version is expected to stay {v_before}")
                run.check("step6: decision not deployed → metafora still serves the same model_version",
                          not changed, {"before": v_before, "now": v_now})
        else:
            run.check("step6: decision known", False, "no deployed true/false in the project")
        t0 = time.monotonic()
        res = ls.retrieve_predictions(project)
        s["predict2_s"] = round(time.monotonic() - t0, 2)
        preds = ls.predictions(project)
        new = [p for p in preds if p.get("model_version") != v_before]
        new_versions = sorted({p.get("model_version") for p in new}, key=str)
        ml = ls.ml(ml_id)
        s["predict2"] = {"action": res, "predictions": len(preds), "new_predictions": len(new),
                         "new_model_versions": new_versions, "ml_backend_model_version": ml.get("model_version")}
        s["model_version_after"] = new_versions[0] if len(new_versions) == 1 else (v_before if not new else None)
        if changed:
            run.check(f"step6: every task has a new prediction of model_version {v_now}",
                      new_versions == [v_now] and {p["task"] for p in new} == set(tasks_by_id),
                      {"before": v_before, "new_versions": new_versions, "new_predictions": len(new),
                       "ml_backend_model_version": ml.get("model_version")})
            n, bad = check_whole_words(tasks_by_id, new)
            s["predict2"]["regions"] = n
            s["predict2"]["whole_word_violations"] = bad
            run.check(f"step6: all {n} new regions are whole words", not bad, f"{len(bad)} violations, e.g. {bad[:3]}")
        else:
            run.check(f"step6: model_version unchanged ({v_before}) → Label Studio stored no new prediction",
                      not new, {"before": v_before, "new_versions": new_versions})


def step_bulk(run, ctx):
    s, ls, mf = run.summary, ctx["ls"], ctx["mf"]
    with run.phase("7_bulk"):
        t0 = time.monotonic()
        sub = expect(http("POST", mf.base + "/v1/predictions",
                          {"model": "default", "dataset": {"path": str(DATASET)}, "format": "labelstudio"}, timeout=60),
                     (202,), "metafora POST /v1/predictions")
        pid = sub["id"]
        last = {}

        def done():
            st = mf.get(f"/v1/predictions/{pid}")
            if st.get("status") != last.get("status") or st.get("done") != last.get("done"):
                log(f"bulk {pid}: {st.get('status')} {st.get('done')}/{st.get('total')}")
            last.clear()
            last.update(st)
            if st.get("status") in ("failed", "cancelled"):
                raise Fatal(f"bulk predictions {pid} {st.get('status')}: {st}")
            return st.get("status") == "succeeded" and st

        st = wait_until(f"bulk predictions {pid} succeed", done, run.args.bulk_timeout, interval=1.0)
        secs = time.monotonic() - t0
        status, output = http("GET", f"{mf.base}/v1/predictions/{pid}/output", timeout=300)
        if status != 200 or not isinstance(output, list):
            raise Failure(f"metafora GET /v1/predictions/{pid}/output: HTTP {status}: {str(output)[:500]}")
        bulk_versions = sorted({p.get("model_version") for t in output for p in t.get("predictions", [])}, key=str)
        total = st.get("total") or len(output)
        s["bulk"] = {"id": pid, "status": st, "seconds": round(secs, 2), "tasks": len(output),
                     "sentences_per_s": round(total / secs, 2) if secs > 0 else None, "model_versions": bulk_versions,
                     "same_as_step6": bulk_versions == [s.get("model_version_after")]}
        log(f"bulk: {total} sentences in {secs:.1f} s ({s['bulk']['sentences_per_s']} sentences/s)")
        run.check("step7: output has 369 tasks with one prediction each",
                  len(output) == 369 and all(len(t.get("predictions", [])) == 1 for t in output),
                  {"tasks": len(output)})
        run.check("step7: one model_version in the output", len(bulk_versions) == 1 and bool(bulk_versions[0]),
                  bulk_versions)
        project2 = ls.create_project("metafora bulk import")
        imp = ls.import_tasks(project2, output)
        tasks2 = ls.tasks(project2)
        preds2 = ls.predictions(project2)
        s["bulk"]["import"] = {"project": project2, "response": imp, "tasks": len(tasks2), "predictions": len(preds2)}
        run.check("step7: Label Studio imported 369 tasks", imp.get("task_count") == 369 and len(tasks2) == 369,
                  {"task_count": imp.get("task_count"), "listed": len(tasks2)})
        with_version = {p["task"] for p in preds2 if bulk_versions and p.get("model_version") == bulk_versions[0]}
        run.check("step7: every imported task has a prediction with the bulk model_version",
                  with_version == {t["id"] for t in tasks2}, {"with": len(with_version), "tasks": len(tasks2)})
        n, bad = check_whole_words({t["id"]: t for t in tasks2}, preds2)
        s["bulk"]["regions"] = n
        s["bulk"]["whole_word_violations"] = len(bad)
        run.check(f"step7: all {n} imported regions are whole words", not bad, f"{len(bad)} violations, e.g. {bad[:3]}")

if __name__ == "__main__":
    main()
