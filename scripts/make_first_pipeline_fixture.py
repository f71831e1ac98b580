"""Writes tests/fixtures/parity/finetuned_pipeline_first.json: transformers' token-classification
pipeline with aggregation_strategy="first" on the fine-tuned tiny RoBERTa fixture and the texts of
finetuned_pipeline.json (the reference for whole-word Label Studio regions).

Run from the repository root with the reference venv:
    ~/.cache/metafora-ref/venv/bin/python scripts/make_first_pipeline_fixture.py
"""
import json, sys
from transformers import pipeline
d = json.load(open('tests/fixtures/parity/finetuned_pipeline.json'))
p = pipeline("token-classification", model="tests/fixtures/tiny-roberta-finetuned", aggregation_strategy="first", device="cpu")
items = []
for it in d["items"]:
    out = p(it["text"])
    items.append({"text": it["text"], "first": [{"entity_group": e["entity_group"], "score": round(float(e["score"]), 6), "word": e["word"], "start": int(e["start"]), "end": int(e["end"])} for e in out]})
import transformers
json.dump({"model_dir": "fixtures/tiny-roberta-finetuned", "generator": "scripts/make_first_pipeline_fixture.py", "transformers": transformers.__version__, "aggregation_strategy": "first", "items": items}, open('tests/fixtures/parity/finetuned_pipeline_first.json', 'w'), ensure_ascii=False, indent=1)
print(len(items))
