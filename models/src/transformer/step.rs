//! The generation forward: one step over a ragged batch of sequences, each with its own
//! [`KvCache`]. Projections and MLPs run on all new tokens at once; attention runs per sequence
//! (on the CPU in f32 one ragged pass over plain buffers, [`crate::decode`]; elsewhere one
//! attention call per sequence over its cache slab), so sequences of different lengths decode
//! together (continuous batching).

use candle_core::{DType, Device, Tensor};

use super::{Attention, Model, Rotary};
use crate::chunked_attention::{self, QueryChunks};
use crate::decode::{self, KvCache, RowRope};
use crate::{ops, Error, Result};

impl Attention {
    /// Scaled dot-product attention of `q` `[b, heads, q_len, d]` over `k`/`v` `[b, kv_heads,
    /// k_len, d]` (a cache slab's view), with an optional additive mask `[q_len, k_len]`.
    /// Returns `[b, heads, q_len, d]`. The kv heads are not repeated: each multiplies its own
    /// group of query heads, laid out as `[b, kv_heads, n_rep × q_len, d]`, so a step reads
    /// the history as it lies in the cache instead of copying it `n_rep` times (6× for
    /// Qwen2.5-1.5B) per layer.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, len, d) = q.dims4()?;
        let (kv, k_len) = (self.num_kv_heads, k.dim(2)?);
        let n_rep = h / kv;
        let grouped = q.contiguous()?.reshape((b, kv, n_rep * len, d))?;
        // Scores and softmax in f32 whatever the compute dtype, as transformers' eager attention
        // does (`softmax(..., dtype=torch.float32)`); a no-op in f32.
        let mut scores = (grouped.matmul(&k.t()?)?.to_dtype(DType::F32)? * self.scale)?;
        if let Some(mask) = mask {
            scores = scores
                .reshape((b, kv, n_rep, len, k_len))?
                .broadcast_add(mask)?
                .reshape((b, kv, n_rep * len, k_len))?;
        }
        let probs = ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        Ok(probs.matmul(v)?.reshape((b, h, len, d))?)
    }

    /// A generation step on the CPU: `xs` `[1, rows, hidden]` holds the new rows of every
    /// sequence in `batch` (in order); returns the output projection `[1, rows, hidden]`.
    fn step_host(
        &self,
        xs: &Tensor,
        layer: usize,
        batch: &mut [(&[u32], &mut KvCache)],
        rope: &RowRope,
    ) -> Result<Tensor> {
        let rows = xs.dim(1)?;
        let host = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (q, k, v) = self.project(xs)?;
        let (mut q, mut k, v) = (host(q)?, host(k)?, host(v)?);
        rope.apply(&mut q, self.num_heads, self.head_dim);
        rope.apply(&mut k, self.num_kv_heads, self.head_dim);
        let heads = decode::Heads {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            dim: self.head_dim,
            scale: self.scale as f32,
        };
        let out = decode::attend(&q, &k, &v, layer, batch, heads);
        Ok(self
            .o_proj
            .forward(&decode::to_tensor(out, rows, xs.device())?)?)
    }

    /// A generation step on other devices, with tensor caches and one attention per sequence
    /// (a whole prompt's in chunks of queries, see [`crate::chunked_attention`]).
    fn step_device(
        &self,
        xs: &Tensor,
        layer: usize,
        batch: &mut [(&[u32], &mut KvCache)],
        rotary: &Rotary,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(xs, rotary)?;
        let mut outs = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (tokens, cache) in batch.iter_mut() {
            let len = tokens.len();
            let past = cache.len();
            let k_new = k.narrow(2, offset, len)?.contiguous()?;
            let v_new = v.narrow(2, offset, len)?.contiguous()?;
            let (k_all, v_all) = cache.append_device(layer, &k_new, &v_new)?;
            let q_s = q.narrow(2, offset, len)?.contiguous()?;
            let out = if len > 1 && past == 0 {
                // A whole prompt (or a scored sequence): in chunks of queries, so a long one
                // never holds its `heads × len²` scores at once.
                let rows = [(0..len as u32).collect::<Vec<_>>()];
                let chunks = QueryChunks::new(&rows, self.num_heads, xs.device())?;
                chunked_attention::attention(&q_s, &k_new, &v_new, &chunks, self.scale)?
            } else {
                let mask = (len > 1)
                    .then(|| causal_mask(len, past, xs.device()))
                    .transpose()?;
                self.attend(&q_s, &k_all, &v_all, mask.as_ref())?
            };
            outs.push(out);
            offset += len;
        }
        self.merge(&Tensor::cat(&outs, 2)?)
    }
}

