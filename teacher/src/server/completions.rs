//! `POST /v1/completions` in `distill serve`: a raw prompt continued without the chat template
//! (what evaluation harnesses and base-model clients send), or, with vLLM's `prompt_logprobs`,
//! a prompt scored — the served model's log-probability of every prompt token and its `k` most
//! likely tokens at each position. Scoring makes a served teacher usable for on-policy
//! distillation from another machine (`distill train --method opd --kd-teacher http://…`).
//!
//! A request with `prompt_logprobs` (or `max_tokens` 0) scores: `max_tokens` is 0 or 1 (the one
//! token is the most likely next one), and `echo`, `logprobs`, `stream` and `n` > 1 are refused
//! by name rather than ignored. Any other request generates `max_tokens` (OpenAI's default 16)
//! tokens per prompt and choice with the sampling fields of `/v1/chat/completions` (`n`, `seed`,
//! `stop`, `top_k`, `stream`, and `logprobs` in the completions API's own shape); `echo` is
//! refused there. A prompt is a text (tokenised with the model's special tokens, as vLLM
//! does), token ids, or a batch of either.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::choices::Choices;
use super::sse::{Shape, SseStream};
use super::{
    bad, check_model, internal, now, refuse_unapplied, sampling_of, submit_all, ApiError, AppState,
    Sampling, SamplingFields,
};
use crate::backend::GenRequest;
use crate::openai::prompt_logprobs::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, PromptInput,
    PromptLogprob,
};
use crate::openai::wire::Usage;
use crate::score::score_prompt;

