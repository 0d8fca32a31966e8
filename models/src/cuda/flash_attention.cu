// Flash attention for training: causal, document-masked, grouped-query attention over packed
// rows in bf16 on tensor cores (wmma, sm_80 and later), forward and backward, with no score
// tensor in global memory. Compiled to PTX by models/build.rs and launched from
// models/src/cuda/launch/flash.rs for models/src/chunked_attention.rs, which uses it for bf16
// inputs of head dim 64 or 128 (Qwen2.5, Qwen3, Llama 3, SmolLM2) and its chunked matmuls
// otherwise.
//
// Layouts: q, o, dq `[batch, heads, seq, D]`; k, v, dk, dv `[batch, kv_heads, seq, D]`; starts
// `[batch, seq]` (each position's document start: query i sees key j iff starts[i] ≤ j ≤ i);
// lse and row_dot `[batch, heads, seq]` f32 (a query row's log-sum-exp of its scaled scores, and
// Σ dO ∘ O). Scores, probabilities and their gradients are f32 in registers and shared memory,
// rounded to bf16 only where they feed a tensor-core product (P before P·V and Pᵀ·dO, dS
// before dS·K and dSᵀ·Q), as the chunked path rounds its probabilities and score gradients.
//
// Why these shapes:
// - The forward takes two passes over a query tile's keys: the first finds each row's maximum
//   and sum (two f32 scalars a row, in lanes), the second sums exp(s − lse)·V straight into
//   wmma accumulators. One pass would need to rescale the accumulators per row as the maximum
//   moves, and wmma does not say which lane holds which row; the second Q·Kᵀ is the price.
// - The backward is two kernels, each owning what it writes: one per key tile accumulating dK
//   and dV over every query head of its group and every query that sees the tile, one per
//   query tile accumulating dQ over its keys. No atomics, so gradients are the same on every
//   run (as in train.cu), for two extra products per tile over flash-attention-2's five.
// - Tiles are staged in static shared memory under 48 KiB (no opt-in launch attribute), with
//   rows padded by 8 elements against bank conflicts (the pads keep every wmma pointer 32-byte
//   aligned, which wmma requires).
//
// Each kernel is correct for any seq, batch and head count; the block size is fixed (WARPS
// warps of 32 threads), and models/tests/flash_attention.rs runs this file through the emulation of
// CUDA's threads (with an emulated wmma) against attention's closed form.

#include "common.cuh"
#ifndef DISTILL_EMULATE
#include <mma.h>
#endif

// bf16 wmma needs compute capability 8.0: built for an older one (CUDA_COMPUTE_CAP below 80)
// the module is empty and `cuda::flash_attention_runs` is false.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

namespace flash {

namespace wmma = nvcuda::wmma;

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
// A matrix_b read column-major: Kᵀ (or Qᵀ, Vᵀ, dOᵀ) straight from row-major tiles of K.
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Rows [first, first + rows) of a `[seq, D]` matrix into `dst` (row stride LD), zeros for rows
// at or past `seq`; 16 bytes a thread at a time, all threads of the block (element by element
// where `src` is not 16-byte aligned: a tensor viewed from an odd offset).
template <int D, int LD>
__device__ void stage_rows(bf16* dst, const bf16* src, int first, int rows, int seq) {
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
      int r = e / D, c = e % D;
      dst[r * LD + c] = first + r < seq ? src[(size_t)(first + r) * D + c] : from_float<bf16>(0.f);
    }
    return;
  }
  constexpr int VECS = D / 8;  // uint4s a row
  for (int e = threadIdx.x; e < rows * VECS; e += blockDim.x) {
    int r = e / VECS, c = (e % VECS) * 8;
    uint4 value = {0u, 0u, 0u, 0u};
    if (first + r < seq) value = *reinterpret_cast<const uint4*>(src + (size_t)(first + r) * D + c);
    *reinterpret_cast<uint4*>(dst + r * LD + c) = value;
  }
}

