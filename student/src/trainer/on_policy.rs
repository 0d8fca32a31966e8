//! On-policy distillation (`distill train --method opd`, `[train.opd]`): the student samples
//! completions of the corpus's prompts from its current weights, a frozen teacher scores every
//! position of each sample, and the student minimises the per-token divergence there — the
//! reverse KL(student ‖ teacher) with `kd.beta = 1`, as Qwen3's strong-to-weak distillation and
//! TRL's GKD with `lmbda = 1` do. Generation and updates alternate: each step samples
//! `prompts_per_step` fresh completions, so the student is corrected where it actually goes, not
//! where the teacher went (which is all SFT and logit distillation on the teacher's samples see).
//!
//! The sampler is a trait ([`Sampler`]): this crate knows nothing of the generation engine; the
//! command line gives it `distill-teacher`'s continuous-batching engine. The teacher is either
//! loaded here ([`Trainer::set_teacher`]: whole distributions, or its `kd.top_k`) or scores the
//! samples elsewhere ([`Scorer`]: an endpoint returning its top `kd.top_k` tokens per position,
//! which enter the loss as the corpus's stored distributions do).
//!
//! The known failure: a teacher that ends turns with another token than the student gives the
//! student's end-of-turn token almost no probability, so the reverse KL teaches the student never
//! to stop. [`check_end_of_turn`] refuses such a pair before training, and every evaluation
//! reports the share of samples that stopped on their own.
//!
//! Every sample has its own seed, derived from the run seed and the prompt's place in the
//! seeded per-epoch order (evaluation samples from the problem's place in the held-out slice),
//! so a resumed run samples exactly what the uninterrupted one would.

use std::hash::Hasher;
use std::path::Path;
use std::time::{Duration, Instant};

use distill_corpus::answer::verify;
use distill_corpus::think::split_think;
use distill_models::chat::Message;
use distill_models::Model;
use serde::{Deserialize, Serialize};

use super::objective::{kd_term, micro_batch_loss};
use super::{Control, Event, FitSummary, Trainer};
use crate::batch::{PackedRow, TeacherTargets, IGNORE};
use crate::checkpoint::DatasetFingerprint;
use crate::data::{is_eval, Conversation};
use crate::pack::{pack, Document};
use crate::{Error, Result};

/// On-policy distillation's own settings (`[train.opd]`); the teacher and the divergence are
/// `[train.kd]`'s (`teacher`, `beta`, `temperature`, `top_k`, with `weight = 1`: the loss is the
/// divergence alone, the cross-entropy of the student's own samples teaching nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpdConfig {
    /// Prompts sampled (one completion each) for every optimizer step.
    pub prompts_per_step: usize,
    /// Longest completion sampled; the sample is also cut where prompt and completion reach
    /// `data.max_seq_len`.
    pub max_new_tokens: usize,
    /// Sampling temperature of the training samples (1: the student's own distribution).
    pub temperature: f32,
    /// Nucleus of the training samples (1: none).
    pub top_p: f32,
    /// Text the assistant turn starts with, as in `generate` and `compare` (`"<think>\n"`: the
    /// R1 protocol; `""` for instruct models that answer without a think block).
    pub prefill: String,
    /// Held-out problems sampled at each evaluation (`train.eval_every`, the start and the
    /// end) for the pass rate, the divergence and the share of samples that stop.
    pub eval_problems: usize,
    /// Sampling of the evaluation (R1's protocol by default, as `compare`).
    pub eval_temperature: f32,
    pub eval_top_p: f32,
}

impl Default for OpdConfig {
    fn default() -> Self {
        Self {
            prompts_per_step: 32,
            max_new_tokens: 1024,
            temperature: 1.0,
            top_p: 1.0,
            prefill: "<think>\n".into(),
            eval_problems: 64,
            eval_temperature: 0.6,
            eval_top_p: 0.95,
        }
    }
}

