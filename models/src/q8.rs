//! Q8_0 matrix products with AVX-512 VNNI for batched decoding on the CPU.
//!
//! candle 0.11 has a VNNI kernel for Q8_0 only when the inner dimension is a multiple of 256;
//! SmolLM2 (hidden 576) and many small models are not, and the fallback computes one
//! 32-value dot product per (row, column) pair, so a decode step costs the same per token at
//! batch 32 as at batch 1. Here the weights are re-tiled once at load time, 16 output columns
//! per tile, so one `vpdpbusd` computes 4 products for each of 16 columns and each weight load
//! serves up to four activation rows.
//!
//! Every output element is computed by the same sequence of operations whatever the number of
//! rows in the call, so a sequence's logits do not depend on its batch mates.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

const QK: usize = 32;
/// Output columns per tile (one 512-bit vector of `i32`/`f32` lanes).
const TILE_N: usize = 16;
/// Activation rows that share each weight load.
const ROWS: usize = 4;
/// Activation rows per work item: the quantized rows of one item stay in L2 while every weight
/// tile of the item streams past them.
const ROW_CHUNK: usize = 64;

/// One 32-value block of 16 output columns. `qs[64 g + 4 c + j]` holds weight `4 g + j` of
/// column `c`, offset by +128 so it is unsigned (what `vpdpbusd` multiplies with signed bytes).
#[repr(C, align(64))]
#[derive(Clone)]
struct Tile {
    qs: [u8; QK * TILE_N],
    d: [f32; TILE_N],
}

/// One 32-value block of an activation row quantized to 8 bits (as ggml's Q8_0: scale
/// `max|x| / 127`) with the sum of its quants, which undoes the weights' +128 offset.
#[derive(Clone, Copy)]
struct ActBlock {
    qs: [i8; QK],
    d: f32,
    sum: i32,
}

/// A Q8_0 weight matrix `[n, k]` re-tiled for [`matmul`](Q8Matrix::matmul).
#[derive(Debug)]
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// `tiles[t * k_blocks + b]`: columns `16 t..16 t + 16`, inputs `32 b..32 b + 32`.
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tile")
    }
}

