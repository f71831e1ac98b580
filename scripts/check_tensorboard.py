#!/usr/bin/env python3
"""TensorBoard read-back: trains a tiny job with `metafora train` (2 epochs, a training subset
scored each epoch), then reads its event files with Python's `tensorboard` package
(EventAccumulator) and checks the scalars against the run's report.json: a training loss and
learning rate per optimizer step, validation metrics per epoch, the training subset's, base and
fine-tuned test metrics. Exit 1 on any mismatch. CI runs it (.ci/run) with its venv.

    python scripts/check_tensorboard.py --metafora target/debug/metafora
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--metafora", default=os.path.join(ROOT, "target/debug/metafora"))
args = ap.parse_args()

work = tempfile.mkdtemp()
spec = {
    "model": {"checkpoint": os.path.join(ROOT, "tests/fixtures/tiny-roberta-base")},
    "dataset": {"path": os.path.join(ROOT, "tests/fixtures/data/synthetic")},
    "training": {"learning_rate": 5e-4, "num_train_epochs": 2, "eval_train_subset": 20},
    "seed": 42,
}
with open(os.path.join(work, "job.json"), "w") as f:
    json.dump(spec, f)
out = os.path.join(work, "run")
subprocess.run([args.metafora, "train", os.path.join(work, "job.json"), "--device", "cpu", "--output-dir", out],
               check=True, stdout=subprocess.DEVNULL, env={**os.environ, "METAFORA_LOG": "warn"})
report = json.load(open(os.path.join(out, "report.json")))["outcome"]

acc = EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"scalars": 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])
problems = []


def scalars(tag):
    if tag not in tags:
        problems.append(f"missing tag {tag} (have {sorted(tags)})")
        return []
    return acc.Scalars(tag)


def near(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))  # stored as float32


steps = report["epochs"][-1]["step"]
loss = scalars("train/loss")
lr = scalars("train/learning_rate")
if [e.step for e in loss] != list(range(1, steps + 1)):
    problems.append(f"train/loss at steps {[e.step for e in loss][:5]}... want 1..{steps}")
if len(lr) != steps:
    problems.append(f"train/learning_rate has {len(lr)} points, want {steps}")
for name, key in [("eval/f1", "f1"), ("eval/precision", "precision"), ("eval/recall", "recall")]:
    got = [(e.step, e.value) for e in scalars(name)]
    want = [(r["step"], r["eval"][key]) for r in report["epochs"]]
    if len(got) != len(want) or any(g[0] != w[0] or not near(g[1], w[1]) for g, w in zip(got, want)):
        problems.append(f"{name}: {got} vs report {want}")
got = [e.value for e in scalars("eval/loss")]
if len(got) != 2 or any(not near(g, r["eval_loss"]) for g, r in zip(got, report["epochs"])):
    problems.append(f"eval/loss {got}")
sub = [e.value for e in scalars("train_subset/f1")]
if len(sub) != 2 or any(not near(g, r["train_eval"]["f1"]) for g, r in zip(sub, report["epochs"])):
    problems.append(f"train_subset/f1 {sub}")
for kind, key in [("base", "base_test"), ("finetuned", "finetuned_test")]:
    got = [e.value for e in scalars(f"test_{kind}/f1")]
    if len(got) != 1 or not near(got[0], report[key]["f1"]):
        problems.append(f"test_{kind}/f1 {got} vs {report[key]['f1']}")
per_label = [t for t in tags if t.startswith("eval/f1_")]
if not per_label:
    problems.append("no per-label validation F1")

print(f"tensorboard read back {len(tags)} scalar tags, {len(loss)} training steps, "
      f"{len(report['epochs'])} epochs from {out}/tensorboard")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("ok")
