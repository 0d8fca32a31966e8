//! `POST /v1/chat/completions` in `distill serve`: a conversation checked and rendered through
//! the model's chat template, `n` seeded choices in the engine's batch, whole answers or a
//! stream of deltas, either with `logprobs`.
//!
//! Beyond OpenAI's fields it takes vLLM's `top_k` and `continue_final_message` (the final
//! assistant message becomes the prefill the reply continues). With the reasoning parser on,
//! a reply holding `…</think>` comes back as `reasoning_content` + `content`, as vLLM's and
//! SGLang's R1 parsers do. `stream: true` streams SSE chunks as the engine produces text; the
//! streamed text is all `content` (the reasoning split applies to whole replies only).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use distill_models::chat::Message;

use super::choices::Choices;
use super::sse::{ChatLogprobs, Shape, SseStream};
use super::{
    bad, check_model, now, refuse_unapplied, sampling_of, submit_all, ApiError, AppState, Sampling,
    SamplingFields, ServerConfig,
};
use crate::backend::{FinishReason, GenOutput, GenRequest};
use crate::openai::wire::{self, ChatRequest, ChatResponse, Choice, ResponseMessage};

/// A request after validation.
struct Parsed {
    request: GenRequest,
    /// Choices to return (`n`), each sampled as its own sequence.
    n: usize,
    stream: bool,
    include_usage: bool,
    logprobs: Option<LogprobsAsked>,
}

/// What a request's `logprobs`, `top_logprobs` and `return_tokens_as_token_ids` ask for.
#[derive(Debug, Clone, Copy)]
struct LogprobsAsked {
    top: usize,
    token_ids: bool,
}

pub(super) async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match handle(&state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &Arc<AppState>, body: &[u8]) -> std::result::Result<Response, ApiError> {
    let raw: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}"), None))?;
    refuse_unapplied(&raw, &[])?;
    let request: ChatRequest = serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("Invalid request: {e}"), None))?;
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let mut parsed = validate(&state.config, request)?;
    parsed.include_usage = include_usage;
    let prefill = parsed.request.prefill.clone();
    // One job per choice, each with its own seed (the request's seed + the choice's index) so
    // sampled choices differ and a seeded request repeats exactly.
    let requests = (0..parsed.n).map(|index| {
        let mut request = parsed.request.clone();
        request.seed = request.seed.wrapping_add(index as u64);
        request
    });
    let receivers = submit_all(state, requests)?;
    let mut choices = Choices::new(receivers, parsed.n);
    let id = format!(
        "chatcmpl-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed) + 1
    );
    if parsed.stream {
        let logprobs = parsed.logprobs.map(|asked| {
            let state = state.clone();
            Box::new(move |lp: &crate::backend::TokenLogprobs| {
                choice_logprobs(&state.tokenizer, lp, asked)
            }) as ChatLogprobs
        });
        return Ok(SseStream::respond(
            Shape::Chat { logprobs },
            choices,
            id,
            state.config.model_name.clone(),
            parsed.include_usage,
        ));
    }
    // Dropping `choices` (the client hung up) makes the engine drop the sequences.
    let answers = choices
        .outputs()
        .await?
        .into_iter()
        .enumerate()
        .map(|(index, output)| {
            let logprobs = parsed
                .logprobs
                .zip(output.logprobs.as_ref())
                .map(|(asked, lp)| choice_logprobs(&state.tokenizer, lp, asked));
            Reply::new(&state.config, &prefill, output).into_choice(index, logprobs)
        })
        .collect();
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion".into(),
        created: now(),
        model: state.config.model_name.clone(),
        choices: answers,
        usage: Some(choices.usage()),
    })
    .into_response())
}

/// A sample's log-probabilities as OpenAI's `choices[0].logprobs`: tokens named by their text
/// (with its bytes), or `token_id:{id}` as vLLM does under `return_tokens_as_token_ids`.
fn choice_logprobs(
    tokenizer: &distill_models::tokenizer::TextTokenizer,
    lp: &crate::backend::TokenLogprobs,
    asked: LogprobsAsked,
) -> wire::ChoiceLogprobs {
    let name = |id: u32| -> (String, Option<Vec<u8>>) {
        if asked.token_ids {
            (format!("token_id:{id}"), None)
        } else {
            let text = tokenizer.decode(&[id], false).unwrap_or_default();
            let bytes = text.as_bytes().to_vec();
            (text, Some(bytes))
        }
    };
    let content = lp
        .token_ids()
        .iter()
        .zip(lp.token_logprobs())
        .enumerate()
        .map(|(i, (&id, logprob))| {
            let (ids, lps) = lp.top(i);
            let top_logprobs = ids
                .iter()
                .zip(lps)
                .take(asked.top)
                .map(|(&id, logprob)| {
                    let (token, bytes) = name(id);
                    wire::TopLogprob {
                        token,
                        logprob: f64::from(logprob),
                        bytes,
                    }
                })
                .collect();
            let (token, bytes) = name(id);
            wire::TokenLogprob {
                token,
                logprob: f64::from(logprob),
                bytes,
                top_logprobs,
            }
        })
        .collect();
    wire::ChoiceLogprobs {
        content: Some(content),
    }
}

