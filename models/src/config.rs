//! `config.json` and `generation_config.json`: which architecture a checkpoint is, the
//! per-architecture serde mirrors behind it, and the fields they all share ([`Common`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::transformer::{RopeSpec, Spec};
use crate::{llama, qwen2, qwen3, Error, Result};

/// Serde defaults shared by the architecture configs (the `transformers` defaults).
pub(crate) mod defaults {
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn theta() -> f64 {
        10000.0
    }
    pub fn act() -> String {
        "silu".into()
    }
    pub fn init_range() -> f64 {
        0.02
    }
}

/// The `config.json` fields Qwen2, Qwen3 and Llama share, flattened into each architecture's
/// mirror (`#[serde(flatten)] common`), so each is defined once. `vocab_size` and
/// `max_position_embeddings` stay in the mirrors: their defaults differ per architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Common {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "defaults::act")]
    pub hidden_act: String,
    #[serde(default = "defaults::init_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
}

/// What an architecture adds to [`Common`] when it becomes a [`Spec`].
pub(crate) struct Layout {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// `head_dim` when `config.json` does not give it (`None`: hidden size / heads).
    pub default_head_dim: Option<usize>,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
}

impl Common {
    /// A config with these sizes and every other field at its `transformers` default.
    pub fn new(
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        Self {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            hidden_act: defaults::act(),
            initializer_range: defaults::init_range(),
            rms_norm_eps: defaults::eps(),
            rope_theta: defaults::theta(),
            rope_scaling: None,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// The decoder description; `extra` holds the keys the mirror did not name (transformers 5's
    /// `rope_parameters` among them).
    pub(crate) fn spec(
        &self,
        layout: Layout,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Spec> {
        // Zero heads is reported by `Spec::validate`, not a division panic here.
        let head_dim = self
            .head_dim
            .or(layout.default_head_dim)
            .unwrap_or_else(|| {
                self.hidden_size
                    .checked_div(self.num_attention_heads)
                    .unwrap_or(0)
            });
        Ok(Spec {
            vocab_size: layout.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope: RopeSpec::from_config(
                self.rope_theta,
                self.rope_scaling.as_ref(),
                extra,
                head_dim,
                layout.max_position_embeddings,
            )?,
            qkv_bias: layout.qkv_bias,
            o_bias: layout.o_bias,
            mlp_bias: layout.mlp_bias,
            qk_norm: layout.qk_norm,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: self.hidden_act.clone(),
            initializer_range: self.initializer_range,
        })
    }
}

/// A token id or a list of them, as `eos_token_id` is written in Hugging Face configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The architectures distill implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Qwen2,
    Qwen3,
    Llama,
}

impl Architecture {
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Llama => "llama",
        }
    }

    /// The `architectures` entry `transformers` uses to pick the causal-LM class.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
}

/// A model's `config.json`, dispatched on `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    Qwen2(qwen2::Config),
    Qwen3(qwen3::Config),
    Llama(llama::Config),
}

