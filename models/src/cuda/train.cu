// Training kernels for NVIDIA GPUs: RMSNorm, RoPE and SwiGLU with their backward passes, the
// masked softmax of a chunk of attention scores and its backward, the cross-entropy of a chunk
// of logit rows, the AdamW step; and for generation, decode attention over the KV pool. Compiled to PTX by models/build.rs
// with the pinned nvcc (only with the `cuda` feature) and loaded by models/src/cuda/mod.rs.
//
// Every kernel is written to be correct for any grid and any block of 32..1024 threads (a
// multiple of 32; decode attention: up to 128): rows and elements are walked with grid- and block-stride loops, so the
// launch shape is a matter of speed only. That is what lets models/tests/cuda_kernels.rs run
// this very file on the CPU (models/tests/cuda_emulation/) with small blocks and grids and
// compare it with candle's composed ops.
//
// Reductions are deterministic: a block's partial sums combine in a fixed order, and the
// RMSNorm weight gradient is summed per block, then over blocks in block order (no atomics),
// so a resumed run reproduces the original bit for bit on the same GPU.
//
// Arithmetic is f32 whatever the storage type (f32 or bf16, rounded to nearest even once per
// stored value), as PyTorch's kernels and Liger's do.

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

// ---- RMSNorm: y = w · stored(x / rms(x)), as transformers' Qwen2RMSNorm/LlamaRMSNorm ----

template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, int rows, int dim, float eps) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (size_t)row * dim;
    T* yr = y + (size_t)row * dim;
    float squares = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = to_float(xr[i]);
      squares += v * v;
    }
    float r = rsqrtf(block_sum(squares) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
      yr[i] = from_float<T>(stored<T>(to_float(xr[i]) * r) * to_float(w[i]));
  }
}

// dx = r · (g·w − x̂ · mean(g·w·x̂)) with x̂ = x·r; the weight gradient Σ g · stored(x̂) over
// this block's rows goes to row blockIdx.x of `dw_partial` ([gridDim.x, dim], f32), which
// sum_partials then adds up over blocks.
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* dy, T* dx, float* dw_partial,
                             int rows, int dim, float eps) {
  float* partial = dw_partial + (size_t)blockIdx.x * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) partial[i] = 0.f;
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + (size_t)row * dim;
    const T* gr = dy + (size_t)row * dim;
    T* dxr = dx + (size_t)row * dim;
    float squares = 0.f, gwx = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = to_float(xr[i]);
      squares += v * v;
      gwx += to_float(gr[i]) * to_float(w[i]) * v;
    }
    float r = rsqrtf(block_sum(squares) / dim + eps);
    float c = block_sum(gwx) * r / dim;  // mean(g·w·x̂)
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float xh = to_float(xr[i]) * r, g = to_float(gr[i]);
      partial[i] += g * stored<T>(xh);
      dxr[i] = from_float<T>(r * (g * to_float(w[i]) - xh * c));
    }
  }
}

// out[j] = Σ_p partial[p, j] in p order: a thread per column.
template <typename T>
__device__ void sum_partials(const float* partial, T* out, int parts, int dim) {
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < dim; j += gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < parts; ++p) s += partial[(size_t)p * dim + j];
    out[j] = from_float<T>(s);
  }
}

// ---- SwiGLU: y = silu(gate) · up ----

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

template <typename T>
__device__ void swiglu_fwd(const T* gate, const T* up, T* y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = to_float(gate[i]);
    y[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
  }
}

template <typename T>
__device__ void swiglu_bwd(const T* gate, const T* up, const T* dy, T* dgate, T* dup, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dy[i]);
    float s = sigmoid(g);
    dup[i] = from_float<T>(d * g * s);
    dgate[i] = from_float<T>(d * u * s * (1.f + g * (1.f - s)));
  }
}

// ---- RoPE, transformers' rotate_half layout ----
// x, y: [batch, heads, seq, dim]; cos, sin: [batch, seq, dim / 2]. y1 = x1·c − x2·s,
// y2 = x2·c + x1·s. The backward is the same rotation with the sine negated (`sign` = −1).

