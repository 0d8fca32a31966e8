//! f32 weights times a few activation rows on the CPU: decoding a float checkpoint (a trained
//! student's `model/` folder), where each step multiplies 1–16 rows by every matrix of the model
//! and the step's cost is reading the weights once.
//!
//! candle's CPU matmul runs `x · Wᵀ` through `gemm`, which packs the weight on every call: at a
//! handful of rows that reads and writes the whole matrix again before the product reads it.
//! Here every weight row `[k]` (contiguous in the `[n, k]` matrix) streams through the vector
//! registers once, dotted with each activation row (which stay in L1); the threads split the
//! output columns.
//!
//! Each output is one dot product computed in the same order whatever the number of rows in
//! the call, so a sequence's logits do not depend on its batch mates.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::Isa;

/// Most activation rows the kernel takes; larger products (a prefill) are compute-bound and go
/// to `gemm`.
pub const MAX_ROWS: usize = 16;
/// Activation rows dotted per pass over a weight row.
const GROUP: usize = 4;
/// Weight rows per work item.
const COLUMNS_PER_ITEM: usize = 32;

/// `x[m, k] · wᵀ` for a row-major `w` `[n, k]`: `[m, n]`, row-major.
pub fn matmul(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
    assert_eq!(x.len(), m * k, "activations are not [{m}, {k}]");
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let isa = Isa::detect();
    // Column-major first ([n, m]: each work item writes whole columns), then transposed.
    let mut columns = vec![0f32; n * m];
    columns
        .par_chunks_mut(COLUMNS_PER_ITEM * m)
        .enumerate()
        .for_each(|(item, out)| {
            let first = item * COLUMNS_PER_ITEM;
            for (j, col) in out.chunks_mut(m).enumerate() {
                let row = &w[(first + j) * k..][..k];
                for (g, o) in col.chunks_mut(GROUP).enumerate() {
                    dots(isa, row, &x[g * GROUP * k..], o);
                }
            }
        });
    let mut dst = vec![0f32; m * n];
    for (j, col) in columns.chunks(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            dst[r * n + j] = v;
        }
    }
    dst
}

/// `xs · wᵀ` through [`matmul`] when it applies: a CPU f32 weight that is not being trained
/// (no gradient flows through the kernel), contiguous, and at most [`MAX_ROWS`] activation rows
/// in f32. `None`: the caller multiplies as usual.
pub(crate) fn forward(w: &Tensor, xs: &Tensor) -> Option<candle_core::Result<Tensor>> {
    let k = *xs.dims().last()?;
    let rows = xs.elem_count() / k.max(1);
    let applies = xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !w.is_variable()
        && !xs.track_op()
        && w.is_contiguous()
        && w.dims2().is_ok_and(|(_, wk)| wk == k)
        && (1..=MAX_ROWS).contains(&rows);
    applies.then(|| xs.contiguous()?.apply_op1_no_bwd(&FewRows(w)))
}

/// [`matmul`] as a candle op on the activations, the weight captured: `[.., k]` → `[.., n]`.
struct FewRows<'a>(&'a Tensor);

impl CustomOp1 for FewRows<'_> {
    fn name(&self) -> &'static str {
        "few-rows-f32-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.dims2()?;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("few-rows matmul expects f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("few-rows matmul expects contiguous activations");
        };
        let (weight, w_layout) = self.0.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(w)) = &*weight else {
            candle_core::bail!("few-rows matmul expects an f32 weight on the CPU");
        };
        let Some((w_start, w_end)) = w_layout.contiguous_offsets() else {
            candle_core::bail!("few-rows matmul expects a contiguous weight");
        };
        let m = (end - start) / k;
        let dst = matmul(&w[w_start..w_end], n, k, &data[start..end], m);
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }
}

