//! Quantizers the GGUF export runs itself where candle's differ from ggml's current reference,
//! so that an export holds the bytes llama.cpp's own `llama-quantize` writes (checked tensor for
//! tensor against it; see `models/tests/fixtures/README.md`).
//!
//! Q6_K: candle quantizes each 16-value group with an older ggml search (a few refinement passes
//! from the max-based scale), which leaves about 4% more squared error than today's ggml. ggml's
//! `quantize_row_q6_K_ref` tries the max-based scale and 18 nearby ones per group, keeping the one
//! with the least x²-weighted error, then quantizes the 16 group scales to 8 bits under one f16
//! block scale and re-rounds every value against its final scale.
//!
//! Q4_K: candle fits each 32-value group's scale and min with ggml's older iteration; ggml's
//! `quantize_row_q4_K_ref` weights each value by `rms(group) + |x|`, tries 21 scales spanning
//! `(15 - 1 .. 15 + 1) / (max - min)` and solves the weighted least-squares scale and min for
//! each, keeping the least weighted error; the 8 scales and mins go to 6 bits under the block's
//! f16 `d` and `dmin`, and every value is re-rounded against them.

use crate::kernels::act::nearest_int;

/// Values per K-quant block (Q4_K, Q6_K).
const QK_K: usize = 256;
/// Bytes per Q4_K block: `d`, `dmin` (f16), 12 bytes of 6-bit scales and mins, `qs` (128).
const Q4K_BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;
/// Bytes per Q6_K block: `ql` (128), `qh` (64), `scales` (16 × i8), `d` (f16).
const Q6K_BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Below this a group or block is all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantizes `values` (a whole number of 256-value blocks) to Q4_K blocks.
pub(crate) fn quantize_q4_k(values: &[f32]) -> Vec<u8> {
    blocks(values, q4_k_block)
}

/// Quantizes `values` (a whole number of 256-value blocks) to Q6_K blocks.
pub(crate) fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    blocks(values, q6_k_block)
}

/// `quantize_block` of each 256 values, concatenated.
fn blocks<const N: usize>(values: &[f32], quantize_block: fn(&[f32]) -> [u8; N]) -> Vec<u8> {
    assert!(
        values.len().is_multiple_of(QK_K),
        "k-quant rows are whole 256-value blocks"
    );
    values.chunks_exact(QK_K).flat_map(quantize_block).collect()
}

