//! `distill inspect`, `distill convert` and `distill export`: look inside a checkpoint, turn a
//! GGUF file into a Hugging Face folder, write any checkpoint as a (quantized) GGUF file with an
//! ollama Modelfile beside it.

use std::path::PathBuf;

use anyhow::Context;
use distill_models::gguf::{export_gguf, modelfile, ExportOptions, Quant};
use distill_models::hf::DEFAULT_MAX_SHARD_BYTES;
use distill_models::prune::LayerList;
use distill_models::Checkpoint;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face checkpoint folder, a `.gguf` file, or a hub model (`owner/name`).
    pub model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The checkpoint to convert: a `.gguf` file (or a Hugging Face folder, re-saved in f32),
    /// local or on the hub (`owner/name/FILE.gguf`, `owner/name:QUANT`).
    pub model: PathBuf,
    /// Output folder; created, and it must be absent or empty.
    pub out_dir: PathBuf,
    /// Largest safetensors shard, in bytes, before the weights are split into several files.
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_bytes: usize,
    /// Keep only these decoder layers (`0-3,20-23`, `0,2,4`), renumbered in order: a student's
    /// starting point cut from a teacher (what `train --keep-layers` does before training).
    #[arg(long, value_name = "LAYERS")]
    pub keep_layers: Option<LayerList>,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The checkpoint: a Hugging Face folder (a trained student's `model/` folder too), a
    /// `.gguf` file to requantize, or a hub model (`owner/name`).
    pub model: PathBuf,
    /// The GGUF file to write (replaced if it exists). An ollama Modelfile is written beside it,
    /// with the same name and the extension `.Modelfile`.
    #[arg(long)]
    pub gguf: PathBuf,
    /// f32, f16, q8_0 (near-lossless), q4_k_m (llama.cpp's Q4_K_M mix: Q4_K, Q6_K for the
    /// output and half of attn_v / ffn_down) or q6_k.
    #[arg(long, default_value = "q8_0")]
    pub quant: Quant,
    /// `general.name` in the file (default: the checkpoint's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Write no ollama Modelfile.
    #[arg(long)]
    pub no_modelfile: bool,
}

/// What `inspect` reports; also its `--json` schema.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub path: PathBuf,
    /// `owner/name@commit` for a model from the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    pub format: &'static str,
    pub architecture: String,
    pub parameters: usize,
    pub tensor_types: std::collections::BTreeMap<String, usize>,
    pub bytes_on_disk: u64,
    pub vocab_size: usize,
    pub tokenizer_vocab_size: Option<usize>,
    pub hidden_size: usize,
    pub layers: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// The model's context (`Config::context_len`: `max_position_embeddings`, a GGUF's
    /// `context_length`, extended by a YaRN or linear RoPE scaling): generation ends there.
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    pub bos_token: Option<SpecialToken>,
    pub eos_tokens: Vec<SpecialToken>,
    pub pad_token: Option<SpecialToken>,
    pub chat_template: bool,
}

#[derive(Debug, Serialize)]
pub struct SpecialToken {
    pub id: u32,
    pub text: Option<String>,
}

