//! Writing any checkpoint distill loads as a GGUF file that llama.cpp (and so ollama and LM
//! Studio) runs: the inverse of the reader in [`super`], sharing its tensor-name table and q/k
//! row permutation.
//!
//! - Weights are quantized by candle's implementations of ggml's reference quantizers
//!   (`quantize_row_*_ref`: what `llama-quantize` runs without an importance matrix). Which
//!   tensor gets which type follows `llama-quantize` (see [`tensor_type`]).
//! - Metadata is what llama.cpp's `convert_hf_to_gguf.py` writes for these architectures (key
//!   names from `gguf-py/gguf/constants.py`), and nothing else.
//! - The tokenizer is written by [`super::vocab`]; a GGUF source's `tokenizer.*` metadata is
//!   copied as it is.
//! - The written file is read back before the call returns: its config must give the source's
//!   decoder (sizes, norms, RoPE frequencies) and its tokenizer the source's ids on a probe text.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as Meta};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::vocab;
use super::{dtype_name, gguf_tensor_name, GgufCheckpoint, ROPE_FREQS};
use crate::transformer::Spec;
use crate::{Architecture, Checkpoint, Config, Error, Result};

/// GGUF metadata entries, in the order they are written.
type Metadata = Vec<(String, Meta)>;

/// A GGUF quantization, named as `llama-quantize` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    /// Every tensor in f32: lossless, twice the size of F16.
    F32,
    /// Every matrix in f16 (norms and biases stay f32, as in every GGUF).
    F16,
    /// 8-bit blocks of 32 with an f16 scale: near-lossless, about half of F16.
    Q8_0,
    /// `llama-quantize`'s Q4_K_M mix: Q4_K, with Q6_K for the output matrix and about half of
    /// the `attn_v` and `ffn_down` matrices.
    Q4KM,
    /// Q6_K everywhere.
    Q6K,
}

impl Quant {
    pub const ALL: [Quant; 5] = [Quant::F32, Quant::F16, Quant::Q8_0, Quant::Q4KM, Quant::Q6K];

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4KM => "q4_k_m",
            Quant::Q6K => "q6_k",
        }
    }

    /// `general.file_type`: llama.cpp's `LLAMA_FTYPE_MOSTLY_*` number.
    pub fn file_type(self) -> u32 {
        super::FILE_TYPES
            .iter()
            .find(|(_, name)| *name == self.name())
            .map_or(0, |(n, _)| *n)
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let wanted = s.to_ascii_lowercase().replace('-', "_");
        Quant::ALL
            .into_iter()
            .find(|q| q.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = Quant::ALL.iter().map(|q| q.name()).collect();
                format!("unknown quantization `{s}` (choose {})", names.join(", "))
            })
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub quant: Quant,
    /// `general.name`; by default the checkpoint's own (a GGUF's `general.name`, else the
    /// folder's name, or its parent's for a trained student's `model/` folder).
    pub name: Option<String>,
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub quant: String,
    pub name: String,
    pub bytes: u64,
    /// Tensors of each GGUF type, e.g. `{"f32": 61, "q4_k": 150, "q6_k": 61}`.
    pub tensor_types: BTreeMap<String, usize>,
    /// Tensors stored in another type than the quantization asks for, each with the reason.
    pub fallbacks: Vec<String>,
    /// `tokenizer.ggml.pre`.
    pub pre_tokenizer: Option<String>,
}

