//! Checks every stage's settings against the models and files it will use before the first
//! stage runs, so a pipeline fails in seconds rather than at `train` after hours of generation:
//! sequence lengths against the model's positions, the tokenizer against the embedding rows,
//! a tokenizer present where the stage needs one. A model that an earlier stage makes (the
//! teacher, the student) cannot be read yet: what needs it is noted and left to the stage. A hub
//! model (`owner/name`) is downloaded here, before the first stage, and checked, and so is a hub
//! dataset a stage reads (problem sets, `[import]`'s corpora); a dry run only looks in the
//! Hugging Face cache and notes a model or dataset that is not there yet.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Parser;
use distill_models::{hub, Checkpoint};

use super::plan::Stage;
use crate::cli::{Cli, Command};
use crate::corpus_cmd::CorpusCommand;
use crate::student_cmd::trl::Engine;
use crate::teacher_cmd::BackendKind;

/// Checks `stages`, downloading hub models when `fetch` (a dry run does not); returns notes on
/// what could not be checked (a model or file that is not there yet), or the first violation as
/// a one-line error naming the stage and the key.
pub fn check(stages: &[Stage], fetch: bool) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let earlier = &stages[..i];
        let mut argv = vec!["distill".to_string()];
        argv.extend(stage.argv.iter().cloned());
        // `plan` parsed these already; a failure here is reported there first.
        let Ok(cli) = Cli::try_parse_from(&argv) else {
            continue;
        };
        // A model TRL trains is fetched by TRL on every node: distill needs its config and
        // tokenizer only.
        let files = match &cli.command {
            Command::Train(args) if args.resolve().is_ok_and(|s| s.engine == Engine::Trl) => {
                hub::Files::Metadata
            }
            _ => hub::Files::All,
        };
        // Datasets by name: problem sets (one file each) and `[import]`'s corpora.
        let datasets: Vec<(&str, PathBuf, hub::DataFiles)> = match &cli.command {
            Command::Generate(args) => {
                vec![("problems", args.problems.clone(), hub::DataFiles::One)]
            }
            Command::Compare(args) => {
                vec![("problems", args.problems.clone(), hub::DataFiles::One)]
            }
            Command::Train(args) => [("corpus", &args.corpus), ("eval_corpus", &args.eval_corpus)]
                .into_iter()
                .filter_map(|(key, c)| Some((key, c.clone()?, hub::DataFiles::Folder)))
                .collect(),
            Command::Corpus(CorpusCommand::Decontaminate(a)) => a
                .config
                .evals
                .iter()
                .map(|e| ("evals", e.clone(), hub::DataFiles::One))
                .collect(),
            Command::Corpus(CorpusCommand::Import(a)) => {
                a.io.inputs
                    .iter()
                    .map(|i| ("inputs", i.clone(), hub::DataFiles::All))
                    .collect()
            }
            _ => Vec::new(),
        };
        for (key, value, take) in datasets {
            check_dataset(stage.name, key, &value, earlier, take, fetch, &mut notes)?;
        }
        let mut model =
            |key: &str, path: &Path, fits: &dyn Fn(&Checkpoint) -> anyhow::Result<Fits>| {
                check_model(
                    stage.name,
                    key,
                    path,
                    earlier,
                    Lookup { fetch, files },
                    fits,
                    &mut notes,
                )
            };
        match cli.command {
            Command::Train(args) => {
                if args.dry_run {
                    dry_run_feeds_nothing(stage, &stages[i + 1..])?;
                }
                let settings = args.resolve()?;
                let max_seq_len = settings.data.max_seq_len;
                // A live teacher (logit or on-policy distillation) reads the student's rows.
                // (An endpoint teacher is asked when the stage starts.)
                if let Some(kd) = settings
                    .train
                    .kd
                    .as_ref()
                    .filter(|k| !k.from_corpus && !k.is_endpoint())
                {
                    model("kd_teacher", Path::new(&kd.teacher), &|ckpt| {
                        Ok(Fits {
                            key: "max_seq_len",
                            length: max_seq_len,
                            positions: ckpt.config().max_position_embeddings(),
                            needs_prompt_room: false,
                        })
                    })?;
                }
                match &settings.base {
                    Some(base) => model("base", base, &|ckpt| {
                        // A cut student's layers exist, before hours of generation.
                        if let Some(keep) = &settings.keep_layers {
                            let layers = ckpt.config().common().num_hidden_layers;
                            if let Err(e) = keep.check_against(layers) {
                                bail!("`keep_layers` {keep}: {e}");
                            }
                        }
                        Ok(Fits {
                            key: "max_seq_len",
                            length: max_seq_len,
                            positions: ckpt.config().max_position_embeddings(),
                            needs_prompt_room: false,
                        })
                    })?,
                    None => {
                        let positions = settings.model.max_position_embeddings;
                        if max_seq_len > positions {
                            bail!(
                                "stage `{}`: `max_seq_len` `{max_seq_len}` exceeds the from-scratch model's `max_position_embeddings` `{positions}`",
                                stage.name
                            );
                        }
                    }
                }
            }
            Command::Generate(args) if args.backend == BackendKind::Local => {
                if let Some(path) = &args.model {
                    let max_new_tokens = args.max_new_tokens;
                    model("model", path, &|ckpt| {
                        Ok(Fits {
                            key: "max_new_tokens",
                            length: max_new_tokens,
                            positions: ckpt.config().context_len(),
                            needs_prompt_room: true,
                        })
                    })?;
                }
            }
            Command::Compare(args) => {
                let max_new_tokens = args.max_new_tokens;
                for spec in args.models.iter().filter(|m| !m.starts_with("openai:")) {
                    model("models", Path::new(spec), &|ckpt| {
                        Ok(Fits {
                            key: "max_new_tokens",
                            length: max_new_tokens,
                            positions: ckpt.config().context_len(),
                            needs_prompt_room: true,
                        })
                    })?;
                }
            }
            _ => {}
        }
        for input in &stage.inputs {
            if !input.exists() && producer(input, earlier).is_none() {
                notes.push(format!(
                    "stage `{}` needs `{}`, which does not exist",
                    stage.name,
                    input.display()
                ));
            }
        }
    }
    Ok(notes)
}

