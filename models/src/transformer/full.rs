//! The full-sequence forward: every position of `[batch, seq]` rows at once, packed documents
//! told apart by their position ids, differentiable end to end (training, teacher scoring). On
//! the CPU in f32 with a gradient the attention is one fused node ([`crate::fused`]); elsewhere
//! it runs in chunks of queries ([`crate::chunked_attention`]). With activation checkpointing
//! each decoder layer is recomputed in the backward pass ([`crate::recompute`]).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::{Attention, Block, Model, Rotary};
use crate::recompute::{self, RecomputeGrads};
use crate::{chunked_attention, fused, ops, Error, Result};

impl Attention {
    /// Full-sequence attention of `[batch, seq, hidden]`, output-projected. When a gradient
    /// must flow on the CPU in f32, one fused node (see [`crate::fused`]); otherwise rope,
    /// attention in chunks of queries (see [`crate::chunked_attention`]) and merge.
    fn forward_full(&self, xs: &Tensor, seq: &mut FullSequence) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (q, k, v) = self.project(xs)?;
        let tracked = q.track_op() || k.track_op() || v.track_op();
        let rotary = &seq.rotary;
        if tracked && fused::supported(&q) && fused::supported(&rotary.cos) {
            let ctx = match &mut seq.ctx {
                Some(c) => c,
                None => seq.ctx.insert(fused::AttentionContext::new(
                    &rotary.cos,
                    &rotary.sin,
                    &seq.rows,
                )?),
            };
            let out = fused::attention(&q, &k, &v, ctx, self.scale)?;
            let out = out.reshape((b, t, self.num_heads * self.head_dim))?;
            return Ok(self.o_proj.forward(&out)?);
        }
        let chunks = match &mut seq.chunks {
            Some(c) => c,
            None => seq.chunks.insert(chunked_attention::QueryChunks::new(
                &seq.rows,
                self.num_heads,
                xs.device(),
            )?),
        };
        let (q, k, v) = self.rotate((q, k, v), &seq.rotary)?;
        let attn = chunked_attention::attention(&q, &k, &v, chunks, self.scale)?;
        self.merge(&attn)
    }
}

impl Block {
    /// The block over whole sequences (the training forward): pre-norm attention and MLP,
    /// each added to the residual stream.
    fn forward_full(&self, xs: &Tensor, seq: &mut FullSequence, eps: f64) -> Result<Tensor> {
        let normed = ops::rms_norm(xs, &self.input_layernorm, eps)?;
        let xs = (xs + self.self_attn.forward_full(&normed, seq)?)?;
        let normed = ops::rms_norm(&xs, &self.post_attention_layernorm, eps)?;
        Ok((&xs + self.mlp.forward(&normed)?)?)
    }
}

/// What every layer of one full-sequence forward shares: the rotary tables, each row's
/// position ids (documents start where a position does not follow its predecessor), and the
/// attention layout built from them on first use (the fused op's context, or the query chunks).
#[derive(Clone)]
struct FullSequence {
    rotary: Rotary,
    rows: Arc<Vec<Vec<u32>>>,
    ctx: Option<fused::AttentionContext>,
    chunks: Option<chunked_attention::QueryChunks>,
}

impl Model {
    /// Final hidden states `[batch, seq, hidden]` (after the last norm) for `input_ids`
    /// `[batch, seq]`. With `position_ids` (`[batch, seq]`), a position that does not follow its
    /// predecessor by one starts a new document: attention never crosses documents, so several
    /// packed sequences in one row give exactly their unpacked results.
    ///
    /// This reads the ids (and positions) back to check them and build the attention layout;
    /// callers that hold them on the host use [`Self::forward_hidden_host`] instead.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
        let positions = match position_ids {
            Some(p) => {
                if p.dims() != [b, t] {
                    return Err(Error::Config(format!(
                        "`position_ids` shape {:?} differs from `input_ids` shape [{b}, {t}]",
                        p.dims()
                    )));
                }
                p.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?
            }
            None => (0..b).flat_map(|_| 0..t as u32).collect(),
        };
        self.forward_hidden_host(&ids, &positions, b)
    }

    /// [`Self::forward_hidden`] for a `[batch, ids.len() / batch]` grid of ids and positions
    /// held on the host (row-major): they are checked there and uploaded once, so the forward
    /// never waits for the device.
    pub fn forward_hidden_host(
        &self,
        ids: &[u32],
        positions: &[u32],
        batch: usize,
    ) -> Result<Tensor> {
        self.forward_hidden_recomputing(ids, positions, batch, None)
    }

    /// [`Self::forward_hidden_host`] with activation checkpointing when `recompute` is given:
    /// each decoder layer keeps only its input for the backward pass, which runs the layer
    /// again (see [`crate::recompute`]) and puts its parameters' gradients in `recompute`.
    pub fn forward_hidden_recomputing(
        &self,
        ids: &[u32],
        positions: &[u32],
        batch: usize,
        recompute: Option<&Arc<RecomputeGrads>>,
    ) -> Result<Tensor> {
        if batch == 0 || !ids.len().is_multiple_of(batch) || positions.len() != ids.len() {
            return Err(Error::Config(format!(
                "{} ids and {} positions do not form {batch} equal rows",
                ids.len(),
                positions.len()
            )));
        }
        self.check_ids(ids)?;
        let t = ids.len() / batch;
        let rows: Vec<Vec<u32>> = positions.chunks(t).map(<[u32]>::to_vec).collect();
        let input_ids = Tensor::from_slice(ids, (batch, t), &self.device)?;
        let positions = Tensor::from_slice(positions, (batch, t), &self.device)?;
        let mut seq = FullSequence {
            rotary: self.rotary(&positions)?,
            rows: Arc::new(rows),
            ctx: None,
            chunks: None,
        };
        let eps = self.spec.rms_norm_eps;
        let mut xs = self.embed_tokens.forward(&input_ids)?;
        for layer in &self.layers {
            let ys = layer.forward_full(&xs, &mut seq, eps)?;
            xs = match recompute {
                None => ys,
                Some(grads) => {
                    // The layer's graph goes; backward runs it again from `xs` (`seq` now
                    // holds the attention layout, so the recomputation does not rebuild it).
                    let (layer, seq) = (layer.clone(), seq.clone());
                    recompute::recomputed(&xs, ys, grads, move |xs| {
                        layer.forward_full(xs, &mut seq.clone(), eps)
                    })?
                }
            };
        }
        Ok(ops::rms_norm(&xs, &self.norm, eps)?)
    }

    /// Logits `[batch, seq, vocab]` for every position: the training forward.
    pub fn forward(&self, input_ids: &Tensor, position_ids: Option<&Tensor>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, position_ids)?;
        Ok(self.lm_head.forward(&hidden)?)
    }
}
