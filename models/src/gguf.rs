//! GGUF checkpoints (llama.cpp's format) for the llama, qwen2 and qwen3 architectures: the model config
//! rebuilt from `{arch}.*` metadata, every weight dequantized to f32 under its Hugging Face name
//! (llama q/k rows un-permuted back to HF layout), the tokenizer rebuilt from `tokenizer.ggml.*`,
//! and the stop tokens. candle parses the file and does the dequantization maths.
//!
//! Writing is the inverse ([`export_gguf`], in `gguf/export.rs`, with the tokenizer metadata in
//! `gguf/vocab.rs` and an ollama Modelfile in [`modelfile`]), sharing the name table below.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::config::{Common, TokenIds};
use crate::tokenizer::{GgufVocab, TextTokenizer};
use crate::{llama, qwen2, qwen3, Config, Error, GenerationConfig, Result};

mod diagnose;
mod export;
pub mod modelfile;
mod quant;
mod vocab;
use diagnose::{diagnose_header, read_up_to};
pub use export::{
    export_gguf, permute_rows, quantize, tensor_type, ExportOptions, ExportSummary, Quant,
};

/// The tensor llama.cpp stores Llama-3 `rope_scaling` in (per-frequency divisors); not a weight.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// An opened GGUF file: its header (metadata and tensor directory); tensor data is read on demand.
#[derive(Debug)]
pub struct GgufCheckpoint {
    path: PathBuf,
    content: Content,
}

