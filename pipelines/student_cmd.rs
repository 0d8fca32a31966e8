//! `distill train`: command-line front end of the student crate. Reads the corpus, builds the
//! student (base checkpoint or from scratch), trains with a progress bar, metrics JSONL and a
//! loss-curve PNG, and exports the final Hugging Face folder.
//!
//! Output folder layout:
//! - `model/` — the final Hugging Face folder (what `transformers` and `distill` load);
//! - `checkpoints/step-…/` — resumable checkpoints (`--resume` continues from the newest);
//! - `metrics.jsonl` — one line per step (`loss`, `lr`, `grad_norm`, tokens/s) and per eval;
//! - `loss.png`, `train_config.toml` (resolved settings), `data_report.json`;
//! - `token-cache/` — the corpus tokenised once (`data.token_cache` puts it elsewhere).
//!
//! `--engine trl` hands the same settings to TRL instead (see [`trl`]).

mod chart;
pub mod config;
pub(crate) mod memory;
mod on_policy;
pub mod trl;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use distill_models::chat::ChatTemplate;
use distill_models::tokenizer::TextTokenizer;
use distill_models::Checkpoint;
use distill_student::batch::Rows;
use distill_student::data::token_cache::{Sources, TokenCache};
use distill_student::data::{self, Renderer};
use distill_student::{checkpoint, export, init, tokenizer_train};
use distill_student::{Control, Event, StudentInit, TrainTarget, Trainer};
use serde_json::json;

use crate::progress::Progress;

pub use config::{TrainArgs, TrainSettings};

pub const MODEL_DIR: &str = "model";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_PNG: &str = "loss.png";
pub const CONFIG_FILE: &str = "train_config.toml";
pub const DATA_REPORT: &str = "data_report.json";
pub const TOKEN_CACHE_DIR: &str = "token-cache";

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut settings = args.resolve()?;
    // A hub dataset by name trains as the folder of shards it is fetched into.
    for corpus in [&mut settings.corpus, &mut settings.eval_corpus]
        .into_iter()
        .flatten()
    {
        *corpus = crate::model_arg::resolve_corpus(corpus)?;
    }
    match settings.engine {
        trl::Engine::Distill => run(&settings, args.resume, !args.quiet),
        trl::Engine::Trl => trl::run(&settings, args.resume, !args.quiet, args.dry_run),
    }
}

