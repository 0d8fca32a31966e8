//! `config.json` and `generation_config.json`: which architecture a checkpoint is, and the
//! per-architecture serde mirrors behind it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::transformer::Spec;
use crate::{llama, qwen2, Error, Result};

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
    Llama,
}

impl Architecture {
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
        }
    }

    /// The `architectures` entry `transformers` uses to pick the causal-LM class.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
}

/// A model's `config.json`, dispatched on `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    Qwen2(qwen2::Config),
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
            Config::Llama(_) => Architecture::Llama,
        }
    }

    /// The architecture-neutral description the decoder is built from.
    pub fn spec(&self) -> Result<Spec> {
        match self {
            Config::Qwen2(c) => c.spec(),
            Config::Llama(c) => c.spec(),
        }
    }

    /// The most positions the model was built for (prompt and generation together).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Config::Qwen2(c) => c.max_position_embeddings,
            Config::Llama(c) => c.max_position_embeddings,
        }
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            Config::Qwen2(c) => c.bos_token_id,
            Config::Llama(c) => c.bos_token_id,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        let ids = match self {
            Config::Qwen2(c) => c.eos_token_id.as_ref(),
            Config::Llama(c) => c.eos_token_id.as_ref(),
        };
        ids.map(TokenIds::to_vec).unwrap_or_default()
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