impl GgufCheckpoint {
    /// Reads and checks the header: a missing file, a file that is not GGUF, a header or tensor
    /// data cut short, and tensor types candle cannot dequantize are reported here, naming the
    /// file.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
        if got < 4 || &magic != b"GGUF" {
            return Err(Error::parse(
                path,
                format!(
                    "not a GGUF file (it starts with {:?} instead of the `GGUF` magic)",
                    String::from_utf8_lossy(&magic[..got])
                ),
            ));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = match Content::read(&mut reader) {
            Ok(content) => content,
            Err(e) => return Err(diagnose_header(path, e)),
        };
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(Error::parse(
                    path,
                    format!(
                        "tensor `{name}` has {elems} elements, not a multiple of the {} block \
                         size {block}",
                        dtype_name(info.ggml_dtype)
                    ),
                ));
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if end > file_size {
                return Err(Error::parse(
                    path,
                    format!(
                        "truncated file: tensor `{name}` needs bytes up to {end} but the file \
                         has {file_size}"
                    ),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header, for metadata this type does not interpret.
    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// What the file's matrices are stored as, the way llama.cpp names it (`Q4_K_M`, `Q8_0`,
    /// `F16`): `general.file_type` when the file has it, else its commonest non-f32 tensor type.
    pub fn file_type_name(&self) -> String {
        let named = self
            .metadata("general.file_type")
            .and_then(|v| v.to_u32().ok())
            .and_then(|n| FILE_TYPES.iter().find(|(k, _)| *k == n))
            .map(|(_, name)| name.to_uppercase());
        named.unwrap_or_else(|| {
            let types = self.tensor_types();
            types
                .iter()
                .filter(|(t, _)| t.as_str() != "f32")
                .max_by_key(|(_, n)| **n)
                .or_else(|| types.iter().next())
                .map_or_else(|| "?".into(), |(t, _)| t.to_uppercase())
        })
    }

    /// `general.architecture` (empty when absent).
    pub fn architecture_name(&self) -> String {
        self.meta_str("general.architecture")
            .unwrap_or_default()
            .to_string()
    }

    /// The Hugging Face config this file corresponds to, from `{arch}.*` metadata and the
    /// tensor directory (biases present, `output.weight` absent means tied embeddings).
    pub fn config(&self) -> Result<Config> {
        let arch = self.architecture_name();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "qwen3") {
            // The variant carries a string; naming the file in it keeps the message useful
            // wherever the error surfaces.
            return Err(Error::UnsupportedArchitecture(format!(
                "{arch}` in `{}",
                self.path.display()
            )));
        }
        let key = |suffix: &str| format!("{arch}.{suffix}");
        let hidden_size = self.require_usize(&key("embedding_length"))?;
        let num_attention_heads = self.require_usize(&key("attention.head_count"))?;
        let num_key_value_heads = self
            .meta_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_attention_heads);
        let num_hidden_layers = self.require_usize(&key("block_count"))?;
        let intermediate_size = self.require_usize(&key("feed_forward_length"))?;
        if num_attention_heads == 0 {
            return Err(Error::parse(
                &self.path,
                format!("`{}` is 0", key("attention.head_count")),
            ));
        }
        let head_dim = self
            .meta_usize(&key("attention.key_length"))?
            .filter(|&d| d != hidden_size / num_attention_heads);
        let vocab_size = match self.meta_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => match self.content.tensor_infos.get("token_embd.weight") {
                Some(info) => info.shape.dims().first().copied().unwrap_or(0),
                None => self.token_count(),
            },
        };
        let max_position_embeddings = self.meta_usize(&key("context_length"))?;
        let rms_norm_eps = self
            .meta_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        let rope_theta = self.meta_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_head_dim = head_dim.unwrap_or(hidden_size / num_attention_heads);
        let rope_scaling = self.rope_scaling(&arch, rope_theta, rope_head_dim)?;
        let tie_word_embeddings = !self.content.tensor_infos.contains_key("output.weight");
        let bos_token_id = self.meta_u32("tokenizer.ggml.bos_token_id")?;
        let eos_token_id = self
            .meta_u32("tokenizer.ggml.eos_token_id")?
            .map(TokenIds::One);
        let has = |name: &str| self.content.tensor_infos.contains_key(name);

        let common = Common {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim,
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings,
            bos_token_id,
            eos_token_id,
        };
        let config = match arch.as_str() {
            "qwen2" => Config::Qwen2(qwen2::Config {
                vocab_size,
                max_position_embeddings: max_position_embeddings.unwrap_or(32_768),
                common,
                extra: Default::default(),
            }),
            "qwen3" => Config::Qwen3(qwen3::Config {
                vocab_size,
                max_position_embeddings: max_position_embeddings.unwrap_or(32_768),
                attention_bias: has("blk.0.attn_q.bias"),
                // Qwen3's default head_dim (128) is not hidden / heads: always say it.
                common: Common {
                    head_dim: Some(rope_head_dim),
                    ..common
                },
                extra: Default::default(),
            }),
            _ => Config::Llama(llama::Config {
                vocab_size,
                max_position_embeddings: max_position_embeddings.unwrap_or(2048),
                attention_bias: has("blk.0.attn_q.bias"),
                mlp_bias: has("blk.0.ffn_up.bias"),
                common,
                extra: Default::default(),
            }),
        };
        config
            .spec()
            .and_then(|spec| spec.validate())
            .map_err(|e| Error::parse(&self.path, format!("inconsistent model metadata: {e}")))?;
        Ok(config)
    }

    /// BOS, EOS (plus llama.cpp's end-of-turn ids, which stop generation too) and PAD ids.
    pub fn generation_config(&self) -> GenerationConfig {
        let id = |key: &str| self.meta_u32(key).ok().flatten();
        let mut eos = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(token) = id(key) {
                if !eos.contains(&token) {
                    eos.push(token);
                }
            }
        }
        GenerationConfig {
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: match eos.len() {
                0 => None,
                1 => Some(TokenIds::One(eos[0])),
                _ => Some(TokenIds::Many(eos)),
            },
            pad_token_id: id("tokenizer.ggml.padding_token_id"),
            ..Default::default()
        }
    }

