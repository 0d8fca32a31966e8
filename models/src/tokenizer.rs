//! Tokenizers: a Hugging Face `tokenizers::Tokenizer` together with the special tokens and chat
//! template its checkpoint declares; loaded from and saved to a Hugging Face folder
//! (`tokenizer.json` + `tokenizer_config.json`), or rebuilt from GGUF `tokenizer.ggml.*`
//! metadata so that it tokenizes like llama.cpp and serializes to a `tokenizer.json` that
//! `transformers` loads as is.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::chat::ChatTemplate;
use crate::{Error, Result};

/// A tokenizer plus the special tokens and chat template its checkpoint declares.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
    unk_token: Option<String>,
    model_max_length: Option<u64>,
    /// `tokenizer_config.json` keys this type does not model, kept so a load/save round trip
    /// does not lose them (`add_bos_token`, `padding_side`, ...).
    config_extra: Map<String, Value>,
}

/// Keys of `tokenizer_config.json` that [`TextTokenizer::save_hf_dir`] writes itself, or that
/// must not survive a re-save (remote code, paths of the original checkout).
const REGENERATED_KEYS: &[&str] = &[
    "added_tokens_decoder",
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "chat_template",
    "clean_up_tokenization_spaces",
    "model_max_length",
    "tokenizer_class",
    "auto_map",
    "tokenizer_file",
    "name_or_path",
];

impl TextTokenizer {
    /// Wraps a tokenizer without special tokens or template.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            chat_template: None,
            unk_token: None,
            model_max_length: None,
            config_extra: Map::new(),
        }
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` (special tokens, chat
    /// template), `chat_template.jinja` (newer transformers keep the template there) and
    /// `special_tokens_map.json` (fallback for special tokens).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(Error::MissingTokenizer(dir.to_path_buf()));
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::parse(&tokenizer_path, e))?;
        let mut tokenizer = Self::new(inner);

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_object(&config_path)?.unwrap_or_default();
        let special_map =
            read_json_object(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let special =
            |key: &str| token_text(config.get(key)).or_else(|| token_text(special_map.get(key)));
        tokenizer.bos_token = special("bos_token");
        tokenizer.eos_token = special("eos_token");
        tokenizer.pad_token = special("pad_token");
        tokenizer.unk_token = special("unk_token");
        tokenizer.model_max_length = config.get("model_max_length").and_then(Value::as_u64);
        tokenizer.chat_template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(value) => Some(pick_chat_template(value).ok_or_else(|| {
                Error::parse(
                    &config_path,
                    "`chat_template` is neither a string nor a list of {name, template}",
                )
            })?),
        };
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            let text =
                std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            tokenizer.chat_template = Some(text);
        }
        tokenizer.config_extra = config
            .into_iter()
            .filter(|(key, _)| !REGENERATED_KEYS.contains(&key.as_str()))
            .collect();
        Ok(tokenizer)
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` that makes `AutoTokenizer` build a
    /// `PreTrainedTokenizerFast` over it with the same special tokens and chat template.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("cannot serialize the tokenizer: {e}")))?;
        std::fs::write(&tokenizer_path, text).map_err(|e| Error::io(&tokenizer_path, e))?;

        let mut config = self.config_extra.clone();
        let mut added: Vec<(u32, tokenizers::AddedToken)> =
            self.inner.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let decoder: Map<String, Value> = added
            .into_iter()
            .map(|(id, token)| {
                let entry = json!({
                    "content": token.content,
                    "lstrip": token.lstrip,
                    "normalized": token.normalized,
                    "rstrip": token.rstrip,
                    "single_word": token.single_word,
                    "special": token.special,
                });
                (id.to_string(), entry)
            })
            .collect();
        config.insert("added_tokens_decoder".into(), Value::Object(decoder));
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
            ("unk_token", &self.unk_token),
        ] {
            config.insert(key.into(), token.clone().map_or(Value::Null, Value::from));
        }
        if let Some(template) = &self.chat_template {
            config.insert("chat_template".into(), template.clone().into());
        }
        // Decoding must return exactly what the tokens spell; transformers' clean-up would
        // rewrite " ." to "." and break round trips.
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        // Unknown stays unwritten: transformers then uses its own "unlimited" sentinel.
        if let Some(length) = self.model_max_length {
            config.insert("model_max_length".into(), length.into());
        }
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&Value::Object(config))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        std::fs::write(&config_path, text + "\n").map_err(|e| Error::io(&config_path, e))
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot decode ids: {e}")))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Where two tokenizers' vocabularies part, for refusing a teacher/student pair whose
    /// token ids mean different things: the first id whose token differs or exists in one
    /// only, with its token in `self` and in `other`.
    pub fn first_difference(
        &self,
        other: &TextTokenizer,
    ) -> Option<(u32, Option<String>, Option<String>)> {
        let n = self.vocab_size().max(other.vocab_size()) as u32;
        (0..n).find_map(|id| {
            let (a, b) = (self.inner.id_to_token(id), other.inner.id_to_token(id));
            (a != b).then_some((id, a, b))
        })
    }

    pub fn unk_token(&self) -> Option<&str> {
        self.unk_token.as_deref()
    }

    pub fn model_max_length(&self) -> Option<u64> {
        self.model_max_length
    }

    pub fn set_model_max_length(&mut self, length: Option<u64>) {
        self.model_max_length = length;
    }

    /// The checkpoint's chat template compiled with its special tokens, if it has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template
            .as_deref()
            .map(|source| {
                ChatTemplate::new(source, self.bos_token.as_deref(), self.eos_token.as_deref())
            })
            .transpose()
    }
}

