//! The 32-value weight types: Q4_0, Q4_1, Q5_0, Q5_1 (times Q8_0/Q8_1 activations) and Q8_0.
//!
//! One tile record is 16 columns × 32 inputs, the same bytes as the file's 16 blocks:
//! - 4/5-bit quants, nibble-packed: byte `64 h + 4 c + j` (`h < 4`) holds input `4 h + j` of
//!   column `c` in its low nibble and input `16 + 4 h + j` in its high nibble, so one 64-byte
//!   load gives two `vpdpbusd` operands after one AND / one shift;
//! - 5-bit types: the 5th bits as eight 64-bit masks, mask `g` bit `4 c + j` for input `4 g + j`
//!   (AVX-512 adds them with a masked byte add);
//! - Q8_0: byte `64 g + 4 c + j` holds input `4 g + j` plus 128;
//! - then the 16 f16 scales `d`, then (Q4_1/Q5_1) the 16 f16 mins `m`.
//!
//! Per block: `isum = Σ q·a − offset · Σ a` in integers (the dot product starts from the
//! activation block's `−offset · Σ a`) (offset 8, 16 or 128; none with a min),
//! then `acc = fma(isum, d·d_a, acc)` and, with a min, `acc = fma(m, s_a, acc)` (ggml's Q8_1 `s`).

use super::act::Q8Block;
use super::{f16_at, Format, ROWS, TILE_N};
use candle_core::quantized::GgmlDType;

/// A 32-value type with `BITS`-bit quants (4, 5 or 8) and, when `MIN`, a per-block min.
pub(crate) struct Legacy<const BITS: u32, const MIN: bool>;

pub(crate) type Q4_0 = Legacy<4, false>;
pub(crate) type Q4_1 = Legacy<4, true>;
pub(crate) type Q5_0 = Legacy<5, false>;
pub(crate) type Q5_1 = Legacy<5, true>;
pub(crate) type Q8_0 = Legacy<8, false>;

impl<const BITS: u32, const MIN: bool> Legacy<BITS, MIN> {
    /// Bytes of the quants in a record.
    const QS: usize = if BITS == 8 { 512 } else { 256 };
    /// Byte offset of the 5th-bit masks.
    const QH: usize = Self::QS;
    /// Byte offset of the scales.
    const D: usize = Self::QS + if BITS == 5 { 64 } else { 0 };
    /// Byte offset of the mins.
    const M: usize = Self::D + 32;
    /// What the unsigned quants carry on top of the signed value.
    const OFFSET: i32 = match (BITS, MIN) {
        (_, true) => 0,
        (4, false) => 8,
        (5, false) => 16,
        _ => 128,
    };

    /// Unsigned quant of input `v` of column `c` in a record.
    fn quant(rec: &[u8], c: usize, v: usize) -> i32 {
        if BITS == 8 {
            return rec[64 * (v / 4) + 4 * c + v % 4] as i32;
        }
        let (h, j, high) = ((v % 16) / 4, v % 4, v >= 16);
        let byte = rec[64 * h + 4 * c + j];
        let mut q = if high { byte >> 4 } else { byte & 0x0f } as i32;
        if BITS == 5 {
            let g = v / 4;
            let mask = u64::from_le_bytes(rec[Self::QH + 8 * g..][..8].try_into().unwrap());
            q |= (((mask >> (4 * c + j)) & 1) as i32) << 4;
        }
        q
    }
}

impl<const BITS: u32, const MIN: bool> Format for Legacy<BITS, MIN> {
    type Act = Q8Block;
    const DTYPE: GgmlDType = match (BITS, MIN) {
        (4, false) => GgmlDType::Q4_0,
        (4, true) => GgmlDType::Q4_1,
        (5, false) => GgmlDType::Q5_0,
        (5, true) => GgmlDType::Q5_1,
        _ => GgmlDType::Q8_0,
    };
    const QK: usize = 32;
    const FILE_BYTES: usize = match (BITS, MIN) {
        (4, false) => 18,
        (4, true) => 20,
        (5, false) => 22,
        (5, true) => 24,
        _ => 34,
    };
    const TILE_BYTES: usize = Self::D + if MIN { 64 } else { 32 };
    const ZERO: Q8Block = Q8Block::ZERO;

