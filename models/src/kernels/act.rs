//! Activation rows quantized to 8 bits the way ggml quantizes them for each weight type: 32-value
//! blocks (Q8_0, and Q8_1's scaled sum) for the 32-value weight types, 256-value blocks with
//! 16-value sums (Q8_K) for the K-quants. The integer sums that undo the weights' unsigned
//! offsets come with each block, so the kernels never sum activations themselves.

/// 32 activations as ggml's Q8_0/Q8_1: `x ≈ d · qs`, `d = max|x| / 127` rounded to f16.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct Q8Block {
    pub qs: [i8; 32],
    pub d: f32,
    /// Q8_1's `s`: `d · Σ qs` (with `d` before rounding), rounded to f16; times the weights' min.
    pub s: f32,
    /// `Σ qs`.
    pub sum: i32,
    /// `−offset · Σ qs` for the weight type's unsigned offset (8, 16, 128, or 0): the integer
    /// dot product starts from it, which removes the offset exactly.
    pub corr: i32,
}

/// 256 activations as ggml's Q8_K: `x ≈ d · qs` with the signed extreme at ±127 (`d` in f32).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q8KBlock {
    pub qs: [i8; 256],
    pub d: f32,
    /// Sums of `qs` over each 16 values (Q6_K's scale groups).
    pub bsums: [i16; 16],
    /// Sums of `qs` over each 32 values (Q4_K/Q5_K's scale groups), pairs adjacent so one
    /// 32-bit load feeds a `madd` of two sub-blocks.
    pub bsum32: [i16; 8],
}

impl Q8Block {
    pub(crate) const ZERO: Self = Self {
        qs: [0; 32],
        d: 0.0,
        s: 0.0,
        sum: 0,
        corr: 0,
    };

    /// Quantizes 32 values for weights whose quants carry `offset`.
    pub(crate) fn quantize(xs: &[f32], offset: i32) -> Self {
        let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut out = Self::ZERO;
        let mut sum = 0i32;
        for (q, &x) in out.qs.iter_mut().zip(xs) {
            // Round half away from zero, as ggml's `roundf`, without the libm call (baseline
            // x86-64 has no rounding instruction); |v| <= 127.
            let v = x * id;
            *q = (v + 0.5f32.copysign(v)) as i8;
            sum += *q as i32;
        }
        out.d = half::f16::from_f32(d).to_f32();
        out.s = half::f16::from_f32(sum as f32 * d).to_f32();
        out.sum = sum;
        out.corr = -offset * sum;
        out
    }
}

impl Q8KBlock {
    pub(crate) const ZERO: Self = Self {
        qs: [0; 256],
        d: 0.0,
        bsums: [0; 16],
        bsum32: [0; 8],
    };

    pub(crate) fn quantize(xs: &[f32]) -> Self {
        let mut out = Self::ZERO;
        let (mut amax, mut max) = (0f32, 0f32);
        for &x in xs {
            if x.abs() > amax {
                amax = x.abs();
                max = x;
            }
        }
        if amax == 0.0 {
            return out;
        }
        let iscale = -127.0 / max;
        for (q, &x) in out.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * x).min(127) as i8;
        }
        for (t, sum) in out.bsums.iter_mut().enumerate() {
            *sum = out.qs[16 * t..16 * t + 16].iter().map(|&q| q as i16).sum();
        }
        for (s, sum) in out.bsum32.iter_mut().enumerate() {
            *sum = out.bsums[2 * s] + out.bsums[2 * s + 1];
        }
        out.d = 1.0 / iscale;
        out
    }
}

/// Round half to even through the float mantissa, as ggml's `nearest_int` (|v| <= 2^22).
pub(crate) fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12582912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8k_matches_ggml_rounding() {
        let xs: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) * 0.25).collect();
        let b = Q8KBlock::quantize(&xs);
        // The signed extreme (38.75 at i = 255) maps to -127: iscale = -127 / 38.75.
        assert_eq!(b.qs[255], -127);
        assert_eq!(b.qs[100], 0);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
        assert_eq!(
            b.bsums[0],
            b.qs[..16].iter().map(|&q| q as i16).sum::<i16>()
        );
        assert_eq!(b.bsum32[1], b.bsums[2] + b.bsums[3]);
        let x = 10.0f32; // input 140
        assert!((b.d * b.qs[140] as f32 - x).abs() <= b.d.abs() / 2.0 + 1e-6);
    }
}
