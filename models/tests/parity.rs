//! Parity with the reference implementation: logits of the tiny fixture checkpoints made by
//! `fixtures/make_fixtures.py` and `fixtures/make_qwen3_fixtures.py` (transformers, float32) must
//! match within 1e-4 — full sequence, packed documents, and step-by-step cached decoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use distill_models::{hf, Config, Model};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> Model {
    let dir = fixtures().join(name);
    let config = Config::load(&dir.join("config.json")).unwrap();
    hf::load_model(&dir, &config.spec().unwrap(), DType::F32, &Device::Cpu).unwrap()
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    distill_models::ops::max_abs_diff(a, b).unwrap()
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn check_full_and_decode(model: &Model, reference: &std::collections::HashMap<String, Tensor>) {
    let input = ids(&reference["input_ids"]);
    let logits = model.forward(&input, None).unwrap();
    let d = max_diff(&logits, &reference["logits"]);
    assert!(d < TOL, "full-sequence logits differ by {d}");

    let row: Vec<u32> = input.get(0).unwrap().to_vec1().unwrap();
    let mut cache = model.new_cache();
    let mut steps = vec![model.forward_cached(&row[..4], &mut cache).unwrap()];
    for &t in &row[4..] {
        steps.push(model.forward_cached(&[t], &mut cache).unwrap());
    }
    let d = max_diff(
        &Tensor::cat(&steps, 0).unwrap(),
        &reference["decode_logits"],
    );
    assert!(d < TOL, "cached decode logits differ by {d}");
}

fn check_packed(model: &Model, reference: &std::collections::HashMap<String, Tensor>) {
    let logits = model
        .forward(
            &ids(&reference["packed_input_ids"]),
            Some(&ids(&reference["packed_position_ids"])),
        )
        .unwrap();
    let d = max_diff(&logits, &reference["packed_logits"]);
    assert!(d < TOL, "packed logits differ by {d}");
}

#[test]
fn qwen2_matches_transformers() {
    let model = load("tiny-qwen2");
    let r = reference("tiny-qwen2/reference.safetensors");
    check_full_and_decode(&model, &r);
    check_packed(&model, &r);
}

#[test]
fn sharded_qwen2_matches_transformers() {
    let model = load("tiny-qwen2-sharded");
    check_full_and_decode(&model, &reference("tiny-qwen2/reference.safetensors"));
}

#[test]
fn llama3_scaled_rope_tied_matches_transformers() {
    let model = load("tiny-llama");
    let r = reference("tiny-llama/reference.safetensors");
    check_full_and_decode(&model, &r);
    check_packed(&model, &r);
}

#[test]
fn bf16_weights_load_and_match() {
    let model = load("tiny-llama-bf16");
    let r = reference("tiny-llama-bf16/reference.safetensors");
    check_full_and_decode(&model, &r);
    check_packed(&model, &r);
}

/// Saving and reloading is exact, whether the weights end up in one file or in shards.
#[test]
fn save_and_reload_is_exact() {
    let src = fixtures().join("tiny-qwen2");
    let config = Config::load(&src.join("config.json")).unwrap();
    let spec = config.spec().unwrap();
    let tensors = hf::load_tensors(&src, &spec, DType::F32, &Device::Cpu).unwrap();
    let ordered: Vec<(String, Tensor)> = spec
        .tensor_shapes()
        .into_iter()
        .map(|(n, _)| (n.clone(), tensors[&n].clone()))
        .collect();
    let input = ids(&reference("tiny-qwen2/reference.safetensors")["input_ids"]);
    let want = load("tiny-qwen2").forward(&input, None).unwrap();
    for max_shard in [usize::MAX, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        config.save(&dir.path().join("config.json")).unwrap();
        hf::save_tensors(dir.path(), &ordered, max_shard).unwrap();
        let files = hf::weight_files(dir.path()).unwrap();
        assert_eq!(files.len() > 1, max_shard == 100_000, "{files:?}");
        let model = hf::load_model(dir.path(), &spec, DType::F32, &Device::Cpu).unwrap();
        let got = model.forward(&input, None).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        // The saved config parses back to the same config.
        assert_eq!(
            Config::load(&dir.path().join("config.json")).unwrap(),
            config
        );
    }
}

