//! Tensor ops with two paths: candle's fused kernels when nothing is being differentiated, and
//! compositions of autograd-recorded primitives when a gradient must flow.
//!
//! candle-nn 0.11's fused `rms_norm`, `softmax_last_dim` and `rope` are registered without a
//! backward: `backward()` returns Ok but gradients silently stop there. Each op here checks
//! `track_op()` (true for a `Var` or anything computed from one) and only then takes the slower
//! differentiable route, so inference keeps the fused speed.
//!
//! On the CPU in f32 (training), the differentiable route is a single node from
//! [`crate::fused`] with an analytic backward, which keeps far fewer activations alive than the
//! composition of primitives; the `*_composed` functions remain as the reference the fused ops
//! are tested against and as the route on other devices and dtypes.
//!
//! Also [`top_k_ids`], the one ranking of a row of logits that the engine's stored
//! log-probabilities and logit distillation's teacher targets share.

use candle_core::{DType, Result, Tensor, D};

use crate::{cuda, fused};

/// Root-mean-square layer norm over the last dimension, as `LlamaRMSNorm`/`Qwen2RMSNorm`:
/// `weight * x / sqrt(mean(x²) + eps)`, computed in f32.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if xs.track_op() || weight.track_op() {
        if fused::supported(xs) && fused::supported(weight) {
            return fused::rms_norm(xs, weight, eps);
        }
        if cuda::supported_all(&[xs, weight]) {
            return cuda::rms_norm(xs, weight, eps);
        }
        rms_norm_composed(xs, weight, eps)
    } else {
        candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32)
    }
}

/// [`rms_norm`] as a composition of autograd-recorded primitives.
pub fn rms_norm_composed(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let variance = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xs.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dimension. The max is detached: subtracting it does not change the
/// result, so it needs no gradient, and `-inf` mask entries become exact zeros.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        let max = xs.max_keepdim(D::Minus1)?.detach();
        let exp = xs.broadcast_sub(&max)?.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    } else {
        candle_nn::ops::softmax_last_dim(&xs.contiguous()?)
    }
}

/// Rotary position embedding in the Hugging Face (`rotate_half`, non-interleaved) layout.
/// `xs` is `[batch, heads, seq, head_dim]`; `cos`/`sin` are `[batch, seq, head_dim / 2]`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        if fused::supported(xs) {
            return fused::rope(xs, cos, sin);
        }
        let per_row_tables = match xs.dims() {
            &[b, _, t, d] => cos.dims() == [b, t, d / 2] && sin.dims() == cos.dims(),
            _ => false,
        };
        if per_row_tables && cuda::supported_all(&[xs, cos, sin]) {
            return cuda::rope(xs, cos, sin);
        }
        rope_composed(xs, cos, sin)
    } else {
        candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin)
    }
}

/// [`rope`] as a composition of autograd-recorded primitives.
pub fn rope_composed(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// The largest absolute element of a tensor (any shape, f32), e.g. of `a - b` when checking
/// two computations agree; the tests of every crate compare tensors with it.
pub fn max_abs(xs: &Tensor) -> Result<f32> {
    xs.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// `max |a - b|` over all elements (same shapes).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    max_abs(&(a - b)?)
}

/// SiLU, `x * sigmoid(x)`; candle's unary op has a backward, kept here so the model code reads
/// the same for every activation.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    xs.silu()
}

/// The SwiGLU gate `silu(gate) * up`; one fused node when differentiated on the CPU in f32,
/// one CUDA kernel on a GPU (differentiated or not: it also saves decoding a launch and a
/// temporary).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if (gate.track_op() || up.track_op()) && fused::supported(gate) && fused::supported(up) {
        return fused::swiglu(gate, up);
    }
    if cuda::supported_all(&[gate, up]) && gate.dims() == up.dims() {
        return cuda::swiglu(gate, up);
    }
    silu(gate)? * up
}

/// The ids of the `k` largest values of one row (all of them when `k` ≥ its length), largest
/// first, ties to the lower id. One pass keeping the best `k` in order: most values fail the
/// first comparison, and ascending ids put ties after the earlier id; no row-sized buffer.
pub fn top_k_ids(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    let mut top: Vec<u32> = Vec::with_capacity(k + 1);
    for (i, &x) in values.iter().enumerate() {
        if top.len() == k
            && top
                .last()
                .is_none_or(|&w| x.total_cmp(&values[w as usize]).is_le())
        {
            continue;
        }
        let at = top.partition_point(|&j| values[j as usize].total_cmp(&x).is_ge());
        top.insert(at, i as u32);
        top.truncate(k);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        super::max_abs_diff(a, b).unwrap()
    }

    /// The differentiable route and the fused route compute the same values.
    #[test]
    fn both_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let w = Tensor::randn(1f32, 0.1, 8, &dev)?;
        let xv = Var::from_tensor(&x)?;
        assert!(
            max_abs_diff(
                &rms_norm(&x, &w, 1e-6)?,
                &rms_norm(xv.as_tensor(), &w, 1e-6)?
            ) < 1e-5
        );
        assert!(max_abs_diff(&softmax_last_dim(&x)?, &softmax_last_dim(xv.as_tensor())?) < 1e-6);
        let cos = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        assert!(max_abs_diff(&rope(&x, &cos, &sin)?, &rope(xv.as_tensor(), &cos, &sin)?) < 1e-5);
        Ok(())
    }

    /// Gradients flow through every op (the fused candle kernels would return none).
    #[test]
    fn gradients_reach_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (1, 2, 3, 8), &dev)?;
        let w = Var::randn(1f32, 0.1, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (1, 3, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (1, 3, 4), &dev)?;
        let y = rope(&rms_norm(x.as_tensor(), w.as_tensor(), 1e-6)?, &cos, &sin)?;
        let y = softmax_last_dim(&y)?;
        let target = Tensor::randn(0f32, 1.0, y.shape(), &dev)?;
        let loss = (y * target)?.sum_all()?;
        let grads = loss.backward()?;
        for var in [&x, &w] {
            let g = grads.get(var.as_tensor()).expect("gradient recorded");
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0, "zero gradient");
        }
        Ok(())
    }

    /// Softmax gradient matches the analytic Jacobian-vector product `p * (g - <g, p>)`.
    #[test]
    fn softmax_gradient_is_exact() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[0.5f32, -1.0, 2.0, 0.0]], &dev)?;
        let g = Tensor::new(&[[1.0f32, 2.0, -1.0, 0.5]], &dev)?;
        let p = softmax_last_dim(x.as_tensor())?;
        let grads = (p.clone() * &g)?.sum_all()?.backward()?;
        let got = grads
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec2::<f32>()?;
        let pv = p.to_vec2::<f32>()?[0].clone();
        let gv = g.to_vec2::<f32>()?[0].clone();
        let dot: f32 = pv.iter().zip(&gv).map(|(a, b)| a * b).sum();
        for i in 0..4 {
            let want = pv[i] * (gv[i] - dot);
            assert!(
                (got[0][i] - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                got[0][i]
            );
        }
        Ok(())
    }
}
