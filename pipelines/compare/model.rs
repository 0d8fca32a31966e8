//! The models of a comparison: parsing `--models` specs and `--labels`, checking each model
//! before any work, its identity (what the generation cache is keyed on), its size, and opening
//! its backend.
//!
//! A spec is a local checkpoint (a Hugging Face folder or a `.gguf` file), a hub model
//! (`owner/name`, fetched into the Hugging Face cache before any work) or
//! `openai:MODEL@BASE_URL` for an OpenAI-compatible endpoint.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context};
use distill_models::Checkpoint;
use distill_teacher::engine::EngineOptions;
use distill_teacher::generate::Plan;
use distill_teacher::openai::{OpenAiBackend, OpenAiConfig};
use distill_teacher::{Backend, LocalBackend};
use serde_json::{json, Value};

/// Where a model's samples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Local(PathBuf),
    /// A hub model (`name` as written), run from its snapshot in the Hugging Face cache.
    Hub {
        name: String,
        path: PathBuf,
    },
    OpenAi {
        model: String,
        base_url: String,
    },
}

/// One model of the comparison, checked.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Short name in the report and the cache folder name.
    pub label: String,
    /// The spec as the user wrote it.
    pub spec: String,
    pub source: Source,
    /// Parameter count (local models).
    pub parameters: Option<u64>,
    /// Weight bytes on disk (local models).
    pub bytes_on_disk: Option<u64>,
    /// How the weights are stored (local models): a GGUF file's type as llama.cpp names it
    /// (`Q4_K_M`), a folder's dtype (`bf16`).
    pub weights: Option<String>,
    /// The model is a GGUF file (what llama.cpp, ollama and LM Studio run).
    pub gguf: bool,
    /// What the cached generations depend on: path, file sizes and modification times.
    pub identity: Value,
}

impl ModelSpec {
    /// The provenance name the `generate` stage records in the `teacher` column.
    pub fn provenance(&self) -> String {
        match &self.source {
            Source::Local(path) => distill_teacher::local::model_name(path),
            Source::Hub { name, .. } => name.clone(),
            Source::OpenAi { model, .. } => format!("openai:{model}"),
        }
    }

    /// The checkpoint a local or hub model runs from.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Local(path) | Source::Hub { path, .. } => Some(path),
            Source::OpenAi { .. } => None,
        }
    }

    pub fn backend_kind(&self) -> &'static str {
        match self.source {
            Source::Local(_) | Source::Hub { .. } => "local",
            Source::OpenAi { .. } => "openai",
        }
    }
}

/// Parses `openai:MODEL@BASE_URL`; `None` for anything else (a local path).
fn parse_openai(spec: &str) -> Option<anyhow::Result<Source>> {
    let rest = spec.strip_prefix("openai:")?;
    Some(match rest.rsplit_once('@') {
        Some((model, url)) if !model.is_empty() && !url.is_empty() => Ok(Source::OpenAi {
            model: model.to_string(),
            base_url: url.to_string(),
        }),
        _ => Err(anyhow::anyhow!(
            "model spec `{spec}` is not `openai:MODEL@BASE_URL`"
        )),
    })
}

/// A label usable as a folder name: characters other than letters, digits, `.`, `_` and `-`
/// become `-`.
pub fn sanitize_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '.' || c == '-').to_string();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

fn default_label(source: &Source) -> String {
    match source {
        Source::Local(path) => {
            let name = distill_teacher::local::model_name(path);
            let stem = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
            sanitize_label(&stem)
        }
        // `owner/name[:QUANT][@rev]` → `name[-QUANT]`; `owner/name/dir/FILE.gguf` → `FILE`.
        Source::Hub { name, .. } => {
            let name = name.split('@').next().unwrap_or(name);
            let last = name.rsplit('/').next().unwrap_or(name);
            sanitize_label(last.strip_suffix(".gguf").unwrap_or(last))
        }
        Source::OpenAi { model, .. } => sanitize_label(model),
    }
}

