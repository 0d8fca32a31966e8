//! `export_gguf`: checkpoints written as GGUF and read back by distill's own GGUF reader.
//!
//! - Logits of every export against the source's (F32 exact; F16, Q8_0, Q4_K_M, Q6_K within
//!   the bounds measured when these tests were written, with headroom), for Hugging Face
//!   folders and GGUF sources of the tiny llama (llama3 RoPE, permuted q/k, tied), qwen2
//!   (biases, untied) and qwen3 (q/k norms, head_dim 32, YaRN) fixtures, and for a model whose
//!   rows are whole k-quant blocks.
//! - Which tensor gets which type (llama.cpp's Q4_K_M mix, fallbacks for short rows).
//! - Tokenizer ids, chat template and special ids round trip; a real tokenizer (SmolLM2's)
//!   gives back exactly the token list, types and merges llama.cpp's converter wrote.
//! - Refusals name the reason; the ollama Modelfile.
//! - (The files as the `gguf` Python package reads them, and against llama.cpp's quantizer:
//!   `gguf_export_reference.rs`.)
//! - SmolLM2-135M exported to Q8_0 generates the source's greedy tokens.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as Meta;
use candle_core::{DType, Device, Tensor, D};
use distill_models::checkpoint::save_hf_folder;
use distill_models::config::Common;
use distill_models::gguf::modelfile::modelfile_for;
use distill_models::gguf::{export_gguf, ExportOptions, GgufCheckpoint, Quant};
use distill_models::{llama, Checkpoint, Config, Model};
use serde_json::Value;

#[path = "../../tests/common/assets.rs"]
mod assets;
mod export_common;
use export_common::*;

fn smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Export → read back: F32 gives the source's logits exactly, F16 and Q8_0 within measured
/// bounds. Measured max |Δ logit| over the three architectures and both kinds of source
/// (largest |logit| 1.4-2.1; every matrix quantized, embeddings and output included): F16
/// 7.1e-4 to 1.12e-3, Q8_0 2.4e-2 to 3.14e-2. Asserted: 2e-3 and 5e-2.
#[test]
fn tiny_exports_give_the_source_logits() {
    let dir = tempfile::tempdir().unwrap();
    let ids = input_ids();
    for (fixture, gguf) in TINY {
        let folder = hf_with_tokenizer(dir.path(), fixture, gguf);
        for source in [folder, fixtures().join(gguf)] {
            let expected = logits(&source, &ids);
            for (quant, bound) in [(Quant::F32, 0.0), (Quant::F16, 2e-3), (Quant::Q8_0, 5e-2)] {
                let out = dir.path().join(format!("{fixture}.{quant}.gguf"));
                let summary = export(&source, &out, quant);
                assert!(summary.fallbacks.is_empty(), "{:?}", summary.fallbacks);
                let diff = max_diff(&logits(&out, &ids), &expected);
                eprintln!("{} → {quant}: max |Δ logit| {diff:e}", source.display());
                assert!(diff <= bound, "{} {quant}: {diff}", source.display());
                if quant != Quant::F32 {
                    assert!(diff > 0.0, "{quant} should round something");
                }
            }
        }
    }
}