// A warp's 16×16 f32 tile (in `scratch`, row stride SLD) written as bf16 to rows
// [row0, row0 + 16) of a `[seq, D]` matrix at column `col`, rows at or past `seq` left out.
template <int D, int SLD>
__device__ void write_tile(bf16* dst, const float* scratch, int row0, int col, int seq) {
  int lane = threadIdx.x % 32, r = lane / 2, c0 = (lane % 2) * 8;
  if (row0 + r < seq)
    for (int c = c0; c < c0 + 8; ++c)
      dst[(size_t)(row0 + r) * D + col + c] = from_float<bf16>(scratch[r * SLD + c]);
}

// Stores a warp's accumulators (16 rows × D) through `scratch` into rows [row0, row0 + 16).
template <int D, int SLD>
__device__ void write_rows(bf16* dst, const FragC* acc, float* scratch, int row0, int seq) {
  for (int c = 0; c < D / 16; ++c) {
    wmma::store_matrix_sync(scratch, acc[c], SLD, wmma::mem_row_major);
    __syncwarp();
    write_tile<D, SLD>(dst, scratch, row0, c * 16, seq);
    __syncwarp();  // every lane has read the tile before the next one overwrites it
  }
}

// Block `blockIdx.x` of a grid of (batch × heads) × tiles of `rows` positions: its (batch,
// head) index and its tile's first position. The tiles with the most work go first, so the
// grid does not end waiting on a few long blocks: the last query tiles (they see the most
// keys), or with `first_keys` the first key tiles (the most queries see them).
struct Tile {
  int outer, first;
};
__device__ __forceinline__ Tile tile_of(int seq, int rows, bool first_keys) {
  int n = (seq + rows - 1) / rows, at = (int)blockIdx.x % n;
  return {(int)blockIdx.x / n, (first_keys ? at : n - 1 - at) * rows};
}

// ---- Forward: o and lse for a tile of 16·WARPS query rows of one (batch, head) ----