template <typename T>
__device__ void rope(const T* x, const T* cos, const T* sin, T* y, int batch, int heads, int seq,
                     int dim, float sign) {
  int half = dim / 2;
  size_t pairs = (size_t)batch * heads * seq * half;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < pairs;
       k += (size_t)gridDim.x * blockDim.x) {
    int j = (int)(k % half);
    size_t row = k / half;  // over batch · heads · seq
    int s = (int)(row % seq);
    int b = (int)(row / seq / heads);
    size_t table = ((size_t)b * seq + s) * half + j;
    float c = to_float(cos[table]), sn = sign * to_float(sin[table]);
    float x1 = to_float(x[row * dim + j]), x2 = to_float(x[row * dim + j + half]);
    y[row * dim + j] = from_float<T>(x1 * c - x2 * sn);
    y[row * dim + j + half] = from_float<T>(x2 * c + x1 * sn);
  }
}

// ---- Cross-entropy of logit rows ----
// loss[r] = logsumexp(logits[r]) − logits[r, target[r]]; with want_grad, also
// dlogits[r] = scale · (softmax(logits[r]) − one_hot(target[r])). A block per row.

template <typename T>
__device__ void cross_entropy(const T* logits, const uint32_t* targets, float* loss, T* dlogits,
                              int rows, int vocab, float scale, int want_grad) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* l = logits + (size_t)row * vocab;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, to_float(l[i]));
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(to_float(l[i]) - m);
    s = block_sum(s);
    int t = (int)targets[row];
    if (threadIdx.x == 0) loss[row] = logf(s) - (to_float(l[t]) - m);
    if (want_grad) {
      T* d = dlogits + (size_t)row * vocab;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float p = expf(to_float(l[i]) - m) / s;
        d[i] = from_float<T>((p - (i == t ? 1.f : 0.f)) * scale);
      }
    }
  }
}

// ---- Softmax of a chunk of attention scores (models/src/chunked_attention.rs) ----
// `scores` are one chunk's raw q·kᵀ, [batch, groups, rows, keys] (groups = kv heads × query
// heads per kv head): row r is query position q0 + r % rows of batch r / (groups · rows), its
// key jj is position k0 + jj. A key is visible where start(query) ≤ key ≤ query (`starts`,
// [batch, seq]: each position's document start); the softmax of `scale · score` over the
// visible keys, hidden keys exactly 0. A block per row.

// Where a score row lies, its query position and its document's start.
struct ScoreRow {
  size_t offset;  // of the row's first key
  int query, start;
};

__device__ __forceinline__ ScoreRow score_row(size_t row, const uint32_t* starts, int groups,
                                              int rows, int keys, int seq, int q0) {
  ScoreRow r;
  r.offset = row * keys;
  r.query = q0 + (int)(row % rows);
  int b = (int)(row / ((size_t)groups * rows));
  r.start = (int)starts[(size_t)b * seq + r.query];
  return r;
}

// probs = softmax, lse[row] = log Σ exp(scale · score) over the visible keys (f32).
template <typename T>
__device__ void attention_softmax(const T* scores, const uint32_t* starts, T* probs, float* lse,
                                  size_t total_rows, int groups, int rows, int keys, int seq,
                                  int q0, int k0, float scale) {
  for (size_t row = blockIdx.x; row < total_rows; row += gridDim.x) {
    ScoreRow r = score_row(row, starts, groups, rows, keys, seq, q0);
    const T* s = scores + r.offset;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      int key = k0 + j;
      if (key >= r.start && key <= r.query) m = fmaxf(m, to_float(s[j]) * scale);
    }
    m = block_max(m);
    float sum = 0.f;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      int key = k0 + j;
      if (key >= r.start && key <= r.query) sum += expf(to_float(s[j]) * scale - m);
    }
    sum = block_sum(sum);
    float log_sum = m + logf(sum);
    if (threadIdx.x == 0) lse[row] = log_sum;
    T* p = probs + r.offset;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      int key = k0 + j;
      bool visible = key >= r.start && key <= r.query;
      p[j] = from_float<T>(visible ? expf(to_float(s[j]) * scale - log_sum) : 0.f);
    }
  }
}

