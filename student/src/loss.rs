//! Token-level cross-entropy over the LM head, computed in chunks of positions so the
//! `positions × vocab` logits matrix never exists at once (a 151k-vocab student at 16k tokens
//! would need ~10 GB for it).
//!
//! Why not sum per-chunk candle losses into one graph: candle keeps every chunk's logits (and the
//! softmax intermediates) alive until `backward`, which is the full matrix again, several times
//! over. Instead [`chunked_cross_entropy`] computes the loss *and* its gradients with respect to
//! the hidden states and the head in one pass (logits → softmax − one-hot → two matmuls, per
//! chunk, reusing one `chunk × vocab` buffer), and injects them into the graph with a custom op
//! whose backward returns the stored gradients. That is three matmuls per chunk, the same as an
//! ordinary forward + backward through the head, with no recomputation.
//!
//! The loss is a *sum* over labelled positions times `scale`: the trainer passes
//! `1 / label tokens of the whole optimizer step`, so micro-batch gradients add up to exactly the
//! gradient of the mean over the accumulated batch.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};
use distill_models::cuda;
use rayon::prelude::*;

use crate::batch::IGNORE;
use crate::{Error, Result};

/// Flattened positions that carry a label and their target ids, for labels of a `[rows, len]`
/// batch flattened row-major. Labels must be `IGNORE` or a valid token id.
pub fn label_targets(labels: &[i64], vocab_size: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if l == IGNORE {
            continue;
        }
        if l < 0 || l as usize >= vocab_size {
            return Err(Error::Batch(format!(
                "label `{l}` at position {i} is neither `{IGNORE}` nor a token id below the vocabulary size `{vocab_size}`"
            )));
        }
        positions.push(i as u32);
        targets.push(l as u32);
    }
    Ok((positions, targets))
}

/// `scale × Σ −log softmax(hidden · weightᵀ)[target]` over the rows of `hidden` (`[n, h]`)
/// against `weight` (`[vocab, h]`), `chunk` rows at a time. Differentiable with respect to both
/// inputs when either is tracked; the result is a scalar f32 tensor.
pub fn chunked_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    scale: f64,
    chunk: usize,
) -> Result<Tensor> {
    let (n, h) = hidden.dims2()?;
    let (v, hw) = weight.dims2()?;
    if hw != h || targets.len() != n {
        return Err(Error::Batch(format!(
            "loss inputs disagree: hidden `[{n}, {h}]`, head `[{v}, {hw}]`, {} targets",
            targets.len()
        )));
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Batch(format!(
            "target `{t}` is outside the vocabulary (size `{v}`)"
        )));
    }
    if !hidden.device().is_cpu() || hidden.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        // The fused path reads CPU f32 buffers; other devices and dtypes chunk with tensor ops.
        return chunked_cross_entropy_tensors(hidden, weight, targets, scale, chunk);
    }
    let want_grads = hidden.track_op() || weight.track_op();
    let hidden_c = hidden.detach().contiguous()?;
    let weight_c = weight.detach().contiguous()?;
    let out = {
        let (hs, hl) = hidden_c.storage_and_layout();
        let (ws, wl) = weight_c.storage_and_layout();
        let hsl = f32_slice(&hs, hl)?;
        let wsl = f32_slice(&ws, wl)?;
        fused_head_loss(
            hsl,
            wsl,
            targets,
            h,
            v,
            scale as f32,
            chunk.max(1),
            want_grads,
        )
    };
    if !want_grads {
        return Ok(Tensor::new(out.loss, hidden.device())?);
    }
    let dev = hidden.device();
    let dh = Tensor::from_vec(out.d_hidden, (n, h), dev)?;
    let dw = Tensor::from_vec(out.d_weight, (v, h), dev)?;
    Ok(hidden.apply_op2_arc(
        weight,
        std::sync::Arc::new(Box::new(InjectGrads {
            loss: out.loss,
            d_hidden: dh,
            d_weight: dw,
        })),
    )?)
}

