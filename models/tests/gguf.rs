//! GGUF checkpoints: the real SmolLM2-135M (config, tensor types, names, shapes, parameter
//! count), the tiny fixtures against their Hugging Face weights (llama q/k un-permuted, F32
//! exact, F16/Q8_0 within quantization error), every supported quant type through a
//! candle-written file (dequantized, and run by the batched kernels), and bad input (missing, truncated, not GGUF, unknown architecture or
//! type, shape mismatch, missing tensor) reported with the file named.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use distill_models::gguf::GgufCheckpoint;
use distill_models::{Config, Error, TokenIds};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn smollm2_config_and_metadata() {
    let checkpoint = GgufCheckpoint::open(&smollm2_path()).unwrap();
    assert_eq!(checkpoint.path(), smollm2_path());
    assert_eq!(checkpoint.architecture_name(), "llama");
    let Config::Llama(c) = checkpoint.config().unwrap() else {
        panic!("SmolLM2 is a llama model");
    };
    assert_eq!(c.common.num_hidden_layers, 30);
    assert_eq!(c.common.hidden_size, 576);
    assert_eq!(c.common.num_attention_heads, 9);
    assert_eq!(c.common.num_key_value_heads, Some(3));
    assert_eq!(c.common.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.common.rope_theta, 100_000.0);
    assert_eq!(c.common.rms_norm_eps, 1e-5);
    assert_eq!(c.max_position_embeddings, 8192);
    assert!(c.common.tie_word_embeddings);
    assert_eq!(c.common.rope_scaling, None);
    assert_eq!(c.common.head_dim, None);
    assert!(!c.attention_bias && !c.mlp_bias);
    assert_eq!(c.common.bos_token_id, Some(1));
    assert_eq!(c.common.eos_token_id, Some(TokenIds::One(2)));

    let expected: BTreeMap<String, usize> = [("f32", 61), ("q4_1", 210), ("q8_0", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(checkpoint.tensor_types(), expected);

    let generation = checkpoint.generation_config();
    assert_eq!(generation.bos_token_id, Some(1));
    assert_eq!(generation.eos_token_id, Some(TokenIds::One(2)));
    assert_eq!(generation.pad_token_id, Some(2));

    let template = checkpoint.tokenizer().unwrap().chat_template.unwrap();
    assert!(template.starts_with("{% for message in messages %}"));
    assert!(template.contains("<|im_start|>"));
}

#[test]
fn smollm2_tensors_have_hf_names_and_shapes() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let checkpoint = GgufCheckpoint::open(&smollm2_path()).unwrap();
    let tensors = checkpoint.tensors(&Device::Cpu).unwrap();
    // 30 layers × 9 tensors + embedding + final norm; tied, so no lm_head.
    assert_eq!(tensors.len(), 272);
    assert!(!tensors.contains_key("lm_head.weight"));
    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    expected.insert("model.embed_tokens.weight".into(), vec![49152, 576]);
    expected.insert("model.norm.weight".into(), vec![576]);
    for l in 0..30 {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![576]),
            ("post_attention_layernorm.weight", vec![576]),
            ("self_attn.q_proj.weight", vec![576, 576]),
            ("self_attn.k_proj.weight", vec![192, 576]),
            ("self_attn.v_proj.weight", vec![192, 576]),
            ("self_attn.o_proj.weight", vec![576, 576]),
            ("mlp.gate_proj.weight", vec![1536, 576]),
            ("mlp.up_proj.weight", vec![1536, 576]),
            ("mlp.down_proj.weight", vec![576, 1536]),
        ] {
            expected.insert(format!("{p}.{name}"), shape);
        }
    }
    let actual: HashMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    assert_eq!(actual, expected);
    for (name, t) in &tensors {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
    }
    let parameters: usize = tensors.values().map(|t| t.elem_count()).sum();
    assert_eq!(parameters, 134_515_008);
    assert_eq!(
        parameters as u64,
        reference["parameter_count"].as_u64().unwrap()
    );
    // Weights are real numbers, not garbage: finite, and norms around 1.
    let norm = tensors["model.norm.weight"].to_vec1::<f32>().unwrap();
    assert!(norm.iter().all(|v| v.is_finite()));
    let embed_mean_abs = tensors["model.embed_tokens.weight"]
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        embed_mean_abs > 1e-3 && embed_mean_abs < 1.0,
        "{embed_mean_abs}"
    );
}

