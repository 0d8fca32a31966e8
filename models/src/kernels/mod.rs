//! Quantized matrix products on the CPU for GGUF weights, batched: each weight load serves
//! several activation rows, so decoding 32 sequences costs far less than 32 single decodes, and a
//! prompt prefills as one matrix product.
//!
//! candle 0.11's CPU kernels compute one dot product per (row, column) pair (and have no SIMD
//! code for Q4_1/Q5_1/Q5_0 at all), so a decode step costs the same per token at batch 32 as at
//! batch 1. Here every matrix of a supported type is re-tiled once at load time into a layout of
//! the same size as the file's blocks: 16 output columns interleaved per tile, so that one
//! `vpdpbusd` (u8 weights × i8 activations) computes 4 products for each of 16 columns, with the
//! weight quants unsigned, nibble-packed (one AND or shift to unpack) and their high bits kept as
//! bit masks; the offsets (−8, −16, −32, −128) are removed through the activation block sums.
//! The scales stay as the file has them (f16, 6-bit/8-bit sub-scales widened to bytes).
//!
//! Activations are quantized as ggml quantizes them for the weight type ([`act`]), and the
//! integer structure is ggml's: integer sums per sub-block times integer sub-scales, then one
//! float combine per block, so the numbers stay close to llama.cpp's.
//!
//! Three code paths compute the same numbers bit for bit (the tests hold them to it): AVX-512
//! VNNI, AVX2 (`maddubs`, 8 columns per vector; forced with `DISTILL_NO_VNNI=1`), and a scalar
//! reference. Every output element is computed by the same sequence of operations whatever the
//! number of rows in the call, so a sequence's logits do not depend on its batch mates.
//!
//! [`float`] does the same for f32 weights at a few rows (decoding a float checkpoint).

pub(crate) mod act;
pub mod float;
mod kquant;
mod legacy;
mod lowbit;
mod signed;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// The GGUF types these kernels run: every quantized type candle 0.11 reads from a file (the
/// IQ* types it cannot read are refused when a file is opened).
pub const TYPES: [GgmlDType; 10] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Output columns per tile (one 512-bit vector of `i32`/`f32` lanes).
const TILE_N: usize = 16;
/// Most activation rows that share each weight load (AVX-512 has the registers for 8
/// accumulator pairs; AVX2 takes 4).
const ROWS: usize = 8;
/// Activation rows per work item: the quantized rows of one item stay in L2 while every weight
/// tile of the item streams past them.
const ROW_CHUNK: usize = 64;

/// The instruction set a matrix product runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512Vnni,
    Avx2,
    /// The plain-Rust reference (used for the types candle has no SIMD kernel for, when the CPU
    /// has neither of the others).
    Scalar,
}

impl Isa {
    /// The best this CPU has (checked once); `DISTILL_NO_VNNI=1` skips AVX-512 VNNI.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let isa = Isa::available();
            if isa == Isa::Avx512Vnni && std::env::var_os("DISTILL_NO_VNNI").is_some() {
                Isa::Avx2
            } else {
                isa
            }
        })
    }

    /// The best this CPU has, whatever the environment says.
    pub fn available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every path this CPU can run (the tests compare them).
    pub fn all_available() -> Vec<Isa> {
        match Isa::available() {
            Isa::Avx512Vnni => vec![Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Scalar],
            Isa::Scalar => vec![Isa::Scalar],
        }
    }
}

/// One weight type's tile layout and kernels.
trait Format {
    /// One quantized activation block (covers the same `QK` inputs as a weight block).
    type Act: Copy + Send + Sync;
    const DTYPE: GgmlDType;
    /// Inputs per block.
    const QK: usize;
    /// Bytes of one row's block in the GGUF file.
    const FILE_BYTES: usize;
    /// Bytes of one tile record: 16 columns × one block.
    const TILE_BYTES: usize;
    const ZERO: Self::Act;

    fn quantize(xs: &[f32]) -> Self::Act;
    /// Writes one column's file block into the tile record at column `c`.
    fn pack(block: &[u8], c: usize, rec: &mut [u8]);
    /// Column `c` of a run of tile records times one row of activation blocks, in plain Rust,
    /// operation for operation as the SIMD kernels compute it.
    fn reference(tiles: &[u8], acts: &[Self::Act], c: usize) -> f32;
    /// `out[r][..]` = row `r` of `acts` times the 16 columns of the tile run, rows `0..R`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI; `tiles` holds whole records, one per activation block.
    unsafe fn avx512<const R: usize>(
        tiles: &[u8],
        acts: &[&[Self::Act]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    );
    /// As [`Format::avx512`] with AVX2 + FMA + F16C.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `tiles` holds whole records, one per activation block.
    unsafe fn avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Self::Act]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    );
}

