//! A tokenizer written as GGUF `tokenizer.*` metadata, the inverse of the reader in
//! [`crate::tokenizer`]: llama.cpp's byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with
//! the name of the llama.cpp pre-tokenizer that splits text exactly as the tokenizer's own
//! pre-tokenizer does, or a refusal that says why none does.
//!
//! llama.cpp does not read a tokenizer's pre-tokenizer from the file; it looks the name up in a
//! table of regex chains (`src/llama-vocab.cpp`). The name is therefore decided here by
//! comparing the tokenizer's own chain of splits with the chains of the names the reader
//! implements (the same constants), rather than by hashing a test encoding as llama.cpp's
//! Python converter does.

use std::path::Path;

use candle_core::quantized::gguf_file::Value as Meta;
use serde_json::Value;

use crate::tokenizer::{
    TextTokenizer, DEEPSEEK3_REGEXES, GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED, TOKEN_TYPE_USER_DEFINED,
};
use crate::{Error, Result};

/// `tokenizer.json`'s case-insensitive English contractions, and llama.cpp's spelling of the same
/// (its regex engine has no inline flags).
const HF_CONTRACTIONS: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const LLAMA_CPP_CONTRACTIONS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// What `Digits(individual_digits = true)` splits off, as a regex.
const SINGLE_DIGIT: &str = r"\p{N}";

/// The llama.cpp pre-tokenizer names the export writes: the regex chain each applies and whether
/// a pre-token found whole in the vocabulary skips the merges (`ignore_merges`). Other names
/// share these chains (`deepseek-r1-qwen` is `qwen2`, `dbrx` is `smaug-bpe`); one per chain is
/// enough.
const NAMED_PRE_TOKENIZERS: &[(&str, &[&str], bool)] = &[
    ("qwen2", &[QWEN2_REGEX], false),
    ("llama-bpe", &[LLAMA3_REGEX], true),
    ("smaug-bpe", &[LLAMA3_REGEX], false),
    ("smollm", &[SINGLE_DIGIT, GPT2_REGEX], false),
    ("gpt-2", &[GPT2_REGEX], false),
    ("deepseek-v3", DEEPSEEK3_REGEXES, false),
];

/// The ids llama.cpp reads from `tokenizer.ggml.*_token_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// A second stop id (Qwen2.5's `<|endoftext|>` beside `<|im_end|>`): llama.cpp ends
    /// generation at `eot` too.
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

/// The special ids of `tokenizer`, falling back to the checkpoint's generation settings for
/// tokens the tokenizer does not name. `eos_ids` are the checkpoint's stop ids, first the one
/// `tokenizer_config.json` names.
pub(crate) fn special_ids(
    tokenizer: &TextTokenizer,
    eos_ids: &[u32],
    bos_fallback: Option<u32>,
    pad_fallback: Option<u32>,
) -> SpecialIds {
    let id = |token: &Option<String>| token.as_deref().and_then(|t| tokenizer.token_id(t));
    let eos = id(&tokenizer.eos_token).or_else(|| eos_ids.first().copied());
    SpecialIds {
        bos: id(&tokenizer.bos_token).or(bos_fallback),
        eos,
        eot: eos_ids.iter().copied().find(|&other| Some(other) != eos),
        pad: id(&tokenizer.pad_token).or(pad_fallback),
        unk: tokenizer.unk_token().and_then(|t| tokenizer.token_id(t)),
    }
}