/// Largest |a - b| and largest |b| over two same-shaped tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    (diff, scale)
}

/// The GGUF tensors, dequantized and un-permuted, equal the Hugging Face originals: exactly for
/// F32, within the type's rounding for F16 and Q8_0.
fn compare_with_hf(gguf: &str, hf_dir: &str) {
    let checkpoint = GgufCheckpoint::open(&fixtures().join(gguf)).unwrap();
    let tensors = checkpoint.tensors(&Device::Cpu).unwrap();
    let hf_config = Config::load(&fixtures().join(hf_dir).join("config.json")).unwrap();
    let config = checkpoint.config().unwrap();
    assert_eq!(config.spec().unwrap(), hf_config.spec().unwrap(), "{gguf}");
    let mut hf = candle_core::safetensors::load(
        fixtures().join(hf_dir).join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    if hf_config.spec().unwrap().tie_word_embeddings {
        hf.remove("lm_head.weight");
    }
    let mut hf_names: Vec<&String> = hf.keys().collect();
    let mut names: Vec<&String> = tensors.keys().collect();
    hf_names.sort();
    names.sort();
    assert_eq!(names, hf_names, "{gguf}");
    let types = &checkpoint.content().tensor_infos;
    let mut seen = BTreeMap::new();
    for (name, original) in &hf {
        let gguf_name = distill_models::gguf::gguf_tensor_name(name).unwrap();
        let dtype = types[&gguf_name].ggml_dtype;
        *seen.entry(format!("{dtype:?}")).or_insert(0) += 1;
        let original = original.to_dtype(candle_core::DType::F32).unwrap();
        let (diff, scale) = max_diff(&tensors[name], &original);
        match dtype {
            GgmlDType::F32 => assert_eq!(diff, 0.0, "{name}"),
            // f16 keeps 11 significant bits.
            GgmlDType::F16 => assert!(diff <= scale / 1024.0, "{name}: {diff} vs {scale}"),
            // Q8_0: per 32-block scale max/127, rounding error at most half a step (+ f16 scale).
            GgmlDType::Q8_0 => assert!(diff <= scale / 127.0 * 0.55, "{name}: {diff} vs {scale}"),
            other => panic!("unexpected type {other:?} in {gguf}"),
        }
        if dtype != GgmlDType::F32 {
            assert!(diff > 0.0, "{name} should carry rounding error");
        }
    }
    if gguf == "tiny-llama.gguf" {
        assert_eq!(seen.get("F16"), Some(&3), "{seen:?}");
        assert_eq!(seen.get("Q8_0"), Some(&3), "{seen:?}");
    }
}

#[test]
fn tiny_llama_matches_hf_weights() {
    compare_with_hf("tiny-llama.gguf", "tiny-llama");
    // rope_scaling was solved back from rope_freqs.weight.
    let checkpoint = GgufCheckpoint::open(&fixtures().join("tiny-llama.gguf")).unwrap();
    let Config::Llama(c) = checkpoint.config().unwrap() else {
        panic!("llama expected")
    };
    assert_eq!(
        c.common.rope_scaling,
        Some(serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64
        }))
    );
    assert!(c.common.tie_word_embeddings);
    assert_eq!(c.common.rms_norm_eps, 1e-6);
    let types = checkpoint.tensor_types();
    assert_eq!(types.get("f16"), Some(&3));
    assert_eq!(types.get("q8_0"), Some(&3));
}

#[test]
fn tiny_qwen2_matches_hf_weights() {
    compare_with_hf("tiny-qwen2.gguf", "tiny-qwen2");
    let checkpoint = GgufCheckpoint::open(&fixtures().join("tiny-qwen2.gguf")).unwrap();
    let Config::Qwen2(c) = checkpoint.config().unwrap() else {
        panic!("qwen2 expected")
    };
    assert!(!c.common.tie_word_embeddings);
    assert_eq!(c.common.rope_theta, 10_000.0);
    assert_eq!(c.common.rope_scaling, None);
    let tensors = checkpoint.tensors(&Device::Cpu).unwrap();
    assert!(tensors.contains_key("lm_head.weight"));
    assert!(tensors.contains_key("model.layers.1.self_attn.k_proj.bias"));
}

// ---------------------------------------------------------------- files written by candle

/// Deterministic values in [-scale, scale] with an irregular pattern.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