/// Rotary tables of a generation step: host rows on the CPU, tensors elsewhere.
enum StepRope {
    Host(RowRope),
    Device(Rotary),
}

/// Which logits [`Model::step`] returns for each sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last new position (generation).
    Last,
    /// Every new position (prefill scoring, parity tests).
    All,
}

impl Model {
    /// One generation step over a ragged batch: each entry's `tokens` (a whole prompt, or one
    /// sampled token) are appended to its own cache. Returns each entry's logits, `[n, vocab]`
    /// where `n` is 1 for [`Logits::Last`] or the number of new tokens for [`Logits::All`].
    pub fn step(&self, batch: &mut [(&[u32], &mut KvCache)], which: Logits) -> Result<Vec<Tensor>> {
        if batch.iter().any(|(tokens, _)| tokens.is_empty()) {
            return Err(Error::Config(
                "a sequence in the batch has no new tokens".into(),
            ));
        }
        let ids: Vec<u32> = batch.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        self.check_ids(&ids)?;
        let positions: Vec<u32> = batch
            .iter()
            .flat_map(|(t, c)| (c.len()..c.len() + t.len()).map(|p| p as u32))
            .collect();
        let n = ids.len();
        // The host path (plain buffers, one ragged attention pass) is the CPU's f32 fast path;
        // every other device and dtype takes the tensor path, which CPU bf16 tests exercise.
        let rotary = if self.device.is_cpu() && self.dtype == DType::F32 {
            StepRope::Host(RowRope::new(&positions, &self.spec.rope))
        } else {
            StepRope::Device(self.rotary(&Tensor::from_vec(positions, (1, n), &self.device)?)?)
        };
        let mut xs = self
            .embed_tokens
            .forward(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = ops::rms_norm(&xs, &layer.input_layernorm, self.spec.rms_norm_eps)?;
            let attn = match &rotary {
                StepRope::Host(rope) => layer.self_attn.step_host(&normed, l, batch, rope)?,
                StepRope::Device(rotary) => {
                    layer.self_attn.step_device(&normed, l, batch, rotary)?
                }
            };
            xs = (xs + attn)?;
            let normed =
                ops::rms_norm(&xs, &layer.post_attention_layernorm, self.spec.rms_norm_eps)?;
            xs = (&xs + layer.mlp.forward(&normed)?)?;
        }
        for (tokens, cache) in batch.iter_mut() {
            cache.len += tokens.len();
        }
        let hidden = ops::rms_norm(&xs.squeeze(0)?, &self.norm, self.spec.rms_norm_eps)?;
        // Only the rows whose logits are wanted go through the (vocab-sized) head.
        let mut rows = Vec::new();
        let mut offset = 0u32;
        for (tokens, _) in batch.iter() {
            let len = tokens.len() as u32;
            match which {
                Logits::Last => rows.push(offset + len - 1),
                Logits::All => rows.extend(offset..offset + len),
            }
            offset += len;
        }
        let picked = hidden.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let logits = self.lm_head.forward(&picked)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (tokens, _) in batch.iter() {
            let count = if which == Logits::Last {
                1
            } else {
                tokens.len()
            };
            out.push(logits.narrow(0, start, count)?);
            start += count;
        }
        Ok(out)
    }

    /// Runs `tokens` through one sequence's cache; logits `[tokens.len(), vocab]`.
    pub fn forward_cached(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut batch = [(tokens, cache)];
        let mut out = self.step(&mut batch, Logits::All)?;
        Ok(out.remove(0))
    }
}

/// Causal mask `[len, past + len]` for `len` new queries after `past` cached positions.
fn causal_mask(len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..past + len).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (len, past + len), device)?)
}
