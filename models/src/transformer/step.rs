//! The generation forward: one step over a ragged batch of sequences, each with its own
//! [`KvCache`]. Projections and MLPs run on all new tokens at once; attention sees each
//! sequence's own history (on the CPU in f32 one ragged pass over plain buffers,
//! [`crate::decode`]; elsewhere the model's KV pool, [`crate::kv_pool`], with one batched
//! attention for every sequence that decodes one token), so sequences of different lengths
//! decode together (continuous batching).

use candle_core::{DType, Device, Tensor};

use super::{Attention, Model, Rotary};
use crate::chunked_attention::{self, QueryChunks};
use crate::decode::{self, KvCache, RowRope};
use crate::kv_pool::PoolView;
use crate::{cuda, ops, Error, Result};

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

    /// A generation step on other devices. The sequences with one new token go into the pool
    /// with one scatter and attend together (one batched attention over every slot's history,
    /// masked by length); each longer feed (a prompt, or a chunk of one) is copied into its
    /// slot as one block and attends on its own (a whole prompt in chunks of queries, see
    /// [`crate::chunked_attention`]). Returns the output projection `[1, rows, hidden]`.
    fn step_device(
        &self,
        xs: &Tensor,
        layer: usize,
        batch: &[(&[u32], &mut KvCache)],
        step: &DeviceStep,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(xs, &step.rotary)?;
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let n = q.dim(2)?;
        let (keys, values) = &step.pool.tensors[layer];
        let (slots, capacity) = (step.pool.slots, step.pool.capacity);
        let mut pieces = Vec::with_capacity(batch.len());
        if let Some(dec) = &step.decode {
            // The append: one scatter along the positions of every (slot, kv head), each
            // writing one row (or none: the index past the end is skipped), so the scatter is
            // parallel over slots × kv heads × d.
            for (pool, new) in [(keys, &k), (values, &v)] {
                let rows = new
                    .contiguous()?
                    .reshape((kv * n, d))?
                    .index_select(&dec.sources, 0)?
                    .reshape((slots * kv, 1, d))?;
                pool.reshape((slots * kv, capacity, d))?
                    .scatter_set(&dec.targets, &rows, 1)?;
            }
            // q's rows in step order, `[rows, heads, d]`, to pick the decoding ones from.
            let q_rows = q.squeeze(0)?.transpose(0, 1)?.contiguous()?;
            let picked = q_rows.index_select(&dec.rows, 0)?;
            match &dec.padded {
                // One launch: each row attends its own history (no padding to the longest).
                None => pieces.push(cuda::decode_attention(
                    &picked,
                    keys,
                    values,
                    &dec.slots,
                    &dec.lengths,
                    self.scale as f32,
                )?),
                Some(padded) => {
                    let picked = picked.reshape(((), h * d))?;
                    let grouped = Tensor::zeros((slots, h * d), q.dtype(), q.device())?;
                    grouped.scatter_set(&padded.slot_targets, &picked, 0)?;
                    let grouped = grouped.reshape((slots, kv, h / kv, d))?;
                    let history = |t: &Tensor| t.narrow(2, 0, padded.keys);
                    let scores = (grouped.matmul(&history(keys)?.t()?)?.to_dtype(DType::F32)?
                        * self.scale)?
                        .broadcast_add(&padded.mask)?;
                    let probs = ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
                    let out = probs.matmul(&history(values)?)?;
                    pieces.push(out.reshape((slots, h * d))?.index_select(&dec.slots, 0)?);
                }
            }
        }
        let mut offset = 0;
        for ((tokens, cache), prompt) in batch.iter().zip(&step.prompts) {
            let len = tokens.len();
            if len > 1 {
                let (past, slot) = (cache.len(), cache.slot_index());
                let q_s = q.narrow(2, offset, len)?.contiguous()?;
                let k_new = k.narrow(2, offset, len)?.contiguous()?;
                let v_new = v.narrow(2, offset, len)?.contiguous()?;
                // The feed's rows are one block of its slot: a plain copy each.
                keys.narrow(0, slot, 1)?.slice_set(&k_new, 2, past)?;
                values.narrow(0, slot, 1)?.slice_set(&v_new, 2, past)?;
                let out = if let Some(chunks) = prompt {
                    chunked_attention::attention(&q_s, &k_new, &v_new, chunks, self.scale)?
                } else {
                    let history = |t: &Tensor| t.narrow(0, slot, 1)?.narrow(2, 0, past + len);
                    let mask = causal_mask(len, past, xs.device())?;
                    self.attend(&q_s, &history(keys)?, &history(values)?, Some(&mask))?
                };
                pieces.push(out.squeeze(0)?.transpose(0, 1)?.reshape((len, h * d))?);
            }
            offset += len;
        }
        let rows = Tensor::cat(&pieces, 0)?;
        let rows = match &step.order {
            None => rows,
            Some(order) => rows.index_select(order, 0)?,
        };
        Ok(self.o_proj.forward(&rows.unsqueeze(0)?)?)
    }
}

