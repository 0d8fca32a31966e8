//! CUDA kernels for NVIDIA GPUs. For training, each one graph node with an analytic backward:
//! RMSNorm, RoPE and SwiGLU ([`rms_norm`], [`rope`], [`swiglu`]) and causal, document-masked
//! attention on tensor cores ([`flash_attention`], bf16, for `crate::chunked_attention`); and
//! some used outside the graph: the masked softmax of a chunk of attention scores and its
//! backward ([`attention_softmax`], [`attention_softmax_bwd`], the chunked path where flash
//! attention does not run), the cross-entropy of a chunk of logit rows with its gradient
//! ([`cross_entropy`], for the student's chunked loss) and the AdamW step in place
//! ([`adamw_step`]). For generation, [`set_rows`] (a step's new keys and values into their
//! blocks of the paged KV pool, one launch), [`decode_attention`] (every sequence that decodes
//! one token attends its history in the pool through its block table, one launch per layer) and
//! [`sample`] (greedy, temperature, top-k and top-p sampling on the device, only the ids read
//! back); and [`top_k`], each row's largest logits (logit distillation's teacher targets).
//!
//! Why: on a GPU the composed forms of these ops are several launches each, every one reading
//! and writing a full activation-sized tensor and keeping its temporaries alive until backward
//! (a bf16 RMSNorm is an f32 copy, a square, a mean, a division, a cast and a product); AdamW
//! as tensor ops is about ten launches and temporaries per parameter, and the loss's
//! `chunk × vocab` softmax passes over a 151k vocabulary are nine; a chunk of attention's
//! scaled, masked softmax is about fifteen launches over f32 copies of the scores, its backward
//! ten more.
//!
//! The CUDA C is `train.cu`, `generate.cu` and `flash_attention.cu` (sharing `common.cuh`),
//! compiled to PTX at build time (`models/build.rs`) and loaded into candle's device on first
//! use. [`crate::ops`] and the student's loss and optimizer choose these kernels where
//! [`supported`] says so, before candle's composed ops; `DISTILL_CUDA_KERNELS=0` (or
//! [`set_enabled`]) turns them off, which leaves the composed ops as the reference they are
//! checked against on a GPU (`distill check-device`); `DISTILL_FLASH_ATTENTION=0` turns off
//! flash attention alone. On the CPU, `tests/cuda_kernels.rs` and `tests/flash_attention.rs`
//! run the `.cu` files themselves through an emulation of CUDA's threads against the composed
//! ops (flash attention against attention's closed form; the pool writes, decode attention, sampling and top-k against plain
//! definitions).

// Without the `cuda` feature the ops' arguments and fields only reach `on_gpu!`'s error.
#![cfg_attr(not(feature = "cuda"), allow(unused_variables, dead_code))]

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use crate::recompute::ComputedOutput;

#[cfg(feature = "cuda")]
mod launch;

/// The scalars of one AdamW step, in f32 as PyTorch's kernels use them (`torch.optim.AdamW`,
/// single-tensor path): `p *= decay_factor` (for parameters that decay), `m += (g − m)(1 − β1)`,
/// `v = β2·v + (1 − β2)·g²`, `p −= step_size · m / (√v / bias2_sqrt + eps)`, with the gradient
/// read as `g · grad_scale` (the clipping factor).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub decay_factor: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub step_size: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
    pub grad_scale: f32,
}

/// A process-wide on/off setting, read from an environment variable on first use (`0` turns it
/// off) unless set first.
struct Switch {
    /// 0: not read yet; 1: on; 2: off.
    state: AtomicU8,
    var: &'static str,
}

impl Switch {
    const fn new(var: &'static str) -> Self {
        Self {
            state: AtomicU8::new(0),
            var,
        }
    }

    fn get(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let on = std::env::var(self.var).map_or(true, |v| v != "0");
                self.set(on);
                on
            }
            state => state == 1,
        }
    }

    fn set(&self, on: bool) {
        self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }
}

