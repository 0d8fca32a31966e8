//! The K-quants Q4_K, Q5_K and Q6_K (256-value super-blocks) times Q8_K activations.
//!
//! One tile record is 16 columns × 256 inputs. Each 32-input sub-block `s` takes `STRIDE` bytes
//! at `STRIDE · s`: first its quants' 4 low bits, nibble-packed as the 32-value types'
//! (`legacy`): byte `64 h + 4 c + j` holds input `32 s + 4 h + j` of column `c` low and input
//! `32 s + 16 + 4 h + j` high; then, at 256 within the sub-block, its high bits:
//! - Q5_K: the 5th bits as eight 64-bit masks (mask `g`, bit `4 c + j`: input `32 s + 4 g + j`);
//! - Q6_K: the 2 high bits as two 64-byte vectors (half `e` of the sub-block, bits
//!   `2 h..2 h + 2` of byte `4 c + j`: input `32 s + 16 e + 4 h + j`).
//!
//! Keeping a sub-block's bits together makes a record one forward stream (plus the scales):
//! with the high bits in a region of their own, Q6_K decoding at batch 1 streamed its weights at
//! a third of Q4_K's rate, the hardware prefetcher losing the interleaved streams. After the
//! sub-blocks:
//! - Q4_K/Q5_K: the 6-bit sub-scales as bytes `[s][c]`, the 6-bit mins as bytes
//!   `[s / 2][c][s % 2]` (pairs, for one `madd` with two activation sums), f16 `d`, f16 `dmin`;
//! - Q6_K: the signed 8-bit scales of the 16-input groups as bytes `[s][c][e]`; f16 `d`.
//!
//! Sizes: 148, 180 and 210 bytes per 256 inputs of a column against the file's 144, 176, 210
//! (the 12 packed scale bytes of Q4_K/Q5_K become 16).
//!
//! Per block, in integers: Q4_K/Q5_K `S1 = Σ_s sc_s · Σ q·a`, `S2 = Σ_s m_s · Σ a`; then
//! `acc = fma(S1, d·d_a, acc)`, `acc = fma(−S2, dmin·d_a, acc)`. Q6_K `S = Σ_t sc_t · (Σ q·a −
//! 32 · Σ a)` over 16-input groups `t`; then `acc = fma(S, d·d_a, acc)`.

use super::act::Q8KBlock;
use super::{f16_at, pair_byte, Format, ROWS, TILE_N};
use candle_core::quantized::GgmlDType;

/// Q4_K (`BITS` 4) or Q5_K (`BITS` 5).
pub(crate) struct KQuant<const BITS: u32>;
pub(crate) type Q4K = KQuant<4>;
pub(crate) type Q5K = KQuant<5>;
pub(crate) struct Q6K;

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Writes one 32-input sub-block of column `c` into the nibble layout at `base`: `sub(l)` is
/// the 4-bit value of input `l` of the sub-block. Byte by byte (each byte is one column's),
/// which re-tiles a file several times faster than placing value by value.
fn pack_nibbles(sub: impl Fn(usize) -> u8, base: usize, c: usize, rec: &mut [u8]) {
    for h in 0..4 {
        for j in 0..4 {
            let l = 4 * h + j;
            rec[base + 64 * h + 4 * c + j] = sub(l) | sub(16 + l) << 4;
        }
    }
}

/// The 4-bit value of input `v` of column `c` from the nibble layout.
fn nibble(rec: &[u8], stride: usize, c: usize, v: usize) -> i32 {
    let (s, w) = (v / 32, v % 32);
    let (h, j) = ((w % 16) / 4, w % 4);
    let byte = rec[stride * s + 64 * h + 4 * c + j];
    (if w < 16 { byte & 0x0f } else { byte >> 4 }) as i32
}

impl<const BITS: u32> KQuant<BITS> {
    /// Bytes of one sub-block: the quants, then (Q5_K) the 5th-bit masks at `QH`.
    const STRIDE: usize = 256 + if BITS == 5 { 64 } else { 0 };
    const QH: usize = 256;
    const SC: usize = 8 * Self::STRIDE;
    const MN: usize = Self::SC + 128;
    const D: usize = Self::MN + 128;
    const DMIN: usize = Self::D + 32;

    fn quant(rec: &[u8], c: usize, v: usize) -> i32 {
        let mut q = nibble(rec, Self::STRIDE, c, v);
        if BITS == 5 {
            let (s, g, j) = (v / 32, (v % 32) / 4, v % 4);
            let at = Self::STRIDE * s + Self::QH + 8 * g;
            let mask = u64::from_le_bytes(rec[at..at + 8].try_into().unwrap());
            q |= (((mask >> (4 * c + j)) & 1) as i32) << 4;
        }
        q
    }
}