/// Q4_K_M and Q6_K on the tiny models: rows of 64 values are not whole 256-blocks, so every
/// matrix falls back as llama.cpp's quantizer does (said in the summary): Q4_K to Q5_0, Q6_K to
/// Q8_0. A Q6_K export's logits are then the Q8_0 export's exactly, and a Q4_K_M export's are
/// within Q5_0's error of the source's (measured max |Δ logit| 0.17 against Q8_0's 0.024; asserted
/// 0.3).
#[test]
fn short_rows_fall_back_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("tiny-qwen2.gguf");
    let out = dir.path().join("tiny-qwen2.q4_k_m.gguf");
    let summary = export(&source, &out, Quant::Q4KM);
    // 2 layers × 7 matrices + token_embd + output; norms and biases stay f32. Q6_K in the mix:
    // output and the last eighth's attn_v and ffn_down.
    assert_eq!(
        summary.tensor_types,
        counts(&[("f32", 11), ("q5_0", 13), ("q8_0", 3)])
    );
    assert_eq!(summary.fallbacks.len(), 16);
    assert!(summary.fallbacks.contains(
        &"output.weight: rows of 64 values are not whole q6_k blocks of 256, stored as q8_0"
            .to_string()
    ));
    assert!(summary.fallbacks.contains(
        &"blk.0.attn_q.weight: rows of 64 values are not whole q4_k blocks of 256, stored as q5_0"
            .to_string()
    ));
    let ids = input_ids();
    let f32 = dir.path().join("tiny-qwen2.f32.gguf");
    export(&source, &f32, Quant::F32);
    let reference = logits(&f32, &ids);
    let diff = max_diff(&logits(&out, &ids), &reference);
    assert!(diff > 0.0 && diff < 0.3, "{diff}");
    let q6 = dir.path().join("tiny-qwen2.q6_k.gguf");
    let summary = export(&source, &q6, Quant::Q6K);
    assert_eq!(summary.tensor_types, counts(&[("f32", 11), ("q8_0", 16)]));
    let q8 = dir.path().join("tiny-qwen2.q8_0.gguf");
    export(&source, &q8, Quant::Q8_0);
    assert_eq!(max_diff(&logits(&q6, &ids), &logits(&q8, &ids)), 0.0);
    let q8_diff = max_diff(&logits(&q8, &ids), &reference);
    eprintln!("max |Δ logit| against f32: Q4_K_M (Q5_0 + Q8_0) {diff}, Q8_0 {q8_diff}");
    assert!(q8_diff < diff, "{q8_diff} {diff}");
}

/// The k-quants on a model whose rows are whole 256-blocks, llama.cpp's Q4_K_M mix, and the
/// logits against the f32 source. Measured max |Δ logit| (largest |logit| 3.2; random weights,
/// the hardest case for a quantizer): Q8_0 4.9e-2, Q6_K 0.18, Q4_K_M 0.72. Asserted: 8e-2,
/// 0.3, 1.0. [`k_quant_error_is_the_quantizer_only`] shows the file adds nothing to that.
#[test]
fn k_quants_follow_the_q4_k_m_mix() {
    let dir = tempfile::tempdir().unwrap();
    let source = k_model(dir.path());
    let ids = input_ids();
    let expected = logits(&source, &ids);
    for (quant, bound, types) in [
        (Quant::Q8_0, 8e-2, counts(&[("f32", 5), ("q8_0", 16)])),
        (Quant::Q6K, 0.3, counts(&[("f32", 5), ("q6_k", 16)])),
        // output, layer 1's attn_v and ffn_down (the last eighth of 2 layers): Q6_K.
        (
            Quant::Q4KM,
            1.0,
            counts(&[("f32", 5), ("q4_k", 13), ("q6_k", 3)]),
        ),
    ] {
        let out = dir.path().join(format!("k.{quant}.gguf"));
        let summary = export(&source, &out, quant);
        assert_eq!(summary.tensor_types, types, "{quant}");
        assert!(summary.fallbacks.is_empty(), "{:?}", summary.fallbacks);
        let file = GgufCheckpoint::open(&out).unwrap();
        let info = &file.content().tensor_infos;
        if quant == Quant::Q4KM {
            for (name, dtype) in [
                ("output.weight", "Q6K"),
                ("token_embd.weight", "Q4K"),
                ("blk.0.attn_v.weight", "Q4K"),
                ("blk.1.attn_v.weight", "Q6K"),
                ("blk.0.ffn_down.weight", "Q4K"),
                ("blk.1.ffn_down.weight", "Q6K"),
                ("blk.1.ffn_up.weight", "Q4K"),
            ] {
                assert_eq!(format!("{:?}", info[name].ggml_dtype), dtype, "{name}");
            }
        }
        let diff = max_diff(&logits(&out, &ids), &expected);
        eprintln!("k-model → {quant}: max |Δ logit| {diff:e}");
        assert!(diff <= bound && diff > 0.0, "{quant}: {diff}");
    }
}