/// llama.cpp's converter permutation of q/k rows (what `tensors()` must undo).
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

const HIDDEN: usize = 256;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 128;
const FFN: usize = 512;
const VOCAB: usize = 64;

fn llama_metadata(arch: &str, ffn: usize) -> Vec<(String, gguf_file::Value)> {
    use gguf_file::Value as V;
    vec![
        ("general.architecture".into(), V::String(arch.into())),
        (format!("{arch}.block_count"), V::U32(1)),
        (format!("{arch}.context_length"), V::U32(256)),
        (format!("{arch}.embedding_length"), V::U32(HIDDEN as u32)),
        (format!("{arch}.feed_forward_length"), V::U32(ffn as u32)),
        (format!("{arch}.attention.head_count"), V::U32(HEADS as u32)),
        (
            format!("{arch}.attention.head_count_kv"),
            V::U32(KV_HEADS as u32),
        ),
        (format!("{arch}.rope.freq_base"), V::F32(10_000.0)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            V::F32(1e-5),
        ),
        (format!("{arch}.vocab_size"), V::U32(VOCAB as u32)),
    ]
}

/// The Hugging Face weights of a one-layer llama with K-quant-friendly sizes.
fn hf_weights() -> Vec<(String, Tensor)> {
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![VOCAB, HIDDEN]),
        ("model.norm.weight", vec![HIDDEN]),
        ("model.layers.0.input_layernorm.weight", vec![HIDDEN]),
        (
            "model.layers.0.post_attention_layernorm.weight",
            vec![HIDDEN],
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![HEADS * HEAD_DIM, HIDDEN],
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            vec![HIDDEN, HEADS * HEAD_DIM],
        ),
        ("model.layers.0.mlp.gate_proj.weight", vec![FFN, HIDDEN]),
        ("model.layers.0.mlp.up_proj.weight", vec![FFN, HIDDEN]),
        ("model.layers.0.mlp.down_proj.weight", vec![HIDDEN, FFN]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let scale = 0.05 * (i + 1) as f32;
            let t = Tensor::from_vec(values(n, i as u64, scale), shape, &Device::Cpu).unwrap();
            (name.to_string(), t)
        })
        .collect()
}

/// Writes a GGUF of `weights` (2-D ones stored as `dtype`, q/k permuted as llama.cpp does).
fn write_llama_gguf(
    path: &Path,
    metadata: &[(String, gguf_file::Value)],
    weights: &[(String, Tensor)],
    dtype: GgmlDType,
) {
    let qtensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(name, t)| {
            let stored = if name.contains("q_proj") {
                permute(t, HEADS)
            } else if name.contains("k_proj") {
                permute(t, KV_HEADS)
            } else {
                t.clone()
            };
            let dtype = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
            let q = QTensor::quantize(&stored, dtype).unwrap();
            let gguf_name = distill_models::gguf::gguf_tensor_name(name).unwrap();
            (gguf_name, q)
        })
        .collect();
    let meta: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta, &tensors).unwrap();
}

#[test]
fn every_quant_type_dequantizes_within_tolerance() {
    // (type, GGUF name, bound on max |error| and on mean |error|, both relative to max |w|).
    // The bounds follow each format's step size (uniform values, so errors reach it): f16 and
    // bf16 keep 11 and 8 significant bits; Q8_0 rounds to max/127 steps; Q4_0 to max/8 steps
    // (and clamps one end at 7 steps); Q4_1 to range/15; the K-quants to their sub-block
    // scales, themselves quantized.
    let cases = [
        (GgmlDType::F16, "f16", 1.0 / 1024.0, 2e-4),
        (GgmlDType::BF16, "bf16", 1.0 / 128.0, 1.5e-3),
        (GgmlDType::Q8_0, "q8_0", 0.005, 0.003),
        (GgmlDType::Q6K, "q6_k", 0.04, 0.01),
        (GgmlDType::Q5K, "q5_k", 0.07, 0.02),
        (GgmlDType::Q4K, "q4_k", 0.13, 0.04),
        (GgmlDType::Q4_1, "q4_1", 0.075, 0.04),
        (GgmlDType::Q4_0, "q4_0", 0.14, 0.045),
    ];
    let weights = hf_weights();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, name, max_bound, mean_bound) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        write_llama_gguf(&path, &llama_metadata("llama", FFN), &weights, dtype);
        let checkpoint = GgufCheckpoint::open(&path).unwrap();
        let types = checkpoint.tensor_types();
        assert_eq!(types.get(name), Some(&8), "{name}: {types:?}");
        assert_eq!(types.get("f32"), Some(&3), "{name}: {types:?}");
        let tensors = checkpoint.tensors(&Device::Cpu).unwrap();
        assert_eq!(tensors.len(), weights.len());
        for (hf_name, original) in &weights {
            let got = &tensors[hf_name];
            assert_eq!(got.dims(), original.dims(), "{name} {hf_name}");
            let (max_err, scale) = max_diff(got, original);
            let mean_err = (got - original)
                .unwrap()
                .abs()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            if original.rank() == 1 {
                assert_eq!(max_err, 0.0, "{name} {hf_name}");
                continue;
            }
            assert!(
                max_err <= scale * max_bound,
                "{name} {hf_name}: max error {max_err} > {max_bound} × {scale}"
            );
            assert!(
                mean_err <= scale * mean_bound,
                "{name} {hf_name}: mean error {mean_err} > {mean_bound} × {scale}"
            );
            assert!(max_err > 0.0, "{name} {hf_name}: no rounding at all?");
        }
    }
}