    fn quantize(xs: &[f32]) -> Q8Block {
        Q8Block::quantize(xs, Self::OFFSET)
    }

    fn pack(block: &[u8], c: usize, rec: &mut [u8]) {
        // File blocks: d (f16), [m (f16)], [qh (u32)], qs; Q8_0: d, 32 × i8.
        let head = if MIN { 4 } else { 2 };
        rec[Self::D + 2 * c..][..2].copy_from_slice(&block[..2]);
        if MIN {
            rec[Self::M + 2 * c..][..2].copy_from_slice(&block[2..4]);
        }
        if BITS == 8 {
            for (v, &q) in block[2..].iter().enumerate() {
                rec[64 * (v / 4) + 4 * c + v % 4] = (q as i8 as i16 + 128) as u8;
            }
            return;
        }
        let (qh, qs) = if BITS == 5 {
            let qh = u32::from_le_bytes(block[head..head + 4].try_into().unwrap());
            (qh, &block[head + 4..])
        } else {
            (0, &block[head..])
        };
        for v in 0..32 {
            let nibble = if v < 16 {
                qs[v] & 0x0f
            } else {
                qs[v - 16] >> 4
            };
            let (h, j) = ((v % 16) / 4, v % 4);
            let byte = &mut rec[64 * h + 4 * c + j];
            *byte |= if v < 16 { nibble } else { nibble << 4 };
            if BITS == 5 && (qh >> v) & 1 == 1 {
                let g = v / 4;
                let at = Self::QH + 8 * g + (4 * c + j) / 8;
                rec[at] |= 1 << ((4 * c + j) % 8);
            }
        }
    }

    fn reference(tiles: &[u8], acts: &[Q8Block], c: usize) -> f32 {
        let mut acc = 0f32;
        for (rec, a) in tiles.chunks_exact(Self::TILE_BYTES).zip(acts) {
            let mut isum = a.corr;
            for (v, &x) in a.qs.iter().enumerate() {
                isum += Self::quant(rec, c, v) * x as i32;
            }
            acc = (isum as f32).mul_add(f16_at(rec, Self::D + 2 * c) * a.d, acc);
            if MIN {
                acc = f16_at(rec, Self::M + 2 * c).mul_add(a.s, acc);
            }
        }
        acc
    }

    unsafe fn avx512<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8Block]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        x86::avx512::<BITS, MIN, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }

    unsafe fn avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8Block]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        x86::avx2::<BITS, MIN, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }
}

