//! One kv head's softmax attention over an f32 or f16 cache, compiled twice: with
//! AVX2/FMA/F16C when the CPU has them (the build targets baseline x86-64), plainly otherwise.

pub(super) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The AVX2 softmax's `e^x` over `xs` (AVX2 CPUs only), for its accuracy test.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn exp_for_test(xs: &[f32]) -> Vec<f32> {
    use std::arch::x86_64::*;
    let mut out = vec![0f32; xs.len()];
    for (x, y) in xs.chunks(8).zip(out.chunks_mut(8)) {
        let mut lanes = [0f32; 8];
        lanes[..x.len()].copy_from_slice(x);
        // SAFETY: the caller checked AVX2 and FMA (`avx2()`).
        unsafe {
            let e = avx2_impl::exp(_mm256_loadu_ps(lanes.as_ptr()));
            _mm256_storeu_ps(lanes.as_mut_ptr(), e);
        }
        y.copy_from_slice(&lanes[..x.len()]);
    }
    out
}

/// A cached value's storage type: f32, or f16 read back as f32.
pub(super) trait Elem: Copy {
    fn to_f32(self) -> f32;

    /// Eight values from `p` as f32 lanes (AVX2 with F16C).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// One kv head's history: position `j`'s key is `keys[j * stride + offset..][..dim]`.
pub(super) struct Cache<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
    pub stride: usize,
    pub offset: usize,
    pub dim: usize,
    pub len: usize,
}

impl<T> Cache<'_, T> {
    #[inline(always)]
    fn key(&self, j: usize) -> &[T] {
        &self.keys[j * self.stride + self.offset..][..self.dim]
    }

    #[inline(always)]
    fn value(&self, j: usize) -> &[T] {
        &self.values[j * self.stride + self.offset..][..self.dim]
    }
}

/// Attention of the query heads `qs` (`[group, dim]`, all sharing the kv head of `cache`)
/// into `out` (`[group, dim]`); `scores` is scratch space. With `stats` (one piece of a
/// longer history), `out` is left unnormalised and `stats[g]` gets head `g`'s score maximum
/// and the sum of its exponentials, for the merge.
pub(super) fn heads<T: Elem>(
    avx2: bool,
    qs: &[f32],
    cache: &Cache<T>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    mut stats: Option<&mut [(f32, f32)]>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && cache.dim.is_multiple_of(16) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `avx2()`).
        return unsafe { avx2_impl::heads(qs, cache, scale, scores, out, stats) };
    }
    let _ = avx2;
    let dim = cache.dim;
    let group = qs.len() / dim;
    scores.clear();
    scores.resize(group * cache.len, 0.0);
    for j in 0..cache.len {
        let k = cache.key(j);
        for g in 0..group {
            let q = &qs[g * dim..(g + 1) * dim];
            scores[g * cache.len + j] =
                q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
        }
    }
    out.fill(0.0);
    for g in 0..group {
        let row = &mut scores[g * cache.len..(g + 1) * cache.len];
        let stat = softmax(row, stats.is_none());
        if let Some(stats) = &mut stats {
            stats[g] = stat;
        }
        let o = &mut out[g * dim..(g + 1) * dim];
        for (j, &p) in row.iter().enumerate() {
            for (o, v) in o.iter_mut().zip(cache.value(j)) {
                *o += p * v.to_f32();
            }
        }
    }
}

/// `e^{s − max}` over the row, divided by their sum when `normalize`; returns the
/// maximum and the sum.
#[inline(always)]
fn softmax(row: &mut [f32], normalize: bool) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    if normalize {
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
    (max, sum)
}

#[cfg(target_arch = "x86_64")]
mod avx2_impl {
    use super::{Cache, Elem};
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes of each of `a[0..8]`, as the 8 lanes of one vector.
    #[inline(always)]
    unsafe fn hsum8(a: [__m256; 8]) -> __m256 {
        let s01 = _mm256_hadd_ps(a[0], a[1]);
        let s23 = _mm256_hadd_ps(a[2], a[3]);
        let s45 = _mm256_hadd_ps(a[4], a[5]);
        let s67 = _mm256_hadd_ps(a[6], a[7]);
        // Lanes: [0 0 1 1 | 0 0 1 1] then [2 2 3 3 | 2 2 3 3]-style pairs per 128-bit half.
        let s0123 = _mm256_hadd_ps(s01, s23);
        let s4567 = _mm256_hadd_ps(s45, s67);
        // Low halves hold the first four lanes' sums, high halves the last four's.
        let lo = _mm256_permute2f128_ps(s0123, s4567, 0x20);
        let hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
        _mm256_add_ps(lo, hi)
    }

