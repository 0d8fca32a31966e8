//! The decoder shared by Qwen2, Qwen3 and Llama: embeddings, pre-norm blocks of grouped-query
//! attention with rotary positions (and, for Qwen3, an RMSNorm over each q/k head) and a SwiGLU
//! MLP, final norm and LM head. Weight names equal the Hugging Face keys.
//!
//! Two forwards share the layers:
//! - [`Model::forward`]: the full-sequence training forward. Logits for every position, packed
//!   documents via per-token position ids, differentiable end to end (see [`crate::ops`]).
//! - [`Model::step`]: the generation forward over a ragged batch of sequences, each with its own
//!   [`KvCache`]. Projections and MLPs run on all new tokens at once; attention runs per sequence,
//!   so sequences of different lengths decode together (continuous batching).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};

pub use crate::decode::KvCache;
use crate::decode::{self, RowRope};
use crate::recompute::{self, RecomputeGrads};
pub use crate::rope::RopeSpec;
use crate::weights::Weights;
pub use crate::weights::{Linear, QuantizedWeight};
use crate::{fused, ops, Error, Result};

/// Architecture-neutral hyper-parameters, built from a `config.json` mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeSpec,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3's per-head RMSNorm of q and k (`self_attn.q_norm` / `k_norm`, `[head_dim]`),
    /// applied before the rotary embedding.
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub hidden_act: String,
    pub initializer_range: f64,
}

impl Spec {
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("`{name}` must be positive")));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::Config(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "`head_dim` ({}) must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if self.hidden_act != "silu" {
            return Err(Error::Config(format!(
                "`hidden_act` `{}` is not supported (only `silu`)",
                self.hidden_act
            )));
        }
        Ok(())
    }

    /// Every weight the model reads, with its Hugging Face name and shape, in load order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
            for (proj, rows, cols, bias) in [
                ("self_attn.q_proj", q, h, self.qkv_bias),
                ("self_attn.k_proj", kv, h, self.qkv_bias),
                ("self_attn.v_proj", kv, h, self.qkv_bias),
                ("self_attn.o_proj", h, q, self.o_bias),
                ("mlp.gate_proj", i, h, self.mlp_bias),
                ("mlp.up_proj", i, h, self.mlp_bias),
                ("mlp.down_proj", h, i, self.mlp_bias),
            ] {
                push(format!("{p}.{proj}.weight"), vec![rows, cols]);
                if bias {
                    push(format!("{p}.{proj}.bias"), vec![rows]);
                }
            }
            if self.qk_norm {
                push(format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]);
                push(format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]);
            }
            push(format!("{p}.input_layernorm.weight"), vec![h]);
            push(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }

    /// Parameter count, tied embeddings counted once (as `sum(p.numel())` in PyTorch).
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Cosine and sine tables for a `[batch, seq]` grid of positions: `[batch, seq, head_dim / 2]`.
#[derive(Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// `[batch, kv_heads, seq, d]` → `[batch, kv_heads * n_rep, seq, d]` for grouped-query attention.
fn repeat_kv(xs: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, kv, t, d) = xs.dims4()?;
    Ok(xs
        .unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))?)
}

