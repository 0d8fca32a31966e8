//! Flash attention's kernels (`models/src/cuda/flash_attention.cu`: the forward, the row dots
//! and both backward kernels) run on the CPU through the emulation of CUDA's threads and wmma
//! tiles (`tests/cuda_emulation/`), at their own fixed blocks, against attention's closed form
//! in f32 rounded where their tensor-core products round. The GPU check (`gpu/check.sh`,
//! `check-device`) runs them on a GPU against the chunked path.

use candle_core::{DType, Device, Tensor, Var, D};

#[path = "cuda_emulation/mod.rs"]
mod emulation;
use emulation::*;

/// Causal, document-masked attention in f32 from candle's ops (kv heads repeated, a full
/// `[batch, 1, seq, seq]` mask; `docs[b]` lists row b's document lengths), forward and the
/// backward of `Σ out ∘ d_out` in closed form: `[out, lse, dq, dk, dv]`. With `bf16_products`
/// the probabilities and score gradients are rounded to bf16 where they enter a product and
/// the output before `row_dot = Σ dO ∘ O`, as the flash kernels round them.
fn attention_reference(
    [q, k, v, d_out]: [&Tensor; 4],
    docs: &[Vec<usize>],
    scale: f64,
    bf16_products: bool,
) -> [Tensor; 5] {
    let f32_of = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
    let round = |x: Tensor| {
        if bf16_products {
            x.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            x
        }
    };
    let (q, k, v, d_out) = (f32_of(q), f32_of(k), f32_of(v), f32_of(d_out));
    let (b, h, t, d) = q.dims4().unwrap();
    let kv = k.dim(1).unwrap();
    let repeat = |x: &Tensor| {
        x.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, kv, h / kv, t, d))
            .unwrap()
            .reshape((b, h, t, d))
            .unwrap()
    };
    // Gradients of the repeated heads summed back onto their kv head.
    let group_sum = |x: Tensor| x.reshape((b, kv, h / kv, t, d)).unwrap().sum(2).unwrap();
    let mut mask = Vec::with_capacity(b * t * t);
    for starts in docs.iter().map(|lens| document_starts(lens)) {
        for (i, &s) in starts.iter().enumerate() {
            mask.extend((0..t).map(|j| {
                if s <= j && j <= i {
                    0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    let mask = Tensor::from_vec(mask, (b, 1, t, t), &Device::Cpu).unwrap();
    let (k_rep, v_rep) = (repeat(&k), repeat(&v));
    let scores = (q.matmul(&k_rep.t().unwrap()).unwrap() * scale)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    let max = scores.max_keepdim(D::Minus1).unwrap();
    let sum = scores.broadcast_sub(&max).unwrap().exp().unwrap();
    let lse = (sum.sum_keepdim(D::Minus1).unwrap().log().unwrap() + &max).unwrap();
    let probs = scores.broadcast_sub(&lse).unwrap().exp().unwrap();
    let probs_r = round(probs.clone());
    let out = round(probs_r.matmul(&v_rep).unwrap());
    let row_dot = (&d_out * &out).unwrap().sum_keepdim(D::Minus1).unwrap();
    let d_probs = d_out.matmul(&v_rep.t().unwrap()).unwrap();
    let d_scores = ((probs * d_probs.broadcast_sub(&row_dot).unwrap()).unwrap() * scale).unwrap();
    let d_scores = round(d_scores);
    let dq = d_scores.matmul(&k_rep).unwrap();
    let dk = group_sum(d_scores.t().unwrap().matmul(&q).unwrap());
    let dv = group_sum(probs_r.t().unwrap().matmul(&d_out).unwrap());
    [out, lse.squeeze(D::Minus1).unwrap(), dq, dk, dv]
}

/// Each position's document start, for documents of `lens` one after another.
fn document_starts(lens: &[usize]) -> Vec<usize> {
    let mut starts = Vec::new();
    for &len in lens {
        let s = starts.len();
        starts.extend(std::iter::repeat_n(s, len));
    }
    starts
}

#[test]
fn flash_attention_matches_composed_attention() {
    // Seq lengths that fill no tile (64 queries forward, 32 keys or queries backward, 16 rows
    // a warp), packed documents that start mid-tile and on a key tile's last key (31), a last
    // key that begins a key tile (64), grouped-query heads, both head dims; and plain
    // multi-head attention over three forward tiles with a document starting on a tile's edge.
    let cases: [(usize, usize, usize, Vec<Vec<usize>>); 3] = [
        (4, 2, 64, vec![vec![20, 11, 22, 17], vec![70]]),
        (2, 1, 128, vec![vec![9, 31, 25]]),
        (3, 3, 64, vec![vec![64, 66]]),
    ];
    for (h, kv, d, docs) in cases {
        let (b, t) = (docs.len(), docs[0].iter().sum::<usize>());
        let scale = 1.0 / (d as f64).sqrt();
        let bf16 = |x: Tensor| x.to_dtype(DType::BF16).unwrap();
        let q = bf16((randn(&[b, h, t, d], 21, Dt::F32) * 2.0).unwrap());
        let (k, v) = (
            bf16(randn(&[b, kv, t, d], 22, Dt::F32)),
            bf16(randn(&[b, kv, t, d], 23, Dt::F32)),
        );
        let d_out = bf16(randn(&[b, h, t, d], 24, Dt::F32));
        let what = |x: &str| format!("flash attention {x}, head dim {d}");
        let names = ["output", "log-sum-exp", "dq", "dk", "dv"];

        // The closed form is attention's gradient: against candle's autograd, in f32 (up to the
        // order of the sums).
        let var = |x: &Tensor| Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
        let (qv, kvv, vv) = (var(&q), var(&k), var(&v));
        let exact = attention_reference([&qv, &kvv, &vv, &d_out], &docs, scale, false);
        let grads = backward(&exact[0], &d_out);
        for (at, var) in [(2, &qv), (3, &kvv), (4, &vv)] {
            let got = values(&exact[at]);
            assert_within(&what(names[at]), "f32", 1e-4, &got, grads.get(var).unwrap());
        }

        let starts: Vec<f32> = docs
            .iter()
            .flat_map(|lens| document_starts(lens))
            .map(|s| s as f32)
            .collect();
        let starts = Tensor::new(starts.as_slice(), &Device::Cpu).unwrap();
        let (nq, nk) = (b * h * t * d, b * kv * t * d);
        let rounded = attention_reference([&q, &k, &v, &d_out], &docs, scale, true);
        // Inputs 16-byte aligned (rows loaded 8 elements at a time), then one element off
        // (element by element): the same values.
        let mut runs = Vec::new();
        for shift in [0, 1] {
            let got = run(
                "flash_attention",
                Dt::Bf16,
                (0, 0),
                &[s(b), s(h), s(kv), s(t), s(d), s(scale), s(shift)],
                &[&q, &k, &v, &starts, &d_out],
                &[nq, b * h * t, nq, nk, nk, b * h * t],
            );
            // The kernels against the reference that rounds where they round: within bf16's
            // rounding of the outputs and the order of the sums.
            for (at, name) in names.iter().enumerate() {
                assert_close(&what(name), Dt::Bf16, &got[at], &rounded[at]);
            }
            // Log-sum-exps are f32: within f32 sums' order.
            let worst = got[1]
                .iter()
                .zip(values(&rounded[1]))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{}: off by {worst}", what("log-sum-exp"));
            // Σ dO ∘ O of the kernel's own (bf16) output, in f32.
            let out = Tensor::from_vec(got[0].clone(), (b, h, t, d), &Device::Cpu).unwrap();
            let dot = (out * d_out.to_dtype(DType::F32).unwrap())
                .unwrap()
                .sum(D::Minus1)
                .unwrap();
            assert_within(&what("row dot"), "f32", 1e-5, &got[5], &dot);
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "{}", what("with unaligned inputs"));
    }
}