/// A GGUF weight matrix `[n, k]` re-tiled for [`QMatrix::matmul`].
#[derive(Debug)]
pub struct QMatrix {
    dtype: GgmlDType,
    n: usize,
    k: usize,
    isa: Isa,
    /// `tiles[(t · k_blocks + b) · TILE_BYTES ..]`: columns `16 t..16 t + 16`, block `b`.
    tiles: Vec<u8>,
}

/// Calls `$body` with `F` bound to the format type of `$dtype` (`$none` for other types).
macro_rules! with_format {
    ($dtype:expr, $none:expr, |$f:ident| $body:expr) => {
        match $dtype {
            GgmlDType::Q4_0 => {
                type $f = legacy::Q4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $f = legacy::Q4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $f = legacy::Q5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $f = legacy::Q5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $f = legacy::Q8_0;
                $body
            }
            GgmlDType::Q2K => {
                type $f = lowbit::Q2K;
                $body
            }
            GgmlDType::Q3K => {
                type $f = lowbit::Q3K;
                $body
            }
            GgmlDType::Q4K => {
                type $f = kquant::Q4K;
                $body
            }
            GgmlDType::Q5K => {
                type $f = kquant::Q5K;
                $body
            }
            GgmlDType::Q6K => {
                type $f = kquant::Q6K;
                $body
            }
            _ => $none,
        }
    };
}

