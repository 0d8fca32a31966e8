//! Scoring given text: a model's log-probability of every token of a sequence given the tokens
//! before it, with its `k` most likely tokens at each position. This is what vLLM returns as
//! `prompt_logprobs` and what `distill serve` answers on `/v1/completions`, so a teacher served by
//! either can score a student's samples token by token (on-policy distillation).

use distill_models::transformer::Logits;
use distill_models::Model;

use crate::engine::top_logprobs;
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
    let vocab = model.spec().vocab_size;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Config(format!(
            "token id {id} is outside the model's vocabulary of {vocab}"
        )));
    }
    let mut cache = model.new_cache();
    let mut scores = Vec::with_capacity(ids.len().saturating_sub(1));
    let mut after = None;
    // Without `next`, the last token predicts nothing that is scored.
    let context = match next {
        true => ids,
        false => &ids[..ids.len().saturating_sub(1)],
    };
    for (c, chunk) in context.chunks(CHUNK).enumerate() {
        let logits = model
            .step(&mut [(chunk, &mut cache)], Logits::All)?
            .remove(0)
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        for (j, row) in logits.iter().enumerate() {
            let Some(&token) = ids.get(c * CHUNK + j + 1) else {
                let (_, top) = top_logprobs(row, 0, k.max(1));
                after = top.first().map(|&(best, logprob)| {
                    let score = TokenScore {
                        logprob,
                        rank: 1,
                        top: top[..k.min(top.len())].to_vec(),
                        text: None,
                    };
                    (best, score)
                });
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
    }
    Ok((scores, after))
}
