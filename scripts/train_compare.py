#!/usr/bin/env python3
"""Same job, same machine, one after the other: `metafora train` (release build) and the Python
reference (`../shared/ref/ref_pipeline.py`, transformers Trainer). Prints test F1 (base and
fine-tuned) and training throughput for both, as a JSON line per run.

    cargo build --release
    python3 scripts/train_compare.py --model ../shared/fixtures/tiny-roberta-base \
        --data ../shared/data/synthetic --lr 5e-4 --epochs 2 --seeds 42 \
        --python ~/.cache/metafora-ref/venv/bin/python

Throughput is training sentences per second of training time (per-epoch training wall time,
validation and checkpointing excluded, on both sides); `whole_run` divides by the whole
fine-tuning wall time including per-epoch validation and saving (the Trainer's own figure).
Not part of CI (needs torch).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(path):
    with open(path) as f:
        return sum(1 for l in f if l.strip())


def run_metafora(a, seed, out):
    spec = {"model": {"checkpoint": os.path.abspath(a.model)}, "dataset": {"path": os.path.abspath(a.data)},
            "training": {"learning_rate": a.lr, "num_train_epochs": a.epochs}, "seed": seed}
    path = os.path.join(out, "job.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    subprocess.run([a.binary, "train", path, "--device", "cpu", "--output-dir", os.path.join(out, "m")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "METAFORA_LOG": "warn"})
    with open(os.path.join(out, "m", "report.json")) as f:
        o = json.load(f)["outcome"]
    train_s = sum(e["train_seconds"] for e in o["epochs"])
    whole = sum(e["train_seconds"] + e["eval_seconds"] for e in o["epochs"])
    return {"base_f1": o["base_test"]["f1"], "finetuned_f1": o["finetuned_test"]["f1"],
            "best_epoch": o["best_epoch"], "train_seconds": train_s, "whole_run_seconds": whole}


def run_python(a, seed, out):
    script = os.path.join(a.ref, "ref_pipeline.py")
    subprocess.run([a.python, script, "--model-dir", a.model, "--data-dir", a.data, "--output-dir",
                    os.path.join(out, "p"), "--lr", str(a.lr), "--epochs", str(a.epochs), "--seed", str(seed),
                    "--threads", str(a.threads), "--skip-latency"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "p", "report.json")) as f:
        r = json.load(f)
    train_s = sum(e["train_seconds"] for e in r["epoch_times"])
    return {"base_f1": r["base_test"]["overall_f1"], "finetuned_f1": r["finetuned_test"]["overall_f1"],
            "train_seconds": train_s, "whole_run_seconds": r["train_metrics"]["train_runtime"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/metafora"))
    ap.add_argument("--python", help="Python with the reference's requirements; omit for metafora only")
    ap.add_argument("--ref", default=os.path.join(ROOT, "..", "shared", "ref"))
    a = ap.parse_args()
    samples = lines(os.path.join(a.data, "train.jsonl")) * a.epochs
    for seed in [int(s) for s in a.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            row = {"model": os.path.basename(os.path.normpath(a.model)), "data": os.path.basename(os.path.normpath(a.data)),
                   "lr": a.lr, "epochs": a.epochs, "seed": seed, "threads": a.threads}
            m = run_metafora(a, seed, out)
            row["metafora"] = {**m, "samples_per_second": samples / m["train_seconds"],
                               "whole_run_samples_per_second": samples / m["whole_run_seconds"]}
            if a.python:
                p = run_python(a, seed, out)
                row["python"] = {**p, "samples_per_second": samples / p["train_seconds"],
                                 "whole_run_samples_per_second": samples / p["whole_run_seconds"]}
                row["throughput_ratio"] = row["metafora"]["samples_per_second"] / row["python"]["samples_per_second"]
                row["whole_run_ratio"] = (row["metafora"]["whole_run_samples_per_second"]
                                          / row["python"]["whole_run_samples_per_second"])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
