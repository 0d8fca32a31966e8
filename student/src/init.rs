//! Where a student starts: a base checkpoint (Hugging Face folder, or GGUF dequantized to f32)
//! or a fresh model from an architecture config and a tokenizer.

use std::path::Path;

use serde::{Deserialize, Serialize};

use distill_models::config::{Common, TokenIds};
use distill_models::tokenizer::TextTokenizer;
use distill_models::{llama, qwen2, qwen3, Architecture, Checkpoint, Config, GenerationConfig};

use crate::tokenizer_train::TokenizerTrainConfig;
use crate::trainer::StudentInit;
use crate::{Error, Result};

/// The architecture of a from-scratch student (the vocabulary comes from its tokenizer).
///
/// Llama, not Qwen2: a from-scratch student carries distill's own tokenizer (digit split,
/// merges across words), and `transformers` 5 builds every `qwen2` checkpoint's tokenizer as
/// `Qwen2Tokenizer`, which replaces `tokenizer.json`'s normalizer and pre-tokenizer with
/// Qwen2's own whatever `tokenizer_class` says; for `llama` it loads `tokenizer.json` verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub rms_norm_eps: f64,
    pub initializer_range: f64,
    /// The byte-level BPE trained on the corpus.
    pub tokenizer: TokenizerTrainConfig,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::Llama,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 256,
            max_position_embeddings: 2048,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
            rms_norm_eps: 1e-6,
            initializer_range: 0.02,
            tokenizer: TokenizerTrainConfig::default(),
        }
    }
}

impl ScratchConfig {
    pub fn validate(&self) -> Result<()> {
        if self.architecture == Architecture::Qwen2 {
            return Err(Error::Config(
                "`model.architecture` `qwen2` cannot be trained from scratch: transformers 5 \
                 loads every qwen2 checkpoint with Qwen2's own pre-tokenizer, not the trained \
                 one, so its token ids would differ from distill's; use `llama`"
                    .into(),
            ));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::Config(format!(
                    "`model.{name}` must be at least 1, got `0`"
                )));
            }
        }
        let head_dim = self.hidden_size / self.num_attention_heads;
        if head_dim * self.num_attention_heads != self.hidden_size {
            return Err(Error::Config(format!(
                "`model.hidden_size` (`{}`) must be a multiple of `model.num_attention_heads` (`{}`)",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::Config(format!(
                "`model.rope_theta` must be positive, got `{}`",
                self.rope_theta
            )));
        }
        self.tokenizer.validate()
    }

    /// The model config for a tokenizer of `vocab_size` ids with these BOS/EOS ids.
    pub fn model_config(&self, vocab_size: usize, bos: Option<u32>, eos: &[u32]) -> Result<Config> {
        self.validate()?;
        let eos_token_id = match eos {
            [] => None,
            [one] => Some(TokenIds::One(*one)),
            many => Some(TokenIds::Many(many.to_vec())),
        };
        let common = Common {
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            initializer_range: self.initializer_range,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: bos,
            eos_token_id,
            ..Common::new(
                self.hidden_size,
                self.intermediate_size,
                self.num_hidden_layers,
                self.num_attention_heads,
                self.num_key_value_heads,
            )
        };
        let max_position_embeddings = self.max_position_embeddings;
        let config = match self.architecture {
            Architecture::Qwen2 => Config::Qwen2(qwen2::Config {
                vocab_size,
                max_position_embeddings,
                common,
                extra: Default::default(),
            }),
            Architecture::Qwen3 => Config::Qwen3(qwen3::Config {
                vocab_size,
                max_position_embeddings,
                attention_bias: false,
                // Written out: Qwen3's default head_dim is 128, not hidden size / heads.
                common: Common {
                    head_dim: Some(self.hidden_size / self.num_attention_heads),
                    ..common
                },
                extra: Default::default(),
            }),
            Architecture::Llama => Config::Llama(llama::Config {
                vocab_size,
                max_position_embeddings,
                attention_bias: false,
                mlp_bias: false,
                common,
                extra: Default::default(),
            }),
        };
        // The same checks as loading a config.json (head counts, head_dim parity, ...).
        config.spec()?.validate()?;
        Ok(config)
    }
}

/// Opens a base checkpoint; the student needs its tokenizer to read the corpus.
pub fn from_base(path: &Path) -> Result<(StudentInit, TextTokenizer)> {
    from_opened_base(&Checkpoint::open(path)?)
}

/// [`from_base`] for a checkpoint already opened (its config read, its weights not yet).
pub fn from_opened_base(ckpt: &Checkpoint) -> Result<(StudentInit, TextTokenizer)> {
    let init = StudentInit::from_checkpoint(ckpt)?;
    let tokenizer = init.tokenizer.clone().ok_or_else(|| {
        Error::Config(format!(
            "base checkpoint `{}` has no tokenizer (`tokenizer.json`); the corpus cannot be tokenized",
            ckpt.path().display()
        ))
    })?;
    Ok((init, tokenizer))
}

/// A freshly initialised student for `tokenizer` (seeded, see `trainer::init_weights`).
pub fn from_scratch(
    scratch: &ScratchConfig,
    tokenizer: TextTokenizer,
    seed: u64,
) -> Result<StudentInit> {
    let config = scratch_model_config(scratch, &tokenizer)?;
    let generation = GenerationConfig {
        bos_token_id: config.bos_token_id(),
        eos_token_id: Some(TokenIds::Many(config.eos_token_ids())),
        pad_token_id: tokenizer
            .pad_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t)),
        ..Default::default()
    };
    StudentInit::from_scratch(config, generation, Some(tokenizer), seed)
}

/// The model config a from-scratch student gets for `tokenizer`.
pub fn scratch_model_config(scratch: &ScratchConfig, tokenizer: &TextTokenizer) -> Result<Config> {
    let id = |token: &Option<String>| token.as_deref().and_then(|t| tokenizer.token_id(t));
    let eos: Vec<u32> = id(&tokenizer.eos_token).into_iter().collect();
    scratch.model_config(tokenizer.vocab_size(), id(&tokenizer.bos_token), &eos)
}
