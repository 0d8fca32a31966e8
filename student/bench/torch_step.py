"""PyTorch reference for distill's training-step benchmark (student/benches/train_step.rs runs it).

    python torch_step.py --model HF_FOLDER | --tiny-config CONFIG_JSON
                         --threads N --batch 4 --seq 256 --steps 3 --warmup 1
                         [--gradient-checkpointing]

One training step = transformers forward with `labels` (its standard shifted cross-entropy over
full logits) + backward + clip_grad_norm_(1.0) + torch.optim.AdamW step (weight decay 0.1 on
matrices) + zero_grad, in float32 on the CPU with N threads; `--gradient-checkpointing` recomputes
each decoder layer in backward (`model.gradient_checkpointing_enable()`, non-reentrant). Prints one JSON line:
{"tokens_per_sec": …, "step_sec": …, "peak_rss_mb": …, "params": …}.
"""

import argparse
import json
import resource
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--tiny-config")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        config = AutoConfig.for_model(**json.load(open(args.tiny_config)))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-4
    )
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = (time.perf_counter() - start) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "tokens_per_sec": args.batch * args.seq / elapsed,
        "step_sec": elapsed,
        "peak_rss_mb": peak,
        "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