/// `name=spec` pairs; the spec must be one of `--models`.
fn parse_labels(labels: &[String], models: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for entry in labels {
        let Some((name, spec)) = entry.split_once('=') else {
            bail!("`--labels {entry}` is not `NAME=MODEL`");
        };
        if !models.iter().any(|m| m == spec) {
            bail!("`--labels {entry}`: `{spec}` is not one of `--models`");
        }
        if sanitize_label(name) != name {
            bail!(
                "`--labels {entry}`: a label may hold only letters, digits, `.`, `_` and `-` \
                 (it names a folder)"
            );
        }
        map.insert(spec.to_string(), name.to_string());
    }
    Ok(map)
}

/// Size and modification time of a file, for the identity.
fn file_stamp(path: &Path) -> anyhow::Result<Value> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    Ok(json!({ "bytes": meta.len(), "mtime_ns": mtime }))
}

/// Path, size and mtime of a file, or of every file directly in a folder (weights, config,
/// tokenizer: anything that changes what the model generates).
pub fn path_identity(path: &Path) -> anyhow::Result<Value> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if !path.is_dir() {
        return Ok(json!({ "path": canonical, "file": file_stamp(path)? }));
    }
    let mut files = BTreeMap::new();
    let entries =
        std::fs::read_dir(path).with_context(|| format!("cannot list `{}`", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list `{}`", path.display()))?;
        let p = entry.path();
        if p.is_file() {
            files.insert(
                entry.file_name().to_string_lossy().into_owned(),
                file_stamp(&p)?,
            );
        }
    }
    Ok(json!({ "path": canonical, "files": files }))
}

/// Checks every model (paths exist and open as checkpoints, specs parse, labels are unique)
/// before any work starts.
pub fn resolve(models: &[String], labels: &[String]) -> anyhow::Result<Vec<ModelSpec>> {
    if models.is_empty() {
        bail!("`--models` needs at least one model (the teacher first)");
    }
    let named = parse_labels(labels, models)?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(models.len());
    for spec in models {
        let source = match parse_openai(spec) {
            Some(source) => source?,
            None => match crate::model_arg::hub_ref(Path::new(spec)) {
                Some(hub) => {
                    let model = crate::model_arg::resolve_hub(&hub)?;
                    Source::Hub {
                        name: model.name,
                        path: model.path,
                    }
                }
                // Labelled by the argument (a run folder `s2`, not its `model`).
                None => Source::Local(PathBuf::from(spec)),
            },
        };
        let label = named
            .get(spec)
            .cloned()
            .unwrap_or_else(|| default_label(&source));
        let source = match source {
            Source::Local(path) => Source::Local(crate::model_arg::local(&path)),
            other => other,
        };
        if !seen.insert(label.clone()) {
            bail!("two models get the label `{label}`; name them apart with `--labels NAME=MODEL`");
        }
        let (parameters, bytes_on_disk, weights, gguf, identity) = match &source {
            Source::Local(path) | Source::Hub { path, .. } => {
                if !path.exists() {
                    bail!("model path `{}` does not exist", path.display());
                }
                let checkpoint = Checkpoint::open(path)
                    .with_context(|| format!("cannot open model `{}`", path.display()))?;
                let parameters = checkpoint
                    .config()
                    .spec()
                    .with_context(|| format!("model `{}`", path.display()))?
                    .num_parameters() as u64;
                let bytes = checkpoint
                    .size_on_disk()
                    .with_context(|| format!("model `{}`", path.display()))?;
                let weights = match checkpoint.gguf() {
                    Some(g) => g.file_type_name(),
                    None => checkpoint.stored_dtype().as_str().to_string(),
                };
                let gguf = checkpoint.is_gguf();
                (
                    Some(parameters),
                    Some(bytes),
                    Some(weights),
                    gguf,
                    path_identity(path)?,
                )
            }
            Source::OpenAi { model, base_url } => (
                None,
                None,
                None,
                false,
                json!({ "openai": model, "base_url": base_url }),
            ),
        };
        out.push(ModelSpec {
            label,
            spec: spec.clone(),
            source,
            parameters,
            bytes_on_disk,
            weights,
            gguf,
            identity,
        });
    }
    Ok(out)
}

