#!/usr/bin/env bash
# The GPU check, run on a GPU machine (python3 with torch + transformers, no Rust, no network)
# from the repository root, with gpu/dist/distill.xz built by gpu/build.sh. Prints one JSON
# line per figure: distill's (`distill check-device`) and PyTorch's on the same work, side by
# side, then on-policy distillation on the GPU (gpu/opd_smoke.sh). Budget: under 9 minutes on one
# H100/H200 (the timeouts sum to 540 s; more when flash attention or the CUDA kernels fail and
# the checks rerun without them: a fault ends the first run early).
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
timeout 290 "$BIN" check-device --device cuda --out "$OUT" "${SFT[@]}" --gguf "${GGUF[@]}" | tee "$OUT/check.jsonl"
RC=${PIPESTATUS[0]}
echo "{\"check\": \"distill_exit\", \"rc\": $RC}"
CHECK=$OUT/check.jsonl
# Flash attention failed its check, or faulted and took the process with it (its two lines
# missing): everything again without it (SFT figures included), so that one kernel does not
# cost the run its figures; the steps below read this run.
FLASH_OK=$(python3 -c 'import json, sys
print(sum(1 for l in open(sys.argv[1]) if l.startswith("{")
          and (d := json.loads(l)).get("what") == "flash_attention" and d.get("ok") is True))' "$CHECK")
if [ "$RC" -ne 0 ] && [ "$FLASH_OK" -lt 2 ]; then
  export DISTILL_FLASH_ATTENTION=0
  timeout 240 "$BIN" check-device --device cuda --out "$OUT/no-flash" "${SFT[@]}" --gguf "${GGUF[@]}" |
    tee "$OUT/check-no-flash.jsonl"
  RC=${PIPESTATUS[0]}
  echo "{\"check\": \"distill_exit_without_flash_attention\", \"rc\": $RC}"
  CHECK=$OUT/check-no-flash.jsonl
  RELOAD=$OUT/no-flash
fi
# A kernel that failed its check (or faulted and took the process with it): the same checks
# without the kernels (candle's composed ops), without the SFT and decode figures, so this run
# still says whether the rest is right; later steps run without them too.
KERNELS_OK=$(grep -c '"check":"cuda_kernels".*"ok":true' "$CHECK")
KERNELS_BAD=$(grep -c '"check":"cuda_kernels".*"ok":false' "$CHECK")
if [ "$KERNELS_BAD" -gt 0 ] || { [ "$RC" -ne 0 ] && [ "$KERNELS_OK" -eq 0 ]; }; then
  export DISTILL_CUDA_KERNELS=0
  timeout 50 "$BIN" check-device --device cuda --out "$OUT/composed" --gguf "${GGUF[@]}"
  echo "{\"check\": \"distill_exit_without_kernels\", \"rc\": $?}"
  RELOAD=$OUT/composed
fi
timeout 150 python3 gpu/check.py --config gpu/qwen2.5-1.5b.json --batch "${SFT_BATCH:-2}" --seq 2048 \
  --steps 20 --reload "${RELOAD:-$OUT}"
echo "{\"check\": \"python_exit\", \"rc\": $?}"
timeout 60 bash gpu/opd_smoke.sh "$BIN" "$OUT/opd" cuda
echo "{\"check\": \"opd_exit\", \"rc\": $?}"
# The engine on the GPU with log-probabilities, from the smoke's tiny teacher: sampled (device
# sampling at Qwen3's top-k 20, the log-probabilities' top-k and log-sum-exp; every token must
# carry its log-probabilities) and greedy on the GPU and the CPU (the same token counts); then
# greedy on the GPU within a KV cache of 13 blocks (the 8 live sequences need ~30: preemption
# and recomputation on the device; the same token counts again).
GEN=(generate --model "$OUT/opd/teacher/model" --problems "$OUT/opd/problems.jsonl" --limit 32
  --logprobs 5 --max-new-tokens 48 --prefill "")
timeout 40 bash -c '"$@" --device cuda --samples 2 --top-k 20 --out "$0/gen-sampled" &&
  "$@" --device cuda --temperature 0 --out "$0/gen-greedy-cuda" &&
  "$@" --device cpu --temperature 0 --out "$0/gen-greedy-cpu" &&
  "$@" --device cuda --temperature 0 --kv-cache-gib 0.0002 --out "$0/gen-greedy-budget"' \
  "$OUT" "$BIN" "${GEN[@]}" > /dev/null 2>&1
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def run(name):
    try:
        return json.load(open(f"{out}/{name}/generation.json"))["last_run"]
    except Exception as e:
        return {"error": str(e)}
s, g, c = run("gen-sampled"), run("gen-greedy-cuda"), run("gen-greedy-cpu")
ok = (s.get("written") == s.get("total") == 64 and s.get("logprob_tokens") == s.get("completion_tokens")
      and g.get("completion_tokens") == c.get("completion_tokens") and g.get("logprob_tokens") == g.get("completion_tokens"))
print(json.dumps({"check": "engine_logprobs", "sampled": s, "greedy_cuda_tokens": g.get("completion_tokens"),
                  "greedy_cpu_tokens": c.get("completion_tokens"), "ok": ok}))
b = run("gen-greedy-budget")
print(json.dumps({"check": "engine_kv_budget", "budget": b,
                  "ok": b.get("preempted", 0) > 0 and b.get("written") == 32
                  and b.get("completion_tokens") == g.get("completion_tokens")}))
PY
