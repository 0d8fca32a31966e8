#!/usr/bin/env bash
# Builds the CUDA binary on a machine without a GPU (gpu/setup.sh's build root, its own target
# dir) and writes it compressed to gpu/dist/distill.xz for the GPU machine (~100 MB → ~15 MB).
# Cold: ~25 min on 2 cores (candle's kernels are ~300 CPU-seconds of nvcc); warm: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CU=$(bash gpu/setup.sh)
# shellcheck source=gpu/env.sh
source gpu/env.sh "$CU"
cargo build --release --locked --features cuda --bin distill
mkdir -p gpu/dist
xz -9 -T2 -c "$CARGO_TARGET_DIR/release/distill" > gpu/dist/distill.xz
# The binary must start here with the stub sonames (it then reports no usable GPU).
LD_LIBRARY_PATH="$CU/lib/stubs/sonames:$CU/lib" "$CARGO_TARGET_DIR/release/distill" --version >&2
ls -l gpu/dist/distill.xz >&2
