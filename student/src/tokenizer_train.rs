//! From-scratch tokenizers: a small byte-level BPE trained in-process on the corpus text, with
//! the ChatML special tokens and template, so a tiny student (or the demo's teacher) can start
//! without any downloaded checkpoint.
//!
//! Choices:
//! - Pre-tokenization: optionally every digit on its own, with the space before it (` ?\p{N}`:
//!   `" 12"` is `" 1"`, `"2"`), then GPT-2 byte-level splitting. Merges never cross pre-token
//!   boundaries, so no token ever holds two digits (the demo's arithmetic needs one token per
//!   digit). Keeping the space with its digit, rather than as a token of its own as Qwen2's
//!   splitter does, makes arithmetic text about a quarter shorter: fewer positions to train on
//!   and to generate.
//! - `merge_across_words` drops the word splitting, so a merge may span words: the demo's
//!   templated problems then cost about half as many positions per prompt (its tiny models
//!   train and generate in proportion), while the digits stay one token each.
//! - `pre_tokenizer = "smollm"` trades both for a pre-tokenizer llama.cpp implements (SmolLM's:
//!   every digit alone, a space before a digit a token of its own, GPT-2 word splitting), so
//!   `distill export` can write the student for llama.cpp, ollama and LM Studio (llama.cpp
//!   tokenises with a fixed table of pre-tokenizers; the compact one is not among them).
//! - `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` are special tokens (`<|im_end|>` is the EOS
//!   and the chat template's end of turn; `<|endoftext|>` pads). `<think>` and `</think>` are
//!   added tokens but *not* special: each is one id, yet decoding with
//!   `skip_special_tokens=True` keeps them, because the teacher's answer parser needs them.
//! - The byte alphabet: with room for all 256 byte symbols (`vocab_size` ≥ 256 + the 5 tokens
//!   above), every input is encodable. Below that (the demo's ~80-token vocabulary) only the
//!   symbols seen in the corpus are kept, and a character never seen in training is dropped when
//!   encoding (BPE without unknown token): train on text covering every character you will use.

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use distill_models::chat::ChatTemplate;
use distill_models::tokenizer::TextTokenizer;

use crate::{Error, Result};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const THINK: &str = "<think>";
pub const END_THINK: &str = "</think>";

/// Special tokens (ids 0, 1, 2), then the non-special added tokens (ids 3, 4).
const SPECIAL: [&str; 3] = [END_OF_TEXT, IM_START, IM_END];
const ADDED: [&str; 2] = [THINK, END_THINK];

/// Settings of a from-scratch tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerTrainConfig {
    /// Target vocabulary size, special and added tokens included (the result is smaller when
    /// the corpus offers fewer merges).
    pub vocab_size: usize,
    /// Split every digit into its own token.
    pub split_digits: bool,
    /// Pairs seen fewer times than this are not merged.
    pub min_frequency: u64,
    /// Let merges span words (no GPT-2 word splitting), as SentencePiece does without
    /// whitespace splitting: a corpus of templated text then gets whole phrases as single
    /// tokens. Digits stay split when `split_digits` is set.
    pub merge_across_words: bool,
    /// How text is cut before merges: `compact` (a digit keeps the space before it) or
    /// `smollm` (llama.cpp's `smollm` pre-tokenizer, so exports to GGUF tokenise the same).
    pub pre_tokenizer: PreTokenizer,
}

/// The pre-tokenization of a from-scratch tokenizer (see the module header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreTokenizer {
    /// ` ?\p{N}` (with `split_digits`), then GPT-2's word splitting unless
    /// `merge_across_words`: the shortest text, no llama.cpp equivalent.
    #[default]
    Compact,
    /// Every digit alone, then GPT-2's word splitting: llama.cpp's `smollm`.
    Smollm,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8192,
            split_digits: true,
            min_frequency: 2,
            merge_across_words: false,
            pre_tokenizer: PreTokenizer::Compact,
        }
    }
}

