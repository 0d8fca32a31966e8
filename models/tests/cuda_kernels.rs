//! The CUDA kernels (`models/src/cuda/train.cu`, `generate.cu`, `flash_attention.cu`) run on
//! the CPU through a small emulation of CUDA's thread model (`tests/cuda_emulation/`), against
//! candle's composed ops: forward values and every input gradient, in f32 and bf16 (flash
//! attention, bf16 only, against attention's closed form rounded where its tensor-core products
//! round). Grids and blocks here are small (2 warps, fewer blocks than rows) so the grid- and
//! block-stride loops, the cross-warp reductions and the per-block weight-gradient partials are
//! all exercised (flash attention runs at its own fixed blocks); the GPU check (`gpu/check.sh`,
//! `check-device`) runs the same kernels on a GPU at their real launch shapes.
//!
//! Needs a C++20 compiler (`c++`, or `CXX`); without one the test fails and says so, since CI
//! has one.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var, D};
use distill_models::ops;

/// The emulated kernels, built once per test run.
fn harness() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda-kernel-harness");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let status = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-pthread", "-I"])
            .arg(root.join("src/cuda"))
            .arg(root.join("tests/cuda_emulation/harness.cpp"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cuda kernel tests need a C++20 compiler ({cxx}): {e}"));
        assert!(status.success(), "{cxx} could not build the kernel harness");
        out
    })
}

#[derive(Clone, Copy)]
enum Dt {
    F32,
    Bf16,
}

impl Dt {
    fn name(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::Bf16 => "bf16",
        }
    }
    fn dtype(self) -> DType {
        match self {
            Dt::F32 => DType::F32,
            Dt::Bf16 => DType::BF16,
        }
    }
    /// Largest difference allowed, relative to the reference's largest magnitude.
    fn tolerance(self) -> f32 {
        match self {
            Dt::F32 => 2e-6,
            Dt::Bf16 => 1.6e-2,
        }
    }
}

/// Runs one kernel: `args` after the kernel, dtype, grid and block; inputs as f32 arrays; the
/// outputs split at `sizes`.
fn run(
    kernel: &str,
    dt: Dt,
    (grid, block): (u32, u32),
    args: &[String],
    inputs: &[&Tensor],
    sizes: &[usize],
) -> Vec<Vec<f32>> {
    let mut child = Command::new(harness())
        .args([kernel, dt.name(), &grid.to_string(), &block.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    for t in inputs {
        bytes.extend(values(t).iter().flat_map(|v| v.to_le_bytes()));
    }
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "harness {kernel} failed");
    let floats: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        floats.len(),
        sizes.iter().sum::<usize>(),
        "{kernel} output size"
    );
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            at += n;
            floats[at - n..at].to_vec()
        })
        .collect()
}

/// A tensor's elements as f32, in order.
fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts `got` (from the kernel) matches `reference` within the dtype's tolerance.
fn assert_close(what: &str, dt: Dt, got: &[f32], reference: &Tensor) {
    assert_within(what, dt.name(), dt.tolerance(), got, reference)
}

/// Asserts `got` is within `tolerance` of `reference`, relative to the reference's largest
/// magnitude.
fn assert_within(what: &str, dtype: &str, tolerance: f32, got: &[f32], reference: &Tensor) {
    let want = values(reference);
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tolerance * scale,
        "{what} ({dtype}): off by {worst} of {scale}"
    );
}

fn randn(shape: &[usize], seed: u64, dt: Dt) -> Tensor {
    // A fixed, seed-driven pattern (candle's CPU randn is not seeded per call).
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5));
            let u = ((x >> 40) as f32) / (1u64 << 24) as f32; // [0, 1)
            (u - 0.5) * 3.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dt.dtype())
        .unwrap()
}

/// The gradients of `Σ y · dy` (f32): `dy` pulled back through `y`'s graph.
fn backward(y: &Tensor, dy: &Tensor) -> candle_core::backprop::GradStore {
    (y.to_dtype(DType::F32).unwrap() * dy.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

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