/// Writes `ckpt` to `out` (created or replaced; written under a temporary name and renamed when
/// complete). Refuses, naming the reason, checkpoints llama.cpp would run differently: no
/// tokenizer, a tokenizer whose pre-tokenizer llama.cpp does not implement, an activation
/// other than SiLU, a RoPE scaling llama.cpp cannot express.
pub fn export_gguf(
    ckpt: &Checkpoint,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary> {
    let source = ckpt.path();
    let config = ckpt.config();
    let spec = config.spec()?;
    let refuse = |reason: String| Error::export(source, reason);
    let name = options.name.clone().unwrap_or_else(|| default_name(ckpt));
    let (mut meta, rope_freqs) =
        model_metadata(config, &spec, options.quant, &name).map_err(refuse)?;
    let (tokenizer_meta, pre_tokenizer) = tokenizer_metadata(ckpt, &spec)?;
    meta.extend(tokenizer_meta);

    let mut tensors = ckpt.tensors(&Device::Cpu)?;
    let mut written: Vec<(String, QTensor)> = Vec::new();
    if let Some(freqs) = rope_freqs {
        written.push((
            ROPE_FREQS.to_string(),
            QTensor::quantize(&freqs, GgmlDType::F32)?,
        ));
    }
    let permuted = config.architecture() == Architecture::Llama;
    let mut fallbacks = Vec::new();
    for (hf, shape) in spec.tensor_shapes() {
        let mut tensor = tensors.remove(&hf).ok_or_else(|| Error::MissingTensor {
            name: hf.clone(),
            path: source.to_path_buf(),
        })?;
        let name = gguf_tensor_name(&hf)
            .ok_or_else(|| refuse(format!("tensor `{hf}` has no GGUF name")))?;
        if permuted && (hf.contains(".q_proj.") || hf.contains(".k_proj.")) {
            let heads = if hf.contains(".q_proj.") {
                spec.num_heads
            } else {
                spec.num_kv_heads
            };
            tensor = permute_rows(&tensor, heads)?;
        }
        let (dtype, fallback) = tensor_type(
            options.quant,
            &name,
            &shape,
            spec.num_layers,
            spec.tie_word_embeddings,
        );
        fallbacks.extend(fallback);
        written.push((name, quantize(&tensor, dtype)?));
    }
    drop(tensors);

    write_file(out, &meta, &written)?;
    let mut tensor_types = BTreeMap::new();
    for (_, t) in &written {
        *tensor_types
            .entry(dtype_name(t.dtype()).to_string())
            .or_insert(0) += 1;
    }
    drop(written);
    check_reads_back(ckpt, &spec, out)?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(ExportSummary {
        path: out.to_path_buf(),
        quant: options.quant.name().to_string(),
        name,
        bytes,
        tensor_types,
        fallbacks,
        pre_tokenizer,
    })
}

/// The type `llama-quantize` gives tensor `name` (GGUF name, Hugging Face `shape`) under
/// `quant`, and a note when the row length forces another type.
///
/// Vectors (norms, biases) stay f32. Q4_K_M follows `llama_tensor_get_type` in llama.cpp's
/// `src/llama-quant.cpp`: `output.weight` (or `token_embd.weight` when the embeddings are tied,
/// since it is then also the output) is Q6_K; `attn_v.weight` and `ffn_down.weight` of layer
/// `i` of `n` are Q6_K when `i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2` (llama.cpp's
/// `use_more_bits`; with 30 layers: 0-2, 5, 8, ..., 23, 26-29), Q4_K otherwise; every other
/// matrix, the untied `token_embd.weight` included, is Q4_K.
///
/// Rows must be whole blocks (256 values for k-quants, 32 for the others). Otherwise the tensor
/// falls back as llama.cpp's `llama-quant.cpp` does: Q4_K to Q5_0 (5.5 bits per weight, so a
/// model whose widths are not multiples of 256, SmolLM2's 576 or Qwen2.5-0.5B's 896, still gets a
/// Q4_K_M file of about llama.cpp's size), Q6_K to Q8_0; then to F16 when rows are not a multiple
/// of 32 either.
pub fn tensor_type(
    quant: Quant,
    name: &str,
    shape: &[usize],
    num_layers: usize,
    tied: bool,
) -> (GgmlDType, Option<String>) {
    if shape.len() < 2 {
        return (GgmlDType::F32, None);
    }
    let wanted = match quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 => GgmlDType::F16,
        Quant::Q8_0 => GgmlDType::Q8_0,
        Quant::Q6K => GgmlDType::Q6K,
        Quant::Q4KM => {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|l| l.parse::<usize>().ok());
            let sensitive = name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight");
            if name == "output.weight" || (tied && name == "token_embd.weight") {
                GgmlDType::Q6K
            } else if let (true, Some(i)) = (sensitive, layer) {
                if use_more_bits(i, num_layers) {
                    GgmlDType::Q6K
                } else {
                    GgmlDType::Q4K
                }
            } else {
                GgmlDType::Q4K
            }
        }
    };
    let cols = shape[shape.len() - 1];
    if cols.is_multiple_of(wanted.block_size()) {
        return (wanted, None);
    }
    let smaller = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        _ => GgmlDType::Q8_0,
    };
    let used = if cols.is_multiple_of(smaller.block_size()) && wanted != smaller {
        smaller
    } else {
        GgmlDType::F16
    };
    let note = format!(
        "{name}: rows of {cols} values are not whole {} blocks of {}, stored as {}",
        dtype_name(wanted),
        wanted.block_size(),
        dtype_name(used)
    );
    (used, Some(note))
}