/// What every layer of a step on the tensor path shares: the rotary tables, the pool's
/// tensors and where this step's rows go in them.
struct DeviceStep {
    rotary: Rotary,
    pool: PoolView,
    /// The entries with one new token, attended together.
    decode: Option<DecodeRows>,
    /// For each entry that is a whole prompt (several tokens, nothing cached: also a scored
    /// sequence), its query chunks: it attends in chunks of queries, so a long one never holds
    /// its `heads × len²` scores at once.
    prompts: Vec<Option<QueryChunks>>,
    /// For each step row, its index among the pieces (the decoding rows, then each longer
    /// feed's rows), when that is not the identity (u32 `[rows]`).
    order: Option<Tensor>,
}

/// The one-token entries of a step.
struct DecodeRows {
    /// Their rows in the step (u32 `[n]`), their slots (u32 `[n]`) and the keys each one sees,
    /// its history and the new one (u32 `[n]`).
    rows: Tensor,
    slots: Tensor,
    lengths: Tensor,
    /// The append: for each (slot, kv head), the row of this step's keys/values (flattened to
    /// `[kv_heads × rows, head_dim]`) it takes (u32 `[slots × kv_heads]`), and the position it
    /// goes to, repeated over `head_dim` (u32 `[slots × kv_heads, 1, head_dim]`; `u32::MAX`,
    /// which a scatter skips, for slots not decoding).
    sources: Tensor,
    targets: Tensor,
    /// What the batched attention over every slot needs; none where the CUDA decode kernel
    /// attends each row to its own length.
    padded: Option<PaddedDecode>,
}

/// The batched attention's view of the one-token entries: every slot padded to the longest
/// history.
struct PaddedDecode {
    /// Each entry's slot repeated over `heads × head_dim` (u32 `[n, heads × head_dim]`), the
    /// scatter index that puts its query into the slots' query tensor.
    slot_targets: Tensor,
    /// Keys attended: the longest history among them.
    keys: usize,
    /// `[slots, 1, 1, keys]` f32: 0 where a slot's query sees a key, `-inf` elsewhere (slots
    /// not decoding see position 0, so their softmax stays finite).
    mask: Tensor,
}

