#!/usr/bin/env python3
"""Writes the roberta-base-sized model that `metafora bench detect` is run on (no real
roberta-base weights can be downloaded here): RobertaForTokenClassification with roberta-base
dimensions (12 x 768, 12 heads, 3072, vocab 50 262, 514 positions), random init from seed 0,
labels O / METAPHOR, saved as model.safetensors, with the tokenizer files of the tiny
fine-tuned fixture (the pipeline side of the benchmark loads the same directory, so both sides
tokenize alike; that byte-level BPE vocabulary is small, so Catalan sentences come out longer
than with the real roberta-base-ca tokenizer).

    $(../shared/ref/setup.sh) scripts/make_base_model.py /tmp/bench-base
"""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import RobertaConfig, RobertaForTokenClassification

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/tiny-roberta-finetuned"))
args = ap.parse_args()

torch.manual_seed(0)
config = RobertaConfig(
    vocab_size=50262, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
    id2label={0: "O", 1: "METAPHOR"}, label2id={"O": 0, "METAPHOR": 1},
)
model = RobertaForTokenClassification(config)
out = Path(args.out)
model.save_pretrained(out, safe_serialization=True)
for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
    src = Path(args.tokenizer) / name
    if src.exists():
        shutil.copy(src, out / name)
print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters")
