//! `POST /v1/completions` in `distill serve`: a raw prompt continued without the chat template
//! (what evaluation harnesses and base-model clients send), or a prompt scored.
//!
//! Scoring, for a request with vLLM's `prompt_logprobs`, with `max_tokens` 0, or with `echo` and
//! `max_tokens` 1: the served model's log-probability of every prompt token and its `k` most
//! likely tokens at each position — as vLLM's `prompt_logprobs` (what makes a served teacher
//! usable for on-policy distillation from another machine, `distill train --method opd
//! --kd-teacher http://…`) and, with `echo` and `logprobs`, as OpenAI's legacy `logprobs` over
//! the prompt (what lm-evaluation-harness reads for log-likelihoods). `max_tokens` 1 adds the
//! most likely next token. `stream` and `n` > 1 are refused by name there.
//!
//! Generation, for any other request: `max_tokens` (OpenAI's default 16) tokens per prompt and
//! choice with the sampling fields of `/v1/chat/completions` (`n`, `seed`, `stop`, `top_k`,
//! `stream`, and `logprobs` in the completions API's own shape; `echo` prepends the prompt,
//! streamed as each choice's first chunk).
//! A prompt is a text (tokenised with the model's special tokens, as vLLM does), token ids, or
//! a batch of either.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::choices::Choices;
use super::sse::{Shape, SseStream, TextLogprobs};
use super::{
    bad, check_model, internal, now, refuse_unapplied, sampling_of, submit_all, ApiError, AppState,
    Sampling, SamplingFields,
};
use crate::backend::GenRequest;
use crate::engine::outside_vocabulary;
use crate::openai::prompt_logprobs::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, PromptInput,
    PromptLogprob,
};
use crate::openai::wire::Usage;
use crate::score::{score_prompts, TokenScore};

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
    /// Alternatives per token in OpenAI's `logprobs`; `None`: no `logprobs` in the answer.
    legacy: Option<usize>,
    /// Whether the answer's text and `logprobs` start with the prompt (`echo`).
    echo: bool,
    /// Whether the one next token is asked for (`max_tokens` 1).
    next: bool,
}