static KERNELS: Switch = Switch::new("DISTILL_CUDA_KERNELS");
static FLASH_ATTENTION: Switch = Switch::new("DISTILL_FLASH_ATTENTION");

/// Whether the kernels are on: `DISTILL_CUDA_KERNELS=0` turns them off, unless
/// [`set_enabled`] said otherwise.
pub fn enabled() -> bool {
    KERNELS.get()
}

/// Turns the kernels on or off for the rest of the process (the GPU check compares both).
pub fn set_enabled(on: bool) {
    KERNELS.set(on)
}

/// Whether [`flash_attention`] is on (with the kernels): `DISTILL_FLASH_ATTENTION=0` leaves
/// training attention to `crate::chunked_attention`'s chunked matmuls, unless
/// [`set_flash_attention`] said otherwise.
pub fn flash_attention_enabled() -> bool {
    FLASH_ATTENTION.get()
}

/// Turns [`flash_attention`] on or off for the rest of the process (the GPU check times both).
pub fn set_flash_attention(on: bool) {
    FLASH_ATTENTION.set(on)
}

/// Whether [`flash_attention`] takes attention over heads of `head_dim` in `dtype` on `device`:
/// the kernels run there ([`runs_on`]) and are [`flash_attention_enabled`], bf16 (tensor cores
/// multiply 16-bit inputs), head dim 64 or 128 (Qwen2.5, Qwen3, Llama 3, SmolLM2), and the
/// kernels were compiled for compute capability 8.0 or later (bf16 tensor-core tiles; the
/// default build's).
pub fn flash_attention_runs(device: &Device, dtype: DType, head_dim: usize) -> bool {
    let tensor_cores = option_env!("DISTILL_CUDA_COMPUTE_CAP")
        .and_then(|cap| cap.parse::<u32>().ok())
        .is_some_and(|cap| cap >= 80);
    runs_on(device, dtype)
        && dtype == DType::BF16
        && matches!(head_dim, 64 | 128)
        && tensor_cores
        && flash_attention_enabled()
}

/// Whether the kernels run on `device` in `dtype`: a CUDA device in a binary built with the
/// `cuda` feature, f32 or bf16, the kernels [`enabled`]. Memory estimates ask this before any
/// tensor exists.
pub fn runs_on(device: &Device, dtype: DType) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16)
        && enabled()
}

/// Whether the kernels can run on `t` ([`runs_on`] its device and dtype).
pub fn supported(t: &Tensor) -> bool {
    runs_on(t.device(), t.dtype())
}

/// Whether the kernels can run on all of `ts` together: [`supported`], one dtype, one device.
pub fn supported_all(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    supported(first)
        && ts
            .iter()
            .all(|t| t.dtype() == first.dtype() && t.device().same_device(first.device()))
}

/// Runs `$e` (built from [`launch`]) in a CUDA build; without one no op here can have been
/// chosen, since [`supported`] is false.
macro_rules! on_gpu {
    ($e:expr) => {{
        #[cfg(feature = "cuda")]
        {
            $e
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(candle_core::Error::Msg(
                "distill was built without the cuda feature".into(),
            ))
        }
    }};
}

/// RMSNorm over the last dimension, `weight · x / sqrt(mean(x²) + eps)` as transformers
/// computes it (the normalised value rounded to the storage type before the weight multiplies
/// it); differentiable in both inputs. CUDA tensors of one dtype.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// RoPE in transformers' `rotate_half` layout: `xs` `[batch, heads, seq, head_dim]`, `cos` and
/// `sin` `[batch, seq, head_dim / 2]` (constants: no gradient flows to them).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

/// `silu(gate) · up`; differentiable in both inputs.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Where one chunk of attention scores lies (see `crate::chunked_attention`): the scores are
/// `[batch, groups, rows, keys]` (groups: kv heads × query heads per kv head), row `r` of a
/// group is query position `q0 + r`, key `j` is position `k0 + j`.
#[derive(Clone, Copy, Debug)]
pub struct ScoreChunk {
    pub groups: usize,
    pub rows: usize,
    pub q0: usize,
    pub k0: usize,
}

