//! `distill train --method opd`: on-policy distillation of a trained student (see
//! `distill_student::trainer::on_policy`). The student samples the corpus's prompts with the
//! generation engine of `distill-teacher` from its current weights each step, the teacher of
//! `[train.kd]` scores every sampled position, and the student learns the per-token divergence.
//!
//! The teacher is a checkpoint loaded beside the student, or the URL of an OpenAI-compatible
//! endpoint that scores token ids with vLLM's `prompt_logprobs` (vLLM, `distill serve`): the
//! samples go there as ids and its top `kd.top_k` tokens per position come back
//! ([`EndpointScorer`]). An endpoint is asked for its models before anything loads, so a wrong
//! URL or model name fails at once; its tokenizer is checked on the first samples by the text
//! it gives each token; its end of turn by scoring the corpus's first conversation.
//!
//! Writes what an SFT run writes (`model/`, `checkpoints/`, `metrics.jsonl`, `loss.png`,
//! `train_config.toml`) without a token cache: the samples are new every step. `metrics.jsonl`
//! gains per step `sample_tokens` (mean completion length), `stopped` (share of samples that
//! ended on the end-of-turn token) and `sample_seconds`, and per evaluation `eval_kd`,
//! `pass_rate` and the same sample figures on the held-out problems.

use std::ops::ControlFlow;

use anyhow::{bail, Context};
use distill_models::chat::ChatTemplate;
use distill_models::tokenizer::TextTokenizer;
use distill_models::Model;
use distill_student::batch::{TeacherTargets, IGNORE};
use distill_student::data::{self, Renderer};
use distill_student::pack::Document;
use distill_student::trainer::on_policy::{
    check_end_of_turn, prompts, OnPolicyData, Rollout, RolloutRequest, Sampler, Sampling, Scorer,
};
use distill_student::Event;
use distill_teacher::backend::{Cancel, FinishReason, GenOutput, GenRequest, SamplingParams};
use distill_teacher::engine::{EngineOptions, IterSource};
use distill_teacher::openai::prompt_logprobs::PromptScorer;
use distill_teacher::openai::OpenAiConfig;
use distill_teacher::{Engine, Update};
use serde_json::json;

use super::{
    chart, chat_template, curves, memory, open_teacher, open_trainer, progress_bar, resume_point,
    save_final, starting_point, stopped_early, training_target, write_file, RunLog, TrainSettings,
    CHECKPOINTS_DIR, CONFIG_FILE, LOSS_PNG, MODEL_DIR,
};

/// Most sequences the engine decodes at once while sampling.
const MAX_SAMPLING_BATCH: usize = 256;

/// The student's samples, drawn with `distill-teacher`'s continuous-batching engine: the
/// student's tokenizer, chat template and stop ids, the token ids exactly as sampled.
struct EngineSampler {
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
}

