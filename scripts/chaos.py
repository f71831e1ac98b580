#!/usr/bin/env python3
"""Scale-out chaos test (issue 16): 1 API + 3 `metafora worker` processes on PostgreSQL and an
S3-compatible store, 12 short jobs on the tiny fixture, a bounded loop that kill -9s a random
worker every few seconds and restarts it (sometimes only after its lease ran out, so another
worker takes the job). Asserts: every job succeeded, finished once; every epoch stored once;
final metrics bit-identical to an uninterrupted run of the same spec (its own SQLite server);
no two workers ran a job at once (lease history against the kill log). Then the scaling figure:
the same 12 jobs with 1 and with 2 workers (RAYON_NUM_THREADS=1 each).

Needs METAFORA_PG_URL (scripts/pg_temp.sh), AWS_* + METAFORA_S3_URL (scripts/moto_temp.sh),
psql on PATH. Prints a JSON summary; exits non-zero on any violated property.
"""
import argparse, datetime, json, os, random, shutil, signal, socket, subprocess, sys, tempfile
import threading, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def http(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def psql(url, sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-F", "\t", "-d", url, "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def createdb(base, name):
    psql(base, f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


def job(seed, epochs):
    return {"model": {"checkpoint": os.path.join(FIX, "tiny-roberta-base")},
            "dataset": {"path": os.path.join(FIX, "data", "synthetic-small")},
            "training": {"learning_rate": 2e-3, "num_train_epochs": epochs,
                         "save_total_limit": 2},
            "seed": seed}


class Proc:
    def __init__(self, args, log, env):
        self.args, self.log, self.env = args, log, env
        self.p = None

    def start(self):
        self.p = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                  env=self.env)
        return self.p.pid

    def kill9(self):
        self.p.send_signal(signal.SIGKILL); self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def wait_up(base, t=60):
    end = time.time() + t
    while time.time() < end:
        try:
            if http("GET", base + "/health", timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{base} did not start")


def results(base, jid):
    _, r = http("GET", f"{base}/v1/jobs/{jid}/results")
    _, e = http("GET", f"{base}/v1/jobs/{jid}/epochs")
    # Everything but timings.
    fin = {k: v for k, v in r["finetuned"].items() if "second" not in k}
    return {"finetuned": fin, "epochs": [(x["epoch"], x["step"], x["eval_loss"], x["eval"],
                                          x["train_loss"], x["learning_rate"])
                                         for x in e["epochs"]]}


def listen(base, jid, got):
    """Appends (event id, arrival unix ms) of job `jid`'s SSE stream to `got` until it ends."""
    try:
        with urllib.request.urlopen(f"{base}/v1/jobs/{jid}/events", timeout=600) as r:
            for raw in r:
                line = raw.decode().strip()
                if line.startswith("id:"):
                    got.append((int(line[3:].strip()), time.time() * 1000))
    except Exception as e:  # the stream's end or the server's stop
        got.append(("end", str(e)))


def run_fleet(bin_, db, s3, work, n_workers, jobs, chaos, lease, seed, outage=0, probe=None):
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, METAFORA_LOG="info", RAYON_NUM_THREADS="1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = ["--database-url", db, "--allow-path", FIX, "--device", "cpu"]
    if s3:
        common += ["--artifacts", s3]
    api = Proc([bin_, "serve", "--no-worker", "--bind", f"127.0.0.1:{port}",
                "--data-dir", f"{work}/api", "--max-crashes", "1000"] + common,
               f"{work}/api.log", env)
    api.start()
    wait_up(base)
    workers = {}
    pids = {}
    for i in range(n_workers):
        name = f"w{i}"
        workers[name] = Proc([bin_, "worker", "--worker-name", name, "--lease-seconds", str(lease),
                              "--max-crashes", "1000", "--data-dir", f"{work}/{name}"] + common,
                             f"{work}/{name}.log", env)
        pids.setdefault(name, []).append(workers[name].start())
    t0 = time.time()
    ids = []
    for j in jobs:
        code, body = http("POST", base + "/v1/jobs", j)
        assert code == 201, (code, body)
        ids.append(body["id"])
    heard = []
    if probe:
        threading.Thread(target=listen, args=(base, ids[0], heard), daemon=True).start()
    kills = []  # (worker name, pid, unix ms of the kill)
    rng = random.Random(seed)
    pending = {}  # name -> restart time
    outage_at = None
    if chaos:
        end = time.time() + chaos
        while time.time() < end:
            if outage and outage_at is None and time.time() >= end - chaos + 6:
                # 6 s in, while jobs run: the database goes away (immediate shutdown) and
                # comes back.
                outage_at = time.time()
                pg = os.path.join(ROOT, "scripts", "pg_temp.sh")
                subprocess.run([pg, "pause", os.environ["METAFORA_PG_DIR"]], check=True)
                time.sleep(outage)
                subprocess.run([pg, "resume", os.environ["METAFORA_PG_DIR"]], check=True)
            time.sleep(rng.uniform(2.0, 4.0))
            now = time.time()
            for name, at in list(pending.items()):
                if now >= at:
                    pids[name].append(workers[name].start()); del pending[name]
            alive = [n for n in workers if n not in pending]
            if not alive:
                continue
            victim = rng.choice(alive)
            pid = workers[victim].p.pid
            workers[victim].kill9()
            kills.append((victim, pid, int(time.time() * 1000)))
            # One restart in three waits past the lease: another worker takes the job.
            if rng.random() < 1 / 3:
                pending[victim] = time.time() + lease + 2
            else:
                pids[victim].append(workers[victim].start())
        for name in list(pending):
            pids[name].append(workers[name].start())
    deadline = time.time() + 900
    while time.time() < deadline:
        try:
            st = [http("GET", f"{base}/v1/jobs/{i}")[1]["status"] for i in ids]
        except Exception:
            st = []
        if st and all(s in ("succeeded", "failed", "cancelled", "interrupted") for s in st):
            break
        time.sleep(1)
    wall = time.time() - t0
    logs = [line for n in workers for line in open(f"{work}/{n}.log", errors="replace")]
    fenced = sum(1 for line in logs
                 if "run stopped before writing" in line or "store failed mid-job" in line)
    out = {"wall_s": wall, "ids": ids, "kills": kills, "base": base, "stopped_by_outage": fenced, "logs": logs,
           "outage_s": outage if outage_at else 0,
           "statuses": [http("GET", f"{base}/v1/jobs/{i}")[1]["status"] for i in ids],
           "results": {i: results(base, i) for i in ids}}
    _, out["workers"] = http("GET", base + "/v1/workers")
    if probe:
        out["probe"] = probe_results(base, db, ids[0], heard, probe)
    for w in workers.values():
        w.stop()
    api.stop()
    return out


def probe_results(base, db, jid, heard, model):
    """SSE latency across processes (event written by a worker, read by the API node's stream)
    and the deployment a worker made, served by the API node from the artifact store."""
    created = {int(i): c for i, c in psql(db, f"SELECT id, created_at FROM events WHERE job_id = '{jid}'")}
    lags = sorted(ms - datetime.datetime.fromisoformat(created[i].replace("Z", "+00:00")).timestamp() * 1000
                  for i, ms in heard if i != "end" and i in created)
    res = {"events": len(created), "events_streamed": len(lags)}
    if lags:
        res["sse_lag_ms_median"] = round(lags[len(lags) // 2], 1)
        res["sse_lag_ms_p90"] = round(lags[int(len(lags) * 0.9)], 1)
        res["sse_lag_ms_max"] = round(lags[-1], 1)
    version = psql(db, f"SELECT version FROM deployments WHERE name = '{model}' AND active = 1")
    res["deployed_version"] = version[0][0] if version else None
    served = None
    for _ in range(40):
        code, d = http("POST", base + "/v1/detect", {"text": "El temps vola.", "model": model})
        if code == 200:
            served = d.get("model_version")
            break
        time.sleep(0.5)
    res["served_version"] = served
    return res


STOP_PHRASES = ("run stopped before writing", "store failed mid-job", "lease lost")


def check_chaos(db, out, epochs, reference):
    bad = []
    ids = out["ids"]
    for i, s in zip(ids, out["statuses"]):
        if s != "succeeded":
            bad.append(f"job {i} is {s}")
    fin = dict((r[0], int(r[1])) for r in psql(
        db, "SELECT job_id, COUNT(*) FROM events WHERE kind = 'finished' GROUP BY job_id"))
    for i in ids:
        if fin.get(i) != 1:
            bad.append(f"job {i} finished {fin.get(i)} times")
    ep = dict((r[0], int(r[1])) for r in psql(db, "SELECT job_id, COUNT(*) FROM epochs GROUP BY job_id"))
    for i in ids:
        if ep.get(i) != epochs:
            bad.append(f"job {i} has {ep.get(i)} epoch rows, want {epochs}")
    for i, r in out["results"].items():
        if r != reference:
            bad.append(f"job {i} metrics differ from the uninterrupted run: {r} vs {reference}")
    # Lease history: consecutive leases of a job never overlap. A lease ended cleanly
    # (finished/requeued) ended before the next began; a lease taken back (expired/reclaimed)
    # belonged to a worker process that was dead (killed) before the next lease began.
    rows = psql(db, "SELECT l.job_id, l.worker_id, l.acquired_ms, l.renewed_ms, l.ended_ms, "
                    "COALESCE(l.outcome, ''), w.pid FROM leases l JOIN workers w ON w.id = l.worker_id "
                    "ORDER BY l.job_id, l.id")
    killed = {int(pid): ms for _, pid, ms in out["kills"]}
    by_job = {}
    for r in rows:
        by_job.setdefault(r[0], []).append(r)
    taken_back = 0
    for jid, ls in by_job.items():
        for a, b in zip(ls, ls[1:]):
            acq_b = int(b[2])
            if a[5] in ("finished", "requeued"):
                if not int(a[4]) <= acq_b:
                    bad.append(f"job {jid}: lease {a} ended after {b} began")
            else:
                taken_back += 1
                pid = int(a[6])
                dead = pid in killed and killed[pid] <= acq_b
                # A live worker may lose a lease only to the database outage, and then must
                # have stopped the run before writing (its log says so for this job).
                stopped = any(jid in line and any(p in line for p in STOP_PHRASES)
                              for line in out["logs"])
                if not dead and not stopped:
                    bad.append(f"job {jid}: lease {a} taken back while its worker (pid {pid}) "
                               "lived and kept running")
        if ls and ls[-1][5] != "finished":
            bad.append(f"job {jid}: last lease ended {ls[-1][5]!r}")
    return bad, len(rows), taken_back


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metafora", required=True)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--chaos-seconds", type=float, default=60)
    ap.add_argument("--lease", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scaling", action="store_true", help="also time 1 vs 2 workers")
    ap.add_argument("--db-outage", type=float, default=0,
                    help="after the kill loop, stop PostgreSQL this many seconds (needs METAFORA_PG_DIR)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    pg = os.environ["METAFORA_PG_URL"]
    s3 = os.environ.get("METAFORA_S3_URL")
    work = a.out or tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(work, exist_ok=True)
    spec = job(42, a.epochs)
    summary = {}
    # Reference: the same spec once, uninterrupted, on its own SQLite server.
    t = time.time()
    ref = run_fleet(a.metafora, f"sqlite://{work}/ref.db", None, f"{work}/ref", 1, [spec], 0,
                    15, a.seed)
    assert ref["statuses"] == ["succeeded"], ref["statuses"]
    reference = ref["results"][ref["ids"][0]]
    summary["reference_s"] = round(time.time() - t, 1)
    summary["reference_test_f1"] = reference["finetuned"]["f1"]
    # Chaos on PostgreSQL + S3.
    db = createdb(pg, f"chaos_{int(time.time())}")
    os.makedirs(f"{work}/chaos", exist_ok=True)
    first = dict(spec, deploy_as="chaos-demo")
    out = run_fleet(a.metafora, db, s3, f"{work}/chaos", 3, [first] + [spec] * (a.jobs - 1),
                    a.chaos_seconds, a.lease, a.seed, a.db_outage, probe="chaos-demo")
    p = out["probe"]
    bad_probe = []
    if p["events_streamed"] != p["events"]:
        bad_probe.append(f"the API node streamed {p['events_streamed']} of {p['events']} events")
    if not p["deployed_version"] or p["served_version"] != p["deployed_version"]:
        bad_probe.append(f"deployment made by a worker served as {p['served_version']}, "
                         f"recorded {p['deployed_version']}")
    bad, leases, taken_back = check_chaos(db, out, a.epochs, reference)
    bad += bad_probe
    summary["chaos"] = {"jobs": a.jobs, "epochs": a.epochs, "workers": 3, "kills": len(out["kills"]),
                        "leases": leases, "leases_taken_back": taken_back,
                        "wall_s": round(out["wall_s"], 1), "violations": bad,
                        "db_outage_s": out["outage_s"],
                        "runs_stopped_by_the_outage": out["stopped_by_outage"],
                        "probe": p,
                        "all_succeeded_once": not bad}
    if a.scaling:
        for n in (1, 2):
            dbn = createdb(pg, f"scale{n}_{int(time.time())}")
            os.makedirs(f"{work}/scale{n}", exist_ok=True)
            o = run_fleet(a.metafora, dbn, s3, f"{work}/scale{n}", n, [spec] * a.jobs, 0, 15, a.seed)
            assert all(s == "succeeded" for s in o["statuses"]), o["statuses"]
            summary[f"workers_{n}_wall_s"] = round(o["wall_s"], 1)
        summary["speedup_2_vs_1"] = round(summary["workers_1_wall_s"] / summary["workers_2_wall_s"], 2)
    print(json.dumps(summary, indent=1))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
