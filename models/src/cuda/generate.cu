// Generation kernels for NVIDIA GPUs: writes into the paged KV pool, decode attention over it
// and sampling, so a decode step needs one write and one attention launch per layer and reads
// back only the sampled ids; and each row's top k (logit distillation's teacher targets).
// Compiled and tested as train.cu is (see its header).

#include "common.cuh"

// ---- Writes into the KV pool (models/src/transformer/step.rs) ----
// Row r of `src` [rows, dim] goes to row `targets[r]` of `dst` [*, dim]: a step's new keys (or
// values) of every sequence into their blocks, in one launch. No two rows share a target.

template <typename T>
__device__ void set_rows(const T* src, const uint32_t* targets, T* dst, size_t rows, int dim) {
  size_t n = rows * dim;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[(size_t)targets[i / dim] * dim + i % dim] = src[i];
}

// ---- Decode attention over the KV pool (models/src/transformer/step.rs) ----
// Every sequence that decodes one token attends its own history in one launch: `q` [m, heads,
// dim] (heads = kv · n_rep, HF's grouping: kv head g serves query heads g·n_rep ..), the pool
// `keys`/`values` [blocks, kv, block, dim] (kv_pool.rs), row i's blocks `tables[i ·
// table_width ..]` in position order (key j lies at offset j % block of its ⌊j / block⌋-th
// block) and its visible keys `lengths[i]` (history and the new one). out [m, heads, dim] =
// softmax(scale · q·kᵀ) · v.
// A block per (row, kv head) reads that sequence's keys and values once for its n_rep query
// heads; each warp walks every warps-th key with an online softmax (a lane holds dims lane,
// lane + 32, ...), then the warps' partial results combine in warp order. Needs dim a multiple
// of 32 up to 256, n_rep ≤ 8 and 32..128 threads a block (launch/generate.rs checks; other
// shapes take the composed ops).

#define DECODE_MAX_REP 8
#define DECODE_MAX_LANE_DIMS 8
#define DECODE_MAX_WARPS 4

