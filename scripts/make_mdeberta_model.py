#!/usr/bin/env python3
"""Writes an mDeBERTa-v3-base-sized token classifier with random weights (no real checkpoint
can be downloaded here) as microsoft/mdeberta-v3-base ships it: `pytorch_model.bin` (1.1 GB,
`deberta.*` + `classifier.*`), `config.json`, and the tokenizer files of the tiny DeBERTa
fixture (`spm.model`, a two-field `tokenizer_config.json`; no tokenizer.json). For loading-memory
and speed measurements.

    $(../shared/ref/setup.sh) scripts/make_mdeberta_model.py /tmp/mdeberta-base
"""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import DebertaV2Config, DebertaV2ForTokenClassification

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/tiny-deberta-v2"))
args = ap.parse_args()

torch.manual_seed(0)
config = DebertaV2Config(
    vocab_size=251000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
    share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
    layer_norm_eps=1e-7, max_relative_positions=-1, pad_token_id=0,
    id2label={0: "O", 1: "B-METAPHOR"}, label2id={"O": 0, "B-METAPHOR": 1},
)
model = DebertaV2ForTokenClassification(config)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
# A PyTorch pickle, as the Hub checkpoint (transformers 5 would write safetensors).
config.save_pretrained(out)
torch.save(model.state_dict(), out / "pytorch_model.bin")
for f in ["spm.model", "tokenizer_config.json"]:
    shutil.copy(Path(args.tokenizer) / f, out / f)
print(f"{out}: {sum(p.numel() for p in model.parameters())} parameters, "
      f"{(out / 'pytorch_model.bin').stat().st_size / 2**20:.0f} MiB")
