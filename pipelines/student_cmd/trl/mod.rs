//! `distill train --engine trl`: the same corpus and settings handed to TRL's SFT under
//! `accelerate launch` (PyTorch, FSDP2 or DeepSpeed ZeRO-3), for students that one device cannot
//! train. Writes into the output folder:
//!
//! - `data/train.parquet`, `data/eval.parquet`: the conversations distill would train on and
//!   hold out, in TRL's conversational layout (`messages`); `data/lengths.json`: their token
//!   lengths under the base tokenizer and template (see [`dataset`]);
//! - `recipe.yaml`, `accelerate.yaml`, `launch.sh`, `slurm.sbatch` (see [`job`]), the entry
//!   script `distill_sft.py`, and `chat_template.jinja` when distill supplies the training
//!   template (see [`template`]);
//! - `train_config.toml` (resolved settings) and `data_report.json`, as the distill engine does.
//!
//! A per-GPU memory estimate is printed before anything launches; `--dry-run` stops there.
//! Otherwise the Python environment is checked first (see [`python`]), and once the folder is
//! written the job runs on this machine and is followed (see [`launch`]): its metrics go to
//! `metrics.jsonl` and `loss.png`, Ctrl-C checkpoints and stops it, `--resume` continues from
//! TRL's newest checkpoint, and the final `model/` gets the stop ids of the template it was
//! trained with, so `compare`, `serve` and `inspect` take it as they take a distill student.

pub mod dataset;
pub mod job;
pub mod launch;
pub mod python;
pub mod settings;
pub mod template;
mod yaml;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use distill_models::Checkpoint;
use distill_student::data::Renderer;

pub use settings::{Distributed, Engine, Offload, TrlSettings};

use super::{
    chart, write_file, TrainSettings, CHECKPOINTS_DIR, CONFIG_FILE, DATA_REPORT, LOSS_PNG,
    METRICS_FILE, MODEL_DIR,
};
use job::Job;

/// Writes the TRL job for `settings` into its output folder; with `dry_run` stops there.
pub fn run(
    settings: &TrainSettings,
    resume: bool,
    progress: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    settings.validate()?;
    let (Some(corpus), Some(out), Some(base)) = (&settings.corpus, &settings.out, &settings.base)
    else {
        bail!("the corpus, the output folder and the base model must be set");
    };
    let final_dir = out.join(MODEL_DIR);
    if super::already_finished(&final_dir, resume)? {
        return Ok(());
    }
    let checkpoints = out.join(CHECKPOINTS_DIR);
    if !resume && !dry_run && has_checkpoints(&checkpoints) {
        bail!("{}", super::earlier_run(&checkpoints));
    }
    // The Python side before anything is read or written: a missing or mismatched package is
    // named now, not after the dataset is written.
    let python = if dry_run {
        None
    } else {
        let python = python::python(&settings.trl)?;
        python::check(&python, &python::required(&settings.trl))?;
        Some(python)
    };

    let base = Base::resolve(base)?;
    let ckpt = Checkpoint::open(&base.dir)
        .with_context(|| format!("cannot read the base model `{}`", base.dir.display()))?;
    let spec = ckpt.config().spec()?;
    let positions = ckpt.config().max_position_embeddings();
    if settings.data.max_seq_len > positions {
        bail!(
            "`data.max_seq_len` `{}` exceeds the base model's `max_position_embeddings` `{positions}`",
            settings.data.max_seq_len
        );
    }
    let tokenizer = ckpt.tokenizer().with_context(|| {
        format!(
            "the base model `{}` has no usable tokenizer (`tokenizer.json`)",
            base.dir.display()
        )
    })?;
    let template = super::chat_template(&settings.data.chat_template, &tokenizer)?;
    let plan = template::plan(&settings.data.chat_template, &template)?;
    let renderer = Renderer::new(tokenizer, template, &ckpt.eos_token_ids())?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let exported = dataset::export(
        corpus,
        settings.eval_corpus.as_deref(),
        out,
        &renderer,
        &settings.data,
        progress,
    )?;
    let r = &exported.report;
    eprintln!(
        "Dataset{}: {} corpus rows → {} training conversations ({} tokens; longest {}, p99 {}), {} held out{}",
        if exported.reused {
            " (unchanged since the last export, reused)"
        } else {
            ""
        },
        r.rows,
        exported.train_rows,
        exported.lengths.tokens,
        exported.lengths.max,
        exported.lengths.p99,
        exported.eval_rows,
        if r.dropped.is_empty() {
            String::new()
        } else {
            format!("; dropped {}", r.drop_summary())
        }
    );
    write_file(&out.join(CONFIG_FILE), &settings.to_toml()?)?;
    write_file(
        &out.join(DATA_REPORT),
        &(serde_json::to_string_pretty(&exported.report)? + "\n"),
    )?;
    let chat_template = template::write(&plan, out)?;
    match &plan {
        template::Plan::Variant { name, .. } => eprintln!(
            "Chat template: distill's `{name}` with the trained turn marked (`{}`)",
            job::CHAT_TEMPLATE
        ),
        template::Plan::Marked => {
            eprintln!("Chat template: the base model's, which marks assistant turns")
        }
        template::Plan::LeftToTrl => eprintln!(
            "Chat template: the base model's; TRL swaps in its training variant for assistant-only loss (it knows Qwen2.5, Qwen3, DeepSeek-R1-Distill, Llama 3 and others) or stops naming the template"
        ),
    }

    let job = Job {
        settings,
        model: base.trl_name,
        revision: base.revision,
        spec,
        lengths: exported.lengths,
        has_eval: exported.eval_rows > 0,
        out: std::path::absolute(out)
            .with_context(|| format!("cannot resolve `{}`", out.display()))?,
        chat_template,
    };
    for (name, text) in job.files() {
        write_file(&out.join(name), &text)?;
    }
    write_file(&out.join(job::ENTRY), job::ENTRY_SOURCE)?;
    make_executable(&out.join(job::LAUNCH))?;
    eprintln!("{}", job.memory_line());

    let Some(python) = python else {
        eprintln!(
            "Dry run: the TRL job is in `{}`; start it with `bash {}` (one machine) or `sbatch {}` (Slurm)",
            out.display(),
            out.join(job::LAUNCH).display(),
            out.join(job::SLURM).display(),
        );
        return Ok(());
    };

    let metrics = out.join(METRICS_FILE);
    if !resume {
        // A fresh run's metrics start empty; a resumed one's continue (TRL logs the steps it
        // trains again after its checkpoint once more).
        write_file(&metrics, "")?;
    }
    eprintln!("Launching TRL: `bash {}`", out.join(job::LAUNCH).display());
    let outcome = launch::run(out, &python, &metrics, progress)?;
    if !outcome.curve.is_empty() {
        chart::loss_curve(&out.join(LOSS_PNG), &outcome.curve, &outcome.evals)?;
    }
    if outcome.stopped {
        eprintln!(
            "Stopped at step {}; checkpoint in `{}` (continue with `--resume`)",
            outcome.steps,
            checkpoints.display()
        );
        return Ok(());
    }
    if !final_dir.is_dir() {
        bail!(
            "TRL finished without writing `{}`; its output is in `{}`",
            final_dir.display(),
            out.join(launch::LOG_FILE).display()
        );
    }
    register(&final_dir, &renderer, chat_template)?;
    eprintln!(
        "Trained {} steps with TRL: loss {}{}; model in `{}`",
        outcome.steps,
        outcome
            .last_loss
            .map_or("n/a".into(), |l| format!("{l:.4}")),
        outcome
            .eval_loss
            .map_or(String::new(), |l| format!(", held-out loss {l:.4}")),
        final_dir.display()
    );
    Ok(())
}