    #[inline(always)]
    unsafe fn hsum(a: __m256) -> f32 {
        let lo = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
        _mm_cvtss_f32(_mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1)))
    }

    /// `e^x` for `x ≤ 0` (softmax after its maximum is taken off), within 2 ulp: `x = n ln 2
    /// + r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor series to `r^7`, `2^n` put into the
    /// exponent; below −87 (where `e^x` leaves the normal floats) it is 0.
    #[inline(always)]
    pub(in super::super) unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 in two parts, so `n · ln 2` is subtracted without rounding error.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        let y = _mm256_mul_ps(p, scale);
        // −87 itself still comes out right; what was below it is 0.
        _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_GT_OQ))
    }

    /// Softmax of one row in place, 8 lanes at a time.
    #[inline(always)]
    unsafe fn softmax(row: &mut [f32], normalize: bool) -> (f32, f32) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let (m, p) = (_mm256_set1_ps(max), row.as_mut_ptr());
        let whole = row.len() / 8 * 8;
        let mut sum = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        let mut total = hsum(sum);
        for s in &mut row[whole..] {
            *s = (*s - max).exp();
            total += *s;
        }
        if !normalize {
            return (max, total);
        }
        let inv = _mm256_set1_ps(1.0 / total);
        for i in (0..whole).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
        }
        let inv = 1.0 / total;
        row[whole..].iter_mut().for_each(|s| *s *= inv);
        (max, total)
    }

    /// Scores of query `q` against keys `j0..j0 + 8`: eight dot products at once, reduced
    /// together.
    #[inline(always)]
    unsafe fn scores8<T: Elem>(q: *const f32, cache: &Cache<T>, j0: usize) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (k, a) in acc.iter_mut().enumerate() {
            let key = cache.key(j0 + k).as_ptr();
            for i in (0..cache.dim).step_by(8) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), T::load8(key.add(i)), *a);
            }
        }
        hsum8(acc)
    }

    /// `out[..8 N] = Σ_j p_j · v_j[..8 N]` over every position, the sums held in `N`
    /// registers (the positions in order, as a running sum per lane).
    #[inline(always)]
    unsafe fn weighted_values<T: Elem, const N: usize>(
        p: &[f32],
        cache: &Cache<T>,
        from: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (j, &w) in p.iter().enumerate() {
            let w = _mm256_set1_ps(w);
            let v = cache.value(j).as_ptr().add(from);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, T::load8(v.add(8 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(from + 8 * i), *a);
        }
    }

    /// As [`super::heads`], for `dim` a multiple of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn heads<T: Elem>(
        qs: &[f32],
        cache: &Cache<T>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
        mut stats: Option<&mut [(f32, f32)]>,
    ) {
        let (dim, len) = (cache.dim, cache.len);
        let group = qs.len() / dim;
        scores.clear();
        scores.resize(group * len, 0.0);
        // Eight keys at a time (they stay in L1 for the whole group), one reduction for the
        // eight dot products; the last few one by one.
        let whole = len / 8 * 8;
        let sc = _mm256_set1_ps(scale);
        for j0 in (0..whole).step_by(8) {
            for g in 0..group {
                let s = scores8(qs[g * dim..].as_ptr(), cache, j0);
                _mm256_storeu_ps(scores[g * len + j0..].as_mut_ptr(), _mm256_mul_ps(s, sc));
            }
        }
        for j in whole..len {
            let k = cache.key(j).as_ptr();
            for g in 0..group {
                let q = qs[g * dim..].as_ptr();
                let mut a = _mm256_setzero_ps();
                for i in (0..dim).step_by(8) {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), T::load8(k.add(i)), a);
                }
                scores[g * len + j] = hsum(a) * scale;
            }
        }
        for g in 0..group {
            let stat = softmax(&mut scores[g * len..(g + 1) * len], stats.is_none());
            if let Some(stats) = &mut stats {
                stats[g] = stat;
            }
        }
        // Each query head's output accumulates in registers over every position: 64 lanes
        // at a time, then 16.
        for g in 0..group {
            let (p, o) = (&scores[g * len..(g + 1) * len], out[g * dim..].as_mut_ptr());
            let mut from = 0;
            while dim - from >= 64 {
                weighted_values::<T, 8>(p, cache, from, o);
                from += 64;
            }
            while from < dim {
                weighted_values::<T, 2>(p, cache, from, o);
                from += 16;
            }
        }
    }
}