// The backward of a chunk: P = exp(scale · score − lse) (hidden keys 0) to `probs`, and
// dS = scale · P ∘ (dP − row_dot) to `dscores`, from the recomputed raw scores, the gradient of
// the probabilities dP = dO · Vᵀ and each row's Σ dO ∘ O (`row_dot`, f32).
template <typename T>
__device__ void attention_softmax_bwd(const T* scores, const T* dprobs, const float* lse,
                                      const float* row_dot, const uint32_t* starts, T* probs,
                                      T* dscores, size_t total_rows, int groups, int rows,
                                      int keys, int seq, int q0, int k0, float scale) {
  for (size_t row = blockIdx.x; row < total_rows; row += gridDim.x) {
    ScoreRow r = score_row(row, starts, groups, rows, keys, seq, q0);
    float l = lse[row], dot = row_dot[row];
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
      int key = k0 + j;
      size_t at = r.offset + j;
      float p = key >= r.start && key <= r.query ? expf(to_float(scores[at]) * scale - l) : 0.f;
      probs[at] = from_float<T>(p);
      dscores[at] = from_float<T>(scale * p * (to_float(dprobs[at]) - dot));
    }
  }
}

// ---- Decode attention over the KV pool (models/src/transformer/step.rs) ----
// Every sequence that decodes one token attends its own history in one launch: `q` [m, heads,
// dim] (heads = kv · n_rep, HF's grouping: kv head g serves query heads g·n_rep ..), the pool
// `keys`/`values` [slots, kv, capacity, dim], row i's slot `slots[i]` and its visible keys
// `lengths[i]` (history and the new one). out [m, heads, dim] = softmax(scale · q·kᵀ) · v.
// A block per (row, kv head) reads that slot's keys and values once for its n_rep query heads;
// each warp walks every warps-th key with an online softmax (a lane holds dims lane, lane + 32,
// ...), then the warps' partial results combine in warp order. Needs dim a multiple of 32 up
// to 256, n_rep ≤ 8 and 32..128 threads a block (launch.rs checks; other shapes take the
// composed ops).

#define DECODE_MAX_REP 8
#define DECODE_MAX_LANE_DIMS 8
#define DECODE_MAX_WARPS 4

template <typename T>
__device__ void decode_attention(const T* q, const T* keys, const T* values, const uint32_t* slots,
                                 const uint32_t* lengths, T* out, int m, int kv, int n_rep,
                                 int capacity, int dim, float scale) {
  __shared__ float part_max[DECODE_MAX_WARPS][DECODE_MAX_REP];
  __shared__ float part_sum[DECODE_MAX_WARPS][DECODE_MAX_REP];
  __shared__ float part_out[DECODE_MAX_WARPS][DECODE_MAX_REP][DECODE_MAX_LANE_DIMS * 32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int lane_dims = dim / 32;
  for (size_t pair = blockIdx.x; pair < (size_t)m * kv; pair += gridDim.x) {
    int row = (int)(pair / kv), g = (int)(pair % kv);
    const T* qr = q + ((size_t)row * kv + g) * n_rep * dim;
    size_t base = ((size_t)slots[row] * kv + g) * capacity * dim;
    int len = (int)lengths[row];
    float qv[DECODE_MAX_REP][DECODE_MAX_LANE_DIMS], acc[DECODE_MAX_REP][DECODE_MAX_LANE_DIMS];
    float mx[DECODE_MAX_REP], sum[DECODE_MAX_REP];
    for (int r = 0; r < DECODE_MAX_REP; ++r) {
      mx[r] = -INFINITY;
      sum[r] = 0.f;
      for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e) {
        acc[r][e] = 0.f;
        qv[r][e] = r < n_rep && e < lane_dims ? to_float(qr[r * dim + e * 32 + lane]) : 0.f;
      }
    }
    for (int j = warp; j < len; j += warps) {
      float kj[DECODE_MAX_LANE_DIMS], vj[DECODE_MAX_LANE_DIMS];
      for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e) {
        size_t at = base + (size_t)j * dim + e * 32 + lane;
        kj[e] = e < lane_dims ? to_float(keys[at]) : 0.f;
        vj[e] = e < lane_dims ? to_float(values[at]) : 0.f;
      }
      for (int r = 0; r < DECODE_MAX_REP; ++r) {
        if (r >= n_rep) break;
        float dot = 0.f;
        for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e) dot += qv[r][e] * kj[e];
        float score = warp_sum(dot) * scale;
        float next = fmaxf(mx[r], score);
        float shrink = expf(mx[r] - next), p = expf(score - next);
        sum[r] = sum[r] * shrink + p;
        for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e) acc[r][e] = acc[r][e] * shrink + p * vj[e];
        mx[r] = next;
      }
    }
    // Constant loop bounds keep the arrays in registers.
    for (int r = 0; r < DECODE_MAX_REP; ++r) {
      if (r >= n_rep) break;
      if (lane == 0) {
        part_max[warp][r] = mx[r];
        part_sum[warp][r] = sum[r];
      }
      for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e)
        if (e < lane_dims) part_out[warp][r][e * 32 + lane] = acc[r][e];
    }
    __syncthreads();
    for (int t = threadIdx.x; t < n_rep * dim; t += blockDim.x) {
      int r = t / dim, d = t % dim;
      float best = -INFINITY;
      for (int w = 0; w < warps; ++w) best = fmaxf(best, part_max[w][r]);
      float total = 0.f, o = 0.f;
      for (int w = 0; w < warps; ++w) {
        float f = expf(part_max[w][r] - best);  // 0 for a warp that saw no key
        total += part_sum[w][r] * f;
        o += part_out[w][r][d] * f;
      }
      out[((size_t)row * kv + g) * n_rep * dim + t] = from_float<T>(o / total);
    }
    __syncthreads();  // the partials are free for the next pair only when all are read
  }
}