/// `tensor` in `dtype`: Q4_K and Q6_K by this crate's quantizers (ggml's current reference,
/// byte for byte what llama.cpp writes), every other type by candle's.
pub fn quantize(tensor: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let own: fn(&[f32]) -> Vec<u8> = match dtype {
        GgmlDType::Q4K => super::quant::quantize_q4_k,
        GgmlDType::Q6K => super::quant::quantize_q6_k,
        _ => return Ok(QTensor::quantize(tensor, dtype)?),
    };
    let values: Vec<f32> = tensor
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let bytes = own(&values);
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        &bytes,
        tensor.dims().to_vec(),
        &Device::Cpu,
    )?)
}

/// llama.cpp's choice of the layers whose `attn_v` / `ffn_down` get more bits in the `_M` mixes:
/// the first and last eighth, and every third layer between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    // Past the first eighth, so the subtraction cannot underflow.
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// llama.cpp's converter permutation of q/k rows for its interleaved RoPE: each head's rows
/// viewed as `(2, head_dim/2)` and transposed, the inverse of [`super::unpermute_rows`].
pub fn permute_rows(tensor: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (heads * 2) != 0 {
        return Err(Error::Config(format!(
            "cannot permute {rows} rows into {heads} heads of even size"
        )));
    }
    let mut view = vec![heads, 2, rows / heads / 2];
    view.extend(&dims[1..]);
    Ok(tensor
        .reshape(view)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// `general.*` and `{arch}.*` keys, and the `rope_freqs` tensor for Llama-3 RoPE scaling.
fn model_metadata(
    config: &Config,
    spec: &Spec,
    quant: Quant,
    name: &str,
) -> std::result::Result<(Metadata, Option<Tensor>), String> {
    if spec.hidden_act != "silu" {
        return Err(format!(
            "its activation is `{}`; llama.cpp runs these architectures with SiLU only",
            spec.hidden_act
        ));
    }
    let arch = config.architecture();
    if arch == Architecture::Qwen3 && spec.qkv_bias {
        return Err(
            "it is a qwen3 model with attention biases, which llama.cpp's qwen3 does not \
                    load"
                .into(),
        );
    }
    let arch_name = arch.model_type();
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let count = |n: usize| Meta::U32(n as u32);
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Meta::String(arch_name.into()),
        ),
        ("general.type".to_string(), Meta::String("model".into())),
        ("general.name".to_string(), Meta::String(name.into())),
        (
            "general.file_type".to_string(),
            Meta::U32(quant.file_type()),
        ),
        ("general.quantization_version".to_string(), Meta::U32(2)),
        (key("vocab_size"), count(spec.vocab_size)),
        (
            key("context_length"),
            count(config.max_position_embeddings()),
        ),
        (key("embedding_length"), count(spec.hidden_size)),
        (key("block_count"), count(spec.num_layers)),
        (key("feed_forward_length"), count(spec.intermediate_size)),
        (key("attention.head_count"), count(spec.num_heads)),
        (key("attention.head_count_kv"), count(spec.num_kv_heads)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Meta::F32(spec.rms_norm_eps as f32),
        ),
        (key("rope.dimension_count"), count(spec.head_dim)),
    ];
    if spec.head_dim * spec.num_heads != spec.hidden_size {
        meta.push((key("attention.key_length"), count(spec.head_dim)));
        meta.push((key("attention.value_length"), count(spec.head_dim)));
    }
    let (theta, scaling) = config.rope_parameters();
    meta.push((key("rope.freq_base"), Meta::F32(theta as f32)));
    let Some(scaling) = scaling else {
        return Ok((meta, None));
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |k: &str| scaling.get(k).and_then(|v| v.as_f64());
    let need = |k: &str| num(k).ok_or_else(|| format!("`rope_scaling` {kind} has no `{k}`"));
    match kind {
        "default" => Ok((meta, None)),
        "linear" => {
            meta.push((key("rope.scaling.type"), Meta::String("linear".into())));
            meta.push((
                key("rope.scaling.factor"),
                Meta::F32(need("factor")? as f32),
            ));
            Ok((meta, None))
        }
        "yarn" => {
            // llama.cpp's YaRN has the ramp bounds and attention factor of transformers'
            // defaults; other settings would run differently there.
            for (k, default) in [("beta_fast", 32.0), ("beta_slow", 1.0)] {
                if let Some(v) = num(k).filter(|&v| v != 0.0 && v != default) {
                    return Err(format!(
                        "its YaRN `rope_scaling` sets `{k}` {v}; the export writes only the \
                         default {default}"
                    ));
                }
            }
            for k in ["attention_factor", "mscale", "mscale_all_dim"] {
                if scaling.get(k).is_some_and(|v| !v.is_null()) {
                    return Err(format!(
                        "its YaRN `rope_scaling` sets `{k}`, which the export cannot write"
                    ));
                }
            }
            if scaling.get("truncate").and_then(|v| v.as_bool()) == Some(false) {
                return Err(
                    "its YaRN `rope_scaling` sets `truncate` false, which llama.cpp does not do"
                        .into(),
                );
            }
            meta.push((key("rope.scaling.type"), Meta::String("yarn".into())));
            meta.push((
                key("rope.scaling.factor"),
                Meta::F32(need("factor")? as f32),
            ));
            meta.push((
                key("rope.scaling.original_context_length"),
                count(need("original_max_position_embeddings")? as usize),
            ));
            Ok((meta, None))
        }
        "llama3" if arch == Architecture::Llama => {
            let divisors = llama3_divisors(
                theta,
                spec.head_dim,
                need("factor")?,
                need("low_freq_factor")?,
                need("high_freq_factor")?,
                need("original_max_position_embeddings")?,
            );
            let n = divisors.len();
            let tensor = Tensor::from_vec(divisors, n, &Device::Cpu).map_err(|e| e.to_string())?;
            Ok((meta, Some(tensor)))
        }
        other => Err(format!(
            "its `rope_scaling` type `{other}` has no llama.cpp {arch_name} equivalent"
        )),
    }
}

/// Llama-3 RoPE scaling as llama.cpp's converter stores it: one divisor per frequency (1 for
/// short wavelengths, `factor` for long ones, a smooth blend between).
fn llama3_divisors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (
        original_context / low_freq_factor,
        original_context / high_freq_factor,
    );
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / theta.powf(i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// The `tokenizer.*` keys, and the pre-tokenizer name: copied from a GGUF source, written by
/// [`vocab`] for a Hugging Face folder.
fn tokenizer_metadata(ckpt: &Checkpoint, spec: &Spec) -> Result<(Metadata, Option<String>)> {
    let source = ckpt.path();
    if let Some(gguf) = ckpt.gguf() {
        let mut keys: Vec<&String> = gguf
            .content()
            .metadata
            .keys()
            .filter(|k| k.starts_with("tokenizer."))
            .collect();
        if !keys.iter().any(|k| *k == "tokenizer.ggml.tokens") {
            return Err(Error::export(
                source,
                "it has no tokenizer (`tokenizer.ggml.tokens`); llama.cpp needs one",
            ));
        }
        keys.sort();
        let pre = match gguf.metadata("tokenizer.ggml.pre") {
            Some(Meta::String(s)) => Some(s.clone()),
            _ => None,
        };
        let meta = keys
            .into_iter()
            .map(|k| (k.clone(), gguf.content().metadata[k].clone()))
            .collect();
        return Ok((meta, pre));
    }
    let tokenizer = match ckpt.tokenizer() {
        Err(Error::MissingTokenizer(_)) => {
            return Err(Error::export(
                source,
                "it has no tokenizer (tokenizer.json); llama.cpp needs one",
            ))
        }
        other => other?,
    };
    let generation = ckpt.generation_config();
    let ids = vocab::special_ids(
        &tokenizer,
        &ckpt.eos_token_ids(),
        generation.bos_token_id.or(ckpt.config().bos_token_id()),
        generation.pad_token_id,
    );
    let meta = vocab::tokenizer_metadata(&tokenizer, spec.vocab_size, &ids, source)?;
    let pre = meta.iter().find_map(|(k, v)| match v {
        Meta::String(s) if k == "tokenizer.ggml.pre" => Some(s.clone()),
        _ => None,
    });
    Ok((meta, pre))
}

/// A name for `general.name` when none is given.
fn default_name(ckpt: &Checkpoint) -> String {
    if let Some(Meta::String(name)) = ckpt.gguf().and_then(|g| g.metadata("general.name")) {
        if !name.is_empty() {
            return name.clone();
        }
    }
    let path = std::fs::canonicalize(ckpt.path()).unwrap_or_else(|_| ckpt.path().to_path_buf());
    let own = if ckpt.is_gguf() {
        path.file_stem()
    } else {
        path.file_name()
    };
    let own = own.map(|n| n.to_string_lossy().into_owned());
    match own.as_deref() {
        // A trained student is `OUT/model/`: the run's folder names it.
        Some("model") | None => path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or(own)
            .unwrap_or_else(|| "model".into()),
        Some(own) => own.to_string(),
    }
}

/// Writes the file under a temporary sibling name, renamed to `out` once complete.
fn write_file(out: &Path, meta: &[(String, Meta)], tensors: &[(String, QTensor)]) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    let tmp = out.with_file_name(format!(".{file_name}.partial"));
    let result = (|| -> std::io::Result<()> {
        let mut writer = BufWriter::new(File::create(&tmp)?);
        let meta: Vec<(&str, &Meta)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut writer, &meta, &tensors).map_err(std::io::Error::other)?;
        // candle writes format version 2; llama.cpp writes 3, which only adds big-endian files:
        // a little-endian file is byte for byte the same, so the number is set to what llama.cpp
        // itself would write.
        writer.seek(SeekFrom::Start(4))?;
        writer.write_all(&3u32.to_le_bytes())?;
        writer.flush()?;
        writer.get_ref().sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(&tmp, e))
        }
    }
}