/// Every `tokenizer.*` key llama.cpp needs, for a model whose embedding has `vocab_size` rows.
/// `origin` names the checkpoint in refusals.
pub(crate) fn tokenizer_metadata(
    tokenizer: &TextTokenizer,
    vocab_size: usize,
    ids: &SpecialIds,
    origin: &Path,
) -> Result<Vec<(String, Meta)>> {
    let refuse = |reason: String| Error::export(origin, reason);
    let text = tokenizer
        .inner
        .to_string(false)
        .map_err(|e| Error::Tokenizer(format!("cannot serialize the tokenizer: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let pre = pre_tokenizer_name(&json).map_err(refuse)?;

    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![TOKEN_TYPE_UNUSED; vocab_size];
    let mut place = |id: u64, token: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            refuse(format!(
                "its tokenizer has token `{token}` at id {id}, but the model's embedding has only \
                 {vocab_size} rows"
            ))
        })?;
        *slot = Some(token.to_string());
        types[id as usize] = kind;
        Ok(())
    };
    let vocab = json["model"]["vocab"]
        .as_object()
        .ok_or_else(|| refuse("its tokenizer.json has no BPE vocabulary".into()))?;
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| refuse(format!("token `{token}` has no integer id")))?;
        place(id, token, TOKEN_TYPE_NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let special = added["special"].as_bool().unwrap_or(false) || looks_special(content);
        let kind = if special {
            TOKEN_TYPE_CONTROL
        } else {
            TOKEN_TYPE_USER_DEFINED
        };
        place(id, content, kind)?;
    }
    // Ids no token uses (an embedding padded to a round size) get placeholders, as llama.cpp's
    // converter writes them: the token list must have one entry per embedding row.
    let tokens: Vec<Meta> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| Meta::String(t.unwrap_or_else(|| format!("[PAD{i}]"))))
        .collect();
    let merges = merges(&json["model"]["merges"]).map_err(refuse)?;

    let add_bos = adds_at(tokenizer, ids.bos, true)?;
    let add_eos = adds_at(tokenizer, ids.eos, false)?;
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Meta::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Meta::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Meta::Array(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Meta::Array(types.into_iter().map(Meta::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            Meta::Array(merges.into_iter().map(Meta::String).collect()),
        ),
    ];
    for (key, id) in [
        ("bos_token_id", ids.bos),
        ("eos_token_id", ids.eos),
        ("eot_token_id", ids.eot),
        ("unknown_token_id", ids.unk),
        ("padding_token_id", ids.pad),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Meta::U32(id)));
        }
    }
    meta.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        Meta::Bool(add_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".to_string(),
        Meta::Bool(add_eos),
    ));
    if let Some(template) = &tokenizer.chat_template {
        meta.push((
            "tokenizer.chat_template".to_string(),
            Meta::String(template.clone()),
        ));
    }
    Ok(meta)
}

/// Whether encoding with special tokens puts `id` first (`start`) or last: what
/// `add_bos_token` / `add_eos_token` tell llama.cpp to do.
fn adds_at(tokenizer: &TextTokenizer, id: Option<u32>, start: bool) -> Result<bool> {
    let Some(id) = id else {
        return Ok(false);
    };
    let ids = tokenizer.encode("a", true)?;
    let plain = tokenizer.encode("a", false)?;
    let end = if start { ids.first() } else { ids.last() };
    Ok(ids.len() > plain.len() && end == Some(&id))
}

/// Added tokens llama.cpp's converter treats as control tokens even when `tokenizer.json` does
/// not mark them special: `<|...|>` and DeepSeek's `<｜...｜>`.
fn looks_special(token: &str) -> bool {
    (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
}

/// BPE merges as GGUF stores them, `"left right"` by rank; `tokenizer.json` writes either that or
/// `["left", "right"]` pairs.
fn merges(merges: &Value) -> std::result::Result<Vec<String>, String> {
    let Some(merges) = merges.as_array() else {
        return Ok(Vec::new());
    };
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| match merge {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match (
                pair.first().and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) {
                (Some(left), Some(right))
                    if pair.len() == 2 && !left.contains(' ') && !right.contains(' ') =>
                {
                    Ok(format!("{left} {right}"))
                }
                _ => Err(format!(
                    "merge {rank} ({merge}) cannot be written as GGUF's space-separated pair"
                )),
            },
            other => Err(format!("merge {rank} ({other}) is not a pair of tokens")),
        })
        .collect()
}

