#!/usr/bin/env bash
# Generation benchmark: distill's engine vs PyTorch transformers `generate` on one workload
# (SmolLM2 GGUF, 64-token prompt, 256 new tokens, batch 1/8/32, same threads); prints the ratio.
#   teacher/bench/run.sh [MODEL.gguf] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${2:-$(nproc)}"
python="${PYTHON:-$HOME/.cache/distill-venv/bin/python}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/distill-target}"
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads"
ids="$(mktemp --suffix .json)"
rust_out="$(mktemp)" hf_out="$(mktemp)"
cargo run --release -q -p distill-teacher --example bench -- "$model" "$ids" | tee "$rust_out"
"$python" teacher/bench/hf_generate.py "$model" "$ids" "$threads" | tee "$hf_out"
for batch in 1 8 32; do
  ours=$(awk -v b="$batch" '$1=="distill" && $3==b":" {print $(NF-1)}' "$rust_out")
  theirs=$(awk -v b="$batch" '$1=="transformers" && $3==b":" {print $(NF-1)}' "$hf_out")
  awk -v b="$batch" -v o="$ours" -v t="$theirs" \
    'BEGIN {printf "batch %2d: distill %.1f tok/s, transformers %.1f tok/s, ratio %.2fx\n", b, o, t, o/t}'
done
rm -f "$ids" "$rust_out" "$hf_out"
