//! The CUDA kernels of `models/src/cuda/train.cu` and `generate.cu` run on the CPU through a
//! small emulation of CUDA's thread model (`tests/cuda_emulation/`), against candle's composed
//! ops: forward values and every input gradient, in f32 and bf16 (flash attention's kernels:
//! `flash_attention.rs`). Grids and blocks here are small (2 warps, fewer blocks than rows) so
//! the grid- and block-stride loops, the cross-warp reductions and the per-block
//! weight-gradient partials are all exercised; the GPU check (`gpu/check.sh`, `check-device`)
//! runs the same kernels on a GPU at their real launch shapes.

use candle_core::{DType, Device, Tensor, Var, D};
use distill_models::ops;

#[path = "cuda_emulation/mod.rs"]
mod emulation;
use emulation::*;

const SHAPE: (u32, u32) = (3, 64);

#[test]
fn rms_norm_matches_composed() {
    for dt in [Dt::F32, Dt::Bf16] {
        let (rows, dim, eps) = (7, 100, 1e-6);
        let x = Var::from_tensor(&randn(&[rows, dim], 1, dt)).unwrap();
        let w = Var::from_tensor(&(randn(&[dim], 2, dt) + 1.0).unwrap()).unwrap();
        let dy = randn(&[rows, dim], 3, dt);
        let y = ops::rms_norm_composed(&x, &w, eps).unwrap();
        let grads = backward(&y, &dy);
        let args = [s(rows), s(dim), s(eps)];
        let out = run("rms_norm_fwd", dt, SHAPE, &args, &[&x, &w], &[rows * dim]);
        assert_close("rms_norm forward", dt, &out[0], &y);
        let out = run(
            "rms_norm_bwd",
            dt,
            SHAPE,
            &args,
            &[&x, &w, &dy],
            &[rows * dim, dim],
        );
        assert_close("rms_norm dx", dt, &out[0], grads.get(&x).unwrap());
        assert_close("rms_norm dw", dt, &out[1], grads.get(&w).unwrap());
    }
}

#[test]
fn swiglu_matches_composed() {
    for dt in [Dt::F32, Dt::Bf16] {
        let n = 1000;
        let g = Var::from_tensor(&randn(&[n], 4, dt)).unwrap();
        let u = Var::from_tensor(&randn(&[n], 5, dt)).unwrap();
        let dy = randn(&[n], 6, dt);
        let y = (g.silu().unwrap() * u.as_tensor()).unwrap();
        let grads = backward(&y, &dy);
        let out = run("swiglu_fwd", dt, SHAPE, &[s(n)], &[&g, &u], &[n]);
        assert_close("swiglu forward", dt, &out[0], &y);
        let out = run("swiglu_bwd", dt, SHAPE, &[s(n)], &[&g, &u, &dy], &[n, n]);
        assert_close("swiglu dgate", dt, &out[0], grads.get(&g).unwrap());
        assert_close("swiglu dup", dt, &out[1], grads.get(&u).unwrap());
    }
}

#[test]
fn rope_matches_composed() {
    for dt in [Dt::F32, Dt::Bf16] {
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Var::from_tensor(&randn(&[b, h, t, d], 7, dt)).unwrap();
        let angles = randn(&[b, t, d / 2], 8, Dt::F32);
        let (cos, sin) = (
            angles.cos().unwrap().to_dtype(dt.dtype()).unwrap(),
            angles.sin().unwrap().to_dtype(dt.dtype()).unwrap(),
        );
        let dy = randn(&[b, h, t, d], 9, dt);
        let y = ops::rope_composed(&x, &cos, &sin).unwrap();
        let grads = backward(&y, &dy);
        let args = |sign: f32| [s(b), s(h), s(t), s(d), s(sign)];
        let n = b * h * t * d;
        let out = run("rope", dt, SHAPE, &args(1.0), &[&x, &cos, &sin], &[n]);
        assert_close("rope forward", dt, &out[0], &y);
        let out = run("rope", dt, SHAPE, &args(-1.0), &[&dy, &cos, &sin], &[n]);
        assert_close("rope backward", dt, &out[0], grads.get(&x).unwrap());
    }
}