impl OpdConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("prompts_per_step", self.prompts_per_step),
            ("max_new_tokens", self.max_new_tokens),
        ] {
            if v == 0 {
                return Err(Error::Config(format!(
                    "`opd.{name}` must be at least 1, got `0`"
                )));
            }
        }
        for (name, t) in [
            ("temperature", self.temperature),
            ("eval_temperature", self.eval_temperature),
        ] {
            if !(t >= 0.0 && t.is_finite()) {
                return Err(Error::Config(format!(
                    "`opd.{name}` must be 0 (greedy) or positive, got `{t}`"
                )));
            }
        }
        for (name, p) in [("top_p", self.top_p), ("eval_top_p", self.eval_top_p)] {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Config(format!(
                    "`opd.{name}` must be in (0, 1], got `{p}`"
                )));
            }
        }
        Ok(())
    }
}

/// One problem to sample: the conversation up to the assistant's turn, and the reference
/// answer when the corpus has one (for the evaluation's pass rate).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The problem id (the corpus's `problem_id`).
    pub key: String,
    pub messages: Vec<Message>,
    pub reference: Option<String>,
}

/// The distinct problems of a corpus, in first-seen order, split as the SFT trainer splits
/// them: a problem is held out when [`is_eval`] says so for `eval_fraction`, so a student
/// fine-tuned and then distilled on one corpus never trains on its held-out problems.
pub fn prompts(conversations: &[Conversation], eval_fraction: f64) -> (Vec<Prompt>, Vec<Prompt>) {
    let mut seen = std::collections::HashSet::new();
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for conv in conversations {
        let key = conv.problem_key();
        // The prompt is everything before the assistant's (last) answer.
        let end = conv
            .messages
            .iter()
            .rposition(|m| m.role != "assistant")
            .map_or(0, |i| i + 1);
        if end == 0 || !seen.insert(key.to_string()) {
            continue;
        }
        let prompt = Prompt {
            key: key.to_string(),
            messages: conv.messages[..end].to_vec(),
            reference: conv.reference_answer.clone(),
        };
        if is_eval(key, eval_fraction) {
            held_out.push(prompt);
        } else {
            train.push(prompt);
        }
    }
    (train, held_out)
}

/// One completion to sample.
#[derive(Debug, Clone, Copy)]
pub struct RolloutRequest<'a> {
    pub prompt: &'a Prompt,
    pub seed: u64,
}

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub prefill: String,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The prompt as the model saw it (chat template, prefill included).
    pub prompt_ids: Vec<u32>,
    /// The sampled tokens, the end-of-turn token included when the sample stopped on it.
    pub completion_ids: Vec<u32>,
    /// The assistant turn's text (prefill included), for the answer check.
    pub text: String,
    /// The sample ended on a stop token (not at `max_new_tokens`).
    pub stopped: bool,
}

/// Samples completions from a model: the generation engine, behind a trait.
pub trait Sampler {
    /// One [`Rollout`] per request, in request order, from `model` (the student's current
    /// weights).
    fn sample(
        &mut self,
        model: Model,
        requests: &[RolloutRequest<'_>],
        sampling: &Sampling,
    ) -> Result<Vec<Rollout>>;
}

/// Scores samples with a teacher this process does not hold (an OpenAI-compatible endpoint
/// with vLLM's `prompt_logprobs`).
pub trait Scorer {
    /// For each document, the teacher's top-`k` distribution at each position the document
    /// labels (in order), in document order.
    fn score(&mut self, documents: &[Document], k: usize) -> Result<Vec<TeacherTargets>>;
}

/// `scorer` again for one call (the object's lifetime shortened to the borrow's, which
/// `Option::as_deref_mut` cannot do).
fn reborrow<'a>(scorer: &'a mut Option<&mut dyn Scorer>) -> Option<&'a mut dyn Scorer> {
    match scorer {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// The training documents of `rollouts` (see [`documents`]), each with the teacher's targets
/// when a [`Scorer`] scores them.
fn scored_documents(
    rollouts: &[Rollout],
    max_seq_len: usize,
    scorer: Option<&mut dyn Scorer>,
    k: usize,
) -> Result<Vec<Document>> {
    let mut docs = documents(rollouts, max_seq_len);
    if let Some(scorer) = scorer {
        let targets = scorer.score(&docs, k)?;
        if targets.len() != docs.len() {
            return Err(Error::Batch(format!(
                "the teacher scored {} of {} samples",
                targets.len(),
                docs.len()
            )));
        }
        for (doc, t) in docs.iter_mut().zip(targets) {
            let labelled = doc.labels.iter().filter(|&&l| l != IGNORE).count();
            if t.len() != labelled || t.k != k {
                return Err(Error::Batch(format!(
                    "the teacher scored {} positions of {k} where a sample labels {labelled}",
                    t.len()
                )));
            }
            doc.teacher = Some(t);
        }
    }
    Ok(docs)
}

/// What a step's samples looked like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutStats {
    pub samples: usize,
    /// Mean completion tokens.
    pub mean_tokens: f64,
    /// Share of samples that ended on their end-of-turn token.
    pub stopped: f64,
    /// Wall time of the sampling.
    pub sampling: Duration,
}

