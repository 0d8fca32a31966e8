//! Logit distillation: the divergence between the teacher's and the student's next-token
//! distributions at each position, as TRL's GKD trainer (`generalized_jsd_loss`) defines it, so
//! a recipe tuned there means the same here.
//!
//! `beta` picks the divergence: 0 is the forward KL(teacher ‖ student) (classic KD: the student
//! covers every mode of the teacher), 1 the reverse KL(student ‖ teacher) (mode seeking: what
//! on-policy distillation minimises on the student's own samples), and a value between is the
//! generalised Jensen-Shannon divergence β·KL(teacher ‖ M) + (1 − β)·KL(student ‖ M) with the
//! mixture M = β·teacher + (1 − β)·student. Both distributions are taken at `temperature`
//! (logits ÷ T) and, as in TRL, the result is not multiplied by T². The loss is the mean over
//! positions of the per-position divergence; it is differentiable in the student's logits (the
//! teacher's are constants). Checked against PyTorch on fixed logits, gradients included
//! (`tests/fixtures/make_kd_losses.py`).

use candle_core::{DType, Tensor, D};
use candle_nn::ops::log_softmax;
use distill_models::{cuda, Model};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Logit distillation in `distill train` (`[train.kd]`): the loss is
/// `(1 − weight) · cross-entropy + weight · divergence`, both averaged over the step's label
/// tokens, where the divergence compares the student's next-token distribution with a frozen
/// teacher's at every labelled position of the same rows (one extra teacher forward per
/// micro-batch, no backward through it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdConfig {
    /// The teacher: a checkpoint distill loads (a Hugging Face folder, a GGUF file, a hub name),
    /// run alongside the student; or, for on-policy distillation, the base URL of an
    /// OpenAI-compatible endpoint that scores given token ids with vLLM's `prompt_logprobs`
    /// (vLLM, `distill serve`), which then returns its `top_k` tokens per position. Recorded so
    /// that a resume with another teacher is refused.
    pub teacher: String,
    /// The endpoint's model name (`teacher` a URL); empty: the endpoint's only model.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub teacher_model: String,
    /// The environment variable holding the endpoint's API key (`teacher` a URL); empty: no key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub teacher_api_key_env: String,
    /// Use the teacher's top-k distributions stored in the corpus (`generate --logprobs K`)
    /// instead of a live teacher: no teacher forward, no teacher memory; the divergence is
    /// computed on the stored `K` tokens at the positions of the teacher's own sample.
    pub from_corpus: bool,
    /// Share of the divergence in the loss (0: cross-entropy only, 1: divergence only).
    pub weight: f64,
    /// 0: forward KL, 1: reverse KL, between: generalised JSD (see [`Divergence`]).
    pub beta: f64,
    /// Both distributions are softmax(logits / temperature).
    pub temperature: f64,
    /// Compare the distributions on the teacher's `top_k` most likely tokens at each position
    /// (both renormalised there), as a corpus of stored top-k log-probabilities does; 0 uses
    /// the whole vocabulary.
    pub top_k: usize,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            teacher: String::new(),
            teacher_model: String::new(),
            teacher_api_key_env: String::new(),
            from_corpus: false,
            weight: 0.5,
            beta: 0.0,
            temperature: 1.0,
            top_k: 0,
        }
    }
}

impl KdConfig {
    /// Whether the teacher is an endpoint (`http://…`, `https://…`) rather than a checkpoint.
    pub fn is_endpoint(&self) -> bool {
        is_endpoint(&self.teacher)
    }