/// The Q4_K_M export's logits equal those of the source with every tensor quantized and
/// dequantized in memory by the same quantizers (q/k rows permuted around it as in the file):
/// writing, reading, naming and permuting lose nothing; the error is the quantizer's alone.
#[test]
fn k_quant_error_is_the_quantizer_only() {
    let dir = tempfile::tempdir().unwrap();
    let source = k_model(dir.path());
    let out = dir.path().join("k.q4_k_m.gguf");
    export(&source, &out, Quant::Q4KM);
    let ckpt = Checkpoint::open(&source).unwrap();
    let spec = ckpt.config().spec().unwrap();
    let mut tensors = ckpt.tensors(&Device::Cpu).unwrap();
    for (name, tensor) in tensors.iter_mut() {
        let gguf_name = distill_models::gguf::gguf_tensor_name(name).unwrap();
        let (dtype, _) = distill_models::gguf::tensor_type(
            Quant::Q4KM,
            &gguf_name,
            tensor.dims(),
            spec.num_layers,
            spec.tie_word_embeddings,
        );
        let heads = match name {
            n if n.contains(".q_proj.") => Some(spec.num_heads),
            n if n.contains(".k_proj.") => Some(spec.num_kv_heads),
            _ => None,
        };
        let mut t = tensor.clone();
        if let Some(h) = heads {
            t = distill_models::gguf::permute_rows(&t, h).unwrap();
        }
        t = distill_models::gguf::quantize(&t, dtype)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        if let Some(h) = heads {
            t = distill_models::gguf::unpermute_rows(&t, h).unwrap();
        }
        *tensor = t;
    }
    let model = Model::new(
        &spec,
        candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let ids = input_ids();
    let expected = model.forward(&ids, None).unwrap();
    assert_eq!(max_diff(&logits(&out, &ids), &expected), 0.0);
}

/// The metadata llama.cpp reads, and the tokenizer, template and special ids read back.
#[test]
fn metadata_and_tokenizer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let battery: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-gguf-tokenize.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = battery["tiny-llama.gguf"]["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    texts.extend(
        [
            "The 3 cats ate 12 fish.\n\n  Then 7 more!",
            "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n",
            "don't STOP, we're 100% sure — naïve café",
            "   leading and trailing   ",
        ]
        .map(str::to_string),
    );
    for (fixture, gguf, pre) in [
        ("tiny-llama", "tiny-llama.gguf", "smollm"),
        ("tiny-qwen2", "tiny-qwen2.gguf", "qwen2"),
        ("tiny-qwen3", "tiny-qwen3.gguf", "qwen2"),
    ] {
        let folder = hf_with_tokenizer(dir.path(), fixture, gguf);
        let out = dir.path().join(format!("{fixture}.gguf"));
        let summary = export(&folder, &out, Quant::F16);
        assert_eq!(summary.pre_tokenizer.as_deref(), Some(pre));
        assert_eq!(summary.name, fixture);

        let source = Checkpoint::open(&folder).unwrap();
        let written = Checkpoint::open(&out).unwrap();
        let (a, b) = (source.tokenizer().unwrap(), written.tokenizer().unwrap());
        for text in &texts {
            assert_eq!(
                a.encode(text, false).unwrap(),
                b.encode(text, false).unwrap(),
                "{fixture}: {text:?}"
            );
            assert_eq!(
                a.encode(text, true).unwrap(),
                b.encode(text, true).unwrap(),
                "{fixture}: {text:?}"
            );
        }
        assert_eq!(a.chat_template, b.chat_template);
        assert!(b.chat_template.as_deref().unwrap().contains("<|im_start|>"));
        assert_eq!(
            (&a.bos_token, &a.eos_token, &a.pad_token),
            (&b.bos_token, &b.eos_token, &b.pad_token)
        );
        assert_eq!(written.eos_token_ids(), source.eos_token_ids());
        assert_eq!(
            written.config().spec().unwrap(),
            Checkpoint::open(&fixtures().join(gguf))
                .unwrap()
                .config()
                .spec()
                .unwrap(),
            "{fixture}"
        );

        let file = GgufCheckpoint::open(&out).unwrap();
        let meta = |key: &str| file.metadata(key).map(|v| (meta_type(v), meta_json(v)));
        let arch = fixture.trim_start_matches("tiny-");
        assert_eq!(
            meta("general.architecture"),
            Some(("STRING", serde_json::json!(arch)))
        );
        assert_eq!(
            meta("general.file_type"),
            Some(("UINT32", serde_json::json!(1)))
        );
        assert_eq!(
            meta("general.quantization_version"),
            Some(("UINT32", serde_json::json!(2)))
        );
        assert_eq!(
            meta(&format!("{arch}.context_length")),
            Some((
                "UINT32",
                serde_json::json!(source.config().max_position_embeddings())
            ))
        );
        assert_eq!(
            meta(&format!("{arch}.embedding_length")),
            Some(("UINT32", serde_json::json!(64)))
        );
        assert_eq!(
            meta(&format!("{arch}.block_count")),
            Some(("UINT32", serde_json::json!(2)))
        );
        assert_eq!(
            meta(&format!("{arch}.attention.head_count_kv")),
            Some(("UINT32", serde_json::json!(2)))
        );
        assert_eq!(
            meta(&format!("{arch}.attention.layer_norm_rms_epsilon")),
            Some(("FLOAT32", serde_json::json!(f64::from(1e-6f32))))
        );
        assert_eq!(
            meta("tokenizer.ggml.model"),
            Some(("STRING", serde_json::json!("gpt2")))
        );
        assert_eq!(
            meta("tokenizer.ggml.add_bos_token"),
            Some(("BOOL", serde_json::json!(false)))
        );
        let key_length = meta(&format!("{arch}.attention.key_length"));
        match arch {
            "qwen3" => {
                assert_eq!(key_length, Some(("UINT32", serde_json::json!(32))));
                assert_eq!(
                    meta("qwen3.rope.scaling.type"),
                    Some(("STRING", serde_json::json!("yarn")))
                );
                assert_eq!(
                    meta("qwen3.rope.scaling.factor"),
                    Some(("FLOAT32", serde_json::json!(f64::from(4.0f32))))
                );
                assert_eq!(
                    meta("qwen3.rope.scaling.original_context_length"),
                    Some(("UINT32", serde_json::json!(32)))
                );
            }
            "llama" => {
                assert_eq!(key_length, None);
                assert_eq!(
                    meta("llama.rope.freq_base"),
                    Some(("FLOAT32", serde_json::json!(f64::from(500000.0f32))))
                );
                // Llama-3 scaling is the rope_freqs tensor, as llama.cpp's converter writes it.
                let info = &file.content().tensor_infos["rope_freqs.weight"];
                assert_eq!(info.shape.dims(), [8]);
                assert!(meta("llama.rope.scaling.type").is_none());
            }
            _ => assert_eq!(key_length, None),
        }
    }
}