impl<const BITS: u32> Format for KQuant<BITS> {
    type Act = Q8KBlock;
    const DTYPE: GgmlDType = if BITS == 4 {
        GgmlDType::Q4K
    } else {
        GgmlDType::Q5K
    };
    const QK: usize = 256;
    const FILE_BYTES: usize = if BITS == 4 { 144 } else { 176 };
    const TILE_BYTES: usize = Self::DMIN + 32;
    const ZERO: Q8KBlock = Q8KBlock::ZERO;

    fn quantize(xs: &[f32]) -> Q8KBlock {
        Q8KBlock::quantize(xs)
    }

    fn pack(block: &[u8], c: usize, rec: &mut [u8]) {
        // File: d, dmin (f16), 12 scale bytes, [qh: 32 bytes, bit s of byte l is input
        // 32 s + l's 5th bit], qs: 128 bytes, byte 32 (s / 2) + l holds input 32 s + l in its
        // low (even s) or high (odd s) nibble.
        rec[Self::D + 2 * c..][..2].copy_from_slice(&block[0..2]);
        rec[Self::DMIN + 2 * c..][..2].copy_from_slice(&block[2..4]);
        let scales = &block[4..16];
        let qs = &block[if BITS == 5 { 48 } else { 16 }..];
        for s in 0..8 {
            let (sc, m) = scale_min(s, scales);
            rec[Self::SC + 16 * s + c] = sc;
            rec[Self::MN + pair_byte(c, s)] = m;
        }
        let qh = &block[16..48];
        for s in 0..8 {
            let (src, shift) = (&qs[32 * (s / 2)..][..32], 4 * (s % 2));
            pack_nibbles(|l| (src[l] >> shift) & 0x0f, Self::STRIDE * s, c, rec);
            if BITS == 5 {
                // Mask g's bits 4 c..4 c + 4 (inputs 4 g..4 g + 4): half of byte c / 2.
                for g in 0..8 {
                    let bits = (0..4).fold(0u8, |m, j| m | ((qh[4 * g + j] >> s) & 1) << j);
                    rec[Self::STRIDE * s + Self::QH + 8 * g + c / 2] |= bits << (4 * (c % 2));
                }
            }
        }
    }

