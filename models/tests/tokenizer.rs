//! Tokenizers: the SmolLM2 tokenizer rebuilt from GGUF metadata gives exactly the reference ids
//! (llama.cpp's where recorded, else transformers') on a battery of texts and decodes back;
//! saving to a Hugging Face folder and reloading keeps everything; HF folder variants
//! (template lists, AddedToken dicts, special_tokens_map.json, chat_template.jinja); a
//! SentencePiece (`llama`) vocabulary rebuilt from scores.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use distill_models::gguf::GgufCheckpoint;
use distill_models::tokenizer::TextTokenizer;
use distill_models::Error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn reference() -> serde_json::Value {
    let path = fixtures().join("smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn smollm2_tokenizer() -> TextTokenizer {
    GgufCheckpoint::open(&smollm2_path())
        .unwrap()
        .tokenizer()
        .unwrap()
}

fn ids(value: &serde_json::Value) -> Option<Vec<u32>> {
    serde_json::from_value(value.clone()).ok()
}

/// The ids a GGUF tokenizer must produce: llama.cpp's when the reference recorded them (the
/// GGUF authority), transformers' otherwise.
fn expected_ids(case: &serde_json::Value) -> Vec<u32> {
    ids(&case["ids_llamacpp"])
        .or_else(|| ids(&case["ids"]))
        .unwrap()
}

fn check_battery(tokenizer: &TextTokenizer, reference: &serde_json::Value) {
    let battery = reference["tokenize"].as_array().unwrap();
    assert!(battery.len() >= 30);
    let mut failures = Vec::new();
    for case in battery {
        let text = case["text"].as_str().unwrap();
        let got = tokenizer.encode(text, false).unwrap();
        if got != expected_ids(case) {
            failures.push(format!(
                "{text:?}: got {got:?}, want {:?}",
                expected_ids(case)
            ));
        }
        // Transformers' ids too, when it agrees with llama.cpp.
        if let Some(hf) = ids(&case["ids"]) {
            if case["ids_agree"].as_bool().unwrap_or(true) {
                assert_eq!(got, hf, "{text:?} vs transformers");
            }
        }
        assert_eq!(
            tokenizer.decode(&got, false).unwrap(),
            text,
            "decode {got:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let with_special = &reference["tokenize_add_special_tokens"];
    let text = with_special["text"].as_str().unwrap();
    assert_eq!(
        tokenizer.encode(text, true).unwrap(),
        expected_ids(with_special)
    );
}

#[test]
fn smollm2_gguf_tokenizer_matches_reference_ids() {
    let reference = reference();
    let tokenizer = smollm2_tokenizer();
    check_battery(&tokenizer, &reference);
}

#[test]
fn smollm2_special_tokens() {
    let reference = reference();
    let tokenizer = smollm2_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 49152);
    for (key, field) in [
        ("bos", &tokenizer.bos_token),
        ("eos", &tokenizer.eos_token),
        ("pad", &tokenizer.pad_token),
    ] {
        let expected = &reference["special_tokens"][key];
        assert_eq!(field.as_deref(), expected[0].as_str(), "{key}");
        let id = expected[1].as_u64().unwrap() as u32;
        assert_eq!(tokenizer.token_id(field.as_deref().unwrap()), Some(id));
    }
    assert_eq!(tokenizer.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(tokenizer.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(tokenizer.unk_token(), Some("<|endoftext|>"));
    assert_eq!(tokenizer.token_id("<|endoftext|>"), Some(0));
    assert_eq!(tokenizer.model_max_length(), Some(8192));
    // Special tokens are skipped on request, kept otherwise.
    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .unwrap();
    assert_eq!(ids, vec![1, 4093, 198, 26843, 2]);
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nHi");
    assert_eq!(
        tokenizer.decode(&ids, false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>"
    );
}

#[test]
fn smollm2_save_and_reload_keeps_everything() {
    let reference = reference();
    let tokenizer = smollm2_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    tokenizer.save_hf_dir(dir.path()).unwrap();

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["clean_up_tokenization_spaces"], false);
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["pad_token"], "<|im_end|>");
    assert_eq!(config["unk_token"], "<|endoftext|>");
    assert_eq!(config["model_max_length"], 8192);
    assert_eq!(config["chat_template"], reference["chat_template"]);
    let decoder = config["added_tokens_decoder"].as_object().unwrap();
    assert_eq!(decoder.len(), 17);
    assert_eq!(
        decoder["2"],
        serde_json::json!({"content": "<|im_end|>", "lstrip": false, "normalized": false,
                           "rstrip": false, "single_word": false, "special": true})
    );

    let reloaded = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(reloaded.bos_token, tokenizer.bos_token);
    assert_eq!(reloaded.eos_token, tokenizer.eos_token);
    assert_eq!(reloaded.pad_token, tokenizer.pad_token);
    assert_eq!(reloaded.chat_template, tokenizer.chat_template);
    assert_eq!(reloaded.vocab_size(), 49152);
    check_battery(&reloaded, &reference);

    // A second save writes the same files.
    let again = tempfile::tempdir().unwrap();
    reloaded.save_hf_dir(again.path()).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(dir.path().join(file)).unwrap(),
            std::fs::read(again.path().join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Writes a minimal `tokenizer.json` (word-level, two specials) into `dir`.
fn write_minimal_tokenizer_json(dir: &Path) {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "[UNK]": 4}, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
}

#[test]
fn hf_dir_variants() {
    // chat_template as a list, special tokens as AddedToken dicts.
    let dir = tempfile::tempdir().unwrap();
    write_minimal_tokenizer_json(dir.path());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "__type": "AddedToken"},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"}
            ],
            "padding_side": "left",
            "auto_map": {"AutoTokenizer": ["x.Tok", null]}
        })
        .to_string(),
    )
    .unwrap();
    let tokenizer = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tokenizer.eos_token.as_deref(), Some("</s>"));
    assert_eq!(tokenizer.pad_token, None);
    assert_eq!(
        tokenizer.chat_template.as_deref(),
        Some("{{ bos_token }}{{ messages[0]['content'] }}")
    );
    let template = tokenizer.chat_template().unwrap().unwrap();
    let rendered = template
        .render(&[distill_models::chat::Message::user("hi")], false)
        .unwrap();
    assert_eq!(rendered, "<s>hi");
    assert_eq!(tokenizer.encode("hello world", false).unwrap(), vec![2, 3]);
    assert_eq!(tokenizer.vocab_size(), 5);

    // Unknown keys survive a save, remote-code keys do not.
    let out = tempfile::tempdir().unwrap();
    tokenizer.save_hf_dir(out.path()).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["padding_side"], "left");
    assert!(config.get("auto_map").is_none());
    assert_eq!(config["bos_token"], "<s>");
    assert_eq!(config["pad_token"], serde_json::Value::Null);

    // special_tokens_map.json as fallback, chat_template.jinja overriding.
    let dir = tempfile::tempdir().unwrap();
    write_minimal_tokenizer_json(dir.path());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "old"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("special_tokens_map.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "</s>"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "new {{ eos_token }}",
    )
    .unwrap();
    let tokenizer = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tokenizer.eos_token.as_deref(), Some("</s>"));
    assert_eq!(tokenizer.pad_token.as_deref(), Some("</s>"));
    assert_eq!(
        tokenizer.chat_template.as_deref(),
        Some("new {{ eos_token }}")
    );
}