/// A model on each type distill's batched kernels cover (`models/src/kernels/`) computes what
/// the same file dequantized to f32 computes, within the 8-bit activation quantization the
/// kernels apply (as llama.cpp does): prefill and cached decode, every position's logits.
/// Measured: 1.4–1.8% RMS of the logits for the 32-value types (Q8_0 activation blocks),
/// 2.1–2.7% for the K-quants (Q8_K's one scale per 256 values); a wrong offset or scale in a
/// kernel is off by the logits' own size.
#[test]
fn every_kernel_type_runs_a_model_as_its_dequantized_weights() {
    let weights = hf_weights();
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 5 + 3) % VOCAB as u32).collect();
    for dtype in distill_models::kernels::TYPES {
        let name = distill_models::gguf::dtype_name(dtype);
        let path = dir.path().join(format!("{name}.gguf"));
        write_llama_gguf(&path, &llama_metadata("llama", FFN), &weights, dtype);
        let ckpt = distill_models::Checkpoint::open(&path).unwrap();
        let quantized = ckpt.load_quantized_model(&Device::Cpu).unwrap();
        let dense = ckpt.load_model(&Device::Cpu).unwrap();
        let run = |model: &distill_models::Model| {
            let mut cache = model.new_cache();
            let prefill = model.forward_cached(&tokens[..8], &mut cache).unwrap();
            let decode: Vec<Tensor> = tokens[8..]
                .iter()
                .map(|&t| model.forward_cached(&[t], &mut cache).unwrap())
                .collect();
            (prefill, Tensor::cat(&decode, 0).unwrap())
        };
        let (qp, qd) = run(&quantized);
        let (dp, dd) = run(&dense);
        for (what, q, d) in [("prefill", &qp, &dp), ("decode", &qd, &dd)] {
            let rms = |t: &Tensor| -> f32 {
                t.sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt()
            };
            let (error, scale) = (rms(&(q - d).unwrap()), rms(d));
            println!("{name} {what}: RMS difference {error}, RMS logit {scale}");
            assert!(scale > 0.005, "{name} {what}: logits vanish ({scale})");
            assert!(
                error <= 0.03 * scale,
                "{name} {what}: the quantized kernels differ by {error} RMS (logits {scale} RMS)"
            );
        }
    }
}

#[test]
fn tensor_names_round_trip() {
    use distill_models::gguf::{gguf_tensor_name, hf_tensor_name};
    for (gguf, hf) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.12.attn_q.bias",
            "model.layers.12.self_attn.q_proj.bias",
        ),
        (
            "blk.0.attn_output.weight",
            "model.layers.0.self_attn.o_proj.weight",
        ),
        (
            "blk.0.ffn_down.weight",
            "model.layers.0.mlp.down_proj.weight",
        ),
        (
            "blk.3.ffn_norm.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ),
        (
            "blk.3.attn_norm.weight",
            "model.layers.3.input_layernorm.weight",
        ),
    ] {
        assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf));
        assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf));
    }
    assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
    assert_eq!(hf_tensor_name("blk.0.attn_q.scale"), None);
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    let (heads, head_dim, cols) = (3, 4, 2);
    let hf = Tensor::arange(0f32, (heads * head_dim * cols) as f32, &Device::Cpu)
        .unwrap()
        .reshape((heads * head_dim, cols))
        .unwrap();
    let permuted = permute(&hf, heads);
    // Row order within each head: even rotary halves first, then odd ones.
    assert_eq!(
        permuted.to_vec2::<f32>().unwrap()[..4],
        [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0], [6.0, 7.0]]
    );
    let back = distill_models::gguf::unpermute_rows(&permuted, heads).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    assert!(distill_models::gguf::unpermute_rows(&hf, 5).is_err());
}