/// Loads a model's backend (the expensive part: weights into memory).
/// `samples` (how many are to be generated) and the plan's longest prompt plus
/// `max_new_tokens` size the warning a local model gets when a full batch of samples that long
/// could outgrow its KV cache.
pub fn open_backend(
    model: &ModelSpec,
    engine: EngineOptions,
    (samples, max_new_tokens, plan): (usize, usize, &Plan),
    api_key_env: Option<&str>,
) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match &model.source {
        Source::Local(path) | Source::Hub { path, .. } => {
            let local = LocalBackend::open(path, engine)
                .with_context(|| format!("cannot load model `{}`", path.display()))?;
            let positions = plan.longest_prompt_tokens(local.engine()) + max_new_tokens;
            if let Some(w) = local.engine().kv_budget_warning(samples, positions) {
                eprintln!(
                    "warning: `{}`: {w}; lower `--batch` or `--max-new-tokens`, or raise \
                     `--kv-cache-gib`",
                    model.spec
                );
            }
            Box::new(local)
        }
        Source::OpenAi {
            model: name,
            base_url,
        } => {
            let config = OpenAiConfig {
                base_urls: vec![base_url.clone()],
                model: name.clone(),
                api_key_env: api_key_env.map(str::to_string),
                ..OpenAiConfig::default()
            };
            Box::new(
                OpenAiBackend::new(config).with_context(|| {
                    format!("cannot set up the endpoint of model `{}`", model.spec)
                })?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_labels() {
        let models = vec!["openai:deepseek-r1@http://127.0.0.1:8000/v1".to_string()];
        let specs = resolve(&models, &[]).unwrap();
        assert_eq!(specs[0].label, "deepseek-r1");
        assert_eq!(
            specs[0].source,
            Source::OpenAi {
                model: "deepseek-r1".into(),
                base_url: "http://127.0.0.1:8000/v1".into()
            }
        );
        let labels = vec![format!("r1={}", models[0])];
        assert_eq!(resolve(&models, &labels).unwrap()[0].label, "r1");
        assert!(resolve(&models, &["x=nope".into()]).is_err());
        assert!(resolve(&models, &["a/b=".to_string() + &models[0]]).is_err());
        assert!(resolve(&["openai:nourl".into()], &[]).is_err());
        let twice = vec![models[0].clone(), models[0].clone()];
        let err = resolve(&twice, &[]).unwrap_err().to_string();
        assert!(err.contains("deepseek-r1"), "{err}");
    }

    #[test]
    fn missing_path_is_named() {
        let err = resolve(&["/no/such/model.gguf".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/model.gguf"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn labels_are_folder_names() {
        assert_eq!(sanitize_label("Qwen/Qwen2.5 1.5B"), "Qwen-Qwen2.5-1.5B");
        assert_eq!(sanitize_label(".."), "model");
        assert_eq!(
            default_label(&Source::Local("a/tiny-llama.gguf".into())),
            "tiny-llama"
        );
        let hub = |name: &str| Source::Hub {
            name: name.into(),
            path: "unused".into(),
        };
        assert_eq!(
            default_label(&hub("Qwen/Qwen2.5-1.5B@main")),
            "Qwen2.5-1.5B"
        );
        assert_eq!(default_label(&hub("o/m-GGUF:Q4_K_M")), "m-GGUF-Q4_K_M");
        assert_eq!(default_label(&hub("o/m-GGUF/q/m-Q8_0.gguf")), "m-Q8_0");
    }
}