impl QMatrix {
    /// Re-tiles a `QTensor` `[n, k]` for this CPU; `None` when candle's kernels should run it
    /// instead (another type or shape, or a CPU without AVX2 for a type candle has SIMD for).
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let &[n, k] = q.shape().dims() else {
            return Ok(None);
        };
        let isa = Isa::detect();
        let scalar_ok = matches!(q.dtype(), GgmlDType::Q4_1 | GgmlDType::Q5_1);
        if isa == Isa::Scalar && !scalar_ok {
            return Ok(None);
        }
        Ok(Self::from_blocks(q.dtype(), &q.data()?, n, k, isa))
    }

    /// Builds the tiles from raw GGUF blocks, row-major; `None` for an unsupported type or a
    /// `k` that is not a whole number of blocks.
    pub fn from_blocks(
        dtype: GgmlDType,
        data: &[u8],
        n: usize,
        k: usize,
        isa: Isa,
    ) -> Option<Self> {
        with_format!(dtype, None, |F| {
            if !k.is_multiple_of(F::QK) || data.len() != n * k / F::QK * F::FILE_BYTES {
                return None;
            }
            debug_assert_eq!(F::DTYPE, dtype);
            Some(Self {
                dtype,
                n,
                k,
                isa,
                tiles: tile::<F>(data, n, k),
            })
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes the tiles take (the file's blocks take `n · k / QK · FILE_BYTES`).
    pub fn size_in_bytes(&self) -> usize {
        self.tiles.len()
    }

    /// `dst[m, n] = lhs[m, k] · selfᵀ`, `lhs` quantized row by row as ggml does for this type.
    pub fn matmul(&self, lhs: &[f32], m: usize, dst: &mut [f32]) {
        self.matmul_with(self.isa, lhs, m, dst)
    }

    /// [`QMatrix::matmul`] on a given path (the tests compare them); a path this CPU lacks runs
    /// the scalar reference.
    pub fn matmul_with(&self, isa: Isa, lhs: &[f32], m: usize, dst: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert_eq!(lhs.len(), m * k, "lhs is not [{m}, {k}]");
        assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
        let isa = match (isa, Isa::available()) {
            (Isa::Avx512Vnni, Isa::Avx512Vnni) => Isa::Avx512Vnni,
            (Isa::Avx2, Isa::Avx512Vnni | Isa::Avx2) => Isa::Avx2,
            _ => Isa::Scalar,
        };
        with_format!(self.dtype, unreachable!(), |F| run::<F>(
            isa,
            &self.tiles,
            n,
            k,
            lhs,
            m,
            dst
        ))
    }
}

/// Re-tiles row-major file blocks; columns past `n` in the last tile are zero records (scale 0).
fn tile<F: Format>(data: &[u8], n: usize, k: usize) -> Vec<u8> {
    let kb = k / F::QK;
    let n_tiles = n.div_ceil(TILE_N);
    let mut tiles = vec![0u8; n_tiles * kb * F::TILE_BYTES];
    tiles
        .par_chunks_mut(kb * F::TILE_BYTES)
        .enumerate()
        .for_each(|(t, run)| {
            for c in 0..TILE_N.min(n - t * TILE_N) {
                let row = t * TILE_N + c;
                for b in 0..kb {
                    let block = &data[(row * kb + b) * F::FILE_BYTES..][..F::FILE_BYTES];
                    F::pack(block, c, &mut run[b * F::TILE_BYTES..][..F::TILE_BYTES]);
                }
            }
        });
    tiles
}

fn quantize_rows<F: Format>(lhs: &[f32], m: usize, k: usize) -> Vec<F::Act> {
    let kb = k / F::QK;
    let mut out = vec![F::ZERO; m * kb];
    out.par_chunks_mut(kb.max(1))
        .zip(lhs.par_chunks(k.max(1)))
        .with_min_len(8)
        .for_each(|(blocks, row)| {
            for (block, xs) in blocks.iter_mut().zip(row.chunks_exact(F::QK)) {
                *block = F::quantize(xs);
            }
        });
    out
}

fn run<F: Format>(
    isa: Isa,
    tiles: &[u8],
    n: usize,
    k: usize,
    lhs: &[f32],
    m: usize,
    dst: &mut [f32],
) {
    let kb = k / F::QK;
    let acts = quantize_rows::<F>(lhs, m, k);
    let n_tiles = n.div_ceil(TILE_N);
    let run_bytes = kb * F::TILE_BYTES;
    // Work items: (row chunk, run of tiles); enough of them to balance the threads.
    let tiles_per_item = (n_tiles / (4 * rayon::current_num_threads())).clamp(1, 64);
    let tile_items = n_tiles.div_ceil(tiles_per_item);
    let row_items = m.div_ceil(ROW_CHUNK);
    let dst_addr = dst.as_mut_ptr() as usize;
    let max_rows = if isa == Isa::Avx512Vnni { ROWS } else { 4 };
    (0..row_items * tile_items)
        .into_par_iter()
        .for_each(|item| {
            let (rc, tc) = (item / tile_items, item % tile_items);
            let rows = rc * ROW_CHUNK..m.min((rc + 1) * ROW_CHUNK);
            for t in tc * tiles_per_item..n_tiles.min((tc + 1) * tiles_per_item) {
                let run = &tiles[t * run_bytes..(t + 1) * run_bytes];
                let cols = TILE_N.min(n - t * TILE_N);
                let mut r = rows.start;
                while r < rows.end {
                    let take = max_rows.min(rows.end - r);
                    let mut out = [[0f32; TILE_N]; ROWS];
                    let a: [&[F::Act]; ROWS] =
                        std::array::from_fn(|i| &acts[(r + i.min(take - 1)) * kb..][..kb]);
                    // SAFETY: `matmul_with` chose a path this CPU has; runs hold whole records.
                    unsafe {
                        match (isa, take) {
                            (Isa::Avx512Vnni, 1) => F::avx512::<1>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 2) => F::avx512::<2>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 3) => F::avx512::<3>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 4) => F::avx512::<4>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 5) => F::avx512::<5>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 6) => F::avx512::<6>(run, &a, &mut out),
                            (Isa::Avx512Vnni, 7) => F::avx512::<7>(run, &a, &mut out),
                            (Isa::Avx512Vnni, _) => F::avx512::<8>(run, &a, &mut out),
                            (Isa::Avx2, 1) => F::avx2::<1>(run, &a, &mut out),
                            (Isa::Avx2, 2) => F::avx2::<2>(run, &a, &mut out),
                            (Isa::Avx2, 3) => F::avx2::<3>(run, &a, &mut out),
                            (Isa::Avx2, _) => F::avx2::<4>(run, &a, &mut out),
                            (Isa::Scalar, _) => {
                                for (o, a) in out.iter_mut().zip(&a[..take]) {
                                    for (c, v) in o.iter_mut().enumerate().take(cols) {
                                        *v = F::reference(run, a, c);
                                    }
                                }
                            }
                        }
                    }
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

/// `QMatMul`'s drop-in for a [`QMatrix`]: `[.., k]` → `[.., n]` (f32, contiguous, CPU).
pub(crate) struct QMatMulOp<'a>(pub(crate) &'a QMatrix);

impl CustomOp1 for QMatMulOp<'_> {
    fn name(&self) -> &'static str {
        "tiled-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.dims();
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("tiled qmatmul expects f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("tiled qmatmul expects contiguous activations");
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("tiled qmatmul: input {dims:?} does not end in {k}");
        }
        let m = (end - start) / k;
        let mut dst = vec![0f32; m * n];
        self.0.matmul(&data[start..end], m, &mut dst);
        *dims.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }
}