/// Runs a training job from resolved settings (also used by `distill run`).
pub fn run(settings: &TrainSettings, resume: bool, progress: bool) -> anyhow::Result<()> {
    settings.validate()?;
    if settings.train.opd.is_some() {
        return on_policy::run(settings, resume, progress);
    }
    // Distilling from the corpus: the token cache keeps the teacher's stored distributions.
    let mut settings = settings.clone();
    settings.data.teacher_logprobs = settings.train.kd.as_ref().is_some_and(|k| k.from_corpus);
    let settings = &settings;
    let (Some(corpus), Some(out)) = (&settings.corpus, &settings.out) else {
        bail!("the corpus and the output folder must be set");
    };
    let final_dir = out.join(MODEL_DIR);
    let ckpt_root = out.join(CHECKPOINTS_DIR);
    if already_finished(&final_dir, resume)? {
        return Ok(());
    }
    let latest = resume_point(&ckpt_root, resume)?;
    // A hub model is downloaded now, before the device, the corpus and the model load.
    let base = match &settings.base {
        Some(arg) => Some(crate::model_arg::resolve_existing(arg, "base model")?.path),
        None => None,
    };
    // The device before the corpus: no GPU, a CPU-only binary or a dtype the GPU lacks fail now.
    let target = training_target(settings, "Training")?;

    // The tokenizer and the student's starting point.
    let (mut student, tokenizer) =
        starting_point(settings, base.as_deref(), latest.as_deref(), corpus)?;
    // The teacher's tokenizer before the corpus is read: a pair that cannot distil fails now.
    let teacher = match &settings.train.kd {
        Some(kd) if !kd.from_corpus => Some(open_teacher(&kd.teacher, &tokenizer)?.0),
        _ => None,
    };
    let template = chat_template(&settings.data.chat_template, &tokenizer)?;
    let renderer = Renderer::new(tokenizer, template, &student.config.eos_token_ids())?;
    check_positions(settings, &student)?;
    export::prepare(&mut student, &renderer);

    let cache = tokenise(settings, corpus, out, &renderer, progress)?;
    let dataset = cache.dataset(&settings.data)?;
    let r = &dataset.report;
    if settings.data.teacher_logprobs {
        check_alignment(r, corpus)?;
    }
    eprintln!(
        "Corpus: {} rows → {} training documents in {} rows ({} tokens, {} labelled, {:.0}% full), {} held out{}",
        r.rows,
        r.train_documents,
        r.train_rows,
        r.train_tokens,
        r.train_label_tokens,
        r.fill_ratio * 100.0,
        r.eval_documents,
        if r.dropped.is_empty() {
            String::new()
        } else {
            format!("; dropped {}", r.drop_summary())
        }
    );

    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    write_file(&out.join(CONFIG_FILE), &settings.to_toml()?)?;
    write_file(
        &out.join(DATA_REPORT),
        &(serde_json::to_string_pretty(&dataset.report)? + "\n"),
    )?;

    let spec = student.config.spec()?;
    let width = dataset.train.max_len();
    let beside = memory::Beside {
        teacher: match &teacher {
            Some(t) => memory::Beside::teacher_weights(t, &target)?,
            None => 0.0,
        },
        samples: 0.0,
        divergence: match &settings.train.kd {
            Some(kd) => {
                // Stored targets: the corpus's K (every row stores the same).
                let k = match kd.from_corpus {
                    true => (0..dataset.train.count())
                        .find_map(|i| dataset.train.row(i).teacher.map(|t| t.k)),
                    false => (kd.top_k > 0).then_some(kd.top_k),
                };
                let positions = settings.train.micro_batch_size * width;
                memory::Beside::divergence(&spec, positions, k, target.precision.compute)
            }
            None => 0.0,
        },
    };
    memory::preflight(settings, &spec, &target, width, beside)?;
    let mut trainer = open_trainer(latest.as_deref(), student, settings, &target)
        .map_err(|e| memory::explain(e.into(), settings, &target, &spec, beside))?;
    if let Some(teacher) = teacher {
        let dtype = target.precision.compute;
        let model = teacher
            .load_for_inference(&target.device, dtype)
            .with_context(|| format!("cannot load the teacher `{}`", teacher.path().display()))?;
        eprintln!("Distilling from `{}`", teacher.path().display());
        trainer.set_teacher(distill_student::kd::Teacher::new(model))?;
    }
    let start_step = trainer.state().step;
    let mut log = RunLog::open(out, start_step)?;

    let total = settings.train.total_steps(dataset.train.count());
    let bar = progress_bar(total, start_step, progress);
    let (mut curve, mut evals) = curves(trainer.state());
    let png = out.join(LOSS_PNG);
    let eval_rows: Option<&dyn Rows> = (dataset.eval.count() > 0).then_some(&dataset.eval);
    let summary = trainer
        .fit(&dataset.train, eval_rows, Some(&ckpt_root), &mut |event| {
            let line = match event {
                Event::Step(m) => {
                    bar.set_position(m.step);
                    let kd = m.kd.map_or(String::new(), |d| format!("  kd {d:.4}"));
                    bar.set_message(format!(
                        "loss {:.4}{kd}  lr {:.2e}  {:.0} tok/s",
                        m.loss, m.lr, m.tokens_per_sec
                    ));
                    curve.push((m.step, m.loss));
                    let mut line = json!({
                        "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm,
                        "tokens": m.tokens, "label_tokens": m.label_tokens,
                        "tokens_per_sec": m.tokens_per_sec, "seconds": m.elapsed.as_secs_f64(),
                    });
                    if let Some(kd) = m.kd {
                        line["kd"] = json!(kd);
                    }
                    line
                }
                Event::Eval { step, loss } => {
                    bar.println(format!("step {step}: held-out loss {loss:.4}"));
                    evals.push((*step, *loss));
                    json!({"step": step, "eval_loss": loss})
                }
                // Only on-policy runs evaluate by sampling.
                Event::OnPolicyEval(_) => return Control::Continue,
                Event::Checkpoint { step, path } => {
                    if let Err(e) = chart::loss_curve(&png, &curve, &evals) {
                        tracing::warn!("{e:#}");
                    }
                    json!({"step": step, "checkpoint": path})
                }
            };
            log.record(&line)
        })
        .map_err(|e| memory::explain(e.into(), settings, &target, &spec, beside))?;
    bar.finish_and_clear();
    log.finish()?;
    chart::loss_curve(&png, &curve, &evals)?;
    if stopped_early(&summary) {
        return Ok(());
    }
    save_final(&trainer, &final_dir, &renderer, &summary, "Trained", "loss")
}

