#!/usr/bin/env python3
"""Builds tests/fixtures/hub (run with the reference venv; not part of CI):

- model/: a model repo laid out like projecte-aina/roberta-base-ca-v2 — config.json,
  pytorch_model.bin (RobertaForMaskedLM keys roberta.* + lm_head.*), vocab.json, merges.txt,
  tokenizer_config.json, special_tokens_map.json; no tokenizer.json, no safetensors.
  Weights: tests/fixtures/tiny-roberta-mlm.
- dataset-main/: the dataset repo's main branch: README.md whose card declares the ClassLabel
  names (and no data files the loader can use).
- dataset-parquet/: its refs/convert/parquet branch: default/{train,validation,test}/0000.parquet
  from tests/fixtures/data/synthetic-small, tags as ClassLabel ids.
- tiny-roberta-bin/: tests/fixtures/tiny-roberta with pytorch_model.bin instead of safetensors.
"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
fx = os.path.join(here, "..", "tests", "fixtures")
hub = os.path.join(fx, "hub")

def to_bin(src_dir, dst_dir, files):
    os.makedirs(dst_dir, exist_ok=True)
    sd = load_file(os.path.join(src_dir, "model.safetensors"))
    torch.save({k: v.contiguous() for k, v in sd.items()}, os.path.join(dst_dir, "pytorch_model.bin"))
    for f in files:
        shutil.copy(os.path.join(src_dir, f), os.path.join(dst_dir, f))

tok_files = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
to_bin(os.path.join(fx, "tiny-roberta-mlm"), os.path.join(hub, "model"), ["config.json"] + tok_files)
to_bin(os.path.join(fx, "tiny-roberta"), os.path.join(fx, "tiny-roberta-bin"), ["config.json", "tokenizer.json"] + tok_files)

import pyarrow as pa
import pyarrow.parquet as pq
labels = ["O", "METAPHOR"]
for split in ["train", "validation", "test"]:
    rows = [json.loads(l) for l in open(os.path.join(fx, "data", "synthetic-small", f"{split}.jsonl"))]
    table = pa.table({"id": [str(i) for i in range(len(rows))],
                      "tokens": [r["tokens"] for r in rows],
                      "tags": [r["tags"] for r in rows]})
    d = os.path.join(hub, "dataset-parquet", "default", split)
    os.makedirs(d, exist_ok=True)
    pq.write_table(table, os.path.join(d, "0000.parquet"), compression="snappy")
os.makedirs(os.path.join(hub, "dataset-main"), exist_ok=True)
card = """---
license: apache-2.0
dataset_info:
  features:
  - name: id
    dtype: string
  - name: tokens
    sequence: string
  - name: tags
    sequence:
      class_label:
        names:
          '0': O
          '1': METAPHOR
  splits:
  - name: train
    num_examples: 160
  - name: validation
    num_examples: 40
  - name: test
    num_examples: 40
---
# metaphor-small

Synthetic Catalan-like sentences with word-level metaphor tags (a stand-in for
mariadelcarmenramirez/metaphor-catalan-iter1 in metafora's tests).
"""
open(os.path.join(hub, "dataset-main", "README.md"), "w").write(card)
open(os.path.join(hub, "dataset-main", ".gitattributes"), "w").write("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
print("ok")