pub(super) async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match handle(&state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// A scoring request after validation.
struct Asked {
    prompts: Vec<Vec<u32>>,
    /// Alternatives per position; `None`: no `prompt_logprobs` in the answer.
    top: Option<usize>,
    /// Whether the one next token is asked for (`max_tokens` 1).
    next: bool,
}

async fn handle(state: &Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let raw: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The body is not valid JSON: {e}"), None))?;
    let request: CompletionRequest = serde_json::from_value(raw.clone())
        .map_err(|e| bad(format!("Invalid request: {e}"), None))?;
    check_model(&state.config, request.model.as_deref())?;
    if request.prompt_logprobs.is_none() && request.max_tokens != Some(0) {
        refuse_unapplied(&raw)?;
        return generate(state, request).await;
    }
    let asked = validate(state, request)?;
    let scoring = Arc::clone(state);
    let k = asked.top.unwrap_or(0);
    let (prompts, next) = (asked.prompts, asked.next);
    // The forward runs beside the engine thread's batch, on the same weights.
    let scored = tokio::task::spawn_blocking(move || {
        prompts
            .into_iter()
            .map(|ids| {
                let (scores, after) = score_prompt(scoring.model.model(), &ids, k, next)?;
                Ok((ids, scores, after))
            })
            .collect::<crate::Result<Vec<_>>>()
    })
    .await
    .map_err(|e| internal(format!("scoring stopped: {e}")))?
    .map_err(|e| bad(format!("Cannot score the prompt: {e}"), Some("prompt")))?;
    let name = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
    let mut usage = Usage::default();
    let choices = scored
        .into_iter()
        .enumerate()
        .map(|(index, (ids, scores, after))| {
            usage.prompt_tokens += ids.len() as u64;
            usage.completion_tokens += u64::from(after.is_some());
            let prompt_logprobs = asked.top.map(|_| {
                let mut entries = vec![None];
                entries.extend(scores.iter().zip(&ids[1..]).map(|(s, &token)| {
                    let mut entry: HashMap<u32, PromptLogprob> = s
                        .top
                        .iter()
                        .enumerate()
                        .map(|(r, &(id, logprob))| {
                            let entry = PromptLogprob {
                                logprob: f64::from(logprob),
                                rank: Some(r as u32 + 1),
                                decoded_token: Some(name(id)),
                            };
                            (id, entry)
                        })
                        .collect();
                    entry.entry(token).or_insert_with(|| PromptLogprob {
                        logprob: f64::from(s.logprob),
                        rank: Some(s.rank),
                        decoded_token: Some(name(token)),
                    });
                    Some(entry)
                }));
                entries
            });
            CompletionChoice {
                index: index as u32,
                text: after.map(name).unwrap_or_default(),
                finish_reason: Some("length".into()),
                prompt_logprobs,
                prompt_token_ids: Some(ids),
                logprobs: None,
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let response = CompletionResponse {
        id: format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed) + 1),
        object: "text_completion".into(),
        created: now(),
        model: state.config.model_name.clone(),
        choices,
        usage: Some(usage),
    };
    Ok(Json(response).into_response())
}

fn validate(state: &AppState, request: CompletionRequest) -> Result<Asked, ApiError> {
    const SCORING_ONLY: &str = "`/v1/completions` of `distill serve` scores prompts (`max_tokens` 0 or 1, `prompt_logprobs`); generate with `/v1/chat/completions`";
    if request.stream == Some(true) {
        return Err(bad(
            format!("`stream` is not supported: {SCORING_ONLY}"),
            Some("stream"),
        ));
    }
    if request.echo == Some(true) || request.logprobs.is_some() {
        return Err(bad(
            format!("`echo` and `logprobs` are not supported; ask for `prompt_logprobs`: {SCORING_ONLY}"),
            Some("prompt_logprobs"),
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(bad(format!("`n` must be 1: {SCORING_ONLY}"), Some("n")));
    }
    // OpenAI's default is 16.
    let max_tokens = request.max_tokens.unwrap_or(16);
    if !(0..=1).contains(&max_tokens) {
        return Err(bad(
            format!("`max_tokens` is {max_tokens}: {SCORING_ONLY}"),
            Some("max_tokens"),
        ));
    }
    let top = match request.prompt_logprobs {
        None => None,
        Some(k) if k >= 0 => Some(k as usize),
        Some(k) => {
            return Err(bad(
                format!("`prompt_logprobs` must be at least 0, got {k}"),
                Some("prompt_logprobs"),
            ))
        }
    };
    let prompts = prompt_ids(state, request.prompt)?;
    Ok(Asked {
        prompts,
        top,
        next: max_tokens == 1,
    })
}

/// A request's prompts as token ids: texts tokenised with the model's special tokens.
fn prompt_ids(state: &AppState, prompt: Option<PromptInput>) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |text: &str| {
        state
            .tokenizer
            .encode(text, true)
            .map_err(|e| bad(format!("Cannot tokenise the prompt: {e}"), Some("prompt")))
    };
    let prompts = match prompt {
        None => return Err(bad("`prompt` is required", Some("prompt"))),
        Some(PromptInput::Text(t)) => vec![encode(&t)?],
        Some(PromptInput::Ids(ids)) => vec![ids],
        Some(PromptInput::Texts(ts)) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Some(PromptInput::IdLists(lists)) => lists,
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(bad(
            "every prompt must hold at least one token",
            Some("prompt"),
        ));
    }
    let vocab = state.model.model().spec().vocab_size;
    if let Some(&id) = prompts.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(bad(
            format!("token id {id} is outside the model's vocabulary of {vocab}"),
            Some("prompt"),
        ));
    }
    Ok(prompts)
}

/// Generation: every prompt continued `n` times in the engine's batch, as the chat endpoint
/// does, without the chat template.
async fn generate(state: &Arc<AppState>, request: CompletionRequest) -> Result<Response, ApiError> {
    if request.echo == Some(true) {
        return Err(bad(
            "`echo` is not supported when generating; score a prompt with `prompt_logprobs`",
            Some("echo"),
        ));
    }
    let top = match request.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(bad(
                format!("`logprobs` is {k}; it must be within [0, 20]"),
                Some("logprobs"),
            ))
        }
    };
    let Sampling {
        mut params,
        seed,
        stop,
        n,
    } = sampling_of(
        &state.config,
        SamplingFields {
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            // OpenAI's default for this endpoint.
            max_tokens: Some(request.max_tokens.unwrap_or(16)),
            seed: request.seed,
            stop: request.stop,
            n: request.n,
        },
    )?;
    // The engine records at least one alternative; the answer shows `top`.
    params.logprobs = top.map_or(0, |k| k.max(1));
    let prompts = prompt_ids(state, request.prompt)?;
    let requests = prompts.iter().flat_map(|ids| {
        (0..n).map(|index| GenRequest {
            key: String::new(),
            messages: Vec::new(),
            prefill: String::new(),
            sampling: params.clone(),
            seed: seed.wrapping_add(index as u64),
            stop: stop.clone(),
            prompt_ids: Some(ids.clone()),
        })
    });
    let receivers = submit_all(state, requests)?;
    let mut choices = Choices::new(receivers, n);
    let id = format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed) + 1);
    if request.stream == Some(true) {
        return Ok(SseStream::respond(
            Shape::Text,
            choices,
            id,
            state.config.model_name.clone(),
            request.stream_options.is_some_and(|o| o.include_usage),
        ));
    }
    // Dropping `choices` (the client hung up) makes the engine drop the sequences.
    let answers = choices
        .outputs()
        .await
        .map_err(internal)?
        .into_iter()
        .enumerate()
        .map(|(index, output)| CompletionChoice {
            index: index as u32,
            logprobs: top
                .zip(output.logprobs.as_ref())
                .map(|(k, lp)| legacy_logprobs(state, lp, k)),
            text: output.text,
            finish_reason: Some(output.finish_reason.as_str().to_string()),
            prompt_logprobs: None,
            prompt_token_ids: None,
        })
        .collect();
    let response = CompletionResponse {
        id,
        object: "text_completion".into(),
        created: now(),
        model: state.config.model_name.clone(),
        choices: answers,
        usage: Some(choices.usage()),
    };
    Ok(Json(response).into_response())
}

/// A choice's log-probabilities in the completions API's shape: tokens by their text, offsets
/// into the choice's text.
fn legacy_logprobs(
    state: &AppState,
    lp: &crate::backend::TokenLogprobs,
    top: usize,
) -> CompletionLogprobs {
    let name = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (i, (&id, logprob)) in lp.token_ids().iter().zip(lp.token_logprobs()).enumerate() {
        let token = name(id);
        out.text_offset.push(offset);
        offset += token.len();
        out.tokens.push(token);
        out.token_logprobs.push(f64::from(logprob));
        let (ids, lps) = lp.top(i);
        out.top_logprobs.push(
            ids.iter()
                .zip(lps)
                .take(top)
                .map(|(&id, l)| (name(id), f64::from(l)))
                .collect(),
        );
    }
    out
}