/// Writes the finished run's model into `final_dir`, checks it loads as a student should (stop
/// ids, end-of-turn token) and says so: "`done` N steps: `metric` …, held-out `metric` …".
pub(crate) fn save_final(
    trainer: &Trainer,
    final_dir: &Path,
    renderer: &Renderer,
    summary: &distill_student::trainer::FitSummary,
    done: &str,
    metric: &str,
) -> anyhow::Result<()> {
    trainer.save_model(final_dir)?;
    export::check_folder(final_dir, renderer.end_of_turn_id())?;
    eprintln!(
        "{done} {} steps: {metric} {}{}; model in `{}`",
        summary.steps,
        summary
            .last_loss
            .map_or("n/a".into(), |l| format!("{l:.4}")),
        summary
            .eval_loss
            .map_or(String::new(), |l| format!(", held-out {metric} {l:.4}")),
        final_dir.display()
    );
    if let Some(e) = &summary.final_checkpoint_error {
        eprintln!(
            "warning: the checkpoint of step {} was not written ({e}); the model above is \
             complete, but training cannot resume from that step (earlier checkpoints are kept)",
            summary.steps
        );
    }
    Ok(())
}

/// The student to train and its tokenizer. From scratch, a fresh run takes the tokenizer of
/// `settings.tokenizer` or trains one on the corpus; a resumed run takes it from its checkpoint (training it again would give the
/// same one, but reading it is faster and cannot drift).
fn starting_point(
    settings: &TrainSettings,
    base: Option<&Path>,
    latest: Option<&Path>,
    corpus: &Path,
) -> anyhow::Result<(StudentInit, TextTokenizer)> {
    if let Some(base) = base {
        let cannot_load = || format!("cannot load the base model `{}`", base.display());
        let ckpt = Checkpoint::open(base).with_context(cannot_load)?;
        // Before the weights load (a real base dequantizes for minutes): the layers exist.
        if let Some(keep) = &settings.keep_layers {
            let layers = ckpt.config().common().num_hidden_layers;
            if let Err(e) = keep.check_against(layers) {
                bail!(
                    "`keep_layers` {keep}: {e}: the base model `{}`",
                    base.display()
                );
            }
        }
        let (mut student, tokenizer) = init::from_opened_base(&ckpt).with_context(cannot_load)?;
        if let Some(keep) = &settings.keep_layers {
            let layers = student.config.common().num_hidden_layers;
            student
                .keep_layers(keep)
                .with_context(|| format!("`keep_layers` on the base model `{}`", base.display()))?;
            eprintln!(
                "Student: layers {keep} of the base's {layers} ({} kept)",
                keep.indices().len()
            );
        }
        return Ok((student, tokenizer));
    }
    let tokenizer = match (latest, &settings.tokenizer) {
        (Some(dir), _) => Checkpoint::open(&dir.join(checkpoint::MODEL_DIR))?.tokenizer()?,
        (None, Some(arg)) => crate::model_arg::open_tokenizer(arg)?,
        (None, None) => {
            // Learning a vocabulary reads the whole corpus text: from-scratch students are
            // small (the demo's); students of real size start from a base and its tokenizer.
            let conversations = data::read_corpus(&[corpus.to_path_buf()])
                .with_context(|| format!("cannot read the corpus `{}`", corpus.display()))?;
            let chatml = ChatTemplate::chatml();
            let texts: Vec<String> = conversations
                .iter()
                .filter_map(|c| chatml.render(&c.messages, false).ok())
                .collect();
            tokenizer_train::train(&texts, &settings.model.tokenizer)?
        }
    };
    let student = init::from_scratch(&settings.model, tokenizer.clone(), settings.train.seed)?;
    Ok((student, tokenizer))
}

