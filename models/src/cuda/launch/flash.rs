//! Launches of `flash_attention.cu`: the forward (output and log-sum-exps) and the two backward
//! kernels (dK and dV per key tile, dQ per query tile), bf16, head dim 64 or 128.

use std::ops::Deref;

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{Result, Storage, Tensor};

use super::*;

/// Query rows of a forward block (4 warps of 16), and keys or query rows of a backward block
/// (2 warps of 16): the tiles of `flash_attention.cu`.
const FORWARD_ROWS: usize = 64;
const BACKWARD_ROWS: usize = 32;

/// Attention's shapes as the kernels take them.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    head_dim: usize,
}

impl Dims {
    /// Checks q `[b, h, t, d]`, k and v `[b, kv, t, d]` (bf16, d 64 or 128, h a multiple of kv)
    /// and starts `[b, t]` u32.
    fn of(q: &Tensor, k: &Tensor, v: &Tensor, starts: &Tensor) -> Result<Self> {
        let (batch, heads, seq, head_dim) = q.dims4()?;
        let kv_heads = k.dim(1)?;
        let kv_shape = [batch, kv_heads, seq, head_dim];
        if k.dims() != kv_shape || v.dims() != kv_shape || heads % kv_heads.max(1) != 0 {
            candle_core::bail!(
                "flash attention: q {:?}, k {:?}, v {:?} do not match",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if starts.dims() != [batch, seq] || starts.dtype() != DType::U32 {
            candle_core::bail!("flash attention: document starts are not [{batch}, {seq}] u32");
        }
        if [q, k, v].iter().any(|t| t.dtype() != DType::BF16) || ![64, 128].contains(&head_dim) {
            candle_core::bail!(
                "flash attention takes bf16 heads of 64 or 128 dims, not {:?} of {head_dim}",
                q.dtype()
            );
        }
        Ok(Self {
            batch,
            heads,
            kv_heads,
            seq,
            head_dim,
        })
    }

    fn q_elems(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }

    fn kv_elems(&self) -> usize {
        self.batch * self.kv_heads * self.seq * self.head_dim
    }

    /// The ints after the buffers: heads, kv heads, seq (offsets into the buffers are
    /// 64-bit in the kernels).
    fn ints(&self) -> Result<[i32; 3]> {
        Ok([
            i32_of(self.heads, "attention heads")?,
            i32_of(self.kv_heads, "kv heads")?,
            i32_of(self.seq, "sequence length")?,
        ])
    }

    /// The entry point of `kernel` (fwd, row_dot, bwd_kv, bwd_q) for this head dim.
    fn entry(&self, kernel: &str) -> String {
        format!("flash_attention_{kernel}_d{}_bf16", self.head_dim)
    }

    /// Exactly `blocks` blocks (not `shape`'s clamped grid: each block owns one tile).
    fn launch(&self, blocks: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// A tensor as the kernels read it fastest: contiguous, its first element at a multiple of 8
/// elements from its buffer's start, so rows load 8 bf16 at a time (they read any alignment,
/// element by element).
fn aligned(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() % 8 == 0 {
        Ok(t)
    } else {
        t.copy()
    }
}

/// A tensor's storage held for reading while the kernels run (`G`: the storage's read guard).
struct Held<'a, G>(G, &'a Layout);

impl<'a> Held<'a, ()> {
    fn of(t: &'a Tensor) -> Held<'a, impl Deref<Target = Storage> + 'a> {
        let (storage, layout) = t.storage_and_layout();
        Held(storage, layout)
    }
}

impl<G: Deref<Target = Storage>> Held<'_, G> {
    fn view<T: Element>(&self) -> Result<CudaView<'_, T>> {
        match &*self.0 {
            Storage::Cuda(s) => view::<T>((s, self.1)),
            _ => candle_core::bail!("flash attention takes tensors on a CUDA device"),
        }
    }
}

/// The output `[b, h, t, d]` and each query row's log-sum-exp `[b, h, t]` f32.
pub(in crate::cuda) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let dims = Dims::of(q, k, v, starts)?;
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    let held = [&q, &k, &v].map(Held::of);
    let st = Held::of(starts);
    let dev = q.device().as_cuda_device()?.clone();
    let [qv, kv, vv] = [&held[0], &held[1], &held[2]].map(|h| h.view::<bf16>());
    let (qv, kv, vv, sv) = (qv?, kv?, vv?, st.view::<u32>()?);
    let rows = dims.batch * dims.heads * dims.seq;
    // SAFETY: the forward writes every output element and every row's log-sum-exp.
    let (out, lse) = unsafe { (dev.alloc::<bf16>(dims.q_elems())?, dev.alloc::<f32>(rows)?) };
    let func = dev.get_or_load_custom_func(&dims.entry("fwd"), FLASH.0, FLASH.1)?;
    let mut b = func.builder();
    b.arg(&qv).arg(&kv).arg(&vv).arg(&sv).arg(&out).arg(&lse);
    let ints = dims.ints()?;
    for x in &ints {
        b.arg(x);
    }
    b.arg(&scale);
    let blocks = dims.batch * dims.heads * dims.seq.div_ceil(FORWARD_ROWS);
    // SAFETY: the arguments match flash_attention_fwd in flash_attention.cu.
    unsafe { b.launch(dims.launch(blocks, 128)) }.w()?;
    let shape = q.shape().clone();
    Ok((
        tensor(bf16::wrap_cuda_slice(out, dev.clone()), shape),
        tensor(
            f32::wrap_cuda_slice(lse, dev),
            (dims.batch, dims.heads, dims.seq),
        ),
    ))
}

