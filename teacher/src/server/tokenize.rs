//! vLLM's `POST /tokenize` and `POST /detokenize` in `distill serve`: the served model's own
//! token ids for a text or a conversation (through the chat template, as `/v1/chat/completions`
//! builds its prompt), and back. A client building token-id prompts for `/v1/completions`, or
//! counting tokens against `max_model_len`, then uses exactly the server's tokenizer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::chat::conversation;
use super::{bad, check_model, internal, ApiError, AppState};
use crate::engine::outside_vocabulary;
use crate::openai::wire::WireMessage;

/// `/tokenize`'s body: a `prompt` or `messages`, as vLLM takes it.
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<WireMessage>>,
    /// For `prompt`: add the tokenizer's special tokens (a BOS), as vLLM does by default.
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    continue_final_message: Option<bool>,
}

#[derive(Debug, Serialize)]
struct TokenizeResponse {
    count: usize,
    /// The model's context (`null` when the server sets none).
    max_model_len: Option<usize>,
    tokens: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

pub(super) async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let answer = || -> Result<TokenizeResponse, ApiError> {
        let request: TokenizeRequest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("Invalid request: {e}"), None))?;
        check_model(&state.config, request.model.as_deref())?;
        let tokens = match (request.prompt, request.messages) {
            (Some(prompt), None) => state
                .tokenizer
                .encode(&prompt, request.add_special_tokens.unwrap_or(true))
                .map_err(|e| internal(format!("Cannot tokenise the prompt: {e}")))?,
            (None, Some(messages)) => {
                let continue_final = request.continue_final_message.unwrap_or(false);
                let (messages, prefill) = conversation(Some(messages), continue_final)?;
                state
                    .model
                    .prompt_ids(&messages, &prefill)
                    .map_err(|e| bad(format!("Cannot render the conversation: {e}"), None))?
            }
            _ => return Err(bad("give either `prompt` or `messages`", Some("prompt"))),
        };
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: state.model.context_len(),
            tokens,
        })
    };
    match answer() {
        Ok(response) => Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let answer = || -> Result<serde_json::Value, ApiError> {
        let request: DetokenizeRequest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("Invalid request: {e}"), None))?;
        check_model(&state.config, request.model.as_deref())?;
        if let Some(message) = outside_vocabulary(state.model.model(), &request.tokens) {
            return Err(bad(message, Some("tokens")));
        }
        let prompt = state
            .tokenizer
            .decode(&request.tokens, false)
            .map_err(|e| internal(format!("Cannot decode the tokens: {e}")))?;
        Ok(serde_json::json!({ "prompt": prompt }))
    };
    match answer() {
        Ok(response) => Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}
