//! Streamed replies of `distill serve` (`stream: true`): OpenAI's server-sent events, one chunk
//! per piece of text the engine produces (tagged with its choice under `n`, with its tokens'
//! log-probabilities when asked), each choice's finish reason, optionally the usage, then
//! `[DONE]`; an engine failure mid-stream becomes an error event. Chat chunks carry deltas
//! (`chat.completion.chunk`), completion chunks the text itself (`text_completion`, after the
//! prompt under `echo`, log-probabilities in the legacy shape with offsets into the whole
//! text), as OpenAI's two endpoints and vLLM stream.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::choices::{Choices, Event};
use crate::backend::TokenLogprobs;
use crate::openai::prompt_logprobs::{CompletionChoice, CompletionLogprobs, CompletionResponse};
use crate::openai::wire::{
    ChatChunk, ChoiceLogprobs, ChunkChoice, Delta, ErrorBody, ErrorDetail, Usage,
};

/// Names a chat chunk's tokens and their alternatives in OpenAI's `logprobs` shape (with the
/// request's `top_logprobs`).
pub(super) type ChatLogprobs = Box<dyn Fn(&TokenLogprobs) -> ChoiceLogprobs + Send>;

/// Renders a completion chunk's tokens in the legacy `logprobs` shape, their `text_offset`s
/// counted from the given character of the choice's text.
pub(super) type TextLogprobs = Box<dyn Fn(&TokenLogprobs, usize) -> CompletionLogprobs + Send>;

/// Which endpoint's chunks a stream sends, and what the request asked to come with them.
pub(super) enum Shape {
    /// `/v1/chat/completions`: a role chunk per choice, then deltas.
    Chat { logprobs: Option<ChatLogprobs> },
    /// `/v1/completions`: text chunks; under `echo` each choice's prompt text first (`echo`
    /// holds it per choice, else is empty).
    Text {
        logprobs: Option<TextLogprobs>,
        echo: Vec<String>,
    },
}

/// A streamed reply: chunks as the engine's updates arrive (each choice's with its index), then
/// `[DONE]` once every choice has finished.
pub(super) struct SseStream {
    shape: Shape,
    choices: Choices,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Characters of each choice's text sent so far (where a text chunk's offsets start).
    sent_chars: Vec<usize>,
    started: bool,
    ended: bool,
}

impl SseStream {
    /// The response streaming `choices` as `id`; `include_usage` adds the usage chunk.
    pub(super) fn respond(
        shape: Shape,
        choices: Choices,
        id: String,
        model: String,
        include_usage: bool,
    ) -> Response {
        let stream = Self {
            shape,
            sent_chars: vec![0; choices.len()],
            choices,
            id,
            model,
            created: super::now(),
            include_usage,
            started: false,
            ended: false,
        };
        stream.into_response()
    }

    fn chunk(&mut self, index: usize, delta: Delta, finish_reason: Option<String>) -> String {
        self.chunk_with(index, delta, None, finish_reason)
    }

    /// One choice's chunk: its text (`delta`), the log-probabilities of the tokens behind it
    /// when the request asked for them, its finish reason at the end.
    fn chunk_with(
        &mut self,
        index: usize,
        delta: Delta,
        tokens: Option<&TokenLogprobs>,
        finish_reason: Option<String>,
    ) -> String {
        let start = self.sent_chars[index];
        self.sent_chars[index] += delta.content.as_deref().map_or(0, |t| t.chars().count());
        let json = match &self.shape {
            Shape::Chat { logprobs } => serde_json::to_string(&self.chat_chunk(
                vec![ChunkChoice {
                    index: index as u32,
                    logprobs: tokens.zip(logprobs.as_ref()).map(|(lp, name)| name(lp)),
                    delta,
                    finish_reason,
                }],
                None,
            )),
            Shape::Text { logprobs, .. } => serde_json::to_string(&self.text_chunk(
                vec![CompletionChoice {
                    index: index as u32,
                    text: delta.content.unwrap_or_default(),
                    logprobs: tokens
                        .zip(logprobs.as_ref())
                        .map(|(lp, render)| render(lp, start)),
                    finish_reason,
                    ..CompletionChoice::default()
                }],
                None,
            )),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        format!("data: {}\n\n", json.unwrap_or_default())
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn text_chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
    ) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    /// The last chunk under `include_usage`: the usage and no choice, as OpenAI sends it.
    fn usage_chunk(&self) -> String {
        let usage = Some(self.choices.usage());
        let json = match self.shape {
            Shape::Chat { .. } => serde_json::to_string(&self.chat_chunk(Vec::new(), usage)),
            Shape::Text { .. } => serde_json::to_string(&self.text_chunk(Vec::new(), usage)),
        };
        format!("data: {}\n\n", json.unwrap_or_default())
    }

    /// The next piece of the body; `None` once `[DONE]` (or an error) has been sent.
    async fn next_piece(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            // Every chat choice opens with its role, as OpenAI's and vLLM's streams do; under
            // `echo` every completion choice with its prompt.
            let openings: Vec<Delta> = match &self.shape {
                Shape::Chat { .. } => (0..self.choices.len())
                    .map(|_| Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        reasoning_content: None,
                    })
                    .collect(),
                Shape::Text { echo, .. } => echo
                    .iter()
                    .map(|prompt| Delta {
                        content: Some(prompt.clone()),
                        ..Delta::default()
                    })
                    .collect(),
            };
            if !openings.is_empty() {
                let pieces = openings
                    .into_iter()
                    .enumerate()
                    .map(|(index, delta)| self.chunk(index, delta, None))
                    .collect();
                return Some(pieces);
            }
        }
        match self.choices.next().await {
            Some(Event::Delta {
                index,
                text,
                logprobs,
            }) => {
                let delta = Delta {
                    content: Some(text),
                    ..Delta::default()
                };
                Some(self.chunk_with(index, delta, logprobs.as_ref(), None))
            }
            Some(Event::Done { index, output }) => {
                let reason = output.finish_reason.as_str().to_string();
                let mut piece = self.chunk(index, Delta::default(), Some(reason));
                if self.choices.all_done() {
                    self.ended = true;
                    if self.include_usage {
                        piece.push_str(&self.usage_chunk());
                    }
                    piece.push_str("data: [DONE]\n\n");
                }
                Some(piece)
            }
            Some(Event::Failed(error)) => {
                self.ended = true;
                Some(error_event(&error.message, error.kind))
            }
            None => None,
        }
    }

    fn into_response(self) -> Response {
        let stream = futures_util::stream::unfold(self, |mut s| async move {
            s.next_piece()
                .await
                .map(|piece| (Ok::<_, std::convert::Infallible>(Bytes::from(piece)), s))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// An error in the middle of a stream, in OpenAI's error shape.
fn error_event(message: &str, kind: &str) -> String {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.to_string(),
            kind: kind.into(),
            param: None,
            code: None,
        },
    };
    format!(
        "data: {}\n\n",
        serde_json::to_string(&body).unwrap_or_default()
    )
}
