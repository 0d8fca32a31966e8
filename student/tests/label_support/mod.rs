//! A hand-made byte-level tokenizer with a fixed, tiny vocabulary and no merges, so tests can
//! write expected token ids by hand: ids 0–4 are `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
//! `<think>`, `</think>`; then `Ċ` (newline) 5, `Ġ` (space) 6, `+` 7, digits `0`–`9` 8–17, and
//! the letters of `LETTERS` from 18 on.

#![allow(dead_code)]

use distill_models::chat::ChatTemplate;
use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

pub const LETTERS: &str = "aeinrstu";
pub const IM_START: u32 = 1;
pub const IM_END: u32 = 2;
pub const THINK: u32 = 3;
pub const END_THINK: u32 = 4;
pub const NL: u32 = 5;
pub const SPACE: u32 = 6;
pub const PLUS: u32 = 7;

pub fn digit(d: u32) -> u32 {
    8 + d
}

pub fn letter(c: char) -> u32 {
    18 + LETTERS.find(c).expect("letter in the test vocabulary") as u32
}

/// Ids of a lowercase word of `LETTERS`.
pub fn word(w: &str) -> Vec<u32> {
    w.chars().map(letter).collect()
}

/// The tiny tokenizer, optionally with BPE merges (pairs of existing symbols).
pub fn tiny_tokenizer(merges: &[(&str, &str)]) -> TextTokenizer {
    let mut symbols: Vec<String> = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    symbols.extend(["Ċ", "Ġ", "+"].iter().map(|s| s.to_string()));
    symbols.extend((0..10).map(|d| d.to_string()));
    symbols.extend(LETTERS.chars().map(|c| c.to_string()));
    symbols.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    let vocab: serde_json::Map<String, serde_json::Value> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            json!({"id": i, "content": symbols[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": i < 3})
        })
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab,
                  "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()},
    });
    let inner: tokenizers::Tokenizer = doc.to_string().parse().expect("valid tokenizer json");
    let mut t = TextTokenizer::new(inner);
    t.eos_token = Some("<|im_end|>".into());
    t.pad_token = Some("<|endoftext|>".into());
    t.chat_template = Some(ChatTemplate::chatml().source().to_string());
    t
}