impl Sampler for EngineSampler {
    fn sample(
        &mut self,
        model: Model,
        requests: &[RolloutRequest<'_>],
        sampling: &Sampling,
    ) -> distill_student::Result<Vec<Rollout>> {
        let err = |e: distill_teacher::Error| {
            distill_student::Error::Config(format!("sampling the student failed: {e}"))
        };
        let options = EngineOptions {
            batch: requests.len().clamp(1, MAX_SAMPLING_BATCH),
            ..EngineOptions::default()
        };
        let engine = Engine::new(
            model,
            self.tokenizer.clone(),
            self.template.clone(),
            self.stop_ids.clone(),
            options,
        )
        .map_err(err)?;
        let params = SamplingParams {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: 0,
            max_new_tokens: sampling.max_new_tokens,
            // The sampled ids come back with their log-probabilities: exactly the tokens the
            // student chose, never a re-tokenisation of the text.
            logprobs: 1,
        };
        let gen: Vec<GenRequest> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| GenRequest {
                key: i.to_string(),
                messages: r.prompt.messages.clone(),
                prefill: sampling.prefill.clone(),
                sampling: params.clone(),
                seed: r.seed,
                stop: Vec::new(),
                prompt_ids: None,
            })
            .collect();
        // The prompt exactly as the engine renders and tokenises it.
        let prompt_ids = requests
            .iter()
            .map(|r| engine.prompt_ids(&r.prompt.messages, &sampling.prefill))
            .collect::<distill_teacher::Result<Vec<_>>>()
            .map_err(err)?;
        let mut done: Vec<Option<GenOutput>> = vec![None; requests.len()];
        let mut failure = None;
        engine
            .run(
                &mut IterSource(gen.into_iter()),
                &Cancel::new(),
                &mut |update| {
                    match update {
                        Update::Done(o) => {
                            // Keys are the requests' indices, given above.
                            if let Some(slot) =
                                o.key.parse::<usize>().ok().and_then(|i| done.get_mut(i))
                            {
                                *slot = Some(o);
                            }
                        }
                        Update::Failed { key, error } => {
                            failure.get_or_insert(distill_teacher::Error::Config(format!(
                                "sample {key}: {error}"
                            )));
                        }
                        _ => {}
                    }
                    ControlFlow::Continue(())
                },
            )
            .map_err(err)?;
        if let Some(e) = failure {
            return Err(err(e));
        }
        done.into_iter()
            .zip(prompt_ids)
            .enumerate()
            .map(|(i, (o, prompt_ids))| {
                let o = o.ok_or_else(|| {
                    distill_student::Error::Config(format!("sample {i} was never finished"))
                })?;
                Ok(Rollout {
                    prompt_ids,
                    completion_ids: o
                        .logprobs
                        .as_ref()
                        .map(|l| l.token_ids().to_vec())
                        .unwrap_or_default(),
                    text: o.text,
                    stopped: o.finish_reason == FinishReason::Stop,
                })
            })
            .collect()
    }
}

/// The teacher's scores from an endpoint (see the module header): its top-`k` tokens at each
/// labelled position of each sample, as the trainer's stored targets.
struct EndpointScorer {
    scorer: PromptScorer,
    url: String,
    /// The student's, to compare with the text the endpoint gives each token.
    tokenizer: TextTokenizer,
    tokens_checked: bool,
}

/// Refuses an endpoint whose tokenizer reads an id as another text than the student's does
/// (`texts[i]` is the endpoint's text of `ids[i]`). Tokens either side decodes to nothing
/// (special tokens vLLM skips) or to part of a character are not compared.
fn check_token_texts(
    tokenizer: &TextTokenizer,
    url: &str,
    ids: &[u32],
    texts: &[Option<String>],
) -> anyhow::Result<()> {
    let comparable = |t: &str| !t.is_empty() && !t.contains('\u{fffd}');
    for (&id, teacher) in ids.iter().zip(texts) {
        let Some(teacher) = teacher.as_deref().filter(|t| comparable(t)) else {
            continue;
        };
        let student = tokenizer.decode(&[id], false)?;
        if comparable(&student) && teacher != student {
            bail!(
                "the teacher `{url}` reads token id {id} as `{teacher}` where the student's tokenizer reads `{student}`: on-policy distillation compares them id by id, so serve a teacher with the student's tokenizer"
            );
        }
    }
    Ok(())
}

impl Scorer for EndpointScorer {
    fn score(
        &mut self,
        documents: &[Document],
        k: usize,
    ) -> distill_student::Result<Vec<TeacherTargets>> {
        let fail = |e: anyhow::Error| distill_student::Error::Config(format!("{e:#}"));
        let sequences: Vec<Vec<u32>> = documents.iter().map(|d| d.input_ids.clone()).collect();
        let scored = self
            .scorer
            .score(&sequences, k)
            .with_context(|| format!("the teacher `{}` could not score the samples", self.url))
            .map_err(fail)?;
        if !self.tokens_checked {
            for (ids, scores) in sequences.iter().zip(&scored) {
                let texts: Vec<Option<String>> = scores.iter().map(|s| s.text.clone()).collect();
                check_token_texts(&self.tokenizer, &self.url, &ids[1..], &texts).map_err(fail)?;
            }
            self.tokens_checked = true;
        }
        Ok(documents
            .iter()
            .zip(&scored)
            .map(|(doc, scores)| {
                let mut targets = TeacherTargets::new(k);
                for (p, _) in doc.labels.iter().enumerate().filter(|(_, &l)| l != IGNORE) {
                    // `scores[p]` is the token after position `p`.
                    targets.positions.push(p as u32);
                    for &(id, logprob) in &scores[p].top {
                        targets.ids.push(id);
                        targets
                            .logprobs
                            .push(half::f16::from_f32(logprob).to_bits());
                    }
                }
                targets
            })
            .collect())
    }
}