fn q4_k_block(x: &[f32]) -> [u8; Q4K_BLOCK_BYTES] {
    let mut block = [0u8; Q4K_BLOCK_BYTES];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for (g, group) in x.chunks_exact(32).enumerate() {
        let rms = (group.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| rms + group[i].abs());
        (scales[g], mins[g]) = fit_scale_min(group, &weights, 15);
    }
    let max_scale = scales.iter().fold(0f32, |a, &s| a.max(s));
    let max_min = mins.iter().fold(0f32, |a, &m| a.max(m));
    let inv = |max: f32| if max > 0.0 { 63.0 / max } else { 0.0 };
    let (inv_scale, inv_min) = (inv(max_scale), inv(max_min));
    let (head, qs) = block.split_at_mut(16);
    let packed = &mut head[4..16];
    let mut six = [(0u8, 0u8); 8];
    for g in 0..8 {
        let ls = (nearest_int(inv_scale * scales[g]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[g]) as u8).min(63);
        six[g] = (ls, lm);
        // 6-bit pairs: groups 0-3 in the low bits of bytes 0-3 / 4-7, groups 4-7 as nibbles of
        // bytes 8-11 with their top two bits in the high bits of bytes 0-7.
        if g < 4 {
            packed[g] = ls;
            packed[g + 4] = lm;
        } else {
            packed[g + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[g - 4] |= (ls >> 4) << 6;
            packed[g] |= (lm >> 4) << 6;
        }
    }
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    head[0..2].copy_from_slice(&d.to_le_bytes());
    head[2..4].copy_from_slice(&dmin.to_le_bytes());
    let mut levels = [0u8; QK_K];
    for (g, &(ls, lm)) in six.iter().enumerate() {
        let step = d.to_f32() * f32::from(ls);
        if step == 0.0 {
            continue;
        }
        let offset = dmin.to_f32() * f32::from(lm);
        for i in 32 * g..32 * g + 32 {
            levels[i] = nearest_int((x[i] + offset) / step).clamp(0, 15) as u8;
        }
    }
    // Each 64 values: the first 32 in the low nibbles, the next 32 in the high ones.
    for (chunk, q) in levels.chunks_exact(64).zip(qs.chunks_exact_mut(32)) {
        for l in 0..32 {
            q[l] = chunk[l] | (chunk[l + 32] << 4);
        }
    }
    block
}

/// Scale and (positive) min of one group of unsigned levels in `[0, nmax]`, `x ≈ scale · l −
/// min`: from the range-based fit, 21 trial scales `(nmax − 1 + 0.1 k) / (max − min)`, each
/// refitted by weighted least squares (the min clamped at 0), keeping the least weighted
/// squared error.
fn fit_scale_min(x: &[f32], weights: &[f32], nmax: i32) -> (f32, f32) {
    let mut min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let (mut sum_w, mut sum_x) = (0f32, 0f32);
    for (&v, &w) in x.iter().zip(weights) {
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let error = |scale: f32, min: f32, levels: &dyn Fn(usize) -> i32| {
        x.iter()
            .zip(weights)
            .enumerate()
            .fold(0f32, |e, (i, (&v, &w))| {
                let diff = scale * levels(i) as f32 + min - v;
                e + w * diff * diff
            })
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = error(scale, min, &|i| level(iscale, x[i], min));
    for k in 0..=20 {
        // Trial levels are taken against the best min so far, as ggml does.
        let from = min;
        let iscale = (-1.0 + 0.1 * k as f32 + nmax as f32) / (max - from);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for (&v, &w) in x.iter().zip(weights) {
            let l = level(iscale, v, from) as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let cur = error(this_scale, this_min, &|i| level(iscale, x[i], from));
        if cur < best {
            best = cur;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

fn q6_k_block(x: &[f32]) -> [u8; Q6K_BLOCK_BYTES] {
    let mut block = [0u8; Q6K_BLOCK_BYTES];
    let mut levels = [0i8; QK_K];
    let mut group_scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (g, scale) in group_scales.iter_mut().enumerate() {
        let at = 16 * g..16 * g + 16;
        *scale = best_group_scale(&x[at.clone()], 32, &mut levels[at]);
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = *scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return block;
    }
    let iscale = -128.0 / max_scale;
    let d = half::f16::from_f32(1.0 / iscale);
    let (ql, rest) = block.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    let (scales, d_bytes) = rest.split_at_mut(QK_K / 16);
    d_bytes.copy_from_slice(&d.to_le_bytes());
    for (g, &scale) in group_scales.iter().enumerate() {
        let s = nearest_int(iscale * scale).min(127) as i8;
        scales[g] = s as u8;
        // Every value again against the scale it will be read with.
        let step = d.to_f32() * f32::from(s);
        if step == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            levels[i] = (nearest_int(x[i] / step).clamp(-32, 31) + 32) as i8;
        }
    }
    // Each 128-value half: low nibbles of values l and l + 64 share `ql[l]` (and l + 32 with
    // l + 96 share `ql[l + 32]`); the four values' top two bits share `qh[l]`.
    for half in 0..2 {
        let (l6, ql, qh) = (
            &levels[128 * half..128 * half + 128],
            &mut ql[64 * half..64 * half + 64],
            &mut qh[32 * half..32 * half + 32],
        );
        for l in 0..32 {
            let q = |k: usize| l6[l + 32 * k] as u8;
            ql[l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    block
}

/// The scale of one group of signed levels in `[-nmax, nmax)` (stored as `level + nmax` in
/// `levels`): the max-based scale and the 18 neighbours `-(nmax ± 0.1 k) / max`, keeping the one
/// whose least-squares fit (weights x²) explains the most; returns that fit's scale.
fn best_group_scale(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² for one inverse scale, w = x².
    let fit = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(lx, l2), &v| {
            let (l, w) = (level(iscale, v) as f32, v * v);
            (lx + w * v * l, l2 + w * l * l)
        })
    };
    let mut chosen = -(nmax as f32) / max;
    let (sumlx, suml2) = fit(chosen);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in (-9..=9).filter(|&k| k != 0) {
        let iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            chosen = iscale;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (level(chosen, v) + nmax) as i8;
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    use candle_core::Device;

    /// Dequantized through candle's reader, the blocks come back within Q6_K's error, and a
    /// zero block stays zero.
    #[test]
    fn q6_k_blocks_read_back() {
        let values: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0 * (1.0 + (i / 256) as f32))
            .chain(std::iter::repeat_n(0.0, 256))
            .collect();
        let bytes = quantize_q6_k(&values);
        assert_eq!(bytes.len(), 5 * Q6K_BLOCK_BYTES);
        let q = qtensor_from_ggml(GgmlDType::Q6K, &bytes, vec![5, 256], &Device::Cpu).unwrap();
        let back: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (block, (x, y)) in values.chunks(256).zip(back.chunks(256)).enumerate() {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = x
                .iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Six bits per value under a per-group scale: well inside amax / 32.
            assert!(err <= amax / 32.0 + 1e-6, "block {block}: {err} of {amax}");
        }
        assert!(back[1024..].iter().all(|&v| v == 0.0));
    }
}