/// The llama.cpp pre-tokenizer name for a `tokenizer.json` document, or why it has none.
pub(crate) fn pre_tokenizer_name(json: &Value) -> std::result::Result<&'static str, String> {
    let model = &json["model"];
    match model["type"].as_str() {
        Some("BPE") => {}
        other => {
            return Err(format!(
            "its tokenizer model is `{}`; the GGUF export writes byte-level BPE tokenizers only",
            other.unwrap_or("unknown")
        ))
        }
    }
    if model["byte_fallback"].as_bool() == Some(true) {
        return Err(
            "its tokenizer is SentencePiece-style BPE (byte fallback); the GGUF export writes \
             byte-level BPE tokenizers only"
                .into(),
        );
    }
    match &json["normalizer"] {
        Value::Null => {}
        // Qwen2's NFC: llama.cpp's own converter keeps these tokenizers and llama.cpp does not
        // normalize; text already in NFC (nearly all text) tokenizes the same.
        n if n["type"] == "NFC" => {}
        n => {
            return Err(format!(
                "its normalizer `{}` has no llama.cpp equivalent",
                n["type"].as_str().unwrap_or("?")
            ))
        }
    }
    let mut regexes = Vec::new();
    let mut byte_level = false;
    split_steps(&json["pre_tokenizer"], &mut regexes, &mut byte_level)?;
    if !byte_level {
        return Err("its pre-tokenizer has no ByteLevel step: not a byte-level BPE".into());
    }
    let ignore_merges = model["ignore_merges"].as_bool().unwrap_or(false);
    NAMED_PRE_TOKENIZERS
        .iter()
        .find(|(_, chain, ignore)| {
            *ignore == ignore_merges
                && chain.len() == regexes.len()
                && chain.iter().zip(&regexes).all(|(a, b)| *a == b)
        })
        .map(|(name, _, _)| *name)
        .ok_or_else(|| {
            let shown: Vec<String> = regexes.iter().map(|r| format!("`{r}`")).collect();
            format!(
                "its pre-tokenizer splits text with [{}] (ignore_merges {ignore_merges}), which \
                 none of llama.cpp's pre-tokenizers does exactly (tokens would differ in \
                 llama.cpp); known: qwen2, llama-bpe, smaug-bpe, smollm, gpt-2, deepseek-v3",
                shown.join(", ")
            )
        })
}

/// Flattens a `tokenizer.json` pre-tokenizer into the regexes it splits with, in order; notes
/// whether a ByteLevel step maps bytes to characters.
fn split_steps(
    step: &Value,
    regexes: &mut Vec<String>,
    byte_level: &mut bool,
) -> std::result::Result<(), String> {
    let kind = step["type"].as_str().unwrap_or("");
    match kind {
        "" if step.is_null() => Ok(()),
        "Sequence" => {
            for inner in step["pretokenizers"].as_array().into_iter().flatten() {
                split_steps(inner, regexes, byte_level)?;
            }
            Ok(())
        }
        "Split" => {
            let regex = match (
                step["pattern"]["Regex"].as_str(),
                step["pattern"]["String"].as_str(),
            ) {
                (Some(regex), _) => regex.to_string(),
                (None, Some(literal)) => escape_regex(literal),
                _ => return Err("a Split step has no pattern".into()),
            };
            if step["behavior"] != "Isolated" || step["invert"].as_bool() == Some(true) {
                return Err(format!(
                    "its Split step on `{regex}` keeps matches as `{}`{}; llama.cpp isolates \
                     every match",
                    step["behavior"].as_str().unwrap_or("?"),
                    if step["invert"].as_bool() == Some(true) {
                        " (inverted)"
                    } else {
                        ""
                    }
                ));
            }
            regexes.push(canonical_regex(&regex));
            Ok(())
        }
        "Digits" => {
            let single = step["individual_digits"].as_bool().unwrap_or(false);
            regexes.push(if single { SINGLE_DIGIT } else { r"\p{N}+" }.to_string());
            Ok(())
        }
        "ByteLevel" => {
            if step["add_prefix_space"].as_bool() == Some(true) {
                return Err(
                    "its ByteLevel step adds a space before the text, which llama.cpp does not"
                        .into(),
                );
            }
            if step["use_regex"].as_bool().unwrap_or(true) {
                regexes.push(GPT2_REGEX.to_string());
            }
            *byte_level = true;
            Ok(())
        }
        other => Err(format!(
            "its pre-tokenizer step `{other}` has no llama.cpp equivalent"
        )),
    }
}

/// A split regex in llama.cpp's spelling: contractions without the inline case flag, and
/// GPT-2's regex without the trailing `|\s+` that `tokenizers` adds (llama.cpp keeps text no
/// alternative matches as a piece of its own, which is what that alternative does).
fn canonical_regex(regex: &str) -> String {
    let regex = regex.replace(HF_CONTRACTIONS, LLAMA_CPP_CONTRACTIONS);
    if regex == format!(r"{GPT2_REGEX}|\s+") {
        GPT2_REGEX.to_string()
    } else {
        regex
    }
}