/// Connects to an endpoint teacher (`kd.teacher` a URL): it must answer `/v1/models` and
/// serve `kd.teacher_model` (or one model) now, before anything loads.
fn connect(kd: &distill_student::kd::KdConfig) -> anyhow::Result<PromptScorer> {
    let scorer = PromptScorer::new(OpenAiConfig {
        base_urls: vec![kd.teacher.clone()],
        model: kd.teacher_model.clone(),
        api_key_env: Some(kd.teacher_api_key_env.clone()).filter(|e| !e.is_empty()),
        // Scoring a sample is one forward; a slow endpoint still answers in minutes.
        timeout: std::time::Duration::from_secs(600),
        ..OpenAiConfig::default()
    })
    .with_context(|| format!("cannot use the teacher endpoint `{}`", kd.teacher))?;
    // One tiny scoring request now, so an endpoint that does not score prompts, or caps the
    // alternatives below `kd.top_k` (vLLM's `--max-logprobs`), fails before the student loads.
    scorer
        .score(&[vec![0, 1]], kd.top_k)
        .with_context(|| format!("the teacher endpoint `{}` cannot score", kd.teacher))?;
    eprintln!(
        "Teacher: `{}` at `{}`, its top {} tokens per position",
        scorer.model(),
        kd.teacher,
        kd.top_k
    );
    Ok(scorer)
}

/// Scores the corpus's first conversation, in the student's template, on the endpoint and
/// warns when the teacher does not expect the student's end-of-turn token where the sample's
/// turn ends (a teacher that ends turns otherwise teaches the student never to stop; a
/// checkpoint teacher's stop ids are checked instead).
fn check_endpoint_end_of_turn(
    scorer: &PromptScorer,
    renderer: &Renderer,
    conversations: &[data::Conversation],
    url: &str,
    k: usize,
    describe: &dyn Fn(u32) -> String,
) -> anyhow::Result<()> {
    let Some(end) = renderer.end_of_turn_id() else {
        return Ok(());
    };
    let Some(rendered) = conversations
        .iter()
        .find_map(|c| renderer.render(&c.messages).ok())
    else {
        return Ok(());
    };
    let ids = rendered.input_ids;
    let Some(at) = ids.iter().rposition(|&id| id == end).filter(|&p| p > 0) else {
        return Ok(());
    };
    let scores = scorer
        .score(std::slice::from_ref(&ids), k)
        .with_context(|| format!("the teacher `{url}` could not score a probe exchange"))?;
    let rank = scores[0][at - 1].rank;
    if rank > k as u32 {
        eprintln!(
            "warning: the teacher `{url}` ranks the student's end-of-turn token {} only {rank}th where the student's turn ends: if it ends turns otherwise, the student learns never to stop (watch the `stopped` share)",
            describe(end)
        );
    }
    Ok(())
}

