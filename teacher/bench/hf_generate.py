"""The `teacher/examples/bench.rs` workload through PyTorch transformers `generate`.

batch x (64-token prompt + exactly 256 greedy new tokens), at batch 1, 8 and 32, with the same
prompt ids (read from the JSON file the Rust bench writes) and the same thread count.

    python hf_generate.py MODEL.gguf|FOLDER IDS.json THREADS

MODEL is a GGUF file (dequantized to f32 by gguf-py) or a Hugging Face folder (a trained
student's `model/`). BENCH_BATCHES=1,8 runs a subset, as for the Rust bench.
"""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

NEW_TOKENS = 256


def main() -> None:
    model_path, ids_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    ids = json.load(open(ids_path))
    if os.path.isdir(model_path):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(model_path)),
            gguf_file=os.path.basename(model_path),
            dtype=torch.float32,
        ).eval()
    batches = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,8,32").split(",")]
    print(f"model {model_path} · threads {threads} · torch {torch.__version__}")
    for batch in batches:
        input_ids = torch.tensor([ids] * batch)
        attention_mask = torch.ones_like(input_ids)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        secs = time.perf_counter() - start
        generated = (out.shape[1] - input_ids.shape[1]) * batch
        print(f"transformers batch {batch:>2}: {generated} tokens in {secs:.2f}s "
              f"= {generated / secs:.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
