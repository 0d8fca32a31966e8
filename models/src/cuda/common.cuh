// What the kernels of train.cu and generate.cu share: storage types (f32, bf16) read and
// written as f32, and deterministic warp and block reductions.
#pragma once

#ifndef DISTILL_EMULATE
#include <cuda_bf16.h>
#include <stdint.h>
#endif

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16(x); }

// The value `x` takes once stored as T: rounding to bf16 and back, or nothing for f32.
template <typename T> __device__ __forceinline__ float stored(float x) {
  return to_float(from_float<T>(x));
}

// The sum of `v` over the warp, returned to every lane.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of `v` over the block, returned to every thread. Warps reduce with shuffles, then
// every thread adds the warps' sums in warp order (at most 32), so the result is the same on
// every thread and on every run.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums is free for the next call only when every thread has read it
  return total;
}

// As block_sum, for the maximum.
__device__ float block_max(float v) {
  __shared__ float warp_maxes[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if (threadIdx.x % 32 == 0) warp_maxes[threadIdx.x / 32] = v;
  __syncthreads();
  float best = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) best = fmaxf(best, warp_maxes[w]);
  __syncthreads();
  return best;
}
