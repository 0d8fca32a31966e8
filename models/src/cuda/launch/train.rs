//! Launches of `train.cu`: RMSNorm, SwiGLU and RoPE with their backward, the attention
//! softmax of a chunk and its backward, the loss's cross-entropy, the AdamW step.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Tensor};

use super::*;
use crate::cuda::{AdamWStep, ScoreChunk};

pub(in crate::cuda) fn rms_norm_fwd(x: In, w: In, eps: f32) -> Result<CudaStorage> {
    fn go<T: Element>(x: In, w: In, eps: f32) -> Result<CudaStorage> {
        let dev = x.0.device();
        let (rows, dim) = rows_dim(x.1)?;
        if w.1.shape().elem_count() != dim {
            candle_core::bail!(
                "rms_norm: weight of {} for rows of {dim}",
                w.1.shape().elem_count()
            );
        }
        let (xv, wv) = (view::<T>(x)?, view::<T>(w)?);
        // SAFETY: every element is written by the kernel.
        let y = unsafe { dev.alloc::<T>(rows * dim)? };
        let (rows_i, dim_i) = (i32_of(rows, "rows")?, i32_of(dim, "row length")?);
        let func = kernel!(dev, TRAIN, T, "rms_norm_fwd")?;
        let mut b = func.builder();
        b.arg(&xv)
            .arg(&wv)
            .arg(&y)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(shape(rows, row_threads(dim))) }.w()?;
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    }
    by_dtype!(x.0.dtype(), go(x, w, eps))
}

pub(in crate::cuda) fn rms_norm_bwd(
    xs: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    fn go<T: Element>(x: In, w: In, g: In, eps: f32) -> Result<(CudaStorage, CudaStorage)> {
        let dev = x.0.device();
        let (rows, dim) = rows_dim(x.1)?;
        let (xv, wv, gv) = (view::<T>(x)?, view::<T>(w)?, view::<T>(g)?);
        let blocks = rows.clamp(1, NORM_GRAD_BLOCKS);
        // SAFETY: the kernels write every element of both (each block zeroes its partial row).
        let (dx, partial, dw) = unsafe {
            (
                dev.alloc::<T>(rows * dim)?,
                dev.alloc::<f32>(blocks * dim)?,
                dev.alloc::<T>(dim)?,
            )
        };
        let (rows_i, dim_i, blocks_i) = (
            i32_of(rows, "rows")?,
            i32_of(dim, "row length")?,
            blocks as i32,
        );
        let func = kernel!(dev, TRAIN, T, "rms_norm_bwd")?;
        let mut b = func.builder();
        b.arg(&xv).arg(&wv).arg(&gv).arg(&dx).arg(&partial);
        b.arg(&rows_i).arg(&dim_i).arg(&eps);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(shape(blocks, row_threads(dim))) }.w()?;
        let func = kernel!(dev, TRAIN, T, "sum_partials")?;
        let mut b = func.builder();
        b.arg(&partial).arg(&dw).arg(&blocks_i).arg(&dim_i);
        // SAFETY: as above.
        unsafe { b.launch(elementwise(dim)) }.w()?;
        Ok((
            T::wrap_cuda_slice(dx, dev.clone()),
            T::wrap_cuda_slice(dw, dev.clone()),
        ))
    }
    let (dx, dw) = with_storage(xs, |x| {
        with_storage(weight, |w| {
            with_storage(grad, |g| by_dtype!(x.0.dtype(), go(x, w, g, eps)))
        })
    })?;
    Ok((tensor(dx, xs.shape()), tensor(dw, weight.shape())))
}

pub(in crate::cuda) fn swiglu_fwd(g: In, u: In) -> Result<CudaStorage> {
    fn go<T: Element>(g: In, u: In) -> Result<CudaStorage> {
        let dev = g.0.device();
        let n = g.1.shape().elem_count();
        let (gv, uv) = (view::<T>(g)?, view::<T>(u)?);
        // SAFETY: every element is written by the kernel.
        let y = unsafe { dev.alloc::<T>(n)? };
        let func = kernel!(dev, TRAIN, T, "swiglu_fwd")?;
        let mut b = func.builder();
        b.arg(&gv).arg(&uv).arg(&y).arg(&n);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    }
    by_dtype!(g.0.dtype(), go(g, u))
}