// ---- Sampling on the device (teacher/src/engine.rs) ----
// One token per row of `logits` [rows, vocab] at temperature T, top-p `top_p` (1: off), from the
// row's uniform draw `uniform` in [0, 1) (drawn on the host from the sequence's own generator,
// one per token as the host sampler draws): only the ids cross to the host. The nucleus is the
// host's (teacher/src/sampling.rs): the most likely tokens, ties to the lower id, whose weights
// exp((l − max) / T) first reach top_p of the total; it is found as a threshold logit by
// bisection over the logits' order (32 passes over the row) instead of a sort. The draw walks
// the nucleus in id order (the host walks it most likely first: the same distribution, another
// token for the same draw). NaN logits count as −inf. A block per row.

// A float's rank in the total order of floats, as an unsigned int (larger float, larger key).
__device__ __forceinline__ uint32_t order_key(float x) {
  uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float clean_logit(float x) { return x != x ? -INFINITY : x; }

template <typename T>
__device__ void sample_rows(const T* logits, const float* temperature, const float* top_p,
                            const float* uniform, uint32_t* out, int rows, int vocab) {
  __shared__ float seg_mass[1024];
  __shared__ int seg_ties[1024];
  __shared__ int chosen;
  // A thread's contiguous stretch of ids, so prefix sums over threads follow id order.
  int per = (vocab + blockDim.x - 1) / blockDim.x;
  int lo_id = min(vocab, (int)threadIdx.x * per), hi_id = min(vocab, lo_id + per);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* l = logits + (size_t)row * vocab;
    float inv_t = 1.f / temperature[row], p = top_p[row];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, clean_logit(to_float(l[i])));
    m = block_max(m);
    float total = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
      total += expf((clean_logit(to_float(l[i])) - m) * inv_t);
    total = block_sum(total);
    // The threshold: the largest key whose tokens' mass still reaches p · total.
    float target_mass = p * total;
    uint32_t lo = 0u, hi = order_key(m) + 1u;  // mass(≥ lo) ≥ target, mass(≥ hi) < target
    if (p >= 1.f) hi = 1u;                     // everything: the bisection is skipped
    while (hi - lo > 1u) {
      uint32_t mid = lo + (hi - lo) / 2u;
      float mass = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float x = clean_logit(to_float(l[i]));
        if (order_key(x) >= mid) mass += expf((x - m) * inv_t);
      }
      if (block_sum(mass) >= target_mass) lo = mid; else hi = mid;
    }
    // The boundary logit x* (the smallest at or above the threshold), the mass strictly above
    // it, its ties and how many of them (lowest ids first) complete the nucleus.
    float boundary = INFINITY, above = 0.f;
    int ties = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = clean_logit(to_float(l[i]));
      if (order_key(x) >= lo) boundary = fminf(boundary, x);
    }
    boundary = -block_max(-boundary);
    uint32_t boundary_key = order_key(boundary);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = clean_logit(to_float(l[i]));
      uint32_t k = order_key(x);
      if (k > boundary_key) above += expf((x - m) * inv_t);
      ties += k == boundary_key;
    }
    above = block_sum(above);
    ties = (int)block_sum((float)ties);
    float w_tie = expf((boundary - m) * inv_t);
    // (Weights that underflowed to 0 cannot complete a nucleus: then all ties are in.)
    int take = ties;
    if (p < 1.f && w_tie > 0.f) take = (int)fminf((float)ties, ceilf((target_mass - above) / w_tie));
    take = max(1, min(ties, take));
    // Per-thread stretches: ties first (which of them are in), then the nucleus mass.
    int my_ties = 0;
    for (int i = lo_id; i < hi_id; ++i) my_ties += order_key(clean_logit(to_float(l[i]))) == boundary_key;
    seg_ties[threadIdx.x] = my_ties;
    __syncthreads();
    if (threadIdx.x == 0) {
      int run = 0;
      for (int t = 0; t < (int)blockDim.x; ++t) { int c = seg_ties[t]; seg_ties[t] = run; run += c; }
    }
    __syncthreads();
    int tie_rank = seg_ties[threadIdx.x];
    float mine = 0.f;
    int last_in = -1;
    for (int i = lo_id, r = tie_rank; i < hi_id; ++i) {
      float x = clean_logit(to_float(l[i]));
      uint32_t k = order_key(x);
      bool in = k > boundary_key || (k == boundary_key && r++ < take);
      if (in) { mine += expf((x - m) * inv_t); last_in = i; }
    }
    seg_mass[threadIdx.x] = mine;
    if (threadIdx.x == 0) chosen = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
      float run = 0.f;
      for (int t = 0; t < (int)blockDim.x; ++t) { float c = seg_mass[t]; seg_mass[t] = run; run += c; }
    }
    __syncthreads();
    float nucleus = above + take * w_tie;
    float draw = uniform[row] * nucleus, start = seg_mass[threadIdx.x];
    if (mine > 0.f && draw >= start && (draw < start + mine || threadIdx.x == blockDim.x - 1)) {
      float cum = start;
      int pick = last_in;  // rounding at the stretch's end
      for (int i = lo_id, r = tie_rank; i < hi_id; ++i) {
        float x = clean_logit(to_float(l[i]));
        uint32_t k = order_key(x);
        bool in = k > boundary_key || (k == boundary_key && r++ < take);
        if (!in) continue;
        cum += expf((x - m) * inv_t);
        if (draw < cum) { pick = i; break; }
      }
      chosen = pick;
    }
    __syncthreads();
    // Rounding past the last stretch with tokens: the last token of the nucleus.
    int fallback = (int)block_max((float)last_in);
    if (threadIdx.x == 0) out[row] = (uint32_t)(chosen >= 0 ? chosen : fallback);
    __syncthreads();  // `chosen` and the stretches are free for the next row
  }
}

