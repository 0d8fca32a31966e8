//! A from-scratch student's exported folder tokenizes the same in every loader: its
//! `config.json` and `tokenizer_config.json` make `transformers` (4.x and 5.x) load
//! `tokenizer.json` as written, and distill's ids for a battery of texts (digits, arithmetic,
//! runs of spaces, Unicode, special and added tokens) equal the ids `transformers` 5 gave for
//! the same export (`fixtures/scratch-tokenizer-ids.json`, made by
//! `fixtures/make_scratch_ids.py`).

use std::path::Path;

use candle_core::{Device, IndexOp};
use distill_models::chat::{ChatTemplate, Message};
use distill_models::gguf::{export_gguf, ExportOptions, Quant};
use distill_models::Checkpoint;
use distill_student::data::{Conversation, Renderer};
use distill_student::init::{self, ScratchConfig};
use distill_student::tokenizer_train::{self, PreTokenizer, TokenizerTrainConfig};
use distill_student::{export, Trainer, TrainerConfig};

/// Worked arithmetic in the demo's style, the tokenizer's training text.
fn conversations() -> Vec<Conversation> {
    let mut out = Vec::new();
    for a in 2..14u32 {
        for b in 2..7u32 {
            let (sum, product) = (a + b, a * b);
            out.push(Conversation {
                id: format!("{a}-{b}"),
                problem_id: None,
                messages: vec![
                    Message::user(format!(
                        "Mia starts with {a} coins. Then Mia finds {b} more. How many coins does Mia have at the end?"
                    )),
                    Message::assistant(format!(
                        "<think>\n{a} + {b} = {sum}. {a} * {b} = {product}.\n</think>\n\nThe answer is \\boxed{{{sum}}}."
                    )),
                ],
                finish_reason: None,
                reference_answer: None,
                teacher_logprobs: None,
            });
        }
    }
    out
}

/// The demo's tokenizer settings, above 256 + 5 tokens so every byte is encodable (the battery
/// may hold unseen text).
fn demo_tokenizer() -> TokenizerTrainConfig {
    TokenizerTrainConfig {
        vocab_size: 300,
        split_digits: true,
        min_frequency: 2,
        merge_across_words: true,
        ..TokenizerTrainConfig::default()
    }
}

/// Exports an untrained from-scratch student the way `distill train --from-scratch` does
/// (demo tokenizer settings, `export::prepare`, `Trainer::save_model`).
fn export_scratch_student(dir: &Path) {
    export_scratch_student_with(dir, &demo_tokenizer())
}

/// [`export_scratch_student`] with a tokenizer trained on `settings`.
fn export_scratch_student_with(dir: &Path, settings: &TokenizerTrainConfig) {
    let convs = conversations();
    let chatml = ChatTemplate::chatml();
    let rendered: Vec<String> = convs
        .iter()
        .map(|c| chatml.render(&c.messages, false).unwrap())
        .collect();
    let tokenizer = tokenizer_train::train(&rendered, settings).unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let renderer = Renderer::new(tokenizer, template, &[]).unwrap();
    let scratch = ScratchConfig {
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        intermediate_size: 48,
        max_position_embeddings: 128,
        ..Default::default()
    };
    let mut student = init::from_scratch(&scratch, renderer.tokenizer().clone(), 5).unwrap();
    export::prepare(&mut student, &renderer);
    let trainer = Trainer::new(student, TrainerConfig::default(), &Device::Cpu).unwrap();
    trainer.save_model(dir).unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn scratch_export_tokenizes_as_transformers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    export_scratch_student(&dir);

    // transformers 5 builds any `qwen2` checkpoint's tokenizer as `Qwen2Tokenizer`, which
    // swaps in Qwen2's normalizer and pre-tokenizer whatever `tokenizer_class` says; for
    // `llama` (no tokenizer class registered) `PreTrainedTokenizerFast` loads `tokenizer.json`
    // verbatim in 4.x and 5.x. No `auto_map`: it would need remote code.
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["model_type"], "llama", "{config}");
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(
        tokenizer_config["tokenizer_class"], "PreTrainedTokenizerFast",
        "{tokenizer_config}"
    );
    assert!(tokenizer_config.get("auto_map").is_none());

    // `DISTILL_KEEP_EXPORT=DIR` keeps the folder (with distill's logits for one text) for
    // `fixtures/make_scratch_ids.py`.
    let ckpt = Checkpoint::open(&dir).unwrap();
    let tokenizer = ckpt.tokenizer().unwrap();
    if let Some(keep) = std::env::var_os("DISTILL_KEEP_EXPORT") {
        keep_with_logits(&ckpt, &tokenizer, Path::new(&keep));
    }
    let fixture = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scratch-tokenizer-ids.json"),
    );
    let cases = fixture["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(text, false).unwrap(),
            expected,
            "ids of {text:?} differ from transformers'"
        );
        assert_eq!(tokenizer.decode(&expected, false).unwrap(), text);
    }
}

