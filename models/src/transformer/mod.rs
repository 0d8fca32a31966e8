//! The decoder shared by Qwen2, Qwen3 and Llama: embeddings, pre-norm blocks of grouped-query
//! attention with rotary positions (and, for Qwen3, an RMSNorm over each q/k head) and a SwiGLU
//! MLP, final norm and LM head. Weight names equal the Hugging Face keys.
//!
//! Two forwards share the layers built here:
//! - [`Model::forward`] ([`full`]): the full-sequence training forward. Logits for every
//!   position, packed documents via per-token position ids, differentiable end to end.
//! - [`Model::step`] ([`step`]): the generation forward over a ragged batch of sequences, each
//!   with its own [`KvCache`] (continuous batching).

mod full;
mod step;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};

pub use crate::decode::{HostKvDtype, KvCache};
use crate::kv_pool::KvPool;
pub use crate::rope::RopeSpec;
use crate::weights::Weights;
pub use crate::weights::{Linear, QuantizedWeight};
use crate::{ops, Error, Result};
pub use step::Logits;

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
    /// The generation caches of the tensor path (empty until a step takes a slot).
    kv_pool: Arc<KvPool>,
    /// What the CPU's f32 path keeps keys and values in (its caches live in host buffers).
    host_kv: HostKvDtype,
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
        let kv_pool = KvPool::new(
            spec.num_layers,
            spec.num_kv_heads,
            spec.head_dim,
            dtype,
            &device,
        );
        Ok(Self {
            spec: spec.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            device,
            dtype,
            kv_pool,
            host_kv: HostKvDtype::F32,
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
        KvCache::with_host_dtype(self.spec.num_layers, self.host_kv)
    }

    /// Keeps the keys and values of caches made from now on in `dtype` where they live in
    /// host buffers (the CPU's f32 path; the paged pool keeps the model's dtype).
    pub fn set_host_kv_dtype(&mut self, dtype: HostKvDtype) {
        self.host_kv = dtype;
    }

    /// Bytes one cached position takes in every layer: in the pool's blocks, or in the host
    /// buffers' dtype on the CPU's f32 path.
    pub fn kv_bytes_per_position(&self) -> usize {
        self.kv_block_bytes() / crate::kv_pool::BLOCK
    }

    /// Blocks of [`crate::kv_pool::BLOCK`] positions the model's generation pool holds now, and
    /// how many of them no sequence holds (both 0 on the CPU's f32 path, which caches in host
    /// buffers, and whenever no cache holds a block).
    pub fn kv_pool_blocks(&self) -> (usize, usize) {
        self.kv_pool.size()
    }

    /// Whether generation caches keys and values in the paged pool (every device and dtype
    /// but the CPU's f32, which keeps them in host buffers).
    pub fn uses_kv_pool(&self) -> bool {
        !(self.device.is_cpu() && self.dtype == DType::F32)
    }

    /// Bytes one block holds ([`crate::kv_pool::block_bytes`]): of the pool, or the same
    /// positions in the host buffers' dtype on the CPU's f32 path (the unit of a KV budget,
    /// [`KvCache::blocks_held`]).
    pub fn kv_block_bytes(&self) -> usize {
        let dtype = if self.uses_kv_pool() {
            self.dtype
        } else {
            self.host_kv.dtype()
        };
        crate::kv_pool::block_bytes(&self.spec, dtype)
    }

    /// Caps the pool's growth by doubling at `blocks` (an engine's KV cache budget; `None`:
    /// no cap). The pool still gives a step the blocks it needs past the cap.
    pub fn set_kv_pool_limit(&self, blocks: Option<usize>) {
        self.kv_pool.set_limit(blocks);
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
}
