#!/usr/bin/env python3
"""Checks that a Hugging Face cache written by metafora is readable by Python huggingface_hub.

    METAFORA_TEST_HF_CACHE=/tmp/hf-cache cargo test --test it job_by_hub_ids
    $(../shared/ref/setup.sh) scripts/check_hf_cache.py /tmp/hf-cache

For every file metafora downloaded in that test (the stand-in Hub's repos), calls
`huggingface_hub.try_to_load_from_cache` and compares the bytes with the repository's.
"""
import os
import sys

import huggingface_hub
from huggingface_hub import try_to_load_from_cache

cache = sys.argv[1]
fx = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hub")
checks = [("projecte-aina/tiny-ca", "model", None, os.path.join(fx, "model"), f)
          for f in ["config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "pytorch_model.bin"]]
checks += [("someone/metaphor-small", "dataset", "refs/convert/parquet", os.path.join(fx, "dataset-parquet"), f"default/{s}/0000.parquet")
           for s in ["train", "validation", "test"]]
checks += [("someone/metaphor-small", "dataset", None, os.path.join(fx, "dataset-main"), "README.md")]
ok = 0
for repo, kind, rev, src, f in checks:
    path = try_to_load_from_cache(repo, f, cache_dir=cache, repo_type=kind, revision=rev)
    good = isinstance(path, str) and open(path, "rb").read() == open(os.path.join(src, f), "rb").read()
    ok += good
    print(("ok   " if good else "FAIL ") + f"{kind} {repo}@{rev or 'main'} {f} -> {path}")
print(f"huggingface_hub {huggingface_hub.__version__}: {ok}/{len(checks)} files found in the cache written by metafora")
sys.exit(0 if ok == len(checks) else 1)
