//! Attention over packed training rows in chunks of queries, for any device and dtype: the
//! training and full-sequence attention wherever the fused CPU op ([`crate::fused::attention`],
//! f32 on the CPU) does not run, i.e. on GPUs and in bf16.
//!
//! Why: the composed form (`softmax(q·kᵀ + mask) · v` as separate ops) keeps the scores and
//! probabilities of every layer, `batch × heads × seq²` values each, until backward, plus a
//! `batch × seq²` mask: at 4,096 tokens that is ~3 GiB per layer of a 1.5B model, and a 16k-token
//! row cannot be trained at all. Here queries go through in chunks sized so one chunk's scores
//! stay under [`SCORE_CHUNK_BYTES`]; a chunk looks only at the keys its causal, document-masked
//! rows can see (its first row's document start to its last row). The forward keeps the output
//! and one log-sum-exp per query row; the backward walks the chunks again, recomputing each
//! chunk's probabilities from the log-sum-exps (the flash-attention recurrence, with matmuls
//! instead of a kernel), so no score tensor outlives its chunk.
//!
//! Grouped-query attention needs no repeated keys: a chunk's query heads are laid out as
//! `[batch, kv_heads, n_rep × rows, d]`, so each key/value head multiplies its own group.
//! Scores, softmax and the gradient of the softmax are f32 whatever the compute dtype, as
//! transformers' eager attention does. Tests compare values and gradients with the composed form.
//!
//! On a CUDA device in bf16 with heads of 64 or 128 dims the whole attention is instead the
//! flash kernels ([`crate::cuda::flash_attention`]: one launch forward, two backward, tiles in
//! shared memory, no chunk of scores in global memory at all), given the same document starts.
//! Elsewhere on a CUDA device the scale, mask and softmax of a chunk (and in backward the
//! probabilities and the scores' gradient) are one kernel each
//! ([`crate::cuda::attention_softmax`]), reading the raw scores in the compute dtype; the
//! matmuls stay cuBLAS's.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, D};

type CandleResult<T> = candle_core::Result<T>;

use crate::cuda;
use crate::fused::document_starts;
use crate::recompute::ComputedOutput;
use crate::Result;

/// The most bytes one chunk's f32 scores may take (several tensors of that size exist while a
/// chunk is computed: scores, probabilities and, in backward, their gradients).
pub const SCORE_CHUNK_BYTES: usize = 256 << 20;

/// The fewest query rows in a chunk (short chunks starve the matmuls).
const MIN_CHUNK_ROWS: usize = 64;

/// Query rows per chunk for `batch` rows of `seq` tokens and `heads` query heads: as many as
/// keep one chunk's f32 scores under [`SCORE_CHUNK_BYTES`], at least [`MIN_CHUNK_ROWS`].
pub fn chunk_rows(batch: usize, heads: usize, seq: usize) -> usize {
    let per_row = (batch * heads * seq * DType::F32.size_in_bytes()).max(1);
    (SCORE_CHUNK_BYTES / per_row)
        .max(MIN_CHUNK_ROWS)
        .min(seq.max(1))
}

/// Bytes of one chunk's f32 scores (at most [`SCORE_CHUNK_BYTES`] unless a chunk's minimum
/// rows exceed it): the unit of attention's working memory, which holds about four such
/// tensors at a time (scores, probabilities, and in backward their gradients).
pub fn chunk_score_bytes(batch: usize, heads: usize, seq: usize) -> usize {
    batch * heads * seq * chunk_rows(batch, heads, seq) * DType::F32.size_in_bytes()
}

/// How the query rows of one forward are cut into chunks, and each chunk's key range; shared
/// by every layer of the forward (and its recomputation).
#[derive(Clone)]
pub struct QueryChunks {
    batch: usize,
    seq: usize,
    chunks: Arc<Vec<Chunk>>,
    /// Each position's document start, `[batch, seq]` u32 on the device.
    starts: Tensor,
}

