#!/usr/bin/env python3
"""Export round trip: loads a directory exported by metafora (a run's best_model) with Python
transformers, checks there are no missing/unexpected keys and that the exported tokenizer
tokenizes the words as metafora did, and prints max |Δ| of the logits against metafora's own
forward on the same sentences. Any family (RoBERTa, XLM-R, DeBERTa-v2/v3).

    $(../shared/ref/setup.sh) scripts/export_roundtrip.py runs/x/best_model \
        --sentences tests/fixtures/data/synthetic/test.jsonl --metafora target/release/metafora
"""
import argparse
import json
import subprocess

import numpy as np
import torch
import transformers
from transformers import AutoModelForTokenClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("--sentences", required=True)
ap.add_argument("--metafora", default="target/release/metafora")
ap.add_argument("--n", type=int, default=50)
args = ap.parse_args()

model, info = AutoModelForTokenClassification.from_pretrained(args.model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
print(f"transformers {transformers.__version__}: loading info {info}")
lines = [l for l in open(args.sentences) if l.strip()][: args.n]
tmp = "/tmp/metafora-roundtrip.jsonl"
open(tmp, "w").write("".join(lines))
out = subprocess.run([args.metafora, "bench", "logits", "--model", args.model_dir, "--sentences", tmp],
                     check=True, capture_output=True, text=True).stdout
tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
worst, token_mismatches = 0.0, 0
for row in map(json.loads, out.splitlines()):
    # The exported tokenizer, loaded by transformers, tokenizes the words as metafora did.
    hf_ids = tokenizer(row["tokens"], is_split_into_words=True)["input_ids"]
    token_mismatches += hf_ids != row["input_ids"]
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy().reshape(-1)
    worst = max(worst, float(np.max(np.abs(ref - np.array(row["logits"], dtype=np.float32)))))
print(f"{len(lines)} sentences: max |logits(transformers) - logits(metafora)| = {worst:.3e}; "
      f"missing/unexpected/mismatched keys: {problems or 'none'}; "
      f"sentences tokenized differently by the exported tokenizer: {token_mismatches}")
raise SystemExit(0 if not problems and worst < 1e-4 and token_mismatches == 0 else 1)