/// Distilling from stored distributions needs the teacher's tokens to reappear in the
/// student's: when most rows' do not, the student's tokenizer is not the teacher's.
fn check_alignment(report: &data::DataReport, corpus: &Path) -> anyhow::Result<()> {
    let (targets, tokens) = (report.teacher_targets, report.teacher_tokens);
    let share = targets as f64 / tokens.max(1) as f64;
    eprintln!(
        "Teacher distributions: {targets} of {tokens} generated tokens ({:.0}%) found in {} of {} documents; the rest train on the cross-entropy only",
        share * 100.0,
        report.teacher_aligned,
        report.teacher_aligned + report.teacher_unaligned
    );
    if targets == 0 || share < 0.5 {
        bail!(
            "only {targets} of the {tokens} tokens the teacher generated in `{}` reappear in the student's tokens: logit distillation from the corpus needs the teacher's tokenizer (and chat template)",
            corpus.display()
        );
    }
    Ok(())
}

/// The teacher of a logit-distillation run, opened (not loaded) and checked against the
/// student's tokenizer: the divergence compares distributions id by id, so both must mean the
/// same token by every id. Returns the teacher's tokenizer too.
fn open_teacher(
    name: &str,
    student: &TextTokenizer,
) -> anyhow::Result<(Checkpoint, TextTokenizer)> {
    let model = crate::model_arg::resolve_existing(Path::new(name), "teacher")?;
    let teacher = Checkpoint::open(&model.path)
        .with_context(|| format!("cannot open the teacher `{}`", model.path.display()))?;
    let tokenizer = teacher
        .tokenizer()
        .with_context(|| format!("cannot read the teacher's tokenizer `{}`", name))?;
    if let Some((id, t, s)) = tokenizer.first_difference(student) {
        let show = |t: Option<String>| t.map_or("no token".to_string(), |t| format!("`{t}`"));
        bail!(
            "the teacher `{name}` and the student do not share a tokenizer (logit distillation compares them id by id): id {id} is {} for the teacher and {} for the student",
            show(t),
            show(s)
        );
    }
    Ok((teacher, tokenizer))
}

