//! What the tests of the CUDA kernels share (`cuda_kernels.rs`, `flash_attention.rs`): the
//! harness that runs one kernel of `models/src/cuda/*.cu` on the CPU through `emulate.h`, and
//! the comparisons. Needs a C++20 compiler (`c++`, or `CXX`); without one the tests fail and say
//! so, since CI has one.

// Each test binary uses some of these.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

/// The emulated kernels, built once per test run.
pub fn harness() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        // One per test binary: they may build at the same time.
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cuda-kernel-harness-{}", env!("CARGO_CRATE_NAME")));
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let status = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-pthread", "-I"])
            .arg(root.join("src/cuda"))
            .arg(root.join("tests/cuda_emulation/harness.cpp"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cuda kernel tests need a C++20 compiler ({cxx}): {e}"));
        assert!(status.success(), "{cxx} could not build the kernel harness");
        out
    })
}

#[derive(Clone, Copy)]
pub enum Dt {
    F32,
    Bf16,
}

impl Dt {
    pub fn name(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::Bf16 => "bf16",
        }
    }
    pub fn dtype(self) -> DType {
        match self {
            Dt::F32 => DType::F32,
            Dt::Bf16 => DType::BF16,
        }
    }
    /// Largest difference allowed, relative to the reference's largest magnitude.
    pub fn tolerance(self) -> f32 {
        match self {
            Dt::F32 => 2e-6,
            Dt::Bf16 => 1.6e-2,
        }
    }
}

/// Runs one kernel: `args` after the kernel, dtype, grid and block; inputs as f32 arrays; the
/// outputs split at `sizes`.
pub fn run(
    kernel: &str,
    dt: Dt,
    (grid, block): (u32, u32),
    args: &[String],
    inputs: &[&Tensor],
    sizes: &[usize],
) -> Vec<Vec<f32>> {
    let mut child = Command::new(harness())
        .args([kernel, dt.name(), &grid.to_string(), &block.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    for t in inputs {
        bytes.extend(values(t).iter().flat_map(|v| v.to_le_bytes()));
    }
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "harness {kernel} failed");
    let floats: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        floats.len(),
        sizes.iter().sum::<usize>(),
        "{kernel} output size"
    );
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            at += n;
            floats[at - n..at].to_vec()
        })
        .collect()
}

/// A tensor's elements as f32, in order.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts `got` (from the kernel) matches `reference` within the dtype's tolerance.
pub fn assert_close(what: &str, dt: Dt, got: &[f32], reference: &Tensor) {
    assert_within(what, dt.name(), dt.tolerance(), got, reference)
}

/// Asserts `got` is within `tolerance` of `reference`, relative to the reference's largest
/// magnitude.
pub fn assert_within(what: &str, dtype: &str, tolerance: f32, got: &[f32], reference: &Tensor) {
    let want = values(reference);
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tolerance * scale,
        "{what} ({dtype}): off by {worst} of {scale}"
    );
}

pub fn randn(shape: &[usize], seed: u64, dt: Dt) -> Tensor {
    // A fixed, seed-driven pattern (candle's CPU randn is not seeded per call).
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5));
            let u = ((x >> 40) as f32) / (1u64 << 24) as f32; // [0, 1)
            (u - 0.5) * 3.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dt.dtype())
        .unwrap()
}

/// The gradients of `Σ y · dy` (f32): `dy` pulled back through `y`'s graph.
pub fn backward(y: &Tensor, dy: &Tensor) -> candle_core::backprop::GradStore {
    (y.to_dtype(DType::F32).unwrap() * dy.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

pub fn s(v: impl ToString) -> String {
    v.to_string()
}
