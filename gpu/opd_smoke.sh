#!/usr/bin/env bash
# On-policy distillation end to end on one device, in well under a minute: a tiny teacher and
# student from scratch on the synthetic task (the student with the teacher's tokenizer), then 10
# on-policy steps (the engine samples on the device, the live teacher scores, the student
# updates). Prints one JSON line: the held-out reverse KL before and after, the stop share, the
# wall time. Used by gpu/check.sh (`cuda`); runs the same on the CPU:
#
#   bash gpu/opd_smoke.sh target/release/distill /tmp/opd-smoke cpu
set -euo pipefail
BIN=$1 OUT=$2 DEVICE=${3:-cuda}
rm -rf "$OUT" && mkdir -p "$OUT"
START=$(date +%s.%N)
"$BIN" problems --count 600 --seed 3 --difficulty 0 --out "$OUT/problems.jsonl" \
  --solutions-corpus "$OUT/solutions" > /dev/null
SCRATCH=(train --quiet --from-scratch --device "$DEVICE" --corpus "$OUT/solutions" --max-seq-len 256
  --heads 4 --kv-heads 2 --micro-batch-size 8 --lr 0.005 --warmup-steps 10 --eval-fraction 0.1)
"$BIN" "${SCRATCH[@]}" --out "$OUT/teacher" --hidden-size 64 --layers 2 --intermediate-size 192 \
  --vocab-size 256 --merge-across-words --max-steps 200 2> "$OUT/teacher.log"
"$BIN" "${SCRATCH[@]}" --out "$OUT/sft" --hidden-size 32 --layers 1 --intermediate-size 96 \
  --tokenizer "$OUT/teacher/model" --max-steps 60 2> "$OUT/sft.log"
"$BIN" train --quiet --method opd --device "$DEVICE" --base "$OUT/sft/model" \
  --kd-teacher "$OUT/teacher/model" --corpus "$OUT/solutions" --out "$OUT/opd" --max-seq-len 256 \
  --micro-batch-size 8 --lr 0.005 --warmup-steps 2 --max-steps 10 --eval-fraction 0.1 \
  --opd-prompts-per-step 16 --opd-max-new-tokens 48 --opd-prefill "" 2> "$OUT/opd.log"
python3 - "$OUT" "$DEVICE" "$START" <<'PY'
import json, sys, time
out, device, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
lines = [json.loads(l) for l in open(f"{out}/opd/metrics.jsonl")]
evals = [l for l in lines if "eval_kd" in l]
steps = [l for l in lines if "loss" in l]
print(json.dumps({
    "check": "opd", "device": device, "steps": len(steps),
    "eval_kd_start": evals[0]["eval_kd"], "eval_kd_end": evals[-1]["eval_kd"],
    "eval_stopped_start": evals[0]["eval_stopped"], "eval_stopped_end": evals[-1]["eval_stopped"], "pass_rate_end": evals[-1]["pass_rate"],
    "opd_seconds": round(sum(l["seconds"] for l in steps), 2),
    "sample_seconds": round(sum(l["sample_seconds"] for l in steps), 2),
    "wall_seconds": round(time.time() - start, 1),
}))
PY