/// One evaluation on the held-out slice.
#[derive(Debug, Clone, PartialEq)]
pub struct OnPolicyEval {
    pub step: u64,
    /// Mean per-token divergence from the teacher on the student's samples.
    pub kd: f64,
    /// Share of problems answered correctly (`None` when none has a reference answer).
    pub pass_rate: Option<f64>,
    pub rollouts: RolloutStats,
}

/// The data of an on-policy run: prompts to train on, held-out prompts to evaluate on, and the
/// longest prompt + completion a row holds.
pub struct OnPolicyData<'a> {
    pub train: &'a [Prompt],
    pub held_out: &'a [Prompt],
    pub max_seq_len: usize,
}

/// Refuses a pair whose turns end differently: the student's end-of-turn token (`student`,
/// else its first stop id) must be one of the teacher's stop ids, or the divergence teaches the
/// student never to stop (the known failure of on-policy distillation). `describe` names ids.
pub fn check_end_of_turn(
    student_end: Option<u32>,
    student_stops: &[u32],
    teacher_stops: &[u32],
    describe: &dyn Fn(u32) -> String,
) -> Result<()> {
    let Some(end) = student_end.or(student_stops.first().copied()) else {
        return Err(Error::Config(
            "the student has no end-of-turn token: on-policy samples would never stop".into(),
        ));
    };
    if teacher_stops.contains(&end) {
        return Ok(());
    }
    let teacher: Vec<String> = teacher_stops.iter().map(|&i| describe(i)).collect();
    Err(Error::Config(format!(
        "the student ends its turns with {} but the teacher stops on {}: on-policy distillation would teach the student never to stop; give both the same chat template and end-of-turn token",
        describe(end),
        if teacher.is_empty() {
            "no token".to_string()
        } else {
            teacher.join(", ")
        }
    )))
}