#[cfg(target_arch = "x86_64")]
// Blocks and rows index several arrays at once (tiles, activations, accumulators).
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::super::simd::bits_to_bit4;
    use super::super::{quad, Format, ROWS, TILE_N};
    use super::{Legacy, Q8Block};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn avx512<const BITS: u32, const MIN: bool, const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8Block]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        type L<const B: u32, const M: bool> = Legacy<B, M>;
        let tb = L::<BITS, MIN>::TILE_BYTES;
        let nib = _mm512_set1_epi8(0x0f);
        let bit4 = _mm512_set1_epi8(0x10);
        let mut accf = [_mm512_setzero_ps(); R];
        for b in 0..tiles.len() / tb {
            let p = tiles.as_ptr().add(b * tb);
            let mut acci: [__m512i; R] =
                std::array::from_fn(|r| _mm512_set1_epi32(acts[r][b].corr));
            if BITS == 8 {
                for g in 0..8 {
                    let w = _mm512_loadu_si512(p.add(64 * g) as *const _);
                    for r in 0..R {
                        let a = _mm512_set1_epi32(quad(&acts[r][b].qs, 4 * g));
                        acci[r] = _mm512_dpbusd_epi32(acci[r], w, a);
                    }
                }
            } else {
                for h in 0..4 {
                    let v = _mm512_loadu_si512(p.add(64 * h) as *const _);
                    let mut lo = _mm512_and_si512(v, nib);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                    if BITS == 5 {
                        let qh = p.add(L::<BITS, MIN>::QH) as *const u64;
                        lo = _mm512_mask_add_epi8(lo, qh.add(h).read_unaligned(), lo, bit4);
                        hi = _mm512_mask_add_epi8(hi, qh.add(h + 4).read_unaligned(), hi, bit4);
                    }
                    for r in 0..R {
                        let qs = &acts[r][b].qs;
                        acci[r] =
                            _mm512_dpbusd_epi32(acci[r], lo, _mm512_set1_epi32(quad(qs, 4 * h)));
                        acci[r] = _mm512_dpbusd_epi32(
                            acci[r],
                            hi,
                            _mm512_set1_epi32(quad(qs, 16 + 4 * h)),
                        );
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(L::<BITS, MIN>::D) as *const _));
            let m = if MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(L::<BITS, MIN>::M) as *const _))
            } else {
                _mm512_setzero_ps()
            };
            for r in 0..R {
                let a = &acts[r][b];
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                accf[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[r]), scale, accf[r]);
                if MIN {
                    accf[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.s), accf[r]);
                }
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), accf[r]);
        }
    }

    /// Columns in two halves of 8 (one 256-bit vector each); `maddubs` + `madd` stand in for
    /// `vpdpbusd`. No sum overflows 16 bits: 4/5-bit quants × |a| ≤ 127, two pairs at most; Q8_0
    /// runs on signed weights (`|w| · sign(a, w)`), ≤ 2 · 128 · 127.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<const BITS: u32, const MIN: bool, const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8Block]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        type L<const B: u32, const M: bool> = Legacy<B, M>;
        let tb = L::<BITS, MIN>::TILE_BYTES;
        let nib = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for half in 0..2 {
            let mut accf = [_mm256_setzero_ps(); R];
            for b in 0..tiles.len() / tb {
                let p = tiles.as_ptr().add(b * tb);
                // Q8_0's AVX2 sums are signed already: no offset to remove.
                let mut acci: [__m256i; R] = std::array::from_fn(|r| {
                    _mm256_set1_epi32(if BITS == 8 { 0 } else { acts[r][b].corr })
                });
                if BITS == 8 {
                    for g in 0..8 {
                        let w = _mm256_loadu_si256(p.add(64 * g + 32 * half) as *const _);
                        let w = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
                        let aw = _mm256_abs_epi8(w);
                        for r in 0..R {
                            let a = _mm256_set1_epi32(quad(&acts[r][b].qs, 4 * g));
                            let t = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, w));
                            acci[r] = _mm256_add_epi32(acci[r], _mm256_madd_epi16(t, ones));
                        }
                    }
                } else {
                    for h in 0..4 {
                        let v = _mm256_loadu_si256(p.add(64 * h + 32 * half) as *const _);
                        let mut lo = _mm256_and_si256(v, nib);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        if BITS == 5 {
                            let qh = p.add(L::<BITS, MIN>::QH) as *const u64;
                            let bits =
                                |g: usize| (qh.add(g).read_unaligned() >> (32 * half)) as u32;
                            lo = _mm256_or_si256(lo, bits_to_bit4(bits(h)));
                            hi = _mm256_or_si256(hi, bits_to_bit4(bits(h + 4)));
                        }
                        for r in 0..R {
                            let qs = &acts[r][b].qs;
                            let t = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, _mm256_set1_epi32(quad(qs, 4 * h))),
                                _mm256_maddubs_epi16(hi, _mm256_set1_epi32(quad(qs, 16 + 4 * h))),
                            );
                            acci[r] = _mm256_add_epi32(acci[r], _mm256_madd_epi16(t, ones));
                        }
                    }
                }
                let at = |off: usize| p.add(off + 16 * half) as *const __m128i;
                let d = _mm256_cvtph_ps(_mm_loadu_si128(at(L::<BITS, MIN>::D)));
                let m = if MIN {
                    _mm256_cvtph_ps(_mm_loadu_si128(at(L::<BITS, MIN>::M)))
                } else {
                    _mm256_setzero_ps()
                };
                for r in 0..R {
                    let a = &acts[r][b];
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
                    accf[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acci[r]), scale, accf[r]);
                    if MIN {
                        accf[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), accf[r]);
                    }
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), accf[r]);
            }
        }
    }
}