/// dq, dk and dv from the forward's output `out`, its gradient `d_out` and the forward's
/// log-sum-exps; each query row's `Σ dO ∘ O` is computed first (`row_dot`).
#[allow(clippy::too_many_arguments)]
pub(in crate::cuda) fn flash_attention_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    d_out: &Tensor,
    lse: &Tensor,
    starts: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = Dims::of(q, k, v, starts)?;
    let rows = dims.batch * dims.heads * dims.seq;
    for (what, t) in [("output", out), ("output's gradient", d_out)] {
        if t.dims() != q.dims() || t.dtype() != DType::BF16 {
            candle_core::bail!("flash attention backward: the {what} does not match q");
        }
    }
    if lse.elem_count() != rows || lse.dtype() != DType::F32 {
        candle_core::bail!("flash attention backward: log-sum-exps are not {rows} f32 values");
    }
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    let (out, d_out, lse) = (out.contiguous()?, aligned(d_out)?, lse.contiguous()?);
    let held = [&q, &k, &v, &d_out, &out].map(Held::of);
    let [lh, st] = [&lse, starts].map(Held::of);
    let dev = q.device().as_cuda_device()?.clone();
    let [qv, kv, vv, dov, ov] =
        [&held[0], &held[1], &held[2], &held[3], &held[4]].map(|h| h.view::<bf16>());
    let (qv, kv, vv, dov, ov) = (qv?, kv?, vv?, dov?, ov?);
    let (lv, sv) = (lh.view::<f32>()?, st.view::<u32>()?);
    // SAFETY: row_dot writes every row's value; backward_kv every element of dk and dv (rows of
    // keys no query sees as 0), backward_q every element of dq.
    let (dot, dq, dk, dv) = unsafe {
        (
            dev.alloc::<f32>(rows)?,
            dev.alloc::<bf16>(dims.q_elems())?,
            dev.alloc::<bf16>(dims.kv_elems())?,
            dev.alloc::<bf16>(dims.kv_elems())?,
        )
    };
    let func = dev.get_or_load_custom_func(&dims.entry("row_dot"), FLASH.0, FLASH.1)?;
    let mut b = func.builder();
    b.arg(&dov).arg(&ov).arg(&dot).arg(&rows);
    // A warp a row, 8 rows a block.
    // SAFETY: the arguments match flash_attention_row_dot in flash_attention.cu.
    unsafe { b.launch(shape(rows.div_ceil(8), 256)) }.w()?;
    let dv_ = dot.as_view();
    let ints = dims.ints()?;
    let tiles = dims.seq.div_ceil(BACKWARD_ROWS);
    // Both read the same inputs: backward_kv writes dk and dv, a block per key tile of a kv
    // head; backward_q writes dq, a block per query tile of a head.
    for (kernel, outputs, heads) in [
        ("bwd_kv", vec![&dk, &dv], dims.kv_heads),
        ("bwd_q", vec![&dq], dims.heads),
    ] {
        let func = dev.get_or_load_custom_func(&dims.entry(kernel), FLASH.0, FLASH.1)?;
        let mut b = func.builder();
        for input in [&qv, &kv, &vv, &dov] {
            b.arg(input);
        }
        b.arg(&lv).arg(&dv_).arg(&sv);
        for output in outputs {
            b.arg(output);
        }
        for x in &ints {
            b.arg(x);
        }
        b.arg(&scale);
        let blocks = dims.batch * heads * tiles;
        // SAFETY: the arguments match flash_attention_bwd_kv and flash_attention_bwd_q in
        // flash_attention.cu.
        unsafe { b.launch(dims.launch(blocks, 64)) }.w()?;
    }
    let wrap = |s| bf16::wrap_cuda_slice(s, dev.clone());
    Ok((
        tensor(wrap(dq), q.shape().clone()),
        tensor(wrap(dk), k.shape().clone()),
        tensor(wrap(dv), v.shape().clone()),
    ))
}
