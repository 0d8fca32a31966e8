//! Rotary position embedding (Hugging Face `rotate_half` layout) as one graph node. RoPE is a
//! rotation of each `(x[i], x[i + d/2])` pair, so its backward is the same rotation by the
//! opposite angle (negated sine): nothing but the cos/sin tables is needed, and the composed
//! version's negated, concatenated and multiplied copies disappear.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{slice, with_f32};

/// Rotates one row `x` (`2 · half` values) in place: `y1 = x1·cos − x2·sin`,
/// `y2 = x2·cos + x1·sin`; `sign = -1` applies the inverse rotation.
pub(crate) fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = cos.len();
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        let s = sin[i] * sign;
        x1[i] = a * cos[i] - b * s;
        x2[i] = b * cos[i] + a * s;
    }
}

/// Cos/sin tables `[rows, seq, half]` (`rows` is the batch or 1, shared) as plain vectors.
#[derive(Clone)]
pub(crate) struct Tables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub rows: usize,
    pub seq: usize,
    pub half: usize,
}

impl Tables {
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Self> {
        let (rows, seq, half) = cos.dims3()?;
        if sin.dims() != cos.dims() {
            candle_core::bail!("rope: cos {:?} and sin {:?} differ", cos.dims(), sin.dims());
        }
        let cos_v = with_f32(&cos.detach(), |c| Ok(c.to_vec()))?;
        let sin_v = with_f32(&sin.detach(), |s| Ok(s.to_vec()))?;
        Ok(Self {
            cos: cos_v,
            sin: sin_v,
            rows,
            seq,
            half,
        })
    }

    /// The cos and sin rows for batch row `b`, position `t`.
    pub fn at(&self, b: usize, t: usize) -> (&[f32], &[f32]) {
        let b = if self.rows == 1 { 0 } else { b };
        let o = (b * self.seq + t) * self.half;
        (&self.cos[o..o + self.half], &self.sin[o..o + self.half])
    }

    /// Checks the tables cover a `[batch, seq, …, 2·half]` input.
    pub fn check(&self, batch: usize, seq: usize, head_dim: usize) -> Result<()> {
        if (self.rows != 1 && self.rows != batch) || self.seq != seq || 2 * self.half != head_dim {
            candle_core::bail!(
                "rope tables [{}, {}, {}] do not fit batch {batch}, seq {seq}, head_dim {head_dim}",
                self.rows,
                self.seq,
                self.half
            );
        }
        Ok(())
    }
}

/// Fused RoPE of `xs` `[batch, heads, seq, head_dim]` with `cos`/`sin` `[batch or 1, seq,
/// head_dim / 2]`; differentiable in `xs`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Rope {
        tables: std::sync::Arc::new(Tables::new(cos, sin)?),
        sign: 1.0,
    })
}

struct Rope {
    tables: std::sync::Arc<Tables>,
    sign: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (b, h, t, d) = l.shape().dims4()?;
        self.tables.check(b, t, d)?;
        let mut out = x.to_vec();
        out.par_chunks_mut(t * d)
            .enumerate()
            .for_each(|(bh, rows)| {
                let bi = bh / h;
                for (ti, row) in rows.chunks_mut(d).enumerate() {
                    let (c, s) = self.tables.at(bi, ti);
                    rotate(row, c, s, self.sign);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope {
            tables: self.tables.clone(),
            sign: -self.sign,
        };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}