template <int D>
__device__ void forward(const bf16* q, const bf16* k, const bf16* v, const uint32_t* starts,
                        bf16* o, float* lse, int heads, int kv_heads, int seq, float scale) {
  constexpr int WARPS = 4, BM = 16 * WARPS, BN = 32, LD = D + 8, SLD = BN + 4, PLD = BN + 8;
  // Q, then K (first BN rows) and V (the next BN): 2·BN = BM rows.
  __shared__ __align__(32) bf16 tiles[BM * LD];
  __shared__ __align__(32) float scores[WARPS][16 * SLD];
  __shared__ __align__(32) bf16 probs[WARPS][16 * PLD];
  bf16* ks = tiles;
  bf16* vs = tiles + BN * LD;

  const Tile tile = tile_of(seq, BM, false);
  const int bh = tile.outer, q0 = tile.first;
  const int b = bh / heads, g = (bh % heads) / (heads / kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bf16* qh = q + (size_t)bh * seq * D;
  const bf16* kh = k + ((size_t)b * kv_heads + g) * seq * D;
  const bf16* vh = v + ((size_t)b * kv_heads + g) * seq * D;
  const uint32_t* st = starts + (size_t)b * seq;

  stage_rows<D, LD>(tiles, qh, q0, BM, seq);
  __syncthreads();
  FragA qf[D / 16];
  for (int i = 0; i < D / 16; ++i)
    wmma::load_matrix_sync(qf[i], tiles + warp * 16 * LD + i * 16, LD);
  __syncthreads();  // the Q tile's memory becomes the K and V tiles

  // Lane pairs own a row: lane 2r and 2r+1 take row r's columns 0..15 and 16..31 of a tile.
  const int r = lane / 2, half = lane % 2;
  const int row = q0 + warp * 16 + r;
  const bool valid = row < seq;
  const int row_start = valid ? (int)st[row] : 0;
  const int first_key = (int)st[q0] / BN * BN;
  const int last_key = min(q0 + BM, seq) - 1;
  float* sw = scores[warp];
  bf16* pw = probs[warp];

  // S = Q·Kᵀ of the warp's rows against the staged key tile, into `sw`.
  auto tile_scores = [&]() {
    for (int c = 0; c < BN / 16; ++c) {
      FragC s;
      wmma::fill_fragment(s, 0.f);
      for (int i = 0; i < D / 16; ++i) {
        FragBt kf;
        wmma::load_matrix_sync(kf, ks + c * 16 * LD + i * 16, LD);
        wmma::mma_sync(s, qf[i], kf, s);
      }
      wmma::store_matrix_sync(sw + c * 16, s, SLD, wmma::mem_row_major);
    }
    __syncwarp();
  };

  // Pass 1: each row's running maximum and sum of exponentials.
  float m = -INFINITY, l = 0.f;
  for (int kt = first_key; kt <= last_key; kt += BN) {
    stage_rows<D, LD>(ks, kh, kt, BN, seq);
    __syncthreads();
    tile_scores();
    float x[16], tile_max = -INFINITY;
    for (int c = 0; c < 16; ++c) {
      int j = kt + half * 16 + c;
      bool visible = valid && j >= row_start && j <= row;
      x[c] = visible ? sw[r * SLD + half * 16 + c] * scale : -INFINITY;
      tile_max = fmaxf(tile_max, x[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    float m_new = fmaxf(m, tile_max);
    float base = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet adds 0
    float sum = 0.f;
    for (int c = 0; c < 16; ++c) sum += expf(x[c] - base);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * expf(m - base) + sum;
    m = m_new;
    __syncthreads();  // the key tile is read by every warp before the next one is staged
  }
  // Every valid row sees its own key, so l > 0 there.
  const float row_lse = valid ? m + logf(l) : 0.f;

  // Pass 2: O = Σ exp(s − lse) · V over the same tiles.
  FragC of[D / 16];
  for (int c = 0; c < D / 16; ++c) wmma::fill_fragment(of[c], 0.f);
  for (int kt = first_key; kt <= last_key; kt += BN) {
    stage_rows<D, LD>(ks, kh, kt, BN, seq);
    stage_rows<D, LD>(vs, vh, kt, BN, seq);
    __syncthreads();
    tile_scores();
    for (int c = 0; c < 16; ++c) {
      int j = kt + half * 16 + c;
      bool visible = valid && j >= row_start && j <= row;
      float p = visible ? expf(sw[r * SLD + half * 16 + c] * scale - row_lse) : 0.f;
      pw[r * PLD + half * 16 + c] = from_float<bf16>(p);
    }
    __syncwarp();
    FragA pf[BN / 16];
    for (int kk = 0; kk < BN / 16; ++kk) wmma::load_matrix_sync(pf[kk], pw + kk * 16, PLD);
    for (int c = 0; c < D / 16; ++c)
      for (int kk = 0; kk < BN / 16; ++kk) {
        FragB vf;
        wmma::load_matrix_sync(vf, vs + kk * 16 * LD + c * 16, LD);
        wmma::mma_sync(of[c], pf[kk], vf, of[c]);
      }
    __syncthreads();
  }

  write_rows<D, SLD>(o + (size_t)bh * seq * D, of, sw, q0 + warp * 16, seq);
  if (valid && half == 0) lse[(size_t)bh * seq + row] = row_lse;
}

// ---- Backward ----

// The probability and the score gradient of query `i` and key `j` from the recomputed score
// `s` and the probability's gradient `dp`: P = exp(s·scale − lse), dS = P·(dP − row_dot)·scale.
struct ScoreGrad {
  float p, ds;
};
__device__ __forceinline__ ScoreGrad score_grad(float s, float dp, float lse, float dot,
                                                bool visible, float scale) {
  float p = visible ? expf(s * scale - lse) : 0.f;
  return {p, p * (dp - dot) * scale};
}

// dK and dV of a tile of 16·WARPS keys of one (batch, kv head): over every query head of the
// group and every query tile that sees the keys (from the tile's first key to the end of the
// document holding its last), S·ᵀ and dPᵀ per warp, then dV += Pᵀ·dO and dK += dSᵀ·Q.
template <int D>
__device__ void backward_kv(const bf16* q, const bf16* k, const bf16* v, const bf16* d_out,
                            const float* lse, const float* row_dot, const uint32_t* starts,
                            bf16* dk, bf16* dv, int heads, int kv_heads, int seq, float scale) {
  constexpr int WARPS = 2, BK = 16 * WARPS, BQ = 16, LD = D + 8, SLD = BQ + 4, PLD = BQ + 8;
  __shared__ __align__(32) bf16 kv_tile[2 * BK * LD];  // K rows, then V rows
  __shared__ __align__(32) bf16 q_tile[BQ * LD];
  __shared__ __align__(32) bf16 do_tile[BQ * LD];
  __shared__ float lse_s[BQ], dot_s[BQ];
  __shared__ int start_s[BQ];
  __shared__ __align__(32) float s_buf[WARPS][16 * SLD];
  __shared__ __align__(32) float dp_buf[WARPS][16 * SLD];
  __shared__ __align__(32) bf16 p_buf[WARPS][16 * PLD];
  __shared__ __align__(32) bf16 ds_buf[WARPS][16 * PLD];

  const Tile tile = tile_of(seq, BK, true);
  const int bg = tile.outer, k0 = tile.first;  // bg: batch × kv head
  const int b = bg / kv_heads, g = bg % kv_heads, n_rep = heads / kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t* st = starts + (size_t)b * seq;
  const int key0 = k0 + warp * 16;  // the warp's first key
  const int last_key = min(k0 + BK, seq) - 1;

  stage_rows<D, LD>(kv_tile, k + (size_t)bg * seq * D, k0, BK, seq);
  stage_rows<D, LD>(kv_tile + BK * LD, v + (size_t)bg * seq * D, k0, BK, seq);
  __syncthreads();

  FragC dkf[D / 16], dvf[D / 16];
  for (int c = 0; c < D / 16; ++c) {
    wmma::fill_fragment(dkf[c], 0.f);
    wmma::fill_fragment(dvf[c], 0.f);
  }
  float* sw = s_buf[warp];
  float* dpw = dp_buf[warp];
  bf16* pw = p_buf[warp];
  bf16* dsw = ds_buf[warp];

  for (int rep = 0; rep < n_rep; ++rep) {
    const size_t bh = (size_t)b * heads + g * n_rep + rep;
    for (int qt = k0; qt < seq; qt += BQ) {
      // Starts never decrease along a row: once a query's document begins after the tile's
      // last key, no later query sees the tile.
      if ((int)st[qt] > last_key) break;
      stage_rows<D, LD>(q_tile, q + bh * seq * D, qt, BQ, seq);
      stage_rows<D, LD>(do_tile, d_out + bh * seq * D, qt, BQ, seq);
      for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
        bool in = qt + i < seq;
        lse_s[i] = in ? lse[bh * seq + qt + i] : 0.f;
        dot_s[i] = in ? row_dot[bh * seq + qt + i] : 0.f;
        start_s[i] = in ? (int)st[qt + i] : seq;  // past every key: nothing visible
      }
      __syncthreads();
      FragC s, dp;
      wmma::fill_fragment(s, 0.f);
      wmma::fill_fragment(dp, 0.f);
      for (int i = 0; i < D / 16; ++i) {
        FragA a;
        FragBt bt;
        wmma::load_matrix_sync(a, kv_tile + warp * 16 * LD + i * 16, LD);
        wmma::load_matrix_sync(bt, q_tile + i * 16, LD);
        wmma::mma_sync(s, a, bt, s);
        wmma::load_matrix_sync(a, kv_tile + (BK + warp * 16) * LD + i * 16, LD);
        wmma::load_matrix_sync(bt, do_tile + i * 16, LD);
        wmma::mma_sync(dp, a, bt, dp);
      }
      wmma::store_matrix_sync(sw, s, SLD, wmma::mem_row_major);
      wmma::store_matrix_sync(dpw, dp, SLD, wmma::mem_row_major);
      __syncwarp();
      // Element (key kr, query qc) of the transposed tiles: 8 a lane.
      for (int e = lane * 8; e < lane * 8 + 8; ++e) {
        int kr = e / 16, qc = e % 16, j = key0 + kr, i = qt + qc;
        bool visible = j < seq && j >= start_s[qc] && j <= i;
        ScoreGrad sg = score_grad(sw[kr * SLD + qc], dpw[kr * SLD + qc], lse_s[qc], dot_s[qc],
                                  visible, scale);
        pw[kr * PLD + qc] = from_float<bf16>(sg.p);
        dsw[kr * PLD + qc] = from_float<bf16>(sg.ds);
      }
      __syncwarp();
      FragA pf, dsf;
      wmma::load_matrix_sync(pf, pw, PLD);
      wmma::load_matrix_sync(dsf, dsw, PLD);
      for (int c = 0; c < D / 16; ++c) {
        FragB bf;
        wmma::load_matrix_sync(bf, do_tile + c * 16, LD);
        wmma::mma_sync(dvf[c], pf, bf, dvf[c]);
        wmma::load_matrix_sync(bf, q_tile + c * 16, LD);
        wmma::mma_sync(dkf[c], dsf, bf, dkf[c]);
      }
      __syncthreads();  // every warp is done with the query tile before the next is staged
    }
  }
  write_rows<D, SLD>(dk + (size_t)bg * seq * D, dkf, sw, key0, seq);
  write_rows<D, SLD>(dv + (size_t)bg * seq * D, dvf, sw, key0, seq);
}

// dQ of a tile of 16·WARPS query rows of one (batch, head): over the key tiles the rows see,
// S and dP per warp, then dQ += dS·K.
template <int D>
__device__ void backward_q(const bf16* q, const bf16* k, const bf16* v, const bf16* d_out,
                           const float* lse, const float* row_dot, const uint32_t* starts,
                           bf16* dq, int heads, int kv_heads, int seq, float scale) {
  constexpr int WARPS = 2, BQ = 16 * WARPS, BK = 16, LD = D + 8, SLD = BK + 4, PLD = BK + 8;
  // Q rows then dO rows while the warps load their fragments; then K rows and V rows.
  __shared__ __align__(32) bf16 tiles[2 * BQ * LD];
  __shared__ float lse_s[BQ], dot_s[BQ];
  __shared__ int start_s[BQ];
  __shared__ __align__(32) float s_buf[WARPS][16 * SLD];
  __shared__ __align__(32) float dp_buf[WARPS][16 * SLD];
  __shared__ __align__(32) bf16 ds_buf[WARPS][16 * PLD];
  bf16* k_tile = tiles;
  bf16* v_tile = tiles + BK * LD;

  const Tile tile = tile_of(seq, BQ, false);
  const int bh = tile.outer, q0 = tile.first;
  const int b = bh / heads, g = (bh % heads) / (heads / kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t* st = starts + (size_t)b * seq;
  const bf16* kh = k + ((size_t)b * kv_heads + g) * seq * D;
  const bf16* vh = v + ((size_t)b * kv_heads + g) * seq * D;

  stage_rows<D, LD>(tiles, q + (size_t)bh * seq * D, q0, BQ, seq);
  stage_rows<D, LD>(tiles + BQ * LD, d_out + (size_t)bh * seq * D, q0, BQ, seq);
  for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
    bool in = q0 + i < seq;
    lse_s[i] = in ? lse[(size_t)bh * seq + q0 + i] : 0.f;
    dot_s[i] = in ? row_dot[(size_t)bh * seq + q0 + i] : 0.f;
    start_s[i] = in ? (int)st[q0 + i] : seq;
  }
  __syncthreads();
  FragA qf[D / 16], df[D / 16];
  for (int i = 0; i < D / 16; ++i) {
    wmma::load_matrix_sync(qf[i], tiles + warp * 16 * LD + i * 16, LD);
    wmma::load_matrix_sync(df[i], tiles + (BQ + warp * 16) * LD + i * 16, LD);
  }
  __syncthreads();  // the tiles' memory becomes the K and V tiles

  FragC dqf[D / 16];
  for (int c = 0; c < D / 16; ++c) wmma::fill_fragment(dqf[c], 0.f);
  float* sw = s_buf[warp];
  float* dpw = dp_buf[warp];
  bf16* dsw = ds_buf[warp];
  const int row0 = q0 + warp * 16;
  const int first_key = (int)st[q0] / BK * BK;
  const int last_key = min(q0 + BQ, seq) - 1;
  for (int kt = first_key; kt <= last_key; kt += BK) {
    stage_rows<D, LD>(k_tile, kh, kt, BK, seq);
    stage_rows<D, LD>(v_tile, vh, kt, BK, seq);
    __syncthreads();
    FragC s, dp;
    wmma::fill_fragment(s, 0.f);
    wmma::fill_fragment(dp, 0.f);
    for (int i = 0; i < D / 16; ++i) {
      FragBt bt;
      wmma::load_matrix_sync(bt, k_tile + i * 16, LD);
      wmma::mma_sync(s, qf[i], bt, s);
      wmma::load_matrix_sync(bt, v_tile + i * 16, LD);
      wmma::mma_sync(dp, df[i], bt, dp);
    }
    wmma::store_matrix_sync(sw, s, SLD, wmma::mem_row_major);
    wmma::store_matrix_sync(dpw, dp, SLD, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane * 8; e < lane * 8 + 8; ++e) {
      int qr = e / 16, kc = e % 16, i = row0 + qr, j = kt + kc, at = warp * 16 + qr;
      bool visible = i < seq && j >= start_s[at] && j <= i;
      ScoreGrad sg =
          score_grad(sw[qr * SLD + kc], dpw[qr * SLD + kc], lse_s[at], dot_s[at], visible, scale);
      dsw[qr * PLD + kc] = from_float<bf16>(sg.ds);
    }
    __syncwarp();
    FragA dsf;
    wmma::load_matrix_sync(dsf, dsw, PLD);
    for (int c = 0; c < D / 16; ++c) {
      FragB kb;
      wmma::load_matrix_sync(kb, k_tile + c * 16, LD);
      wmma::mma_sync(dqf[c], dsf, kb, dqf[c]);
    }
    __syncthreads();
  }
  write_rows<D, SLD>(dq + (size_t)bh * seq * D, dqf, sw, row0, seq);
}

// row_dot[r] = Σ_d dO[r, d] · O[r, d] in f32 (the softmax backward's row term), a warp per row:
// what both backward kernels read, without f32 copies of dO and O.
template <int D>
__device__ void row_dot(const bf16* d_out, const bf16* out, float* dot, size_t rows) {
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (size_t r = (size_t)blockIdx.x * warps + threadIdx.x / 32; r < rows;
       r += (size_t)gridDim.x * warps) {
    float sum = 0.f;
    for (int c = lane; c < D; c += 32)
      sum += to_float(d_out[r * D + c]) * to_float(out[r * D + c]);
    sum = warp_sum(sum);
    if (lane == 0) dot[r] = sum;
  }
}

}  // namespace flash

// ---- Entry points: bf16 only, one per head dim (`_d64`, `_d128`) ----
// Blocks: forward 128 threads, one per 64 query rows of a (batch, head); backward_kv 64
// threads, one per 32 keys of a (batch, kv head); backward_q 64 threads, one per 32 query rows;
// row_dot any grid and block (rows in a grid-stride loop, a warp each).

#define FLASH_KERNELS(D)                                                                         \
  extern "C" __global__ void flash_attention_fwd_d##D##_bf16(                                    \
      const bf16* q, const bf16* k, const bf16* v, const uint32_t* starts, bf16* o, float* lse,  \
      int heads, int kv_heads, int seq, float scale) {                                           \
    flash::forward<D>(q, k, v, starts, o, lse, heads, kv_heads, seq, scale);                     \
  }                                                                                              \
  extern "C" __global__ void flash_attention_row_dot_d##D##_bf16(                                \
      const bf16* d_out, const bf16* out, float* dot, size_t rows) {                             \
    flash::row_dot<D>(d_out, out, dot, rows);                                                    \
  }                                                                                              \
  extern "C" __global__ void flash_attention_bwd_kv_d##D##_bf16(                                 \
      const bf16* q, const bf16* k, const bf16* v, const bf16* d_out, const float* lse,          \
      const float* row_dot, const uint32_t* starts, bf16* dk, bf16* dv, int heads, int kv_heads, \
      int seq, float scale) {                                                                    \
    flash::backward_kv<D>(q, k, v, d_out, lse, row_dot, starts, dk, dv, heads, kv_heads, seq,    \
                          scale);                                                                \
  }                                                                                              \
  extern "C" __global__ void flash_attention_bwd_q_d##D##_bf16(                                  \
      const bf16* q, const bf16* k, const bf16* v, const bf16* d_out, const float* lse,          \
      const float* row_dot, const uint32_t* starts, bf16* dq, int heads, int kv_heads, int seq,  \
      float scale) {                                                                             \
    flash::backward_q<D>(q, k, v, d_out, lse, row_dot, starts, dq, heads, kv_heads, seq, scale); \
  }

FLASH_KERNELS(64)
FLASH_KERNELS(128)

#endif  // __CUDA_ARCH__ >= 800
