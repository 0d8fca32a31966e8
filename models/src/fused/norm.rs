//! RMS norm as one graph node: `weight * x / sqrt(mean(x²) + eps)` over the last dimension.
//! The backward recomputes the per-row `1/rms` from the input (one pass over a row), so the
//! graph keeps only the input and the output instead of the squared, averaged, divided and
//! scaled temporaries of the composed version.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{slice, with_f32};

/// Rows per parallel piece of the weight-gradient reduction (fixed, for determinism).
const ROWS_PER_PIECE: usize = 64;

/// Fused RMS norm of a CPU f32 tensor over its last dimension; differentiable in both inputs.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

fn rstd(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let dim = l1.dims().last().copied().unwrap_or(0);
        if dim == 0 || w.len() != dim {
            candle_core::bail!("rms_norm: weight of {} for rows of {dim}", w.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(o, x)| {
                let r = rstd(x, self.eps);
                for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dim = weight.elem_count();
        let (dx, dw) = with_f32(xs, |x| {
            with_f32(weight, |w| {
                with_f32(grad, |g| {
                    let mut dx = vec![0f32; x.len()];
                    let partial: Vec<Vec<f32>> = dx
                        .par_chunks_mut(dim * ROWS_PER_PIECE)
                        .zip(x.par_chunks(dim * ROWS_PER_PIECE))
                        .zip(g.par_chunks(dim * ROWS_PER_PIECE))
                        .map(|((dx, x), g)| {
                            let mut dw = vec![0f32; dim];
                            for ((dx, x), g) in
                                dx.chunks_mut(dim).zip(x.chunks(dim)).zip(g.chunks(dim))
                            {
                                let r = rstd(x, self.eps);
                                // c = mean(g · w · x̂); dx = r · (g · w − x̂ · c)
                                let mut c = 0f32;
                                for i in 0..dim {
                                    let xh = x[i] * r;
                                    c += g[i] * w[i] * xh;
                                    dw[i] += g[i] * xh;
                                }
                                c /= dim as f32;
                                for i in 0..dim {
                                    dx[i] = r * (g[i] * w[i] - x[i] * r * c);
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; dim];
                    for p in &partial {
                        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    }
                    Ok((dx, dw))
                })
            })
        })?;
        let dx = Tensor::from_vec(dx, xs.shape(), xs.device())?;
        let dw = Tensor::from_vec(dw, weight.shape(), weight.device())?;
        Ok((Some(dx), Some(dw)))
    }
}
