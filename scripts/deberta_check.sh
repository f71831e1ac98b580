#!/usr/bin/env bash
# DeBERTa end to end (issue 13): `metafora train` from the tiny DeBERTa-v2 pre-training layout
# (`cls.*`, `lm_predictions.*`, `mask_predictions.*` heads ignored) on the synthetic corpus with
# the reference's settings (lr 5e-4, 15 epochs, batch 8, seed 42), then the exported best model
# loaded by Python transformers: no missing/unexpected keys, same tokenization, same logits.
#
#   cargo build --release
#   PYTHON=~/.cache/metafora-ref/venv/bin/python scripts/deberta_check.sh [output dir]
#
# HF Trainer reference for the same job: tests/fixtures/parity/deberta_finetune_reference.json
# (test F1 0.975). Not part of CI (needs torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BIN=${METAFORA:-target/release/metafora}
OUT=${1:-$(mktemp -d)}
DATA=tests/fixtures/data/synthetic
mkdir -p "$OUT"
cat > "$OUT/job.json" <<JSON
{"model": {"checkpoint": "$PWD/tests/fixtures/tiny-deberta-v2-mlm"},
 "dataset": {"path": "$PWD/$DATA"},
 "training": {"learning_rate": 5e-4, "num_train_epochs": 15, "per_device_train_batch_size": 8},
 "seed": 42}
JSON
start=$(date +%s)
METAFORA_LOG=warn "$BIN" train "$OUT/job.json" --device cpu --output-dir "$OUT/run" >/dev/null
echo "metafora train: $(( $(date +%s) - start )) s wall"
"$PYTHON" - "$OUT/run/report.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["outcome"]
print(f"base test F1 {o['base_test']['f1']:.4f}  fine-tuned test F1 {o['finetuned_test']['f1']:.4f}  "
      f"best epoch {o['best_epoch']} (validation F1 {o['best_metric']:.4f})")
print("validation F1 per epoch:", " ".join(f"{e['eval']['f1']:.4f}" for e in o["epochs"]))
PY
"$PYTHON" scripts/export_roundtrip.py "$OUT/run/best_model" --sentences "$DATA/test.jsonl" --metafora "$BIN"