/// Runs an on-policy distillation job from resolved settings (`settings.train.opd` set).
pub fn run(settings: &TrainSettings, resume: bool, progress: bool) -> anyhow::Result<()> {
    let (Some(corpus), Some(out)) = (&settings.corpus, &settings.out) else {
        bail!("the corpus and the output folder must be set");
    };
    let Some(opd) = &settings.train.opd else {
        bail!("the settings have no `[train.opd]`");
    };
    let Some(base_arg) = &settings.base else {
        bail!("on-policy distillation starts from a trained student: pass `--base MODEL` (the `model/` of an SFT run)");
    };
    let Some(kd) = settings.train.kd.as_ref().filter(|k| !k.from_corpus) else {
        bail!("on-policy distillation needs a live teacher: pass `--kd-teacher MODEL` (a checkpoint, or the URL of an endpoint that scores prompts)");
    };
    let final_dir = out.join(MODEL_DIR);
    let ckpt_root = out.join(CHECKPOINTS_DIR);
    if super::already_finished(&final_dir, resume)? {
        return Ok(());
    }
    let latest = resume_point(&ckpt_root, resume)?;
    let base = crate::model_arg::resolve_existing(base_arg, "base model")?.path;
    let target = training_target(settings, "On-policy distillation")?;
    let endpoint = match kd.is_endpoint() {
        true => Some(connect(kd)?),
        false => None,
    };
    let (mut student, tokenizer) =
        starting_point(settings, Some(&base), latest.as_deref(), corpus)?;
    let teacher = match endpoint {
        None => Some(open_teacher(&kd.teacher, &tokenizer)?),
        Some(_) => None,
    };
    let template = chat_template(&settings.data.chat_template, &tokenizer)?;
    let renderer = Renderer::new(
        tokenizer.clone(),
        template.clone(),
        &student.config.eos_token_ids(),
    )?;
    distill_student::export::prepare(&mut student, &renderer);
    let describe = |id: u32| match tokenizer.inner.id_to_token(id) {
        Some(t) => format!("`{t}` (id {id})"),
        None => format!("id {id}"),
    };
    // An endpoint teacher's end of turn is checked on the corpus's first sample below.
    if let Some((teacher, teacher_tokenizer)) = &teacher {
        // The teacher stops on its EOS ids and on the token that closes turns in its own
        // template (an instruct model whose generation config names only `<|endoftext|>`
        // still closes chat turns with `<|im_end|>`).
        let teacher_template = chat_template("auto", teacher_tokenizer)?;
        let teacher_stops = Renderer::new(
            teacher_tokenizer.clone(),
            teacher_template,
            &teacher.eos_token_ids(),
        )
        .map(|r| r.stop_ids().to_vec())
        .unwrap_or_else(|_| teacher.eos_token_ids());
        check_end_of_turn(
            renderer.end_of_turn_id(),
            renderer.stop_ids(),
            &teacher_stops,
            &describe,
        )
        .with_context(|| format!("the teacher `{}`", kd.teacher))?;
    }

    // The prompts: the corpus's distinct problems, held out as the SFT trainer holds them out.
    let conversations = data::read_corpus(&[corpus.to_path_buf()])
        .with_context(|| format!("cannot read the corpus `{}`", corpus.display()))?;
    if let Some(scorer) = &endpoint {
        check_endpoint_end_of_turn(
            scorer,
            &renderer,
            &conversations,
            &kd.teacher,
            kd.top_k,
            &describe,
        )?;
    }
    let (train, mut held_out) = prompts(&conversations, settings.data.eval_fraction);
    if let Some(eval) = &settings.eval_corpus {
        let conversations = data::read_corpus(&[eval.to_path_buf()])
            .with_context(|| format!("cannot read the eval corpus `{}`", eval.display()))?;
        held_out = prompts(&conversations, 0.0).0;
    }
    if train.is_empty() {
        bail!(
            "the corpus `{}` has no prompts (no row with a user turn)",
            corpus.display()
        );
    }
    let with_reference = held_out.iter().filter(|p| p.reference.is_some()).count();
    eprintln!(
        "Prompts: {} problems to sample, {} held out ({} evaluated, {} with a reference answer); {} per step, up to {} new tokens",
        train.len(),
        held_out.len(),
        held_out.len().min(opd.eval_problems),
        with_reference.min(opd.eval_problems),
        opd.prompts_per_step,
        opd.max_new_tokens
    );
    if settings.eval_corpus.is_none() {
        if let Some(note) = few_held_out(
            held_out.len(),
            opd.eval_problems,
            settings.data.eval_fraction,
        ) {
            eprintln!("{note}");
        }
    }

    // On a GPU: the student's training state for rows of `max_seq_len`, the teacher, and one
    // step's samples cached at full length, checked before anything is loaded.
    let spec = student.config.spec()?;
    let width = settings.data.max_seq_len;
    let beside = memory::Beside {
        teacher: match &teacher {
            Some((teacher, _)) => memory::Beside::teacher_weights(teacher, &target)?,
            None => 0.0,
        },
        samples: memory::Beside::sample_caches(
            &spec,
            opd.prompts_per_step
                .max(opd.eval_problems.min(held_out.len())),
            width,
            target.precision.compute,
        ),
        divergence: memory::Beside::divergence(
            &spec,
            settings.train.micro_batch_size * width,
            (kd.top_k > 0).then_some(kd.top_k),
            target.precision.compute,
        ),
    };
    memory::preflight(settings, &spec, &target, width, beside)?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    write_file(&out.join(CONFIG_FILE), &settings.to_toml()?)?;
    let mut trainer = open_trainer(latest.as_deref(), student, settings, &target)
        .map_err(|e| memory::explain(e.into(), settings, &target, &spec, beside))?;
    if let Some((teacher, _)) = &teacher {
        let model = teacher
            .load_for_inference(&target.device, target.precision.compute)
            .with_context(|| format!("cannot load the teacher `{}`", teacher.path().display()))?;
        eprintln!("Distilling on-policy from `{}`", teacher.path().display());
        trainer.set_teacher(distill_student::kd::Teacher::new(model))?;
    }
    let mut scorer = endpoint.map(|scorer| EndpointScorer {
        scorer,
        url: kd.teacher.clone(),
        tokenizer: tokenizer.clone(),
        tokens_checked: false,
    });

    let start_step = trainer.state().step;
    let mut log = RunLog::open(out, start_step)?;
    let total = settings.train.on_policy_steps(train.len());
    let bar = progress_bar(total, start_step, progress);
    let (mut curve, mut evals) = curves(trainer.state());
    // The stop share of this run's first evaluation, to notice a student unlearning to stop.
    let mut first_stopped: Option<(u64, f64)> = None;
    let png = out.join(LOSS_PNG);
    let mut sampler = EngineSampler {
        tokenizer: tokenizer.clone(),
        template,
        stop_ids: renderer.stop_ids().to_vec(),
    };
    let data = OnPolicyData {
        train: &train,
        held_out: &held_out,
        max_seq_len: settings.data.max_seq_len,
    };
    let scorer = scorer.as_mut().map(|s| s as &mut dyn Scorer);
    let fitted = trainer.fit_on_policy(&data, &mut sampler, scorer, Some(&ckpt_root), &mut |event| {
        let line = match event {
            Event::Step(m) => {
                bar.set_position(m.step);
                let r = m.rollouts;
                bar.set_message(format!(
                    "kd {:.4}  stop {:.0}%  len {:.0}  lr {:.2e}",
                    m.loss,
                    r.map_or(0.0, |r| r.stopped * 100.0),
                    r.map_or(0.0, |r| r.mean_tokens),
                    m.lr
                ));
                curve.push((m.step, m.loss));
                let mut line = json!({
                    "step": m.step, "loss": m.loss, "kd": m.loss, "lr": m.lr,
                    "grad_norm": m.grad_norm, "tokens": m.tokens, "label_tokens": m.label_tokens,
                    "tokens_per_sec": m.tokens_per_sec, "seconds": m.elapsed.as_secs_f64(),
                });
                if let Some(r) = r {
                    line["sample_tokens"] = json!(r.mean_tokens);
                    line["stopped"] = json!(r.stopped);
                    line["sample_seconds"] = json!(r.sampling.as_secs_f64());
                }
                line
            }
            Event::OnPolicyEval(e) => {
                bar.println(format!(
                    "step {}: held-out kd {:.4}, pass rate {}, {:.0}% stopped, {:.0} tokens ({} problems)",
                    e.step,
                    e.kd,
                    e.pass_rate.map_or("n/a".into(), |p| format!("{:.1}%", p * 100.0)),
                    e.rollouts.stopped * 100.0,
                    e.rollouts.mean_tokens,
                    e.rollouts.samples
                ));
                evals.push((e.step, e.kd));
                let (since, before) = *first_stopped.get_or_insert((e.step, e.rollouts.stopped));
                if e.rollouts.stopped < 0.5 * before {
                    // Said even under `--quiet`: this is the run going wrong.
                    let say = |line: String| match progress {
                        true => bar.println(line),
                        false => eprintln!("{line}"),
                    };
                    say(format!(
                        "warning: the student now ends {:.0}% of its samples on its own ({:.0}% at step {since}): it is learning not to stop; lower the learning rate, or start from a student whose samples look like the teacher's",
                        e.rollouts.stopped * 100.0,
                        before * 100.0
                    ));
                }
                json!({
                    "step": e.step, "eval_kd": e.kd, "pass_rate": e.pass_rate,
                    "eval_stopped": e.rollouts.stopped, "eval_sample_tokens": e.rollouts.mean_tokens,
                    "eval_problems": e.rollouts.samples,
                })
            }
            Event::Eval { step, loss } => json!({"step": step, "eval_loss": loss}),
            Event::Checkpoint { step, path } => {
                if let Err(e) = chart::loss_curve(&png, &curve, &evals) {
                    tracing::warn!("{e:#}");
                }
                json!({"step": step, "checkpoint": path})
            }
        };
        log.record(&line)
    });
    let summary =
        fitted.map_err(|e| memory::explain(e.into(), settings, &target, &spec, beside))?;
    bar.finish_and_clear();
    log.finish()?;
    chart::loss_curve(&png, &curve, &evals)?;
    if stopped_early(&summary) {
        return Ok(());
    }
    save_final(
        &trainer,
        &final_dir,
        &renderer,
        &summary,
        "Distilled on-policy for",
        "kd",
    )
}