/// A sample's seed from the run seed and a counter (splitmix64 of both: nearby counters give
/// unrelated streams).
fn sample_seed(run_seed: u64, salt: u64, counter: u64) -> u64 {
    let mut z = run_seed ^ salt.rotate_left(32) ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const TRAIN_SALT: u64 = 0x0D15_7111;
const EVAL_SALT: u64 = 0xE7A1;

/// The training documents of `rollouts`: the prompt unlabelled, every sampled token labelled
/// (its end-of-turn token included), cut at `max_seq_len`.
fn documents(rollouts: &[Rollout], max_seq_len: usize) -> Vec<Document> {
    rollouts
        .iter()
        .filter(|r| r.prompt_ids.len() < max_seq_len && !r.completion_ids.is_empty())
        .map(|r| {
            let mut ids = r.prompt_ids.clone();
            ids.extend_from_slice(&r.completion_ids);
            ids.truncate(max_seq_len);
            Document::from_boundary(ids, r.prompt_ids.len())
        })
        .collect()
}

fn stats(rollouts: &[Rollout], sampling: Duration) -> RolloutStats {
    let n = rollouts.len().max(1) as f64;
    RolloutStats {
        samples: rollouts.len(),
        mean_tokens: rollouts
            .iter()
            .map(|r| r.completion_ids.len() as f64)
            .sum::<f64>()
            / n,
        stopped: rollouts.iter().filter(|r| r.stopped).count() as f64 / n,
        sampling,
    }
}

/// What identifies the prompts a run trains on, for the resume check.
fn fingerprint(prompts: &[Prompt]) -> DatasetFingerprint {
    let mut h = twox_hash::XxHash3_64::new();
    let mut chars = 0u64;
    for p in prompts {
        h.write(p.key.as_bytes());
        for m in &p.messages {
            h.write(m.role.as_bytes());
            h.write(m.content.as_bytes());
            chars += m.content.len() as u64;
        }
    }
    DatasetFingerprint {
        rows: prompts.len() as u64,
        tokens: chars,
        hash: h.finish(),
    }
}

impl Trainer {
    /// Trains by on-policy distillation (`config.opd`, the teacher of [`Trainer::set_teacher`])
    /// until the planned steps: `max_steps`, else `epochs` passes over `data.train` at
    /// `prompts_per_step` a step. Evaluates on the first `eval_problems` of `data.held_out` at
    /// the start, every `eval_every` steps and at the end; checkpoints and stops as [`Self::fit`].
    pub fn fit_on_policy(
        &mut self,
        data: &OnPolicyData<'_>,
        sampler: &mut dyn Sampler,
        mut scorer: Option<&mut dyn Scorer>,
        checkpoint_dir: Option<&Path>,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<FitSummary> {
        let opd = self
            .config
            .opd
            .clone()
            .ok_or_else(|| Error::Config("the training config has no `opd` section".into()))?;
        match (kd_term(&self.config.kd, &self.teacher)?, scorer.is_some()) {
            (Some((kd, None)), true) if kd.is_endpoint() => {}
            (Some((_, Some(_))), false) => {}
            (_, true) => {
                return Err(Error::Config(
                    "a scorer stands for an endpoint teacher: `kd.teacher` must be its URL".into(),
                ))
            }
            _ => {
                return Err(Error::Config(
                    "on-policy distillation needs a live teacher (`kd.teacher`)".into(),
                ))
            }
        }
        let k = self.config.kd.as_ref().map_or(0, |kd| kd.top_k);
        if data.train.is_empty() {
            return Err(Error::NoData("the corpus has no prompts to sample".into()));
        }
        let per_step = opd.prompts_per_step as u64;
        let total = self.config.on_policy_steps(data.train.len());
        self.plan(
            fingerprint(data.train),
            total,
            checkpoint_dir,
            |saved, now| {
                format!(
                    "the prompts differ (checkpoint: `{}` problems, now `{}`)",
                    saved.rows, now.rows
                )
            },
        )?;
        let held_out = &data.held_out[..data.held_out.len().min(opd.eval_problems)];
        let train_sampling = Sampling {
            temperature: opd.temperature,
            top_p: opd.top_p,
            max_new_tokens: opd.max_new_tokens,
            prefill: opd.prefill.clone(),
        };
        let mut summary = self.summary_so_far();
        let evaluate = |trainer: &mut Self,
                        sampler: &mut dyn Sampler,
                        scorer: Option<&mut dyn Scorer>,
                        on_event: &mut dyn FnMut(&Event) -> Control|
         -> Result<Option<f64>> {
            if held_out.is_empty() {
                return Ok(None);
            }
            let eval =
                trainer.evaluate_on_policy(held_out, sampler, scorer, &opd, data.max_seq_len)?;
            trainer.state.evals.push((eval.step, eval.kd));
            on_event(&Event::OnPolicyEval(&eval));
            Ok(Some(eval.kd))
        };
        if self.state.step == 0 {
            summary.eval_loss = evaluate(self, sampler, reborrow(&mut scorer), on_event)?;
        }
        let mut evaluated_at = Some(0);
        while self.state.step < total {
            let start = Instant::now();
            let requests: Vec<RolloutRequest> = (0..per_step)
                .map(|i| {
                    let g = self.state.rows_consumed + i;
                    let index = self.stream_index(g, data.train.len());
                    RolloutRequest {
                        prompt: &data.train[index],
                        seed: sample_seed(self.config.seed, TRAIN_SALT, g),
                    }
                })
                .collect();
            let rollouts = sampler.sample(self.inference_model()?, &requests, &train_sampling)?;
            let rollout_stats = stats(&rollouts, start.elapsed());
            let docs = scored_documents(&rollouts, data.max_seq_len, reborrow(&mut scorer), k)?;
            let rows = pack(&docs, data.max_seq_len, true)?;
            if rows.is_empty() {
                return Err(Error::NoData(format!(
                    "no sample of step {} has a token to train on (every prompt is at least `max_seq_len` `{}` tokens long)",
                    self.state.step + 1,
                    data.max_seq_len
                )));
            }
            let micro: Vec<Vec<&PackedRow>> = rows
                .chunks(self.config.micro_batch_size)
                .map(|c| c.iter().collect())
                .collect();
            let mut metrics = self.train_step(&micro)?;
            // The objective is the divergence alone: report it as the step's loss (the
            // cross-entropy of the student's own samples measures only their entropy).
            metrics.loss = metrics.kd.unwrap_or(metrics.loss);
            if let Some(last) = self.state.history.last_mut() {
                last.loss = metrics.loss;
            }
            metrics.elapsed = start.elapsed();
            metrics.rollouts = Some(rollout_stats);
            self.state.rows_consumed += per_step;
            summary.steps = metrics.step;
            summary.last_loss = Some(metrics.loss);
            let stop = on_event(&Event::Step(&metrics)) == Control::Stop;
            let step = self.state.step;
            let every = |n: u64| n > 0 && step.is_multiple_of(n);
            if every(self.config.eval_every) {
                summary.eval_loss =
                    evaluate(self, sampler, reborrow(&mut scorer), on_event)?.or(summary.eval_loss);
                evaluated_at = Some(step);
            }
            // The last step's checkpoint is the final one, written after the loop.
            if (every(self.config.checkpoint_every) && step < total) || stop {
                self.checkpoint_now(checkpoint_dir, &mut summary, on_event)?;
            }
            if stop {
                summary.stopped = true;
                return Ok(summary);
            }
        }
        if evaluated_at != Some(self.state.step) {
            summary.eval_loss =
                evaluate(self, sampler, reborrow(&mut scorer), on_event)?.or(summary.eval_loss);
        }
        self.final_checkpoint(checkpoint_dir, &mut summary, on_event);
        Ok(summary)
    }

    /// Samples `held_out` once each (fixed seeds, the evaluation sampling) and measures the pass
    /// rate, the stop share and the divergence from the teacher on those samples.
    pub fn evaluate_on_policy(
        &self,
        held_out: &[Prompt],
        sampler: &mut dyn Sampler,
        scorer: Option<&mut dyn Scorer>,
        opd: &OpdConfig,
        max_seq_len: usize,
    ) -> Result<OnPolicyEval> {
        let start = Instant::now();
        let requests: Vec<RolloutRequest> = held_out
            .iter()
            .enumerate()
            .map(|(j, prompt)| RolloutRequest {
                prompt,
                seed: sample_seed(self.config.seed, EVAL_SALT, j as u64),
            })
            .collect();
        let sampling = Sampling {
            temperature: opd.eval_temperature,
            top_p: opd.eval_top_p,
            max_new_tokens: opd.max_new_tokens,
            prefill: opd.prefill.clone(),
        };
        let rollouts = sampler.sample(self.inference_model()?, &requests, &sampling)?;
        let rollout_stats = stats(&rollouts, start.elapsed());
        let judged: Vec<bool> = held_out
            .iter()
            .zip(&rollouts)
            .filter_map(|(p, r)| {
                let completion = split_think(&r.text).completion;
                verify(&completion, p.reference.as_deref()).1
            })
            .collect();
        let pass_rate = (!judged.is_empty())
            .then(|| judged.iter().filter(|&&c| c).count() as f64 / judged.len() as f64);
        let k = self.config.kd.as_ref().map_or(0, |kd| kd.top_k);
        let docs = scored_documents(&rollouts, max_seq_len, scorer, k)?;
        let rows = pack(&docs, max_seq_len, true)?;
        let kd = kd_term(&self.config.kd, &self.teacher)?;
        // The sampler took its model; this one shares the same weights.
        let model = self.inference_model()?;
        let (mut sum, mut labels) = (0f64, 0usize);
        for chunk in rows.chunks(self.config.micro_batch_size) {
            let refs: Vec<&PackedRow> = chunk.iter().collect();
            labels += chunk.iter().map(|r| r.label_count()).sum::<usize>();
            let parts =
                micro_batch_loss(&model, &refs, 1.0, self.config.loss_chunk_size, kd, None)?;
            sum += parts.divergence.unwrap_or(0.0);
        }
        Ok(OnPolicyEval {
            step: self.state.step,
            kd: sum / labels.max(1) as f64,
            pass_rate,
            rollouts: rollout_stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(id: &str, problem: &str, messages: &[(&str, &str)]) -> Conversation {
        Conversation {
            id: id.into(),
            problem_id: Some(problem.into()),
            messages: messages
                .iter()
                .map(|(r, c)| Message::new(r.to_string(), c.to_string()))
                .collect(),
            finish_reason: None,
            reference_answer: Some("4".into()),
            teacher_logprobs: None,
        }
    }

    #[test]
    fn prompts_are_distinct_problems_without_the_answer() {
        let convs = vec![
            conv("a/0", "a", &[("user", "2+2?"), ("assistant", "4")]),
            conv("a/1", "a", &[("user", "2+2?"), ("assistant", "5")]),
            conv(
                "b/0",
                "b",
                &[("system", "s"), ("user", "3+1?"), ("assistant", "4")],
            ),
        ];
        let (train, held_out) = prompts(&convs, 0.0);
        assert!(held_out.is_empty());
        assert_eq!(train.len(), 2);
        assert_eq!(train[0].key, "a");
        assert_eq!(train[0].messages, vec![Message::new("user", "2+2?")]);
        assert_eq!(train[1].messages.len(), 2);
        assert_eq!(train[1].reference.as_deref(), Some("4"));
        // The held-out side is the SFT trainer's: the same hash of the problem id.
        let many: Vec<Conversation> = (0..400)
            .map(|i| {
                conv(
                    &format!("p{i}/0"),
                    &format!("p{i}"),
                    &[("user", "q"), ("assistant", "a")],
                )
            })
            .collect();
        let (train, held_out) = prompts(&many, 0.1);
        assert_eq!(train.len() + held_out.len(), 400);
        assert!((20..=60).contains(&held_out.len()), "{}", held_out.len());
        assert!(held_out.iter().all(|p| is_eval(&p.key, 0.1)));
    }

    #[test]
    fn documents_label_the_sample_and_its_end_of_turn() {
        let r = Rollout {
            prompt_ids: vec![1, 2, 3],
            completion_ids: vec![7, 8, 9],
            text: String::new(),
            stopped: true,
        };
        let docs = documents(std::slice::from_ref(&r), 16);
        assert_eq!(docs[0].input_ids, vec![1, 2, 3, 7, 8, 9]);
        assert_eq!(docs[0].labels, vec![-100, -100, 7, 8, 9, -100]);
        // Cut at max_seq_len; a prompt that fills the row leaves nothing to train.
        let docs = documents(std::slice::from_ref(&r), 4);
        assert_eq!(docs[0].labels, vec![-100, -100, 7, -100]);
        assert!(documents(&[r], 3).is_empty());
    }

    #[test]
    fn end_of_turn_mismatch_is_refused() {
        let describe = |i: u32| format!("`t{i}` (id {i})");
        assert!(check_end_of_turn(Some(5), &[5], &[5, 2], &describe).is_ok());
        let e = check_end_of_turn(Some(5), &[5], &[9], &describe)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`t5` (id 5)") && e.contains("`t9` (id 9)") && e.contains("never to stop"),
            "{e}"
        );
    }

    #[test]
    fn seeds_differ_by_counter_and_salt() {
        let a = sample_seed(0, TRAIN_SALT, 0);
        assert_ne!(a, sample_seed(0, TRAIN_SALT, 1));
        assert_ne!(a, sample_seed(0, EVAL_SALT, 0));
        assert_ne!(a, sample_seed(1, TRAIN_SALT, 0));
        assert_eq!(a, sample_seed(0, TRAIN_SALT, 0));
    }
}
