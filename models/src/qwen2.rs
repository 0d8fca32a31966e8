//! Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): the Hugging Face `config.json` and how it maps
//! onto the shared decoder. Qwen2 differs from Llama only in carrying biases on q/k/v.

use serde::{Deserialize, Serialize};

use crate::config::{Common, Layout};
use crate::transformer::Spec;

fn default_vocab() -> usize {
    151936
}
fn default_max_pos() -> usize {
    32768
}

/// Mirror of `transformers.Qwen2Config`. Unknown keys survive a load/save round trip in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
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
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
        };
        self.common.spec(layout, &self.extra)
    }
}