pub fn report(path: &std::path::Path) -> anyhow::Result<ModelReport> {
    let ckpt =
        Checkpoint::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let spec = ckpt.config().spec()?;
    let tokenizer = match ckpt.tokenizer() {
        Ok(t) => Some(t),
        Err(distill_models::Error::MissingTokenizer(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let token = |id: u32| SpecialToken {
        id,
        text: tokenizer.as_ref().and_then(|t| t.inner.id_to_token(id)),
    };
    let pad = ckpt.generation_config().pad_token_id.or_else(|| {
        let t = tokenizer.as_ref()?;
        t.token_id(t.pad_token.as_deref()?)
    });
    Ok(ModelReport {
        path: path.to_path_buf(),
        hub: None,
        format: if ckpt.is_gguf() {
            "gguf"
        } else {
            "huggingface"
        },
        architecture: ckpt.config().architecture().model_type().to_string(),
        parameters: spec.num_parameters(),
        tensor_types: ckpt.tensor_types()?,
        bytes_on_disk: ckpt.size_on_disk()?,
        vocab_size: spec.vocab_size,
        tokenizer_vocab_size: tokenizer.as_ref().map(|t| t.vocab_size()),
        hidden_size: spec.hidden_size,
        layers: spec.num_layers,
        attention_heads: spec.num_heads,
        kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        intermediate_size: spec.intermediate_size,
        context_length: ckpt.config().context_len(),
        tie_word_embeddings: spec.tie_word_embeddings,
        bos_token: ckpt
            .generation_config()
            .bos_token_id
            .or(ckpt.config().bos_token_id())
            .map(token),
        eos_tokens: ckpt.eos_token_ids().into_iter().map(token).collect(),
        pad_token: pad.map(token),
        chat_template: tokenizer
            .as_ref()
            .is_some_and(|t| t.chat_template.is_some()),
    })
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let model = crate::model_arg::resolve(&args.model)?;
    let mut r = report(&model.path)?;
    r.hub = model.hub;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let special = |t: &SpecialToken| format!("{} ({})", t.text.as_deref().unwrap_or("?"), t.id);
    let types: Vec<String> = r
        .tensor_types
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    let hub = r.hub.iter().map(|h| ("hub model", h.clone()));
    let rows = [
        ("path", r.path.display().to_string()),
        ("format", r.format.to_string()),
        ("architecture", r.architecture.clone()),
        (
            "parameters",
            format!("{} ({})", human_count(r.parameters), r.parameters),
        ),
        ("tensor types", types.join(", ")),
        ("size on disk", human_bytes(r.bytes_on_disk)),
        ("vocab size", r.vocab_size.to_string()),
        ("hidden size", r.hidden_size.to_string()),
        ("layers", r.layers.to_string()),
        (
            "heads (q / kv)",
            format!("{} / {} × {}", r.attention_heads, r.kv_heads, r.head_dim),
        ),
        ("ffn size", r.intermediate_size.to_string()),
        ("context length", r.context_length.to_string()),
        ("tied embeddings", r.tie_word_embeddings.to_string()),
        (
            "bos token",
            r.bos_token.as_ref().map_or("none".into(), special),
        ),
        (
            "eos tokens",
            if r.eos_tokens.is_empty() {
                "none".into()
            } else {
                r.eos_tokens
                    .iter()
                    .map(special)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "pad token",
            r.pad_token.as_ref().map_or("none".into(), special),
        ),
        (
            "tokenizer",
            r.tokenizer_vocab_size
                .map_or("missing".into(), |n| format!("{n} tokens")),
        ),
        (
            "chat template",
            if r.chat_template { "yes" } else { "no" }.to_string(),
        ),
    ];
    for (k, v) in hub.chain(rows) {
        println!("{k:>16}  {v}");
    }
    Ok(())
}

pub fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let model = crate::model_arg::resolve(&args.model)?;
    let ckpt = Checkpoint::open(&model.path)
        .with_context(|| format!("cannot open `{}`", args.model.display()))?;
    if let Some(keep) = &args.keep_layers {
        if let Err(e) = keep.check_against(ckpt.config().common().num_hidden_layers) {
            anyhow::bail!("`--keep-layers` {keep}: {e}: `{}`", args.model.display());
        }
    }
    ckpt.save_hf_keeping(
        &args.out_dir,
        args.max_shard_bytes,
        args.keep_layers.as_ref(),
    )
    .with_context(|| format!("cannot write `{}`", args.out_dir.display()))?;
    let saved = Checkpoint::open(&args.out_dir)?;
    println!(
        "wrote {} ({}, {} parameters, {})",
        args.out_dir.display(),
        saved.config().architecture().model_type(),
        human_count(saved.config().spec()?.num_parameters()),
        human_bytes(saved.size_on_disk()?),
    );
    Ok(())
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let model = crate::model_arg::resolve(&args.model)?;
    let ckpt = Checkpoint::open(&model.path)
        .with_context(|| format!("cannot open `{}`", args.model.display()))?;
    // A hub model's folder is a cache snapshot: its hub name names it better.
    let name = args
        .name
        .clone()
        .or_else(|| model.hub.as_ref().map(|_| model.name.clone()));
    let options = ExportOptions {
        quant: args.quant,
        name,
    };
    let summary = export_gguf(&ckpt, &args.gguf, &options)?;
    let types: Vec<String> = summary
        .tensor_types
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    println!(
        "wrote {} ({}, {}; {}; pre-tokenizer {})",
        summary.path.display(),
        summary.quant,
        human_bytes(summary.bytes),
        types.join(", "),
        summary.pre_tokenizer.as_deref().unwrap_or("none"),
    );
    if let Some(first) = summary.fallbacks.first() {
        println!(
            "  {} tensors stored in another type than {} asks for, e.g. {first}",
            summary.fallbacks.len(),
            summary.quant
        );
    }
    if args.no_modelfile {
        return Ok(());
    }
    let file_name = args
        .gguf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let modelfile = modelfile::modelfile_for(&args.gguf, &format!("./{file_name}"))?;
    let path = args.gguf.with_extension("Modelfile");
    std::fs::write(&path, &modelfile.text)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    // ollama model names are lowercase letters, digits, `-`, `_` and `.`.
    let ollama_name: String = args
        .gguf
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let template = match (modelfile.layout, &modelfile.note) {
        (Some(layout), _) => format!("{layout} template"),
        (None, note) => format!(
            "no TEMPLATE: {}",
            note.as_deref().unwrap_or("no chat template")
        ),
    };
    println!(
        "wrote {} ({template}); load it with `ollama create {ollama_name} -f {}`",
        path.display(),
        path.display()
    );
    Ok(())
}

pub fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