/// Loads 4 activation quants as one `i32` (what `vpdpbusd`/`maddubs` broadcast), little-endian.
///
/// One unaligned load: built from four indexed bytes, LLVM assembled the word byte by byte in
/// the multi-row kernels (4 loads, 3 shifts/ORs and a broadcast from a general register for each
/// `vpdpbusd`), which halved Q4_K/Q5_K's batched throughput.
#[inline(always)]
fn quad(qs: &[i8], i: usize) -> i32 {
    let q = &qs[i..i + 4];
    // SAFETY: `q` holds 4 bytes.
    i32::from_le(unsafe { q.as_ptr().cast::<i32>().read_unaligned() })
}

/// Byte of column `c`'s value for group `t` in a table of one byte per column and group kept
/// in pairs, `[t / 2][c][t % 2]` (16 columns): one 16-bit lane pair per column, a `madd`
/// operand with two adjacent activation sums.
fn pair_byte(c: usize, t: usize) -> usize {
    32 * (t / 2) + 2 * c + t % 2
}

/// Two adjacent `i16` sums as one `i32` (a `madd` operand).
#[inline(always)]
fn pair(sums: &[i16], i: usize) -> i32 {
    (sums[i] as u16 as u32 | (sums[i + 1] as u16 as u32) << 16) as i32
}

/// An f16 at byte `at` of a record, as f32 (exact).
#[inline(always)]
fn f16_at(rec: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([rec[at], rec[at + 1]]).to_f32()
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! Small helpers shared by the kernels.
    use std::arch::x86_64::*;

    /// How many records ahead of the one being computed the K-quant kernels prefetch.
    const PREFETCH_RECORDS: usize = 2;

    /// Prefetches the tile record `PREFETCH_RECORDS` after the one at `p` (`bytes` long) into
    /// L1. A record interleaves several regions (quants, high bits, scales), and at batch 1 the
    /// hardware prefetcher alone kept Q6_K's weights streaming at 13 GB/s where Q4_K reached
    /// 40: with this, 31–34 GB/s. A prefetch past the end of the tiles is harmless (it never
    /// faults), hence `wrapping_add`.
    #[inline(always)]
    pub(super) unsafe fn prefetch_record(p: *const u8, bytes: usize) {
        let next = p.wrapping_add(PREFETCH_RECORDS * bytes);
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line) as *const i8);
        }
    }

    /// Group `e` (0 or 1) of a pair of signed 16-bit scales per 32-bit lane (group 0 low, 1
    /// high), sign-extended to the whole lane (a `mullo` operand).
    #[inline(always)]
    pub(super) unsafe fn signed_half_avx512(pairs: __m512i, e: usize) -> __m512i {
        if e == 0 {
            _mm512_srai_epi32(_mm512_slli_epi32(pairs, 16), 16)
        } else {
            _mm512_srai_epi32(pairs, 16)
        }
    }

    /// Group `e` (0 or 1) of a pair of 16-bit scales per 32-bit lane, copied into both 16-bit
    /// halves (a `madd` operand).
    #[inline(always)]
    pub(super) unsafe fn both_halves_avx2(pairs: __m256i, e: usize) -> __m256i {
        if e == 0 {
            _mm256_blend_epi16(pairs, _mm256_slli_epi32(pairs, 16), 0xaa)
        } else {
            _mm256_blend_epi16(_mm256_srli_epi32(pairs, 16), pairs, 0xaa)
        }
    }

    /// Σ over the 4 quads of group `t` of `w[h] · a`, times the group's scale (`scale` in both
    /// 16-bit halves of each lane): `maddubs` pairs (≤ 2 · 63 · 127 for 6-bit quants) summed two
    /// at a time in 16 bits, then `madd` with the scale.
    #[inline(always)]
    pub(super) unsafe fn group_avx2(
        w: &[__m256i; 4],
        qs: &[i8],
        t: usize,
        scale: __m256i,
    ) -> __m256i {
        let a = |h: usize| _mm256_set1_epi32(super::quad(qs, 16 * t + 4 * h));
        let t01 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[0], a(0)),
            _mm256_maddubs_epi16(w[1], a(1)),
        );
        let t23 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[2], a(2)),
            _mm256_maddubs_epi16(w[3], a(3)),
        );
        _mm256_add_epi32(_mm256_madd_epi16(t01, scale), _mm256_madd_epi16(t23, scale))
    }

    /// Spreads 32 bits into 32 bytes: byte `i` is `0x10` where bit `i` is set (a 5th bit).
    #[inline(always)]
    pub(super) unsafe fn bits_to_bit4(bits: u32) -> __m256i {
        let x = _mm256_set1_epi32(bits as i32);
        let shuf = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let y = _mm256_and_si256(_mm256_shuffle_epi8(x, shuf), sel);
        _mm256_and_si256(_mm256_cmpeq_epi8(y, sel), _mm256_set1_epi8(0x10))
    }
}

#[cfg(test)]
pub(crate) mod tests;