    pub fn divergence(&self) -> Divergence {
        Divergence {
            beta: self.beta,
            temperature: self.temperature,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match (self.teacher.is_empty(), self.from_corpus) {
            (true, false) => {
                return Err(Error::Config(
                    "`kd` needs a teacher: set `kd.teacher` to a checkpoint or `kd.from_corpus = true`"
                        .into(),
                ))
            }
            (false, true) => {
                return Err(Error::Config(
                    "`kd.teacher` and `kd.from_corpus` exclude each other: a live teacher or the corpus's stored distributions".into(),
                ))
            }
            _ => {}
        }
        if self.is_endpoint() && self.top_k == 0 {
            return Err(Error::Config(format!(
                "the endpoint teacher `{}` returns its top-k log-probabilities only: set `kd.top_k` (`--kd-top-k`; vLLM serves up to its `--max-logprobs`, 20 by default)",
                self.teacher
            )));
        }
        let endpoint_fields =
            !self.teacher_model.is_empty() || !self.teacher_api_key_env.is_empty();
        if endpoint_fields && !self.is_endpoint() {
            return Err(Error::Config(format!(
                "`kd.teacher_model` and `kd.teacher_api_key_env` are an endpoint's, but the teacher `{}` is a checkpoint",
                self.teacher
            )));
        }
        if self.from_corpus && self.top_k > 0 {
            return Err(Error::Config(
                "`kd.top_k` picks a live teacher's tokens; with `kd.from_corpus` the corpus's stored `K` are used".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(Error::Config(format!(
                "`kd.weight` must be in [0, 1], got `{}`",
                self.weight
            )));
        }
        self.divergence().validate()
    }
}

/// Whether a teacher argument names an endpoint (`http://…`, `https://…`) rather than a
/// checkpoint.
pub fn is_endpoint(teacher: &str) -> bool {
    let t = teacher.trim_start();
    t.starts_with("http://") || t.starts_with("https://")
}

/// The frozen teacher of a logit-distillation run: any model distill runs (a GGUF teacher
/// stays quantized), on the trainer's device.
pub struct Teacher {
    model: Model,
}

impl Teacher {
    /// `model` must share the student's vocabulary (checked by the caller against the
    /// tokenizers, see `TextTokenizer::first_difference`).
    pub fn new(model: Model) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The teacher's final hidden states `[positions.len(), hidden]` (no gradient) at the
    /// flat `positions` of a `[batch, ids.len() / batch]` grid of ids and position ids.
    pub fn hidden_at(
        &self,
        ids: &[u32],
        position_ids: &[u32],
        batch: usize,
        positions: &[u32],
    ) -> Result<Tensor> {
        let hidden = self.model.forward_hidden_host(ids, position_ids, batch)?;
        let hidden = hidden.reshape((ids.len(), self.model.spec().hidden_size))?;
        let index = Tensor::new(positions, self.model.device())?;
        Ok(hidden.index_select(&index, 0)?.detach())
    }

    /// The teacher's logits (f32) for rows of [`Self::hidden_at`].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.model.lm_head().forward(hidden)?;
        Ok(logits.to_dtype(DType::F32)?.detach())
    }
}

/// The summed divergence at stored targets: the student's logits at each target's `k` stored
/// ids against the stored log-probabilities (float16 bits), both renormalised over those ids,
/// which is what [`divergence_sum`] computes from a live teacher's logits with `top_k = k`
/// (log-probabilities differ from logits by a per-position constant). `hidden` `[targets,
/// hidden]` are the student's final hidden states there and `head` `[vocab, hidden]` its output
/// layer: only the `k` rows of the head each target names are multiplied, never the whole
/// vocabulary (k·hidden instead of vocab·hidden per target, and no `[targets, vocab]` logits in
/// memory: 1/7,500 of it for Qwen's 151,936-token vocabulary at k = 20).
pub fn stored_divergence_sum(
    config: &KdConfig,
    hidden: &Tensor,
    head: &Tensor,
    k: usize,
    ids: &[u32],
    logprobs: &[u16],
) -> Result<Tensor> {
    let targets = hidden.dim(0)?;
    let vocab = head.dim(0)?;
    if ids.len() != targets * k || logprobs.len() != targets * k {
        return Err(Error::Batch(format!(
            "{} stored ids and {} log-probabilities for {targets} targets of {k}",
            ids.len(),
            logprobs.len()
        )));
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Batch(format!(
            "the corpus's teacher token `{id}` is outside the student's vocabulary of {vocab}: was the corpus generated with another tokenizer?"
        )));
    }
    let device = hidden.device();
    let student = logits_at(
        hidden,
        head,
        &Tensor::from_slice(ids, (targets, k), device)?,
    )?
    .to_dtype(DType::F32)?;
    let teacher: Vec<f32> = logprobs
        .iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect();
    summed(
        config,
        &student,
        &Tensor::from_vec(teacher, (targets, k), device)?,
    )
}

/// The student's logits at `ids` `[positions, k]` only: row `p` of `hidden` `[positions,
/// hidden]` times the `k` rows of `head` `[vocab, hidden]` that `ids[p]` names, `[positions,
/// k]`. Differentiable in `hidden` and `head` (the gradient reaches those `k` rows alone).
pub fn logits_at(hidden: &Tensor, head: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (positions, k) = ids.dims2()?;
    let width = hidden.dim(1)?;
    // [positions, k, hidden] × [positions, hidden, 1]: each position's logits at its own ids.
    let rows = head
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((positions, k, width))?;
    Ok(rows
        .matmul(&hidden.unsqueeze(2)?.contiguous()?)?
        .squeeze(2)?)
}

/// The ids of each row's `k` largest logits, `[positions, vocab]` → `[positions, k]` (u32),
/// largest first, ties to the lower id on the CPU (the engine's stored top-k's ranking,
/// `distill_models::ops::top_k_ids`). Not a sort
/// of the whole row: candle's CUDA `arg_sort` holds a row in one block's shared memory (4
/// bytes per column rounded up to a power of two: 1 MiB for 151,936 columns, over the 227 KiB
/// a block may have), and sorting 151,936 values to keep 20 is wasted work anyway. On the CPU
/// a partial selection per row on the host; on a CUDA device one pass of a kernel
/// ([`cuda::top_k`], k ≤ 32); elsewhere `k` rounds of arg-max and masking, on the device.
pub fn top_k_ids(logits: &Tensor, k: usize) -> Result<Tensor> {
    let k = k.min(logits.dim(1)?);
    if logits.device().is_cpu() {
        top_k_ids_host(logits, k)
    } else if k > 0 && k <= cuda::TOP_K_MAX && cuda::supported(logits) {
        Ok(cuda::top_k(logits, k)?)
    } else {
        top_k_ids_by_max(logits, k)
    }
}

fn top_k_ids_host(logits: &Tensor, k: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    let (positions, vocab) = logits.dims2()?;
    let values = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut ids = vec![0u32; positions * k];
    ids.par_chunks_mut(k.max(1))
        .zip(values.par_chunks(vocab.max(1)))
        .for_each(|(out, row)| out.copy_from_slice(&distill_models::ops::top_k_ids(row, k)));
    Ok(Tensor::from_vec(ids, (positions, k), logits.device())?)
}

/// [`top_k_ids`] with device ops alone: `k` rounds of arg-max, each winner then masked to −∞.
fn top_k_ids_by_max(logits: &Tensor, k: usize) -> Result<Tensor> {
    let (positions, vocab) = logits.dims2()?;
    let device = logits.device();
    let mut rest = logits.to_dtype(DType::F32)?.contiguous()?;
    let columns = Tensor::arange(0u32, vocab as u32, device)?.unsqueeze(0)?;
    let masked = Tensor::full(f32::NEG_INFINITY, (positions, vocab), device)?;
    let mut ids = Vec::with_capacity(k);
    for _ in 0..k {
        let id = rest.argmax_keepdim(D::Minus1)?;
        rest = columns.broadcast_eq(&id)?.where_cond(&masked, &rest)?;
        ids.push(id);
    }
    Ok(Tensor::cat(&ids, 1)?)
}

/// [`divergence_sum`] from the student's final hidden states `[positions, hidden]` and output
/// layer `head` `[vocab, hidden]`: with `top_k` the student's logits are made at the teacher's
/// `top_k` ids alone ([`logits_at`]), never over the whole vocabulary; without it, in full.
pub fn live_divergence_sum(
    config: &KdConfig,
    hidden: &Tensor,
    head: &Tensor,
    teacher_logits: &Tensor,
) -> Result<Tensor> {
    let vocab = head.dim(0)?.min(teacher_logits.dim(1)?);
    match teacher_top_k(config, teacher_logits, vocab)? {
        Some((top, teacher)) => summed(
            config,
            &logits_at(hidden, head, &top)?.to_dtype(DType::F32)?,
            &teacher,
        ),
        None => divergence_sum(config, &hidden.matmul(&head.t()?)?, teacher_logits),
    }
}

/// The summed per-position divergence of a micro-batch (not yet scaled): the student's logits
/// `[positions, vocab]` against the teacher's, on the whole vocabulary or on the teacher's
/// `top_k` tokens per position. Both are cut to the smaller vocabulary (checkpoints often pad
/// their embedding tables past the tokenizer's last id; the padding is never a target).
pub fn divergence_sum(
    config: &KdConfig,
    student_logits: &Tensor,
    teacher_logits: &Tensor,
) -> Result<Tensor> {
    let vocab = student_logits.dim(1)?.min(teacher_logits.dim(1)?);
    let student = student_logits.narrow(1, 0, vocab)?.to_dtype(DType::F32)?;
    match teacher_top_k(config, teacher_logits, vocab)? {
        Some((top, teacher)) => summed(config, &student.gather(&top, 1)?, &teacher),
        None => summed(config, &student, &teacher_logits.narrow(1, 0, vocab)?),
    }
}

/// With `top_k` (below `vocab`): the ids of the teacher's `top_k` largest logits among its
/// first `vocab` at each position, `[positions, top_k]`, and its logits there.
fn teacher_top_k(
    config: &KdConfig,
    teacher_logits: &Tensor,
    vocab: usize,
) -> Result<Option<(Tensor, Tensor)>> {
    if config.top_k == 0 || config.top_k >= vocab {
        return Ok(None);
    }
    // Contiguous: a teacher whose table is padded further (Qwen2.5-7B's 152,064 rows against
    // 1.5B's 151,936) is a strided view here.
    let teacher = teacher_logits.narrow(1, 0, vocab)?.contiguous()?;
    let top = top_k_ids(&teacher, config.top_k)?;
    let at_top = teacher.gather(&top, 1)?;
    Ok(Some((top, at_top)))
}

/// The divergence of `config` summed over positions.
fn summed(config: &KdConfig, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    Ok(config
        .divergence()
        .per_position(student, teacher)?
        .sum_all()?)
}

/// The divergence and its temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// 0: forward KL, 1: reverse KL, between: generalised JSD (TRL's `beta`).
    pub beta: f64,
    /// Both distributions are softmax(logits / temperature).
    pub temperature: f64,
}

