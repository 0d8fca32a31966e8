//! The 2- and 3-bit K-quants Q2_K and Q3_K (256-value super-blocks, 16-value scale groups)
//! times Q8_K activations: what the Q2_K and Q3_K_M/Q3_K_S files that people download for a
//! teacher that does not fit in memory otherwise are mostly made of.
//!
//! One tile record is 16 columns × 256 inputs, in 8 pairs of 16-input groups (`t = 2 q + e`),
//! each pair's bits together (one forward stream):
//! - the low 2 bits of the quants of group `t` as one 64-byte vector: bits `2 h..2 h + 2` of
//!   byte `4 c + j` hold input `16 t + 4 h + j` of column `c`, so one shift and one AND give a
//!   `vpdpbusd` operand for 4 inputs of every column;
//! - Q3_K: after the pair's two vectors, their 3rd bits as one more: bit `4 e + h` of byte
//!   `4 c + j` for input `16 t + 4 h + j` (one shift and one AND make it the byte's 4; a 64-bit
//!   mask per 4 inputs, as Q5_K has, cost AVX2 six instructions to spread into bytes);
//! - then the scales of each pair of groups as bytes `[q][c][e]` (one 16-bit lane pair per
//!   column, for a `madd` with two activation sums): Q2_K keeps the file's bytes (4-bit scale low,
//!   4-bit min high), Q3_K stores its 6-bit scales minus 32 as signed bytes;
//! - f16 `d` (and Q2_K's f16 `dmin`) of the 16 columns.
//!
//! Sizes: 84 and 114 bytes per 256 inputs of a column against the file's 84 and 110 (Q3_K's 12
//! packed scale bytes become 16).
//!
//! Per block, in integers: Q2_K `S1 = Σ_t sc_t · Σ q·a`, `S2 = Σ_t m_t · Σ a`, then
//! `acc = fma(S1, d·d_a, acc)`, `acc = fma(−S2, dmin·d_a, acc)`; Q3_K (quants stored unsigned,
//! 0..7, offset 4) `S = Σ_t sc_t · (Σ q·a − 4 · Σ a)`, then `acc = fma(S, d·d_a, acc)`: ggml's
//! integer structure for both.

use super::act::Q8KBlock;
use super::{f16_at, pair_byte, Format, ROWS, TILE_N};
use candle_core::quantized::GgmlDType;

pub(crate) struct Q2K;
pub(crate) struct Q3K;

