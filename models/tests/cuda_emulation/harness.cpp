// Runs one kernel of models/src/cuda/train.cu, generate.cu or flash_attention.cu on the CPU
// (through emulate.h) for models/tests/cuda_kernels.rs and flash_attention.rs:
//
//   harness KERNEL DTYPE GRID BLOCK [ints and floats the kernel takes] < inputs > outputs
//
// Inputs and outputs are raw little-endian f32 arrays, one after another in the order below;
// with DTYPE bf16 the inputs are rounded to bf16 (as candle's `to_dtype` rounds) before the
// kernel and its bf16 outputs widened back. Built by the test with
// `c++ -std=c++20 -O2 -pthread -I models/src/cuda harness.cpp`.
#include "emulate.h"
#include "train.cu"
#include "generate.cu"
#include "flash_attention.cu"

#include <cstdio>
#include <cstdlib>
#include <string>

static std::vector<float> read_f32(size_t n) {
  std::vector<float> v(n);
  if (n && std::fread(v.data(), 4, n, stdin) != n) {
    std::fprintf(stderr, "harness: short input (wanted %zu floats)\n", n);
    std::exit(2);
  }
  return v;
}

static void write_f32(const std::vector<float>& v) { std::fwrite(v.data(), 4, v.size(), stdout); }

template <typename T> T narrow(float x);
template <> float narrow<float>(float x) { return x; }
template <> __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
static float widen(float x) { return x; }
static float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> std::vector<T> input(size_t n) {
  std::vector<float> f = read_f32(n);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = narrow<T>(f[i]);
  return out;
}

template <typename T> void output(const std::vector<T>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = widen(v[i]);
  write_f32(f);
}

