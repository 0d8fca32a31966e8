//! Llama / Llama-3 / SmolLM2 (and DeepSeek-R1-Distill-Llama): the Hugging Face `config.json` and
//! how it maps onto the shared decoder, including Llama-3 `rope_scaling`.

use serde::{Deserialize, Serialize};

use crate::transformer::{RopeSpec, Spec};

fn default_vocab() -> usize {
    32000
}
fn default_max_pos() -> usize {
    2048
}

/// Mirror of `transformers.LlamaConfig`. Unknown keys survive a load/save round trip in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "crate::config::defaults::act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "crate::config::defaults::init_range")]
    pub initializer_range: f64,
    #[serde(default = "crate::config::defaults::eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "crate::config::defaults::theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<crate::config::TokenIds>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    pub(crate) fn spec(&self) -> crate::Result<Spec> {
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        Ok(Spec {
            vocab_size: self.vocab_size,
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
                &self.extra,
                head_dim,
            )?,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: self.hidden_act.clone(),
            initializer_range: self.initializer_range,
        })
    }
}