/// `auto` (the tokenizer's own template, else ChatML), a built-in name, or a Jinja file.
pub(crate) fn chat_template(
    choice: &str,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<ChatTemplate> {
    if choice == "auto" {
        return Ok(tokenizer
            .chat_template()?
            .unwrap_or_else(ChatTemplate::chatml));
    }
    if let Some(t) = ChatTemplate::builtin(choice) {
        return Ok(t);
    }
    let path = PathBuf::from(choice);
    if !path.is_file() {
        bail!(
            "`data.chat_template` `{choice}` is neither `auto`, a built-in template (`chatml`, `llama3`, `deepseek-r1`) nor a file"
        );
    }
    let source = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(ChatTemplate::new(
        &source,
        tokenizer.bos_token.as_deref(),
        tokenizer.eos_token.as_deref(),
    )?)
}

/// Rows longer than the model's positions would train positions it has never had.
fn check_positions(settings: &TrainSettings, student: &StudentInit) -> anyhow::Result<()> {
    let max = student.config.max_position_embeddings();
    if settings.data.max_seq_len > max {
        bail!(
            "`data.max_seq_len` `{}` exceeds the model's `max_position_embeddings` `{max}`",
            settings.data.max_seq_len
        );
    }
    Ok(())
}

/// The corpus tokenised into the token cache (`data.token_cache`, else `OUT/token-cache`):
/// built on the first run, reused by `--resume` and by any run with the same corpus,
/// tokenizer, template and data settings.
fn tokenise(
    settings: &TrainSettings,
    corpus: &Path,
    out: &Path,
    renderer: &Renderer,
    progress: bool,
) -> anyhow::Result<TokenCache> {
    let root = settings
        .data
        .token_cache
        .clone()
        .unwrap_or_else(|| out.join(TOKEN_CACHE_DIR));
    let inputs = [corpus.to_path_buf()];
    let eval: Option<Vec<PathBuf>> = settings.eval_corpus.clone().map(|p| vec![p]);
    let sources = Sources {
        corpus: &inputs,
        eval_corpus: eval.as_deref(),
    };
    let bar = Progress::new(
        0,
        "{spinner} tokenise [{bar:30}] {pos}/{len} rows  elapsed {elapsed}  ETA {eta}",
        "rows",
        progress,
    );
    bar.set_prefix("tokenise");
    let cache = TokenCache::open_or_build(
        &root,
        sources,
        renderer,
        &settings.data,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(|| match &settings.eval_corpus {
        Some(eval) => format!(
            "cannot prepare the corpus `{}` and the eval corpus `{}`",
            corpus.display(),
            eval.display()
        ),
        None => format!("cannot prepare the corpus `{}`", corpus.display()),
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{} token cache `{}` ({} tokens)",
        if cache.reused() {
            "Reusing the"
        } else {
            "Wrote the"
        },
        cache.dir().display(),
        cache.info().tokens
    );
    Ok(cache)
}

/// Where and in which precision a run trains, said to the user (`what` on …).
pub(crate) fn training_target(settings: &TrainSettings, what: &str) -> anyhow::Result<TrainTarget> {
    let placement = settings.device.resolve()?;
    let precision = settings.dtype.training(&placement.device)?;
    eprintln!(
        "{what} on {}",
        placement.explained(&format!("in {precision}"))
    );
    Ok(TrainTarget {
        device: placement.device,
        precision,
    })
}

/// `(step, value)` points of a curve in `loss.png`.
pub(crate) type Curve = Vec<(u64, f64)>;

/// The loss curve and the held-out curve a run has so far (a resumed run's from its
/// checkpoint), as `loss.png` draws them.
pub(crate) fn curves(state: &checkpoint::TrainerState) -> (Curve, Curve) {
    let curve = state.history.iter().map(|h| (h.step, h.loss)).collect();
    (curve, state.evals.clone())
}

/// The trainer of a run: resumed from the checkpoint `latest` (saying so), else new from
/// `student`.
pub(crate) fn open_trainer(
    latest: Option<&Path>,
    student: StudentInit,
    settings: &TrainSettings,
    target: &TrainTarget,
) -> distill_student::Result<Trainer> {
    match latest {
        Some(dir) => {
            eprintln!("Resuming from `{}`", dir.display());
            Trainer::resume(
                dir,
                settings.train.clone(),
                Some(&student.config),
                target.clone(),
            )
        }
        None => Trainer::new(student, settings.train.clone(), target.clone()),
    }
}

/// The checkpoint a run continues from: the newest under `checkpoints` with `--resume`; without
/// it, none, and earlier checkpoints there are refused rather than overwritten.
pub(crate) fn resume_point(checkpoints: &Path, resume: bool) -> anyhow::Result<Option<PathBuf>> {
    let latest = checkpoint::latest(checkpoints)?;
    if !resume && latest.is_some() {
        bail!("{}", earlier_run(checkpoints));
    }
    Ok(latest.filter(|_| resume))
}

/// A run's `metrics.jsonl` (kept to the steps a resumed run has) and its Ctrl-C flag: the
/// progress callback writes each event's line here and learns whether to stop.
pub(crate) struct RunLog {
    file: std::fs::File,
    path: PathBuf,
    failure: Option<anyhow::Error>,
    stop: Arc<AtomicBool>,
}

impl RunLog {
    /// Opens `OUT/metrics.jsonl` for a run starting at `start_step` and arms the first Ctrl-C
    /// to stop after the current step.
    pub(crate) fn open(out: &Path, start_step: u64) -> anyhow::Result<Self> {
        let path = out.join(METRICS_FILE);
        truncate_metrics(&path, start_step)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open `{}`", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        stop_on_ctrl_c(&stop);
        Ok(Self {
            file,
            path,
            failure: None,
            stop,
        })
    }

    /// Appends one line; stops the run when it cannot be written or Ctrl-C was pressed.
    pub(crate) fn record(&mut self, line: &serde_json::Value) -> Control {
        if let Err(e) = writeln!(self.file, "{line}") {
            self.failure.get_or_insert(
                anyhow::anyhow!(e).context(format!("cannot write `{}`", self.path.display())),
            );
            return Control::Stop;
        }
        if self.stop.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    /// The write error that stopped the run, if any.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        self.failure.map_or(Ok(()), Err)
    }
}

/// Says where a run stopped by Ctrl-C left its checkpoint; whether it did stop early.
pub(crate) fn stopped_early(summary: &distill_student::trainer::FitSummary) -> bool {
    if summary.stopped {
        eprintln!(
            "Stopped at step {}; checkpoint `{}` (continue with `--resume`)",
            summary.steps,
            summary
                .checkpoint
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        );
    }
    summary.stopped
}

/// Whether the run in `final_dir`'s folder already finished: then `--resume` is a no-op (said
/// so), and without it the folder would be overwritten, which is refused.
pub(crate) fn already_finished(final_dir: &Path, resume: bool) -> anyhow::Result<bool> {
    if !final_dir.exists() {
        return Ok(false);
    }
    if resume {
        eprintln!("Training already finished: `{}`", final_dir.display());
        return Ok(true);
    }
    bail!(
        "`{}` already exists: choose another `--out`, or delete it",
        final_dir.display()
    );
}

/// The refusal to start over checkpoints of an earlier run without `--resume`.
pub(crate) fn earlier_run(checkpoints: &Path) -> String {
    format!(
        "`{}` holds checkpoints of an earlier run: pass `--resume` to continue it, or choose another `--out`",
        checkpoints.display()
    )
}

pub(crate) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// Keeps only the metrics lines of steps a resumed run has (a run stopped after its last
/// checkpoint logged steps that will be trained again).
fn truncate_metrics(path: &Path, step: u64) -> anyhow::Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step && step > 0)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    write_file(path, &kept)
}

fn progress_bar(total: u64, start: u64, visible: bool) -> Progress {
    let bar = Progress::new(
        total,
        "{spinner} train [{bar:30}] {pos}/{len} steps  {msg}  elapsed {elapsed}  ETA {eta}",
        "steps",
        visible,
    );
    bar.set_prefix("train");
    bar.set_position(start);
    // Steps done before a resume say nothing about this run's speed.
    bar.reset_eta();
    bar
}

/// The first Ctrl-C stops after the current step with a checkpoint; a second exits at once.
fn stop_on_ctrl_c(stop: &Arc<AtomicBool>) {
    let flag = stop.clone();
    crate::interrupt::on_interrupt(move || {
        flag.store(true, Ordering::SeqCst);
        eprintln!("\nInterrupted: checkpointing after this step (Ctrl-C again to quit now)");
    });
}