async fn handle(state: &Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let raw: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The body is not valid JSON: {e}"), None))?;
    let request: CompletionRequest = serde_json::from_value(raw.clone())
        .map_err(|e| bad(format!("Invalid request: {e}"), None))?;
    check_model(&state.config, request.model.as_deref())?;
    // What evaluation harnesses send to score a prompt: `echo` with `max_tokens` 0 or 1
    // (lm-evaluation-harness's log-likelihoods), or vLLM's `prompt_logprobs`.
    let echo = request.echo == Some(true);
    let scores = request.prompt_logprobs.is_some()
        || request.max_tokens == Some(0)
        || (echo && request.max_tokens == Some(1));
    if !scores {
        refuse_unapplied(&raw, &["echo"])?;
        return generate(state, request).await;
    }
    let asked = validate(state, request)?;
    let scoring = Arc::clone(state);
    let k = asked.top.unwrap_or(0).max(asked.legacy.unwrap_or(0));
    let (prompts, next) = (asked.prompts, asked.next);
    // The forward runs beside the engine thread's batch, on the same weights.
    let scored = tokio::task::spawn_blocking(move || {
        let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let scored = score_prompts(scoring.model.model(), &slices, k, next)?;
        let both = prompts.into_iter().zip(scored);
        Ok::<_, crate::Error>(
            both.map(|(ids, (scores, after))| (ids, scores, after))
                .collect::<Vec<_>>(),
        )
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
            let logprobs = asked.legacy.map(|top| {
                let scored = |s: &TokenScore| {
                    let alternatives = s.top.iter().take(top);
                    let alternatives = alternatives.map(|&(id, l)| (name(id), f64::from(l)));
                    Some((f64::from(s.logprob), alternatives.collect()))
                };
                let mut out = CompletionLogprobs::default();
                if asked.echo {
                    out.push(name(ids[0]), None);
                    for (s, &token) in scores.iter().zip(&ids[1..]) {
                        out.push(name(token), scored(s));
                    }
                }
                if let Some((token, s)) = &after {
                    out.push(name(*token), scored(s));
                }
                out
            });
            let prompt_logprobs = asked.top.map(|top| {
                let mut entries = vec![None];
                entries.extend(scores.iter().zip(&ids[1..]).map(|(s, &token)| {
                    let mut entry: HashMap<u32, PromptLogprob> = s
                        .top
                        .iter()
                        .take(top)
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
            let mut text = match asked.echo {
                true => state.tokenizer.decode(&ids, false).unwrap_or_default(),
                false => String::new(),
            };
            if let Some((token, _)) = after {
                text.push_str(&name(token));
            }
            CompletionChoice {
                index: index as u32,
                text,
                finish_reason: Some("length".into()),
                prompt_logprobs,
                prompt_token_ids: Some(ids),
                logprobs,
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
    const SCORING: &str = "`/v1/completions` scores a prompt when asked for `prompt_logprobs`, or `echo` with `max_tokens` 0 or 1";
    if request.stream == Some(true) {
        return Err(bad(
            format!("`stream` is not supported when scoring: {SCORING}"),
            Some("stream"),
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(bad(
            format!("`n` must be 1 when scoring: {SCORING}"),
            Some("n"),
        ));
    }
    // OpenAI's default is 16.
    let max_tokens = request.max_tokens.unwrap_or(16);
    if !(0..=1).contains(&max_tokens) {
        return Err(bad(
            format!("`max_tokens` is {max_tokens}; it must be 0 or 1 when scoring: {SCORING}"),
            Some("max_tokens"),
        ));
    }
    let legacy = logprobs_asked(request.logprobs)?;
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
        legacy,
        echo: request.echo == Some(true),
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
    if let Some(message) = outside_vocabulary(state.model.model(), prompts.iter().flatten()) {
        return Err(bad(message, Some("prompt")));
    }
    // A prompt may fill the context when scored; generating needs one position more (the
    // engine says so).
    if let Some(context) = state.model.context_len() {
        if let Some(long) = prompts.iter().find(|p| p.len() > context) {
            return Err(bad(
                format!(
                    "the prompt of {} tokens exceeds the model's context of {context} positions",
                    long.len()
                ),
                Some("prompt"),
            ));
        }
    }
    Ok(prompts)
}

/// Generation: every prompt continued `n` times in the engine's batch, as the chat endpoint
/// does, without the chat template.
async fn generate(state: &Arc<AppState>, request: CompletionRequest) -> Result<Response, ApiError> {
    let top = logprobs_asked(request.logprobs)?;
    let echo = request.echo == Some(true);
    if echo && top.is_some() {
        return Err(bad(
            "`echo` with `logprobs` scores the prompt: `max_tokens` must be 0 or 1",
            Some("echo"),
        ));
    }
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
    // Under `echo`, each prompt's text, decoded before any work is submitted.
    let echoed: Vec<String> = match echo {
        true => prompts
            .iter()
            .map(|ids| state.tokenizer.decode(ids, false))
            .collect::<Result<_, _>>()
            .map_err(|e| internal(format!("cannot decode the prompt: {e}")))?,
        false => Vec::new(),
    };
    let receivers = submit_all(state, requests)?;
    let mut choices = Choices::new(receivers, n);
    let id = format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed) + 1);
    if request.stream == Some(true) {
        let logprobs = top.map(|k| {
            let state = state.clone();
            Box::new(move |lp: &crate::backend::TokenLogprobs, start: usize| {
                legacy_logprobs(&state, lp, k, start)
            }) as TextLogprobs
        });
        let echo = match echo {
            true => (0..choices.len())
                .map(|index| echoed[index / n].clone())
                .collect(),
            false => Vec::new(),
        };
        return Ok(SseStream::respond(
            Shape::Text { logprobs, echo },
            choices,
            id,
            state.config.model_name.clone(),
            request.stream_options.is_some_and(|o| o.include_usage),
        ));
    }
    // Dropping `choices` (the client hung up) makes the engine drop the sequences.
    let answers = choices
        .outputs()
        .await?
        .into_iter()
        .enumerate()
        .map(|(index, output)| CompletionChoice {
            index: index as u32,
            logprobs: top
                .zip(output.logprobs.as_ref())
                .map(|(k, lp)| legacy_logprobs(state, lp, k, 0)),
            text: match echo {
                true => echoed[index / n].clone() + &output.text,
                false => output.text,
            },
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
/// (in characters) into the choice's text, the first token's at `start`.
fn legacy_logprobs(
    state: &AppState,
    lp: &crate::backend::TokenLogprobs,
    top: usize,
    start: usize,
) -> CompletionLogprobs {
    let name = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
    let mut out = CompletionLogprobs::default();
    for (i, (&id, logprob)) in lp.token_ids().iter().zip(lp.token_logprobs()).enumerate() {
        let (ids, lps) = lp.top(i);
        let alternatives = ids.iter().zip(lps).take(top);
        let alternatives = alternatives
            .map(|(&id, l)| (name(id), f64::from(l)))
            .collect();
        out.push(name(id), Some((f64::from(logprob), alternatives)));
    }
    out.text_offset.iter_mut().for_each(|o| *o += start);
    out
}

/// OpenAI's `logprobs` of this endpoint: alternatives per token, at most 20 (vLLM's default cap).
fn logprobs_asked(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    match logprobs {
        None => Ok(None),
        Some(k) if (0..=20).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(bad(
            format!("`logprobs` is {k}; it must be within [0, 20]"),
            Some("logprobs"),
        )),
    }
}