impl Divergence {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(Error::Config(format!(
                "the divergence's `beta` must be in [0, 1], got `{}`",
                self.beta
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "the divergence's `temperature` must be positive, got `{}`",
                self.temperature
            )));
        }
        Ok(())
    }

    /// Mean over positions of the divergence between `student_logits` and `teacher_logits`,
    /// both `[positions, vocab]`.
    pub fn loss(&self, student_logits: &Tensor, teacher_logits: &Tensor) -> Result<Tensor> {
        let positions = student_logits.dim(0)?;
        Ok((self
            .per_position(student_logits, teacher_logits)?
            .sum_all()?
            / positions as f64)?)
    }

    /// The divergence at each position, `[positions, 1]`, differentiable in `student_logits`.
    ///
    /// The value and its gradient are computed apart, outside the autograd graph, and joined
    /// as `value + ⟨z, g⟩ − stop(⟨z, g⟩)` (z the student's logits, g = ∂divergence/∂z): the same
    /// number, the same gradient, but backward keeps two `[positions, vocab]` tensors per
    /// call (z and g) instead of every intermediate of the log-softmaxes and the mixture (about
    /// nine), which on a real vocabulary is most of a distillation step's memory. With
    /// p = softmax(z/T), s = log p, t the teacher's log-probabilities at T:
    /// - forward KL Σ pₜ(t − s): g = (p − pₜ)/T;
    /// - reverse KL L = Σ p(s − t): g = p·((s − t) − L)/T;
    /// - JSD with m = log((1 − β)p + βpₜ): ∂L/∂p = (1 − β)(s − m) =: h, g = p·(h − Σ p·h)/T.
    pub fn per_position(&self, student_logits: &Tensor, teacher_logits: &Tensor) -> Result<Tensor> {
        self.validate()?;
        let (positions, vocab) = student_logits.dims2()?;
        if teacher_logits.dims() != [positions, vocab] {
            return Err(Error::Batch(format!(
                "teacher logits {:?} and student logits {:?} differ in shape",
                teacher_logits.dims(),
                student_logits.dims()
            )));
        }
        let scale = 1.0 / self.temperature;
        let s = log_softmax(&(student_logits.detach() * scale)?, D::Minus1)?;
        let t = log_softmax(&(teacher_logits.detach() * scale)?, D::Minus1)?;
        let p = s.exp()?;
        let (value, grad) = if self.beta == 0.0 {
            let p_t = t.exp()?;
            let value = (&p_t * (&t - &s)?)?.sum_keepdim(D::Minus1)?;
            (value, ((&p - &p_t)? * scale)?)
        } else if self.beta == 1.0 {
            let gap = (&s - &t)?;
            let value = (&p * &gap)?.sum_keepdim(D::Minus1)?;
            let grad = ((&p * gap.broadcast_sub(&value)?)? * scale)?;
            (value, grad)
        } else {
            // log M = logsumexp(log(1 − β) + s, log β + t), elementwise, with the max trick.
            let a = (&s + (1.0 - self.beta).ln())?;
            let b = (&t + self.beta.ln())?;
            let top = a.maximum(&b)?;
            let m =
                ((a.broadcast_sub(&top)?.exp()? + b.broadcast_sub(&top)?.exp()?)?.log()? + &top)?;
            let value = ((kl(&t, &m)? * self.beta)? + (kl(&s, &m)? * (1.0 - self.beta))?)?;
            let h = ((&s - &m)? * (1.0 - self.beta))?;
            let mean = (&p * &h)?.sum_keepdim(D::Minus1)?;
            let grad = ((&p * h.broadcast_sub(&mean)?)? * scale)?;
            (value, grad)
        };
        // value + (⟨z, g⟩ − stop(⟨z, g⟩)): exactly `value` forward, gradient g backward.
        let inner = (student_logits * &grad)?.sum_keepdim(D::Minus1)?;
        Ok((value + (&inner - inner.detach())?)?)
    }
}