/// Reads a JSON object file; `None` when the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str(&text).map_err(|e| Error::parse(path, e))? {
        Value::Object(map) => Ok(Some(map)),
        _ => Err(Error::parse(path, "expected a JSON object")),
    }
}

/// A special token as transformers writes it: a string, or an `AddedToken` dict.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which transformers renders
/// `default` unless asked otherwise.
fn pick_chat_template(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(entries) => {
            let named = |entry: &'_ Value| -> Option<(String, String)> {
                Some((
                    entry.get("name")?.as_str()?.to_string(),
                    entry.get("template")?.as_str()?.to_string(),
                ))
            };
            let entries: Vec<(String, String)> = entries.iter().filter_map(named).collect();
            entries
                .iter()
                .find(|(name, _)| *name == "default")
                .or_else(|| entries.first())
                .map(|(_, template)| template.clone())
        }
        _ => None,
    }
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub(crate) const TOKEN_TYPE_NORMAL: i32 = 1;
pub(crate) const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub(crate) const TOKEN_TYPE_CONTROL: i32 = 3;
pub(crate) const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// Ids no token uses (a vocabulary padded up to the embedding's rows).
pub(crate) const TOKEN_TYPE_UNUSED: i32 = 5;
pub(crate) const TOKEN_TYPE_BYTE: i32 = 6;

/// The GGUF `tokenizer.ggml.*` metadata a tokenizer is rebuilt from.
#[derive(Debug, Clone, Default)]
pub(crate) struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer regexes.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Option<Vec<i32>>,
    pub scores: Option<Vec<f32>>,
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
    pub model_max_length: Option<u64>,
}

// llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), applied in sequence, each splitting
// the pieces the previous one produced and keeping unmatched text as pieces of its own, which is
// what a chain of `Split { behavior: Isolated }` pre-tokenizers does.
pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
pub(crate) const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const DEEPSEEK3_REGEXES: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How a `tokenizer.ggml.pre` name tokenizes: its regexes, whether whole pre-tokens found in the
/// vocabulary skip the merges (`ignore_merges`), and whether BOS is added by default.
struct PreTokenizerSpec {
    regexes: Vec<&'static str>,
    ignore_merges: bool,
    add_bos: bool,
}

fn pre_tokenizer_spec(pre: Option<&str>) -> PreTokenizerSpec {
    let spec = |regexes: Vec<&'static str>, ignore_merges, add_bos| PreTokenizerSpec {
        regexes,
        ignore_merges,
        add_bos,
    };
    match pre.unwrap_or("default") {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => spec(vec![LLAMA3_REGEX], true, true),
        "dbrx" | "smaug-bpe" => spec(vec![LLAMA3_REGEX], false, false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" | "kormo" => {
            spec(vec![QWEN2_REGEX], false, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(vec![r"\p{N}", GPT2_REGEX], false, false)
        }
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4"
        | "granite-docling" => spec(vec![GPT2_REGEX], false, false),
        "deepseek-v3" | "hunyuan-dense" => spec(DEEPSEEK3_REGEXES.to_vec(), false, false),
        "default" => spec(DEFAULT_REGEXES.to_vec(), false, false),
        other => {
            // llama.cpp does the same with names it does not know.
            tracing::warn!("unknown GGUF pre-tokenizer `{other}`, using llama.cpp's default");
            spec(DEFAULT_REGEXES.to_vec(), false, false)
        }
    }
}