/// The causal, document-masked softmax of `scale · scores` for one chunk of raw scores (q·kᵀ in
/// the compute dtype; `starts` `[batch, seq]` u32 holds each position's document start): the
/// probabilities in the scores' dtype (hidden keys exactly 0) and each row's log-sum-exp (f32,
/// the scores' shape with one key). Not part of any graph.
pub fn attention_softmax(
    scores: &Tensor,
    starts: &Tensor,
    chunk: ScoreChunk,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    on_gpu!(launch::attention_softmax(
        &scores.contiguous()?,
        &starts.contiguous()?,
        chunk,
        scale
    ))
}

/// The backward of [`attention_softmax`] for one chunk: from the recomputed raw scores, the
/// probabilities' gradient `dprobs` (dO·Vᵀ), the forward's log-sum-exps and each row's
/// `Σ dO ∘ O` (f32), the probabilities again and the raw scores' gradient
/// `scale · P ∘ (dP − row_dot)`, both in the scores' dtype.
pub fn attention_softmax_bwd(
    scores: &Tensor,
    dprobs: &Tensor,
    lse: &Tensor,
    row_dot: &Tensor,
    starts: &Tensor,
    chunk: ScoreChunk,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    on_gpu!(launch::attention_softmax_bwd(
        &scores.contiguous()?,
        &dprobs.contiguous()?,
        &lse.contiguous()?,
        &row_dot.contiguous()?,
        &starts.contiguous()?,
        chunk,
        scale
    ))
}

/// Causal, document-masked, grouped-query attention in one forward launch and three backward
/// launches (`flash_attention.cu`): `softmax(q·kᵀ · scale + mask) · v` for rotated `q`
/// `[batch, heads, seq, d]` and `k`, `v` `[batch, kv_heads, seq, d]` (not repeated), where
/// query i sees key j iff `starts[b, i] ≤ j ≤ i` (`starts` `[batch, seq]` u32: each position's
/// document start). Keeps only the output and a log-sum-exp per query row for backward, never a
/// score tensor. Differentiable in q, k and v; see [`flash_attention_runs`] for what it takes.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (out, lse) = on_gpu!(launch::flash_attention(
        &q.detach(),
        &k.detach(),
        &v.detach(),
        starts,
        scale as f32
    ))?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let op = FlashAttention {
        output: ComputedOutput::new(out),
        lse,
        starts: starts.clone(),
        scale: scale as f32,
    };
    q.apply_op3(k, v, op)
}

/// Whether [`decode_attention`] takes a model's heads: head dim a multiple of 32 up to 256 and at
/// most 8 query heads per kv head (every Qwen2.5, Qwen3 and Llama 3.x configuration).
pub fn decode_attention_fits(heads: usize, kv_heads: usize, head_dim: usize) -> bool {
    kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && heads / kv_heads <= 8
        && head_dim.is_multiple_of(32)
        && (32..=256).contains(&head_dim)
}

/// Attention of the sequences that decode one token over their own histories in the paged KV
/// pool, one launch per layer: `q` `[m, heads, head_dim]`, the pool's `keys`/`values` `[blocks,
/// kv_heads, block, head_dim]` (contiguous), each row's blocks in position order (u32 `[m,
/// width]`, padded past its last block) and visible keys (u32 `[m]`: its history and the new
/// key). Returns `[m, heads × head_dim]`. Not part of any graph.
pub fn decode_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    tables: &Tensor,
    lengths: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    on_gpu!(launch::decode_attention(
        &q.contiguous()?,
        keys,
        values,
        &tables.contiguous()?,
        &lengths.contiguous()?,
        scale
    ))
}

/// Writes row `r` of `src` (`[rows, d]`) over row `targets[r]` (u32 `[rows]`, all distinct) of
/// `dst` viewed as `[*, d]`, in place, in one launch: a step's new keys or values into their KV
/// pool blocks. Not part of any graph.
pub fn set_rows(dst: &Tensor, targets: &Tensor, src: &Tensor) -> Result<()> {
    on_gpu!(launch::set_rows(dst, targets, &src.contiguous()?))
}

