//! Attention for generation steps on the CPU: per-sequence key/value caches in plain growable
//! buffers and one ragged attention pass over every sequence of a step.
//!
//! With candle tensors each step re-concatenated every cache (`Tensor::cat` copies the whole
//! history, per layer, per sequence) and ran a handful of small ops per sequence; at batch 32
//! that copying was the largest cost of a SmolLM2 decode step after the matrix products. Here
//! a step appends its new rows in place and a single parallel pass computes each query row's
//! attention. Each row's result depends only on its own sequence, never on its batch mates.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::Result;

/// Keys and values of one sequence for every layer. On the CPU they live in host buffers,
/// position-major (`[len, kv_heads * head_dim]`); on other devices in tensors
/// (`[1, kv_heads, len, head_dim]`). One cache per sequence: nothing is shared between calls.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) host: Vec<(Vec<f32>, Vec<f32>)>,
    pub(crate) device: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            host: vec![(Vec::new(), Vec::new()); num_layers],
            device: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position; the host buffers keep their capacity for the next sequence.
    pub fn clear(&mut self) {
        self.host.iter_mut().for_each(|(k, v)| {
            k.clear();
            v.clear();
        });
        self.device.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Appends `[1, kv_heads, len, d]` keys and values for `layer` to the tensor cache and
    /// returns the whole history (non-CPU devices).
    pub(crate) fn append_device(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.device[layer] {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.device[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
    pub scale: f32,
}

/// Rotary cosines and sines for each new row of a step, `[rows, dim / 2]`.
pub(crate) struct RowRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RowRope {
    pub(crate) fn new(positions: &[u32], inv_freq: &[f32]) -> Self {
        let angles = || {
            positions
                .iter()
                .flat_map(|&p| inv_freq.iter().map(move |&f| p as f32 * f))
        };
        Self {
            cos: angles().map(f32::cos).collect(),
            sin: angles().map(f32::sin).collect(),
        }
    }

    /// Rotates `xs` (`[rows, heads, dim]`) in place, the "rotate half" convention of the
    /// Hugging Face Llama/Qwen2 code.
    pub(crate) fn apply(&self, xs: &mut [f32], heads: usize, dim: usize) {
        let half = dim / 2;
        for (row, x) in xs.chunks_exact_mut(heads * dim).enumerate() {
            let cos = &self.cos[row * half..(row + 1) * half];
            let sin = &self.sin[row * half..(row + 1) * half];
            for head in x.chunks_exact_mut(dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}

/// Appends each sequence's new keys and values (`[rows, kv_heads * dim]`, sequences in batch
/// order) to its cache for `layer`, then returns the attention output `[rows, heads * dim]`
/// of the new queries `q` (`[rows, heads * dim]`, already rotated), each attending to its own
/// sequence's history and its new rows up to itself.
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    layer: usize,
    seqs: &mut [(&[u32], &mut KvCache)],
    h: Heads,
) -> Vec<f32> {
    let (qd, kvd) = (h.heads * h.dim, h.kv_heads * h.dim);
    let mut row_seq = Vec::with_capacity(q.len() / qd);
    let mut offset = 0;
    for (s, (tokens, cache)) in seqs.iter_mut().enumerate() {
        let n = tokens.len();
        let (ck, cv) = &mut cache.host[layer];
        ck.extend_from_slice(&k[offset * kvd..(offset + n) * kvd]);
        cv.extend_from_slice(&v[offset * kvd..(offset + n) * kvd]);
        // (sequence, positions visible to the sequence's first new row)
        row_seq.extend((0..n).map(|i| (s, cache.len + i + 1)));
        offset += n;
    }
    let caches: Vec<(&[f32], &[f32])> = seqs
        .iter()
        .map(|(_, c)| (c.host[layer].0.as_slice(), c.host[layer].1.as_slice()))
        .collect();
    let mut out = vec![0f32; q.len()];
    let avx2 = simd::avx2();
    out.par_chunks_mut(qd)
        .zip(q.par_chunks(qd))
        .zip(row_seq.par_iter())
        .with_min_len(2)
        .for_each_init(Vec::new, |scores, ((out, q), &(s, visible))| {
            let (ck, cv) = caches[s];
            for head in 0..h.heads {
                let kv_head = head / (h.heads / h.kv_heads);
                let q = &q[head * h.dim..(head + 1) * h.dim];
                let out = &mut out[head * h.dim..(head + 1) * h.dim];
                let keys = (0..visible).map(|j| &ck[j * kvd + kv_head * h.dim..][..h.dim]);
                let values = (0..visible).map(|j| &cv[j * kvd + kv_head * h.dim..][..h.dim]);
                simd::head(avx2, q, keys, values, h.scale, scores, out);
            }
        });
    out
}

/// Rebuilds `[rows, heads * dim]` host data as the `[1, rows, heads * dim]` tensor the output
/// projection takes.
pub(crate) fn to_tensor(
    data: Vec<f32>,
    rows: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let width = data.len() / rows.max(1);
    Ok(Tensor::from_vec(data, (1, rows, width), device)?)
}

/// One head's softmax attention, compiled twice: with AVX2/FMA when the CPU has them (the
/// build targets baseline x86-64), plainly otherwise.
mod simd {
    pub(super) fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub(super) fn head<'a>(
        avx2: bool,
        q: &[f32],
        keys: impl Iterator<Item = &'a [f32]>,
        values: impl Iterator<Item = &'a [f32]>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked by `avx2()`).
            return unsafe { head_avx2(q, keys, values, scale, scores, out) };
        }
        let _ = avx2;
        head_impl::<false>(q, keys, values, scale, scores, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_avx2<'a>(
        q: &[f32],
        keys: impl Iterator<Item = &'a [f32]>,
        values: impl Iterator<Item = &'a [f32]>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        head_impl::<true>(q, keys, values, scale, scores, out)
    }

    #[inline(always)]
    fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    /// Sixteen independent partial sums so the loop vectorizes without reassociating floats.
    #[inline(always)]
    fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..16 {
                acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
            }
        }
        let mut sum = 0f32;
        for (x, y) in ra.iter().zip(rb) {
            sum = madd::<FMA>(*x, *y, sum);
        }
        acc.iter().sum::<f32>() + sum
    }

    #[inline(always)]
    fn head_impl<'a, const FMA: bool>(
        q: &[f32],
        keys: impl Iterator<Item = &'a [f32]>,
        values: impl Iterator<Item = &'a [f32]>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        scores.clear();
        scores.extend(keys.map(|k| dot::<FMA>(q, k) * scale));
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (p, v) in scores.iter().zip(values) {
            for (o, x) in out.iter_mut().zip(v) {
                *o = madd::<FMA>(*p, *x, *o);
            }
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