#[test]
fn hf_dir_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::MissingTokenizer(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "No tokenizer found for `{}` (expected tokenizer.json or GGUF tokenizer metadata)",
            dir.path().display()
        )
    );

    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "Cannot parse `{}`",
            dir.path().join("tokenizer.json").display()
        )),
        "{err}"
    );

    write_minimal_tokenizer_json(dir.path());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": 5}"#,
    )
    .unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
    assert!(err.contains("chat_template"), "{err}");
}

/// Writes a GGUF holding only tokenizer metadata.
fn write_vocab_gguf(path: &Path, metadata: Vec<(&str, gguf_file::Value)>) {
    let mut file = std::fs::File::create(path).unwrap();
    let refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut file, &refs, &[]).unwrap();
}

fn strings(items: &[&str]) -> gguf_file::Value {
    gguf_file::Value::Array(
        items
            .iter()
            .map(|s| gguf_file::Value::String(s.to_string()))
            .collect(),
    )
}

#[test]
fn sentencepiece_vocabulary_from_scores() {
    // A Llama-2 style vocabulary: <unk>, <s>, </s>, byte tokens, pieces with scores.
    let mut tokens = vec!["<unk>", "<s>", "</s>"];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    let bytes: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
    for b in &bytes {
        tokens.push(b);
        types.push(6);
        scores.push(0.0);
    }
    // Pieces; a higher score merges first.
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -3.0),
        ("l", -4.0),
        ("o", -5.0),
        ("w", -6.0),
        ("r", -7.0),
        ("d", -8.0),
        ("ll", -9.0),
        ("he", -10.0),
        ("▁he", -11.0),
        ("llo", -12.0),
        ("▁hello", -13.0),
        ("▁w", -14.0),
        ("or", -15.0),
        ("▁wor", -16.0),
        ("hell", -17.0),
    ];
    for (piece, score) in pieces {
        tokens.push(piece);
        types.push(1);
        scores.push(score);
    }
    let id = |t: &str| tokens.iter().position(|x| *x == t).unwrap() as u32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spm.gguf");
    write_vocab_gguf(
        &path,
        vec![
            (
                "general.architecture",
                gguf_file::Value::String("llama".into()),
            ),
            (
                "tokenizer.ggml.model",
                gguf_file::Value::String("llama".into()),
            ),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                gguf_file::Value::Array(types.iter().map(|&t| gguf_file::Value::I32(t)).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                gguf_file::Value::Array(scores.iter().map(|&s| gguf_file::Value::F32(s)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", gguf_file::Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", gguf_file::Value::U32(0)),
        ],
    );
    let tokenizer = GgufCheckpoint::open(&path).unwrap().tokenizer().unwrap();
    assert_eq!(tokenizer.bos_token.as_deref(), Some("<s>"));
    // SentencePiece: a space prefix, ▁ for spaces, BOS added by default. By score: ll, he,
    // ▁he, llo, then ▁he+llo = ▁hello; ▁w, or, ▁w+or = ▁wor, and "l", "d" stay alone.
    let got = tokenizer.encode("hello world", true).unwrap();
    assert_eq!(got, vec![1, id("▁hello"), id("▁wor"), id("l"), id("d")]);
    // Characters outside the vocabulary fall back to bytes.
    let got = tokenizer.encode("hé", false).unwrap();
    assert_eq!(got, vec![id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(tokenizer.decode(&got, false).unwrap(), "hé");
    assert_eq!(
        tokenizer
            .decode(&tokenizer.encode("hello world", true).unwrap(), true)
            .unwrap(),
        "hello world"
    );
}

#[test]
fn gguf_without_tokenizer_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.gguf");
    write_vocab_gguf(
        &path,
        vec![(
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        )],
    );
    let err = GgufCheckpoint::open(&path)
        .unwrap()
        .tokenizer()
        .unwrap_err();
    assert!(matches!(err, Error::MissingTokenizer(_)));
    assert!(err.to_string().contains(&path.display().to_string()));

    write_vocab_gguf(
        &path,
        vec![
            (
                "tokenizer.ggml.model",
                gguf_file::Value::String("bert".into()),
            ),
            ("tokenizer.ggml.tokens", strings(&["a", "b"])),
        ],
    );
    let err = GgufCheckpoint::open(&path)
        .unwrap()
        .tokenizer()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported tokenizer model `bert`"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn tiny_gguf_tokenizers_match_reference() {
    // tiny-llama.gguf uses the smollm pre-tokenizer, tiny-qwen2.gguf the qwen2 regex.
    let path = fixtures().join("tiny-gguf-tokenize.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for file in ["tiny-llama.gguf", "tiny-qwen2.gguf"] {
        let tokenizer = GgufCheckpoint::open(&fixtures().join(file))
            .unwrap()
            .tokenizer()
            .unwrap();
        assert_eq!(tokenizer.vocab_size(), 256, "{file}");
        let cases = reference[file]["tokenize"].as_array().unwrap();
        assert!(cases.len() >= 9, "{file}");
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let got = tokenizer.encode(text, false).unwrap();
            assert_eq!(got, expected_ids(case), "{file} {text:?}");
            assert_eq!(tokenizer.decode(&got, false).unwrap(), text, "{file}");
        }
        let chat = &reference[file]["chat"];
        let messages: Vec<distill_models::chat::Message> =
            serde_json::from_value(chat["messages"].clone()).unwrap();
        let rendered = tokenizer
            .chat_template()
            .unwrap()
            .unwrap()
            .render(&messages, chat["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(rendered, chat["text"].as_str().unwrap(), "{file}");
    }
}

/// GPT-2's byte → printable character table (as tokenizers' ByteLevel uses it).
fn byte_level_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    table.sort();
    table
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap().to_string())
        .collect()
}

#[test]
fn pre_tokenizer_names_choose_llama_cpp_regexes() {
    // Bytes, then merged digit tokens; merges 1+2, 12+3, 123+4, 4+5.
    let mut tokens = vec!["<|begin_of_text|>".to_string()];
    let mut types = vec![3];
    for c in byte_level_alphabet() {
        tokens.push(c);
        types.push(1);
    }
    for t in ["12", "123", "1234", "45"] {
        tokens.push(t.to_string());
        types.push(1);
    }
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let digits: Vec<u32> = "1234567".chars().map(|c| id(&c.to_string())).collect();
    let (t123, t1234, t45) = (id("123"), id("1234"), id("45"));
    let (t5, t6, t7) = (id("5"), id("6"), id("7"));
    let dir = tempfile::tempdir().unwrap();
    for (pre, expected, bos_by_default) in [
        // GPT-2 keeps digit runs whole, so merges build 1234.
        ("gpt-2", vec![t1234, t5, t6, t7], false),
        // Llama-3: digits in groups of three, and whole pre-tokens found in the vocabulary
        // skip the merges (ignore_merges); BOS by default.
        ("llama-bpe", vec![t123, t45, t6, t7], true),
        ("deepseek-v3", vec![t123, t45, t6, t7], false),
        ("default", vec![t123, t45, t6, t7], false),
        // Single digits.
        ("qwen2", digits.clone(), false),
        ("deepseek-r1-qwen", digits.clone(), false),
        ("smollm", digits.clone(), false),
    ] {
        let path = dir.path().join(format!("{pre}.gguf"));
        write_vocab_gguf(
            &path,
            vec![
                (
                    "tokenizer.ggml.model",
                    gguf_file::Value::String("gpt2".into()),
                ),
                ("tokenizer.ggml.pre", gguf_file::Value::String(pre.into())),
                (
                    "tokenizer.ggml.tokens",
                    strings(&tokens.iter().map(String::as_str).collect::<Vec<_>>()),
                ),
                (
                    "tokenizer.ggml.token_type",
                    gguf_file::Value::Array(
                        types.iter().map(|&t| gguf_file::Value::I32(t)).collect(),
                    ),
                ),
                (
                    "tokenizer.ggml.merges",
                    strings(&["1 2", "12 3", "123 4", "4 5"]),
                ),
                ("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(0)),
            ],
        );
        let tokenizer = GgufCheckpoint::open(&path).unwrap().tokenizer().unwrap();
        assert_eq!(
            tokenizer.encode("1234567", false).unwrap(),
            expected,
            "{pre}"
        );
        let with_special = tokenizer.encode("1234567", true).unwrap();
        assert_eq!(with_special.first() == Some(&0), bos_by_default, "{pre}");
        assert_eq!(
            tokenizer.decode(&with_special, true).unwrap(),
            "1234567",
            "{pre}"
        );
        // Llama-3-style contractions are case-insensitive, GPT-2's are not; both round trip.
        let text = "I'LL don't\n\n  x";
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text, "{pre}");
    }
    // tokenizer.ggml.add_bos_token overrides the pre-tokenizer's default.
    let path = dir.path().join("no-bos.gguf");
    write_vocab_gguf(
        &path,
        vec![
            (
                "tokenizer.ggml.model",
                gguf_file::Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre",
                gguf_file::Value::String("llama-bpe".into()),
            ),
            (
                "tokenizer.ggml.tokens",
                strings(&tokens.iter().map(String::as_str).collect::<Vec<_>>()),
            ),
            ("tokenizer.ggml.merges", strings(&["1 2"])),
            ("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(0)),
            (
                "tokenizer.ggml.add_bos_token",
                gguf_file::Value::Bool(false),
            ),
        ],
    );
    let tokenizer = GgufCheckpoint::open(&path).unwrap().tokenizer().unwrap();
    assert_eq!(tokenizer.encode("7", true).unwrap(), vec![t7]);
}
