#!/usr/bin/env bash
# The GPU check, run on a GPU machine (python3 with torch + transformers, no Rust, no network)
# from the repository root, with gpu/dist/distill.xz built by gpu/build.sh. Prints one JSON
# line per figure: distill's (`distill check-device`) and PyTorch's on the same work, side by
# side, then on-policy distillation on the GPU (gpu/opd_smoke.sh). Budget: under 9 minutes on one
# H100/H200 (the timeouts sum to 510 s; 570 s when the CUDA kernels fail and the checks rerun
# without them).
#
#   bash gpu/check.sh                 # OUT=/tmp/gpu-check by default
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
NV=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib
export LD_LIBRARY_PATH="$NV:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
BIN=$OUT/distill
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  gpu/dist/distill.xz "$BIN"
chmod +x "$BIN"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
  python3 -c 'import json, sys; print(json.dumps({"check": "machine", "gpu": sys.stdin.read().strip(), "cpus": __import__("os").cpu_count()}))'
GGUF=(models/tests/fixtures/tiny-llama.gguf)
[ -f ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf ] && GGUF+=(../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf)
[ -f shared/models/SmolLM2-135M-Instruct.Q4_1.gguf ] && GGUF+=(shared/models/SmolLM2-135M-Instruct.Q4_1.gguf)
SFT=(--sft-config gpu/qwen2.5-1.5b.json --sft-batch "${SFT_BATCH:-2}" --sft-seq 2048 --sft-steps 20)
timeout 300 "$BIN" check-device --device cuda --out "$OUT" "${SFT[@]}" --gguf "${GGUF[@]}" | tee "$OUT/check.jsonl"
RC=${PIPESTATUS[0]}
echo "{\"check\": \"distill_exit\", \"rc\": $RC}"
# A kernel that failed its check (or faulted and took the process with it): the same checks
# without the kernels (candle's composed ops), without the SFT and decode figures, so this run
# still says whether the rest is right; later steps run without them too.
KERNELS_OK=$(grep -c '"check":"cuda_kernels".*"ok":true' "$OUT/check.jsonl")
KERNELS_BAD=$(grep -c '"check":"cuda_kernels".*"ok":false' "$OUT/check.jsonl")
if [ "$KERNELS_BAD" -gt 0 ] || { [ "$RC" -ne 0 ] && [ "$KERNELS_OK" -eq 0 ]; }; then
  export DISTILL_CUDA_KERNELS=0
  timeout 60 "$BIN" check-device --device cuda --out "$OUT/composed" --gguf "${GGUF[@]}"
  echo "{\"check\": \"distill_exit_without_kernels\", \"rc\": $?}"
  RELOAD=$OUT/composed
fi
timeout 150 python3 gpu/check.py --config gpu/qwen2.5-1.5b.json --batch "${SFT_BATCH:-2}" --seq 2048 \
  --steps 20 --reload "${RELOAD:-$OUT}"
echo "{\"check\": \"python_exit\", \"rc\": $?}"
timeout 60 bash gpu/opd_smoke.sh "$BIN" "$OUT/opd" cuda
echo "{\"check\": \"opd_exit\", \"rc\": $?}"