/// A GGUF source keeps its `tokenizer.*` metadata exactly, and an export of an export is the
/// same file.
#[test]
fn gguf_sources_keep_their_tokenizer_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("tiny-llama.gguf");
    let once = dir.path().join("once.gguf");
    let twice = dir.path().join("twice.gguf");
    export(&source, &once, Quant::F32);
    export(&once, &twice, Quant::F32);
    let (a, b, c) = (
        GgufCheckpoint::open(&source).unwrap(),
        GgufCheckpoint::open(&once).unwrap(),
        GgufCheckpoint::open(&twice).unwrap(),
    );
    for (key, value) in &a.content().metadata {
        if key.starts_with("tokenizer.") {
            let value = (meta_type(value), meta_json(value));
            let written = b.metadata(key).map(|v| (meta_type(v), meta_json(v)));
            assert_eq!(written, Some(value), "{key}");
        }
    }
    let name = |f: &GgufCheckpoint| f.metadata("general.name").map(meta_json);
    assert_eq!(name(&b), name(&a));
    assert_eq!(
        std::fs::read(&once).unwrap(),
        std::fs::read(&twice).unwrap()
    );
    // rope_freqs, token_embd, 9 per layer, output_norm; tied, so no output.
    assert_eq!(c.tensor_types(), counts(&[("f32", 21)]));
}

/// Exports that llama.cpp would run differently are refused, each with its reason.
#[test]
fn refusals_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        quant: Quant::Q8_0,
        name: None,
    };
    let out = dir.path().join("out.gguf");
    let refuse = |folder: &Path| {
        let ckpt = Checkpoint::open(folder).unwrap();
        export_gguf(&ckpt, &out, &options).unwrap_err().to_string()
    };
    let bare = fixtures().join("tiny-qwen2");
    assert_eq!(
        refuse(&bare),
        format!(
            "Cannot export `{}` as GGUF: it has no tokenizer (tokenizer.json); llama.cpp needs one",
            bare.display()
        )
    );

    // distill's from-scratch tokenizer: a digit with the space before it, then GPT-2 words.
    let scratch = hf_with_tokenizer(dir.path(), "tiny-llama", "tiny-llama.gguf");
    let path = scratch.join("tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": " ?\\p{N}"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    ]});
    std::fs::write(&path, json.to_string()).unwrap();
    assert_eq!(
        refuse(&scratch),
        format!(
            "Cannot export `{}` as GGUF: its pre-tokenizer splits text with [` ?\\p{{N}}`, \
             `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{{L}}+| ?\\p{{N}}+| ?[^\\s\\p{{L}}\\p{{N}}]+|\\s+(?!\\S)`] \
             (ignore_merges false), which none of llama.cpp's pre-tokenizers does exactly (tokens \
             would differ in llama.cpp); known: qwen2, llama-bpe, smaug-bpe, smollm, gpt-2, \
             deepseek-v3",
            scratch.display()
        )
    );
    assert!(!out.exists());

    // A YaRN setting llama.cpp's YaRN does not have.
    let yarn = hf_with_tokenizer(dir.path(), "tiny-qwen3", "tiny-qwen3.gguf");
    let path = yarn.join("config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["rope_scaling"]["beta_fast"] = 16.into();
    std::fs::write(&path, json.to_string()).unwrap();
    assert_eq!(
        refuse(&yarn),
        format!(
            "Cannot export `{}` as GGUF: its YaRN `rope_scaling` sets `beta_fast` 16; the export \
             writes only the default 32",
            yarn.display()
        )
    );
}