/// [`chunked_cross_entropy`] with candle tensor ops, for any device and dtype: per chunk, logits
/// in the compute dtype, softmax and loss in f32, and `softmax − one-hot` multiplied back into
/// the gradients of the hidden states and of the head (accumulated in f32). Only one
/// `chunk × vocab` block exists at a time, and nothing is read back to the host. On a CUDA
/// device the softmax, loss and `softmax − one-hot` of a chunk are one kernel
/// ([`cuda::cross_entropy`]) reading the logits in their dtype.
///
/// The gradients enter the graph through a surrogate `Σ hidden·dh + Σ weight·dw`, whose value
/// is subtracted again (`s − detach(s)` is exactly zero) and whose gradients are exactly `dh`
/// and `dw`; the result's value is the loss.
pub fn chunked_cross_entropy_tensors(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    scale: f64,
    chunk: usize,
) -> Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    let dev = hidden.device();
    let want_grads = hidden.track_op() || weight.track_op();
    let (h, w) = (hidden.detach(), weight.detach());
    let chunk = chunk.max(1);
    let all_targets = Tensor::new(targets, dev)?;
    let mut losses = Vec::new();
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<Tensor> = None;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let hc = h.narrow(0, start, len)?;
        let target = all_targets.narrow(0, start, len)?;
        let logits = hc.matmul(&w.t()?)?;
        let d_logits = if cuda::supported(&logits) {
            // One kernel: the softmax passes and the gradient, straight from the logits.
            let (loss, d_logits) = cuda::cross_entropy(&logits, &target, scale as f32, want_grads)?;
            losses.push(loss.sum_all()?);
            d_logits
        } else {
            let logits = logits.to_dtype(DType::F32)?;
            let target = target.unsqueeze(1)?;
            let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?;
            let exp = shifted.exp()?;
            let sum = exp.sum_keepdim(D::Minus1)?;
            losses.push((sum.log()? - shifted.gather(&target, 1)?)?.sum_all()?);
            if want_grads {
                let minus_one = Tensor::full(-1f32, (len, 1), dev)?;
                let d_logits = exp
                    .broadcast_div(&sum)?
                    .scatter_add(&target, &minus_one, 1)?;
                Some((d_logits * scale)?.to_dtype(w.dtype())?)
            } else {
                None
            }
        };
        if let Some(d_logits) = d_logits {
            d_hidden.push(d_logits.matmul(&w)?);
            let dw = d_logits.t()?.matmul(&hc)?.to_dtype(DType::F32)?;
            d_weight = Some(match d_weight {
                Some(acc) => (acc + dw)?,
                None => dw,
            });
        }
    }
    let loss = (Tensor::stack(&losses, 0)?.sum_all()? * scale)?;
    let Some(d_weight) = d_weight.filter(|_| want_grads) else {
        return Ok(loss);
    };
    let dh = Tensor::cat(&d_hidden, 0)?.to_dtype(hidden.dtype())?;
    let dw = d_weight.to_dtype(weight.dtype())?;
    let surrogate = ((hidden * dh)?.sum_all()?.to_dtype(DType::F32)?
        + (weight * dw)?.sum_all()?.to_dtype(DType::F32)?)?;
    Ok((loss + (&surrogate - surrogate.detach())?)?)
}

/// Plain cross-entropy over full logits `[n, vocab]` through candle's autograd: the reference
/// the chunked loss is tested against, and the fallback off the CPU.
pub fn cross_entropy_reference(logits: &Tensor, targets: &[u32], scale: f64) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = log_probs.gather(&idx, 1)?;
    Ok((picked.sum_all()? * (-scale))?)
}

/// A CPU f32 view of a tensor's contiguous data.
pub(crate) fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(CpuStorage::F32(data)) = storage else {
        return Err(Error::Batch("expected an f32 tensor on the CPU".into()));
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(Error::Batch("expected a contiguous tensor".into())),
    }
}

struct HeadLoss {
    loss: f32,
    d_hidden: Vec<f32>,
    d_weight: Vec<f32>,
}

/// Row-major single-precision matrix product `dst (+)= lhs · rhs` with explicit strides, on
/// every rayon thread.
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
    distill_models::fused::sgemm_threads(
        rayon::current_num_threads(),
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

#[allow(clippy::too_many_arguments)]
fn fused_head_loss(
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    h: usize,
    v: usize,
    scale: f32,
    chunk: usize,
    want_grads: bool,
) -> HeadLoss {
    let n = targets.len();
    let mut d_hidden = if want_grads {
        vec![0f32; n * h]
    } else {
        vec![]
    };
    let mut d_weight = if want_grads {
        vec![0f32; v * h]
    } else {
        vec![]
    };
    let mut buf = vec![0f32; chunk.min(n.max(1)) * v];
    let mut total = 0f64;
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let hc = &hidden[start * h..(start + c) * h];
        let logits = &mut buf[..c * v];
        // logits[c, v] = hc[c, h] · weightᵀ
        sgemm((c, v, h), logits, v, false, hc, (h, 1), weight, (1, h));
        let tc = &targets[start..start + c];
        total += logits
            .par_chunks_mut(v)
            .zip(tc.par_iter())
            .map(|(row, &t)| softmax_row(row, t as usize, scale, want_grads))
            .sum::<f64>();
        if want_grads {
            // Rows of `logits` now hold `scale · (softmax − one-hot)`, the gradient of the loss
            // with respect to the logits.
            let dh = &mut d_hidden[start * h..(start + c) * h];
            sgemm((c, h, v), dh, h, false, logits, (v, 1), weight, (h, 1));
            sgemm(
                (v, h, c),
                &mut d_weight,
                h,
                true,
                logits,
                (1, v),
                hc,
                (h, 1),
            );
        }
    }
    HeadLoss {
        loss: (total * scale as f64) as f32,
        d_hidden,
        d_weight,
    }
}

