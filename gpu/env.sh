# Source with the root printed by gpu/setup.sh: `source gpu/env.sh "$(bash gpu/setup.sh)"`.
# Sets what candle's and cudarc's build scripts need on a machine without a GPU, and a target
# dir of its own so the CPU build stays warm.
CU=${1:?usage: source gpu/env.sh CUDA_ROOT}
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU" CUDARC_CUDA_VERSION=13000
# 80: sm_80 code that runs on A100, H100 and H200 (JIT on sm_90); set 90 for H100/H200 only.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export LIBRARY_PATH="$CU/lib/stubs:$CU/lib:${LIBRARY_PATH:-}"
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/distill-target-cuda}
# To run a CUDA binary's CPU paths here: LD_LIBRARY_PATH="$CU/lib/stubs/sonames:$CU/lib".
