//! Per type: every path equals the scalar reference bit for bit, rows do not depend on their
//! batch mates, and the reference equals candle's dequantized weights times the dequantized
//! activations to within f32 rounding.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use rand::{Rng, SeedableRng};

use super::act::{Q8Block, Q8KBlock};
use super::*;

/// Where a type's f16 fields sit in its file block (scales that must stay finite and small).
fn f16_fields(dtype: GgmlDType) -> &'static [usize] {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q6K => &[208],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        _ => unreachable!(),
    }
}

/// Random file blocks: random quant bytes, scales in a realistic range (mins signed).
fn random_blocks(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (qk, bytes) = (dtype.block_size(), dtype.type_size());
    let mut data: Vec<u8> = (0..n * k / qk * bytes).map(|_| rng.random()).collect();
    for block in data.chunks_exact_mut(bytes) {
        for (i, &at) in f16_fields(dtype).iter().enumerate() {
            let v: f32 = if i == 0 {
                rng.random_range(0.001..0.05)
            } else if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q2K) {
                rng.random_range(0.0..0.01)
            } else {
                rng.random_range(-0.1..0.1)
            };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    data
}

/// What an activation block stands for in f32.
trait Dequant {
    fn values(&self) -> Vec<f32>;
    /// How far the min term (`m · s`, `s` rounded to f16 as ggml's Q8_1) may be from
    /// `m · Σ values` for mins up to 0.1.
    fn min_slack(&self) -> f64;
}

impl Dequant for Q8Block {
    fn values(&self) -> Vec<f32> {
        self.qs.iter().map(|&q| self.d * q as f32).collect()
    }

    fn min_slack(&self) -> f64 {
        0.1 * (self.s as f64 - self.d as f64 * self.sum as f64).abs()
    }
}

impl Dequant for Q8KBlock {
    fn values(&self) -> Vec<f32> {
        self.qs.iter().map(|&q| self.d * q as f32).collect()
    }

    fn min_slack(&self) -> f64 {
        0.0
    }
}

fn check<F: Format>(n: usize, k: usize, seed: u64)
where
    F::Act: Dequant,
{
    let dtype = F::DTYPE;
    let data = random_blocks(dtype, n, k, seed);
    let matrix = QMatrix::from_blocks(dtype, &data, n, k, Isa::detect()).unwrap();
    // Within 4% of the file's size (Q3_K's scale bytes; the last tile's missing columns aside).
    let file_bytes = data.len() / n * n.next_multiple_of(TILE_N);
    assert!(
        matrix.size_in_bytes() * 100 <= file_bytes * 104,
        "{dtype:?}: {} bytes tiled for {file_bytes} in the file",
        matrix.size_in_bytes()
    );
    let storage = QStorage::from_data(Cow::Borrowed(&data), &Device::Cpu, dtype).unwrap();
    let weights = QTensor::new(storage, (n, k))
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 100);
    for m in [1, 3, 6, 7, 13, 17, 64] {
        let lhs: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut want = vec![0f32; m * n];
        matrix.matmul_with(Isa::Scalar, &lhs, m, &mut want);
        for isa in Isa::all_available() {
            let mut got = vec![0f32; m * n];
            matrix.matmul_with(isa, &lhs, m, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{dtype:?} {isa:?} m={m}");
            // Each row alone gives exactly its row of the batched product.
            for r in [0, m / 2, m - 1] {
                let mut one = vec![0f32; n];
                matrix.matmul_with(isa, &lhs[r * k..(r + 1) * k], 1, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(&want[r * n..(r + 1) * n]),
                    "{dtype:?} {isa:?} row {r}"
                );
            }
        }
        // The reference against dequantized weights times dequantized activations.
        let acts = quantize_rows::<F>(&lhs, m, k);
        let with_min = matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1);
        for r in 0..m {
            let row = &acts[r * k / F::QK..(r + 1) * k / F::QK];
            let x: Vec<f32> = row.iter().flat_map(|a| a.values()).collect();
            let slack: f64 = if with_min {
                row.iter().map(|a| a.min_slack()).sum()
            } else {
                0.0
            };
            for (c, w) in weights.iter().enumerate() {
                let (mut exact, mut scale) = (0f64, 0f64);
                for (&w, &x) in w.iter().zip(&x) {
                    exact += w as f64 * x as f64;
                    scale += (w as f64 * x as f64).abs();
                }
                let got = want[r * n + c] as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * scale + slack + 1e-6,
                    "{dtype:?} m={m} ({r}, {c}): {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn every_type_matches_its_reference_on_every_path() {
    for dtype in TYPES {
        // n = 37: a partial last tile; 32-value types with k = 96 (not a multiple of 256).
        let k = if dtype.block_size() == 256 { 512 } else { 96 };
        with_format!(dtype, unreachable!(), |F| check::<F>(37, k, dtype as u64));
    }
}

#[test]
fn activations_quantize_as_ggml() {
    let xs: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 - 8.0).collect();
    let b = Q8Block::quantize(&xs, 16);
    // max |x| = 8: d = 8 / 127 (rounded to f16), x = 0.5 → 0.5 · 127 / 8 = 7.94 → 8.
    assert_eq!(b.qs[0], -127);
    assert_eq!(b.qs[17], 8);
    assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
    assert_eq!(b.corr, -16 * b.sum);
    assert_eq!(b.d, half::f16::from_f32(8.0 / 127.0).to_f32());
}
