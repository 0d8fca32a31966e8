#!/usr/bin/env bash
# Makes the Python environment `distill train --engine trl` runs TRL in: a venv outside the
# clone (like the cargo target dir), with the pinned versions of engines/trl/requirements.txt.
#
#   bash engines/trl/setup.sh [--deepspeed] [--qlora] [--quiet]
#
# --deepspeed adds DeepSpeed (for `--distributed zero3`), --qlora adds bitsandbytes (for
# `--load-in-4bit`), both at the versions of requirements-optional.txt; --quiet keeps pip to its
# errors (what .ci/run uses). The venv is
# $DISTILL_TRL_VENV, else ~/.cache/distill-trl-venv; the last line printed is its python, which
# distill finds there by itself (or point DISTILL_TRL_PYTHON or `trl.python` at another one).
# Rerunning it brings an existing venv to the pinned versions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${DISTILL_TRL_VENV:-$HOME/.cache/distill-trl-venv}"
python="${PYTHON:-python3}"
extras=()
quiet=()
for arg in "$@"; do
  case "$arg" in
    --deepspeed) extras+=(deepspeed) ;;
    --qlora) extras+=(bitsandbytes) ;;
    --quiet) quiet=(--quiet) ;;
    *) echo "setup.sh: unknown option \`$arg\` (expected --deepspeed, --qlora or --quiet)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install "${quiet[@]}" -r "$here/requirements.txt" >&2
for name in "${extras[@]}"; do
  pin=$(grep -E "^$name==" "$here/requirements-optional.txt")
  "$venv/bin/python" -m pip install "${quiet[@]}" "$pin" >&2
done
echo "$venv/bin/python"
