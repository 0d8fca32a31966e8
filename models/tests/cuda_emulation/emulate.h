// Runs CUDA C kernels on the CPU, for tests on machines without a GPU: the CUDA keywords become
// plain C++, each block's threads are OS threads, `__syncthreads` is a barrier over the block
// and `__shfl_xor_sync` an exchange through memory with a barrier over the warp. Blocks run one
// after another, so `__shared__` (made `static`) variables are the running block's.
//
// Only what models/src/cuda/*.cu uses is here: 1-D grids and blocks, full-warp shuffles of
// floats, `__syncwarp`, static shared memory, 16-byte `uint4` copies, bf16 storage, and the
// 16×16×16 bf16 `nvcuda::wmma` tiles (below). Slow (a thread per CUDA thread): tests launch
// small blocks and grids, which the kernels are written to allow.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define DISTILL_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

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

inline void __syncwarp(unsigned = 0xffffffffu) {
  running_block->warps[threadIdx.x / 32]->arrive_and_wait();
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

// Tensor-core tiles. CUDA does not say which lane holds which element of a fragment, so a
// kernel can only load, fill, multiply and store whole fragments; here every lane holds the
// whole tile, loads read it in each lane, and stores are written by lane 0 alone, so a kernel
// that reads a stored tile from other lanes without `__syncwarp()` reads stale memory here too.
// Products are exact in f32 and accumulate in k order (tensor cores add in an order of their
// own: the kernels' tests allow for the rounding).
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[rows * cols];
};

inline float element(float x) { return x; }
inline float element(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                      layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  if (threadIdx.x % 32 != 0) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

template <class Use, int M, int N, int K, class T, class Layout, class V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, V value) {
  for (auto& x : f.x) x = T(value);
}

template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = c.x[m * N + n];
      for (int k = 0; k < K; ++k) acc += element(a.x[m * K + k]) * element(b.x[k * N + n]);
      out[m * N + n] = acc;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}
}  // namespace nvcuda::wmma