/// KL(p ‖ q) summed over every element, from log-probabilities.
fn kl(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    Ok((log_p.exp()? * (log_p - log_q)?)?.sum_keepdim(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Both ways of picking the top k agree with a full sort of each row, on rows wider than
    /// candle's CUDA sort takes (70,000 columns) and with a tie (which the CPU gives the lower
    /// id).
    #[test]
    fn top_k_ids_are_the_sorts_first_k() {
        let (positions, vocab, k) = (6, 70_000, 20);
        let mut state = 11u32;
        let mut values: Vec<f32> = (0..positions * vocab)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 8) % 100_000) as f32 / 1000.0
            })
            .collect();
        // Row 0: a tie at the top, and the largest value of all in its last column.
        values[5] = 500.0;
        values[9] = 500.0;
        values[vocab - 1] = 600.0;
        let logits = Tensor::from_vec(values.clone(), (positions, vocab), &Device::Cpu).unwrap();
        let mut expected = Vec::new();
        for row in values.chunks(vocab) {
            let mut ids: Vec<u32> = (0..vocab as u32).collect();
            ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            expected.push(ids[..k].to_vec());
        }
        assert_eq!(&expected[0][..3], &[vocab as u32 - 1, 5, 9]);
        for ids in [
            top_k_ids(&logits, k).unwrap(),
            top_k_ids_by_max(&logits, k).unwrap(),
        ] {
            assert_eq!(ids.dims(), [positions, k]);
            assert_eq!(ids.to_vec2::<u32>().unwrap(), expected);
        }
        // k past the vocabulary: every id, in order.
        let small = Tensor::new(&[[1f32, 3.0, 2.0]], &Device::Cpu).unwrap();
        assert_eq!(
            top_k_ids(&small, 5).unwrap().to_vec2::<u32>().unwrap(),
            [[1, 2, 0]]
        );
    }
}
