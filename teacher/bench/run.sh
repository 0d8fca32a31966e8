#!/usr/bin/env bash
# Generation benchmark: distill's engine against llama.cpp (llama-cpp-python) and PyTorch
# transformers `generate` on one workload (a GGUF file, 64-token prompt, exactly 256 new greedy
# tokens, batch 1/8/32, same threads), side by side in one run; prints the ratios (generation
# rate, and for distill and llama.cpp prompt tokens/s of the prefill alone and the decode rate
# after it). BENCH_PROMPT_TOKENS=2048 runs long prompts (R1-length contexts); BENCH_BATCHES=1,8
# a subset of the batches.
#   teacher/bench/run.sh [MODEL.gguf] [THREADS]
# LLAMA_PYTHON: a Python with llama_cpp (default ~/.cache/gguf-venv/bin/python); PYTHON: one
# with torch + transformers (default ~/.cache/distill-venv/bin/python). A reference whose
# Python is missing is skipped with a line saying so. teacher/bench/README.md says how to make both.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${2:-$(nproc)}"
python="${PYTHON:-$HOME/.cache/distill-venv/bin/python}"
llama_python="${LLAMA_PYTHON:-$HOME/.cache/gguf-venv/bin/python}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/distill-target}"
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads"
ids="$(mktemp --suffix .json)"
rust_out="$(mktemp)" hf_out="$(mktemp)" llama_out="$(mktemp)"
cat /proc/cpuinfo | awk -F': ' '/model name/ {print "cpu: " $2; exit}'
cargo run --release -q -p distill-teacher --example bench -- "$model" "$ids" | tee "$rust_out"
if "$llama_python" -c 'import llama_cpp' 2>/dev/null; then
  "$llama_python" teacher/bench/llama_cpp_generate.py "$model" "$ids" "$threads" | tee "$llama_out"
else
  echo "llama.cpp: skipped ($llama_python has no llama_cpp)"
fi
if "$python" -c 'import torch, transformers' 2>/dev/null; then
  "$python" teacher/bench/hf_generate.py "$model" "$ids" "$threads" | tee "$hf_out"
else
  echo "transformers: skipped ($python has no torch + transformers)"
fi
rate() { awk -v e="$1" -v b="$2" '$1==e && $3==b":" {for (i = 1; i <= NF; i++) if ($i == "tok/s" || $i == "tok/s,") {print $(i-1); exit}}' "$3"; }
prefill() { awk -v e="$1" -v b="$2" '$1==e && $3==b":" {for (i = 1; i <= NF; i++) if ($i == "(prefill") {print $(i+1); exit}}' "$3"; }
decode() { awk -v e="$1" -v b="$2" '$1==e && $3==b":" {for (i = 1; i <= NF; i++) if ($i == "decode") {print $(i+1); exit}}' "$3"; }
llama1=$(rate llama.cpp 1 "$llama_out")
BENCH_BATCHES="${BENCH_BATCHES:-1,8,32}"
for batch in ${BENCH_BATCHES//,/ }; do
  ours=$(rate distill "$batch" "$rust_out")
  line=$(printf "batch %2d: distill %.1f tok/s" "$batch" "$ours")
  llama=$(rate llama.cpp "$batch" "$llama_out")
  [ -n "$llama" ] && line+=$(awk -v o="$ours" -v t="$llama" -v s="$llama1" \
    'BEGIN {printf ", llama.cpp %.1f (%.2fx; %.2fx its batch-1 rate)", t, o/t, o/s}')
  ours_p=$(prefill distill "$batch" "$rust_out")
  llama_p=$(prefill llama.cpp "$batch" "$llama_out")
  [ -n "$llama_p" ] && line+=$(awk -v o="$ours_p" -v t="$llama_p" \
    'BEGIN {printf "; prefill distill %.0f, llama.cpp %.0f tok/s (%.2fx)", o, t, o/t}')
  ours_d=$(decode distill "$batch" "$rust_out")
  llama_d=$(decode llama.cpp "$batch" "$llama_out")
  [ -n "$llama_d" ] && line+=$(awk -v o="$ours_d" -v t="$llama_d" \
    'BEGIN {printf "; decode distill %.1f, llama.cpp %.1f tok/s (%.2fx)", o, t, o/t}')
  hf=$(rate transformers "$batch" "$hf_out")
  [ -n "$hf" ] && line+=$(awk -v o="$ours" -v t="$hf" 'BEGIN {printf ", transformers %.1f (%.2fx)", t, o/t}')
  echo "$line"
done
rm -f "$ids" "$rust_out" "$hf_out" "$llama_out"