/// A note when the held-out pass rate would cover fewer problems than asked and fewer than 16:
/// over a handful it moves by tens of points from one sample to the next, so the run says how
/// to get more before it starts rather than after.
fn few_held_out(held_out: usize, asked: usize, eval_fraction: f64) -> Option<String> {
    let evaluated = held_out.min(asked);
    (evaluated < asked.min(16)).then(|| {
        format!(
            "note: the held-out pass rate covers {evaluated} problem(s) of the {asked} asked \
             (`opd_eval_problems`): raise `eval_fraction` (now {eval_fraction}) or pass \
             `--eval-corpus`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_out_slice_of_a_few_problems_is_noted() {
        let note = few_held_out(1, 8, 0.02).unwrap();
        assert!(
            note.contains("covers 1 problem(s) of the 8 asked"),
            "{note}"
        );
        assert!(note.contains("`eval_fraction` (now 0.02)"), "{note}");
        assert_eq!(few_held_out(60, 64, 0.1), None, "16 or more is enough");
        assert_eq!(few_held_out(4, 4, 0.1), None, "all that was asked");
        assert_eq!(few_held_out(0, 0, 0.0), None, "no evaluation asked");
    }

    #[test]
    fn an_endpoint_reading_ids_otherwise_is_refused() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/tests/fixtures/tiny-llama.gguf");
        let tokenizer = distill_models::Checkpoint::open(&fixture)
            .unwrap()
            .tokenizer()
            .unwrap();
        let ids = tokenizer.encode("hello world", false).unwrap();
        let texts: Vec<Option<String>> = ids
            .iter()
            .map(|&i| Some(tokenizer.decode(&[i], false).unwrap()))
            .collect();
        check_token_texts(&tokenizer, "http://t", &ids, &texts).unwrap();
        // Nothing, an empty text or part of a character says nothing.
        let mut unknown = texts.clone();
        unknown[0] = None;
        unknown[1] = Some(String::new());
        check_token_texts(&tokenizer, "http://t", &ids, &unknown).unwrap();
        unknown[1] = Some("\u{fffd}".into());
        check_token_texts(&tokenizer, "http://t", &ids, &unknown).unwrap();
        let mut other = texts;
        other[1] = Some("elsewhere".into());
        let e = check_token_texts(&tokenizer, "http://t", &ids, &other)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("token id {}", ids[1]))
                && e.contains("`elsewhere`")
                && e.contains("`http://t`"),
            "{e}"
        );
    }
}