/// A request's `messages` checked and in the template's terms, and with
/// `continue_final_message` the final assistant message taken off as the prefill.
pub(super) fn conversation(
    messages: Option<Vec<wire::WireMessage>>,
    continue_final: bool,
) -> std::result::Result<(Vec<Message>, String), ApiError> {
    let wire_messages = messages.ok_or_else(|| bad("`messages` is required", Some("messages")))?;
    if wire_messages.is_empty() {
        return Err(bad("`messages` must not be empty", Some("messages")));
    }
    let mut messages = Vec::with_capacity(wire_messages.len());
    for (i, m) in wire_messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role,
            // OpenAI's newer name for the system role.
            "developer" => "system".to_string(),
            other => {
                return Err(bad(
                    format!(
                    "`messages[{i}].role` is `{other}`; expected `system`, `user` or `assistant`"
                ),
                    Some("messages"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(c) => c.text().ok_or_else(|| {
                bad(
                    format!("`messages[{i}].content` holds a part that is not text"),
                    Some("messages"),
                )
            })?,
        };
        messages.push(Message::new(role, content));
    }
    let prefill = if continue_final {
        match messages.last() {
            Some(last) if last.role == "assistant" => messages.pop().map(|m| m.content),
            _ => {
                return Err(bad(
                    "`continue_final_message` needs the last message to be the assistant's",
                    Some("continue_final_message"),
                ))
            }
        }
        .unwrap_or_default()
    } else {
        String::new()
    };
    if messages.is_empty() {
        return Err(bad(
            "`messages` holds no turn before the prefill",
            Some("messages"),
        ));
    }
    Ok((messages, prefill))
}

/// Checks a request and turns it into the engine's terms.
fn validate(config: &ServerConfig, request: ChatRequest) -> std::result::Result<Parsed, ApiError> {
    check_model(config, request.model.as_deref())?;
    let continue_final = request.continue_final_message.unwrap_or(false);
    // The template always opens the assistant's turn; without one to continue, leaving it
    // closed would answer a different prompt than the one asked.
    if request.add_generation_prompt == Some(false) && !continue_final {
        return Err(bad(
            "`add_generation_prompt` false is supported only with `continue_final_message`",
            Some("add_generation_prompt"),
        ));
    }
    let (messages, prefill) = conversation(request.messages, continue_final)?;
    let Sampling {
        params: mut sampling,
        seed,
        stop,
        n,
    } = sampling_of(
        config,
        SamplingFields {
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            max_tokens: request.max_completion_tokens.or(request.max_tokens),
            seed: request.seed,
            stop: request.stop,
            n: request.n,
        },
    )?;
    let stream = request.stream.unwrap_or(false);
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (Some(true), top) => {
            let top = top.unwrap_or(0);
            if !(0..=20).contains(&top) {
                return Err(bad(
                    format!("`top_logprobs` is {top}; it must be within [0, 20]"),
                    Some("top_logprobs"),
                ));
            }
            // The engine records at least one alternative; the answer shows `top`.
            sampling.logprobs = (top as usize).max(1);
            Some(LogprobsAsked {
                top: top as usize,
                token_ids: request.return_tokens_as_token_ids.unwrap_or(false),
            })
        }
        (_, Some(top)) if top > 0 => {
            return Err(bad(
                "`top_logprobs` needs `logprobs: true`",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    Ok(Parsed {
        request: GenRequest {
            // The engine thread gives every request its own key.
            key: String::new(),
            messages,
            prefill,
            sampling,
            seed,
            stop,
            prompt_ids: None,
        },
        n,
        stream,
        include_usage: false,
        logprobs,
    })
}

/// A finished sample in the response's terms.
struct Reply {
    content: String,
    reasoning: Option<String>,
    finish_reason: FinishReason,
}

impl Reply {
    fn new(config: &ServerConfig, prefill: &str, output: GenOutput) -> Self {
        // The engine's text starts with the prefill; a client continuing it only wants the rest.
        let generated = output
            .text
            .strip_prefix(prefill)
            .unwrap_or(&output.text)
            .to_string();
        let (reasoning, content) = match config
            .reasoning_parser
            .then(|| wire::split_reasoning(&generated))
            .flatten()
        {
            Some((reasoning, content)) => (Some(reasoning), content),
            None => (None, generated),
        };
        Self {
            content,
            reasoning,
            finish_reason: output.finish_reason,
        }
    }

    fn into_choice(self, index: usize, logprobs: Option<wire::ChoiceLogprobs>) -> Choice {
        Choice {
            index: index as u32,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(self.content),
                reasoning_content: self.reasoning,
                reasoning: None,
            },
            finish_reason: Some(self.finish_reason.as_str().to_string()),
            logprobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text: &str) -> GenOutput {
        GenOutput {
            key: "k".into(),
            text: text.into(),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 5,
            completion_tokens: 7,
            logprobs: None,
        }
    }

    #[test]
    fn reasoning_parser_splits_closed_blocks_only() {
        let mut config = ServerConfig::new("m");
        let reply = Reply::new(&config, "", output("<think>\nwhy\n</think>\n\n42"));
        assert_eq!(reply.reasoning.as_deref(), Some("why"));
        assert_eq!(reply.content, "42");
        // The prefill is the client's own text: only what follows it is returned.
        let reply = Reply::new(&config, "<think>\n", output("<think>\nwhy</think>42"));
        assert_eq!(reply.reasoning.as_deref(), Some("why"));
        assert_eq!(reply.content, "42");
        let reply = Reply::new(&config, "", output("<think>\nunfinished"));
        assert_eq!(reply.reasoning, None);
        assert_eq!(reply.content, "<think>\nunfinished");
        config.reasoning_parser = false;
        let reply = Reply::new(&config, "", output("<think>\nwhy\n</think>\n\n42"));
        assert_eq!(reply.reasoning, None);
        assert_eq!(reply.content, "<think>\nwhy\n</think>\n\n42");
    }
}