#[test]
fn cross_entropy_matches_composed() {
    for dt in [Dt::F32, Dt::Bf16] {
        let (rows, vocab, scale) = (5, 300, 0.25f32);
        let logits = Var::from_tensor(&(randn(&[rows, vocab], 10, dt) * 4.0).unwrap()).unwrap();
        let targets: Vec<u32> = vec![0, 299, 17, 150, 17];
        let target_t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let log_probs =
            candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).unwrap(), D::Minus1).unwrap();
        let loss = log_probs
            .gather(&target_t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        let grads = (loss.sum_all().unwrap() * scale as f64)
            .unwrap()
            .backward()
            .unwrap();
        let target_f = target_t.to_dtype(DType::F32).unwrap();
        for want_grad in [1, 0] {
            let args = [s(rows), s(vocab), s(scale), s(want_grad)];
            let sizes = [rows, want_grad * rows * vocab];
            let out = run(
                "cross_entropy",
                dt,
                SHAPE,
                &args,
                &[&logits, &target_f],
                &sizes,
            );
            // The loss stays f32 whatever the logits' dtype.
            let tolerance = if want_grad == 1 { dt } else { Dt::F32 };
            assert_close("cross-entropy loss", tolerance, &out[0], &loss);
            if want_grad == 1 {
                assert_close(
                    "cross-entropy dlogits",
                    dt,
                    &out[1],
                    grads.get(&logits).unwrap(),
                );
            }
        }
    }
}

