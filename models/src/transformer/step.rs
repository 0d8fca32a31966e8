//! The generation forward: one step over a ragged batch of sequences, each with its own
//! [`KvCache`]. Projections and MLPs run on all new tokens at once; attention sees each
//! sequence's own history (on the CPU in f32 one ragged pass over plain buffers,
//! [`crate::decode`]; elsewhere the model's paged KV pool, [`crate::kv_pool`], with one batched
//! attention for every sequence that decodes one token), so sequences of different lengths
//! decode together (continuous batching).

use candle_core::{DType, Device, Tensor};

use super::{Attention, Model, Rotary};
use crate::chunked_attention::{self, QueryChunks};
use crate::decode::{self, KvCache, RowRope};
use crate::kv_pool::{PoolView, BLOCK};
use crate::{cuda, ops, Error, Result};

impl Attention {
    /// Scaled dot-product attention of `q` `[b, heads, q_len, d]` over `k`/`v` `[b, kv_heads,
    /// k_len, d]` (a history from the pool), with an optional additive mask that broadcasts
    /// over `[b, kv_heads, n_rep, q_len, k_len]` (`[q_len, k_len]` for every row, or `[b, 1, 1,
    /// q_len, k_len]` for one per row). Returns `[b, heads, q_len, d]`. The kv heads are not
    /// repeated: each multiplies its own group of query heads, laid out as `[b, kv_heads,
    /// n_rep × q_len, d]`, so a step reads the history once instead of copying it `n_rep`
    /// times (6× for Qwen2.5-1.5B) per layer.
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