impl TextTokenizer {
    /// Rebuilds a tokenizer from GGUF metadata; `origin` names the file in errors.
    pub(crate) fn from_gguf_vocab(vocab: &GgufVocab, origin: &Path) -> Result<Self> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(Error::MissingTokenizer(origin.to_path_buf()));
        }
        if let Some(types) = &vocab.token_types {
            if types.len() != n {
                return Err(Error::parse(
                    origin,
                    format!(
                        "`tokenizer.ggml.token_type` has {} entries for {n} tokens",
                        types.len()
                    ),
                ));
            }
        }
        let token_type = |id: usize| {
            vocab
                .token_types
                .as_ref()
                .map_or(TOKEN_TYPE_NORMAL, |types| types[id])
        };
        let token_name = |id: Option<u32>| -> Result<Option<String>> {
            match id {
                None => Ok(None),
                Some(id) => vocab
                    .tokens
                    .get(id as usize)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        Error::parse(
                            origin,
                            format!("special token id {id} is outside the {n} tokens"),
                        )
                    }),
            }
        };
        let bos = token_name(vocab.bos_id)?;
        let eos = token_name(vocab.eos_id)?;
        let pad = token_name(vocab.pad_id)?;
        let unk = token_name(vocab.unk_id)?;

        // llama.cpp replaces empty tokens the same way; a BPE vocabulary cannot hold "".
        let tokens: Vec<String> = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut vocab_map = Map::new();
        for (id, token) in tokens.iter().enumerate() {
            if let Some(previous) = vocab_map.insert(token.clone(), json!(id)) {
                // llama.cpp's text-to-id map keeps the last id too.
                tracing::warn!("GGUF token `{token}` appears twice (ids {previous} and {id})");
            }
        }
        let added_tokens: Vec<Value> = (0..n)
            .filter_map(|id| {
                let kind = token_type(id);
                let special = match kind {
                    TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => true,
                    TOKEN_TYPE_USER_DEFINED => false,
                    _ => return None,
                };
                Some(json!({
                    "id": id,
                    "content": tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    // llama.cpp matches these on raw text, before any normalization.
                    "normalized": false,
                    "special": special,
                }))
            })
            .collect();

        let (model, normalizer, pre_tokenizer, decoder, default_add_bos) = match vocab
            .model
            .as_str()
        {
            "gpt2" => {
                let merges = vocab.merges.as_deref().ok_or_else(|| {
                    Error::parse(
                        origin,
                        "byte-level BPE vocabulary without `tokenizer.ggml.merges`",
                    )
                })?;
                let merges = split_merges(merges, origin)?;
                let spec = pre_tokenizer_spec(vocab.pre.as_deref());
                let mut steps: Vec<Value> = spec
                    .regexes
                    .iter()
                    .map(|regex| {
                        json!({
                            "type": "Split",
                            "pattern": {"Regex": regex},
                            "behavior": "Isolated",
                            "invert": false,
                        })
                    })
                    .collect();
                steps.push(json!({
                    "type": "ByteLevel",
                    "add_prefix_space": false,
                    "trim_offsets": true,
                    "use_regex": false,
                }));
                let model = json!({
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": null,
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": false,
                    "byte_fallback": false,
                    "ignore_merges": spec.ignore_merges,
                    "vocab": vocab_map,
                    "merges": merges,
                });
                let decoder = json!({
                    "type": "ByteLevel",
                    "add_prefix_space": true,
                    "trim_offsets": true,
                    "use_regex": true,
                });
                let pre = json!({"type": "Sequence", "pretokenizers": steps});
                (model, Value::Null, pre, decoder, spec.add_bos)
            }
            "llama" => {
                let merges = match &vocab.merges {
                    Some(merges) if !merges.is_empty() => split_merges(merges, origin)?,
                    _ => sentencepiece_merges(&tokens, vocab.scores.as_deref(), origin)?,
                };
                let has_bytes = (0..n).any(|id| token_type(id) == TOKEN_TYPE_BYTE);
                let model = json!({
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": unk,
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": true,
                    "byte_fallback": has_bytes,
                    "ignore_merges": false,
                    "vocab": vocab_map,
                    "merges": merges,
                });
                let mut normalizers = Vec::new();
                if vocab.add_space_prefix.unwrap_or(true) {
                    normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
                }
                normalizers.push(json!({
                    "type": "Replace",
                    "pattern": {"String": " "},
                    "content": "\u{2581}",
                }));
                let normalizer = json!({"type": "Sequence", "normalizers": normalizers});
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if vocab.add_space_prefix.unwrap_or(true) {
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                let decoder = json!({"type": "Sequence", "decoders": decoders});
                (model, normalizer, Value::Null, decoder, true)
            }
            other => {
                return Err(Error::parse(
                    origin,
                    format!(
                        "unsupported tokenizer model `{other}` in `tokenizer.ggml.model` \
                             (supported: gpt2, llama)"
                    ),
                ))
            }
        };

        let add_bos = vocab.add_bos.unwrap_or(default_add_bos) && bos.is_some();
        let add_eos = vocab.add_eos.unwrap_or(false) && eos.is_some();
        let post_processor = if add_bos || add_eos {
            template_processing(
                add_bos.then(|| (bos.clone().unwrap_or_default(), vocab.bos_id.unwrap_or(0))),
                add_eos.then(|| (eos.clone().unwrap_or_default(), vocab.eos_id.unwrap_or(0))),
            )
        } else if vocab.model == "gpt2" {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        } else {
            Value::Null
        };

        let document = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": model,
        });
        let text = serde_json::to_string(&document).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| {
            Error::parse(
                origin,
                format!("cannot rebuild the tokenizer from GGUF metadata: {e}"),
            )
        })?;
        let mut tokenizer = Self::new(inner);
        tokenizer.bos_token = bos;
        tokenizer.eos_token = eos;
        tokenizer.pad_token = pad;
        tokenizer.unk_token = unk;
        tokenizer.chat_template = vocab.chat_template.clone();
        tokenizer.model_max_length = vocab.model_max_length;
        Ok(tokenizer)
    }
}

