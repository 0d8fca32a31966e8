//! Quantizers the GGUF export runs itself where candle's differ from ggml's current reference,
//! so that an export holds the bytes llama.cpp's own `llama-quantize` writes (checked tensor for
//! tensor against it; see `models/tests/fixtures/README.md`).
//!
//! Q6_K: candle quantizes each 16-value group with an older ggml search (a few refinement passes
//! from the max-based scale), which leaves about 4% more squared error than today's ggml. ggml's
//! `quantize_row_q6_K_ref` tries the max-based scale and 18 nearby ones per group, keeping the one
//! with the least x²-weighted error, then quantizes the 16 group scales to 8 bits under one f16
//! block scale and re-rounds every value against its final scale.

use crate::kernels::act::nearest_int;

/// Values per Q6_K block.
const QK_K: usize = 256;
/// Bytes per Q6_K block: `ql` (128), `qh` (64), `scales` (16 × i8), `d` (f16).
pub(crate) const Q6K_BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Below this a group or block is all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantizes `values` (a whole number of 256-value blocks) to Q6_K blocks.
pub(crate) fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(QK_K), "Q6_K rows are whole blocks");
    let mut out = Vec::with_capacity(values.len() / QK_K * Q6K_BLOCK_BYTES);
    for x in values.chunks_exact(QK_K) {
        out.extend_from_slice(&q6_k_block(x));
    }
    out
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
            let err = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // Six bits per value under a per-group scale: well inside amax / 32.
            assert!(err <= amax / 32.0 + 1e-6, "block {block}: {err} of {amax}");
        }
        assert!(back[1024..].iter().all(|&v| v == 0.0));
    }
}