/// The Modelfile beside an export of a ChatML model.
#[test]
fn modelfile_for_a_chatml_export() {
    let dir = tempfile::tempdir().unwrap();
    let folder = hf_with_tokenizer(dir.path(), "tiny-qwen2", "tiny-qwen2.gguf");
    let out = dir.path().join("tiny.gguf");
    export(&folder, &out, Quant::Q8_0);
    let modelfile = modelfile_for(&out, "./tiny.gguf").unwrap();
    assert_eq!(modelfile.layout, Some("ChatML"));
    assert_eq!(
        modelfile.text,
        "# ollama Modelfile written by `distill export`; load it with\n\
         #   ollama create NAME -f THIS_FILE\n\
         FROM ./tiny.gguf\n\
         TEMPLATE \"\"\"{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}\
         {{ if eq .Role \"system\" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n\
         {{ else if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n\
         {{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}\
         {{ if not $last }}<|im_end|>\n{{ end }}{{ end }}\
         {{ if and $last (ne .Role \"assistant\") }}<|im_start|>assistant\n{{ end }}{{ end }}\"\"\"\n\
         PARAMETER stop \"<|im_end|>\"\n\
         PARAMETER temperature 0.6\n\
         PARAMETER top_p 0.95\n"
    );
}

// ------------------------------------------------------------------- the real model

/// Greedy ids, KV-cached.
fn greedy(model: &Model, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached(prompt, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let last = logits.get(logits.dim(0).unwrap() - 1).unwrap();
        let next = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        logits = model.forward_cached(&[next], &mut cache).unwrap();
    }
    out
}

/// SmolLM2-135M (Q4_1) requantized to Q8_0: distill generates the same greedy tokens from the
/// export as from the source (both run quantized, as llama.cpp runs them); and SmolLM2's
/// tokenizer, saved as a Hugging Face `tokenizer.json` and exported again, gives back exactly
/// the token list, token types, merges and special ids of the original GGUF.
#[test]
fn smollm2_q8_0_export_generates_the_same_tokens() {
    let source = smollm2_path();
    if !assets::present(&source) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2.q8_0.gguf");
    let summary = export(&source, &out, Quant::Q8_0);
    assert_eq!(summary.tensor_types, counts(&[("f32", 61), ("q8_0", 211)]));
    assert_eq!(summary.pre_tokenizer.as_deref(), Some("smollm"));

    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<u32> = reference["greedy"]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let run = |path: &Path| {
        let model = Checkpoint::open(path)
            .unwrap()
            .load_quantized_model(&Device::Cpu)
            .unwrap();
        greedy(&model, &prompt, 8)
    };
    let (a, b) = (run(&source), run(&out));
    assert_eq!(a, b);
    // "The capital of France is Paris.<|im_end|>" ends with the EOS id.
    assert!(a.contains(&2), "{a:?}");

    // The vocabulary writer on a real tokenizer: a tiny model with SmolLM2's vocabulary.
    let original = GgufCheckpoint::open(&source).unwrap();
    let tokenizer = original.tokenizer().unwrap();
    let mut common = Common::new(64, 64, 1, 2, 1);
    common.tie_word_embeddings = true;
    let config = Config::Llama(llama::Config {
        vocab_size: 49152,
        max_position_embeddings: 8192,
        attention_bias: false,
        mlp_bias: false,
        common,
        extra: Default::default(),
    });
    let tensors = config
        .spec()
        .unwrap()
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| (name, Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()))
        .collect();
    let generation = original.generation_config();
    let folder = dir.path().join("smollm2-vocab");
    save_hf_folder(
        &folder,
        &config,
        &generation,
        Some(&tokenizer),
        tensors,
        usize::MAX,
    )
    .unwrap();
    let vocab_out = dir.path().join("smollm2-vocab.gguf");
    export(&folder, &vocab_out, Quant::F16);
    let written = GgufCheckpoint::open(&vocab_out).unwrap();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        let (a, b) = (original.metadata(key), written.metadata(key));
        let same = match (a, b) {
            // llama.cpp's converter writes token types as i32; equal values are what counts.
            (Some(Meta::Array(x)), Some(Meta::Array(y))) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| meta_json(p) == meta_json(q))
            }
            (a, b) => a.map(meta_json) == b.map(meta_json),
        };
        assert!(
            same,
            "{key}: {:?} vs {:?}",
            a.map(meta_type),
            b.map(meta_type)
        );
    }
}