/// Whether this CPU runs the kernel (checked once).
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("DISTILL_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

impl Q8Matrix {
    /// Re-tiles a Q8_0 `QTensor` `[n, k]`; `None` when it is another type or shape, or the CPU
    /// lacks AVX-512 VNNI (candle's kernels are used then).
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        if !supported() || q.dtype() != GgmlDType::Q8_0 {
            return Ok(None);
        }
        let &[n, k] = q.shape().dims() else {
            return Ok(None);
        };
        if k % QK != 0 {
            return Ok(None);
        }
        Ok(Some(Self::from_blocks(&q.data()?, n, k)))
    }

    /// Builds the tiles from raw GGUF Q8_0 blocks (`f16` scale, then 32 `i8`), row-major.
    fn from_blocks(data: &[u8], n: usize, k: usize) -> Self {
        const BLOCK_BYTES: usize = 2 + QK;
        let kb = k / QK;
        let n_tiles = n.div_ceil(TILE_N);
        let empty = Tile {
            qs: [128; QK * TILE_N],
            d: [0.0; TILE_N],
        };
        let mut tiles = vec![empty; n_tiles * kb];
        for row in 0..n {
            let (t, c) = (row / TILE_N, row % TILE_N);
            for b in 0..kb {
                let block = &data[(row * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let tile = &mut tiles[t * kb + b];
                tile.d[c] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (i, &q) in block[2..].iter().enumerate() {
                    let (g, j) = (i / 4, i % 4);
                    tile.qs[64 * g + 4 * c + j] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
        Self { n, k, tiles }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `dst[m, n] = lhs[m, k] · selfᵀ` with `lhs` quantized row by row to 8 bits.
    pub fn matmul(&self, lhs: &[f32], m: usize, dst: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert_eq!(lhs.len(), m * k, "lhs is not [{m}, {k}]");
        assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
        let kb = k / QK;
        let acts = quantize_rows(lhs, m, k);
        let n_tiles = n.div_ceil(TILE_N);
        // Work items: (row chunk, run of tiles); enough of them to balance the threads.
        let tiles_per_item = (n_tiles / (4 * rayon::current_num_threads())).clamp(1, 64);
        let tile_items = n_tiles.div_ceil(tiles_per_item);
        let row_items = m.div_ceil(ROW_CHUNK);
        let dst_addr = dst.as_mut_ptr() as usize;
        (0..row_items * tile_items)
            .into_par_iter()
            .for_each(|item| {
                let (rc, tc) = (item / tile_items, item % tile_items);
                let rows = rc * ROW_CHUNK..m.min((rc + 1) * ROW_CHUNK);
                let tiles = tc * tiles_per_item..n_tiles.min((tc + 1) * tiles_per_item);
                for t in tiles {
                    let tile = &self.tiles[t * kb..(t + 1) * kb];
                    let cols = TILE_N.min(n - t * TILE_N);
                    let mut r = rows.start;
                    while r < rows.end {
                        let take = ROWS.min(rows.end - r);
                        let mut out = [[0f32; TILE_N]; ROWS];
                        let act = |i: usize| &acts[(r + i.min(take - 1)) * kb..][..kb];
                        let a = [act(0), act(1), act(2), act(3)];
                        // SAFETY: `supported()` was true when the tiles were built.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            match take {
                                1 => vnni::tile::<1>(tile, &a, &mut out),
                                2 => vnni::tile::<2>(tile, &a, &mut out),
                                3 => vnni::tile::<3>(tile, &a, &mut out),
                                _ => vnni::tile::<4>(tile, &a, &mut out),
                            }
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        reference_tile(tile, &a[..take], &mut out);
                        for (i, o) in out.iter().take(take).enumerate() {
                            // SAFETY: each (row, column) of dst belongs to exactly one work item.
                            unsafe {
                                let p = (dst_addr as *mut f32).add((r + i) * n + t * TILE_N);
                                std::ptr::copy_nonoverlapping(o.as_ptr(), p, cols);
                            }
                        }
                        r += take;
                    }
                }
            });
    }
}

/// Quantizes each `k`-long row of `lhs` into `k / 32` blocks (ggml's Q8_0 rounding).
fn quantize_rows(lhs: &[f32], m: usize, k: usize) -> Vec<ActBlock> {
    let kb = k / QK;
    let zero = ActBlock {
        qs: [0; QK],
        d: 0.0,
        sum: 0,
    };
    let mut out = vec![zero; m * kb];
    out.par_chunks_mut(kb.max(1))
        .zip(lhs.par_chunks(k.max(1)))
        .with_min_len(8)
        .for_each(|(blocks, row)| {
            for (block, xs) in blocks.iter_mut().zip(row.chunks_exact(QK)) {
                let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut sum = 0i32;
                for (q, &x) in block.qs.iter_mut().zip(xs) {
                    // Round half away from zero, as ggml's `roundf`, without the libm call
                    // (baseline x86-64 has no rounding instruction); |v| <= 127.
                    let v = x * id;
                    *q = (v + 0.5f32.copysign(v)) as i8;
                    sum += *q as i32;
                }
                block.d = d;
                block.sum = sum;
            }
        });
    out
}

/// The kernel's arithmetic in plain Rust, operation for operation (the tests hold the SIMD
/// kernel to it bit for bit; it also serves targets without x86).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn reference_tile(tile: &[Tile], acts: &[&[ActBlock]], out: &mut [[f32; TILE_N]; ROWS]) {
    for (r, act) in acts.iter().enumerate() {
        for (c, o) in out[r].iter_mut().enumerate() {
            let mut acc = 0f32;
            for (t, a) in tile.iter().zip(act.iter()) {
                let mut isum = 0i32;
                for i in 0..QK {
                    let (g, j) = (i / 4, i % 4);
                    isum += (t.qs[64 * g + 4 * c + j] as i32 - 128) * a.qs[i] as i32;
                }
                acc = (isum as f32).mul_add(t.d[c] * a.d, acc);
            }
            *o = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{ActBlock, Tile, ROWS, TILE_N};
    use std::arch::x86_64::*;

    /// `out[r][c]` = row `r` of `acts` · column `c` of the tile run, for the first `R` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize>(
        tiles: &[Tile],
        acts: &[&[ActBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        let mut accf = [_mm512_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            let mut acci = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let w = _mm512_load_si512(t.qs.as_ptr().add(64 * g) as *const _);
                for r in 0..R {
                    let q = &acts[r][b].qs[4 * g..4 * g + 4];
                    let a = i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                    acci[r] = _mm512_dpbusd_epi32(acci[r], w, _mm512_set1_epi32(a));
                }
            }
            let dw = _mm512_load_ps(t.d.as_ptr());
            for r in 0..R {
                let a = &acts[r][b];
                let isum = _mm512_sub_epi32(acci[r], _mm512_set1_epi32(128 * a.sum));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                accf[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, accf[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), accf[r]);
        }
    }
}

/// `QMatMul`'s drop-in for a [`Q8Matrix`]: `[.., k]` → `[.., n]` (f32, contiguous, CPU).
pub(crate) struct Q8MatMul<'a>(pub(crate) &'a Q8Matrix);

impl CustomOp1 for Q8MatMul<'_> {
    fn name(&self) -> &'static str {
        "q8-vnni-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.dims();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("q8 matmul expects f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q8 matmul expects contiguous activations");
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("q8 matmul: input {dims:?} does not end in {k}");
        }
        let m = (end - start) / k;
        let mut dst = vec![0f32; m * n];
        self.0.matmul(&data[start..end], m, &mut dst);
        *dims.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_q8(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::new();
        for _ in 0..n * k / QK {
            let d = half::f16::from_f32(rng.random_range(0.001..0.05));
            data.extend(d.to_le_bytes());
            data.extend((0..QK).map(|_| rng.random_range(-128i32..=127) as i8 as u8));
        }
        data
    }

    /// Plain f32 dot products of dequantized weights and quantized activations.
    fn naive(data: &[u8], n: usize, k: usize, lhs: &[f32], m: usize) -> Vec<f32> {
        let acts = quantize_rows(lhs, m, k);
        let kb = k / QK;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0f64;
                for b in 0..kb {
                    let block = &data[(c * kb + b) * 34..][..34];
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let a = &acts[r * kb + b];
                    for i in 0..QK {
                        acc += (d * (block[2 + i] as i8) as f32) as f64
                            * (a.d * a.qs[i] as f32) as f64;
                    }
                }
                out[r * n + c] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_dequantized_product_and_is_batch_invariant() {
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // n not a multiple of 16 (a partial tile), k = 576 as SmolLM2's hidden size.
        let (n, k, m) = (70, 576, 37);
        let data = random_q8(n, k, 1);
        let matrix = Q8Matrix::from_blocks(&data, n, k);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let lhs: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut dst = vec![0f32; m * n];
        matrix.matmul(&lhs, m, &mut dst);
        let want = naive(&data, n, k, &lhs, m);
        for (i, (a, b)) in dst.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{i}: {a} vs {b}");
        }
        // The SIMD kernel equals the scalar reference bit for bit.
        let acts = quantize_rows(&lhs, m, k);
        let kb = k / QK;
        for r in 0..m {
            let mut out = [[0f32; TILE_N]; ROWS];
            reference_tile(&matrix.tiles[..kb], &[&acts[r * kb..][..kb]], &mut out);
            assert_eq!(&out[0][..], &dst[r * n..r * n + TILE_N], "row {r}");
        }
        // Each row alone gives exactly its row of the batched product.
        for r in [0, 5, 36] {
            let mut one = vec![0f32; n];
            matrix.matmul(&lhs[r * k..(r + 1) * k], 1, &mut one);
            assert_eq!(one, dst[r * n..(r + 1) * n], "row {r}");
        }
    }
}
