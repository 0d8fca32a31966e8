//! Fused training ops with analytic backward passes (CPU, f32).
//!
//! Why: candle's autograd keeps every node of the graph alive until `backward` returns, so a
//! differentiable composition of primitives (see [`crate::ops`]) holds all of its temporaries:
//! for attention that is several `[batch, heads, seq, seq]` score/probability tensors per layer,
//! for RMS norm and RoPE several activation-sized copies. The ops here are single graph nodes
//! (candle `CustomOp1/2/3`) whose `bwd` recomputes what it needs from the inputs, so a layer
//! keeps only its inputs and output:
//! - [`rms_norm`]: backward recomputes the per-row `1/rms` from the saved input;
//! - [`rope`]: backward is the same rotation with negated sine; nothing saved;
//! - [`attention`]: causal, document-masked grouped-query attention with RoPE applied inside;
//!   forward keeps only its output and one log-sum-exp per row, backward recomputes the
//!   probabilities block by block (flash-attention style);
//! - [`swiglu`]: `silu(gate) * up` in one node.
//!
//! Everything is deterministic: parallel work is split into fixed pieces whose partial results
//! are combined in a fixed order, so a resumed run reproduces the original bit for bit.

mod attention;
mod norm;
mod rope;
mod swiglu;

pub use attention::{attention, document_starts, AttentionContext};
pub use norm::rms_norm;
pub use rope::rope;
pub use swiglu::swiglu;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use gemm::Parallelism;

/// Whether the fused ops can run on `t` (CPU, f32).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU storage.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fused ops expect f32 tensors");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused ops expect contiguous tensors"),
    }
}

/// Runs `f` on the contiguous f32 data of a (CPU) tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused ops run on the CPU only");
    };
    f(slice(cpu, layout)?)
}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, single-threaded (callers
/// parallelise over independent pieces). Strides are `(row, column)` in elements.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    sgemm_threads(
        1,
        mnk,
        dst,
        dst_rs,
        accumulate,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    )
}

/// As `sgemm`, on `threads` rayon threads (1: the calling thread only). The student's chunked
/// loss uses it too.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_threads(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_rs..row * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above show every index the strides address lies inside the slices,
    // and `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            },
        )
    }
}