    fn reference(tiles: &[u8], acts: &[Q8KBlock], c: usize) -> f32 {
        let mut acc = 0f32;
        for (rec, a) in tiles.chunks_exact(Self::TILE_BYTES).zip(acts) {
            let (mut s1, mut s2) = (0i32, 0i32);
            for s in 0..8 {
                let mut isum = 0i32;
                for v in 32 * s..32 * s + 32 {
                    isum += Self::quant(rec, c, v) * a.qs[v] as i32;
                }
                s1 += rec[Self::SC + 16 * s + c] as i32 * isum;
                s2 += rec[Self::MN + pair_byte(c, s)] as i32 * a.bsum32[s] as i32;
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
        x86::kquant_avx512::<BITS, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }

    unsafe fn avx2<const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        x86::kquant_avx2::<BITS, R>(tiles, acts, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{tiles:p} {acts:p} {out:p}");
    }
}

impl Q6K {
    /// Bytes of one sub-block: the low 4 bits, then the high 2 bits at `QH`.
    const STRIDE: usize = 384;
    const QH: usize = 256;
    const SC: usize = 3072;
    const D: usize = 3328;

    fn quant(rec: &[u8], c: usize, v: usize) -> i32 {
        let (s, w) = (v / 32, v % 32);
        let (e, h, j) = (w / 16, (w % 16) / 4, w % 4);
        let high = (rec[Self::STRIDE * s + Self::QH + 64 * e + 4 * c + j] >> (2 * h)) & 3;
        nibble(rec, Self::STRIDE, c, v) | (high as i32) << 4
    }

    fn scale(rec: &[u8], c: usize, t: usize) -> i32 {
        rec[Self::SC + pair_byte(c, t)] as i8 as i32
    }
}

impl Format for Q6K {
    type Act = Q8KBlock;
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const QK: usize = 256;
    const FILE_BYTES: usize = 210;
    const TILE_BYTES: usize = Self::D + 32;
    const ZERO: Q8KBlock = Q8KBlock::ZERO;

    fn quantize(xs: &[f32]) -> Q8KBlock {
        Q8KBlock::quantize(xs)
    }

    fn pack(block: &[u8], c: usize, rec: &mut [u8]) {
        // File: ql (128), qh (64), 16 × i8 scales, d (f16). Input v = 128 n + 32 k + l (k < 4):
        // low 4 bits in ql[64 n + 32 (k % 2) + l] (low nibble for k < 2), high 2 bits at
        // bit 2 k of qh[32 n + l]; scale v / 16.
        let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
        rec[Self::D + 2 * c..][..2].copy_from_slice(&block[208..210]);
        for s in 0..8 {
            // Sub-block s holds inputs 128 n + 32 k + l.
            let (n, k) = (s / 4, s % 4);
            let (low, shift) = (&ql[64 * n + 32 * (k % 2)..][..32], 4 * (k / 2));
            pack_nibbles(|l| (low[l] >> shift) & 0x0f, Self::STRIDE * s, c, rec);
            let high = &qh[32 * n..][..32];
            for e in 0..2 {
                for j in 0..4 {
                    let byte = (0..4).fold(0u8, |byte, h| {
                        byte | ((high[16 * e + 4 * h + j] >> (2 * k)) & 3) << (2 * h)
                    });
                    rec[Self::STRIDE * s + Self::QH + 64 * e + 4 * c + j] = byte;
                }
            }
        }
        for (t, &sc) in scales.iter().enumerate() {
            rec[Self::SC + pair_byte(c, t)] = sc;
        }
    }

    fn reference(tiles: &[u8], acts: &[Q8KBlock], c: usize) -> f32 {
        super::signed::reference(
            tiles,
            Self::TILE_BYTES,
            acts,
            32,
            Self::D + 2 * c,
            |rec, v| Self::quant(rec, c, v),
            |rec, t| Self::scale(rec, c, t),
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
    use super::super::simd::{bits_to_bit4, prefetch_record};
    use super::super::{pair, quad, Format, ROWS, TILE_N};
    use super::{KQuant, Q8KBlock, Q6K};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn kquant_avx512<const BITS: u32, const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        let (tb, stride) = (KQuant::<BITS>::TILE_BYTES, KQuant::<BITS>::STRIDE);
        let nib = _mm512_set1_epi8(0x0f);
        let bit4 = _mm512_set1_epi8(0x10);
        let mut accf = [_mm512_setzero_ps(); R];
        for b in 0..tiles.len() / tb {
            let p = tiles.as_ptr().add(b * tb);
            prefetch_record(p, tb);
            let mut s1 = [_mm512_setzero_si512(); R];
            let mut s2 = [_mm512_setzero_si512(); R];
            for s in 0..8 {
                let mut acc = [_mm512_setzero_si512(); R];
                for h in 0..4 {
                    let v = _mm512_loadu_si512(p.add(stride * s + 64 * h) as *const _);
                    let mut lo = _mm512_and_si512(v, nib);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                    if BITS == 5 {
                        let qh = p.add(stride * s + KQuant::<BITS>::QH) as *const u64;
                        lo = _mm512_mask_add_epi8(lo, qh.add(h).read_unaligned(), lo, bit4);
                        hi = _mm512_mask_add_epi8(hi, qh.add(h + 4).read_unaligned(), hi, bit4);
                    }
                    for r in 0..R {
                        let qs = &acts[r][b].qs;
                        let a_lo = _mm512_set1_epi32(quad(qs, 32 * s + 4 * h));
                        let a_hi = _mm512_set1_epi32(quad(qs, 32 * s + 16 + 4 * h));
                        acc[r] = _mm512_dpbusd_epi32(acc[r], lo, a_lo);
                        acc[r] = _mm512_dpbusd_epi32(acc[r], hi, a_hi);
                    }
                }
                let sc = _mm_loadu_si128(p.add(KQuant::<BITS>::SC + 16 * s) as *const _);
                let sc = _mm512_cvtepu8_epi32(sc);
                for r in 0..R {
                    s1[r] = _mm512_add_epi32(s1[r], _mm512_mullo_epi32(acc[r], sc));
                }
            }
            for q in 0..4 {
                let m = _mm256_loadu_si256(p.add(KQuant::<BITS>::MN + 32 * q) as *const _);
                let m = _mm512_cvtepu8_epi16(m);
                for r in 0..R {
                    let sums = _mm512_set1_epi32(pair(&acts[r][b].bsum32, 2 * q));
                    s2[r] = _mm512_add_epi32(s2[r], _mm512_madd_epi16(m, sums));
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(KQuant::<BITS>::D) as *const _));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(KQuant::<BITS>::DMIN) as *const _));
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

    /// 8 columns per half; `maddubs` pairs (≤ 2 · 31 · 127) summed in 16 bits two at a time,
    /// then `madd` with the sub-scale in both 16-bit halves of each column's lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn kquant_avx2<const BITS: u32, const R: usize>(
        tiles: &[u8],
        acts: &[&[Q8KBlock]; ROWS],
        out: &mut [[f32; TILE_N]; ROWS],
    ) {
        let (tb, stride) = (KQuant::<BITS>::TILE_BYTES, KQuant::<BITS>::STRIDE);
        let nib = _mm256_set1_epi8(0x0f);
        for half in 0..2 {
            let mut accf = [_mm256_setzero_ps(); R];
            for b in 0..tiles.len() / tb {
                let p = tiles.as_ptr().add(b * tb);
                prefetch_record(p, tb);
                let mut s1 = [_mm256_setzero_si256(); R];
                let mut s2 = [_mm256_setzero_si256(); R];
                for s in 0..8 {
                    let sc = p.add(KQuant::<BITS>::SC + 16 * s + 8 * half) as *const __m128i;
                    let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc));
                    let sc = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
                    for h in 0..4 {
                        let v =
                            _mm256_loadu_si256(p.add(stride * s + 64 * h + 32 * half) as *const _);
                        let mut lo = _mm256_and_si256(v, nib);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        if BITS == 5 {
                            let qh = p.add(stride * s + KQuant::<BITS>::QH) as *const u64;
                            let bits =
                                |g: usize| (qh.add(g).read_unaligned() >> (32 * half)) as u32;
                            lo = _mm256_or_si256(lo, bits_to_bit4(bits(h)));
                            hi = _mm256_or_si256(hi, bits_to_bit4(bits(h + 4)));
                        }
                        for r in 0..R {
                            let qs = &acts[r][b].qs;
                            let a_lo = _mm256_set1_epi32(quad(qs, 32 * s + 4 * h));
                            let a_hi = _mm256_set1_epi32(quad(qs, 32 * s + 16 + 4 * h));
                            let t = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, a_lo),
                                _mm256_maddubs_epi16(hi, a_hi),
                            );
                            s1[r] = _mm256_add_epi32(s1[r], _mm256_madd_epi16(t, sc));
                        }
                    }
                }
                for q in 0..4 {
                    let m = p.add(KQuant::<BITS>::MN + 32 * q + 16 * half) as *const __m128i;
                    let m = _mm256_cvtepu8_epi16(_mm_loadu_si128(m));
                    for r in 0..R {
                        let sums = _mm256_set1_epi32(pair(&acts[r][b].bsum32, 2 * q));
                        s2[r] = _mm256_add_epi32(s2[r], _mm256_madd_epi16(m, sums));
                    }
                }
                let at = |off: usize| p.add(off + 16 * half) as *const __m128i;
                let d = _mm256_cvtph_ps(_mm_loadu_si128(at(KQuant::<BITS>::D)));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(at(KQuant::<BITS>::DMIN)));
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