#[test]
fn adamw_matches_reference() {
    for dt in [Dt::F32, Dt::Bf16] {
        let n = 777;
        let (p, m) = (randn(&[n], 11, dt), (randn(&[n], 12, dt) * 0.1).unwrap());
        let v = (randn(&[n], 13, dt).sqr().unwrap() * 0.01).unwrap();
        let g = randn(&[n], 14, Dt::F32);
        // Step 3 at lr 1e-3, weight decay 0.1, β (0.9, 0.999), eps 1e-8, clipped by 0.5.
        let (lr, wd, b1, b2, eps, clip) = (1e-3f64, 0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.5f64);
        let step_size = lr / (1.0 - b1.powi(3));
        let bias2_sqrt = (1.0 - b2.powi(3)).sqrt();
        let decay = 1.0 - lr * wd;
        let args: Vec<String> = [
            decay,
            1.0 - b1,
            b2,
            1.0 - b2,
            step_size,
            bias2_sqrt,
            eps,
            clip,
        ]
        .iter()
        .map(|&x| s(x as f32))
        .collect();
        let args = [vec![s(n)], args].concat();
        let out = run("adamw", dt, SHAPE, &args, &[&p, &m, &v, &g], &[n, n, n]);
        // The step as tensor ops in f32 (the trainer's reference for devices without kernels).
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let g = (g * clip).unwrap();
        let mi = (f32(&m) + ((&g - f32(&m)).unwrap() * (1.0 - b1)).unwrap()).unwrap();
        let vi = ((f32(&v) * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
        let denom = vi.sqrt().unwrap().affine(1.0 / bias2_sqrt, eps).unwrap();
        let pi =
            ((f32(&p) * decay).unwrap() - (mi.div(&denom).unwrap() * step_size).unwrap()).unwrap();
        let round = |t: Tensor| t.to_dtype(dt.dtype()).unwrap();
        assert_close("adamw parameter", dt, &out[0], &round(pi));
        assert_close("adamw first moment", dt, &out[1], &round(mi));
        assert_close("adamw second moment", dt, &out[2], &round(vi));
    }
}

/// One chunk of packed attention: 2 rows of 12 positions (documents `[0, 3)`, `[3, 12)` and
/// `[0, 5)`, `[5, 12)`), 2 kv heads × 2 query heads each, queries 6..10 over keys 3..10 (the
/// earliest document start of the chunk's first query), as `chunked_attention` cuts them.
struct ScoreChunk {
    b: usize,
    groups: usize,
    rows: usize,
    keys: usize,
    seq: usize,
    q0: usize,
    k0: usize,
    starts: Vec<u32>,
}

impl ScoreChunk {
    fn new() -> Self {
        let starts: Vec<u32> = [
            [0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3],
            [0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5],
        ]
        .concat();
        Self {
            b: 2,
            groups: 4,
            rows: 4,
            keys: 7,
            seq: 12,
            q0: 6,
            k0: 3,
            starts,
        }
    }
    fn total(&self) -> usize {
        self.b * self.groups * self.rows
    }
    fn args(&self, scale: f32) -> Vec<String> {
        [
            self.b,
            self.groups,
            self.rows,
            self.keys,
            self.seq,
            self.q0,
            self.k0,
        ]
        .iter()
        .map(s)
        .chain([s(scale)])
        .collect()
    }
    fn visible(&self, row: usize, j: usize) -> bool {
        let query = self.q0 + row % self.rows;
        let b = row / (self.groups * self.rows);
        let key = self.k0 + j;
        key >= self.starts[b * self.seq + query] as usize && key <= query
    }
    fn starts(&self) -> Tensor {
        let f: Vec<f32> = self.starts.iter().map(|&x| x as f32).collect();
        Tensor::new(f.as_slice(), &Device::Cpu).unwrap()
    }
    /// The masked softmax of `scale · scores` per row and its log-sum-exp, in f64.
    fn softmax(&self, scores: &[f32], scale: f32) -> (Vec<f64>, Vec<f64>) {
        let (mut probs, mut lse) = (vec![0f64; scores.len()], Vec::new());
        for row in 0..self.total() {
            let s = &scores[row * self.keys..(row + 1) * self.keys];
            let seen: Vec<usize> = (0..self.keys).filter(|&j| self.visible(row, j)).collect();
            let m = seen
                .iter()
                .map(|&j| (s[j] * scale) as f64)
                .fold(f64::MIN, f64::max);
            let sum: f64 = seen
                .iter()
                .map(|&j| ((s[j] * scale) as f64 - m).exp())
                .sum();
            for &j in &seen {
                probs[row * self.keys + j] = ((s[j] * scale) as f64 - m).exp() / sum;
            }
            lse.push(m + sum.ln());
        }
        (probs, lse)
    }
}

fn tensor_of(v: Vec<f64>) -> Tensor {
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
}

#[test]
fn attention_softmax_matches_masked_softmax() {
    let c = ScoreChunk::new();
    for dt in [Dt::F32, Dt::Bf16] {
        let scale = 0.35f32;
        let n = c.total() * c.keys;
        let scores = (randn(&[n], 15, dt) * 3.0)
            .unwrap()
            .to_dtype(dt.dtype())
            .unwrap();
        let (probs, lse) = c.softmax(&values(&scores), scale);
        let out = run(
            "attention_softmax",
            dt,
            SHAPE,
            &c.args(scale),
            &[&scores, &c.starts()],
            &[n, c.total()],
        );
        assert_close(
            "attention probabilities",
            dt,
            &out[0],
            &tensor_of(probs.clone()),
        );
        assert_close(
            "attention log-sum-exp",
            Dt::F32,
            &out[1],
            &tensor_of(lse.clone()),
        );
        // Hidden keys are exactly zero, visible ones not.
        for (at, &p) in out[0].iter().enumerate() {
            assert_eq!(
                p == 0.0,
                !c.visible(at / c.keys, at % c.keys),
                "probability {at}"
            );
        }

        // Backward: P from the log-sum-exps, dS = scale · P ∘ (dP − row_dot).
        let dprobs = randn(&[n], 16, dt);
        let row_dot = randn(&[c.total()], 17, Dt::F32);
        let (dp, dot) = (values(&dprobs), values(&row_dot));
        let dscores: Vec<f64> = (0..n)
            .map(|at| scale as f64 * probs[at] * (dp[at] as f64 - dot[at / c.keys] as f64))
            .collect();
        let lse_t = tensor_of(lse);
        let out = run(
            "attention_softmax_bwd",
            dt,
            SHAPE,
            &c.args(scale),
            &[&scores, &c.starts(), &dprobs, &lse_t, &row_dot],
            &[n, n],
        );
        assert_close(
            "attention backward probabilities",
            dt,
            &out[0],
            &tensor_of(probs),
        );
        assert_close(
            "attention score gradients",
            dt,
            &out[1],
            &tensor_of(dscores),
        );
    }
}

#[test]
fn decode_attention_matches_softmax_over_each_history() {
    // 3 decoding rows over a paged pool of 7 blocks of 4 positions, 2 kv heads × 3 query
    // heads, head dim 64 (two dims a lane); histories of 1, 5 and 9 keys (fewer keys than
    // warps, more) in blocks out of order, tables padded to 3 blocks.
    let (m, kv, n_rep, block, dim, pool_blocks) = (3, 2, 3, 4, 64, 7);
    let tables = [[5usize, 0, 0], [0, 3, 0], [6, 2, 1]];
    let lengths = [1usize, 5, 9];
    let width = tables[0].len();
    let scale = 0.125f32;
    // Where key j of a row's kv head g lies in the pool.
    let at = |row: usize, g: usize, j: usize| {
        ((tables[row][j / block] * kv + g) * block + j % block) * dim
    };
    for dt in [Dt::F32, Dt::Bf16] {
        let h = kv * n_rep;
        let q = randn(&[m, h, dim], 18, dt);
        let keys = randn(&[pool_blocks, kv, block, dim], 19, dt);
        let vals = randn(&[pool_blocks, kv, block, dim], 20, dt);
        let (qv, kvals, vvals) = (values(&q), values(&keys), values(&vals));
        let mut want = vec![0f64; m * h * dim];
        for row in 0..m {
            for head in 0..h {
                let g = head / n_rep;
                let qr = &qv[(row * h + head) * dim..][..dim];
                let scores: Vec<f64> = (0..lengths[row])
                    .map(|j| {
                        let kr = &kvals[at(row, g, j)..][..dim];
                        qr.iter()
                            .zip(kr)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let top = scores.iter().copied().fold(f64::MIN, f64::max);
                let total: f64 = scores.iter().map(|s| (s - top).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - top).exp() / total;
                    for d in 0..dim {
                        want[(row * h + head) * dim + d] += p * vvals[at(row, g, j) + d] as f64;
                    }
                }
            }
        }
        let args: Vec<String> = [m, kv, n_rep, width, block, dim, pool_blocks]
            .iter()
            .map(s)
            .chain([s(scale)])
            .collect();
        for shape in [(2, 64), (5, 128)] {
            let out = run(
                "decode_attention",
                dt,
                shape,
                &args,
                &[
                    &q,
                    &keys,
                    &vals,
                    &as_f32(tables.concat()),
                    &as_f32(lengths.to_vec()),
                ],
                &[m * h * dim],
            );
            assert_close("decode attention", dt, &out[0], &tensor_of(want.clone()));
        }
    }
}

/// The pool write puts each source row at its target row and leaves every other row as it was.
#[test]
fn set_rows_writes_only_the_targets() {
    let (rows, dim, dst_rows) = (5, 48, 23);
    let targets = [7usize, 0, 22, 3, 8];
    for dt in [Dt::F32, Dt::Bf16] {
        let src = randn(&[rows, dim], 21, dt);
        let dst = randn(&[dst_rows, dim], 22, dt);
        let mut want: Vec<f64> = values(&dst).iter().map(|&x| x as f64).collect();
        let sv = values(&src);
        for (r, &t) in targets.iter().enumerate() {
            for d in 0..dim {
                want[t * dim + d] = sv[r * dim + d] as f64;
            }
        }
        let args: Vec<String> = [rows, dim, dst_rows].iter().map(s).collect();
        for shape in [(1, 64), (3, 32)] {
            let out = run(
                "set_rows",
                dt,
                shape,
                &args,
                &[&src, &as_f32(targets.to_vec()), &dst],
                &[dst_rows * dim],
            );
            let got = &out[0];
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*g as f64, *w, "{}: element {i}", dt.name());
            }
        }
    }
}

/// Whole numbers (ids, positions, lengths) as the f32 values the harness reads.
fn as_f32(v: Vec<usize>) -> Tensor {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
}

/// The host sampler's candidates (teacher/src/sampling.rs: the `top_k` most likely, ties to the
/// lower id; 0 for all) and nucleus among them (most likely first, ties to the lower id, the
/// shortest prefix whose weight reaches `top_p` of the candidates' total), then the device's
/// draw: the nucleus walked in id order up to `u` of its weight. At temperature ≤ 0, the
/// arg-max.
fn nucleus_draw(logits: &[f32], temperature: f32, top_p: f32, top_k: usize, u: f32) -> u32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if temperature <= 0.0 {
        return logits.iter().position(|&x| x == m).unwrap() as u32;
    }
    let w = |i: usize| (((logits[i] - m) / temperature) as f64).exp();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let total: f64 = order.iter().map(|&i| w(i)).sum();
    let mut nucleus = Vec::new();
    let mut cum = 0.0;
    for &i in &order {
        nucleus.push(i);
        cum += w(i);
        if top_p < 1.0 && cum >= top_p as f64 * total {
            break;
        }
    }
    nucleus.sort_unstable();
    let mass: f64 = nucleus.iter().map(|&i| w(i)).sum();
    let target = u as f64 * mass;
    let mut run = 0.0;
    for &i in &nucleus {
        run += w(i);
        if target < run {
            return i as u32;
        }
    }
    *nucleus.last().unwrap() as u32
}