    /// Every weight dequantized to f32 under its Hugging Face name, shapes checked against
    /// [`config`](Self::config); llama q/k projections un-permuted to Hugging Face row order.
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let config = self.config()?;
        let spec = config.spec()?;
        let expected: HashMap<String, Vec<usize>> = spec.tensor_shapes().into_iter().collect();
        let permuted = matches!(config, Config::Llama(_));

        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            if name == ROPE_FREQS {
                continue;
            }
            let hf = hf_tensor_name(name).ok_or_else(|| {
                Error::parse(
                    &self.path,
                    format!(
                        "unexpected tensor `{name}` for a {} model",
                        config.architecture().model_type()
                    ),
                )
            })?;
            let Some(shape) = expected.get(&hf) else {
                return Err(Error::parse(
                    &self.path,
                    format!("tensor `{name}` (`{hf}`) does not belong in this model's config"),
                ));
            };
            let info = &self.content.tensor_infos[name];
            if info.shape.dims() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    name: format!("{hf}` (`{name}` in `{}`)", self.path.display()),
                    expected: shape.clone(),
                    actual: info.shape.dims().to_vec(),
                });
            }
            let qtensor = info
                .read(&mut reader, self.content.tensor_data_offset, &Device::Cpu)
                .map_err(|e| {
                    Error::parse(&self.path, format!("cannot read tensor `{name}`: {e}"))
                })?;
            let mut tensor = qtensor.dequantize(&Device::Cpu)?;
            if tensor.dtype() != DType::F32 {
                tensor = tensor.to_dtype(DType::F32)?;
            }
            if permuted && (hf.contains(".q_proj.") || hf.contains(".k_proj.")) {
                let heads = if hf.contains(".q_proj.") {
                    spec.num_heads
                } else {
                    spec.num_kv_heads
                };
                tensor = unpermute_rows(&tensor, heads)?;
            }
            tensors.insert(hf, tensor.to_device(device)?);
        }
        for hf in expected.keys() {
            if !tensors.contains_key(hf) {
                return Err(Error::MissingTensor {
                    name: gguf_tensor_name(hf).unwrap_or_else(|| hf.clone()),
                    path: self.path.clone(),
                });
            }
        }
        Ok(tensors)
    }

    /// How many tensors of each GGUF type the file holds, e.g. `{"f32": 61, "q4_1": 210}`.
    pub fn tensor_types(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts
                .entry(dtype_name(info.ggml_dtype).to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    /// The tokenizer rebuilt from `tokenizer.ggml.*`, with the chat template and special tokens.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let Some(model) = self.meta_str("tokenizer.ggml.model") else {
            return Err(Error::MissingTokenizer(self.path.clone()));
        };
        let arch = self.architecture_name();
        let vocab = GgufVocab {
            model: model.to_string(),
            pre: self.meta_str("tokenizer.ggml.pre").map(str::to_string),
            tokens: self
                .meta_strings("tokenizer.ggml.tokens")?
                .unwrap_or_default(),
            token_types: self.meta_array("tokenizer.ggml.token_type", |v| {
                v.to_i32()
                    .ok()
                    .or_else(|| v.to_u32().ok().map(|u| u as i32))
            })?,
            scores: self.meta_array("tokenizer.ggml.scores", |v| v.to_f32().ok())?,
            merges: self.meta_strings("tokenizer.ggml.merges")?,
            bos_id: self.meta_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: self.meta_u32("tokenizer.ggml.eos_token_id")?,
            pad_id: self.meta_u32("tokenizer.ggml.padding_token_id")?,
            unk_id: self.meta_u32("tokenizer.ggml.unknown_token_id")?,
            add_bos: self.meta_bool("tokenizer.ggml.add_bos_token"),
            add_eos: self.meta_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: self.meta_bool("tokenizer.ggml.add_space_prefix"),
            chat_template: self.meta_str("tokenizer.chat_template").map(str::to_string),
            model_max_length: self
                .meta_usize(&format!("{arch}.context_length"))
                .ok()
                .flatten()
                .map(|n| n as u64),
        };
        TextTokenizer::from_gguf_vocab(&vocab, &self.path)
    }

    fn token_count(&self) -> usize {
        match self.metadata("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => 0,
        }
    }

    fn meta_str(&self, key: &str) -> Option<&str> {
        match self.metadata(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn meta_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.to_bool().ok()
    }

    fn wrong_type(&self, key: &str, wanted: &str) -> Error {
        Error::parse(&self.path, format!("metadata `{key}` is not {wanted}"))
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(value) = self.metadata(key) else {
            return Ok(None);
        };
        let n = match value {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        Ok(self.meta_u64(key)?.map(|v| v as usize))
    }

    fn meta_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.meta_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.wrong_type(key, "a 32-bit id")),
        }
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?
            .ok_or_else(|| Error::parse(&self.path, format!("missing metadata key `{key}`")))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata(key) {
            None => Ok(None),
            // f32 metadata widened digit-for-digit: 1e-5 stays 1e-5, not 9.99999974e-6.
            Some(Value::F32(v)) => Ok(Some(f32_to_f64(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(_) => match self.meta_u64(key) {
                Ok(Some(v)) => Ok(Some(v as f64)),
                _ => Err(self.wrong_type(key, "a number")),
            },
        }
    }

    fn meta_array<T>(
        &self,
        key: &str,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        match self.metadata(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(&convert)
                .collect::<Option<Vec<T>>>()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "an array of the expected type")),
            Some(_) => Err(self.wrong_type(key, "an array")),
        }
    }

    fn meta_strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.meta_array(key, |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// `rope_scaling` as Hugging Face writes it. llama.cpp keeps Llama-3 scaling only as the
    /// `rope_freqs` tensor of per-frequency divisors, so its parameters are solved back from it;
    /// linear and YaRN scaling are plain metadata.
    fn rope_scaling(
        &self,
        arch: &str,
        theta: f64,
        head_dim: usize,
    ) -> Result<Option<serde_json::Value>> {
        if let Some(info) = self.content.tensor_infos.get(ROPE_FREQS) {
            let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let divisors = info
                .read(
                    &mut BufReader::new(file),
                    self.content.tensor_data_offset,
                    &Device::Cpu,
                )
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| {
                    Error::parse(
                        &self.path,
                        format!("cannot read tensor `{ROPE_FREQS}`: {e}"),
                    )
                })?;
            return llama3_rope_scaling(&divisors, theta, head_dim)
                .map_err(|message| Error::parse(&self.path, message));
        }
        let kind = self.meta_str(&format!("{arch}.rope.scaling.type"));
        let factor = self.meta_f64(&format!("{arch}.rope.scaling.factor"))?;
        let original = self.meta_usize(&format!("{arch}.rope.scaling.original_context_length"))?;
        Ok(match (kind, factor) {
            (Some("linear"), Some(factor)) if factor != 1.0 => {
                Some(serde_json::json!({"rope_type": "linear", "factor": factor}))
            }
            (Some("yarn"), Some(factor)) => {
                let mut scaling = serde_json::json!({"rope_type": "yarn", "factor": factor});
                if let Some(original) = original {
                    scaling["original_max_position_embeddings"] = original.into();
                }
                Some(scaling)
            }
            _ => None,
        })
    }
}