/// `out[r] = row · x[r k..(r + 1) k]` for the `out.len()` (≤ [`GROUP`]) activation rows.
fn dots(isa: Isa, row: &[f32], x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Isa::detect` found these features on this CPU; slices are bounds-checked
        // by the callers' layout (rows of `row.len()`).
        let k = row.len();
        assert!(x.len() >= out.len() * k);
        match (isa, out.len()) {
            (Isa::Avx512Vnni, 1) => return unsafe { x86::avx512::<1>(row, x, out) },
            (Isa::Avx512Vnni, 2) => return unsafe { x86::avx512::<2>(row, x, out) },
            (Isa::Avx512Vnni, 3) => return unsafe { x86::avx512::<3>(row, x, out) },
            (Isa::Avx512Vnni, _) => return unsafe { x86::avx512::<4>(row, x, out) },
            (Isa::Avx2, 1) => return unsafe { x86::avx2::<1>(row, x, out) },
            (Isa::Avx2, 2) => return unsafe { x86::avx2::<2>(row, x, out) },
            (Isa::Avx2, 3) => return unsafe { x86::avx2::<3>(row, x, out) },
            (Isa::Avx2, _) => return unsafe { x86::avx2::<4>(row, x, out) },
            (Isa::Scalar, _) => {}
        }
    }
    let _ = isa;
    let k = row.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = row
            .iter()
            .zip(&x[r * k..(r + 1) * k])
            .map(|(a, b)| a * b)
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
// Rows index the activations and the accumulators at once.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512<const R: usize>(row: &[f32], x: &[f32], out: &mut [f32]) {
        let k = row.len();
        let whole = k - k % 16;
        let (w, xs) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        let mut i = 0;
        while i < whole {
            let v = _mm512_loadu_ps(w.add(i));
            for r in 0..R {
                acc[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xs.add(r * k + i)), acc[r]);
            }
            i += 16;
        }
        for r in 0..R {
            let mut s = _mm512_reduce_add_ps(acc[r]);
            for j in whole..k {
                s += row[j] * x[r * k + j];
            }
            out[r] = s;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<const R: usize>(row: &[f32], x: &[f32], out: &mut [f32]) {
        let k = row.len();
        let whole = k - k % 8;
        let (w, xs) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i < whole {
            let v = _mm256_loadu_ps(w.add(i));
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xs.add(r * k + i)), acc[r]);
            }
            i += 8;
        }
        for r in 0..R {
            let hi = _mm256_extractf128_ps(acc[r], 1);
            let lo = _mm256_castps256_ps128(acc[r]);
            let q = _mm_add_ps(lo, hi);
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let mut s = _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
            for j in whole..k {
                s += row[j] * x[r * k + j];
            }
            out[r] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Against an f64 product within f32 rounding, on every instruction-set path; a row's result
    /// is the same bits whatever its batch mates.
    #[test]
    fn matches_f64_and_is_batch_invariant() {
        for (n, k) in [(37, 19), (70, 896), (5, 4864)] {
            let w = seeded(n * k, 1);
            let x = seeded(MAX_ROWS * k, 2);
            let all = matmul(&w, n, k, &x, MAX_ROWS);
            for r in 0..MAX_ROWS {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| w[j * k + i] as f64 * x[r * k + i] as f64)
                        .sum();
                    let got = all[r * n + j] as f64;
                    assert!((got - exact).abs() < 1e-5 * k as f64, "{got} {exact}");
                }
            }
            for (r, m) in [(3, 1), (0, 2), (5, 7)] {
                let some = matmul(&w, n, k, &x[r * k..(r + m) * k], m);
                assert_eq!(some[..n], all[r * n..(r + 1) * n], "row {r} among {m}");
            }
            for isa in Isa::all_available() {
                for rows in 1..=GROUP {
                    let mut out = vec![0f32; rows];
                    dots(isa, &w[..k], &x, &mut out);
                    for (r, o) in out.iter().enumerate() {
                        let exact: f64 = (0..k).map(|i| w[i] as f64 * x[r * k + i] as f64).sum();
                        assert!((*o as f64 - exact).abs() < 1e-5 * k as f64, "{isa:?}");
                    }
                }
            }
        }
    }
}