/// Makes TRL's final folder stop where training put the end of the turn: every stop id of the
/// template it was trained with goes into `generation_config.json` and `config.json` (a base
/// model's own list can lack the template's end-of-turn token, as Qwen2.5 base models lack
/// `<|im_end|>`); when distill supplied the training variant of its template, the folder gets
/// the template itself back (the variant renders earlier assistant turns as the trained one);
/// and the folder must then open as a distill student does.
fn register(dir: &Path, renderer: &Renderer, variant: bool) -> anyhow::Result<()> {
    if variant {
        write_file(&dir.join(job::CHAT_TEMPLATE), renderer.template().source())?;
        let config = dir.join("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&config) {
            let mut value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("cannot parse `{}`", config.display()))?;
            if value.get("chat_template").is_some() {
                value["chat_template"] = renderer.template().source().into();
                write_file(&config, &(serde_json::to_string_pretty(&value)? + "\n"))?;
            }
        }
    }
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse `{}`", path.display()))?;
        let mut ids: Vec<u64> = match &value["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().into_iter().collect(),
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_u64()).collect(),
            _ => Vec::new(),
        };
        let before = ids.len();
        for &id in renderer.stop_ids() {
            if !ids.contains(&u64::from(id)) {
                ids.push(u64::from(id));
            }
        }
        if ids.len() != before {
            value["eos_token_id"] = serde_json::json!(ids);
            write_file(&path, &(serde_json::to_string_pretty(&value)? + "\n"))?;
        }
    }
    distill_student::export::check_folder(dir, renderer.end_of_turn_id())
        .with_context(|| format!("TRL's model `{}` is not usable", dir.display()))?;
    Ok(())
}

/// The base model as TRL names it and as distill reads it.
struct Base {
    /// What the recipe's `model_name_or_path` says: the hub name, or the absolute folder.
    trl_name: String,
    revision: Option<String>,
    /// A local folder with its config and tokenizer.
    dir: PathBuf,
}

impl Base {
    fn resolve(arg: &Path) -> anyhow::Result<Self> {
        let gguf = |path: &Path| {
            path.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        };
        let refuse = |what: &str| {
            anyhow::anyhow!(
                "the TRL engine trains a Hugging Face checkpoint, not the GGUF file {what}: convert it with `distill convert` and pass the folder as `--base`"
            )
        };
        match crate::model_arg::hub_ref(arg) {
            Some(model) => {
                if model.gguf.is_some() {
                    return Err(refuse(&format!("`{model}`")));
                }
                let found = crate::model_arg::resolve_metadata(arg)?;
                if gguf(&found.path) {
                    return Err(refuse(&format!("in `{}`", model.repo)));
                }
                Ok(Self {
                    trl_name: model.repo.clone(),
                    revision: model.revision.clone(),
                    dir: found.path,
                })
            }
            None => {
                if !arg.exists() {
                    bail!("the base model `{}` does not exist", arg.display());
                }
                if gguf(arg) {
                    return Err(refuse(&format!("`{}`", arg.display())));
                }
                let dir = std::path::absolute(arg)
                    .with_context(|| format!("cannot resolve `{}`", arg.display()))?;
                Ok(Self {
                    trl_name: dir.display().to_string(),
                    revision: None,
                    dir,
                })
            }
        }
    }
}

/// Whether `dir` holds a TRL checkpoint (`checkpoint-N/`).
fn has_checkpoints(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
    })
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make `{}` executable", path.display()))?;
    }
    Ok(())
}