/// How a hub model is looked up: downloaded (`fetch`) or from the cache alone, with or without
/// its weights.
#[derive(Clone, Copy)]
struct Lookup {
    fetch: bool,
    files: hub::Files,
}

/// A length a stage asks of a model, against the model's positions: its
/// `max_position_embeddings` for training rows, its context (`Config::context_len`, where the
/// engine ends a sequence) for generation.
struct Fits {
    key: &'static str,
    length: usize,
    positions: usize,
    /// Generation: the prompt takes positions too, so the new tokens alone must leave room.
    needs_prompt_room: bool,
}

/// Opens the model at `path` (config and tokenizer only; no weights) and checks `fits` and its
/// tokenizer; a model an earlier stage makes is noted instead (an absent one is noted with the
/// stage's missing inputs). A hub model is fetched first (`fetch`), or else looked up in the
/// cache.
fn check_model(
    stage: &str,
    key: &str,
    path: &Path,
    earlier: &[Stage],
    lookup: Lookup,
    fits: &dyn Fn(&Checkpoint) -> anyhow::Result<Fits>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let shown = path.display();
    let local;
    let path = if path.exists() {
        path
    } else if let Some(p) = producer(path, earlier) {
        notes.push(format!(
            "stage `{stage}`: `{key}` `{shown}` not checked: stage `{p}` makes it"
        ));
        return Ok(());
    } else if let Some(hub) = crate::model_arg::hub_ref(path) {
        let Lookup { fetch, files } = lookup;
        let found = if fetch {
            let found = match files {
                hub::Files::All => crate::model_arg::resolve_hub(&hub),
                hub::Files::Metadata => crate::model_arg::resolve_hub_metadata(&hub),
            };
            Some(found.map_err(|e| anyhow::anyhow!("stage `{stage}`: `{key}`: {e}"))?)
        } else {
            crate::model_arg::cached_files(&hub, files)
                .map_err(|e| anyhow::anyhow!("stage `{stage}`: `{key}`: {e}"))?
        };
        let Some(found) = found else {
            notes.push(format!(
                "stage `{stage}`: `{key}` `{shown}` not checked: no such local path, and no hub \
                 model of that name in the Hugging Face cache yet (`distill run` downloads it \
                 before the first stage)"
            ));
            return Ok(());
        };
        local = found.path;
        local.as_path()
    } else {
        return Ok(());
    };
    let ckpt = Checkpoint::open(path)
        .map_err(|e| anyhow::anyhow!("stage `{stage}`: `{key}` `{shown}`: {e}"))?;
    let f = fits(&ckpt).map_err(|e| anyhow::anyhow!("stage `{stage}`: `{key}` `{shown}`: {e}"))?;
    if f.needs_prompt_room && f.length >= f.positions {
        bail!(
            "stage `{stage}`: `{}` `{}` leaves no room for a prompt in `{shown}`'s context of {} positions",
            f.key,
            f.length,
            f.positions
        );
    }
    if !f.needs_prompt_room && f.length > f.positions {
        bail!(
            "stage `{stage}`: `{}` `{}` exceeds `{shown}`'s `max_position_embeddings` `{}`",
            f.key,
            f.length,
            f.positions
        );
    }
    let tokenizer = ckpt.tokenizer().map_err(|e| {
        anyhow::anyhow!("stage `{stage}`: `{key}` `{shown}` has no usable tokenizer: {e}")
    })?;
    let rows = ckpt.config().spec()?.vocab_size;
    if tokenizer.vocab_size() > rows {
        bail!(
            "stage `{stage}`: `{key}` `{shown}`: its tokenizer has {} ids but the model only {rows} embedding rows (`vocab_size`)",
            tokenizer.vocab_size()
        );
    }
    Ok(())
}

