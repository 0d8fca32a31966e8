"""GPU check, PyTorch side (run by gpu/check.sh after `distill check-device`). One JSON line per
figure:

- `torch_sft`: PyTorch eager (SDPA) SFT steps on the same random-init config, batch and length as
  distill's `sft` figure, f32 master weights + bf16 autocast and pure bf16, fused AdamW: tokens/s,
  MFU (6·N·tokens/s ÷ 989 TFLOP/s) and peak memory; then 6 steps of the first with gradient
  checkpointing (`gradient_checkpointing_enable()`, non-reentrant), beside distill's
  activation-checkpointing figure;
- `torch_attention`: PyTorch's SDPA (causal, grouped-query) forward + backward at the shapes of
  distill's `flash_attention_speed` figure (batch 2 × 2,048, Qwen2.5-1.5B's 12 heads over 2 of
  128 and SmolLM2's 9 over 3 of 64), bf16, timed as distill times it (3 warm-up, 10 timed,
  the loss Σ out ∘ dO);
- `reload`: the tiny model distill fine-tuned on the GPU, loaded with transformers'
  AutoModelForCausalLM, logits compared with distill's on the same ids.
"""
import argparse
import json
import time

import torch


def emit(**kv):
    print(json.dumps(kv), flush=True)


def torch_sft(config_path, batch, seq, steps, master_fp32, checkpointing=False, warm=2):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fields = json.load(open(config_path))
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg).to(torch.float32 if master_fp32 else torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, cfg.vocab_size - 1, (batch, seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=master_fp32):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    n = sum(p.numel() for p in model.parameters())
    tok = batch * seq / dt
    emit(check="torch_sft", params=n, batch=batch, seq=seq, fp32_master=master_fp32,
         gradient_checkpointing=checkpointing, steps=steps,
         step_s=round(dt, 4), tok_s=round(tok), mfu_6N=round(6 * n * tok / 989e12, 4),
         peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1), torch=torch.__version__)
    del model, opt


def torch_attention(batch=2, seq=2048):
    import torch.nn.functional as F

    for heads, kv_heads, dim in [(12, 2, 128), (9, 3, 64)]:
        q = torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(batch, kv_heads, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(batch, kv_heads, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        d_out = torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16)

        def step():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            (out * d_out).sum().backward()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 10
        pairs = batch * heads * seq * (seq + 1) / 2
        flops = 3.5 * 4 * pairs * dim
        emit(check="torch_attention", batch=batch, seq=seq, heads=heads, kv_heads=kv_heads,
             head_dim=dim, ms=round(dt * 1e3, 3), tflops=round(flops / dt / 1e12, 1),
             torch=torch.__version__)


def reload(out):
    from transformers import AutoModelForCausalLM

    ref = json.load(open(f"{out}/finetuned-tiny-logits.json"))
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(ref["dtype"], torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(f"{out}/finetuned-tiny", dtype=dtype).to(device).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ref["ids"]], device=device)).logits[0].float().cpu()
    want = torch.tensor(ref["logits"])
    diff = (logits - want).abs().max().item()
    scale = want.abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    emit(check="reload", device=device, dtype=ref["dtype"], max_abs_diff=diff, rel_diff=diff / scale,
         tolerance=tol, ok=diff / scale <= tol,
         argmax_agree=float((logits.argmax(-1) == want.argmax(-1)).float().mean()))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reload", required=True)
    a = p.parse_args()
    for fn, args in [(reload, (a.reload,)),
                     (torch_attention, ()),
                     (torch_sft, (a.config, a.batch, a.seq, a.steps, True)),
                     (torch_sft, (a.config, a.batch, a.seq, a.steps, False)),
                     (torch_sft, (a.config, a.batch, a.seq, min(a.steps, 6), True, True))]:
        try:
            fn(*args)
        except Exception as e:  # one failing figure must not hide the others
            emit(check=fn.__name__, error=str(e)[:400])