pub(in crate::cuda) fn swiglu_bwd(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    fn go<T: Element>(g: In, u: In, d: In) -> Result<(CudaStorage, CudaStorage)> {
        let dev = g.0.device();
        let n = g.1.shape().elem_count();
        let (gv, uv, dv) = (view::<T>(g)?, view::<T>(u)?, view::<T>(d)?);
        // SAFETY: every element of both is written by the kernel.
        let (dg, du) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
        let func = kernel!(dev, TRAIN, T, "swiglu_bwd")?;
        let mut b = func.builder();
        b.arg(&gv).arg(&uv).arg(&dv).arg(&dg).arg(&du).arg(&n);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok((
            T::wrap_cuda_slice(dg, dev.clone()),
            T::wrap_cuda_slice(du, dev.clone()),
        ))
    }
    let (dg, du) = with_storage(gate, |g| {
        with_storage(up, |u| {
            with_storage(grad, |d| by_dtype!(g.0.dtype(), go(g, u, d)))
        })
    })?;
    Ok((tensor(dg, gate.shape()), tensor(du, up.shape())))
}

pub(in crate::cuda) fn rope(x: In, cos: In, sin: In, sign: f32) -> Result<CudaStorage> {
    fn go<T: Element>(x: In, cos: In, sin: In, sign: f32) -> Result<CudaStorage> {
        let dev = x.0.device();
        let &[b, h, s, d] = x.1.dims() else {
            candle_core::bail!(
                "rope: q/k of shape {:?}, not [batch, heads, seq, dim]",
                x.1.dims()
            );
        };
        for table in [cos.1, sin.1] {
            if table.dims() != [b, s, d / 2] || d % 2 != 0 {
                candle_core::bail!(
                    "rope: tables of shape {:?} for q/k of shape {:?}",
                    table.dims(),
                    x.1.dims()
                );
            }
        }
        let (xv, cv, sv) = (view::<T>(x)?, view::<T>(cos)?, view::<T>(sin)?);
        let n = b * h * s * d;
        // SAFETY: every element is written by the kernel (a thread per rotated pair).
        let y = unsafe { dev.alloc::<T>(n)? };
        let dims = [
            i32_of(b, "batch")?,
            i32_of(h, "heads")?,
            i32_of(s, "sequence")?,
            i32_of(d, "head dim")?,
        ];
        let func = kernel!(dev, TRAIN, T, "rope")?;
        let mut launch = func.builder();
        launch.arg(&xv).arg(&cv).arg(&sv).arg(&y);
        launch
            .arg(&dims[0])
            .arg(&dims[1])
            .arg(&dims[2])
            .arg(&dims[3])
            .arg(&sign);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { launch.launch(elementwise(n / 2)) }.w()?;
        Ok(T::wrap_cuda_slice(y, dev.clone()))
    }
    by_dtype!(x.0.dtype(), go(x, cos, sin, sign))
}

/// [`rope`] on tensors (the backward's rotation of the incoming gradient).
pub(in crate::cuda) fn rope_tensor(
    xs: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    sign: f32,
) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let y = with_storage(xs, |x| {
        with_storage(&cos, |c| with_storage(&sin, |s| rope(x, c, s, sign)))
    })?;
    Ok(tensor(y, xs.shape()))
}

/// The geometry of a chunk of scores as the kernels take it: rows in all, keys, batch, seq.
fn score_geometry(scores: &Tensor, starts: &Tensor, chunk: ScoreChunk) -> Result<[usize; 4]> {
    let dims = scores.dims();
    let (&keys, &batch) = (dims.last().unwrap_or(&0), dims.first().unwrap_or(&0));
    let (sb, seq) = starts.dims2()?;
    let total = scores.elem_count() / keys.max(1);
    if keys == 0
        || sb != batch
        || total != batch * chunk.groups * chunk.rows
        || chunk.q0 + chunk.rows > seq
        || chunk.k0 + keys != chunk.q0 + chunk.rows
        || starts.dtype() != DType::U32
    {
        candle_core::bail!(
            "attention softmax: scores {dims:?}, starts {:?} and chunk {chunk:?} do not match",
            starts.dims()
        );
    }
    Ok([total, keys, batch, seq])
}

/// The kernels' int arguments after the buffers: groups, rows, keys, seq, q0, k0.
fn chunk_ints(c: &ScoreChunk, keys: usize, seq: usize) -> Result<[i32; 6]> {
    let mut ints = [0i32; 6];
    for (slot, x) in ints
        .iter_mut()
        .zip([c.groups, c.rows, keys, seq, c.q0, c.k0])
    {
        *slot = i32_of(x, "attention dimension")?;
    }
    Ok(ints)
}

