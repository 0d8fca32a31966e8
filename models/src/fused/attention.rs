//! Causal, document-masked grouped-query attention with RoPE as one graph node.
//!
//! The composed version (rope → repeat_kv → `q·kᵀ` → scale → mask → softmax → `·v`) keeps about
//! six `[batch, heads, seq, seq]` tensors per layer alive until backward, plus rotated and
//! repeated copies of q/k/v. This op takes the projections as they come out of the linear
//! layers (`[batch, seq, heads, head_dim]`, no transpose), rotates q/k internally and keeps only
//! its output and one log-sum-exp per query row. The backward recomputes the probabilities one
//! block of queries at a time (flash-attention style) and rotates the q/k gradients back (RoPE
//! with negated sine).
//!
//! Mask semantics are those of [`crate::transformer`]'s document mask: a document starts wherever
//! a position id does not continue its predecessor by one, and query `i` attends to keys
//! `start(i) ..= i`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::rope::{rotate, Tables};
use super::{sgemm, slice, with_f32};

/// Queries per block: scores are computed `BLOCK × keys` at a time.
const BLOCK: usize = 64;

/// For each position of a row of position ids, the index where its document starts: a position
/// that does not follow its predecessor by one starts a new document.
pub fn document_starts(row: &[u32]) -> Vec<usize> {
    let mut doc: Vec<usize> = Vec::with_capacity(row.len());
    for (i, &p) in row.iter().enumerate() {
        let starts = i == 0 || p != row[i - 1].wrapping_add(1);
        doc.push(if starts { i } else { doc[i - 1] });
    }
    doc
}

/// What every layer's attention shares in one forward: RoPE tables and document starts.
#[derive(Clone)]
pub struct AttentionContext {
    tables: Arc<Tables>,
    starts: Arc<Vec<Vec<usize>>>,
}

impl AttentionContext {
    /// `cos`/`sin` `[batch or 1, seq, head_dim / 2]`; `positions` one row of position ids per
    /// batch row, or one row shared by the batch.
    pub fn new(cos: &Tensor, sin: &Tensor, positions: &[Vec<u32>]) -> Result<Self> {
        Ok(Self {
            tables: Arc::new(Tables::new(cos, sin)?),
            starts: Arc::new(positions.iter().map(|r| document_starts(r)).collect()),
        })
    }

    fn starts(&self, b: usize) -> &[usize] {
        if self.starts.len() == 1 {
            &self.starts[0]
        } else {
            &self.starts[b]
        }
    }
}

/// `softmax(rope(q)·rope(k)ᵀ · scale + mask) · v` for `q` `[batch, seq, heads, head_dim]` and
/// `k`, `v` `[batch, seq, kv_heads, head_dim]` (CPU f32); returns `[batch, seq, heads,
/// head_dim]`. Differentiable in `q`, `k` and `v`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &AttentionContext,
    scale: f64,
) -> Result<Tensor> {
    let (b, t, h, d) = q.dims4()?;
    let (bk, tk, kvh, dk) = k.dims4()?;
    if (bk, tk, dk) != (b, t, d) || v.dims() != k.dims() || kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    ctx.tables.check(b, t, d)?;
    if (ctx.starts.len() != 1 && ctx.starts.len() != b) || ctx.starts.iter().any(|r| r.len() != t) {
        candle_core::bail!("attention: position rows do not fit batch {b}, seq {t}");
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Attention {
            ctx: ctx.clone(),
            scale: scale as f32,
            lse: Mutex::new(Vec::new()),
        },
    )
}

struct Attention {
    ctx: AttentionContext,
    scale: f32,
    /// Per `(batch, head, query)` log-sum-exp of the scaled scores, written by the forward.
    lse: Mutex<Vec<f32>>,
}

#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
}

impl Attention {
    /// Rows of head `head` (of `heads`) of batch row `bi` from a `[b, t, heads, d]` tensor,
    /// rotated: `[t, d]`.
    fn rotated(&self, x: &[f32], dims: Dims, bi: usize, head: usize, heads: usize) -> Vec<f32> {
        let Dims { t, d, .. } = dims;
        let mut out = vec![0f32; t * d];
        for (ti, row) in out.chunks_mut(d).enumerate() {
            let o = ((bi * t + ti) * heads + head) * d;
            row.copy_from_slice(&x[o..o + d]);
            let (c, s) = self.ctx.tables.at(bi, ti);
            rotate(row, c, s, 1.0);
        }
        out
    }