/// llama.cpp's `general.file_type` numbers (`LLAMA_FTYPE_MOSTLY_*`) and their names.
pub const FILE_TYPES: [(u32, &str); 19] = [
    (0, "f32"),
    (1, "f16"),
    (2, "q4_0"),
    (3, "q4_1"),
    (7, "q8_0"),
    (8, "q5_0"),
    (9, "q5_1"),
    (10, "q2_k"),
    (11, "q3_k_s"),
    (12, "q3_k_m"),
    (13, "q3_k_l"),
    (14, "q4_k_s"),
    (15, "q4_k_m"),
    (16, "q5_k_s"),
    (17, "q5_k_m"),
    (18, "q6_k"),
    (19, "iq2_xxs"),
    (20, "iq2_xs"),
    (32, "bf16"),
];

/// Hugging Face's name for a GGUF tensor of the llama/qwen2/qwen3 layout.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let module = LAYER_MODULES
        .iter()
        .find(|(g, _)| *g == module)
        .map(|(_, hf)| *hf)?;
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// The GGUF name of a Hugging Face tensor, the inverse of [`hf_tensor_name`].
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let module = LAYER_MODULES
        .iter()
        .find(|(_, h)| *h == module)
        .map(|(g, _)| *g)?;
    Some(format!("blk.{layer}.{module}.{kind}"))
}