template <typename T>
int run(const std::string& kernel, bool bf, unsigned grid, unsigned block, char** a) {
  auto i = [&](int k) { return std::atoi(a[k]); };
  auto f = [&](int k) { return (float)std::atof(a[k]); };
#define PICK(name) (bf ? (void*)name##_bf16 : (void*)name##_f32)
  if (kernel == "rms_norm_fwd") {  // rows dim eps: x, w -> y
    int rows = i(0), dim = i(1);
    float eps = f(2);
    auto x = input<T>((size_t)rows * dim), w = input<T>(dim);
    std::vector<T> y((size_t)rows * dim);
    auto k = (void (*)(const T*, const T*, T*, int, int, float))PICK(rms_norm_fwd);
    launch(grid, block, [&] { k(x.data(), w.data(), y.data(), rows, dim, eps); });
    output(y);
  } else if (kernel == "rms_norm_bwd") {  // rows dim eps: x, w, dy -> dx, dw
    int rows = i(0), dim = i(1);
    float eps = f(2);
    auto x = input<T>((size_t)rows * dim), w = input<T>(dim), dy = input<T>((size_t)rows * dim);
    std::vector<T> dx((size_t)rows * dim), dw(dim);
    std::vector<float> partial((size_t)grid * dim, NAN);
    auto k = (void (*)(const T*, const T*, const T*, T*, float*, int, int, float))PICK(rms_norm_bwd);
    launch(grid, block, [&] { k(x.data(), w.data(), dy.data(), dx.data(), partial.data(), rows, dim, eps); });
    auto sum = (void (*)(const float*, T*, int, int))PICK(sum_partials);
    launch(2, 32, [&] { sum(partial.data(), dw.data(), (int)grid, dim); });
    output(dx);
    output(dw);
  } else if (kernel == "swiglu_fwd") {  // n: gate, up -> y
    size_t n = (size_t)i(0);
    auto g = input<T>(n), u = input<T>(n);
    std::vector<T> y(n);
    auto k = (void (*)(const T*, const T*, T*, size_t))PICK(swiglu_fwd);
    launch(grid, block, [&] { k(g.data(), u.data(), y.data(), n); });
    output(y);
  } else if (kernel == "swiglu_bwd") {  // n: gate, up, dy -> dgate, dup
    size_t n = (size_t)i(0);
    auto g = input<T>(n), u = input<T>(n), dy = input<T>(n);
    std::vector<T> dg(n), du(n);
    auto k = (void (*)(const T*, const T*, const T*, T*, T*, size_t))PICK(swiglu_bwd);
    launch(grid, block, [&] { k(g.data(), u.data(), dy.data(), dg.data(), du.data(), n); });
    output(dg);
    output(du);
  } else if (kernel == "rope") {  // batch heads seq dim sign: x, cos, sin -> y
    int b = i(0), h = i(1), s = i(2), d = i(3);
    float sign = f(4);
    auto x = input<T>((size_t)b * h * s * d);
    auto c = input<T>((size_t)b * s * (d / 2)), sn = input<T>((size_t)b * s * (d / 2));
    std::vector<T> y(x.size());
    auto k = (void (*)(const T*, const T*, const T*, T*, int, int, int, int, float))PICK(rope);
    launch(grid, block, [&] { k(x.data(), c.data(), sn.data(), y.data(), b, h, s, d, sign); });
    output(y);
  } else if (kernel == "cross_entropy") {  // rows vocab scale want_grad: logits, targets -> loss, dlogits
    int rows = i(0), vocab = i(1), want = i(3);
    float scale = f(2);
    auto logits = input<T>((size_t)rows * vocab);
    std::vector<float> tf = read_f32(rows);
    std::vector<uint32_t> targets(rows);
    for (int r = 0; r < rows; ++r) targets[r] = (uint32_t)tf[r];
    std::vector<float> loss(rows);
    std::vector<T> d(want ? (size_t)rows * vocab : 0);
    auto k = (void (*)(const T*, const uint32_t*, float*, T*, int, int, float, int))PICK(cross_entropy);
    launch(grid, block, [&] { k(logits.data(), targets.data(), loss.data(), d.data(), rows, vocab, scale, want); });
    write_f32(loss);
    output(d);
  } else if (kernel == "attention_softmax" || kernel == "attention_softmax_bwd") {
    // batch groups rows keys seq q0 k0 scale: scores, starts (as floats)[, dprobs, lse,
    // row_dot] -> probs, lse | probs, dscores
    int b = i(0), groups = i(1), rows = i(2), keys = i(3), seq = i(4), q0 = i(5), k0 = i(6);
    float scale = f(7);
    size_t total = (size_t)b * groups * rows;
    auto scores = input<T>(total * keys);
    std::vector<float> sf = read_f32((size_t)b * seq);
    std::vector<uint32_t> starts(sf.begin(), sf.end());
    std::vector<T> probs(total * keys);
    if (kernel == "attention_softmax") {
      std::vector<float> lse(total);
      auto k = (void (*)(const T*, const uint32_t*, T*, float*, size_t, int, int, int, int, int, int, float))PICK(attention_softmax);
      launch(grid, block, [&] {
        k(scores.data(), starts.data(), probs.data(), lse.data(), total, groups, rows, keys, seq, q0, k0, scale);
      });
      output(probs);
      write_f32(lse);
    } else {
      auto dprobs = input<T>(total * keys);
      std::vector<float> lse = read_f32(total), dot = read_f32(total);
      std::vector<T> dscores(total * keys);
      auto k = (void (*)(const T*, const T*, const float*, const float*, const uint32_t*, T*, T*, size_t, int, int, int, int, int, int, float))PICK(attention_softmax_bwd);
      launch(grid, block, [&] {
        k(scores.data(), dprobs.data(), lse.data(), dot.data(), starts.data(), probs.data(), dscores.data(), total, groups, rows, keys, seq, q0, k0, scale);
      });
      output(probs);
      output(dscores);
    }
  } else if (kernel == "set_rows") {  // rows dim dst_rows: src, targets (as floats), dst -> dst
    size_t rows = (size_t)i(0);
    int dim = i(1);
    size_t dst_rows = (size_t)i(2);
    auto src = input<T>(rows * dim);
    std::vector<float> tf = read_f32(rows);
    std::vector<uint32_t> targets(tf.begin(), tf.end());
    auto dst = input<T>(dst_rows * dim);
    auto k = (void (*)(const T*, const uint32_t*, T*, size_t, int))PICK(set_rows);
    launch(grid, block, [&] { k(src.data(), targets.data(), dst.data(), rows, dim); });
    output(dst);
  } else if (kernel == "decode_attention") {
    // m kv n_rep table_width block dim pool_blocks scale: q, keys, values, tables, lengths
    // (both as floats) -> out
    int m = i(0), kv = i(1), n_rep = i(2), width = i(3), blk = i(4), dim = i(5), pool_blocks = i(6);
    float scale = f(7);
    auto q = input<T>((size_t)m * kv * n_rep * dim);
    size_t pool = (size_t)pool_blocks * kv * blk * dim;
    auto keys = input<T>(pool), values = input<T>(pool);
    std::vector<float> tf = read_f32((size_t)m * width), lf = read_f32(m);
    std::vector<uint32_t> tables(tf.begin(), tf.end()), lengths(lf.begin(), lf.end());
    std::vector<T> out(q.size());
    auto k = (void (*)(const T*, const T*, const T*, const uint32_t*, const uint32_t*, T*, int, int, int, int, int, int, float))PICK(decode_attention);
    launch(grid, block, [&] {
      k(q.data(), keys.data(), values.data(), tables.data(), lengths.data(), out.data(), m, kv, n_rep, width, blk, dim, scale);
    });
    output(out);
  } else if (kernel == "sample_rows") {  // rows vocab: logits, temperature, top_p, top_k, uniform -> ids
    int rows = i(0), vocab = i(1);
    auto logits = input<T>((size_t)rows * vocab);
    std::vector<float> temp = read_f32(rows), top_p = read_f32(rows), kf = read_f32(rows), u = read_f32(rows);
    std::vector<uint32_t> top_k(kf.begin(), kf.end()), ids(rows);
    auto k = (void (*)(const T*, const float*, const float*, const uint32_t*, const float*, uint32_t*, int, int))PICK(sample_rows);
    launch(grid, block, [&] { k(logits.data(), temp.data(), top_p.data(), top_k.data(), u.data(), ids.data(), rows, vocab); });
    std::vector<float> f(ids.begin(), ids.end());
    write_f32(f);
  } else if (kernel == "top_k_rows") {  // rows vocab k: logits -> ids [rows, k]
    int rows = i(0), vocab = i(1), k = i(2);
    auto logits = input<T>((size_t)rows * vocab);
    std::vector<uint32_t> ids((size_t)rows * k);
    auto kern = (void (*)(const T*, uint32_t*, int, int, int))PICK(top_k_rows);
    launch(grid, block, [&] { kern(logits.data(), ids.data(), rows, vocab, k); });
    std::vector<float> f(ids.begin(), ids.end());
    write_f32(f);
  } else if (kernel == "adamw") {  // n decay 1-β1 β2 1-β2 step bias2_sqrt eps grad_scale: p, m, v, g(f32) -> p, m, v
    size_t n = (size_t)i(0);
    auto p = input<T>(n), m = input<T>(n), v = input<T>(n);
    std::vector<float> g = read_f32(n);
    auto k = (void (*)(T*, T*, T*, const float*, size_t, float, float, float, float, float, float, float, float))PICK(adamw);
    launch(grid, block, [&] {
      k(p.data(), m.data(), v.data(), g.data(), n, f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8));
    });
    output(p);
    output(m);
    output(v);
  } else if (kernel == "flash_attention") {
    // batch heads kv_heads seq dim scale shift (bf16 only): q, k, v, starts (as floats), d_out
    // -> out, lse, dq, dk, dv, row_dot. Runs the forward, row_dot (Σ dO ∘ O of the bf16 output;
    // 3 blocks of 2 warps, so its grid-stride loop turns), then both backward kernels. With
    // shift 1 the inputs start one element into their buffers (not 16-byte aligned).
    using B = __nv_bfloat16;
    if (!bf) {
      std::fprintf(stderr, "harness: flash_attention is bf16 only\n");
      return 2;
    }
    int b = i(0), h = i(1), kv = i(2), t = i(3), d = i(4);
    float scale = f(5);
    size_t nq = (size_t)b * h * t * d, nk = (size_t)b * kv * t * d, rows = (size_t)b * h * t;
    int shift = i(6);
    auto shifted = [&](size_t n) {
      std::vector<B> v = input<B>(n);
      v.insert(v.begin(), shift, B{});
      return v;
    };
    auto qb = shifted(nq), kb = shifted(nk), vb = shifted(nk);
    std::vector<float> sf = read_f32((size_t)b * t);
    std::vector<uint32_t> starts(sf.begin(), sf.end());
    auto dob = shifted(nq);
    B *q = qb.data() + shift, *k = kb.data() + shift, *v = vb.data() + shift;
    B* d_out = dob.data() + shift;
    std::vector<B> out(nq), dq(nq), dk(nk), dv(nk);
    std::vector<float> lse(rows), dot(rows);
    auto fwd = d == 64 ? flash_attention_fwd_d64_bf16 : flash_attention_fwd_d128_bf16;
    auto bwd_kv = d == 64 ? flash_attention_bwd_kv_d64_bf16 : flash_attention_bwd_kv_d128_bf16;
    auto bwd_q = d == 64 ? flash_attention_bwd_q_d64_bf16 : flash_attention_bwd_q_d128_bf16;
    unsigned tiles64 = (t + 63) / 64, tiles32 = (t + 31) / 32;
    launch(b * h * tiles64, 128, [&] {
      fwd(q, k, v, starts.data(), out.data(), lse.data(), h, kv, t, scale);
    });
    auto row_dot = d == 64 ? flash_attention_row_dot_d64_bf16 : flash_attention_row_dot_d128_bf16;
    launch(3, 64, [&] { row_dot(d_out, out.data(), dot.data(), rows); });
    launch(b * kv * tiles32, 64, [&] {
      bwd_kv(q, k, v, d_out, lse.data(), dot.data(), starts.data(), dk.data(), dv.data(), h, kv,
             t, scale);
    });
    launch(b * h * tiles32, 64, [&] {
      bwd_q(q, k, v, d_out, lse.data(), dot.data(), starts.data(), dq.data(), h, kv, t, scale);
    });
    output(out);
    write_f32(lse);
    output(dq);
    output(dk);
    output(dv);
    write_f32(dot);
  } else {
    std::fprintf(stderr, "harness: unknown kernel %s\n", kernel.c_str());
    return 2;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: harness KERNEL f32|bf16 GRID BLOCK ARGS... < inputs > outputs\n");
    return 2;
  }
  std::string kernel = argv[1], dtype = argv[2];
  unsigned grid = (unsigned)std::atoi(argv[3]), block = (unsigned)std::atoi(argv[4]);
  if (dtype == "bf16") return run<__nv_bfloat16>(kernel, true, grid, block, argv + 5);
  return run<float>(kernel, false, grid, block, argv + 5);
}