/// Query rows `q0..q1` attend keys `k0..q1`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Chunk {
    q0: usize,
    q1: usize,
    k0: usize,
}

impl Chunk {
    fn rows(&self) -> usize {
        self.q1 - self.q0
    }

    fn keys(&self) -> usize {
        self.q1 - self.k0
    }
}

impl QueryChunks {
    /// Chunks for `rows` (each row's position ids; a document starts wherever a position does
    /// not follow its predecessor) and `heads` query heads, sized by [`SCORE_CHUNK_BYTES`].
    pub fn new(rows: &[Vec<u32>], heads: usize, device: &Device) -> Result<Self> {
        let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
        Self::with_chunk_rows(rows, chunk_rows(b, heads, t), device)
    }

    /// Chunks of `size` query rows (the last may be shorter).
    pub fn with_chunk_rows(rows: &[Vec<u32>], size: usize, device: &Device) -> Result<Self> {
        let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
        let starts: Vec<Vec<usize>> = rows.iter().map(|r| document_starts(r)).collect();
        let chunks = (0..t)
            .step_by(size.max(1))
            .map(|q0| Chunk {
                q0,
                q1: (q0 + size.max(1)).min(t),
                k0: starts.iter().map(|s| s[q0]).min().unwrap_or(0),
            })
            .collect();
        let flat: Vec<u32> = starts.iter().flatten().map(|&s| s as u32).collect();
        Ok(Self {
            batch: b,
            seq: t,
            chunks: Arc::new(chunks),
            starts: Tensor::from_vec(flat, (b, t), device)?,
        })
    }

    /// The additive mask of `chunk`, `[batch, 1, 1, rows, keys]` f32: 0 where query `i` may
    /// see key `j` (`start(i) ≤ j ≤ i`), `-inf` elsewhere. Built on the device from the starts.
    fn mask(&self, chunk: &Chunk) -> CandleResult<Tensor> {
        let (b, c, kl) = (self.batch, chunk.rows(), chunk.keys());
        let device = self.starts.device();
        let keys = Tensor::arange(chunk.k0 as u32, chunk.q1 as u32, device)?.reshape((1, 1, kl))?;
        let first = self
            .starts
            .narrow(1, chunk.q0, c)?
            .contiguous()?
            .reshape((b, c, 1))?;
        let last = Tensor::arange(chunk.q0 as u32, chunk.q1 as u32, device)?.reshape((1, c, 1))?;
        let visible = keys
            .broadcast_ge(&first)?
            .broadcast_mul(&keys.broadcast_le(&last)?)?;
        let zero = Tensor::zeros((), DType::F32, device)?.broadcast_as((b, c, kl))?;
        let hidden = Tensor::full(f32::NEG_INFINITY, (), device)?.broadcast_as((b, c, kl))?;
        visible
            .where_cond(&zero, &hidden)?
            .reshape((b, 1, 1, c, kl))
    }
}