/// One token for each row of `logits` (`[rows, vocab]`) at its temperature, top-k (0: off) and
/// top-p, from its uniform draw in `[0, 1)`: the host sampler's candidates (the k most likely,
/// ties to the lower id) and nucleus among them (most likely first, ties to the lower id)
/// walked in id order; at temperature ≤ 0 the arg-max (lowest id first; its draw unused).
/// Only the ids cross to the host. Not part of any graph.
pub fn sample(
    logits: &Tensor,
    temperature: &[f32],
    top_p: &[f32],
    top_k: &[u32],
    uniform: &[f32],
) -> Result<Vec<u32>> {
    on_gpu!(launch::sample(
        &logits.contiguous()?,
        temperature,
        top_p,
        top_k,
        uniform
    ))
}

/// The most ids [`top_k`] returns per row.
pub const TOP_K_MAX: usize = 32;

/// The ids of each row's `k` (1..=[`TOP_K_MAX`], at most the row's length) largest logits,
/// `[rows, vocab]` → `[rows, k]` u32, largest first, ties to the lower id (the ranking of
/// [`crate::ops::top_k_ids`]), NaN ranking as −∞. One pass over each row. Not part of any
/// graph.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Tensor> {
    on_gpu!(launch::top_k(&logits.contiguous()?, k))
}

/// For each row of `logits` (`[rows, vocab]`) and its target: the loss
/// `logsumexp(row) − row[target]` (f32, `[rows]`), and with `want_grad` the gradient
/// `scale · (softmax(row) − one_hot(target))` in the logits' dtype. Not part of any graph.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    scale: f32,
    want_grad: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    on_gpu!(launch::cross_entropy(
        &logits.contiguous()?,
        &targets.contiguous()?,
        scale,
        want_grad
    ))
}

/// One AdamW step in place: `param` and its moments `m`, `v` (one dtype, contiguous, not shared
/// with other tensors) from the f32 gradient `grad`; `decay` says whether the parameter decays.
pub fn adamw_step(
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamWStep,
    decay: bool,
) -> Result<()> {
    on_gpu!(launch::adamw_step(param, m, v, grad, step, decay))
}

fn not_on_cpu(op: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{op} is a CUDA kernel; the CPU takes crate::fused or the composed ops")
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cuda-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            launch::rms_norm_fwd((x, lx), (w, lw), self.eps)?,
            lx.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = on_gpu!(launch::rms_norm_bwd(
            xs,
            weight,
            &grad.contiguous()?,
            self.eps
        ))?;
        Ok((Some(dx), Some(dw)))
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "cuda-swiglu"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        lg: &Layout,
        u: &candle_core::CudaStorage,
        lu: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((launch::swiglu_fwd((g, lg), (u, lu))?, lg.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = on_gpu!(launch::swiglu_bwd(gate, up, &grad.contiguous()?))?;
        Ok((Some(dg), Some(du)))
    }
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cuda-rope"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        cos: &candle_core::CudaStorage,
        lc: &Layout,
        sin: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            launch::rope((x, lx), (cos, lc), (sin, ls), 1.0)?,
            lx.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation's transpose is the rotation by the negated angle.
        let dx = on_gpu!(launch::rope_tensor(&grad.contiguous()?, cos, sin, -1.0))?;
        Ok((Some(dx), None, None))
    }
}

/// The graph node of a tracked [`flash_attention`]: its forward hands over the kernel's output;
/// its backward runs the backward kernels from the kept log-sum-exps.
struct FlashAttention {
    output: ComputedOutput,
    lse: Tensor,
    starts: Tensor,
    scale: f32,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "cuda-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        not_on_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda(self.name())
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = on_gpu!(launch::flash_attention_bwd(
            &q.detach(),
            &k.detach(),
            &v.detach(),
            &out.detach(),
            &grad.to_dtype(q.dtype())?,
            &self.lse,
            &self.starts,
            self.scale
        ))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
