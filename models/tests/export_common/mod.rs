//! What the GGUF export tests share (`gguf_export.rs`, `gguf_export_reference.rs`): the tiny
//! fixtures as Hugging Face folders, a seeded model whose rows are whole k-quant blocks, and
//! logits of an exported file.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as Meta;
use candle_core::{DType, Device, Tensor};
use distill_models::checkpoint::save_hf_folder;
use distill_models::config::Common;
use distill_models::gguf::{export_gguf, ExportOptions, ExportSummary, GgufCheckpoint, Quant};
use distill_models::{llama, Checkpoint, Config, GenerationConfig, TokenIds};
use rand::{Rng, SeedableRng};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny fixtures: Hugging Face folder, and the GGUF twin whose tokenizer it borrows.
pub const TINY: [(&str, &str); 3] = [
    ("tiny-llama", "tiny-llama.gguf"),
    ("tiny-qwen2", "tiny-qwen2.gguf"),
    ("tiny-qwen3", "tiny-qwen3.gguf"),
];

/// A Hugging Face folder in `dir`: the fixture's config and weights, with the tokenizer (and
/// chat template) of its GGUF twin, since the tiny folders carry none.
pub fn hf_with_tokenizer(dir: &Path, fixture: &str, gguf: &str) -> PathBuf {
    let out = dir.join(fixture);
    std::fs::create_dir_all(&out).unwrap();
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(fixture).join(file), out.join(file)).unwrap();
    }
    let tokenizer = GgufCheckpoint::open(&fixtures().join(gguf))
        .unwrap()
        .tokenizer()
        .unwrap();
    tokenizer.save_hf_dir(&out).unwrap();
    out
}

/// A llama model whose rows (256 and 512 values) are whole k-quant blocks: hidden 256,
/// intermediate 512, 2 layers, 4 heads / 2 KV heads, untied, seeded uniform weights (std 0.05)
/// and norms 1 ± 0.1; the 256-token tokenizer of `tiny-llama.gguf`.
pub fn k_model(dir: &Path) -> PathBuf {
    let tokenizer = GgufCheckpoint::open(&fixtures().join("tiny-llama.gguf"))
        .unwrap()
        .tokenizer()
        .unwrap();
    let mut common = Common::new(256, 512, 2, 4, 2);
    common.rms_norm_eps = 1e-5;
    common.bos_token_id = Some(1);
    common.eos_token_id = Some(TokenIds::One(2));
    let config = Config::Llama(llama::Config {
        vocab_size: 256,
        max_position_embeddings: 128,
        attention_bias: false,
        mlp_bias: false,
        common,
        extra: Default::default(),
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let bound = 0.05 * 3f32.sqrt();
    let tensors = config
        .spec()
        .unwrap()
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
            } else {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect();
    let generation = GenerationConfig {
        bos_token_id: Some(1),
        eos_token_id: Some(TokenIds::One(2)),
        ..Default::default()
    };
    let out = dir.join("k-model");
    save_hf_folder(
        &out,
        &config,
        &generation,
        Some(&tokenizer),
        tensors,
        usize::MAX,
    )
    .unwrap();
    out
}

pub fn export(source: &Path, out: &Path, quant: Quant) -> ExportSummary {
    let ckpt = Checkpoint::open(source).unwrap();
    let options = ExportOptions { quant, name: None };
    export_gguf(&ckpt, out, &options).unwrap()
}

/// The fixtures' two rows of 16 seeded ids.
pub fn input_ids() -> Tensor {
    let reference = candle_core::safetensors::load(
        fixtures().join("tiny-llama/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    reference["input_ids"].to_dtype(DType::U32).unwrap()
}

/// Full-sequence logits of a checkpoint loaded in f32 (GGUF weights dequantized).
pub fn logits(path: &Path, ids: &Tensor) -> Tensor {
    let model = Checkpoint::open(path)
        .unwrap()
        .load_model(&Device::Cpu)
        .unwrap();
    model.forward(ids, None).unwrap()
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    distill_models::ops::max_abs_diff(a, b).unwrap()
}

pub fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// gguf-py's names for the metadata value types.
pub fn meta_type(value: &Meta) -> &'static str {
    match value {
        Meta::U8(_) => "UINT8",
        Meta::I8(_) => "INT8",
        Meta::U16(_) => "UINT16",
        Meta::I16(_) => "INT16",
        Meta::U32(_) => "UINT32",
        Meta::I32(_) => "INT32",
        Meta::U64(_) => "UINT64",
        Meta::I64(_) => "INT64",
        Meta::F32(_) => "FLOAT32",
        Meta::F64(_) => "FLOAT64",
        Meta::Bool(_) => "BOOL",
        Meta::String(_) => "STRING",
        Meta::Array(_) => "ARRAY",
    }
}

pub fn meta_json(value: &Meta) -> Value {
    match value {
        Meta::U8(v) => (*v).into(),
        Meta::I8(v) => (*v).into(),
        Meta::U16(v) => (*v).into(),
        Meta::I16(v) => (*v).into(),
        Meta::U32(v) => (*v).into(),
        Meta::I32(v) => (*v).into(),
        Meta::U64(v) => (*v).into(),
        Meta::I64(v) => (*v).into(),
        Meta::F32(v) => f64::from(*v).into(),
        Meta::F64(v) => (*v).into(),
        Meta::Bool(v) => (*v).into(),
        Meta::String(v) => v.clone().into(),
        Meta::Array(items) => items.iter().map(meta_json).collect(),
    }
}