/// The text whose last-position logits the kept export carries.
const LOGITS_TEXT: &str = "<|im_start|>user\nMia has 17 coins and finds 25 more.<|im_end|>\n<|im_start|>assistant\n<think>\n17 + 25 = 42";

/// Copies the export to `keep` with `distill-logits.json`: the last-position logits of
/// [`LOGITS_TEXT`], which the script compares with `AutoModelForCausalLM`'s.
fn keep_with_logits(
    ckpt: &Checkpoint,
    tokenizer: &distill_models::tokenizer::TextTokenizer,
    keep: &Path,
) {
    std::fs::create_dir_all(keep).unwrap();
    for entry in std::fs::read_dir(ckpt.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keep.join(entry.file_name())).unwrap();
    }
    let text = LOGITS_TEXT;
    let ids = tokenizer.encode(text, false).unwrap();
    let model = ckpt.load_model(&Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let logits = model.forward_cached(&ids, &mut cache).unwrap();
    let last: Vec<f32> = logits.i(ids.len() - 1).unwrap().to_vec1().unwrap();
    let out = serde_json::json!({ "text": text, "ids": ids, "last_logits": last });
    std::fs::write(keep.join("distill-logits.json"), out.to_string()).unwrap();
}

/// With `pre_tokenizer = smollm` a from-scratch student exports to GGUF as llama.cpp's
/// `smollm` pre-tokenizer, and the GGUF's tokenizer gives the folder's ids on the battery (no
/// token holds two digits); the compact tokenizer is refused, naming its pre-tokenizer.
#[test]
fn smollm_pre_tokenizer_exports_to_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scratch-tokenizer-ids.json"),
    );
    let texts: Vec<&str> = fixture["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let options = ExportOptions {
        quant: Quant::F16,
        name: None,
    };

    let smollm = TokenizerTrainConfig {
        merge_across_words: false,
        pre_tokenizer: PreTokenizer::Smollm,
        ..demo_tokenizer()
    };
    let dir = tmp.path().join("smollm");
    export_scratch_student_with(&dir, &smollm);
    let gguf = tmp.path().join("smollm.gguf");
    let summary = export_gguf(&Checkpoint::open(&dir).unwrap(), &gguf, &options).unwrap();
    assert_eq!(summary.pre_tokenizer.as_deref(), Some("smollm"));
    let folder = Checkpoint::open(&dir).unwrap().tokenizer().unwrap();
    let exported = Checkpoint::open(&gguf).unwrap().tokenizer().unwrap();
    for text in &texts {
        let ids = folder.encode(text, false).unwrap();
        assert_eq!(exported.encode(text, false).unwrap(), ids, "{text:?}");
        for &id in &ids {
            let token = folder.decode(&[id], false).unwrap();
            assert!(
                token.chars().filter(char::is_ascii_digit).count() <= 1
                    && (token.len() == 1 || !token.starts_with(|c: char| c.is_ascii_digit())),
                "{text:?}: token {token:?}"
            );
        }
    }
    // A space before a digit is a token of its own, as in llama.cpp's `smollm`.
    let ids = folder.encode("is 42", false).unwrap();
    let tokens: Vec<String> = ids
        .iter()
        .map(|&i| folder.decode(&[i], false).unwrap())
        .collect();
    assert_eq!(tokens[tokens.len() - 3..], [" ", "4", "2"], "{tokens:?}");

    // The compact pre-tokenizer (the demo's) has no llama.cpp name.
    let dir = tmp.path().join("compact");
    export_scratch_student(&dir);
    let err = export_gguf(
        &Checkpoint::open(&dir).unwrap(),
        &tmp.path().join("compact.gguf"),
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("pre-tokenizer"), "{err}");

    // What cannot be expressed is refused when the settings are checked.
    for bad in [
        TokenizerTrainConfig {
            pre_tokenizer: PreTokenizer::Smollm,
            ..demo_tokenizer()
        },
        TokenizerTrainConfig {
            split_digits: false,
            ..smollm.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