pub(in crate::cuda) fn attention_softmax(
    scores: &Tensor,
    starts: &Tensor,
    chunk: ScoreChunk,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    fn go<T: Element>(
        s: In,
        st: In,
        [total, keys, _, seq]: [usize; 4],
        c: ScoreChunk,
        scale: f32,
    ) -> Result<(CudaStorage, CudaStorage)> {
        let dev = s.0.device();
        let (sv, stv) = (view::<T>(s)?, view::<u32>(st)?);
        // SAFETY: the kernel writes every probability and every row's log-sum-exp.
        let (probs, lse) = unsafe { (dev.alloc::<T>(total * keys)?, dev.alloc::<f32>(total)?) };
        let ints = chunk_ints(&c, keys, seq)?;
        let func = kernel!(dev, TRAIN, T, "attention_softmax")?;
        let mut b = func.builder();
        b.arg(&sv).arg(&stv).arg(&probs).arg(&lse).arg(&total);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&scale);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(shape(total, row_threads(keys))) }.w()?;
        Ok((
            T::wrap_cuda_slice(probs, dev.clone()),
            f32::wrap_cuda_slice(lse, dev.clone()),
        ))
    }
    let geometry = score_geometry(scores, starts, chunk)?;
    let (probs, lse) = with_storage(scores, |s| {
        with_storage(starts, |st| {
            by_dtype!(s.0.dtype(), go(s, st, geometry, chunk, scale))
        })
    })?;
    let mut lse_shape = scores.dims().to_vec();
    *lse_shape.last_mut().expect("scores have dimensions") = 1;
    Ok((tensor(probs, scores.shape()), tensor(lse, lse_shape)))
}

pub(in crate::cuda) fn attention_softmax_bwd(
    scores: &Tensor,
    dprobs: &Tensor,
    lse: &Tensor,
    row_dot: &Tensor,
    starts: &Tensor,
    chunk: ScoreChunk,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    #[allow(clippy::too_many_arguments)]
    fn go<T: Element>(
        s: In,
        dp: In,
        lse: In,
        dot: In,
        st: In,
        [total, keys, _, seq]: [usize; 4],
        c: ScoreChunk,
        scale: f32,
    ) -> Result<(CudaStorage, CudaStorage)> {
        let dev = s.0.device();
        let (sv, dpv) = (view::<T>(s)?, view::<T>(dp)?);
        let (lv, dv, stv) = (view::<f32>(lse)?, view::<f32>(dot)?, view::<u32>(st)?);
        // SAFETY: the kernel writes every element of both.
        let (probs, dscores) =
            unsafe { (dev.alloc::<T>(total * keys)?, dev.alloc::<T>(total * keys)?) };
        let ints = chunk_ints(&c, keys, seq)?;
        let func = kernel!(dev, TRAIN, T, "attention_softmax_bwd")?;
        let mut b = func.builder();
        b.arg(&sv).arg(&dpv).arg(&lv).arg(&dv).arg(&stv);
        b.arg(&probs).arg(&dscores).arg(&total);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&scale);
        // SAFETY: the arguments match the kernel's signature in train.cu.
        unsafe { b.launch(shape(total, row_threads(keys))) }.w()?;
        Ok((
            T::wrap_cuda_slice(probs, dev.clone()),
            T::wrap_cuda_slice(dscores, dev.clone()),
        ))
    }
    let geometry = score_geometry(scores, starts, chunk)?;
    let rows = geometry[0];
    for (what, t) in [("log-sum-exps", lse), ("row dots", row_dot)] {
        if t.elem_count() != rows || t.dtype() != DType::F32 {
            candle_core::bail!("attention softmax backward: {what} are not {rows} f32 values");
        }
    }
    if dprobs.dims() != scores.dims() || dprobs.dtype() != scores.dtype() {
        candle_core::bail!("attention softmax backward: dP does not match the scores");
    }
    let (probs, dscores) = with_storage(scores, |s| {
        with_storage(dprobs, |dp| {
            with_storage(lse, |l| {
                with_storage(row_dot, |d| {
                    with_storage(starts, |st| {
                        by_dtype!(s.0.dtype(), go(s, dp, l, d, st, geometry, chunk, scale))
                    })
                })
            })
        })
    })?;
    Ok((
        tensor(probs, scores.shape()),
        tensor(dscores, scores.shape()),
    ))
}

