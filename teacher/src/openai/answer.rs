//! An OpenAI chat answer as the sample it stands for: the reasoning joined back into one
//! `<think>` text (left open when the answer was cut while reasoning), the prefill restored
//! when the endpoint continued it, and per-token log-probabilities read by token id.

use super::{wire, PrefillMode};
use crate::backend::{FinishReason, GenOutput, GenRequest, TokenLogprobs};
use wire::ChatResponse;

/// The sample of a response; `Err` when log-probabilities were asked for and the response's
/// cannot be stored (missing, or tokens named by text rather than id).
pub(super) fn to_output(
    request: &GenRequest,
    prefill: PrefillMode,
    response: ChatResponse,
) -> std::result::Result<GenOutput, String> {
    let choice = response.choices.into_iter().next().unwrap_or_default();
    let logprobs = match request.sampling.logprobs {
        0 => None,
        k => Some(token_logprobs(choice.logprobs.as_ref(), k)?),
    };
    let content = choice.message.content.unwrap_or_default();
    let reasoning = choice
        .message
        .reasoning_content
        .or(choice.message.reasoning);
    // A missing reason is not taken for `stop`: only a model that ended its answer is clean.
    let finish_reason = choice
        .finish_reason
        .as_deref()
        .map_or(FinishReason::Unknown, FinishReason::parse);
    let text = match reasoning {
        // Cut while reasoning (the parser saw no `</think>`, so there is no content): closing
        // the block here would pass a truncated trace off as a finished one.
        Some(reasoning) if content.is_empty() && !finish_reason.is_finished() => {
            wire::open_reasoning(reasoning.trim_start_matches('\n'))
        }
        Some(reasoning) => wire::join_reasoning(reasoning.trim_matches('\n'), &content),
        // The endpoint continued the prefill, so the turn starts with it (as the local backend's).
        None if prefill == PrefillMode::ContinueFinalMessage => {
            format!("{}{content}", request.prefill)
        }
        None => content,
    };
    let usage = response.usage.unwrap_or_default();
    Ok(GenOutput {
        key: request.key.clone(),
        text,
        finish_reason,
        prompt_tokens: u32::try_from(usage.prompt_tokens).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(usage.completion_tokens).unwrap_or(u32::MAX),
        logprobs,
    })
}

/// A response's per-token log-probabilities with `k` alternatives each, tokens by id.
fn token_logprobs(
    logprobs: Option<&wire::ChoiceLogprobs>,
    k: usize,
) -> std::result::Result<TokenLogprobs, String> {
    let tokens = logprobs
        .and_then(|l| l.content.as_ref())
        .ok_or("the response has no `logprobs.content`")?;
    let id = |token: &str| {
        wire::token_id(token).ok_or_else(|| format!("token `{token}` is not `token_id:N`"))
    };
    let mut out = TokenLogprobs::new(k);
    for (i, t) in tokens.iter().enumerate() {
        if t.top_logprobs.len() < k {
            return Err(format!(
                "token {i} has {} alternatives where {k} were asked",
                t.top_logprobs.len()
            ));
        }
        let top = t.top_logprobs[..k]
            .iter()
            .map(|a| Ok((id(&a.token)?, a.logprob as f32)))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        out.push(id(&t.token)?, t.logprob as f32, &top)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-probabilities are stored by token id: a response naming tokens by text, or none at
    /// all, is refused with the reason; `token_id:N` names are read back.
    #[test]
    fn logprobs_need_token_ids() {
        let token = |name: &str, top: Vec<wire::TopLogprob>| wire::TokenLogprob {
            token: name.into(),
            logprob: -0.25,
            bytes: None,
            top_logprobs: top,
        };
        let alt = |name: &str| wire::TopLogprob {
            token: name.into(),
            logprob: -0.25,
            bytes: None,
        };
        let ids = wire::ChoiceLogprobs {
            content: Some(vec![token(
                "token_id:7",
                vec![alt("token_id:7"), alt("token_id:3")],
            )]),
        };
        let lp = token_logprobs(Some(&ids), 2).unwrap();
        assert_eq!(lp.token_ids(), &[7]);
        assert_eq!(lp.top(0).0, &[7, 3]);
        let text = wire::ChoiceLogprobs {
            content: Some(vec![token("Hi", vec![alt("Hi"), alt("Ho")])]),
        };
        assert!(token_logprobs(Some(&text), 2)
            .unwrap_err()
            .contains("`Hi` is not `token_id:N`"));
        assert!(token_logprobs(None, 2)
            .unwrap_err()
            .contains("no `logprobs.content`"));
        assert!(token_logprobs(Some(&ids), 3)
            .unwrap_err()
            .contains("3 were asked"));
    }
}