#[derive(Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per-head RMSNorm weights `[head_dim]` of q and k (Qwen3), with their epsilon.
    qk_norm: Option<(Tensor, Tensor, f64)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(spec: &Spec, w: &Weights, p: &str) -> Result<Self> {
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let (q, kv) = (spec.num_heads * d, spec.num_kv_heads * d);
        let qk_norm = if spec.qk_norm {
            let norm = |name: &str| w.tensor(&format!("{p}.{name}.weight"), &[d], Init::Const(1.0));
            Some((norm("q_norm")?, norm("k_norm")?, spec.rms_norm_eps))
        } else {
            None
        };
        Ok(Self {
            q_proj: w.linear(spec, &format!("{p}.q_proj"), h, q, spec.qkv_bias)?,
            k_proj: w.linear(spec, &format!("{p}.k_proj"), h, kv, spec.qkv_bias)?,
            v_proj: w.linear(spec, &format!("{p}.v_proj"), h, kv, spec.qkv_bias)?,
            o_proj: w.linear(spec, &format!("{p}.o_proj"), q, h, spec.o_bias)?,
            qk_norm,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f64).sqrt(),
        })
    }

    /// Projects `[batch, seq, hidden]` to `q` `[b, seq, heads, d]` and `k`, `v`
    /// `[b, seq, kv_heads, d]` (q and k head-normed where the model has q/k norms, not rotated).
    fn project(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = xs.dims3()?;
        let split = |proj: &Linear, heads: usize| -> Result<Tensor> {
            Ok(proj.forward(xs)?.reshape((b, t, heads, self.head_dim))?)
        };
        let (q, k) = self.norm_qk(
            split(&self.q_proj, self.num_heads)?,
            split(&self.k_proj, self.num_kv_heads)?,
        )?;
        Ok((q, k, split(&self.v_proj, self.num_kv_heads)?))
    }

    /// Qwen3's RMSNorm over the last (head) dimension of q and k; the identity elsewhere.
    /// Differentiable (and fused on the CPU when tracked), so the training forward runs it
    /// before the fused attention, which rotates internally.
    fn norm_qk(&self, q: Tensor, k: Tensor) -> Result<(Tensor, Tensor)> {
        match &self.qk_norm {
            Some((q_norm, k_norm, eps)) => Ok((
                ops::rms_norm(&q, q_norm, *eps)?,
                ops::rms_norm(&k, k_norm, *eps)?,
            )),
            None => Ok((q, k)),
        }
    }

    /// Projects `[batch, seq, hidden]` to rotated `q` `[b, heads, seq, d]` and `k`, `v`
    /// `[b, kv_heads, seq, d]`.
    fn qkv(&self, xs: &Tensor, rotary: &Rotary) -> Result<(Tensor, Tensor, Tensor)> {
        self.rotate(self.project(xs)?, rotary)
    }

    /// Projections from [`Self::project`] to heads-first layout, q and k rotated.
    fn rotate(
        &self,
        (q, k, v): (Tensor, Tensor, Tensor),
        rotary: &Rotary,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let heads_first = |x: Tensor| -> Result<Tensor> { Ok(x.transpose(1, 2)?.contiguous()?) };
        let q = ops::rope(&heads_first(q)?, &rotary.cos, &rotary.sin)?;
        let k = ops::rope(&heads_first(k)?, &rotary.cos, &rotary.sin)?;
        Ok((q, k, heads_first(v)?))
    }

    /// Full-sequence attention of `[batch, seq, hidden]`, output-projected. When a gradient
    /// must flow on the CPU in f32, one fused node (see [`crate::fused`]); otherwise rope,
    /// masked softmax attention and merge as separate ops, with the mask built on first use.
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
        let mask = match &mut seq.mask {
            Some(m) => m,
            None => seq.mask.insert(document_mask(&seq.rows, xs.device())?),
        };
        let (q, k, v) = self.rotate((q, k, v), &seq.rotary)?;
        let attn = self.attend(&q, k, v, Some(mask))?;
        self.merge(&attn)
    }

    /// Scaled dot-product attention of `q` over `k`/`v` (kv heads not yet repeated), with an
    /// optional additive mask broadcastable to `[b, heads, q_len, k_len]`. Returns
    /// `[b, heads, q_len, d]`.
    fn attend(&self, q: &Tensor, k: Tensor, v: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let n_rep = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        // Scores and softmax in f32 whatever the compute dtype, as transformers' eager attention
        // does (`softmax(..., dtype=torch.float32)`); a no-op in f32.
        let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * self.scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        Ok(probs.matmul(&v)?)
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

    /// A generation step on other devices, with tensor caches and one attention per sequence.
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
            let (k_all, v_all) = cache.append_device(
                layer,
                &k.narrow(2, offset, len)?.contiguous()?,
                &v.narrow(2, offset, len)?.contiguous()?,
            )?;
            let mask = (len > 1)
                .then(|| causal_mask(len, past, xs.device()))
                .transpose()?;
            let q_s = q.narrow(2, offset, len)?.contiguous()?;
            outs.push(self.attend(&q_s, k_all, v_all, mask.as_ref())?);
            offset += len;
        }
        self.merge(&Tensor::cat(&outs, 2)?)
    }

    /// `[b, heads, seq, d]` → output projection of `[b, seq, heads * d]`.
    fn merge(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _, t, _) = xs.dims4()?;
        let xs = xs
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        Ok(self.o_proj.forward(&xs)?)
    }
}

