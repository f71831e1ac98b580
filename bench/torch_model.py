#!/usr/bin/env python3
"""PyTorch reference timings for `metafora bench model`: RobertaForTokenClassification or
DebertaV2ForTokenClassification forward (eval, inference_mode) and training step (forward + loss
+ backward + clip + AdamW), batch x seq random tokens, random init, same sizes as the Rust side.
Prints one JSON object.

Run with the reference venv (`../shared/ref/setup.sh` prints its python).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import DebertaV2Config, DebertaV2ForTokenClassification, RobertaConfig, RobertaForTokenClassification

SIZES = {
    "tiny": dict(vocab_size=3000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "base": dict(vocab_size=50262, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(vocab_size=50262, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # mDeBERTa-v3-base's shape (microsoft/mdeberta-v3-base config.json).
    "deberta-tiny": dict(vocab_size=3000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "mdeberta-base": dict(vocab_size=251000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
DEBERTA = dict(max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
               share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
               layer_norm_eps=1e-7, max_relative_positions=-1)


def build(size):
    if "deberta" in size:
        return DebertaV2ForTokenClassification(DebertaV2Config(num_labels=2, **DEBERTA, **SIZES[size]))
    return RobertaForTokenClassification(
        RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, num_labels=2, **SIZES[size]))


def median_time(fn, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--reduced", action="store_true",
                    help="also time the forward in bf16 (weights and activations cast) and int8 "
                         "(torch.ao.quantization.quantize_dynamic of the Linear layers)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device, "sizes": {}}
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        model = build(size).to(dev)
        cfg = model.config
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, cfg.vocab_size, (args.batch, args.seq), generator=g)
        ids[:, 0], ids[:, -1] = (1, 2) if "deberta" in size else (0, 2)
        ids = ids.to(dev)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (args.batch, args.seq), generator=g).to(dev)
        labels[:, 0] = labels[:, -1] = -100
        model.eval()

        def forward():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask).logits.sum().item()

        fwd = median_time(forward, args.warmup, args.iters, sync)
        reduced = {}
        if args.reduced and dev.type == "cpu":
            import copy
            qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
            bmodel = copy.deepcopy(model).to(torch.bfloat16)
            for name, m in (("int8", qmodel), ("bf16", bmodel)):
                def fwd_reduced(m=m):
                    with torch.inference_mode():
                        m(input_ids=ids, attention_mask=mask).logits.float().sum().item()
                reduced[f"forward_{name}_ms"] = median_time(fwd_reduced, args.warmup, args.iters, sync) * 1000
            del qmodel, bmodel
        if args.forward_only:
            out["sizes"][size] = {"forward_ms": fwd * 1000, "train_step_ms": None,
                                  "parameters": sum(p.numel() for p in model.parameters()), **reduced}
            continue
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
        model.train()

        def step():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        st = median_time(step, args.warmup, max(3, args.iters // 2), sync)
        out["sizes"][size] = {"forward_ms": fwd * 1000, "train_step_ms": st * 1000,
                              "parameters": sum(p.numel() for p in model.parameters()), **reduced}
        del model, opt
    print(json.dumps(out))


if __name__ == "__main__":
    main()