    /// A generation step on other devices. Every new key and value goes into its sequence's
    /// blocks of the pool in one write per layer; the sequences with one new token attend
    /// together (the CUDA decode kernel through their block tables; elsewhere one batched
    /// attention over their gathered blocks, masked by length); each longer feed attends on its
    /// own (a whole prompt in chunks of queries over its own keys, see
    /// [`crate::chunked_attention`]; a chunk after cached positions over its gathered blocks).
    /// Returns the output projection `[1, rows, hidden]`.
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
        for (pool, new) in [(keys, &k), (values, &v)] {
            step.writes
                .apply(pool, &new.contiguous()?.reshape((kv * n, d))?)?;
        }
        let mut pieces = Vec::with_capacity(batch.len());
        if let Some(dec) = &step.decode {
            // q's rows in step order, `[rows, heads, d]`, to pick the decoding ones from.
            let q_rows = q.squeeze(0)?.transpose(0, 1)?.contiguous()?;
            let picked = q_rows.index_select(&dec.rows, 0)?;
            match &dec.padded {
                // One launch: each row attends its own history (no padding to the longest).
                None => pieces.push(cuda::decode_attention(
                    &picked,
                    keys,
                    values,
                    &dec.tables,
                    &dec.lengths,
                    self.scale as f32,
                )?),
                Some(padded) => {
                    let count = picked.dim(0)?;
                    let flat = dec.tables.flatten_all()?;
                    let (hk, hv) = (gather(keys, &flat, count)?, gather(values, &flat, count)?);
                    let q = picked.reshape((count, h, 1, d))?;
                    let out = self.attend(&q, &hk, &hv, Some(&padded.mask))?;
                    pieces.push(out.reshape((count, h * d))?);
                }
            }
        }
        let mut offset = 0;
        for ((tokens, _), feed) in batch.iter().zip(&step.feeds) {
            let len = tokens.len();
            let take = |t: &Tensor| t.narrow(2, offset, len)?.contiguous();
            let out = match feed {
                Feed::Token => None,
                Feed::Prompt(chunks) => Some(chunked_attention::attention(
                    &take(&q)?,
                    &take(&k)?,
                    &take(&v)?,
                    chunks,
                    self.scale,
                )?),
                Feed::Continuation { blocks, visible } => {
                    let history = |t: &Tensor| -> Result<Tensor> {
                        Ok(gather(t, blocks, 1)?.narrow(2, 0, *visible)?)
                    };
                    let mask = causal_mask(len, visible - len, xs.device())?;
                    Some(self.attend(
                        &take(&q)?,
                        &history(keys)?,
                        &history(values)?,
                        Some(&mask),
                    )?)
                }
            };
            if let Some(out) = out {
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

/// The blocks `ids` (u32 `[groups × width]`, each group's blocks in position order) of a pool
/// tensor `[blocks, kv_heads, BLOCK, d]`, as `groups` histories `[groups, kv_heads, width ×
/// BLOCK, d]` (a copy).
fn gather(pool: &Tensor, ids: &Tensor, groups: usize) -> Result<Tensor> {
    let (_, kv, block, d) = pool.dims4()?;
    let width = ids.elem_count() / groups;
    Ok(pool
        .index_select(ids, 0)?
        .reshape((groups, width, kv, block, d))?
        .transpose(1, 2)?
        .reshape((groups, kv, width * block, d))?)
}

/// What every layer of a step on the tensor path shares: the rotary tables, the pool's
/// tensors and where this step's rows go in them.
struct DeviceStep {
    rotary: Rotary,
    pool: PoolView,
    writes: PoolWrites,
    /// The entries with one new token, attended together.
    decode: Option<DecodeRows>,
    /// How each entry attends.
    feeds: Vec<Feed>,
    /// For each step row, its index among the pieces (the decoding rows, then each longer
    /// feed's rows), when that is not the identity (u32 `[rows]`).
    order: Option<Tensor>,
}

/// Where a step's new keys and values go in the pool viewed as `[blocks × kv_heads × BLOCK,
/// head_dim]` rows.
struct PoolWrites {
    /// For each (kv head, step row), in the order of the step's keys `[kv_heads, rows,
    /// head_dim]`, its pool row (u32 `[kv_heads × rows]`).
    targets: Tensor,
    /// The same repeated over `head_dim` (u32 `[kv_heads × rows, head_dim]`), for a scatter
    /// where the CUDA kernel does not run.
    scatter: Option<Tensor>,
}

impl PoolWrites {
    /// Writes `rows` (`[kv_heads × step rows, head_dim]`) into `pool`, in place.
    fn apply(&self, pool: &Tensor, rows: &Tensor) -> Result<()> {
        match &self.scatter {
            None => cuda::set_rows(pool, &self.targets, rows)?,
            Some(index) => {
                let d = rows.dim(1)?;
                pool.reshape((pool.elem_count() / d, d))?
                    .scatter_set(index, rows, 0)?;
            }
        }
        Ok(())
    }
}

/// How an entry of a step attends.
enum Feed {
    /// One new token: with the step's other decoding rows ([`DecodeRows`]).
    Token,
    /// A whole prompt (several tokens, nothing cached: also a scored sequence): in chunks of
    /// queries over its own new keys, so a long one never holds its `heads × len²` scores.
    Prompt(QueryChunks),
    /// Several tokens after cached positions: over its blocks (u32 `[blocks]`), of which the
    /// first `visible` positions are its history and the new ones.
    Continuation { blocks: Tensor, visible: usize },
}

/// The one-token entries of a step.
struct DecodeRows {
    /// Their rows in the step (u32 `[n]`), their block tables (u32 `[n, width]`, position
    /// order, padded with block 0 past each one's last) and the keys each one sees, its
    /// history and the new one (u32 `[n]`).
    rows: Tensor,
    tables: Tensor,
    lengths: Tensor,
    /// What the batched attention over gathered blocks needs; none where the CUDA decode
    /// kernel reads the blocks itself.
    padded: Option<PaddedDecode>,
}

/// The batched attention's view of the one-token entries: every history gathered to the
/// widest table.
struct PaddedDecode {
    /// `[n, 1, 1, 1, width × BLOCK]` f32: 0 where an entry's query sees a key, `-inf`
    /// elsewhere.
    mask: Tensor,
}

impl DeviceStep {
    /// Gives each entry blocks for the step's positions (a first block list for a new
    /// sequence) and builds the step's indices and masks on the host (one upload each per
    /// step).
    fn new(model: &Model, batch: &mut [(&[u32], &mut KvCache)], rotary: Rotary) -> Result<Self> {
        let (h, kv, d) = (
            model.spec.num_heads,
            model.spec.num_kv_heads,
            model.spec.head_dim,
        );
        let device = &model.device;
        let pool = &model.kv_pool;
        for (tokens, cache) in batch.iter_mut() {
            let len = cache.len + tokens.len();
            let blocks = cache.blocks.get_or_insert_with(|| pool.blocks());
            if !blocks.is_in(pool) {
                return Err(Error::Config(
                    "a KV cache made by another model's `new_cache` was given to `step`".into(),
                ));
            }
            pool.reserve(blocks, len)?;
        }
        let view = pool.view();
        let n: usize = batch.iter().map(|(t, _)| t.len()).sum();
        // Each new row's place in the pool, the one-token entries (step row, blocks, cached
        // positions) and how each entry attends.
        let mut targets = vec![0u32; kv * n];
        let mut decoding: Vec<(usize, &[u32], usize)> = Vec::new();
        let mut feeds = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (tokens, cache) in batch.iter() {
            let ids = cache.blocks.as_ref().expect("reserved above").ids();
            let (past, len) = (cache.len(), tokens.len());
            for i in 0..len {
                let position = past + i;
                let block = ids[position / BLOCK] as usize;
                for head in 0..kv {
                    let row = (block * kv + head) * BLOCK + position % BLOCK;
                    targets[head * n + offset + i] = row as u32;
                }
            }
            feeds.push(if len == 1 {
                decoding.push((offset, ids, past));
                Feed::Token
            } else if past == 0 {
                let rows = [(0..len as u32).collect::<Vec<_>>()];
                Feed::Prompt(QueryChunks::new(&rows, h, device)?)
            } else {
                let visible = past + len;
                let blocks = &ids[..visible.div_ceil(BLOCK)];
                Feed::Continuation {
                    blocks: Tensor::new(blocks, device)?,
                    visible,
                }
            });
            offset += len;
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
        // The CUDA kernels write the pool and attend each row through its block table;
        // elsewhere a scatter writes and one batched attention gathers every history.
        let kernels = view
            .tensors
            .first()
            .is_some_and(|(k, v)| cuda::supported_all(&[k, v]));
        let decode_kernel = kernels && cuda::decode_attention_fits(h, kv, d);
        let targets = Tensor::from_vec(targets, kv * n, device)?;
        let scatter = (!kernels)
            .then(|| {
                targets
                    .unsqueeze(1)?
                    .broadcast_as((kv * n, d))?
                    .contiguous()
            })
            .transpose()?;
        let writes = PoolWrites { targets, scatter };
        let decode = if decoding.is_empty() {
            None
        } else {
            let count = decoding.len();
            let width = decoding
                .iter()
                .map(|&(.., past)| (past + 1).div_ceil(BLOCK))
                .max()
                .unwrap_or(1);
            let mut tables = vec![0u32; count * width];
            for (table, &(_, ids, past)) in tables.chunks_mut(width).zip(&decoding) {
                let used = (past + 1).div_ceil(BLOCK);
                table[..used].copy_from_slice(&ids[..used]);
            }
            let lengths: Vec<u32> = decoding.iter().map(|&(.., past)| past as u32 + 1).collect();
            let padded = if decode_kernel {
                None
            } else {
                let keys = width * BLOCK;
                let mask: Vec<f32> = lengths
                    .iter()
                    .flat_map(|&seen| {
                        (0..keys).map(move |j| {
                            if j < seen as usize {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                Some(PaddedDecode {
                    mask: Tensor::from_vec(mask, (count, 1, 1, 1, keys), device)?,
                })
            };
            let rows: Vec<u32> = decoding.iter().map(|&(row, ..)| row as u32).collect();
            Some(DecodeRows {
                rows: Tensor::from_vec(rows, count, device)?,
                tables: Tensor::from_vec(tables, (count, width), device)?,
                lengths: Tensor::from_vec(lengths, count, device)?,
                padded,
            })
        };
        // Pieces already in step order (the decoding rows come first) need no reordering.
        let in_order = order.iter().enumerate().all(|(i, &o)| o as usize == i);
        let order = (!in_order)
            .then(|| Tensor::from_vec(order, n, device))
            .transpose()?;
        Ok(Self {
            rotary,
            pool: view,
            writes,
            decode,
            feeds,
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
        // On the CPU, one hand-over to rayon's pool per step instead of one per op (`workers`).
        crate::workers::on_workers(&self.device, || self.step_here(batch, which))
    }

    fn step_here(
        &self,
        batch: &mut [(&[u32], &mut KvCache)],
        which: Logits,
    ) -> Result<Vec<Tensor>> {
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
        let plan = if !self.uses_kv_pool() {
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