#[test]
fn bad_checkpoints_are_named() {
    let config = Config::load(&fixtures().join("tiny-qwen2/config.json")).unwrap();
    let spec = config.spec().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No weights at all.
    let err = hf::load_model(dir.path(), &spec, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no `model.safetensors` or `model.safetensors.index.json`"),
        "{err}"
    );
    // Truncated safetensors.
    let bytes = std::fs::read(fixtures().join("tiny-qwen2/model.safetensors")).unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = hf::load_model(dir.path(), &spec, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.starts_with("Cannot parse"),
        "{err}"
    );
    // Shape mismatch between config and weights.
    std::fs::write(&path, &bytes).unwrap();
    let mut wrong = spec.clone();
    wrong.intermediate_size = 96;
    let err = hf::load_model(dir.path(), &wrong, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`model.layers.0.mlp.gate_proj.weight` has shape [128, 64] but the config implies [96, 64]"), "{err}");
    // Unsupported architecture.
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"model_type": "gpt_neox", "hidden_size": 8}"#).unwrap();
    let err = Config::load(&cfg).unwrap_err().to_string();
    assert_eq!(
        err,
        "Unsupported architecture `gpt_neox` (supported: qwen2, qwen3, llama)"
    );
}

/// transformers v5 writes `rope_parameters` (theta and scaling together) instead of
/// `rope_theta` + `rope_scaling`; both spellings give the same model.
#[test]
fn rope_parameters_spelling_is_understood() {
    let src = fixtures().join("tiny-llama");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let map = cfg.as_object_mut().unwrap();
    let mut params = map.remove("rope_scaling").unwrap();
    params["rope_theta"] = map.remove("rope_theta").unwrap();
    map.insert("rope_parameters".into(), params);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let v5 = Config::load(&dir.path().join("config.json"))
        .unwrap()
        .spec()
        .unwrap();
    let v4 = Config::load(&src.join("config.json"))
        .unwrap()
        .spec()
        .unwrap();
    assert_eq!(v5.rope, v4.rope);
}

/// The context a checkpoint serves is vLLM's `max_model_len` (its `_get_and_verify_max_len`):
/// `max_position_embeddings`, scaled by the RoPE factor for linear and YaRN scalings (YaRN from
/// `original_max_position_embeddings`, both spellings), unscaled for llama3.
#[test]
fn context_len_is_vllms_max_model_len() {
    let src = fixtures().join("tiny-qwen2").join("config.json");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let context = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut cfg = base.clone();
        edit(cfg.as_object_mut().unwrap());
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        Config::load(&path).unwrap().context_len()
    };
    assert_eq!(
        context(&|_| {}),
        2048,
        "no scaling: max_position_embeddings"
    );
    let linear = serde_json::json!({"type": "linear", "factor": 2.0});
    assert_eq!(
        context(&|m| _ = m.insert("rope_scaling".into(), linear.clone())),
        4096
    );
    // Qwen2.5's README: add this block to config.json for 4× the 32,768 positions.
    let yarn = serde_json::json!({
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512
    });
    assert_eq!(
        context(&|m| _ = m.insert("rope_scaling".into(), yarn.clone())),
        2048
    );
    let v5 = serde_json::json!({
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
        "rope_theta": 1e6
    });
    assert_eq!(
        context(&|m| {
            m.remove("rope_theta");
            m.insert("rope_parameters".into(), v5.clone());
        }),
        8192,
        "transformers 5's rope_parameters"
    );
    let llama = fixtures().join("tiny-llama").join("config.json");
    assert_eq!(
        Config::load(&llama).unwrap().context_len(),
        2048,
        "llama3: as stored"
    );
}

/// GGUF files written as llama.cpp's converter does (llama q/k rows permuted, mixed F32/F16/Q8_0
/// tensors) load to the reference logits of the weights as stored.
#[test]
fn gguf_checkpoints_match_transformers() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let ckpt =
            distill_models::Checkpoint::open(&fixtures().join(format!("{name}.gguf"))).unwrap();
        let model = ckpt.load_model(&Device::Cpu).unwrap();
        check_full_and_decode(
            &model,
            &reference(&format!("{name}-gguf-reference.safetensors")),
        );
    }
}

