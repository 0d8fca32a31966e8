//! Streamed answers (`stream: true`, server-sent events): the chunks' deltas are joined back
//! into the one response a non-streaming request would have received, so everything after the
//! transport (finish reasons, `reasoning_content`, usage, the chunks' `logprobs`) is handled in
//! one place. Some servers
//! only stream; some stream even when asked not to, which is why the content type decides.

use super::wire::{
    ChatResponse, Choice, ChoiceLogprobs, ResponseMessage, StreamChunk, TokenLogprob,
};

/// The `Content-Type` of a server-sent event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Why a stream could not be read as one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A `data:` line that is not a chunk.
    Malformed(String),
    /// The server reported an error inside the stream.
    Error(String),
    /// The stream ended before any choice said why it finished (a cut connection).
    Unfinished,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Malformed(m) => write!(f, "a stream chunk is not valid: {m}"),
            StreamError::Error(m) => write!(f, "the stream carried an error: {m}"),
            StreamError::Unfinished => f.write_str("the stream ended before a `finish_reason`"),
        }
    }
}

/// Joins the chunks of a whole event stream into one response (the first choice; requests ask
/// for `n = 1`). `usage` comes from the chunk that carries it (`stream_options.include_usage`).
pub fn collect(body: &str) -> Result<ChatResponse, StreamError> {
    let mut message = ResponseMessage::default();
    let mut finish_reason: Option<String> = None;
    let mut logprobs: Option<Vec<TokenLogprob>> = None;
    let mut response = ChatResponse::default();
    for line in body.lines() {
        // Comments (`: keep-alive`), `event:` and `id:` lines carry nothing to keep.
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            break;
        }
        if data.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(data).map_err(|e| StreamError::Malformed(e.to_string()))?;
        if let Some(error) = value.get("error") {
            let message = error
                .get("message")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string);
            return Err(StreamError::Error(message));
        }
        let chunk: StreamChunk =
            serde_json::from_value(value).map_err(|e| StreamError::Malformed(e.to_string()))?;
        if response.id.is_empty() {
            (response.id, response.model, response.created) =
                (chunk.id, chunk.model, chunk.created);
        }
        if chunk.usage.is_some() {
            response.usage = chunk.usage;
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            continue;
        };
        let delta = choice.delta;
        if !delta.role.is_empty() {
            message.role = delta.role;
        }
        append(&mut message.content, delta.content);
        append(&mut message.reasoning_content, delta.reasoning_content);
        append(&mut message.reasoning, delta.reasoning);
        if let Some(entries) = choice.logprobs.and_then(|l| l.content) {
            logprobs.get_or_insert_with(Vec::new).extend(entries);
        }
        if choice.finish_reason.is_some() {
            finish_reason = choice.finish_reason;
        }
    }
    if finish_reason.is_none() {
        return Err(StreamError::Unfinished);
    }
    response.object = "chat.completion".into();
    response.choices = vec![Choice {
        index: 0,
        message,
        finish_reason,
        logprobs: logprobs.map(|content| ChoiceLogprobs {
            content: Some(content),
        }),
    }];
    Ok(response)
}

fn append(whole: &mut Option<String>, piece: Option<String>) {
    if let Some(piece) = piece {
        whole.get_or_insert_with(String::new).push_str(&piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_join_into_one_answer() {
        let body = "\
: keep-alive\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"6 times \"}}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"7\"}}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"42\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";
        let r = collect(body).unwrap();
        let choice = &r.choices[0];
        assert_eq!(choice.message.role, "assistant");
        assert_eq!(
            choice.message.reasoning_content.as_deref(),
            Some("6 times 7")
        );
        assert_eq!(choice.message.content.as_deref(), Some("42"));
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        let usage = r.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 4));
    }

    #[test]
    fn cut_or_failing_streams_are_errors() {
        let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"4\"}}]}\n\n";
        assert_eq!(collect(cut).unwrap_err(), StreamError::Unfinished);
        let failed = "data: {\"error\":{\"message\":\"engine died\"}}\n\n";
        assert_eq!(
            collect(failed).unwrap_err(),
            StreamError::Error("engine died".into())
        );
        assert!(matches!(
            collect("data: {nope\n\n").unwrap_err(),
            StreamError::Malformed(_)
        ));
        // Content that never arrives stays absent rather than empty.
        let reasoning_only = "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"},\"finish_reason\":\"length\"}]}\n\n";
        let r = collect(reasoning_only).unwrap();
        assert_eq!(r.choices[0].message.content, None);
    }
}
