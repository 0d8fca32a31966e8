//! What an endpoint's 4xx message means for the rest of the run. Servers word the same refusal
//! differently (vLLM, SGLang, OpenAI, DeepSeek), so these read the message for its substance.

/// Whether a refusal says the requested `max_tokens` cannot fit the model's context, which is
/// true of every request alike (so the first such answer ends the run). When the message names
/// the context length, `max_tokens` must reach it: a prompt that alone is too long for a
/// smaller `max_tokens` is that one sample's problem. Otherwise a message naming `max_tokens`
/// (DeepSeek: "the valid range of max_tokens is [1, 8192]") is about the setting.
pub fn max_tokens_too_large(message: &str, max_tokens: usize) -> bool {
    let lower = message.to_lowercase();
    if let Some(context) = context_length(&lower) {
        return max_tokens as u64 >= context;
    }
    ["max_tokens", "max_completion_tokens", "max_new_tokens"]
        .iter()
        .any(|name| lower.contains(name))
}

/// The context length a message states ("maximum context length is 4096 tokens", "maximum
/// context length of 4,096 tokens"): the first number after the phrase.
fn context_length(lower: &str) -> Option<u64> {
    let at = ["context length", "context window", "max_model_len"]
        .iter()
        .find_map(|phrase| lower.find(phrase).map(|i| i + phrase.len()))?;
    let rest = &lower[at..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether a refusal of a non-streaming request says the endpoint only streams.
pub fn asks_for_streaming(message: &str) -> bool {
    message.to_lowercase().contains("stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_refusals_of_known_servers() {
        // vLLM ≥ 0.6.
        let vllm = "'max_tokens' or 'max_completion_tokens' is too large: 32768. This model's \
                    maximum context length is 4096 tokens and your request has 25 input tokens \
                    (32768 > 4096 - 25).";
        assert!(max_tokens_too_large(vllm, 32768));
        // The same message for a long prompt and a max_tokens that fits on its own.
        let long_prompt = "'max_tokens' or 'max_completion_tokens' is too large: 2000. This \
                           model's maximum context length is 4096 tokens and your request has \
                           3000 input tokens (2000 > 4096 - 3000).";
        assert!(!max_tokens_too_large(long_prompt, 2000));
        // Older vLLM and SGLang.
        let old = "This model's maximum context length is 4096 tokens. However, you requested \
                   33000 tokens (1000 in the messages, 32000 in the completion).";
        assert!(max_tokens_too_large(old, 32000));
        assert!(!max_tokens_too_large(old, 1000));
        let sglang = "Requested token count exceeds the model's maximum context length of \
                      4,096 tokens. You requested a total of 33000 tokens";
        assert!(max_tokens_too_large(sglang, 32000));
        // OpenAI and DeepSeek.
        assert!(max_tokens_too_large(
            "max_tokens is too large: 100000. This model supports at most 16384 completion tokens",
            100000
        ));
        assert!(max_tokens_too_large(
            "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]",
            32768
        ));
        assert!(!max_tokens_too_large("prompt too long", 32768));
    }

    #[test]
    fn streaming_only_refusals() {
        assert!(asks_for_streaming("Stream must be set to true"));
        assert!(asks_for_streaming("only streaming requests are supported"));
        assert!(!asks_for_streaming("prompt too long"));
    }
}