#[derive(Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(spec: &Spec, w: &Weights, p: &str) -> Result<Self> {
        let (h, i, bias) = (spec.hidden_size, spec.intermediate_size, spec.mlp_bias);
        Ok(Self {
            gate_proj: w.linear(spec, &format!("{p}.gate_proj"), h, i, bias)?,
            up_proj: w.linear(spec, &format!("{p}.up_proj"), h, i, bias)?,
            down_proj: w.linear(spec, &format!("{p}.down_proj"), i, h, bias)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = ops::swiglu(&self.gate_proj.forward(xs)?, &self.up_proj.forward(xs)?)?;
        Ok(self.down_proj.forward(&gate)?)
    }
}

#[derive(Clone)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
}

impl Block {
    fn new(spec: &Spec, w: &Weights, p: &str) -> Result<Self> {
        let norm = |name: &str| {
            w.tensor(
                &format!("{p}.{name}.weight"),
                &[spec.hidden_size],
                Init::Const(1.0),
            )
        };
        Ok(Self {
            self_attn: Attention::new(spec, w, &format!("{p}.self_attn"))?,
            mlp: Mlp::new(spec, w, &format!("{p}.mlp"))?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
        })
    }

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
/// attention layout built from them on first use (the fused op's context, or a mask).
#[derive(Clone)]
struct FullSequence {
    rotary: Rotary,
    rows: Arc<Vec<Vec<u32>>>,
    ctx: Option<fused::AttentionContext>,
    mask: Option<Tensor>,
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

/// The token embedding table: floats, or (GGUF on the CPU) the stored quantized rows, of which a
/// step dequantizes only the ones it looks up: an f32 copy of a large vocabulary (Qwen2.5's
/// 151,936 × 896: 545 MB) takes more memory than the whole Q4_K_M file (491 MB).
enum TokenEmbedding {
    Dense(Embedding),
    Quantized { table: Arc<QTensor>, hidden: usize },
}

impl TokenEmbedding {
    /// `[..]` ids (checked against the vocabulary) → `[.., hidden]`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (table, hidden) = match self {
            TokenEmbedding::Dense(e) => return e.forward(ids),
            TokenEmbedding::Quantized { table, hidden } => (table, *hidden),
        };
        let mut dims = ids.dims().to_vec();
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let data = table.data()?;
        // Every quant block lies inside one row, so rows are whole byte ranges.
        let row_bytes = data.len() / table.shape().dims()[0];
        let mut rows = Vec::with_capacity(ids.len() * row_bytes);
        for &id in &ids {
            rows.extend_from_slice(&data[id as usize * row_bytes..][..row_bytes]);
        }
        let storage = QStorage::from_data(Cow::Owned(rows), &Device::Cpu, table.dtype())?;
        let picked = QTensor::new(storage, (ids.len(), hidden))?;
        dims.push(hidden);
        picked.dequantize(&Device::Cpu)?.reshape(dims)
    }
}

/// A Qwen2/Qwen3/Llama causal language model.
pub struct Model {
    spec: Spec,
    embed_tokens: TokenEmbedding,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Tensor,
    device: Device,
    /// The compute dtype: the embedding table's (activations, caches and logits follow it).
    dtype: DType,
}

impl Model {
    /// Builds the model from a `VarBuilder`: weights from a checkpoint, or freshly initialised
    /// (`N(0, initializer_range)`, zero biases, unit norms, as `transformers`) from a `VarMap`.
    pub fn new(spec: &Spec, vb: VarBuilder) -> Result<Self> {
        Self::build(spec, &Weights::Float(vb))
    }