template <typename T>
__device__ void decode_attention(const T* q, const T* keys, const T* values, const uint32_t* tables,
                                 const uint32_t* lengths, T* out, int m, int kv, int n_rep,
                                 int table_width, int block, int dim, float scale) {
  __shared__ float part_max[DECODE_MAX_WARPS][DECODE_MAX_REP];
  __shared__ float part_sum[DECODE_MAX_WARPS][DECODE_MAX_REP];
  __shared__ float part_out[DECODE_MAX_WARPS][DECODE_MAX_REP][DECODE_MAX_LANE_DIMS * 32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int lane_dims = dim / 32;
  for (size_t pair = blockIdx.x; pair < (size_t)m * kv; pair += gridDim.x) {
    int row = (int)(pair / kv), g = (int)(pair % kv);
    const T* qr = q + ((size_t)row * kv + g) * n_rep * dim;
    const uint32_t* table = tables + (size_t)row * table_width;
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
      size_t key = (((size_t)table[j / block] * kv + g) * block + j % block) * dim;
      for (int e = 0; e < DECODE_MAX_LANE_DIMS; ++e) {
        size_t at = key + e * 32 + lane;
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

// ---- Sampling on the device (teacher/src/engine/sample_step.rs) ----
// One token per row of `logits` [rows, vocab] at temperature T (≤ 0: the arg-max, lowest id
// first), top-k `top_k` (0 or ≥ vocab: off) and top-p `top_p` (1: off), from the row's uniform
// draw `uniform` in [0, 1) (drawn on the host from the sequence's own generator, one per token
// as the host sampler draws): only the ids cross to the host. The candidates are the host's
// (teacher/src/sampling.rs): the k most likely tokens, ties to the lower id; among them the
// nucleus, the most likely (ties to the lower id) whose weights exp((l − max) / T) first reach
// top_p of the candidates' total. Both are found as threshold logits by bisection over the
// logits' order (32 passes over the row each) instead of a sort, the last tie admitted by a
// prefix count over id order. The draw walks the nucleus in id order (the host walks it most
// likely first: the same distribution, another token for the same draw). NaN logits count as
// −inf. A block per row.

// A float's rank in the total order of floats, as an unsigned int (larger float, larger key).
__device__ __forceinline__ uint32_t order_key(float x) {
  uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float clean_logit(float x) { return x != x ? -INFINITY : x; }

// The sum of `count` over the threads before this one (an exclusive prefix in thread order,
// which is id order for the threads' stretches), through the block's scratch `seg`.
template <typename V>
__device__ V threads_before(V count, V* seg) {
  seg[threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    V run = 0;
    for (int t = 0; t < (int)blockDim.x; ++t) { V c = seg[t]; seg[t] = run; run += c; }
  }
  __syncthreads();
  V before = seg[threadIdx.x];
  __syncthreads();  // `seg` is free for the next call only when every thread has read it
  return before;
}

template <typename T>
__device__ void sample_rows(const T* logits, const float* temperature, const float* top_p,
                            const uint32_t* top_k, const float* uniform, uint32_t* out, int rows,
                            int vocab) {
  __shared__ float seg_mass[1024];
  __shared__ int seg_ties[1024];
  __shared__ int chosen, last_candidate;
  // A thread's contiguous stretch of ids, so prefix sums over threads follow id order.
  int per = (vocab + blockDim.x - 1) / blockDim.x;
  int lo_id = min(vocab, (int)threadIdx.x * per), hi_id = min(vocab, lo_id + per);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* l = logits + (size_t)row * vocab;
    float inv_t = 1.f / temperature[row], p = top_p[row];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, clean_logit(to_float(l[i])));
    m = block_max(m);
    if (!(temperature[row] > 0.f)) {
      // Greedy: the lowest id holding the maximum (the host's arg-max; no draw).
      float lowest = -INFINITY;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (clean_logit(to_float(l[i])) == m) lowest = fmaxf(lowest, -(float)i);
      lowest = block_max(lowest);
      if (threadIdx.x == 0) out[row] = (uint32_t)(-lowest);
      continue;  // the same for every thread of the block
    }
    // Top-k: the candidates are the keys above `k_key` and its ties up to id `k_cut` (the
    // default admits every token: every key of a cleaned logit is above 0).
    uint32_t k_key = 0u;
    int k_cut = vocab, want = (int)min(top_k[row], (uint32_t)vocab);
    if (want > 0 && want < vocab) {
      uint32_t lo = 0u, hi = order_key(m) + 1u;  // count(≥ lo) ≥ want > count(≥ hi)
      while (hi - lo > 1u) {
        uint32_t mid = lo + (hi - lo) / 2u;
        float count = 0.f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
          count += order_key(clean_logit(to_float(l[i]))) >= mid;
        if (block_sum(count) >= (float)want) lo = mid; else hi = mid;
      }
      k_key = lo;  // a key some logit holds: count(≥ lo) > count(≥ lo + 1)
      float above = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        above += order_key(clean_logit(to_float(l[i]))) > k_key;
      int admit = want - (int)block_sum(above);  // ties at k_key taken, lowest ids first
      int my_ties = 0;
      for (int i = lo_id; i < hi_id; ++i) my_ties += order_key(clean_logit(to_float(l[i]))) == k_key;
      int r = threads_before(my_ties, seg_ties);
      if (r < admit && r + my_ties >= admit) {
        for (int i = lo_id; i < hi_id; ++i)
          if (order_key(clean_logit(to_float(l[i]))) == k_key && ++r == admit) {
            last_candidate = i;
            break;
          }
      }
      __syncthreads();
      k_cut = last_candidate;
      __syncthreads();  // `last_candidate` is read before the next row writes it
    }
    auto candidate = [&](uint32_t key, int i) {
      return key > k_key || (key == k_key && i <= k_cut);
    };
    float total = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = clean_logit(to_float(l[i]));
      if (candidate(order_key(x), i)) total += expf((x - m) * inv_t);
    }
    total = block_sum(total);
    // The threshold: the largest key whose candidates' mass still reaches p · total.
    float target_mass = p * total;
    uint32_t lo = 0u, hi = order_key(m) + 1u;  // mass(≥ lo) ≥ target, mass(≥ hi) < target
    if (p >= 1.f) hi = 1u;                     // everything: the bisection is skipped
    while (hi - lo > 1u) {
      uint32_t mid = lo + (hi - lo) / 2u;
      float mass = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float x = clean_logit(to_float(l[i]));
        uint32_t k = order_key(x);
        if (k >= mid && candidate(k, i)) mass += expf((x - m) * inv_t);
      }
      if (block_sum(mass) >= target_mass) lo = mid; else hi = mid;
    }
    // The boundary logit x* (the smallest at or above the threshold), the mass strictly above
    // it, its ties and how many of them (lowest ids first) complete the nucleus.
    float boundary = INFINITY, above = 0.f;
    int ties = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = clean_logit(to_float(l[i]));
      uint32_t k = order_key(x);
      if (k >= lo && candidate(k, i)) boundary = fminf(boundary, x);
    }
    boundary = -block_max(-boundary);
    uint32_t boundary_key = order_key(boundary);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = clean_logit(to_float(l[i]));
      uint32_t k = order_key(x);
      if (!candidate(k, i)) continue;
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
    for (int i = lo_id; i < hi_id; ++i) {
      uint32_t k = order_key(clean_logit(to_float(l[i])));
      my_ties += k == boundary_key && candidate(k, i);
    }
    int tie_rank = threads_before(my_ties, seg_ties);
    float mine = 0.f;
    int last_in = -1;
    for (int i = lo_id, r = tie_rank; i < hi_id; ++i) {
      float x = clean_logit(to_float(l[i]));
      uint32_t k = order_key(x);
      bool in = candidate(k, i) && (k > boundary_key || (k == boundary_key && r++ < take));
      if (in) { mine += expf((x - m) * inv_t); last_in = i; }
    }
    if (threadIdx.x == 0) chosen = -1;
    float start = threads_before(mine, seg_mass);
    float nucleus = above + take * w_tie;
    float draw = uniform[row] * nucleus;
    if (mine > 0.f && draw >= start && (draw < start + mine || threadIdx.x == blockDim.x - 1)) {
      float cum = start;
      int pick = last_in;  // rounding at the stretch's end
      for (int i = lo_id, r = tie_rank; i < hi_id; ++i) {
        float x = clean_logit(to_float(l[i]));
        uint32_t k = order_key(x);
        bool in = candidate(k, i) && (k > boundary_key || (k == boundary_key && r++ < take));
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
    __syncthreads();  // `chosen` is free for the next row
  }
}

// ---- Top k of each row (student/src/kd.rs: logit distillation's teacher targets) ----
// ids [rows, k] = each row's k largest logits, largest first, ties to the lower id (the
// ranking of distill_models::ops::top_k_ids, which the corpus's stored top-k uses), NaN as
// −inf. One pass over the row: each thread keeps its own best k in order (a later equal value
// never displaces an earlier, lower id), then thread 0 merges the threads' lists. k ≤ 32 and
// 32..128 threads a block (launch/generate.rs checks).

#define TOP_K_MAX 32
#define TOP_K_MAX_THREADS 128

// Whether (value a, id ia) ranks before (b, ib).
__device__ __forceinline__ bool ranks_before(float a, uint32_t ia, float b, uint32_t ib) {
  return a > b || (a == b && ia < ib);
}

template <typename T>
__device__ void top_k_rows(const T* logits, uint32_t* ids, int rows, int vocab, int k) {
  // One list per thread; rows of TOP_K_MAX + 1 so a warp's threads reading place j of their
  // lists hit 32 different banks.
  __shared__ float cand_value[TOP_K_MAX_THREADS][TOP_K_MAX + 1];
  __shared__ uint32_t cand_id[TOP_K_MAX_THREADS][TOP_K_MAX + 1];
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* l = logits + (size_t)row * vocab;
    float* value = cand_value[threadIdx.x];
    uint32_t* id = cand_id[threadIdx.x];
    int n = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      float x = to_float(l[i]);
      if (x != x) x = -INFINITY;
      if (n == k && !ranks_before(x, (uint32_t)i, value[k - 1], id[k - 1])) continue;
      int at = n < k ? n++ : k - 1;  // the last place, then moved up to its rank
      while (at > 0 && ranks_before(x, (uint32_t)i, value[at - 1], id[at - 1])) {
        value[at] = value[at - 1];
        id[at] = id[at - 1];
        --at;
      }
      value[at] = x;
      id[at] = (uint32_t)i;
    }
    for (int j = n; j < k; ++j) {  // fewer elements than k: never chosen over a real one
      value[j] = -INFINITY;
      id[j] = 0xffffffffu;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int heads[TOP_K_MAX_THREADS];
      for (int t = 0; t < (int)blockDim.x; ++t) heads[t] = 0;
      for (int r = 0; r < k; ++r) {
        int best = -1;
        for (int t = 0; t < (int)blockDim.x; ++t) {
          if (heads[t] >= k) continue;
          if (best < 0 || ranks_before(cand_value[t][heads[t]], cand_id[t][heads[t]],
                                       cand_value[best][heads[best]], cand_id[best][heads[best]]))
            best = t;
        }
        ids[(size_t)row * k + r] = cand_id[best][heads[best]];
        ++heads[best];
      }
    }
    __syncthreads();  // the lists are free for the next row
  }
}

