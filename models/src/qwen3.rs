//! Qwen3 dense models: the Hugging Face `config.json` and how it maps onto the shared decoder.
//! Qwen3 differs from Qwen2 in an RMSNorm over each head of q and k (`q_norm`, `k_norm`, applied
//! before the rotary embedding), no q/k/v biases by default, and a `head_dim` of its own (128
//! unless given, not hidden size / heads).

use serde::{Deserialize, Serialize};

use crate::config::{Common, Layout};
use crate::transformer::Spec;
use crate::{Error, Result};

fn default_vocab() -> usize {
    151936
}
fn default_max_pos() -> usize {
    32768
}
/// `transformers.Qwen3Config.head_dim`'s default.
const DEFAULT_HEAD_DIM: usize = 128;

/// Mirror of `transformers.Qwen3Config`. Unknown keys survive a load/save round trip in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(flatten)]
    pub common: Common,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    pub(crate) fn spec(&self) -> Result<Spec> {
        // Sliding-window layers attend differently; refuse them rather than run them wrong.
        if self
            .extra
            .get("use_sliding_window")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err(Error::Config(
                "`use_sliding_window` true is not supported for qwen3".into(),
            ));
        }
        let layout = Layout {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            default_head_dim: Some(DEFAULT_HEAD_DIM),
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            qk_norm: true,
        };
        self.common.spec(layout, &self.extra)
    }
}