    /// The 2 high bits of quant group `h` (0..4) of a Q6_K high-bit vector, at bits 4..6.
    macro_rules! high2 {
        ($and:ident, $sll:ident, $srl:ident, $qh:expr, $h:expr, $mask:expr) => {
            match $h {
                0 => $and($sll($qh, 4), $mask),
                1 => $and($sll($qh, 2), $mask),
                2 => $and($qh, $mask),
                _ => $and($srl($qh, 2), $mask),
            }
        };
    }

    impl SignedGroups for Q6K {
        const SC: usize = Q6K::SC;
        const D: usize = Q6K::D;
        const OFFSET_SHIFT: u32 = 5;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        unsafe fn weights_avx512(p: *const u8, s: usize, e: usize) -> [__m512i; 4] {
            let (nib, top) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
            let qh = _mm512_loadu_si512(p.add(Q6K::STRIDE * s + Q6K::QH + 64 * e) as *const _);
            std::array::from_fn(|h| {
                let v = _mm512_loadu_si512(p.add(Q6K::STRIDE * s + 64 * h) as *const _);
                let low = if e == 0 { v } else { _mm512_srli_epi16(v, 4) };
                let high = high2!(
                    _mm512_and_si512,
                    _mm512_slli_epi16,
                    _mm512_srli_epi16,
                    qh,
                    h,
                    top
                );
                _mm512_or_si512(_mm512_and_si512(low, nib), high)
            })
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn weights_avx2(p: *const u8, s: usize, e: usize, half: usize) -> [__m256i; 4] {
            let (nib, top) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
            let qh = p.add(Q6K::STRIDE * s + Q6K::QH + 64 * e + 32 * half);
            let qh = _mm256_loadu_si256(qh as *const _);
            std::array::from_fn(|h| {
                let v = p.add(Q6K::STRIDE * s + 64 * h + 32 * half);
                let v = _mm256_loadu_si256(v as *const _);
                let low = if e == 0 { v } else { _mm256_srli_epi16(v, 4) };
                let high = high2!(
                    _mm256_and_si256,
                    _mm256_slli_epi16,
                    _mm256_srli_epi16,
                    qh,
                    h,
                    top
                );
                _mm256_or_si256(_mm256_and_si256(low, nib), high)
            })
        }
    }
}
