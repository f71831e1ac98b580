#!/usr/bin/env bash
# Issue 19's figures in one run (a quiet machine: nothing else running), written to
# bench/results/cpu-limit-*.txt:
#   - the CPU's peak (`bench peak`);
#   - the dense-layer kernels per instruction set and format against `gemm` (`bench kernels`);
#   - `bench model --forward-only` tiny + roberta-base size, f32/bf16/int8, against PyTorch
#     f32/bf16/int8 (quantize_dynamic) in the same run, 1 and 2 threads;
#   - `bench detect` on the tiny fine-tuned fixture and the roberta-base-sized model, per
#     format, against the pipeline (f32, and int8 when metafora runs int8), 1 and 2 threads.
#
#   scripts/cpu_limit.sh [METAFORA_BINARY] [PYTHON]
# PYTHON: the reference venv's python (`../shared/ref/setup.sh` prints it). The base-size
# model is made by scripts/make_base_model.py into /tmp/bench-base when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/metafora}
PY=${2:-$HOME/.cache/metafora-ref/venv/bin/python}
OUT=bench/results
SENT=assets/data/ca_meta4xnli/test.jsonl
[ -d /tmp/bench-base ] || "$PY" scripts/make_base_model.py /tmp/bench-base
"$BIN" bench peak | tee "$OUT/cpu-limit-peak.txt"
RAYON_NUM_THREADS=1 "$BIN" bench kernels --rows 1,24,128,512 \
  --shapes 768x768,768x3072,3072x768 --iters 15 | tee "$OUT/cpu-limit-kernels-1thread.txt"
for t in 1 2; do
  RAYON_NUM_THREADS=$t "$BIN" bench model --sizes tiny,base --forward-only --device cpu \
    --precision f32,bf16,int8 --python "$PY" --torch-threads $t --iters 10 \
    | tee "$OUT/cpu-limit-model-${t}thread.txt"
done
for t in 2 1; do
  for m in base tiny; do
    model=/tmp/bench-base
    [ $m = tiny ] && model=tests/fixtures/tiny-roberta-finetuned
    for p in f32 bf16 int8; do
      RAYON_NUM_THREADS=$t "$BIN" bench detect --model $model --sentences $SENT \
        --python "$PY" --torch-threads $t --clients 1,16 --seconds 8 --precision $p 2>/dev/null \
        | tee "$OUT/cpu-limit-detect-$m-$p-${t}thread.txt"
    done
  done
done