#[test]
fn sampling_draws_from_the_host_samplers_nucleus() {
    // Rows of logits, each under one (temperature, top-p, top-k), drawn at 24 points of [0, 1):
    // every token of a small nucleus, its first and last included, shows up among the draws;
    // temperature 0 is the arg-max whatever the draw. Top-k alone, cutting a wide nucleus
    // (T 2), and inside a narrow one (top-p 0.5); the last row's logits are whole numbers, so
    // the k-th candidate falls among ties that go in by id.
    let (base_rows, draws, vocab) = (9, 12, 1000);
    let settings = [
        (0.6f32, 0.95f32, 0u32),
        (1.0, 1.0, 0),
        (0.6, 0.5, 0),
        (2.0, 0.9, 0),
        (0.0, 0.95, 0),
        (1.0, 1.0, 20),
        (2.0, 0.9, 7),
        (0.6, 0.5, 50),
        (1.0, 0.95, 30),
    ];
    let rows = base_rows * draws;
    let per_row = |f: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
        (0..rows).map(|r| f(r / draws, r % draws)).collect()
    };
    let temperature = per_row(&|b, _| settings[b].0);
    let top_p = per_row(&|b, _| settings[b].1);
    let top_k = per_row(&|b, _| settings[b].2 as f32);
    let uniform = per_row(&|_, d| (d as f32 + 0.5) / draws as f32);
    let as_tensor = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    // bf16 logits tie often (8 bits of mantissa): the ties at the nucleus's edge go in by id.
    for dt in [Dt::F32, Dt::Bf16] {
        let mut base = values(&(randn(&[base_rows, vocab], 21, dt) * 3.0).unwrap());
        for x in &mut base[(base_rows - 1) * vocab..] {
            *x = x.round();
        }
        let base = Tensor::from_vec(base, (base_rows, vocab), &Device::Cpu)
            .unwrap()
            .to_dtype(dt.dtype())
            .unwrap();
        let logits = base
            .unsqueeze(1)
            .unwrap()
            .repeat((1, draws, 1))
            .unwrap()
            .reshape((rows, vocab))
            .unwrap();
        let host = values(&logits);
        let want: Vec<f32> = (0..rows)
            .map(|r| {
                let row = &host[r * vocab..(r + 1) * vocab];
                let k = top_k[r] as usize;
                nucleus_draw(row, temperature[r], top_p[r], k, uniform[r]) as f32
            })
            .collect();
        let distinct: std::collections::BTreeSet<u32> = want.iter().map(|&x| x as u32).collect();
        assert!(
            distinct.len() > 40,
            "the draws cover the nuclei ({})",
            distinct.len()
        );
        for shape in [(3, 64), (8, 256)] {
            let out = run(
                "sample_rows",
                dt,
                shape,
                &[s(rows), s(vocab)],
                &[
                    &logits,
                    &as_tensor(&temperature),
                    &as_tensor(&top_p),
                    &as_tensor(&top_k),
                    &as_tensor(&uniform),
                ],
                &[rows],
            );
            assert_eq!(out[0], want, "sampled ids ({})", dt.name());
        }
    }
}

#[test]
fn top_k_matches_the_host_ranking() {
    // bf16 rows tie often; rows of fewer elements per thread than k, and a NaN.
    let (rows, vocab) = (5, 700);
    for dt in [Dt::F32, Dt::Bf16] {
        let logits = (randn(&[rows, vocab], 22, dt) * 3.0).unwrap();
        let mut host = values(&logits);
        host[3] = f32::NAN;
        let logits = Tensor::from_vec(host.clone(), (rows, vocab), &Device::Cpu)
            .unwrap()
            .to_dtype(dt.dtype())
            .unwrap();
        for k in [1, 20, 32] {
            let want: Vec<f32> = host
                .chunks(vocab)
                .flat_map(|row| {
                    let row: Vec<f32> = row
                        .iter()
                        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
                        .collect();
                    ops::top_k_ids(&row, k)
                })
                .map(|id| id as f32)
                .collect();
            for shape in [(2, 32), (5, 128)] {
                let out = run(
                    "top_k_rows",
                    dt,
                    shape,
                    &[s(rows), s(vocab), s(k)],
                    &[&logits],
                    &[rows * k],
                );
                assert_eq!(out[0], want, "top {k} ({})", dt.name());
            }
        }
    }
}
