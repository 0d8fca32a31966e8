//! Attention for generation steps on the CPU: per-sequence key/value caches in plain growable
//! buffers and one ragged attention pass over every sequence of a step.
//!
//! With candle tensors each step re-concatenated every cache (`Tensor::cat` copies the whole
//! history, per layer, per sequence) and ran a handful of small ops per sequence; at batch 32
//! that copying was the largest cost of a SmolLM2 decode step after the matrix products. Here
//! a step appends its new rows in place and a single parallel pass computes each query row's
//! attention. Each row's result depends only on its own sequence, never on its batch mates.

use candle_core::Tensor;
use half::f16;
use rayon::prelude::*;

use crate::kv_pool::Blocks;
use crate::rope::RopeSpec;
use crate::Result;

/// The precision of the CPU's host caches: f32 (the model's own values) or f16 (half the
/// memory, and half the bytes a long-context decode step reads; llama.cpp's default cache
/// type), converted back to f32 as the attention reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKvDtype {
    #[default]
    F32,
    F16,
}

impl HostKvDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

impl std::str::FromStr for HostKvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(format!("`{other}` is not a KV cache dtype (f32, f16)")),
        }
    }
}

impl std::fmt::Display for HostKvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

/// One layer's cached keys or values in host memory, position-major, in the cache's precision.
#[derive(Debug, Clone)]
pub(crate) enum HostRows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl HostRows {
    fn new(dtype: HostKvDtype) -> Self {
        match dtype {
            HostKvDtype::F32 => Self::F32(Vec::new()),
            HostKvDtype::F16 => Self::F16(Vec::new()),
        }
    }

    fn extend(&mut self, rows: &[f32]) {
        match self {
            Self::F32(v) => {
                grow(v, rows.len());
                v.extend_from_slice(rows)
            }
            Self::F16(v) => {
                grow(v, rows.len());
                v.extend(rows.iter().map(|&x| f16::from_f32(x)))
            }
        }
    }

    /// Values the buffer has room for (its memory), whatever the dtype.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        match self {
            Self::F32(v) => v.capacity(),
            Self::F16(v) => v.capacity(),
        }
    }

    /// Empty, with the memory given back (a preempted sequence's cache frees its room).
    fn release(&mut self) {
        match self {
            Self::F32(v) => *v = Vec::new(),
            Self::F16(v) => *v = Vec::new(),
        }
    }
}

/// Room for `more` values, growing by an eighth rather than doubling: the engine's KV budget
/// counts cached positions, so what a buffer holds beyond them stays within 1/8 (and one
/// step's rows) instead of up to as much again. Growth stays amortised: each value is copied
/// about eight times over a sequence's life, a fraction of what a step reads.
fn grow<T>(v: &mut Vec<T>, more: usize) {
    if v.capacity() - v.len() < more {
        v.reserve_exact(more.max(v.len() / 8).max(4096));
    }
}