// ---- AdamW, torch.optim.AdamW's single-tensor arithmetic ----
// p *= decay (1 − lr·wd, or 1 where the parameter does not decay); m += (g − m)(1 − β1);
// v = β2·v + (1 − β2)·g²; p −= step_size · m / (√v / bias2_sqrt + eps); g read as g · grad_scale
// (the clipping factor). Parameter and moments in T, the gradient in f32.

template <typename T>
__device__ void adamw(T* p, T* m, T* v, const float* grad, size_t n, float decay,
                      float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                      float bias2_sqrt, float eps, float grad_scale) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = grad[i] * grad_scale;
    float x = to_float(p[i]) * decay;
    float mo = to_float(m[i]);
    float mi = mo + one_minus_beta1 * (g - mo);
    float vi = to_float(v[i]) * beta2 + one_minus_beta2 * g * g;
    float denom = sqrtf(vi) / bias2_sqrt + eps;
    p[i] = from_float<T>(x + -step_size * (mi / denom));
    m[i] = from_float<T>(mi);
    v[i] = from_float<T>(vi);
  }
}

// ---- Entry points: one per kernel and storage type (`_f32`, `_bf16`) ----

#define DISTILL_KERNELS(T, S)                                                                    \
  extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int rows, int dim,   \
                                              float eps) {                                       \
    rms_norm_fwd<T>(x, w, y, rows, dim, eps);                                                    \
  }                                                                                              \
  extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* dy, T* dx,        \
                                              float* dw_partial, int rows, int dim, float eps) { \
    rms_norm_bwd<T>(x, w, dy, dx, dw_partial, rows, dim, eps);                                   \
  }                                                                                              \
  extern "C" __global__ void sum_partials_##S(const float* partial, T* out, int parts,           \
                                              int dim) {                                         \
    sum_partials<T>(partial, out, parts, dim);                                                   \
  }                                                                                              \
  extern "C" __global__ void swiglu_fwd_##S(const T* gate, const T* up, T* y, size_t n) {        \
    swiglu_fwd<T>(gate, up, y, n);                                                               \
  }                                                                                              \
  extern "C" __global__ void swiglu_bwd_##S(const T* gate, const T* up, const T* dy, T* dgate,   \
                                            T* dup, size_t n) {                                  \
    swiglu_bwd<T>(gate, up, dy, dgate, dup, n);                                                  \
  }                                                                                              \
  extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* y, int batch,   \
                                      int heads, int seq, int dim, float sign) {                 \
    rope<T>(x, cos, sin, y, batch, heads, seq, dim, sign);                                       \
  }                                                                                              \
  extern "C" __global__ void cross_entropy_##S(const T* logits, const uint32_t* targets,         \
                                               float* loss, T* dlogits, int rows, int vocab,     \
                                               float scale, int want_grad) {                     \
    cross_entropy<T>(logits, targets, loss, dlogits, rows, vocab, scale, want_grad);             \
  }                                                                                              \
  extern "C" __global__ void attention_softmax_##S(                                              \
      const T* scores, const uint32_t* starts, T* probs, float* lse, size_t total_rows,          \
      int groups, int rows, int keys, int seq, int q0, int k0, float scale) {                    \
    attention_softmax<T>(scores, starts, probs, lse, total_rows, groups, rows, keys, seq, q0, k0, \
                         scale);                                                                 \
  }                                                                                              \
  extern "C" __global__ void attention_softmax_bwd_##S(                                          \
      const T* scores, const T* dprobs, const float* lse, const float* row_dot,                  \
      const uint32_t* starts, T* probs, T* dscores, size_t total_rows, int groups, int rows,     \
      int keys, int seq, int q0, int k0, float scale) {                                          \
    attention_softmax_bwd<T>(scores, dprobs, lse, row_dot, starts, probs, dscores, total_rows,   \
                             groups, rows, keys, seq, q0, k0, scale);                            \
  }                                                                                              \
  extern "C" __global__ void decode_attention_##S(                                               \
      const T* q, const T* keys, const T* values, const uint32_t* slots, const uint32_t* lengths, \
      T* out, int m, int kv, int n_rep, int capacity, int dim, float scale) {                    \
    decode_attention<T>(q, keys, values, slots, lengths, out, m, kv, n_rep, capacity, dim, scale); \
  }                                                                                              \
  extern "C" __global__ void sample_rows_##S(const T* logits, const float* temperature,         \
                                             const float* top_p, const float* uniform,          \
                                             uint32_t* out, int rows, int vocab) {              \
    sample_rows<T>(logits, temperature, top_p, uniform, out, rows, vocab);                       \
  }                                                                                              \
  extern "C" __global__ void adamw_##S(T* p, T* m, T* v, const float* grad, size_t n,            \
                                       float decay, float one_minus_beta1, float beta2,          \
                                       float one_minus_beta2, float step_size, float bias2_sqrt, \
                                       float eps, float grad_scale) {                            \
    adamw<T>(p, m, v, grad, n, decay, one_minus_beta1, beta2, one_minus_beta2, step_size,        \
             bias2_sqrt, eps, grad_scale);                                                       \
  }

DISTILL_KERNELS(float, f32)
DISTILL_KERNELS(bf16, bf16)
