#!/usr/bin/env python3
"""Writes tests/fixtures/parity/text_encoding.json: how transformers encodes raw texts (the
/detect path) with add_prefix_space=True: ids, tokens, code-point offsets, word ids.

Run with the reference venv:  $(../shared/ref/setup.sh) scripts/make_text_encoding_fixture.py
"""
import json
import os

import transformers
from transformers import AutoTokenizer

TEXTS = [
    "😀 L'home d'una col·lecció menja pèsols, però l'àvia… somriu!",
    "La por devora el seu cor cada nit.",
    "Aquest 2024 costarà 1.500 € — o més — a l'Ajuntament de Sant Cugat.",
    "L'esperança brilla com una estrella en la foscor, però la crisi econòmica ofega les famílies.",
]

here = os.path.dirname(os.path.abspath(__file__))
fx = os.path.join(here, "..", "tests", "fixtures")
tok = AutoTokenizer.from_pretrained(os.path.join(fx, "tiny-roberta"), add_prefix_space=True)
items = []
for text in TEXTS:
    e = tok(text, return_offsets_mapping=True)
    items.append({"text": text, "input_ids": e["input_ids"], "tokens": tok.convert_ids_to_tokens(e["input_ids"]),
                  "offsets": [list(o) for o in e["offset_mapping"]], "word_ids": e.word_ids()})
with open(os.path.join(fx, "parity", "text_encoding.json"), "w") as f:
    json.dump({"meta": {"transformers": transformers.__version__, "call": "tokenizer(text, return_offsets_mapping=True), add_prefix_space=True"},
               "items": items}, f, ensure_ascii=False, indent=1)
