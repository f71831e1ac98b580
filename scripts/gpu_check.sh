#!/usr/bin/env bash
# GPU check, run on a machine with an NVIDIA GPU and no Rust: the `cuda` binary built elsewhere
# (CUDARC_CUDA_VERSION matching the driver's CUDA), xz-compressed in .carry/metafora-cuda.xz.
# Fixture parity on the GPU, forward/train-step timings next to PyTorch (if python3 has torch),
# the demo job trained by the service on the GPU, /detect on its model. Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/metafora-gpu}; mkdir -p "$OUT"
B=/tmp/metafora-cuda
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.carry/metafora-cuda.xz'), open('$B','wb'))"
chmod +x "$B"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
nvrtc=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null | head -1)
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
echo "CUDA_PATH=$CUDA_PATH nvrtc=$nvrtc" | tee -a "$OUT/gpu.txt"
export METAFORA_ASSETS=$PWD/assets METAFORA_LOG=warn
# The binary looks for bench/ scripts under its build-time source path.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }

echo "== parity on cuda"
timeout 150 "$B" bench parity --device cuda --fixtures tests/fixtures 2>&1 | tee "$OUT/parity.txt"

echo "== model timings (cuda vs PyTorch cuda)"
timeout 200 "$B" bench model --sizes tiny,base,mdeberta-base --device cuda --iters 20 --warmup 3 \
  --python python3 --torch-device cuda --torch-threads 16 2>&1 | tee "$OUT/model.txt"

echo "== demo job through the service on cuda, then /detect"
rm -rf /tmp/srv && mkdir -p /tmp/srv
"$B" serve --device cuda --bind 127.0.0.1:8080 --data-dir /tmp/srv/data \
  --database-url sqlite:///tmp/srv/db.sqlite > "$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 60); do curl -fs localhost:8080/health > /dev/null && break; sleep 1; done
curl -s localhost:8080/health; echo
t0=$(date +%s)
job=$(curl -s -X POST localhost:8080/v1/jobs -H 'content-type: application/json' -d '{"preset": "demo"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
timeout 300 curl -sN "localhost:8080/v1/jobs/$job/events" | grep -E '^event: (epoch|finished)' | uniq -c
echo "demo job wall seconds: $(( $(date +%s) - t0 ))"
curl -s "localhost:8080/v1/jobs/$job" | tee "$OUT/job.json" | python3 -c 'import sys,json; j=json.load(sys.stdin); print(j["status"], j["device"], j["error"])'
curl -s "localhost:8080/v1/jobs/$job/epochs" > "$OUT/epochs.json"
python3 -c "
import json; e=json.load(open('$OUT/epochs.json'))['epochs']
print('epochs', len(e), 'train seconds per epoch: median %.2f' % sorted(x['train_seconds'] for x in e)[len(e)//2],
      'first %.2f' % e[0]['train_seconds'], 'eval+save per epoch %.2f' % (sum(x['eval_seconds'] for x in e)/len(e)))"
curl -s "localhost:8080/v1/jobs/$job/results" | python3 -c 'import sys,json; r=json.load(sys.stdin); print("base f1", r["base"]["f1"], "finetuned f1", r["finetuned"]["f1"])'
curl -s -X POST localhost:8080/v1/models -H 'content-type: application/json' -d "{\"name\": \"gpu\", \"job_id\": \"$job\"}"; echo
curl -s localhost:8080/v1/detect -H 'content-type: application/json' -d '{"text": "Va parlar amb un to suau.", "model": "gpu", "aggregation_strategy": "first"}' | tee "$OUT/detect.json"; echo
kill "$pid"; wait "$pid" 2>/dev/null
echo "== done"
