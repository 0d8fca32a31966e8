//! Streamed replies of `distill serve` (`stream: true`): OpenAI's server-sent events, one chunk
//! per piece of text the engine produces, the finish reason, optionally the usage, then
//! `[DONE]`; an engine failure mid-stream becomes an error event.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{usage_of, STOPPED};
use crate::engine::Update;
use crate::openai::wire::{ChatChunk, ChunkChoice, Delta, ErrorBody, ErrorDetail, Usage};

/// A streamed reply: chunks as the engine's updates arrive, then `[DONE]`.
pub(super) struct SseStream {
    pub(super) updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) include_usage: bool,
    pub(super) started: bool,
    pub(super) ended: bool,
}

impl SseStream {
    fn chunk(&self, delta: Delta, finish_reason: Option<String>, usage: Option<Usage>) -> String {
        let choices = if usage.is_some() {
            // OpenAI's final usage chunk carries no choice.
            Vec::new()
        } else {
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }]
        };
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        // Serialising plain structs of strings and numbers cannot fail.
        let json = serde_json::to_string(&chunk).unwrap_or_default();
        format!("data: {json}\n\n")
    }

    /// The next piece of the body; `None` once `[DONE]` (or an error) has been sent.
    async fn next_piece(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            let role = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                reasoning_content: None,
            };
            return Some(self.chunk(role, None, None));
        }
        loop {
            let update = self.updates.recv().await;
            match update {
                Some(Update::Delta { text, .. }) => {
                    let delta = Delta {
                        content: Some(text),
                        ..Delta::default()
                    };
                    return Some(self.chunk(delta, None, None));
                }
                Some(Update::Done(output)) => {
                    self.ended = true;
                    let reason = output.finish_reason.as_str().to_string();
                    let mut piece = self.chunk(Delta::default(), Some(reason), None);
                    if self.include_usage {
                        let usage = usage_of(&output);
                        piece.push_str(&self.chunk(Delta::default(), None, Some(usage)));
                    }
                    piece.push_str("data: [DONE]\n\n");
                    return Some(piece);
                }
                Some(Update::Failed { error, .. }) => {
                    self.ended = true;
                    return Some(error_event(&error.to_string()));
                }
                Some(Update::Progress { .. }) => continue,
                None => {
                    self.ended = true;
                    return Some(error_event(STOPPED));
                }
            }
        }
    }

    pub(super) fn into_response(self) -> Response {
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
fn error_event(message: &str) -> String {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.to_string(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    };
    format!(
        "data: {}\n\n",
        serde_json::to_string(&body).unwrap_or_default()
    )
}
