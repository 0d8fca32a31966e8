//! Llama / Llama-3 / Llama-3.2 / SmolLM2 (and DeepSeek-R1-Distill-Llama): the Hugging Face
//! `config.json` and how it maps onto the shared decoder, including Llama-3 `rope_scaling`.

use serde::{Deserialize, Serialize};

use crate::config::{Common, Layout};
use crate::transformer::Spec;

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
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    pub(crate) fn spec(&self) -> crate::Result<Spec> {
        let layout = Layout {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            default_head_dim: None,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            qk_norm: false,
        };
        self.common.spec(layout, &self.extra)
    }
}