    /// Scores of queries `qs..qe` against keys `k0..qe` into `p` (`[qe − qs, qe − k0]`).
    fn scores(
        &self,
        qr: &[f32],
        kr: &[f32],
        (qs, qe, k0): (usize, usize, usize),
        d: usize,
        p: &mut [f32],
    ) {
        let kn = qe - k0;
        sgemm(
            (qe - qs, kn, d),
            p,
            kn,
            false,
            &qr[qs * d..],
            (d, 1),
            &kr[k0 * d..],
            (1, d),
        );
    }

    /// Output `[t, d]` and log-sum-exp `[t]` of head `hi` of batch row `bi`.
    fn head_forward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        dims: Dims,
        bi: usize,
        hi: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let Dims { t, h, kvh, d, .. } = dims;
        let g = hi / (h / kvh);
        let qr = self.rotated(q, dims, bi, hi, h);
        let kr = self.rotated(k, dims, bi, g, kvh);
        let (voff, vrs) = ((bi * t * kvh + g) * d, kvh * d);
        let starts = self.ctx.starts(bi);
        let mut out = vec![0f32; t * d];
        let mut lse = vec![0f32; t];
        let mut p = vec![0f32; BLOCK * t];
        for qs in (0..t).step_by(BLOCK) {
            let qe = (qs + BLOCK).min(t);
            let k0 = starts[qs];
            let kn = qe - k0;
            self.scores(&qr, &kr, (qs, qe, k0), d, &mut p);
            for (ii, row) in p[..(qe - qs) * kn].chunks_mut(kn).enumerate() {
                let i = qs + ii;
                let (lo, hi_) = (starts[i] - k0, i - k0);
                let max = row[lo..=hi_]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| m.max(x * self.scale));
                let sum: f32 = row[lo..=hi_]
                    .iter()
                    .map(|&x| (x * self.scale - max).exp())
                    .sum();
                let l = max + sum.ln();
                lse[i] = l;
                row[..lo].fill(0.0);
                row[lo..=hi_]
                    .iter_mut()
                    .for_each(|x| *x = (*x * self.scale - l).exp());
                row[hi_ + 1..].fill(0.0);
            }
            sgemm(
                (qe - qs, d, kn),
                &mut out[qs * d..],
                d,
                false,
                &p,
                (kn, 1),
                &v[voff + k0 * vrs..],
                (vrs, 1),
            );
        }
        (out, lse)
    }

    /// Gradients `[t, d]` of head `hi` of batch row `bi` with respect to its q, and this head's
    /// contributions to its kv group's k and v.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        o: &[f32],
        grad: &[f32],
        lse: &[f32],
        dims: Dims,
        bi: usize,
        hi: usize,
    ) -> [Vec<f32>; 3] {
        let Dims { t, h, kvh, d, .. } = dims;
        let g = hi / (h / kvh);
        let qr = self.rotated(q, dims, bi, hi, h);
        let kr = self.rotated(k, dims, bi, g, kvh);
        let (voff, vrs) = ((bi * t * kvh + g) * d, kvh * d);
        let (ooff, ors) = ((bi * t * h + hi) * d, h * d);
        let lse = &lse[(bi * h + hi) * t..(bi * h + hi + 1) * t];
        let starts = self.ctx.starts(bi);
        // D_i = <dO_i, O_i>
        let dot: Vec<f32> = (0..t)
            .map(|i| {
                let r = ooff + i * ors;
                o[r..r + d]
                    .iter()
                    .zip(&grad[r..r + d])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (vec![0f32; t * d], vec![0f32; t * d], vec![0f32; t * d]);
        let mut p = vec![0f32; BLOCK * t];
        let mut ds = vec![0f32; BLOCK * t];
        for qs in (0..t).step_by(BLOCK) {
            let qe = (qs + BLOCK).min(t);
            let (k0, qb) = (starts[qs], qe - qs);
            let kn = qe - k0;
            self.scores(&qr, &kr, (qs, qe, k0), d, &mut p);
            for (ii, row) in p[..qb * kn].chunks_mut(kn).enumerate() {
                let i = qs + ii;
                let (lo, hi_) = (starts[i] - k0, i - k0);
                row[..lo].fill(0.0);
                row[lo..=hi_]
                    .iter_mut()
                    .for_each(|x| *x = (*x * self.scale - lse[i]).exp());
                row[hi_ + 1..].fill(0.0);
            }
            let d_out = &grad[ooff + qs * ors..];
            // dV[k0..] += Pᵀ · dO
            sgemm(
                (kn, d, qb),
                &mut dv[k0 * d..],
                d,
                true,
                &p,
                (1, kn),
                d_out,
                (ors, 1),
            );
            // dP = dO · Vᵀ
            sgemm(
                (qb, kn, d),
                &mut ds,
                kn,
                false,
                d_out,
                (ors, 1),
                &v[voff + k0 * vrs..],
                (1, vrs),
            );
            // dS = P ∘ (dP − D) · scale
            for (ii, (s_row, p_row)) in ds[..qb * kn]
                .chunks_mut(kn)
                .zip(p[..qb * kn].chunks(kn))
                .enumerate()
            {
                let di = dot[qs + ii];
                for (s, &pv) in s_row.iter_mut().zip(p_row) {
                    *s = pv * (*s - di) * self.scale;
                }
            }
            // dQ[qs..qe] = dS · K;  dK[k0..] += dSᵀ · Q
            sgemm(
                (qb, d, kn),
                &mut dq[qs * d..],
                d,
                false,
                &ds,
                (kn, 1),
                &kr[k0 * d..],
                (d, 1),
            );
            sgemm(
                (kn, d, qb),
                &mut dk[k0 * d..],
                d,
                true,
                &ds,
                (1, kn),
                &qr[qs * d..],
                (d, 1),
            );
        }
        for (ti, (dq_row, dk_row)) in dq.chunks_mut(d).zip(dk.chunks_mut(d)).enumerate() {
            let (c, s) = self.ctx.tables.at(bi, ti);
            rotate(dq_row, c, s, -1.0);
            rotate(dk_row, c, s, -1.0);
        }
        [dq, dk, dv]
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (b, t, h, d) = l1.shape().dims4()?;
        let kvh = l2.shape().dims4()?.2;
        let dims = Dims { t, h, kvh, d };
        let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..b * h)
            .into_par_iter()
            .map(|bh| self.head_forward((q, k, v), dims, bh / h, bh % h))
            .collect();
        let mut out = vec![0f32; b * t * h * d];
        let mut lse = Vec::with_capacity(b * h * t);
        for (bh, (o, l)) in heads.into_iter().enumerate() {
            let (bi, hi) = (bh / h, bh % h);
            for (ti, row) in o.chunks(d).enumerate() {
                let at = ((bi * t + ti) * h + hi) * d;
                out[at..at + d].copy_from_slice(row);
            }
            lse.extend(l);
        }
        *self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned lock".into()))? = lse;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, h, d) = q.dims4()?;
        let kvh = k.dims4()?.2;
        let dims = Dims { t, h, kvh, d };
        let n_rep = h / kvh;
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned lock".into()))?;
        if lse.len() != b * h * t {
            candle_core::bail!("attention backward before forward");
        }
        let heads: Vec<[Vec<f32>; 3]> = with_f32(q, |q| {
            with_f32(k, |k| {
                with_f32(v, |v| {
                    with_f32(res, |o| {
                        with_f32(grad, |g| {
                            Ok((0..b * h)
                                .into_par_iter()
                                .map(|bh| {
                                    self.head_backward((q, k, v), o, g, &lse, dims, bh / h, bh % h)
                                })
                                .collect())
                        })
                    })
                })
            })
        })?;
        let mut dq = vec![0f32; b * t * h * d];
        let mut dk = vec![0f32; b * t * kvh * d];
        let mut dv = vec![0f32; b * t * kvh * d];
        for (bh, [hq, hk, hv]) in heads.iter().enumerate() {
            let (bi, hi) = (bh / h, bh % h);
            let g = hi / n_rep;
            for ti in 0..t {
                let src = ti * d..(ti + 1) * d;
                let at = ((bi * t + ti) * h + hi) * d;
                dq[at..at + d].copy_from_slice(&hq[src.clone()]);
                let at = ((bi * t + ti) * kvh + g) * d;
                dk[at..at + d]
                    .iter_mut()
                    .zip(&hk[src.clone()])
                    .for_each(|(a, b)| *a += b);
                dv[at..at + d]
                    .iter_mut()
                    .zip(&hv[src])
                    .for_each(|(a, b)| *a += b);
            }
        }
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}