/// GGUF merges are `"left right"` strings, ranked by position.
fn split_merges(merges: &[String], origin: &Path) -> Result<Vec<Value>> {
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| match merge.split_once(' ') {
            Some((left, right)) if !right.contains(' ') => Ok(json!([left, right])),
            _ => Err(Error::parse(
                origin,
                format!("merge {rank} `{merge}` is not two space-separated tokens"),
            )),
        })
        .collect()
}

/// SentencePiece BPE vocabularies (GGUF `llama` model) carry scores instead of merges. A BPE
/// over merges ranked by the score of the piece they produce tokenizes the same way; the order
/// follows transformers' `SentencePieceExtractor`: every split of every piece into two
/// in-vocabulary halves, by descending score of the piece, ties by the halves' ids.
fn sentencepiece_merges(
    tokens: &[String],
    scores: Option<&[f32]>,
    origin: &Path,
) -> Result<Vec<Value>> {
    let scores = scores.ok_or_else(|| {
        Error::parse(
            origin,
            "SentencePiece vocabulary without `tokenizer.ggml.scores`",
        )
    })?;
    if scores.len() != tokens.len() {
        return Err(Error::parse(
            origin,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (piece_id, piece) in tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*ids.get(&piece[..at])?, *ids.get(&piece[at..])?)))
            .collect();
        local.sort_unstable();
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (scores[piece_id], piece_id, l, r)),
        );
    }
    // Stable: pieces keep id order within equal scores, as Python's sorted() does.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(merges
        .into_iter()
        .map(|(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect())
}

/// A `TemplateProcessing` post-processor adding BOS and/or EOS around every sequence.
fn template_processing(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Value {
    let sequence = |type_id: u32, id: &str| -> Vec<Value> {
        let mut items = Vec::new();
        if let Some((token, _)) = &bos {
            items.push(json!({"SpecialToken": {"id": token, "type_id": type_id}}));
        }
        items.push(json!({"Sequence": {"id": id, "type_id": type_id}}));
        if let Some((token, _)) = &eos {
            items.push(json!({"SpecialToken": {"id": token, "type_id": type_id}}));
        }
        items
    };
    let single = sequence(0, "A");
    let mut pair = single.clone();
    pair.extend(sequence(1, "B"));
    let mut special_tokens = Map::new();
    for (token, id) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(
            token.clone(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    })
}
