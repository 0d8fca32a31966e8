//! Times distill's batched GGUF matrix products per weight type (`models/src/kernels/`): a
//! `[n, k]` matrix of random blocks times `m` activation rows, for m = 1, 8 and 32, and prints
//! the weight bytes streamed per second (what bounds decoding at batch 1) and the multiply-adds
//! per second (what bounds it at batch 32), and how fast the load-time re-tiling goes. A quick way to see which type is the slow one in a
//! GGUF file's mix; `teacher/bench/run.sh` is the end-to-end comparison with llama.cpp.
//!
//!     cargo run --release -p distill-models --example qmatmul -- [N] [K] [TYPE]
//!
//! TYPE (as candle spells it: Q4K, Q8_0, …) times that type alone.
//! `DISTILL_NO_VNNI=1` times the AVX2 path.

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use distill_models::kernels::{Isa, QMatrix, TYPES};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("N and K are numbers"))
    };
    let (n, k, only) = (number(0, 2816), number(1, 1024), args.get(2));
    println!(
        "[{n}, {k}] · {:?} · {} threads",
        Isa::detect(),
        rayon::current_num_threads()
    );
    // A deterministic byte pattern, with every f16 scale set to 2^-8 (random bytes there would
    // give infinities and subnormals, which time differently).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut byte = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    for dtype in TYPES {
        let (qk, size) = (dtype.block_size(), dtype.type_size());
        if !k.is_multiple_of(qk) || only.is_some_and(|t| *t != format!("{dtype:?}")) {
            continue;
        }
        let f16_fields: &[usize] = match dtype {
            GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
            GgmlDType::Q2K => &[80, 82],
            GgmlDType::Q3K => &[108],
            GgmlDType::Q6K => &[208],
            _ => &[0],
        };
        let mut data: Vec<u8> = (0..n * k / qk * size).map(|_| byte()).collect();
        let scale = half::f16::from_f32(1.0 / 256.0).to_le_bytes();
        for block in data.chunks_exact_mut(size) {
            for &at in f16_fields {
                block[at..at + 2].copy_from_slice(&scale);
            }
        }
        let start = Instant::now();
        let matrix = QMatrix::from_blocks(dtype, &data, n, k, Isa::detect()).unwrap();
        let pack = start.elapsed().as_secs_f64();
        let mut line = format!(
            "{:>5}  re-tiling {:>5.2} GB/s",
            format!("{dtype:?}"),
            data.len() as f64 / pack / 1e9
        );
        for m in [1, 8, 32] {
            let lhs: Vec<f32> = (0..m * k)
                .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
                .collect();
            let mut dst = vec![0f32; m * n];
            matrix.matmul(&lhs, m, &mut dst);
            let reps = (200 / m).max(10);
            let start = Instant::now();
            for _ in 0..reps {
                matrix.matmul(&lhs, m, &mut dst);
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            line += &format!(
                "  m={m:>2}: {:>7.1} µs {:>5.1} GB/s {:>6.1} GMAC/s",
                secs * 1e6,
                data.len() as f64 / secs / 1e9,
                (m * n * k) as f64 / secs / 1e9
            );
        }
        println!("{line}");
    }
}