/// Quantized inference (weights kept as stored, q/k rows un-permuted on the quantized bytes)
/// tracks the dequantized model: exactly where weights are float, within the activation
/// quantization `QMatMul` applies to Q8_0 blocks elsewhere.
#[test]
fn quantized_gguf_tracks_dequantized() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let ckpt =
            distill_models::Checkpoint::open(&fixtures().join(format!("{name}.gguf"))).unwrap();
        let r = reference(&format!("{name}-gguf-reference.safetensors"));
        let input = ids(&r["input_ids"]);
        let quantized = ckpt.load_quantized_model(&Device::Cpu).unwrap();
        let dense = ckpt.load_model(&Device::Cpu).unwrap();
        let mut cache = quantized.new_cache();
        let row: Vec<u32> = input.get(0).unwrap().to_vec1().unwrap();
        let q = quantized.forward_cached(&row, &mut cache).unwrap();
        let mut cache = dense.new_cache();
        let d = dense.forward_cached(&row, &mut cache).unwrap();
        let diff = max_diff(&q, &d);
        let scale: f32 = d.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        println!("{name}: quantized vs dequantized max diff {diff} (logit scale {scale})");
        if name == "tiny-qwen2" {
            assert!(diff < TOL, "all-F32 file must match exactly, got {diff}");
        } else {
            assert!(diff < 0.02 * scale, "{diff} vs scale {scale}");
        }
    }
}

/// Qwen3: per-head q/k RMSNorm before the rotary embedding, an explicit `head_dim` (32) that
/// is not hidden / heads (16), no q/k/v biases, and yarn rope scaling (factor 4 over an
/// original context of 32, so the 16-token inputs see extrapolated, blended and interpolated
/// frequencies and the 1.1386 attention factor on cos/sin).
#[test]
fn qwen3_yarn_matches_transformers() {
    let model = load("tiny-qwen3");
    let spec = model.spec();
    assert_eq!(
        (spec.head_dim, spec.qk_norm, spec.qkv_bias),
        (32, true, false)
    );
    let r = reference("tiny-qwen3/reference.safetensors");
    check_full_and_decode(&model, &r);
    check_packed(&model, &r);
}