/// Returns `−log softmax(row)[target]`; with `grads`, overwrites `row` with
/// `scale · (softmax(row) − one_hot(target))`.
fn softmax_row(row: &mut [f32], target: usize, scale: f32, grads: bool) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    let loss = (lse - row[target]) as f64;
    if grads {
        row.iter_mut().for_each(|x| *x = (*x - lse).exp() * scale);
        row[target] -= scale;
    }
    loss
}

/// Puts a precomputed loss and its gradients into candle's graph: forward returns the loss,
/// backward the stored gradients scaled by the incoming one.
struct InjectGrads {
    loss: f32,
    d_hidden: Tensor,
    d_weight: Tensor,
}

impl CustomOp2 for InjectGrads {
    fn name(&self) -> &'static str {
        "chunked-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The trainer always back-propagates from this loss (or a sum of them) with a unit
        // gradient; skip two vocab-sized multiplications in that case.
        if grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()? == 1.0 {
            return Ok((Some(self.d_hidden.clone()), Some(self.d_weight.clone())));
        }
        Ok((
            Some(self.d_hidden.broadcast_mul(grad_res)?),
            Some(self.d_weight.broadcast_mul(grad_res)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all());
        d.and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// Chunked loss and gradients equal the plain autograd loss for several chunk sizes,
    /// including ones that do not divide the number of positions.
    #[test]
    fn chunked_equals_plain() -> Result<()> {
        let dev = Device::Cpu;
        let (n, h, v) = (37, 24, 301);
        let hidden = Var::randn(0f32, 1.0, (n, h), &dev)?;
        let weight = Var::randn(0f32, 0.5, (v, h), &dev)?;
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % v as u32).collect();
        let scale = 1.0 / 50.0;
        let logits = hidden.as_tensor().matmul(&weight.as_tensor().t()?)?;
        let plain = cross_entropy_reference(&logits, &targets, scale)?;
        let pg = plain.backward()?;
        for chunk in [1, 5, 16, 37, 1000] {
            let loss = chunked_cross_entropy(
                hidden.as_tensor(),
                weight.as_tensor(),
                &targets,
                scale,
                chunk,
            )?;
            let diff = (loss.to_scalar::<f32>()? - plain.to_scalar::<f32>()?).abs();
            assert!(diff < 1e-5, "chunk {chunk}: loss differs by {diff}");
            let g = loss.backward()?;
            for var in [&hidden, &weight] {
                let (a, b) = (g.get(var).unwrap(), pg.get(var).unwrap());
                let d = max_diff(a, b);
                assert!(d < 1e-6, "chunk {chunk}: gradient differs by {d}");
            }
        }
        Ok(())
    }

    /// The incoming gradient scales the stored ones (a loss used inside a larger expression).
    #[test]
    fn scaled_upstream_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let hidden = Var::randn(0f32, 1.0, (4, 8), &dev)?;
        let weight = Var::randn(0f32, 1.0, (10, 8), &dev)?;
        let t = [1u32, 2, 3, 9];
        let a = chunked_cross_entropy(hidden.as_tensor(), weight.as_tensor(), &t, 1.0, 3)?;
        let ga = a.backward()?;
        let b = (chunked_cross_entropy(hidden.as_tensor(), weight.as_tensor(), &t, 1.0, 3)? * 3.0)?;
        let gb = b.backward()?;
        let expect = (ga.get(&hidden).unwrap() * 3.0)?;
        assert!(max_diff(&expect, gb.get(&hidden).unwrap()) < 1e-5);
        Ok(())
    }

    #[test]
    fn bad_labels_are_rejected() {
        assert!(label_targets(&[IGNORE, 3, 300], 256).is_err());
        assert!(label_targets(&[-5], 256).is_err());
        let (p, t) = label_targets(&[IGNORE, 3, IGNORE, 7], 256).unwrap();
        assert_eq!((p, t), (vec![1, 3], vec![3, 7]));
    }
}