const LAYER_MODULES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Undoes llama.cpp's converter permutation of q/k rows. For interleaved RoPE it stores each
/// head's rows as `reshape(heads, 2, head_dim/2, ...).swapaxes(1, 2)` of the HF layout, so the
/// inverse views them as `(heads, head_dim/2, 2, ...)` and swaps back.
pub fn unpermute_rows(tensor: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (heads * 2) != 0 {
        return Err(Error::Config(format!(
            "cannot un-permute {rows} rows into {heads} heads of even size"
        )));
    }
    let half = rows / heads / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut view = vec![heads, half, 2];
    view.extend(&rest);
    Ok(tensor
        .reshape(view)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// llama.cpp's name for a tensor type.
pub fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// Widens an f32 through its shortest decimal form, so metadata written from `1e-5` reads back
/// as `1e-5` rather than `9.999999747378752e-6`.
fn f32_to_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Solves Llama-3 `rope_scaling` back from llama.cpp's per-frequency divisors.
///
/// Hugging Face (and llama.cpp's converter) divide frequency `f` with wavelength `w = 2π/f` by
/// 1 when `w < L/hi`, by `factor` when `w > L/lo`, and in between by `1/((1-s)/factor + s)` with
/// `s = (L/w - lo)/(hi - lo)`. Only the two wavelength thresholds are observable (scaling `L`,
/// `lo` and `hi` together changes nothing), so `low_freq_factor` is fixed at Meta's 1.0 and
/// `high_freq_factor` and `original_max_position_embeddings` are fitted from the in-between
/// divisors; the result is checked by recomputing every divisor.
pub(crate) fn llama3_rope_scaling(
    divisors: &[f32],
    theta: f64,
    head_dim: usize,
) -> std::result::Result<Option<serde_json::Value>, String> {
    if divisors.len() * 2 != head_dim {
        return Err(format!(
            "`{ROPE_FREQS}` has {} entries, expected head_dim / 2 = {}",
            divisors.len(),
            head_dim / 2
        ));
    }
    let divisors: Vec<f64> = divisors.iter().map(|&d| f64::from(d)).collect();
    let factor = divisors.iter().copied().fold(1.0f64, f64::max);
    if factor <= 1.0 + 1e-6 {
        return Ok(None);
    }
    let factor = f32_to_f64(factor as f32);
    let wavelengths: Vec<f64> = (0..divisors.len())
        .map(|i| 2.0 * std::f64::consts::PI * theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let tol = 1e-4;
    // (s, 1/w) of the frequencies in the smoothed band.
    let band: Vec<(f64, f64)> = divisors
        .iter()
        .zip(&wavelengths)
        .filter(|(d, _)| **d > 1.0 + tol && **d < factor * (1.0 - tol))
        .map(|(d, w)| ((1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor), 1.0 / w))
        .collect();
    let low = 1.0;
    let (high, original) = if band.len() >= 2 {
        // s·hi − L·(1/w) = s − 1 for every band point: least squares in (hi, L).
        let (mut a11, mut a12, mut a22, mut b1, mut b2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(s, inv_w) in &band {
            let (x1, x2, y) = (s, -inv_w, s - 1.0);
            a11 += x1 * x1;
            a12 += x1 * x2;
            a22 += x2 * x2;
            b1 += x1 * y;
            b2 += x2 * y;
        }
        let det = a11 * a22 - a12 * a12;
        if det.abs() < 1e-300 {
            return Err(format!(
                "cannot solve Llama-3 rope scaling from `{ROPE_FREQS}`"
            ));
        }
        ((b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det)
    } else {
        // Too few points to fit: Meta's high_freq_factor, and an original context that puts
        // the thresholds between the unscaled and fully scaled frequencies.
        let high = 4.0;
        let original = match band.first() {
            Some(&(s, inv_w)) => (s * (high - low) + low) / inv_w,
            None => {
                let longest_unscaled = divisors
                    .iter()
                    .zip(&wavelengths)
                    .filter(|(d, _)| **d <= 1.0 + tol)
                    .map(|(_, w)| *w)
                    .fold(0.0, f64::max);
                let shortest_scaled = divisors
                    .iter()
                    .zip(&wavelengths)
                    .filter(|(d, _)| **d >= factor * (1.0 - tol))
                    .map(|(_, w)| *w)
                    .fold(f64::INFINITY, f64::min);
                let candidate = 8192.0;
                if longest_unscaled * high < candidate && candidate < shortest_scaled {
                    candidate
                } else {
                    (longest_unscaled * high)
                        .max(1.0)
                        .min(shortest_scaled)
                        .ceil()
                }
            }
        };
        (high, original)
    };
    let high = (high * 1000.0).round() / 1000.0;
    let original = original.round();
    for (i, (&d, &w)) in divisors.iter().zip(&wavelengths).enumerate() {
        let expected = if w < original / high {
            1.0
        } else if w > original / low {
            factor
        } else {
            let s = (original / w - low) / (high - low);
            1.0 / ((1.0 - s) / factor + s)
        };
        if (expected - d).abs() > 1e-3 * d.max(1.0) {
            return Err(format!(
                "`{ROPE_FREQS}` is not Llama-3 rope scaling: entry {i} is {d}, the fitted \
                 parameters (factor {factor}, high_freq_factor {high}, original context \
                 {original}) give {expected}"
            ));
        }
    }
    Ok(Some(serde_json::json!({
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original as u64,
    })))
}