/// Not run by default: writes SmolLM2 exported as F16, Q8_0 and Q4_K_M into
/// `DISTILL_GGUF_EXPORT_DIR` with distill's greedy ids (8 chat prompts, up to 64 new tokens,
/// models run quantized) in `smollm2-greedy.json`, for `fixtures/gguf-export/llama_cpp_greedy.py`
/// to compare with llama.cpp's (see the fixtures README). The downloaded files users run as
/// teachers (SmolLM2 Q4_1 from `../shared/models`, and Qwen2.5-Coder-0.5B Q4_K_M where
/// `fetch-qwen2.5-coder-0.5b.sh` put it) get the same prompts and are listed by absolute path:
/// `DISTILL_GGUF_EXPORT_DIR=/tmp/gguf-export cargo test --release -p distill-models --test
/// gguf_export -- --ignored llama_cpp_inputs`.
#[test]
#[ignore]
fn llama_cpp_inputs() {
    let source = smollm2_path();
    let dir = PathBuf::from(
        std::env::var_os("DISTILL_GGUF_EXPORT_DIR").expect("set DISTILL_GGUF_EXPORT_DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "What is 12 times 7? Explain step by step.",
        "Give me three tips for learning to code.",
        "Translate 'good morning' into Spanish and German.",
        "Why is the sky blue?",
        "List the planets of the solar system in order.",
        "Summarize the plot of Romeo and Juliet in two sentences.",
    ];
    let mut files = serde_json::Map::new();
    let mut runs = Vec::new();
    for quant in [Quant::F16, Quant::Q8_0, Quant::Q4KM] {
        let out = dir.join(format!("smollm2.{quant}.gguf"));
        export(&source, &out, quant);
        runs.push(out);
    }
    runs.push(source.canonicalize().unwrap());
    let qwen = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/distill-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    if qwen.exists() {
        runs.push(qwen);
    } else {
        eprintln!(
            "llama_cpp_inputs: {} is missing: Qwen2.5-Coder left out",
            qwen.display()
        );
    }
    for out in runs {
        let ckpt = Checkpoint::open(&out).unwrap();
        let tokenizer = ckpt.tokenizer().unwrap();
        let template = tokenizer.chat_template().unwrap().unwrap();
        let model = ckpt.load_quantized_model(&Device::Cpu).unwrap();
        let eos = ckpt.eos_token_ids();
        let mut cases = Vec::new();
        for question in questions {
            let text = template
                .render(&[distill_models::chat::Message::user(question)], true)
                .unwrap();
            let prompt = tokenizer.encode(&text, false).unwrap();
            let mut ids = greedy(&model, &prompt, 64);
            if let Some(end) = ids.iter().position(|id| eos.contains(id)) {
                ids.truncate(end + 1);
            }
            let completion = tokenizer.decode(&ids, false).unwrap();
            cases.push(serde_json::json!({
                "text": text, "prompt_ids": prompt, "distill_ids": ids, "distill_text": completion,
            }));
        }
        // Exports by file name (they sit in the folder), downloads by their absolute path.
        let key = match out.strip_prefix(&dir) {
            Ok(name) => name.to_string_lossy().into_owned(),
            Err(_) => out.to_string_lossy().into_owned(),
        };
        files.insert(key, cases.into());
    }
    std::fs::write(
        dir.join("smollm2-greedy.json"),
        serde_json::to_string_pretty(&Value::Object(files)).unwrap(),
    )
    .unwrap();
}