/// A hub dataset a stage reads (`value` that is no local path but a dataset name): fetched here
/// when `fetch`, so a wrong name fails before the first stage rather than after training; a dry
/// run only looks in the cache and notes what is not there yet.
fn check_dataset(
    stage: &str,
    key: &str,
    value: &Path,
    earlier: &[Stage],
    take: hub::DataFiles,
    fetch: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    // What an earlier stage writes is no dataset to fetch.
    if producer(value, earlier).is_some() {
        return Ok(());
    }
    let Some(dataset) = crate::model_arg::dataset_ref(value) else {
        return Ok(());
    };
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("stage `{stage}`: `{key}`: {e}");
    if fetch {
        crate::model_arg::resolve_dataset(&dataset, take).map_err(|e| failed(&e))?;
        return Ok(());
    }
    let settings = hub::HubSettings::from_env().map_err(|e| failed(&e))?;
    if hub::cached_dataset(&dataset, take, &settings).is_err() {
        notes.push(format!(
            "stage `{stage}`: `{key}` `{dataset}` not checked: no such local path, and no hub \
             dataset of that name in the Hugging Face cache yet (`distill run` downloads it \
             before the first stage)"
        ));
    }
    Ok(())
}

/// A training stage with `dry_run = true` writes the TRL job and stops, so no model comes out of
/// it: a later stage that reads its output would fail only when it starts.
fn dry_run_feeds_nothing(stage: &Stage, later: &[Stage]) -> anyhow::Result<()> {
    for next in later {
        let here = std::slice::from_ref(stage);
        if let Some(input) = next.inputs.iter().find(|p| producer(p, here).is_some()) {
            bail!(
                "stage `{}`: `dry_run = true` writes the TRL job without training it, so stage `{}` would have no `{}`; remove `dry_run`, or the stages after `{}`",
                stage.name,
                next.name,
                input.display(),
                stage.name
            );
        }
    }
    Ok(())
}

/// The earlier stage whose output holds `path`.
fn producer<'a>(path: &Path, earlier: &'a [Stage]) -> Option<&'a str> {
    earlier
        .iter()
        .find(|s| s.outputs.iter().any(|o: &PathBuf| path.starts_with(o)))
        .map(|s| s.name)
}
