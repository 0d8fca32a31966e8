"""A randomly initialised Qwen2 checkpoint whose matrices are all whole 256-value K-quant
blocks wide, for benchmarking the 2- and 3-bit K-quants: Qwen2.5-0.5B's 896-wide matrices are
not, so llama.cpp's Q2_K / Q3_K_M of that model hold almost no Q2_K / Q3_K tensors (they fall
back to Q4_0/Q5_0). The shapes are those of 7B-class models in miniature (hidden 1024, MLP 2816,
16 query / 2 key-value heads of 64, 24 layers: ~0.42B parameters); the tokenizer and vocabulary
are copied from TOKENIZER_DIR (a folder `distill convert` wrote from a Qwen2.5 GGUF). The text
it generates is noise; the benchmark generates a fixed number of tokens without EOS.

    python random_k_model.py TOKENIZER_DIR OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = AutoConfig.from_pretrained(src)
    config.hidden_size = 1024
    config.intermediate_size = 2816
    config.num_attention_heads = 16
    config.num_key_value_heads = 2
    config.head_dim = 64
    config.num_hidden_layers = 24
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters)")


if __name__ == "__main__":
    main()