impl Config {
    /// Parses `config.json` text; `origin` names the file in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::parse(origin, e))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::parse(origin, "no `model_type` key"))?
            .to_string();
        let mut value = value;
        if let Some(map) = value.as_object_mut() {
            map.remove("model_type");
        }
        let config = match model_type.as_str() {
            "qwen2" => {
                Config::Qwen2(serde_json::from_value(value).map_err(|e| Error::parse(origin, e))?)
            }
            "qwen3" => {
                Config::Qwen3(serde_json::from_value(value).map_err(|e| Error::parse(origin, e))?)
            }
            // Mistral-style checkpoints without sliding windows are Llama in all but name.
            "llama" => {
                Config::Llama(serde_json::from_value(value).map_err(|e| Error::parse(origin, e))?)
            }
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
        };
        config.spec()?.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// The `config.json` text `transformers` expects, with `model_type` and `architectures`.
    pub fn to_json(&self) -> serde_json::Value {
        let arch = self.architecture();
        let mut value = match self {
            Config::Qwen2(c) => serde_json::to_value(c),
            Config::Qwen3(c) => serde_json::to_value(c),
            Config::Llama(c) => serde_json::to_value(c),
        }
        .unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("model_type".into(), arch.model_type().into());
            map.insert("architectures".into(), serde_json::json!([arch.hf_class()]));
            map.entry("torch_dtype").or_insert("float32".into());
        }
        value
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// [`Self::save`] with the dtype the weights beside it are stored in: `torch_dtype` (and
    /// transformers 5's `dtype`, when the config has it) say what the files hold, whatever the
    /// base checkpoint said.
    pub fn save_with_dtype(&self, path: &Path, dtype: candle_core::DType) -> Result<()> {
        let mut json = self.to_json();
        if let Some(map) = json.as_object_mut() {
            let name = torch_dtype_name(dtype);
            map.insert("torch_dtype".into(), name.into());
            if map.contains_key("dtype") {
                map.insert("dtype".into(), name.into());
            }
        }
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Config::Qwen2(_) => Architecture::Qwen2,
            Config::Qwen3(_) => Architecture::Qwen3,
            Config::Llama(_) => Architecture::Llama,
        }
    }

    /// The fields every architecture shares.
    pub fn common(&self) -> &Common {
        match self {
            Config::Qwen2(c) => &c.common,
            Config::Qwen3(c) => &c.common,
            Config::Llama(c) => &c.common,
        }
    }

    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Config::Qwen2(c) => &mut c.common,
            Config::Qwen3(c) => &mut c.common,
            Config::Llama(c) => &mut c.common,
        }
    }

    /// The architecture-neutral description the decoder is built from.
    pub fn spec(&self) -> Result<Spec> {
        match self {
            Config::Qwen2(c) => c.spec(),
            Config::Qwen3(c) => c.spec(),
            Config::Llama(c) => c.spec(),
        }
    }

    /// `config.json` keys the architecture's mirror does not name.
    pub fn extra(&self) -> &serde_json::Map<String, serde_json::Value> {
        match self {
            Config::Qwen2(c) => &c.extra,
            Config::Qwen3(c) => &c.extra,
            Config::Llama(c) => &c.extra,
        }
    }

    pub fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        match self {
            Config::Qwen2(c) => &mut c.extra,
            Config::Qwen3(c) => &mut c.extra,
            Config::Llama(c) => &mut c.extra,
        }
    }

    /// `rope_theta` and `rope_scaling` as the decoder applies them, wherever the config keeps
    /// them (top level, or transformers 5's `rope_parameters`).
    pub fn rope_parameters(&self) -> (f64, Option<serde_json::Value>) {
        let common = self.common();
        crate::rope::resolve_scaling(
            common.rope_theta,
            common.rope_scaling.as_ref(),
            self.extra(),
            self.max_position_embeddings(),
        )
    }

    /// The most positions the model was built for (prompt and generation together).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Config::Qwen2(c) => c.max_position_embeddings,
            Config::Qwen3(c) => c.max_position_embeddings,
            Config::Llama(c) => c.max_position_embeddings,
        }
    }

    /// The positions a sequence may reach, prompt included, as vLLM derives its
    /// `max_model_len`: `max_position_embeddings`, times the RoPE scaling's `factor` where the
    /// scaling extends the context (`linear`, `dynamic`; YaRN from its
    /// `original_max_position_embeddings`, so Qwen2.5's documented YaRN block gives 32,768 × 4),
    /// not for `llama3` or `longrope`, whose `max_position_embeddings` already is the extended one.
    pub fn context_len(&self) -> usize {
        let positions = self.max_position_embeddings();
        let Some(scaling) = self.rope_parameters().1 else {
            return positions;
        };
        let number = |key: &str| scaling.get(key).and_then(|v| v.as_f64());
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        if matches!(kind, "llama3" | "longrope" | "su") {
            return positions;
        }
        let from = match kind {
            "yarn" => number("original_max_position_embeddings").unwrap_or(positions as f64),
            _ => positions as f64,
        };
        (from * number("factor").unwrap_or(1.0)).round() as usize
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.common().bos_token_id
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.common()
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

/// `generation_config.json`: the stop ids and sampling defaults a checkpoint ships with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl GenerationConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::parse(path, e))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

/// The PyTorch name of a float dtype (`bfloat16`), as `config.json` writes it.
pub fn torch_dtype_name(dtype: candle_core::DType) -> &'static str {
    match dtype {
        candle_core::DType::BF16 => "bfloat16",
        candle_core::DType::F16 => "float16",
        _ => "float32",
    }
}