/// One chunk's rotated inputs in the grouped layout: queries `[b, kv_heads, n_rep × rows, d]`,
/// keys and values `[b, kv_heads, keys, d]`.
struct ChunkInputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// Shapes of one attention call: batch, query heads, kv heads, seq, head dim.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Tensor, k: &Tensor, v: &Tensor, chunks: &QueryChunks) -> Result<Self> {
        let (b, h, t, d) = q.dims4()?;
        let (kb, kv, kt, kd) = k.dims4()?;
        if (kb, kt, kd) != (b, t, d) || k.dims() != v.dims() || h % kv.max(1) != 0 {
            return Err(crate::Error::Config(format!(
                "attention shapes q {:?}, k {:?}, v {:?} do not match",
                q.dims(),
                k.dims(),
                v.dims()
            )));
        }
        if (chunks.batch, chunks.seq) != (b, t) {
            return Err(crate::Error::Config(format!(
                "attention chunks for [{}, {}] rows given [{b}, {t}]",
                chunks.batch, chunks.seq
            )));
        }
        Ok(Self { b, h, kv, t, d })
    }

    fn n_rep(&self) -> usize {
        self.h / self.kv
    }

    /// Where chunk `c`'s grouped scores lie, for the CUDA softmax kernels.
    fn chunk(&self, c: &Chunk) -> cuda::ScoreChunk {
        cuda::ScoreChunk {
            groups: self.h,
            rows: c.rows(),
            q0: c.q0,
            k0: c.k0,
        }
    }

    fn inputs(&self, q: &Tensor, k: &Tensor, v: &Tensor, c: &Chunk) -> CandleResult<ChunkInputs> {
        let q = q.narrow(2, c.q0, c.rows())?.contiguous()?.reshape((
            self.b,
            self.kv,
            self.n_rep() * c.rows(),
            self.d,
        ))?;
        let k = k.narrow(2, c.k0, c.keys())?.contiguous()?;
        let v = v.narrow(2, c.k0, c.keys())?.contiguous()?;
        Ok(ChunkInputs { q, k, v })
    }

    /// Scaled, masked f32 scores of a chunk, `[b, kv, n_rep, rows, keys]`.
    fn scores(
        &self,
        x: &ChunkInputs,
        mask: &Tensor,
        c: &Chunk,
        scale: f64,
    ) -> CandleResult<Tensor> {
        let scores = (x.q.matmul(&x.k.t()?)?.to_dtype(DType::F32)? * scale)?;
        scores
            .reshape((self.b, self.kv, self.n_rep(), c.rows(), c.keys()))?
            .broadcast_add(mask)
    }

    /// `[b, kv, n_rep × rows, d]` → `[b, h, rows, d]`.
    fn heads(&self, xs: Tensor, c: &Chunk) -> CandleResult<Tensor> {
        xs.reshape((self.b, self.h, c.rows(), self.d))
    }

    /// `[b, kv, n_rep, rows, keys]` → `[b, kv, n_rep × rows, keys]`.
    fn grouped(&self, xs: Tensor, c: &Chunk) -> CandleResult<Tensor> {
        xs.reshape((self.b, self.kv, self.n_rep() * c.rows(), c.keys()))
    }
}

/// Causal, document-masked attention: `softmax(q·kᵀ · scale + mask) · v` for rotated `q`
/// `[batch, heads, seq, d]` and `k`, `v` `[batch, kv_heads, seq, d]` (not repeated), returning
/// `[batch, heads, seq, d]`. One graph node when a gradient must flow (see the module docs).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    chunks: &QueryChunks,
    scale: f64,
) -> Result<Tensor> {
    let dims = Dims::of(q, k, v, chunks)?;
    if cuda::flash_attention_runs(q.device(), q.dtype(), dims.d)
        && cuda::supported_all(&[q, k, v])
        && dims.t > 0
    {
        return Ok(cuda::flash_attention(q, k, v, &chunks.starts, scale)?);
    }
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return forward(dims, q, k, v, chunks, scale, false).map(|(out, _)| out);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (out, lse) = forward(
        dims,
        &q.detach(),
        &k.detach(),
        &v.detach(),
        chunks,
        scale,
        true,
    )?;
    let op = ChunkedAttention {
        output: ComputedOutput::new(out),
        lse: lse.expect("the forward keeps log-sum-exps when asked"),
        chunks: chunks.clone(),
        dims,
        scale,
    };
    Ok(q.apply_op3(&k, &v, op)?)
}