impl PaddedDecode {
    /// For the one-token entries `(step row, slot, cached positions)` and their `slots`, in a
    /// pool of `pool_slots` slots, queries of `width` (heads × head_dim) values.
    fn new(
        decoding: &[(usize, usize, usize)],
        slots: &[u32],
        pool_slots: usize,
        width: usize,
        device: &Device,
    ) -> Result<Self> {
        // Each slot's visible keys: its history and the new one; slots not decoding see
        // position 0, so their softmax stays finite.
        let mut seen = vec![1usize; pool_slots];
        for &(_, slot, past) in decoding {
            seen[slot] = past + 1;
        }
        let keys = seen.iter().copied().max().unwrap_or(1);
        let mask: Vec<f32> = seen
            .iter()
            .flat_map(|&s| (0..keys).map(move |j| if j < s { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let slot_targets: Vec<u32> = slots
            .iter()
            .flat_map(|&slot| std::iter::repeat_n(slot, width))
            .collect();
        Ok(Self {
            slot_targets: Tensor::from_vec(slot_targets, (slots.len(), width), device)?,
            keys,
            mask: Tensor::from_vec(mask, (pool_slots, 1, 1, keys), device)?,
        })
    }
}

impl DeviceStep {
    /// Takes a slot for each entry that has none, makes room for the step's positions and
    /// builds the step's indices and masks on the host (one upload each per step).
    fn new(model: &Model, batch: &mut [(&[u32], &mut KvCache)], rotary: Rotary) -> Result<Self> {
        let (h, kv, d) = (
            model.spec.num_heads,
            model.spec.num_kv_heads,
            model.spec.head_dim,
        );
        let device = &model.device;
        for (_, cache) in batch.iter_mut() {
            match &cache.slot {
                None => cache.slot = Some(model.kv_pool.acquire()?),
                Some(slot) if !slot.is_in(&model.kv_pool) => {
                    return Err(Error::Config(
                        "a KV cache made by another model's `new_cache` was given to `step`".into(),
                    ))
                }
                Some(_) => {}
            }
        }
        let longest = batch
            .iter()
            .map(|(t, c)| c.len() + t.len())
            .max()
            .unwrap_or(0);
        model.kv_pool.reserve(longest)?;
        let pool = model.kv_pool.view();
        let n: usize = batch.iter().map(|(t, _)| t.len()).sum();
        // The one-token entries: (step row, slot, cached positions).
        let mut decoding = Vec::new();
        let mut offset = 0;
        for (tokens, cache) in batch.iter() {
            if tokens.len() == 1 {
                decoding.push((offset, cache.slot_index(), cache.len()));
            }
            offset += tokens.len();
        }
        // Output rows: the decoding rows first, then each longer feed's rows, in step order.
        let mut order = Vec::with_capacity(n);
        let (mut decoded, mut fed) = (0u32, decoding.len() as u32);
        for (tokens, _) in batch.iter() {
            let len = tokens.len() as u32;
            let next = if len == 1 { &mut decoded } else { &mut fed };
            order.extend(*next..*next + len);
            *next += len;
        }
        // The CUDA decode kernel attends each row to its own length; elsewhere one batched
        // attention pads every slot to the longest history.
        let decode_kernel = cuda::decode_attention_fits(h, kv, d)
            && pool
                .tensors
                .first()
                .is_some_and(|(k, v)| cuda::supported_all(&[k, v]));
        let decode = if decoding.is_empty() {
            None
        } else {
            let rows: Vec<u32> = decoding.iter().map(|&(row, ..)| row as u32).collect();
            let slots: Vec<u32> = decoding.iter().map(|&(_, slot, _)| slot as u32).collect();
            let lengths: Vec<u32> = decoding.iter().map(|&(.., past)| past as u32 + 1).collect();
            let padded = (!decode_kernel)
                .then(|| PaddedDecode::new(&decoding, &slots, pool.slots, h * d, device))
                .transpose()?;
            let (mut sources, mut targets) = (
                vec![0u32; pool.slots * kv],
                vec![u32::MAX; pool.slots * kv * d],
            );
            for &(row, slot, past) in &decoding {
                for head in 0..kv {
                    let at = slot * kv + head;
                    sources[at] = (head * n + row) as u32;
                    targets[at * d..(at + 1) * d].fill(past as u32);
                }
            }
            let count = decoding.len();
            Some(DecodeRows {
                sources: Tensor::from_vec(sources, pool.slots * kv, device)?,
                targets: Tensor::from_vec(targets, (pool.slots * kv, 1, d), device)?,
                rows: Tensor::from_vec(rows, count, device)?,
                slots: Tensor::from_vec(slots, count, device)?,
                lengths: Tensor::from_vec(lengths, count, device)?,
                padded,
            })
        };
        let prompts = batch
            .iter()
            .map(|(tokens, cache)| {
                let whole = tokens.len() > 1 && cache.is_empty();
                whole
                    .then(|| {
                        let rows = [(0..tokens.len() as u32).collect::<Vec<_>>()];
                        QueryChunks::new(&rows, h, device)
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        // Pieces already in step order (the decoding rows come first) need no reordering.
        let in_order = order.iter().enumerate().all(|(i, &o)| o as usize == i);
        let order = (!in_order)
            .then(|| Tensor::from_vec(order, n, device))
            .transpose()?;
        Ok(Self {
            rotary,
            pool,
            decode,
            prompts,
            order,
        })
    }
}

/// What the layers of a generation step share: host rotary rows on the CPU's f32 path, the
/// tensor path's tables and pool indices elsewhere.
enum StepPlan {
    Host(RowRope),
    Device(DeviceStep),
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
        let plan = if self.device.is_cpu() && self.dtype == DType::F32 {
            StepPlan::Host(RowRope::new(&positions, &self.spec.rope))
        } else {
            let rotary = self.rotary(&Tensor::from_vec(positions, (1, n), &self.device)?)?;
            StepPlan::Device(DeviceStep::new(self, batch, rotary)?)
        };
        let mut xs = self
            .embed_tokens
            .forward(&Tensor::from_vec(ids, (1, n), &self.device)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = ops::rms_norm(&xs, &layer.input_layernorm, self.spec.rms_norm_eps)?;
            let attn = match &plan {
                StepPlan::Host(rope) => layer.self_attn.step_host(&normed, l, batch, rope)?,
                StepPlan::Device(step) => layer.self_attn.step_device(&normed, l, batch, step)?,
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
