// Runs CUDA C kernels on the CPU, for tests on machines without a GPU: the CUDA keywords become
// plain C++, each block's threads are OS threads, `__syncthreads` is a barrier over the block
// and `__shfl_xor_sync` an exchange through memory with a barrier over the warp. Blocks run one
// after another, so `__shared__` (made `static`) variables are the running block's.
//
// Only what models/src/cuda/*.cu uses is here: 1-D grids and blocks, full-warp shuffles of
// floats, static shared memory, bf16 storage. Slow (a thread per CUDA thread): tests launch
// small blocks and grids, which the kernels are written to allow.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define DISTILL_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

struct EmulatedBlock {
  explicit EmulatedBlock(unsigned threads) : sync(threads), lanes(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> lanes;
};

inline EmulatedBlock* running_block = nullptr;

inline void __syncthreads() { running_block->sync.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  running_block->lanes[t] = v;
  running_block->warps[warp]->arrive_and_wait();
  float other = running_block->lanes[warp * 32 + (lane ^ (unsigned)lane_mask)];
  running_block->warps[warp]->arrive_and_wait();  // nobody overwrites a lane before it is read
  return other;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline uint32_t __float_as_uint(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

using std::max;
using std::min;

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as cuda_bf16.h and candle's `to_dtype(BF16)` do.
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}

// kernel<<<grid, block>>>(): blocks in order, each block's threads at once.
template <class Kernel>
void launch(unsigned grid, unsigned block, Kernel kernel) {
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    EmulatedBlock state(block);
    running_block = &state;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, t] {
        threadIdx = dim3{t, 1, 1};
        blockIdx = dim3{b, 1, 1};
        kernel();
      });
    for (auto& th : threads) th.join();
  }
  running_block = nullptr;
}