/// The training forward (weights as variables: fused CPU attention, which rotates internally,
/// after the differentiable q/k norm) gives the reference logits too, packed rows included,
/// and the q/k norms receive gradients.
#[test]
fn qwen3_training_forward_matches_transformers() {
    let dir = fixtures().join("tiny-qwen3");
    let spec = Config::load(&dir.join("config.json"))
        .unwrap()
        .spec()
        .unwrap();
    let vars: HashMap<String, Var> = hf::load_tensors(&dir, &spec, DType::F32, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
        .collect();
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let model = Model::new(
        &spec,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let r = reference("tiny-qwen3/reference.safetensors");
    let logits = model.forward(&ids(&r["input_ids"]), None).unwrap();
    assert!(
        logits.track_op(),
        "the training forward must record gradients"
    );
    let d = max_diff(&logits, &r["logits"]);
    assert!(d < TOL, "training-forward logits differ by {d}");
    check_packed(&model, &r);

    let grads = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for name in [
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.1.self_attn.k_norm.weight",
    ] {
        let g = grads.get(vars[name].as_tensor()).unwrap();
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "no gradient reaches {name}");
    }
}

/// The GGUF of tiny-qwen3 (arch `qwen3`, `blk.N.attn_q_norm` / `attn_k_norm`, yarn metadata),
/// dequantized and kept as stored, gives tiny-qwen3's reference logits.
#[test]
fn qwen3_gguf_matches_transformers() {
    let ckpt = distill_models::Checkpoint::open(&fixtures().join("tiny-qwen3.gguf")).unwrap();
    let Config::Qwen3(config) = ckpt.config() else {
        panic!("qwen3 expected");
    };
    assert_eq!(config.common.head_dim, Some(32));
    let folder = Config::load(&fixtures().join("tiny-qwen3/config.json")).unwrap();
    assert_eq!(ckpt.config().spec().unwrap(), folder.spec().unwrap());
    let r = reference("tiny-qwen3/reference.safetensors");
    check_full_and_decode(&ckpt.load_model(&Device::Cpu).unwrap(), &r);
    check_full_and_decode(&ckpt.load_quantized_model(&Device::Cpu).unwrap(), &r);
}

/// config.json round trip: `model_type` qwen3, `Qwen3ForCausalLM`, head_dim and the yarn
/// scaling survive; the q/k norm weights are part of the model's tensors and save/reload
/// exactly.
#[test]
fn qwen3_folder_round_trip() {
    let src = fixtures().join("tiny-qwen3");
    let config = Config::load(&src.join("config.json")).unwrap();
    assert_eq!(config.architecture(), distill_models::Architecture::Qwen3);
    let json = config.to_json();
    assert_eq!(json["model_type"], "qwen3");
    assert_eq!(
        json["architectures"],
        serde_json::json!(["Qwen3ForCausalLM"])
    );
    assert_eq!(json["head_dim"], 32);
    assert_eq!(json["rope_scaling"]["rope_type"], "yarn");
    let spec = config.spec().unwrap();
    let shapes: HashMap<String, Vec<usize>> = spec.tensor_shapes().into_iter().collect();
    assert_eq!(shapes["model.layers.1.self_attn.q_norm.weight"], vec![32]);
    assert_eq!(
        shapes["model.layers.1.self_attn.q_proj.weight"],
        vec![128, 64]
    );
    assert!(!shapes.contains_key("model.layers.0.self_attn.q_proj.bias"));
    let tensors = hf::load_tensors(&src, &spec, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), shapes.len());
    let ordered: Vec<(String, Tensor)> = spec
        .tensor_shapes()
        .into_iter()
        .map(|(n, _)| (n.clone(), tensors[&n].clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    config.save(&dir.path().join("config.json")).unwrap();
    hf::save_tensors(dir.path(), &ordered, usize::MAX).unwrap();
    assert_eq!(
        Config::load(&dir.path().join("config.json")).unwrap(),
        config
    );
    let input = ids(&reference("tiny-qwen3/reference.safetensors")["input_ids"]);
    let want = load("tiny-qwen3").forward(&input, None).unwrap();
    let model = hf::load_model(dir.path(), &spec, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&model.forward(&input, None).unwrap(), &want), 0.0);
}

/// YaRN inverse frequencies and attention factor equal transformers' `_compute_yarn_parameters`
/// (dumped by `make_qwen3_fixtures.py`): default and explicit betas, DeepSeek's
/// mscale/mscale_all_dim, a given attention_factor, truncate false, and the original context
/// taken from `max_position_embeddings`.
#[test]
fn yarn_parameters_match_transformers() {
    let text = std::fs::read_to_string(fixtures().join("rope-yarn.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rope = distill_models::transformer::RopeSpec::from_config(
            case["rope_theta"].as_f64().unwrap(),
            Some(&case["rope_scaling"]),
            &serde_json::Map::new(),
            case["head_dim"].as_u64().unwrap() as usize,
            case["max_position_embeddings"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let want: Vec<f32> = case["inv_freq"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(rope.inv_freq.len(), want.len(), "{name}");
        for (i, (got, want)) in rope.inv_freq.iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() <= 2e-7 * want.abs(),
                "{name}: inv_freq[{i}] {got} vs transformers {want}"
            );
        }
        let factor = case["attention_factor"].as_f64().unwrap() as f32;
        assert!(
            (rope.attention_factor - factor).abs() < 1e-6,
            "{name}: attention factor {} vs transformers {factor}",
            rope.attention_factor
        );
    }
}

/// Real configs as the hub ships them: Llama-3.2-1B (tied embeddings, llama3 rope scaling,
/// head_dim 64) and a Qwen3 config without `head_dim` (transformers' default 128, not
/// hidden / heads).
#[test]
fn llama32_and_qwen3_hub_configs_parse() {
    let llama32 = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#;
    let config = Config::from_json_str(llama32, Path::new("config.json")).unwrap();
    let spec = config.spec().unwrap();
    assert!(spec.tie_word_embeddings && !spec.qk_norm);
    assert_eq!(spec.num_parameters(), 1_235_814_400); // transformers' count for Llama-3.2-1B
                                                      // The longest wavelengths are divided by the factor, the shortest kept.
    let base = distill_models::transformer::RopeSpec::from_hf(500000.0, None, 64).unwrap();
    assert_eq!(spec.rope.inv_freq[0], base.inv_freq[0]);
    assert_eq!(spec.rope.inv_freq[31], base.inv_freq[31] / 32.0);
    assert_eq!(spec.rope.attention_factor, 1.0);

    let qwen3 = r#"{"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "rope_theta": 1000000, "tie_word_embeddings": true, "vocab_size": 151936}"#;
    let spec = Config::from_json_str(qwen3, Path::new("config.json"))
        .unwrap()
        .spec()
        .unwrap();
    assert_eq!((spec.head_dim, spec.qk_norm), (128, true));
    // Qwen3-0.6B's parameter count (its config gives head_dim 128 explicitly).
    assert_eq!(spec.num_parameters(), 596_049_920);
    let sliding = qwen3.replace("\"qwen3\",", "\"qwen3\", \"use_sliding_window\": true,");
    let err = Config::from_json_str(&sliding, Path::new("config.json")).unwrap_err();
    assert!(err.to_string().contains("use_sliding_window"), "{err}");
}