    /// Builds an inference model that keeps GGUF weights in their stored type (`QMatMul`); the
    /// tensors are keyed by Hugging Face name, as [`crate::quantized::load`] returns them.
    pub fn new_quantized(
        spec: &Spec,
        tensors: &HashMap<String, Arc<QTensor>>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(spec, &Weights::Quantized(tensors, device.clone()))
    }

    fn build(spec: &Spec, w: &Weights) -> Result<Self> {
        spec.validate()?;
        let (v, h) = (spec.vocab_size, spec.hidden_size);
        let embed_init = Init::Randn {
            mean: 0.0,
            stdev: spec.initializer_range,
        };
        let name = "model.embed_tokens.weight";
        // GGUF on the CPU: the table stays as stored (see `TokenEmbedding`).
        let (embed, embed_tokens) = match w {
            Weights::Quantized(..) if w.device().is_cpu() => {
                let table = w.qtensor(name)?;
                Weights::check(name, table, &[v, h])?;
                let rows = TokenEmbedding::Quantized {
                    table: table.clone(),
                    hidden: h,
                };
                (None, rows)
            }
            _ => {
                let embed = w.tensor(name, &[v, h], embed_init)?;
                let rows = TokenEmbedding::Dense(Embedding::new(embed.clone(), h));
                (Some(embed), rows)
            }
        };
        let layers = (0..spec.num_layers)
            .map(|l| Block::new(spec, w, &format!("model.layers.{l}")))
            .collect::<Result<Vec<_>>>()?;
        let norm = w.tensor("model.norm.weight", &[h], Init::Const(1.0))?;
        let lm_head = match (spec.tie_word_embeddings, w, &embed) {
            (true, Weights::Float(_), Some(embed)) => {
                Linear::Dense(candle_nn::Linear::new(embed.clone(), None))
            }
            // Tied and quantized: the head multiplies by the stored (quantized) embedding, as
            // llama.cpp does, instead of a dequantized vocab-sized copy.
            (true, _, _) => Linear::quantized(w.qtensor(name)?, None)?,
            (false, _, _) => w.linear(spec, "lm_head", h, v, false)?,
        };
        let device = w.device().clone();
        let inv_freq = Tensor::new(spec.rope.inv_freq.as_slice(), &device)?;
        let dtype = embed.as_ref().map_or(DType::F32, Tensor::dtype);
        Ok(Self {
            spec: spec.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            device,
            dtype,
        })
    }

    /// The compute dtype (the embedding table's).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.num_layers)
    }

    /// Rotary tables for a `[batch, seq]` u32 tensor of positions, computed in f32 and stored
    /// in the compute dtype.
    fn rotary(&self, positions: &Tensor) -> Result<Rotary> {
        let freqs = positions
            .to_dtype(DType::F32)?
            .unsqueeze(D::Minus1)?
            .broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?;
        // YaRN scales the tables themselves (`attention_scaling` in transformers), in f32.
        let factor = f64::from(self.spec.rope.attention_factor);
        let table = |t: Tensor| -> Result<Tensor> {
            let t = if factor == 1.0 { t } else { (t * factor)? };
            Ok(t.to_dtype(self.dtype)?)
        };
        Ok(Rotary {
            cos: table(freqs.cos()?)?,
            sin: table(freqs.sin()?)?,
        })
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.spec.vocab_size) {
            Some(id) => Err(Error::Config(format!(
                "token id {id} is outside the vocabulary (size {})",
                self.spec.vocab_size
            ))),
            None => Ok(()),
        }
    }

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
            mask: None,
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

/// Additive mask `[batch, 1, seq, seq]`: 0 where a query may attend (same document, not in the
/// future), `-inf` elsewhere. A document starts wherever a position does not continue its
/// predecessor. With a single row, the mask is shared across the batch.
fn document_mask(positions: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let t = positions.first().map_or(0, Vec::len);
    let mut data = Vec::with_capacity(positions.len() * t * t);
    for row in positions {
        let doc = fused::document_starts(row);
        for (i, &start) in doc.iter().enumerate() {
            data.extend((0..t).map(|j| {
                if j <= i && j >= start {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Ok(Tensor::from_vec(data, (positions.len(), 1, t, t), device)?)
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