/// The output `[b, h, t, d]` and, when `keep_lse`, each query row's log-sum-exp of its scores,
/// one `[b, kv, n_rep, rows, 1]` f32 tensor per chunk.
fn forward(
    dims: Dims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    chunks: &QueryChunks,
    scale: f64,
    keep_lse: bool,
) -> Result<(Tensor, Option<Vec<Tensor>>)> {
    let mut outs = Vec::with_capacity(chunks.chunks.len());
    let mut lses = Vec::with_capacity(if keep_lse { chunks.chunks.len() } else { 0 });
    for c in chunks.chunks.iter() {
        let x = dims.inputs(q, k, v, c)?;
        if cuda::supported_all(&[&x.q, &x.k, &x.v]) {
            // One kernel for the scale, the mask and the softmax, from the raw scores.
            let raw = x.q.matmul(&x.k.t()?)?;
            let (probs, lse) =
                cuda::attention_softmax(&raw, &chunks.starts, dims.chunk(c), scale as f32)?;
            if keep_lse {
                lses.push(lse.reshape((dims.b, dims.kv, dims.n_rep(), c.rows(), 1))?);
            }
            outs.push(dims.heads(probs.matmul(&x.v)?, c)?);
            continue;
        }
        let scores = dims.scores(&x, &chunks.mask(c)?, c, scale)?;
        let probs = if keep_lse {
            let max = scores.max_keepdim(D::Minus1)?;
            let exp = scores.broadcast_sub(&max)?.exp()?;
            let sum = exp.sum_keepdim(D::Minus1)?;
            lses.push((max + sum.log()?)?);
            exp.broadcast_div(&sum)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = dims.grouped(probs, c)?.to_dtype(v.dtype())?;
        outs.push(dims.heads(probs.matmul(&x.v)?, c)?);
    }
    let out = Tensor::cat(&outs, 2)?;
    Ok((out, keep_lse.then_some(lses)))
}

/// The graph node of a tracked [`attention`]: its forward hands over the output computed by
/// [`forward`]; its backward recomputes each chunk's probabilities from the log-sum-exps.
struct ChunkedAttention {
    output: ComputedOutput,
    lse: Vec<Tensor>,
    chunks: QueryChunks,
    dims: Dims,
    scale: f64,
}

/// `acc[:, :, offset.., :] += part` in place (f32 accumulation of a chunk's key gradients).
fn accumulate(acc: &Tensor, part: &Tensor, offset: usize) -> CandleResult<()> {
    let len = part.dim(2)?;
    let sum = (acc.narrow(2, offset, len)? + part.to_dtype(DType::F32)?)?;
    acc.slice_set(&sum, 2, offset)
}

impl CustomOp3 for ChunkedAttention {
    fn name(&self) -> &'static str {
        "chunked-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu(self.name())
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda(self.name())
    }

    /// Gradients of q, k and v given the output `out` and its gradient `grad`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, out) = (&q.detach(), &k.detach(), &v.detach(), &out.detach());
        let (dims, scale) = (self.dims, self.scale);
        let (b, kv, t, d, n_rep) = (dims.b, dims.kv, dims.t, dims.d, dims.n_rep());
        let grad = grad.to_dtype(q.dtype())?.contiguous()?;
        // D_i = Σ_d dO_id · O_id: the softmax backward's row term, f32.
        let row_dot =
            (grad.to_dtype(DType::F32)? * out.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
        let dk = Tensor::zeros((b, kv, t, d), DType::F32, q.device())?;
        let dv = Tensor::zeros((b, kv, t, d), DType::F32, q.device())?;
        let mut dq = Vec::with_capacity(self.chunks.chunks.len());
        for (c, lse) in self.chunks.chunks.iter().zip(&self.lse) {
            let x = dims.inputs(q, k, v, c)?;
            let grouped = |xs: &Tensor, last: usize| -> CandleResult<Tensor> {
                xs.narrow(2, c.q0, c.rows())?
                    .contiguous()?
                    .reshape((b, kv, n_rep * c.rows(), last))
            };
            let d_out = grouped(&grad, d)?;
            let row_dot = grouped(&row_dot, 1)?;
            if cuda::supported_all(&[&x.q, &x.k, &x.v]) {
                // The probabilities and the scores' gradient in one kernel from the recomputed
                // raw scores and dP = dO · Vᵀ.
                let raw = x.q.matmul(&x.k.t()?)?;
                let d_probs = d_out.matmul(&x.v.t()?)?;
                let (probs, d_scores) = cuda::attention_softmax_bwd(
                    &raw,
                    &d_probs,
                    lse,
                    &row_dot,
                    &self.chunks.starts,
                    dims.chunk(c),
                    scale as f32,
                )?;
                accumulate(&dv, &probs.t()?.matmul(&d_out)?, c.k0)?;
                dq.push(dims.heads(d_scores.matmul(&x.k)?, c)?);
                accumulate(&dk, &d_scores.t()?.matmul(&x.q)?, c.k0)?;
                continue;
            }
            // The scores go out of scope here, before their gradients exist.
            let probs = {
                let scores = dims.scores(&x, &self.chunks.mask(c)?, c, scale)?;
                dims.grouped(scores.broadcast_sub(lse)?.exp()?, c)?
            };
            // dV += Pᵀ · dO;  dP = dO · Vᵀ;  dS = P ∘ (dP − D) · scale.
            let dv_part = probs.to_dtype(v.dtype())?.t()?.matmul(&d_out)?;
            accumulate(&dv, &dv_part, c.k0)?;
            let d_probs = d_out.matmul(&x.v.t()?)?.to_dtype(DType::F32)?;
            let d_scores = ((probs * d_probs.broadcast_sub(&row_dot)?)? * scale)?;
            let d_scores = d_scores.to_dtype(q.dtype())?;
            // dQ = dS · K;  dK += dSᵀ · Q.
            dq.push(dims.heads(d_scores.matmul(&x.k)?, c)?);
            accumulate(&dk, &d_scores.t()?.matmul(&x.q)?, c.k0)?;
        }
        Ok((
            Some(Tensor::cat(&dq, 2)?),
            Some(dk.to_dtype(k.dtype())?),
            Some(dv.to_dtype(v.dtype())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use candle_core::Var;

    /// The composed form: repeated kv heads, a full `[b, 1, t, t]` document mask, softmax.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, rows: &[Vec<u32>], scale: f64) -> Tensor {
        let (b, h, t, _) = q.dims4().unwrap();
        let n_rep = h / k.dim(1).unwrap();
        let repeat = |x: &Tensor| {
            let (b, kv, t, d) = x.dims4().unwrap();
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, kv, n_rep, t, d))
                .unwrap()
                .reshape((b, kv * n_rep, t, d))
                .unwrap()
        };
        let mut mask = Vec::new();
        for row in rows {
            let starts = document_starts(row);
            for (i, &s) in starts.iter().enumerate() {
                mask.extend((0..t).map(|j| {
                    if j <= i && j >= s {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), q.device()).unwrap();
        let scores = (q
            .matmul(&repeat(k).t().unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let probs = ops::softmax_last_dim(&scores)
            .unwrap()
            .to_dtype(v.dtype())
            .unwrap();
        probs.matmul(&repeat(v)).unwrap()
    }

    /// Two rows of 13 positions: the first packs documents of 5, 4 and 4 tokens, the second
    /// is one document; 4 query heads over 2 kv heads of 8 dims.
    fn case(dtype: DType) -> (Var, Var, Var, Vec<Vec<u32>>) {
        let dev = Device::Cpu;
        let rand = |shape: (usize, usize, usize, usize)| {
            Var::from_tensor(
                &Tensor::randn(0f32, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap()
        };
        let rows = vec![
            [0..5u32, 0..4, 0..4].into_iter().flatten().collect(),
            (0..13u32).collect(),
        ];
        (
            rand((2, 4, 13, 8)),
            rand((2, 2, 13, 8)),
            rand((2, 2, 13, 8)),
            rows,
        )
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).unwrap();
        let b = b.to_dtype(DType::F32).unwrap();
        ops::max_abs_diff(&a, &b).unwrap() / ops::max_abs(&b).unwrap().max(1e-6)
    }

    /// Values and the gradients of q, k and v against the composed form, for chunk sizes that
    /// do and do not divide the rows (and one chunk holding everything).
    fn check(dtype: DType, tolerance: f32) {
        let (q, k, v, rows) = case(dtype);
        let scale = 1.0 / 8f64.sqrt();
        let weights = Tensor::randn(0f32, 1.0, (2, 4, 13, 8), &Device::Cpu).unwrap();
        let loss = |out: &Tensor| {
            (out.to_dtype(DType::F32).unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let reference = composed(&q, &k, &v, &rows, scale);
        let want = loss(&reference).backward().unwrap();
        for size in [1, 3, 5, 13, 64] {
            let chunks = QueryChunks::with_chunk_rows(&rows, size, &Device::Cpu).unwrap();
            let out = attention(&q, &k, &v, &chunks, scale).unwrap();
            assert_eq!(out.dims(), [2, 4, 13, 8]);
            assert_eq!(out.dtype(), dtype);
            let e = max_rel_diff(&out, &reference);
            assert!(e < tolerance, "chunk {size}: output differs by {e}");
            let plain = attention(&q.detach(), &k.detach(), &v.detach(), &chunks, scale).unwrap();
            assert!(
                max_rel_diff(&plain, &out) < tolerance,
                "chunk {size}: untracked path"
            );
            let got = loss(&out).backward().unwrap();
            for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                let (g, w) = (got.get(var).unwrap(), want.get(var).unwrap());
                assert_eq!(g.dims(), var.dims());
                assert_eq!(g.dtype(), dtype);
                let e = max_rel_diff(g, w);
                assert!(e < tolerance, "chunk {size}: d{name} differs by {e}");
            }
        }
    }

    #[test]
    fn f32_values_and_gradients_equal_the_composed_form() {
        check(DType::F32, 2e-6);
    }

    #[test]
    fn bf16_values_and_gradients_equal_the_composed_form() {
        check(DType::BF16, 2e-2);
    }

    /// Key ranges start at the earliest document start among the chunk's first rows, and
    /// the masks hide the future and earlier documents.
    #[test]
    fn chunks_look_only_at_visible_keys() {
        let rows = vec![vec![0, 1, 2, 0, 1, 2, 3], vec![0, 1, 2, 3, 4, 0, 1]];
        let chunks = QueryChunks::with_chunk_rows(&rows, 3, &Device::Cpu).unwrap();
        let ranges: Vec<(usize, usize, usize)> =
            chunks.chunks.iter().map(|c| (c.q0, c.q1, c.k0)).collect();
        assert_eq!(ranges, [(0, 3, 0), (3, 6, 0), (6, 7, 3)]);
        let mask = chunks.mask(&chunks.chunks[1]).unwrap();
        assert_eq!(mask.dims(), [2, 1, 1, 3, 6]);
        let visible: Vec<Vec<Vec<bool>>> = mask
            .squeeze(1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|q| q.into_iter().map(|x| x == 0.0).collect())
                    .collect()
            })
            .collect();
        let (t, f) = (true, false);
        // Row 0: queries 3..6 are the second document (starting at 3).
        assert_eq!(
            visible[0],
            [[f, f, f, t, f, f], [f, f, f, t, t, f], [f, f, f, t, t, t]]
        );
        // Row 1: queries 3, 4 continue the first document; 5 starts a new one.
        assert_eq!(
            visible[1],
            [[t, t, t, t, f, f], [t, t, t, t, t, f], [f, f, f, f, f, t]]
        );
        // Default sizing: at least MIN_CHUNK_ROWS rows, and a chunk's scores under the budget.
        let long = vec![(0..8192u32).collect::<Vec<_>>(); 2];
        let sized = QueryChunks::new(&long, 16, &Device::Cpu).unwrap();
        let rows = sized.chunks[0].rows();
        assert!(2 * 16 * rows * 8192 * 4 <= SCORE_CHUNK_BYTES, "{rows}");
        assert_eq!(rows, SCORE_CHUNK_BYTES / (2 * 16 * 8192 * 4));
        assert_eq!(
            QueryChunks::new(&rows_of(4), 1, &Device::Cpu)
                .unwrap()
                .chunks
                .len(),
            1
        );
    }

    fn rows_of(t: u32) -> Vec<Vec<u32>> {
        vec![(0..t).collect()]
    }
}