fn escape_regex(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tokenizer_json(pre: Value, ignore_merges: bool) -> Value {
        json!({
            "normalizer": null,
            "pre_tokenizer": pre,
            "model": {"type": "BPE", "ignore_merges": ignore_merges, "vocab": {}, "merges": []},
        })
    }

    fn split(regex: &str) -> Value {
        json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
    }

    fn byte_level(use_regex: bool) -> Value {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    }

    // The pre-tokenizers of the published tokenizer.json files, as transformers writes them.
    const QWEN2_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    #[test]
    fn published_tokenizers_get_llama_cpp_names() {
        let seq = |steps: Vec<Value>| json!({"type": "Sequence", "pretokenizers": steps});
        let qwen2 = tokenizer_json(seq(vec![split(QWEN2_HF), byte_level(false)]), false);
        assert_eq!(pre_tokenizer_name(&qwen2), Ok("qwen2"));
        let mut nfc = qwen2.clone();
        nfc["normalizer"] = json!({"type": "NFC"});
        assert_eq!(pre_tokenizer_name(&nfc), Ok("qwen2"));
        let llama3 = tokenizer_json(seq(vec![split(LLAMA3_HF), byte_level(false)]), true);
        assert_eq!(pre_tokenizer_name(&llama3), Ok("llama-bpe"));
        let llama3_merging = tokenizer_json(seq(vec![split(LLAMA3_HF), byte_level(false)]), false);
        assert_eq!(pre_tokenizer_name(&llama3_merging), Ok("smaug-bpe"));
        let digits = json!({"type": "Digits", "individual_digits": true});
        let smollm = tokenizer_json(seq(vec![digits, byte_level(true)]), false);
        assert_eq!(pre_tokenizer_name(&smollm), Ok("smollm"));
        assert_eq!(
            pre_tokenizer_name(&tokenizer_json(byte_level(true), false)),
            Ok("gpt-2")
        );
        // What the GGUF reader rebuilds: llama.cpp's own regexes, then bytes.
        let rebuilt = tokenizer_json(
            seq(vec![split(r"\p{N}"), split(GPT2_REGEX), byte_level(false)]),
            false,
        );
        assert_eq!(pre_tokenizer_name(&rebuilt), Ok("smollm"));
    }

    #[test]
    fn tokenizers_without_an_exact_llama_cpp_pre_tokenizer_are_refused() {
        let seq = |steps: Vec<Value>| json!({"type": "Sequence", "pretokenizers": steps});
        // distill's from-scratch tokenizer: a digit with its space, then GPT-2 words, or no
        // word split at all when merges may cross words.
        for use_regex in [true, false] {
            let scratch =
                tokenizer_json(seq(vec![split(r" ?\p{N}"), byte_level(use_regex)]), false);
            let err = pre_tokenizer_name(&scratch).unwrap_err();
            assert!(err.contains(r"` ?\p{N}`"), "{err}");
            assert!(err.contains("none of llama.cpp's pre-tokenizers"), "{err}");
        }
        // Qwen2's regex but merges skipped for whole words: llama.cpp's qwen2 merges.
        let qwen2_ignoring = tokenizer_json(seq(vec![split(QWEN2_HF), byte_level(false)]), true);
        assert!(pre_tokenizer_name(&qwen2_ignoring).is_err());
        let mut prefix = byte_level(true);
        prefix["add_prefix_space"] = true.into();
        let err = pre_tokenizer_name(&tokenizer_json(prefix, false)).unwrap_err();
        assert!(err.contains("adds a space"), "{err}");
        let metaspace = json!({"type": "Metaspace", "replacement": "▁"});
        let err = pre_tokenizer_name(&tokenizer_json(metaspace, false)).unwrap_err();
        assert!(err.contains("`Metaspace`"), "{err}");
        let mut fallback = tokenizer_json(byte_level(true), false);
        fallback["model"]["byte_fallback"] = true.into();
        assert!(pre_tokenizer_name(&fallback)
            .unwrap_err()
            .contains("SentencePiece"));
        let mut lowercase = tokenizer_json(byte_level(true), false);
        lowercase["normalizer"] = json!({"type": "Lowercase"});
        assert!(pre_tokenizer_name(&lowercase)
            .unwrap_err()
            .contains("`Lowercase`"));
        let wordpiece = json!({"model": {"type": "WordPiece"}});
        assert!(pre_tokenizer_name(&wordpiece)
            .unwrap_err()
            .contains("`WordPiece`"));
    }

    #[test]
    fn merges_in_both_spellings() {
        assert_eq!(
            merges(&json!(["Ġ t", ["h", "e"]])).unwrap(),
            vec!["Ġ t".to_string(), "h e".to_string()]
        );
        assert!(merges(&json!([["a b", "c"]])).is_err());
    }
}