pub(in crate::cuda) fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    scale: f32,
    want_grad: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    fn go<T: Element>(
        l: In,
        t: In,
        scale: f32,
        want_grad: bool,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        let dev = l.0.device();
        let (rows, vocab) = rows_dim(l.1)?;
        if t.1.shape().elem_count() != rows {
            candle_core::bail!(
                "cross_entropy: {} targets for {rows} rows",
                t.1.shape().elem_count()
            );
        }
        let lv = view::<T>(l)?;
        let tv = view::<u32>(t)?;
        // SAFETY: the kernel writes every loss, and every gradient element when asked.
        let loss = unsafe { dev.alloc::<f32>(rows)? };
        let grad = if want_grad {
            Some(unsafe { dev.alloc::<T>(rows * vocab)? })
        } else {
            None
        };
        let (rows_i, vocab_i, want) = (
            i32_of(rows, "rows")?,
            i32_of(vocab, "vocabulary")?,
            want_grad as i32,
        );
        let func = kernel!(dev, TRAIN, T, "cross_entropy")?;
        {
            let mut b = func.builder();
            b.arg(&lv).arg(&tv).arg(&loss);
            // Without a gradient the kernel never touches its gradient buffer; the logits
            // stand in for it.
            match &grad {
                Some(g) => b.arg(g),
                None => b.arg(&lv),
            };
            b.arg(&rows_i).arg(&vocab_i).arg(&scale).arg(&want);
            // SAFETY: the arguments match the kernel's signature in train.cu.
            unsafe { b.launch(shape(rows, THREADS)) }.w()?;
        }
        Ok((
            f32::wrap_cuda_slice(loss, dev.clone()),
            grad.map(|g| T::wrap_cuda_slice(g, dev.clone())),
        ))
    }
    if targets.dtype() != DType::U32 {
        candle_core::bail!(
            "cross_entropy: targets must be u32, not {:?}",
            targets.dtype()
        );
    }
    let (loss, grad) = with_storage(logits, |l| {
        with_storage(targets, |t| {
            by_dtype!(l.0.dtype(), go(l, t, scale, want_grad))
        })
    })?;
    let rows = targets.elem_count();
    Ok((tensor(loss, rows), grad.map(|g| tensor(g, logits.shape()))))
}

pub(in crate::cuda) fn adamw_step(
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamWStep,
    decay: bool,
) -> Result<()> {
    let n = param.elem_count();
    for (what, t) in [
        ("first moment", m),
        ("second moment", v),
        ("gradient", grad),
    ] {
        if t.elem_count() != n || !t.is_contiguous() {
            candle_core::bail!("adamw: the {what} is not a contiguous tensor of {n} elements");
        }
    }
    if grad.dtype() != DType::F32 || m.dtype() != param.dtype() || v.dtype() != param.dtype() {
        candle_core::bail!("adamw: moments in the parameter's dtype and an f32 gradient expected");
    }
    param.inplace_op1(&AdamW {
        m,
        v,
        grad,
        step: *step,
        decay,
    })
}

/// The step as an in-place op on the parameter; the moments are written through their own
/// (unshared) buffers in the same launch.
struct AdamW<'a> {
    m: &'a Tensor,
    v: &'a Tensor,
    grad: &'a Tensor,
    step: AdamWStep,
    decay: bool,
}

impl candle_core::InplaceOp1 for AdamW<'_> {
    fn name(&self) -> &'static str {
        "cuda-adamw"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("cuda-adamw runs on CUDA parameters only")
    }

    fn cuda_fwd(&self, param: &mut CudaStorage, layout: &Layout) -> Result<()> {
        fn go<T: Element>(op: &AdamW, param: &mut CudaStorage, layout: &Layout) -> Result<()> {
            let dev = param.device().clone();
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("adamw: the parameter is not contiguous");
            };
            let n = end - start;
            let k = &op.step;
            let decay = if op.decay { k.decay_factor } else { 1.0 };
            with_storage(op.m, |m| {
                with_storage(op.v, |v| {
                    with_storage(op.grad, |g| {
                        let (mv, vv, gv) = (view::<T>(m)?, view::<T>(v)?, view::<f32>(g)?);
                        let mut pv = param.as_cuda_slice_mut::<T>()?.slice_mut(start..end);
                        let func = kernel!(dev, TRAIN, T, "adamw")?;
                        let mut b = func.builder();
                        b.arg(&mut pv)
                            .arg(&mv)
                            .arg(&vv)
                            .arg(&gv)
                            .arg(&n)
                            .arg(&decay);
                        b.arg(&k.one_minus_beta1)
                            .arg(&k.beta2)
                            .arg(&k.one_minus_beta2)
                            .arg(&k.step_size)
                            .arg(&k.bias2_sqrt)
                            .arg(&k.eps)
                            .arg(&k.grad_scale);
                        // SAFETY: the arguments match the kernel's signature in train.cu; the
                        // moments belong to this parameter alone, so writing them is safe.
                        unsafe { b.launch(elementwise(n)) }.w()?;
                        Ok(())
                    })
                })
            })
        }
        by_dtype!(param.dtype(), go(self, param, layout))
    }
}