/// Keys and values of one sequence for every layer. On the CPU they live in host buffers,
/// position-major (`[len, kv_heads * head_dim]`, f32 or f16: [`HostKvDtype`]); on other
/// devices in blocks of the model's pool ([`crate::kv_pool`]), taken as the sequence grows and
/// given back when the cache is dropped or cleared. One cache per sequence.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) host: Vec<(HostRows, HostRows)>,
    pub(crate) blocks: Option<Blocks>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_host_dtype(num_layers, HostKvDtype::F32)
    }

    /// A cache whose host buffers (the CPU's f32 path) hold `dtype`.
    pub fn with_host_dtype(num_layers: usize, dtype: HostKvDtype) -> Self {
        Self {
            host: (0..num_layers)
                .map(|_| (HostRows::new(dtype), HostRows::new(dtype)))
                .collect(),
            blocks: None,
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

    /// Blocks of the model's KV pool this cache holds; for host buffers (the CPU's f32 path),
    /// the blocks' worth of positions they hold ([`crate::kv_pool::BLOCK`] each), so one
    /// budget counts both.
    pub fn blocks_held(&self) -> usize {
        match &self.blocks {
            Some(b) => b.ids().len(),
            None => self.len.div_ceil(crate::kv_pool::BLOCK),
        }
    }

    /// Forgets every position and gives the memory back: device blocks to the pool, host
    /// buffers to the allocator.
    pub fn clear(&mut self) {
        self.host.iter_mut().for_each(|(k, v)| {
            k.release();
            v.release();
        });
        self.blocks = None;
        self.len = 0;
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
    /// The tables of `rope` at `positions`, scaled by its attention factor (YaRN) as the
    /// tensor path scales them.
    pub(crate) fn new(positions: &[u32], rope: &RopeSpec) -> Self {
        let angles = || {
            positions
                .iter()
                .flat_map(|&p| rope.inv_freq.iter().map(move |&f| p as f32 * f))
        };
        let factor = rope.attention_factor;
        Self {
            cos: angles().map(|a| a.cos() * factor).collect(),
            sin: angles().map(|a| a.sin() * factor).collect(),
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
        ck.extend(&k[offset * kvd..(offset + n) * kvd]);
        cv.extend(&v[offset * kvd..(offset + n) * kvd]);
        // (sequence, positions visible to the sequence's first new row)
        row_seq.extend((0..n).map(|i| (s, cache.len + i + 1)));
        offset += n;
    }
    let caches: Vec<(&HostRows, &HostRows)> = seqs
        .iter()
        .map(|(_, c)| (&c.host[layer].0, &c.host[layer].1))
        .collect();
    let avx2 = simd::avx2();
    // The query heads that share a kv head are adjacent; they go together so each cached key
    // and value is read from memory once per group. One task per row, kv head and piece of at
    // most `PIECE` positions, so a single decoding sequence (batch 1) with few kv heads still
    // spreads its attention over the cores; a row's pieces merge afterwards.
    let (group, span) = (h.heads / h.kv_heads, h.heads / h.kv_heads * h.dim);
    let mut tasks = Vec::new();
    let mut first = Vec::with_capacity(row_seq.len() * h.kv_heads + 1);
    for (row, &(_, visible)) in row_seq.iter().enumerate() {
        for kv_head in 0..h.kv_heads {
            first.push(tasks.len());
            tasks.extend(
                (0..visible.div_ceil(PIECE))
                    .map(|p| (row, kv_head, p * PIECE..((p + 1) * PIECE).min(visible))),
            );
        }
    }
    first.push(tasks.len());
    let mut parts = vec![0f32; tasks.len() * span];
    let mut stats = vec![(0f32, 0f32); tasks.len() * group];
    parts
        .par_chunks_mut(span)
        .zip(stats.par_chunks_mut(group))
        .zip(tasks.par_iter())
        .for_each_init(Vec::new, |scores, ((part, stat), (row, kv_head, range))| {
            let (s, visible) = row_seq[*row];
            let q = &q[row * qd + kv_head * span..][..span];
            // A row with one piece gets its normalised output directly (no merge).
            let stat = (visible > PIECE).then_some(stat);
            match caches[s] {
                (HostRows::F32(k), HostRows::F32(v)) => {
                    let cache = piece((k, v), range, kvd, *kv_head, h.dim);
                    simd::heads(avx2, q, &cache, h.scale, scores, part, stat)
                }
                (HostRows::F16(k), HostRows::F16(v)) => {
                    let cache = piece((k, v), range, kvd, *kv_head, h.dim);
                    simd::heads(avx2, q, &cache, h.scale, scores, part, stat)
                }
                // Keys and values are made together, in the cache's one dtype.
                _ => unreachable!("a layer's keys and values differ in dtype"),
            }
        });
    // No row split: the parts are the output, in its layout (one task per row and kv head).
    if tasks.len() == first.len() - 1 {
        return parts;
    }
    let mut out = vec![0f32; q.len()];
    out.par_chunks_mut(span).enumerate().for_each(|(i, out)| {
        let pieces = first[i]..first[i + 1];
        if pieces.len() == 1 {
            out.copy_from_slice(&parts[pieces.start * span..][..span]);
            return;
        }
        // out = Σ_p e^{m_p − M} o_p / Σ_p e^{m_p − M} l_p per query head, with each
        // piece's unnormalised output o_p, its score maximum m_p and exp-sum l_p.
        for g in 0..group {
            let stat = |p: usize| stats[p * group + g];
            let max = pieces
                .clone()
                .map(|p| stat(p).0)
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[g * h.dim..(g + 1) * h.dim];
            o.fill(0.0);
            let mut total = 0f32;
            for p in pieces.clone() {
                let (m, l) = stat(p);
                let w = (m - max).exp();
                total += w * l;
                let part = &parts[p * span + g * h.dim..][..h.dim];
                o.iter_mut().zip(part).for_each(|(o, x)| *o += w * x);
            }
            let inv = 1.0 / total;
            o.iter_mut().for_each(|o| *o *= inv);
        }
    });
    out
}

/// Positions `range` of one kv head's history, for one attention task: position `j` of the
/// piece is row `range.start + j` of the cache.
fn piece<'a, T>(
    (keys, values): (&'a [T], &'a [T]),
    range: &std::ops::Range<usize>,
    kvd: usize,
    kv_head: usize,
    dim: usize,
) -> simd::Cache<'a, T> {
    let rows = range.start * kvd..range.end * kvd;
    simd::Cache {
        keys: &keys[rows.clone()],
        values: &values[rows],
        stride: kvd,
        offset: kv_head * dim,
        dim,
        len: range.len(),
    }
}

/// Most positions one attention task covers (see [`attend`]). The split depends on a row's
/// history length alone, never on its batch mates, so a row's result is the same in any batch.
const PIECE: usize = 512;

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

/// The per-head attention kernels (`decode/simd.rs`).
mod simd;

#[cfg(test)]
mod tests {
    use super::simd::{heads, Cache};

    /// Softmax attention written out in f64 for one query head.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], stride: usize, offset: usize) -> Vec<f64> {
        let dim = q.len();
        let len = keys.len() / stride;
        let scores: Vec<f64> = (0..len)
            .map(|j| {
                (0..dim)
                    .map(|i| q[i] as f64 * keys[j * stride + offset + i] as f64)
                    .sum::<f64>()
                    / (dim as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..dim)
            .map(|i| {
                (0..len)
                    .map(|j| e[j] * values[j * stride + offset + i] as f64)
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    /// A host cache holds at most an eighth (and one minimum growth) more than its positions,
    /// counts its positions in blocks of 32 for the engine's budget, and gives its memory back
    /// when cleared (a preempted sequence frees its room).
    #[test]
    fn host_buffers_grow_by_an_eighth_and_clearing_frees_them() {
        for dtype in [super::HostKvDtype::F32, super::HostKvDtype::F16] {
            let width = 128;
            let mut cache = super::KvCache::with_host_dtype(2, dtype);
            let row = vec![0.5f32; width];
            for step in 1..=5000 {
                for (k, v) in &mut cache.host {
                    k.extend(&row);
                    v.extend(&row);
                }
                cache.len += 1;
                let capacity = cache.host[0].0.capacity();
                let held = step * width;
                assert!(
                    capacity <= held + held / 8 + 4096,
                    "{dtype}: {capacity} values allocated for {held}"
                );
            }
            assert_eq!(cache.blocks_held(), 5000usize.div_ceil(32));
            cache.clear();
            assert_eq!(cache.blocks_held(), 0);
            for (k, v) in &cache.host {
                assert_eq!(
                    k.capacity() + v.capacity(),
                    0,
                    "{dtype}: memory kept after clear"
                );
            }
        }
    }

    /// The vectorised `e^x` of the softmax is within 2 ulp of the exact value over the range
    /// it serves (`x ≤ 0`), and 0 where `e^x` is no longer a normal float.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_softmax_exponential_is_within_two_ulp() {
        if !super::simd::avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let xs: Vec<f32> = (0..200_000)
            .map(|i| -(i as f32) * 4.4e-4)
            .chain([-87.5, -100.0, -1e30, f32::NEG_INFINITY])
            .collect();
        let ys = super::simd::exp_for_test(&xs);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if x <= -87.0 {
                assert_eq!(y, 0.0, "e^{x}");
                continue;
            }
            let ulp = (want as f32).to_bits().abs_diff(y.to_bits());
            assert!(ulp <= 2, "e^{x}: {y} vs {want} ({ulp} ulp)");
        }
    }

    /// Histories longer than a piece are split and merged: the result is the softmax
    /// attention over the whole history (against f64), and a row's bits do not depend on
    /// whether it comes in a prefill of many rows or decodes alone.
    #[test]
    fn long_histories_split_into_pieces_and_merge_exactly() {
        use super::{attend, Heads, KvCache, PIECE};
        let h = Heads {
            heads: 4,
            kv_heads: 2,
            dim: 16,
            scale: 0.25,
        };
        let (qd, kvd, n) = (4 * 16, 2 * 16, 2 * PIECE + 141);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 2.0;
        let q: Vec<f32> = (0..n * qd).map(|i| wave(i, 0.71)).collect();
        let k: Vec<f32> = (0..n * kvd).map(|i| wave(i, 0.37)).collect();
        let v: Vec<f32> = (0..n * kvd).map(|i| wave(i, 0.93)).collect();
        let tokens = vec![0u32; n];
        let mut whole = KvCache::new(1);
        let all = attend(&q, &k, &v, 0, &mut [(&tokens[..], &mut whole)], h);
        let mut split = KvCache::new(1);
        let (m, last) = (n - 1, n - 1..n);
        attend(
            &q[..m * qd],
            &k[..m * kvd],
            &v[..m * kvd],
            0,
            &mut [(&tokens[..m], &mut split)],
            h,
        );
        split.len = m;
        let alone = attend(
            &q[last.start * qd..],
            &k[last.start * kvd..],
            &v[last.start * kvd..],
            0,
            &mut [(&tokens[..1], &mut split)],
            h,
        );
        assert_eq!(
            &all[m * qd..],
            &alone[..],
            "the last row, batched and alone"
        );
        for head in 0..4 {
            let kv = head / 2;
            let qh = &q[m * qd + head * 16..][..16];
            let want = naive(qh, &k, &v, kvd, kv * 16);
            for (a, b) in alone[head * 16..(head + 1) * 16].iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-5, "head {head}: {a} vs {b}");
            }
        }
    }

    /// An f16 cache attends exactly as an f32 cache holding the same (f16-rounded) values,
    /// with and without SIMD.
    #[test]
    fn an_f16_cache_attends_as_f32_over_the_same_values() {
        let (dim, kv_heads, group, len) = (80, 2, 3, 45);
        let stride = kv_heads * dim;
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 2.0;
        let half: Vec<half::f16> = (0..2 * len * stride)
            .map(|i| half::f16::from_f32(wave(i, 0.53)))
            .collect();
        let wide: Vec<f32> = half.iter().map(|x| x.to_f32()).collect();
        let qs: Vec<f32> = (0..group * dim).map(|i| wave(i, 1.7)).collect();
        let (hk, hv) = half.split_at(len * stride);
        let (wk, wv) = wide.split_at(len * stride);
        for avx2 in [false, super::simd::avx2()] {
            for kv in 0..kv_heads {
                let (mut a, mut b) = (vec![0f32; group * dim], vec![0f32; group * dim]);
                let offset = kv * dim;
                let half_cache = Cache {
                    keys: hk,
                    values: hv,
                    stride,
                    offset,
                    dim,
                    len,
                };
                let wide_cache = Cache {
                    keys: wk,
                    values: wv,
                    stride,
                    offset,
                    dim,
                    len,
                };
                heads(avx2, &qs, &half_cache, 0.1, &mut Vec::new(), &mut a, None);
                heads(avx2, &qs, &wide_cache, 0.1, &mut Vec::new(), &mut b, None);
                assert_eq!(a, b, "avx2 {avx2}, kv head {kv}");
            }
        }
    }

    #[test]
    fn grouped_heads_match_the_naive_softmax_with_and_without_simd() {
        // dim 64 takes the AVX2 path where available; dim 24 always the plain one.
        // 80 = 64 + 16 lanes: both register widths of the value sums; 300 positions: many
        // blocks of eight keys and a tail.
        for (dim, kv_heads, group, len) in [
            (64, 3, 3, 37),
            (24, 2, 2, 5),
            (64, 1, 1, 1),
            (80, 2, 4, 70),
            (128, 1, 7, 300),
        ] {
            let stride = kv_heads * dim;
            let wave = |i: usize, f: f32| (i as f32 * f).sin() * 2.0;
            let keys: Vec<f32> = (0..len * stride).map(|i| wave(i, 0.37)).collect();
            let values: Vec<f32> = (0..len * stride).map(|i| wave(i, 0.91)).collect();
            let qs: Vec<f32> = (0..group * dim).map(|i| wave(i, 1.3)).collect();
            for kv in 0..kv_heads {
                let cache = Cache {
                    keys: &keys,
                    values: &values,
                    stride,
                    offset: kv * dim,
                    dim,
                    len,
                };
                let scale = 1.0 / (dim as f32).sqrt();
                for avx2 in [false, super::simd::avx2()] {
                    let mut out = vec![0f32; group * dim];
                    heads(avx2, &qs, &cache, scale, &mut Vec::new(), &mut out, None);
                    for g in 0..group {
                        let want = naive(
                            &qs[g * dim..(g + 1) * dim],
                            &keys,
                            &values,
                            stride,
                            kv * dim,
                        );
                        for (a, b) in out[g * dim..(g + 1) * dim].iter().zip(&want) {
                            assert!(
                                (*a as f64 - b).abs() < 1e-5,
                                "dim {dim} avx2 {avx2}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}