/// llama.cpp's converter: the per-frequency divisors it stores as `rope_freqs.weight`.
fn llama3_divisors(theta: f64, head_dim: usize, factor: f64, lo: f64, hi: f64, l: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let w = 2.0 * std::f64::consts::PI / freq;
            if w < l / hi {
                1.0
            } else if w > l / lo {
                factor as f32
            } else {
                let s = (l / w - lo) / (hi - lo);
                (1.0 / ((1.0 - s) / factor + s)) as f32
            }
        })
        .collect()
}

/// The config of a candle-written llama GGUF carrying `rope_freqs.weight`.
fn config_with_rope_freqs(
    dir: &Path,
    theta: f32,
    divisors: Vec<f32>,
) -> distill_models::Result<Config> {
    let mut metadata = llama_metadata("llama", FFN);
    metadata.retain(|(k, _)| k != "llama.rope.freq_base");
    metadata.push(("llama.rope.freq_base".into(), gguf_file::Value::F32(theta)));
    let path = dir.join(format!("rope-{theta}-{}.gguf", divisors.len()));
    let n = divisors.len();
    let freqs = QTensor::quantize(
        &Tensor::from_vec(divisors, n, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    write_llama_gguf(&path, &metadata, &hf_weights(), GgmlDType::F32);
    // Re-write with the extra tensor appended.
    let checkpoint = GgufCheckpoint::open(&path).unwrap();
    let mut qtensors = Vec::new();
    for name in checkpoint.content().tensor_infos.keys() {
        let mut file = std::fs::File::open(&path).unwrap();
        qtensors.push((
            name.clone(),
            checkpoint
                .content()
                .tensor(&mut file, name, &Device::Cpu)
                .unwrap(),
        ));
    }
    qtensors.push(("rope_freqs.weight".to_string(), freqs));
    let meta: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &meta, &tensors).unwrap();
    let checkpoint = GgufCheckpoint::open(&path)?;
    // rope_freqs is not a weight.
    assert!(!checkpoint
        .tensors(&Device::Cpu)?
        .contains_key("rope_freqs.weight"));
    checkpoint.config()
}

#[test]
fn llama3_rope_scaling_is_solved_from_rope_freqs() {
    let dir = tempfile::tempdir().unwrap();
    let scaling = |config: Config| match config {
        Config::Llama(c) => c.common.rope_scaling,
        _ => panic!("llama expected"),
    };
    // Llama-3.1 values (head_dim 128: several frequencies in the smoothed band).
    let divisors = llama3_divisors(500_000.0, HEAD_DIM, 8.0, 1.0, 4.0, 8192.0);
    assert_eq!(
        scaling(config_with_rope_freqs(dir.path(), 500_000.0, divisors).unwrap()),
        Some(serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        }))
    );
    // Llama-3.2-1B/3B use factor 32; a different high_freq_factor is found too.
    let divisors = llama3_divisors(500_000.0, HEAD_DIM, 32.0, 1.0, 2.0, 8192.0);
    let got = scaling(config_with_rope_freqs(dir.path(), 500_000.0, divisors).unwrap()).unwrap();
    assert_eq!(got["factor"], 32.0);
    assert_eq!(got["high_freq_factor"], 2.0);
    assert_eq!(got["original_max_position_embeddings"], 8192);
    // All ones: no scaling.
    assert_eq!(
        scaling(config_with_rope_freqs(dir.path(), 10_000.0, vec![1.0; HEAD_DIM / 2]).unwrap()),
        None
    );
    // Not llama3-shaped: a clear error naming the file.
    let mut bad = llama3_divisors(500_000.0, HEAD_DIM, 8.0, 1.0, 4.0, 8192.0);
    bad[3] = 5.0;
    let err = config_with_rope_freqs(dir.path(), 500_000.0, bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not Llama-3 rope scaling"), "{err}");
    assert!(err.contains(".gguf"), "{err}");
    // Wrong length.
    let err = config_with_rope_freqs(dir.path(), 500_000.0, vec![1.0, 2.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected head_dim / 2 = 64"), "{err}");
}

// ---------------------------------------------------------------- bad input

fn message(err: Error) -> String {
    err.to_string()
}

#[test]
fn missing_file() {
    let path = PathBuf::from("/nonexistent/dir/model.gguf");
    let err = GgufCheckpoint::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert_eq!(message(err), "Cannot read `/nonexistent/dir/model.gguf`");
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, "{\"model_type\": \"llama\"}").unwrap();
    let err = message(GgufCheckpoint::open(&path).unwrap_err());
    assert_eq!(
        err,
        format!(
            "Cannot parse `{}`: not a GGUF file (it starts with \"{{\\\"mo\" instead of the `GGUF` magic)",
            path.display()
        )
    );
    std::fs::write(&path, "").unwrap();
    let err = message(GgufCheckpoint::open(&path).unwrap_err());
    assert!(err.contains("not a GGUF file"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn truncated_files() {
    let bytes = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    // Cut inside the tensor data.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = message(GgufCheckpoint::open(&path).unwrap_err());
    assert!(
        err.starts_with(&format!(
            "Cannot parse `{}`: truncated file: tensor `",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("but the file has {}", bytes.len() / 2)),
        "{err}"
    );
    // Cut inside the header (the metadata strings).
    for cut in [10, 200, 3000] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = message(GgufCheckpoint::open(&path).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "Cannot parse `{}`: truncated file",
                path.display()
            )),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma.gguf");
    write_llama_gguf(
        &path,
        &llama_metadata("gemma3", FFN),
        &hf_weights(),
        GgmlDType::F32,
    );
    let checkpoint = GgufCheckpoint::open(&path).unwrap();
    assert_eq!(checkpoint.architecture_name(), "gemma3");
    let err = checkpoint.config().unwrap_err();
    assert!(matches!(err, Error::UnsupportedArchitecture(_)));
    assert_eq!(
        message(err),
        format!(
            "Unsupported architecture `gemma3` in `{}` (supported: qwen2, qwen3, llama)",
            path.display()
        )
    );
    assert!(checkpoint.tensors(&Device::Cpu).is_err());
}

#[test]
fn unknown_quant_type_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    write_llama_gguf(
        &path,
        &llama_metadata("llama", FFN),
        &hf_weights(),
        GgmlDType::F32,
    );
    // Rewrite the type id of blk.0.attn_v.weight to 20 (IQ4_NL, which candle cannot read):
    // after its name come n_dims (u32), the dims (u64 each) and the type (u32).
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_v.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    let type_at = at + name.len() + 4 + 2 * 8;
    assert_eq!(bytes[type_at..type_at + 4], 0u32.to_le_bytes());
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = GgufCheckpoint::open(&path).unwrap_err();
    assert!(matches!(err, Error::UnsupportedQuant { .. }));
    assert_eq!(
        message(err),
        format!(
            "Unsupported GGUF tensor type `iq4_nl` for tensor `blk.0.attn_v.weight` in `{}`",
            path.display()
        )
    );
}

#[test]
fn shape_mismatch_and_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // Metadata says FFN 768, the tensors are 512 wide.
    let path = dir.path().join("shape.gguf");
    write_llama_gguf(
        &path,
        &llama_metadata("llama", 768),
        &hf_weights(),
        GgmlDType::F32,
    );
    let err = GgufCheckpoint::open(&path)
        .unwrap()
        .tensors(&Device::Cpu)
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }));
    let text = message(err);
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("[768, 256]") || text.contains("[256, 768]"),
        "{text}"
    );

    let path = dir.path().join("missing.gguf");
    let weights: Vec<(String, Tensor)> = hf_weights()
        .into_iter()
        .filter(|(name, _)| !name.ends_with("up_proj.weight"))
        .collect();
    write_llama_gguf(
        &path,
        &llama_metadata("llama", FFN),
        &weights,
        GgmlDType::F32,
    );
    let err = GgufCheckpoint::open(&path)
        .unwrap()
        .tensors(&Device::Cpu)
        .unwrap_err();
    assert_eq!(
        message(err),
        format!(
            "Missing tensor `blk.0.ffn_up.weight` in `{}`",
            path.display()
        )
    );
}