/// The 2-bit value of input `v` (< 256) of a file block's `qs` (64 bytes): ggml stores input
/// `128 n + 32 k + l` at bits `2 k..2 k + 2` of byte `32 n + l`.
fn file_crumb(qs: &[u8], v: usize) -> u8 {
    (qs[32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3
}

/// Where input `v` of column `c` sits in a record whose group pairs take `pair_bytes` each:
/// (byte, shift) of its 2 low bits, and (byte, bit) of its 3rd bit (Q3_K).
fn crumb_at(pair_bytes: usize, c: usize, v: usize) -> (usize, u32, usize, u32) {
    let (t, h, j) = (v / 16, (v % 16) / 4, v % 4);
    let (q, e) = (t / 2, t % 2);
    let low = pair_bytes * q + 64 * e + 4 * c + j;
    (
        low,
        2 * h as u32,
        pair_bytes * q + 128 + 4 * c + j,
        (4 * e + h) as u32,
    )
}

/// Writes the 2 low bits of a file block's 256 quants (`qs`) for column `c`, byte by byte
/// (each byte is one column's 4 inputs `16 t + 4 h + j`, `h = 0..4`).
fn pack_crumbs(qs: &[u8], pair_bytes: usize, c: usize, rec: &mut [u8]) {
    for t in 0..16 {
        for j in 0..4 {
            let byte = (0..4).fold(0u8, |byte, h| {
                byte | file_crumb(qs, 16 * t + 4 * h + j) << (2 * h)
            });
            rec[pair_bytes * (t / 2) + 64 * (t % 2) + 4 * c + j] = byte;
        }
    }
}

fn crumb(rec: &[u8], pair_bytes: usize, c: usize, v: usize) -> i32 {
    let (at, shift, _, _) = crumb_at(pair_bytes, c, v);
    ((rec[at] >> shift) & 3) as i32
}

/// ggml's unpacking of Q3_K's 12 scale bytes into 16 6-bit scales (0..63, stored +32).
fn q3k_scales(packed: &[u8]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes(packed[4 * i..4 * i + 4].try_into().unwrap());
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let (low, high) = (0x0f0f_0f0fu32, 0x0303_0303u32);
    let words = [
        (a0 & low) | ((tmp & high) << 4),
        (a1 & low) | (((tmp >> 2) & high) << 4),
        ((a0 >> 4) & low) | (((tmp >> 4) & high) << 4),
        ((a1 >> 4) & low) | (((tmp >> 6) & high) << 4),
    ];
    let mut out = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

impl Q2K {
    const PAIR: usize = 128;
    const SC: usize = 8 * Self::PAIR;
    const D: usize = Self::SC + 256;
    const DMIN: usize = Self::D + 32;
}

impl Format for Q2K {
    type Act = Q8KBlock;
    const DTYPE: GgmlDType = GgmlDType::Q2K;
    const QK: usize = 256;
    const FILE_BYTES: usize = 84;
    const TILE_BYTES: usize = Self::DMIN + 32;
    const ZERO: Q8KBlock = Q8KBlock::ZERO;

    fn quantize(xs: &[f32]) -> Q8KBlock {
        Q8KBlock::quantize(xs)
    }

    fn pack(block: &[u8], c: usize, rec: &mut [u8]) {
        // File: 16 scale bytes (scale low nibble, min high), qs (64), d, dmin (f16).
        let (scales, qs) = (&block[..16], &block[16..80]);
        rec[Self::D + 2 * c..][..2].copy_from_slice(&block[80..82]);
        rec[Self::DMIN + 2 * c..][..2].copy_from_slice(&block[82..84]);
        pack_crumbs(qs, Self::PAIR, c, rec);
        for (t, &sc) in scales.iter().enumerate() {
            rec[Self::SC + pair_byte(c, t)] = sc;
        }
    }

    fn reference(tiles: &[u8], acts: &[Q8KBlock], c: usize) -> f32 {
        let mut acc = 0f32;
        for (rec, a) in tiles.chunks_exact(Self::TILE_BYTES).zip(acts) {
            let (mut s1, mut s2) = (0i32, 0i32);
            for t in 0..16 {
                let mut isum = 0i32;
                for v in 16 * t..16 * t + 16 {
                    isum += crumb(rec, Self::PAIR, c, v) * a.qs[v] as i32;
                }
                let byte = rec[Self::SC + pair_byte(c, t)];
                s1 += (byte & 0x0f) as i32 * isum;
                s2 += (byte >> 4) as i32 * a.bsums[t] as i32;
            }
            acc = (s1 as f32).mul_add(f16_at(rec, Self::D + 2 * c) * a.d, acc);
            acc = (-(s2 as f32)).mul_add(f16_at(rec, Self::DMIN + 2 * c) * a.d, acc);
        }
        acc
    }

    unsafe fn avx512<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        x86::q2k_avx512::<R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }

    unsafe fn avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        x86::q2k_avx2::<R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }
}

impl Q3K {
    /// A pair of groups: two vectors of low bits, one of 3rd bits.
    const PAIR: usize = 192;
    const SC: usize = 8 * Self::PAIR;
    const D: usize = Self::SC + 256;

    /// The unsigned quant (0..7; the value is this minus 4) of input `v` of column `c`.
    fn quant(rec: &[u8], c: usize, v: usize) -> i32 {
        let (_, _, at, bit) = crumb_at(Self::PAIR, c, v);
        crumb(rec, Self::PAIR, c, v) | (((rec[at] >> bit) & 1) as i32) << 2
    }
}

impl Format for Q3K {
    type Act = Q8KBlock;
    const DTYPE: GgmlDType = GgmlDType::Q3K;
    const QK: usize = 256;
    const FILE_BYTES: usize = 110;
    const TILE_BYTES: usize = Self::D + 32;
    const ZERO: Q8KBlock = Q8KBlock::ZERO;

    fn quantize(xs: &[f32]) -> Q8KBlock {
        Q8KBlock::quantize(xs)
    }

    fn pack(block: &[u8], c: usize, rec: &mut [u8]) {
        // File: hmask (32: input v's 3rd bit is bit v / 32 of byte v % 32; the value is the 2
        // low bits minus 4 where it is clear), qs (64), 12 packed scale bytes, d (f16).
        let (hmask, qs, scales) = (&block[..32], &block[32..96], &block[96..108]);
        rec[Self::D + 2 * c..][..2].copy_from_slice(&block[108..110]);
        pack_crumbs(qs, Self::PAIR, c, rec);
        // Byte 4 c + j of pair q's 3rd-bit vector: bit 4 e + h for input 16 (2 q + e) + 4 h + j.
        for q in 0..8 {
            for j in 0..4 {
                let byte = (0..8).fold(0u8, |byte, bit| {
                    let v = 16 * (2 * q + bit / 4) + 4 * (bit % 4) + j;
                    byte | ((hmask[v % 32] >> (v / 32)) & 1) << bit
                });
                rec[Self::PAIR * q + 128 + 4 * c + j] = byte;
            }
        }
        for (t, &sc) in q3k_scales(scales).iter().enumerate() {
            rec[Self::SC + pair_byte(c, t)] = (sc as i8 - 32) as u8;
        }
    }

    fn reference(tiles: &[u8], acts: &[Q8KBlock], c: usize) -> f32 {
        super::signed::reference(
            tiles,
            Self::TILE_BYTES,
            acts,
            4,
            Self::D + 2 * c,
            |rec, v| Self::quant(rec, c, v),
            |rec, t| rec[Self::SC + pair_byte(c, t)] as i8 as i32,
        )
    }

    unsafe fn avx512<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        super::signed::avx512::<Self, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }

    unsafe fn avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        super::signed::avx2::<Self, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }
}