// ---- Entry points: one per kernel and storage type (`_f32`, `_bf16`) ----

#define GENERATE_KERNELS(T, S)                                                                    \
  extern "C" __global__ void set_rows_##S(const T* src, const uint32_t* targets, T* dst,        \
                                          size_t rows, int dim) {                               \
    set_rows<T>(src, targets, dst, rows, dim);                                                   \
  }                                                                                              \
  extern "C" __global__ void decode_attention_##S(                                               \
      const T* q, const T* keys, const T* values, const uint32_t* tables,                        \
      const uint32_t* lengths, T* out, int m, int kv, int n_rep, int table_width, int block,      \
      int dim, float scale) {                                                                    \
    decode_attention<T>(q, keys, values, tables, lengths, out, m, kv, n_rep, table_width, block, \
                        dim, scale);                                                             \
  }                                                                                              \
  extern "C" __global__ void sample_rows_##S(const T* logits, const float* temperature,         \
                                             const float* top_p, const uint32_t* top_k,         \
                                             const float* uniform, uint32_t* out, int rows,     \
                                             int vocab) {                                       \
    sample_rows<T>(logits, temperature, top_p, top_k, uniform, out, rows, vocab);                \
  }                                                                                              \
  extern "C" __global__ void top_k_rows_##S(const T* logits, uint32_t* ids, int rows, int vocab, \
                                            int k) {                                             \
    top_k_rows<T>(logits, ids, rows, vocab, k);                                                  \
  }

GENERATE_KERNELS(float, f32)
GENERATE_KERNELS(bf16, bf16)
