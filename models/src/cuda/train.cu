// Training kernels for NVIDIA GPUs: RMSNorm, RoPE and SwiGLU with their backward passes, the
// masked softmax of a chunk of attention scores and its backward, the cross-entropy of a chunk
// of logit rows, and the AdamW step. Compiled to PTX by models/build.rs with the pinned nvcc
// (only with the `cuda` feature) and launched from models/src/cuda/launch/train.rs.
//
// Every kernel here and in generate.cu is written to be correct for any grid and any block of
// 32..1024 threads (a multiple of 32; decode attention: up to 128): rows and elements are
// walked with grid- and block-stride loops, so the launch shape is a matter of speed only.
// That is what lets models/tests/cuda_kernels.rs run these very files on the CPU
// (models/tests/cuda_emulation/) with small blocks and grids and compare them with candle's
// composed ops.
//
// Reductions are deterministic: a block's partial sums combine in a fixed order, and the
// RMSNorm weight gradient is summed per block, then over blocks in block order (no atomics),
// so a resumed run reproduces the original bit for bit on the same GPU.
//
// Arithmetic is f32 whatever the storage type (f32 or bf16, rounded to nearest even once per
// stored value), as PyTorch's kernels and Liger's do.

#include "common.cuh"

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

#define TRAIN_KERNELS(T, S)                                                                    \
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
  extern "C" __global__ void adamw_##S(T* p, T* m, T* v, const float* grad, size_t n,            \
                                       float decay, float one_minus_beta1, float beta2,          \
                                       float one_minus_beta2, float step_size, float bias2_sqrt, \
                                       float eps, float grad_scale) {                            \
    adamw<T>(p, m, v, grad, n, decay, one_minus_beta1, beta2, one_minus_beta2, step_size,        \
             bias2_sqrt, eps, grad_scale);                                                       \
  }

TRAIN_KERNELS(float, f32)
TRAIN_KERNELS(bf16, bf16)