/// Text whose ids a written tokenizer must reproduce: words, contractions, digits, spaces,
/// newlines, punctuation, accents, CJK and an emoji, and the ChatML markers.
const PROBE_TEXT: &str =
    "Hello, world! It's 2024: 12 + 345 = 357.\n\n  Indented\tline — café, naïve; \
                          数学 🙂 <|im_start|>user\nWhy?<|im_end|> </think> x  7";

/// Reads `out` back with distill's own GGUF reader: the decoder it describes must be the
/// source's, and a Hugging Face source's tokenizer must give the same ids on a probe text.
/// A failure here is a bug in the export, reported rather than left for llama.cpp to show.
fn check_reads_back(ckpt: &Checkpoint, spec: &Spec, out: &Path) -> Result<()> {
    let written = GgufCheckpoint::open(out)?;
    let back = written.config()?.spec()?;
    let mismatch = |what: String| {
        Error::export(
            ckpt.path(),
            format!(
                "`{}` reads back with {what}; this is a bug in distill's export",
                out.display()
            ),
        )
    };
    let sizes = |s: &Spec| {
        (
            s.vocab_size,
            s.hidden_size,
            s.intermediate_size,
            s.num_layers,
            s.num_heads,
            s.num_kv_heads,
            s.head_dim,
            s.qkv_bias,
            s.o_bias,
            s.mlp_bias,
            s.qk_norm,
            s.tie_word_embeddings,
        )
    };
    if sizes(&back) != sizes(spec) {
        return Err(mismatch(format!(
            "other sizes or layers: {:?} instead of {:?}",
            sizes(&back),
            sizes(spec)
        )));
    }
    if (back.rms_norm_eps - spec.rms_norm_eps).abs() > 1e-6 * spec.rms_norm_eps {
        return Err(mismatch(format!("rms_norm_eps {}", back.rms_norm_eps)));
    }
    let rope_close = back.rope.inv_freq.len() == spec.rope.inv_freq.len()
        && back
            .rope
            .inv_freq
            .iter()
            .zip(&spec.rope.inv_freq)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs())
        && (back.rope.attention_factor - spec.rope.attention_factor).abs() <= 1e-6;
    if !rope_close {
        return Err(mismatch(format!(
            "other RoPE frequencies: {:?} (×{}) instead of {:?} (×{})",
            back.rope.inv_freq,
            back.rope.attention_factor,
            spec.rope.inv_freq,
            spec.rope.attention_factor
        )));
    }
    if !ckpt.is_gguf() {
        let ours = ckpt.tokenizer()?.encode(PROBE_TEXT, false)?;
        let theirs = written.tokenizer()?.encode(PROBE_TEXT, false)?;
        if ours != theirs {
            return Err(mismatch(format!(
                "a tokenizer that encodes the probe text as {theirs:?} instead of {ours:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quant_names_parse_and_print() {
        for q in Quant::ALL {
            assert_eq!(q.name().parse::<Quant>(), Ok(q));
        }
        assert_eq!("Q4_K_M".parse::<Quant>(), Ok(Quant::Q4KM));
        assert_eq!("q4-k-m".parse::<Quant>(), Ok(Quant::Q4KM));
        assert_eq!(
            "q5_k_m".parse::<Quant>(),
            Err("unknown quantization `q5_k_m` (choose f32, f16, q8_0, q4_k_m, q6_k)".into())
        );
    }

    #[test]
    fn q4_k_m_mix_follows_llama_quantize() {
        // 30 layers (SmolLM2-135M): layers 0-2, 26-29 and every third from 5.
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        let more: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        let more: Vec<usize> = (0..2).filter(|&i| use_more_bits(i, 2)).collect();
        assert_eq!(more, [1]);

        // Rows of 768 values: whole k-quant blocks.
        let t = |name: &str, shape: &[usize], tied: bool| {
            tensor_type(Quant::Q4KM, name, shape, 30, tied).0
        };
        assert_eq!(t("output.weight", &[49152, 768], false), GgmlDType::Q6K);
        assert_eq!(t("token_embd.weight", &[49152, 768], false), GgmlDType::Q4K);
        assert_eq!(t("token_embd.weight", &[49152, 768], true), GgmlDType::Q6K);
        assert_eq!(t("blk.5.attn_v.weight", &[192, 768], true), GgmlDType::Q6K);
        assert_eq!(t("blk.6.attn_v.weight", &[192, 768], true), GgmlDType::Q4K);
        assert_eq!(
            t("blk.29.ffn_down.weight", &[768, 1536], true),
            GgmlDType::Q6K
        );
        assert_eq!(
            t("blk.4.ffn_down.weight", &[768, 1536], true),
            GgmlDType::Q4K
        );
        assert_eq!(t("blk.0.attn_q.weight", &[768, 768], true), GgmlDType::Q4K);
        assert_eq!(t("blk.0.attn_norm.weight", &[576], true), GgmlDType::F32);
        assert_eq!(t("blk.0.attn_q.bias", &[576], true), GgmlDType::F32);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        // SmolLM2's hidden size 576 is not a multiple of 256.
        let (dtype, note) = tensor_type(Quant::Q4KM, "blk.0.attn_q.weight", &[576, 576], 30, true);
        assert_eq!(dtype, GgmlDType::Q5_0);
        assert_eq!(
            note.as_deref(),
            Some("blk.0.attn_q.weight: rows of 576 values are not whole q4_k blocks of 256, stored as q5_0")
        );
        // Q6_K's fallback is Q8_0, as in llama.cpp.
        let (dtype, _) = tensor_type(Quant::Q4KM, "blk.0.attn_v.weight", &[576, 576], 30, true);
        assert_eq!(dtype, GgmlDType::Q8_0);
        let (dtype, note) = tensor_type(Quant::Q6K, "output.weight", &[10, 48], 2, false);
        assert_eq!((dtype, note.is_some()), (GgmlDType::F16, true));
        let (dtype, _) = tensor_type(Quant::Q8_0, "output.weight", &[10, 48], 2, false);
        assert_eq!(dtype, GgmlDType::F16);
        assert_eq!(
            tensor_type(Quant::F16, "output.weight", &[10, 7], 2, false),
            (GgmlDType::F16, None)
        );
        assert_eq!(
            tensor_type(Quant::Q8_0, "output.weight", &[10, 64], 2, false),
            (GgmlDType::Q8_0, None)
        );
    }

    #[test]
    fn permute_inverts_unpermute() {
        let t = Tensor::arange(0f32, 96.0, &Device::Cpu)
            .unwrap()
            .reshape((16, 6))
            .unwrap();
        let p = permute_rows(&t, 2).unwrap();
        // Head 0's rows 0..8 become 0, 4, 1, 5, 2, 6, 3, 7 (halves interleaved).
        let first: Vec<f32> = p
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&first[..8], &[0.0, 24.0, 6.0, 30.0, 12.0, 36.0, 18.0, 42.0]);
        let back = super::super::unpermute_rows(&p, 2).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let bias = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap();
        let p = permute_rows(&bias, 2).unwrap();
        assert_eq!(
            p.to_vec1::<f32>().unwrap(),
            [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }

    #[test]
    fn llama3_divisors_match_llama_cpp_converter() {
        // tiny-llama.gguf's rope_freqs, written by convert_hf_to_gguf.py.
        let d = llama3_divisors(500_000.0, 16, 8.0, 1.0, 4.0, 64.0);
        assert_eq!(d.len(), 8);
        assert_eq!(d[0], 1.0);
        assert!((d[1] - 2.4422596).abs() < 1e-6, "{d:?}");
        assert!(d[2..].iter().all(|&x| x == 8.0), "{d:?}");
    }
}
