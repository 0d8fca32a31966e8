//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture) against the reference
//! numbers `fixtures/make_smollm2_reference.py` recorded with transformers (and llama.cpp for
//! the tokenizer and greedy text): logits, greedy continuation, parameter count, and a lossless
//! `convert` round trip.

use std::path::{Path, PathBuf};

use candle_core::{Device, D};
use distill_models::chat::Message;
use distill_models::{Checkpoint, Model};
use serde_json::Value;

fn gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(model: &Model, prompt: &[u32], max_new: usize, eos: &[u32]) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached(prompt, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let last = logits.get(logits.dim(0).unwrap() - 1).unwrap();
        let next = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if eos.contains(&next) {
            break;
        }
        logits = model.forward_cached(&[next], &mut cache).unwrap();
    }
    out
}

fn last_logits(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let logits = model.forward_cached(prompt, &mut cache).unwrap();
    logits.get(prompt.len() - 1).unwrap().to_vec1().unwrap()
}

#[test]
fn smollm2_matches_reference() {
    let r = reference();
    let ckpt = Checkpoint::open(&gguf()).unwrap();
    assert_eq!(
        ckpt.config().spec().unwrap().num_parameters() as u64,
        r["parameter_count"].as_u64().unwrap()
    );

    // The prompt: chat template rendering and tokenization both reproduce the reference.
    let tokenizer = ckpt.tokenizer().unwrap();
    let messages: Vec<Message> = serde_json::from_value(r["greedy"]["messages"].clone()).unwrap();
    let template = tokenizer.chat_template().unwrap().expect("chat template");
    let text = template.render(&messages, true).unwrap();
    assert_eq!(text, r["greedy"]["prompt_text"].as_str().unwrap());
    let prompt = u32s(&r["greedy"]["prompt_ids"]);
    assert_eq!(tokenizer.encode(&text, false).unwrap(), prompt);

    let model = ckpt.load_model(&Device::Cpu).unwrap();
    let logits = last_logits(&model, &prompt);
    let want = &r["last_logits"];
    assert_eq!(logits.len(), want["vocab_size"].as_u64().unwrap() as usize);
    for pair in want["top20"].as_array().unwrap() {
        let (id, value) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap() as f32,
        );
        assert!(
            (logits[id] - value).abs() < 1e-3,
            "logit {id}: {} vs {value}",
            logits[id]
        );
    }
    for (i, v) in want["first32"].as_array().unwrap().iter().enumerate() {
        let v = v.as_f64().unwrap() as f32;
        assert!(
            (logits[i] - v).abs() < 1e-3,
            "logit {i}: {} vs {v}",
            logits[i]
        );
    }
    let l2 = logits
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let want_l2 = want["l2_norm"].as_f64().unwrap();
    assert!(
        (l2 - want_l2).abs() / want_l2 < 1e-5,
        "l2 {l2} vs {want_l2}"
    );

    let generated = greedy(&model, &prompt, 24, &ckpt.eos_token_ids());
    assert_eq!(generated, u32s(&r["greedy"]["generated_ids"]));
    assert_eq!(
        tokenizer.decode(&generated, true).unwrap(),
        r["greedy"]["generated_text_skip_special"].as_str().unwrap()
    );
}

/// Run quantized (Q4_1 blocks through `models/src/kernels`, as llama.cpp runs them), the model
/// still produces the reference greedy answer.
#[test]
fn smollm2_quantized_greedy_matches_reference() {
    let r = reference();
    let ckpt = Checkpoint::open(&gguf()).unwrap();
    let model = ckpt.load_quantized_model(&Device::Cpu).unwrap();
    let prompt = u32s(&r["greedy"]["prompt_ids"]);
    let generated = greedy(&model, &prompt, 24, &ckpt.eos_token_ids());
    assert_eq!(generated, u32s(&r["greedy"]["generated_ids_llamacpp"]));
    let logits = last_logits(&model, &prompt);
    let argmax = r["last_logits"]["argmax"].as_u64().unwrap() as usize;
    let best = logits.iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(logits[argmax], best);
}

/// `convert` writes a Hugging Face folder that reloads to bit-identical logits, with the same
/// tokenizer, chat template and stop ids.
#[test]
fn smollm2_convert_round_trip() {
    let r = reference();
    let ckpt = Checkpoint::open(&gguf()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    ckpt.save_hf(&out, 200_000_000).unwrap();
    let saved = Checkpoint::open(&out).unwrap();
    assert!(!saved.is_gguf());
    assert!(
        out.join("model.safetensors.index.json").is_file(),
        "expected shards at 200 MB"
    );
    assert_eq!(
        saved.config().spec().unwrap(),
        ckpt.config().spec().unwrap()
    );
    assert_eq!(saved.eos_token_ids(), ckpt.eos_token_ids());

    let prompt = u32s(&r["greedy"]["prompt_ids"]);
    let a = last_logits(&ckpt.load_model(&Device::Cpu).unwrap(), &prompt);
    let b = last_logits(&saved.load_model(&Device::Cpu).unwrap(), &prompt);
    assert_eq!(a, b);

    let (t1, t2) = (ckpt.tokenizer().unwrap(), saved.tokenizer().unwrap());
    for case in r["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            t1.encode(text, false).unwrap(),
            t2.encode(text, false).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(t1.chat_template, t2.chat_template);
}
