//! The JSON of OpenAI's `/v1/chat/completions`, shared by the `openai` client and `distill serve`
//! so both sides agree on one shape. Response parsing is lenient (every field optional) because
//! DeepSeek's API, vLLM and SGLang each leave out different fields.

use serde::{Deserialize, Serialize};

/// A request body. Fields past OpenAI's own (`top_k`, `continue_final_message`,
/// `add_generation_prompt`) are vLLM/SGLang extensions and are only sent when used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `None` when the field is missing, so the server can say so rather than fail in serde.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<WireMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// With `stream`: `include_usage` asks for a last chunk holding the token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// vLLM: continue the final (assistant) message instead of opening a new turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Return the log-probability of each generated token (and `top_logprobs` alternatives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// vLLM and SGLang: name tokens `token_id:{id}` instead of by their text, so a client can
    /// store ids (a token's text does not always identify it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop` is either one string or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// One message of a request. `content` may be a string or OpenAI's list of typed parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text of the message; `None` when a part is not text (images and the like).
    pub fn text(&self) -> Option<String> {
        match self {
            Content::Text(s) => Some(s.clone()),
            Content::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return None;
                    }
                    out.push_str(part.text.as_deref().unwrap_or(""));
                }
                Some(out)
            }
        }
    }
}

/// A non-streaming chat response body.
pub type ChatResponse = Response<Choice>;

/// A non-streaming response body, whose choices are a chat's ([`Choice`]) or a completion's
/// (`prompt_logprobs::CompletionChoice`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response<C> {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default = "Vec::new")]
    pub choices: Vec<C>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// A choice's `logprobs`: one entry per generated token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text, or `token_id:{id}` when the request asked for ids.
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// The id in a `token_id:{id}` token name (what `return_tokens_as_token_ids` gives).
pub fn token_id(token: &str) -> Option<u32> {
    token.strip_prefix("token_id:")?.parse().ok()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResponseMessage {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    /// DeepSeek's API and the vLLM/SGLang reasoning parsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The name newer vLLM releases use for the same thing; read, never written.
    #[serde(default, skip_serializing)]
    pub reasoning: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// One `chat.completion.chunk` as a client reads it: lenient like [`ChatResponse`], with the
/// delta in the shape of a whole message.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<StreamChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: ResponseMessage,
    /// The chunk's tokens' log-probabilities (asked with `logprobs`), to join in order.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One `chat.completion.chunk` of a streamed response, as `distill serve` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// The log-probabilities of the chunk's tokens, when the request asks for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// The human-readable message of an error response: OpenAI's `{"error": {"message"}}`, vLLM's
/// older `{"message"}`, or the body itself, cut short so a proxy's HTML page stays readable.
pub fn error_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
        let message = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .or_else(|| value.get("detail"))
            .or_else(|| value.get("error"));
        if let Some(serde_json::Value::String(s)) = message {
            return shorten(s);
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "(empty body)".to_string()
    } else {
        shorten(trimmed)
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 500;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Splits a generated text into `(reasoning, content)` the way the R1 reasoning parsers of vLLM
/// and SGLang do: only when a `</think>` closes the block (the opening tag may be missing when
/// the chat template already put it in the prompt). `None` when there is no closed block.
pub fn split_reasoning(text: &str) -> Option<(String, String)> {
    let end = text.find("</think>")?;
    let before = &text[..end];
    let reasoning = match before.find("<think>") {
        Some(start) => &before[start + "<think>".len()..],
        None => before,
    };
    let content = &text[end + "</think>".len()..];
    Some((
        reasoning.trim_matches('\n').to_string(),
        content.trim_start_matches('\n').to_string(),
    ))
}

/// The whole assistant turn as [`crate::GenOutput::text`] holds it, from a reasoning part
/// received separately and the content.
pub fn join_reasoning(reasoning: &str, content: &str) -> String {
    format!("<think>\n{reasoning}\n</think>\n\n{content}")
}

/// The turn of an answer cut while it was still reasoning: the think block stays open, as the
/// model left it, so the curation filters see the truncation (`unclosed_think`).
pub fn open_reasoning(reasoning: &str) -> String {
    format!("<think>\n{reasoning}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join() {
        let (r, c) = split_reasoning("<think>\nstep\n</think>\n\nanswer").unwrap();
        assert_eq!((r.as_str(), c.as_str()), ("step", "answer"));
        assert_eq!(join_reasoning(&r, &c), "<think>\nstep\n</think>\n\nanswer");
        let (r, c) = split_reasoning("step</think>answer").unwrap();
        assert_eq!((r.as_str(), c.as_str()), ("step", "answer"));
        assert!(split_reasoning("<think>\nunclosed").is_none());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(error_message(r#"{"message":"vllm says"}"#), "vllm says");
        assert_eq!(error_message("plain"), "plain");
        assert_eq!(error_message(""), "(empty body)");
    }
}