impl TokenizerTrainConfig {
    pub fn validate(&self) -> Result<()> {
        let min = SPECIAL.len() + ADDED.len() + 1;
        if !(min..=1 << 20).contains(&self.vocab_size) {
            return Err(Error::Config(format!(
                "`tokenizer.vocab_size` must be between {min} and 1048576, got `{}`",
                self.vocab_size
            )));
        }
        if self.pre_tokenizer == PreTokenizer::Smollm {
            if self.merge_across_words {
                return Err(Error::Config(
                    "`tokenizer.merge_across_words` has no llama.cpp pre-tokenizer: it cannot be combined with `pre_tokenizer = \"smollm\"`".into(),
                ));
            }
            if !self.split_digits {
                return Err(Error::Config(
                    "`pre_tokenizer = \"smollm\"` splits every digit: set `tokenizer.split_digits` (without it the compact pre-tokenizer is GPT-2's, which llama.cpp has too)".into(),
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PreTokenizer {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "compact" => Ok(Self::Compact),
            "smollm" => Ok(Self::Smollm),
            other => Err(format!(
                "unknown pre-tokenizer `{other}`; expected `compact` or `smollm`"
            )),
        }
    }
}

/// Trains a byte-level BPE on `texts` (rendered conversations or raw text; special and added
/// tokens inside them are cut out before training so no merge spans them). The result carries
/// the ChatML template, `<|im_end|>` as EOS and `<|endoftext|>` as padding.
pub fn train<I, S>(texts: I, config: &TokenizerTrainConfig) -> Result<TextTokenizer>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    config.validate()?;
    let reserved: Vec<&str> = SPECIAL.iter().chain(ADDED.iter()).copied().collect();
    let mut pieces: Vec<String> = Vec::new();
    for text in texts {
        split_reserved(text.as_ref(), &reserved, &mut pieces);
    }
    if pieces.iter().all(|p| p.is_empty()) {
        return Err(Error::NoData(
            "the corpus has no text to train a tokenizer on".into(),
        ));
    }
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    let byte_level = ByteLevel::new(false, true, !config.merge_across_words);
    let pre: PreTokenizerWrapper = if config.pre_tokenizer == PreTokenizer::Smollm {
        // SmolLM's own `tokenizer.json`: `Digits(individual_digits)` then GPT-2's ByteLevel.
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else if config.split_digits {
        let digits = Split::new(
            SplitPattern::Regex(r" ?\p{N}".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Config(format!("cannot build the digit splitter: {e}")))?;
        Sequence::new(vec![digits.into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let full_alphabet = config.vocab_size >= 256 + reserved.len();
    let special: Vec<AddedToken> = SPECIAL
        .iter()
        .map(|t| AddedToken::from(*t, true).normalized(false))
        .chain(
            ADDED
                .iter()
                .map(|t| AddedToken::from(*t, false).normalized(false)),
        )
        .collect();
    let mut builder = BpeTrainer::builder()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .show_progress(false)
        .special_tokens(special);
    if full_alphabet {
        builder = builder.initial_alphabet(ByteLevel::alphabet().into_iter().collect());
    }
    let mut trainer: TrainerWrapper = builder.build().into();
    tokenizer
        .train(&mut trainer, pieces.iter())
        .map_err(|e| Error::Config(format!("cannot train the tokenizer: {e}")))?;
    let mut out = TextTokenizer::new(tokenizer);
    out.eos_token = Some(IM_END.into());
    out.pad_token = Some(END_OF_TEXT.into());
    out.chat_template = Some(ChatTemplate::chatml().source().to_string());
    Ok(out)
}

/// Appends the parts of `text` between occurrences of the `reserved` strings.
fn split_reserved(text: &str, reserved: &[&str], out: &mut Vec<String>) {
    let mut rest = text;
    loop {
        let next = reserved
            .iter()
            .filter_map(|r| rest.find(r).map(|at| (at, r.len())))
            .min();
        match next {
            Some((at, len)) => {
                if at > 0 {
                    out.push(rest[..at].to_string());
                }
                rest = &rest[at + len..];
            }
            None => {
                if !rest.is_empty() {
                    out.push(rest.to_string());
                }
                return;
            }
        }
    }
}
