//! Parity with the reference implementation: logits of the tiny fixture checkpoints made by
//! `fixtures/make_fixtures.py` (transformers, float32) must match within 1e-4 — full sequence,
//! packed documents, and step-by-step cached decoding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
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
        "Unsupported architecture `gpt_neox` (supported: qwen2, llama)"
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
