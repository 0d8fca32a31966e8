//! Scoring given text: a model's log-probability of every token of a sequence given the tokens
//! before it, with its `k` most likely tokens at each position. This is what vLLM returns as
//! `prompt_logprobs` and what `distill serve` answers on `/v1/completions`, so a teacher served by
//! either can score a student's samples token by token (on-policy distillation).

use distill_models::transformer::Logits;
use distill_models::Model;

use crate::engine::{outside_vocabulary, top_logprobs};
use crate::{Error, Result};

/// Positions run through the model at once: bounds the `[positions, vocab]` logits held at a
/// time (a 151k vocabulary makes 600 KB of f32 per position).
const CHUNK: usize = 256;

/// The model's view of one token of a scored sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    /// The token's log-probability given the tokens before it (temperature 1, no filter).
    pub logprob: f32,
    /// 1 + the number of tokens the model found strictly more likely (vLLM's `rank`).
    pub rank: u32,
    /// The `k` most likely tokens there and their log-probabilities, most likely first (ties by
    /// id).
    pub top: Vec<(u32, f32)>,
    /// The token's text as the scorer decoded it (an endpoint's `decoded_token`), which lets
    /// a caller check that both sides read the ids with the same vocabulary.
    pub text: Option<String>,
}

/// The most likely token after a prompt, and its score.
pub type NextToken = (u32, TokenScore);

/// Scores `ids[1..]`: entry `i` is token `ids[i + 1]` given `ids[..=i]` (the first token has no
/// context, as vLLM's `prompt_logprobs[0]` is `null`). The model runs over the whole sequence in
/// chunks of its KV cache, so memory stays bounded for long samples.
pub fn score_tokens(model: &Model, ids: &[u32], k: usize) -> Result<Vec<TokenScore>> {
    Ok(score_prompt(model, ids, k, false)?.0)
}

/// [`score_tokens`], and with `next` also the most likely token after the last one and its
/// score (what a `/v1/completions` request for one token at temperature 0 answers).
pub fn score_prompt(
    model: &Model,
    ids: &[u32],
    k: usize,
    next: bool,
) -> Result<(Vec<TokenScore>, Option<NextToken>)> {
    let mut scored = score_prompts(model, &[ids], k, next)?;
    Ok(scored.remove(0))
}

/// Positions of all sequences run through the model in one step of [`score_prompts`]: bounds
/// the logits held at once (a 151k vocabulary makes 600 MB of f32 at this many).
const STEP_POSITIONS: usize = 4 * CHUNK;

/// [`score_prompt`] for several prompts, run through the model together: each step takes the
/// next chunk of as many sequences as fit `STEP_POSITIONS` (a ragged batch), so short prompts
/// (an evaluation harness's) share the matrix products instead of running one by one.
pub fn score_prompts(
    model: &Model,
    prompts: &[&[u32]],
    k: usize,
    next: bool,
) -> Result<Vec<(Vec<TokenScore>, Option<NextToken>)>> {
    if let Some(message) = outside_vocabulary(model, prompts.iter().flat_map(|p| p.iter())) {
        return Err(Error::Config(message));
    }
    // Without `next`, the last token predicts nothing that is scored.
    let contexts: Vec<&[u32]> = prompts
        .iter()
        .map(|ids| match next {
            true => *ids,
            false => &ids[..ids.len().saturating_sub(1)],
        })
        .collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut done = vec![0usize; prompts.len()];
    let mut out: Vec<(Vec<TokenScore>, Option<NextToken>)> = prompts
        .iter()
        .map(|ids| (Vec::with_capacity(ids.len().saturating_sub(1)), None))
        .collect();
    loop {
        // The next chunk of each unfinished sequence, in order, while they fit the step.
        let mut members = Vec::new();
        let mut positions = 0;
        for (i, context) in contexts.iter().enumerate() {
            let left = context.len() - done[i];
            if left == 0 {
                continue;
            }
            let take = left.min(CHUNK);
            if !members.is_empty() && positions + take > STEP_POSITIONS {
                break;
            }
            members.push((i, done[i], take));
            positions += take;
        }
        if members.is_empty() {
            return Ok(out);
        }
        // Members are in increasing order: one pass over the caches hands out theirs.
        let mut batch: Vec<(&[u32], &mut distill_models::KvCache)> = Vec::new();
        let mut wanted = members.iter().peekable();
        for (i, cache) in caches.iter_mut().enumerate() {
            if let Some(&(_, from, take)) = wanted.next_if(|m| m.0 == i) {
                batch.push((&contexts[i][from..from + take], cache));
            }
        }
        let logits = model.step(&mut batch, Logits::All)?;
        for (&(i, from, take), logits) in members.iter().zip(logits) {
            let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            let (scores, after) = &mut out[i];
            for (j, row) in rows.iter().enumerate() {
                let Some(&token) = prompts[i].get(from + j + 1) else {
                    *after = next_token(row, k);
                    continue;
                };
                let (logprob, top) = top_logprobs(row, token, k);
                let at = row[token as usize];
                let rank = 1 + row.iter().filter(|&&x| x > at).count() as u32;
                scores.push(TokenScore {
                    logprob,
                    rank,
                    top,
                    text: None,
                });
            }
            done[i] += take;
        }
    }
}

/// The most likely token of a row of logits, scored with `k` alternatives.
fn next_token(row: &[f32], k: usize) -> Option<NextToken> {
    let (_, top) = top_logprobs(row, 0, k.max(1));
    top.first().map(|&(best, logprob)| {
        let score = TokenScore {
            logprob,
            rank: 1,
            top: top[..k.min(top.len())].to_vec(),
            text: None,
        };
        (best, score)
    })
}
