//! One kernel per instruction set for the K-quants whose 16-input groups carry signed 8-bit
//! scales and whose quants are stored unsigned with a fixed offset: Q6_K (6 bits, offset 32)
//! and Q3_K (3 bits, offset 4). Per block, in integers, `S = Σ_t sc_t · (Σ q·a − offset · Σ a)`,
//! then `acc = fma(S, d·d_a, acc)`. Each type says only where its scales and `d` sit and how to
//! decode the four weight vectors of a group ([`SignedGroups`]). The plain-Rust reference
//! ([`reference`]) is shared too.

// Blocks and rows index several arrays at once (tiles, activations, accumulators).
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::act::Q8KBlock;
use super::f16_at;
#[cfg(target_arch = "x86_64")]
use super::simd::{both_halves_avx2, group_avx2, prefetch_record, signed_half_avx512};
#[cfg(target_arch = "x86_64")]
use super::{pair, quad, Format, ROWS, TILE_N};

/// Column `c` of a run of tile records times one row of activation blocks, operation for
/// operation as the kernels compute it: `quant(rec, v)` is input `v`'s unsigned quant,
/// `scale(rec, t)` group `t`'s signed scale, `d_at` the byte of the column's f16 `d`.
pub(super) fn reference(
    tiles: &[u8],
    tile_bytes: usize,
    acts: &[Q8KBlock],
    offset: i32,
    d_at: usize,
    quant: impl Fn(&[u8], usize) -> i32,
    scale: impl Fn(&[u8], usize) -> i32,
) -> f32 {
    let mut acc = 0f32;
    for (rec, a) in tiles.chunks_exact(tile_bytes).zip(acts) {
        let mut sum = 0i32;
        for t in 0..16 {
            let mut isum = -offset * a.bsums[t] as i32;
            for v in 16 * t..16 * t + 16 {
                isum += quant(rec, v) * a.qs[v] as i32;
            }
            sum += scale(rec, t) * isum;
        }
        acc = (sum as f32).mul_add(f16_at(rec, d_at) * a.d, acc);
    }
    acc
}

/// A K-quant with signed group scales, as [`avx512`] and [`avx2`] read its tile records.
#[cfg(target_arch = "x86_64")]
pub(super) trait SignedGroups: Format<Act = Q8KBlock> {
    /// Byte offset of the scales, bytes `[q][c][e]` for group `t = 2 q + e` of column `c`.
    const SC: usize;
    /// Byte offset of the 16 f16 `d`.
    const D: usize;
    /// log2 of the offset the unsigned quants carry.
    const OFFSET_SHIFT: u32;

    /// The 4 weight vectors of group `t = 2 q + e` of a record at `p`: vector `h` holds the
    /// quants of inputs `16 t + 4 h..16 t + 4 h + 4` of the 16 columns as bytes `4 c + j`.
    ///
    /// # Safety
    /// `p` points at a whole record; the CPU has AVX-512 BW.
    unsafe fn weights_avx512(p: *const u8, q: usize, e: usize) -> [__m512i; 4];

    /// As [`SignedGroups::weights_avx512`] for the 8 columns of `half`.
    ///
    /// # Safety
    /// `p` points at a whole record; the CPU has AVX2.
    unsafe fn weights_avx2(p: *const u8, q: usize, e: usize, half: usize) -> [__m256i; 4];
}

/// The offset enters each group's dot product as its starting value, `−offset · Σ a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn avx512<G: SignedGroups, const R: usize>(
    tiles: &[u8],
    acts: &[&[Q8KBlock]; ROWS],
    out: &mut [[f32; TILE_N]; ROWS],
) {
    let tb = G::TILE_BYTES;
    let offset = -(1i32 << G::OFFSET_SHIFT);
    let mut accf = [_mm512_setzero_ps(); R];
    for b in 0..tiles.len() / tb {
        let p = tiles.as_ptr().add(b * tb);
        prefetch_record(p, tb);
        let mut sum = [_mm512_setzero_si512(); R];
        for q in 0..8 {
            let sc = _mm256_loadu_si256(p.add(G::SC + 32 * q) as *const _);
            let sc = _mm512_cvtepi8_epi16(sc);
            for e in 0..2 {
                let t = 2 * q + e;
                let w = G::weights_avx512(p, q, e);
                let mut acc: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_set1_epi32(offset * acts[r][b].bsums[t] as i32));
                for (h, &w) in w.iter().enumerate() {
                    for r in 0..R {
                        let a = _mm512_set1_epi32(quad(&acts[r][b].qs, 16 * t + 4 * h));
                        acc[r] = _mm512_dpbusd_epi32(acc[r], w, a);
                    }
                }
                let scale = signed_half_avx512(sc, e);
                for r in 0..R {
                    sum[r] = _mm512_add_epi32(sum[r], _mm512_mullo_epi32(acc[r], scale));
                }
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(G::D) as *const _));
        for r in 0..R {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(acts[r][b].d));
            accf[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r]), scale, accf[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), accf[r]);
    }
}

/// 8 columns per half; `maddubs` pairs summed in 16 bits two at a time, `madd` with the group
/// scale; the offsets as `madd`s of scale pairs and sum pairs, subtracted once per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2<G: SignedGroups, const R: usize>(
    tiles: &[u8],
    acts: &[&[Q8KBlock]; ROWS],
    out: &mut [[f32; TILE_N]; ROWS],
) {
    let tb = G::TILE_BYTES;
    let shift = _mm_cvtsi32_si128(G::OFFSET_SHIFT as i32);
    for half in 0..2 {
        let mut accf = [_mm256_setzero_ps(); R];
        for b in 0..tiles.len() / tb {
            let p = tiles.as_ptr().add(b * tb);
            prefetch_record(p, tb);
            let mut sum = [_mm256_setzero_si256(); R];
            let mut offset = [_mm256_setzero_si256(); R];
            for q in 0..8 {
                let sc = p.add(G::SC + 32 * q + 16 * half) as *const __m128i;
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc));
                for r in 0..R {
                    let sums = _mm256_set1_epi32(pair(&acts[r][b].bsums, 2 * q));
                    offset[r] = _mm256_add_epi32(offset[r], _mm256_madd_epi16(sc, sums));
                }
                for e in 0..2 {
                    let t = 2 * q + e;
                    let scale = both_halves_avx2(sc, e);
                    let w = G::weights_avx2(p, q, e, half);
                    for r in 0..R {
                        let g = group_avx2(&w, &acts[r][b].qs, t, scale);
                        sum[r] = _mm256_add_epi32(sum[r], g);
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(G::D + 16 * half) as *const _));
            for r in 0..R {
                let total = _mm256_sub_epi32(sum[r], _mm256_sll_epi32(offset[r], shift));
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(acts[r][b].d));
                accf[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale, accf[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), accf[r]);
        }
    }
}