#[cfg(target_arch = "x86_64")]
// Blocks and rows index several arrays at once (tiles, activations, accumulators).
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::super::signed::SignedGroups;
    use super::super::simd::{both_halves_avx2, group_avx2, prefetch_record};
    use super::super::{pair, quad, Format, ROWS, TILE_N};
    use super::{Q8KBlock, Q2K, Q3K};
    use std::arch::x86_64::*;

    /// The 2-bit quants of group `h` (0..4) of a crumb vector, as bytes 0..3.
    macro_rules! crumbs {
        ($and:ident, $srl:ident, $v:expr, $h:expr, $three:expr) => {
            match $h {
                0 => $and($v, $three),
                1 => $and($srl($v, 2), $three),
                2 => $and($srl($v, 4), $three),
                _ => $and($srl($v, 6), $three),
            }
        };
    }

    /// Bit `b` (0..8) of each byte of a Q3_K 3rd-bit vector, as the byte's 4.
    macro_rules! bit_as_four {
        ($and:ident, $sll:ident, $srl:ident, $x:expr, $b:expr, $four:expr) => {
            match $b {
                0 => $and($sll($x, 2), $four),
                1 => $and($sll($x, 1), $four),
                2 => $and($x, $four),
                3 => $and($srl($x, 1), $four),
                4 => $and($srl($x, 2), $four),
                5 => $and($srl($x, 3), $four),
                6 => $and($srl($x, 4), $four),
                _ => $and($srl($x, 5), $four),
            }
        };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q2k_avx512<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        let tb = Q2K::TILE_BYTES;
        let three = _mm512_set1_epi8(3);
        let low4 = _mm512_set1_epi32(0x0f);
        let nib16 = _mm512_set1_epi16(0x0f);
        let mut accf = [_mm512_setzero_ps(); R];
        for b in 0..tiles.len() / tb {
            let p = tiles.as_ptr().add(b * tb);
            prefetch_record(p, tb);
            let mut s1 = [_mm512_setzero_si512(); R];
            let mut s2 = [_mm512_setzero_si512(); R];
            for q in 0..8 {
                // Lane c: the scale bytes of groups 2q (low 16 bits) and 2q + 1 (high).
                let sc = _mm256_loadu_si256(p.add(Q2K::SC + 32 * q) as *const _);
                let sc = _mm512_cvtepu8_epi16(sc);
                let mins = _mm512_and_si512(_mm512_srli_epi16(sc, 4), nib16);
                for r in 0..R {
                    let sums = _mm512_set1_epi32(pair(&acts[r][b].bsums, 2 * q));
                    s2[r] = _mm512_add_epi32(s2[r], _mm512_madd_epi16(mins, sums));
                }
                for e in 0..2 {
                    let t = 2 * q + e;
                    let v = _mm512_loadu_si512(p.add(64 * t) as *const _);
                    let mut acc = [_mm512_setzero_si512(); R];
                    for h in 0..4 {
                        let w = crumbs!(_mm512_and_si512, _mm512_srli_epi16, v, h, three);
                        for r in 0..R {
                            let a = _mm512_set1_epi32(quad(&acts[r][b].qs, 16 * t + 4 * h));
                            acc[r] = _mm512_dpbusd_epi32(acc[r], w, a);
                        }
                    }
                    let scale = if e == 0 {
                        _mm512_and_si512(sc, low4)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi32(sc, 16), low4)
                    };
                    for r in 0..R {
                        s1[r] = _mm512_add_epi32(s1[r], _mm512_mullo_epi32(acc[r], scale));
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(Q2K::D) as *const _));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(Q2K::DMIN) as *const _));
            for r in 0..R {
                let da = _mm512_set1_ps(acts[r][b].d);
                accf[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[r]), _mm512_mul_ps(d, da), accf[r]);
                let mins = _mm512_cvtepi32_ps(s2[r]);
                accf[r] = _mm512_fnmadd_ps(mins, _mm512_mul_ps(dmin, da), accf[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), accf[r]);
        }
    }

    /// 8 columns per half.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q2k_avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        let tb = Q2K::TILE_BYTES;
        let three = _mm256_set1_epi8(3);
        let nib16 = _mm256_set1_epi16(0x0f);
        for half in 0..2 {
            let mut accf = [_mm256_setzero_ps(); R];
            for b in 0..tiles.len() / tb {
                let p = tiles.as_ptr().add(b * tb);
                prefetch_record(p, tb);
                let mut s1 = [_mm256_setzero_si256(); R];
                let mut s2 = [_mm256_setzero_si256(); R];
                for q in 0..8 {
                    let sc = p.add(Q2K::SC + 32 * q + 16 * half) as *const __m128i;
                    let sc = _mm256_cvtepu8_epi16(_mm_loadu_si128(sc));
                    let mins = _mm256_and_si256(_mm256_srli_epi16(sc, 4), nib16);
                    let scales = _mm256_and_si256(sc, nib16);
                    for r in 0..R {
                        let sums = _mm256_set1_epi32(pair(&acts[r][b].bsums, 2 * q));
                        s2[r] = _mm256_add_epi32(s2[r], _mm256_madd_epi16(mins, sums));
                    }
                    for e in 0..2 {
                        let t = 2 * q + e;
                        let v = _mm256_loadu_si256(p.add(64 * t + 32 * half) as *const _);
                        let w: [__m256i; 4] = std::array::from_fn(|h| {
                            crumbs!(_mm256_and_si256, _mm256_srli_epi16, v, h, three)
                        });
                        let scale = both_halves_avx2(scales, e);
                        for r in 0..R {
                            let g = group_avx2(&w, &acts[r][b].qs, t, scale);
                            s1[r] = _mm256_add_epi32(s1[r], g);
                        }
                    }
                }
                let at = |off: usize| p.add(off + 16 * half) as *const __m128i;
                let d = _mm256_cvtph_ps(_mm_loadu_si128(at(Q2K::D)));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(at(Q2K::DMIN)));
                for r in 0..R {
                    let da = _mm256_set1_ps(acts[r][b].d);
                    let total = _mm256_cvtepi32_ps(s1[r]);
                    accf[r] = _mm256_fmadd_ps(total, _mm256_mul_ps(d, da), accf[r]);
                    let mins = _mm256_cvtepi32_ps(s2[r]);
                    accf[r] = _mm256_fnmadd_ps(mins, _mm256_mul_ps(dmin, da), accf[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), accf[r]);
            }
        }
    }

    impl SignedGroups for Q3K {
        const SC: usize = Q3K::SC;
        const D: usize = Q3K::D;
        const OFFSET_SHIFT: u32 = 2;

        /// Bit `4 e + h` of each byte of the pair's 3rd-bit vector as a mask: one test and one
        /// masked add of 4.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights_avx512(p: *const u8, q: usize, e: usize) -> [__m512i; 4] {
            let (three, four) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
            let pair = p.add(Q3K::PAIR * q);
            let high = _mm512_loadu_si512(pair.add(128) as *const _);
            let v = _mm512_loadu_si512(pair.add(64 * e) as *const _);
            std::array::from_fn(|h| {
                let low = crumbs!(_mm512_and_si512, _mm512_srli_epi16, v, h, three);
                let bit = _mm512_set1_epi8(1 << (4 * e + h));
                _mm512_mask_add_epi8(low, _mm512_test_epi8_mask(high, bit), low, four)
            })
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn weights_avx2(p: *const u8, q: usize, e: usize, half: usize) -> [__m256i; 4] {
            let (three, four) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
            let pair = p.add(Q3K::PAIR * q + 32 * half);
            let high = _mm256_loadu_si256(pair.add(128) as *const _);
            let v = _mm256_loadu_si256(pair.add(64 * e) as *const _);
            std::array::from_fn(|h| {
                let low = crumbs!(_mm256_and_si256, _mm256_srli_epi16, v, h, three);
                let bit = bit_as_four!(
                    _mm256_and_si256,
                    _mm256_slli_epi16,
                    _mm256_srli_epi16,
                    high,
                    4 * e + h,
                    four
                );
                _mm256_or_si256(low, bit)
            })
        }
    }
}
