#!/usr/bin/env python3
"""PyTorch reference for `metafora bench detect`: transformers' token-classification pipeline
(aggregation "simple", CPU) on single sentences, sequentially; prints p50/p99 latency (ms) and
sentences per second as JSON. Also `--make-base DIR` writes a random roberta-base-sized
RobertaForTokenClassification (with the tiny fixture's tokenizer) for both sides to load.
"""
import argparse
import json
import os
import shutil
import statistics
import time


def make_base(out, tokenizer_dir):
    import torch
    from transformers import RobertaConfig, RobertaForTokenClassification
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=50262, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                        id2label={0: "O", 1: "METAPHOR"}, label2id={"O": 0, "METAPHOR": 1})
    RobertaForTokenClassification(cfg).save_pretrained(out)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tokenizer_dir, f), os.path.join(out, f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--sentences", help="JSONL with tokens (joined with spaces)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--make-base")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--int8", action="store_true",
                    help="quantize_dynamic the model's Linear layers to int8 first (PyTorch's CPU int8)")
    args = ap.parse_args()
    if args.make_base:
        make_base(args.make_base, args.tokenizer_dir)
        return
    import torch
    from transformers import AutoTokenizer, pipeline
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model, add_prefix_space=True)
    clf = pipeline("token-classification", model=args.model, tokenizer=tok, aggregation_strategy="simple", device=-1)
    if args.int8:
        clf.model = torch.ao.quantization.quantize_dynamic(clf.model, {torch.nn.Linear}, dtype=torch.qint8)
    sents = [" ".join(json.loads(line)["tokens"]) for line in open(args.sentences)][: args.n]
    for s in sents[:10]:
        clf(s)
    lat = []
    t_all = time.perf_counter()
    for s in sents:
        t0 = time.perf_counter()
        clf(s)
        lat.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - t_all
    lat.sort()
    print(json.dumps({"n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                      "sentences_per_second": len(lat) / total, "threads": torch.get_num_threads(),
                      "int8": args.int8}))


if __name__ == "__main__":
    main()
