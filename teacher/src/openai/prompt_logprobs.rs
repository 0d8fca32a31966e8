//! Scoring given token ids on an OpenAI-compatible `/v1/completions` endpoint with vLLM's
//! `prompt_logprobs`: the served model's log-probability of every token of a sequence and its
//! `k` most likely tokens at each position, for a teacher that scores a student's samples
//! without being loaded here (on-policy distillation from a vLLM-served 70B teacher).
//!
//! The prompt goes as token ids, never as text, so the teacher scores exactly the tokens the
//! student sampled; vLLM adds no special tokens to an id prompt. `max_tokens` is 1 (vLLM
//! generates at least one token; it is ignored). vLLM caps `k` at its `--max-logprobs` (20 by
//! default) and refuses more with a 400 that is passed on. `distill serve` answers the same
//! request (`teacher/src/server/completions.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{
    endpoint_url, runtime, send, with_retries, AttemptError, Failure, OpenAiConfig, Shared,
};
use crate::score::TokenScore;
use crate::{Error, Result};

/// A `/v1/completions` request as far as scoring needs it (and `distill serve` reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A text, token ids, or a list of either (a batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// vLLM: the `k` most likely tokens at every prompt position (plus the prompt's own token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    /// Generation only (`distill serve` generates when a request asks for no
    /// `prompt_logprobs`), as in `/v1/chat/completions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<super::wire::Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<super::wire::StreamOptions>,
}

/// OpenAI's `prompt`: one text, one sequence of ids, or a batch of either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// A `/v1/completions` answer.
pub type CompletionResponse = super::wire::Response<CompletionChoice>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompletionChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// One entry per prompt token, `null` for the first: the prompt's own token and the `k`
    /// most likely ones at that position, by id (JSON object keys are the ids as strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<Option<HashMap<u32, PromptLogprob>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    /// A generated choice's log-probabilities in the completions API's own shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<CompletionLogprobs>,
}

/// `choices[i].logprobs` of `/v1/completions` (OpenAI's legacy shape): per token of `text` its
/// text, log-probability, the most likely alternatives by text, and where it starts in `text`
/// (in characters, as vLLM counts them: Python's `len`). An echoed prompt's first token has no
/// log-probability (`null`, as OpenAI answers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<HashMap<String, f64>>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Appends a token by its text, with its log-probability and alternatives (`None` for an
    /// echoed prompt's first token).
    pub fn push(&mut self, token: String, scored: Option<(f64, HashMap<String, f64>)>) {
        let offset = self.text_offset.last().map_or(0, |o| {
            o + self.tokens.last().map_or(0, |t| t.chars().count())
        });
        self.text_offset.push(offset);
        self.tokens.push(token);
        let (logprob, top) = scored.unzip();
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(top);
    }
}

/// One token's entry in `prompt_logprobs` (vLLM's `Logprob`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprob {
    pub logprob: f64,
    /// 1 for the most likely token.
    #[serde(default)]
    pub rank: Option<u32>,
    #[serde(default)]
    pub decoded_token: Option<String>,
}

/// Reads one sequence's `prompt_logprobs` into scores of `ids[1..]` with `k` alternatives
/// each, or says what is missing.
pub fn read_prompt_logprobs(
    ids: &[u32],
    entries: &[Option<HashMap<u32, PromptLogprob>>],
    k: usize,
) -> std::result::Result<Vec<TokenScore>, String> {
    if entries.len() != ids.len() {
        return Err(format!(
            "`prompt_logprobs` has {} entries for a prompt of {} tokens",
            entries.len(),
            ids.len()
        ));
    }
    let mut scores = Vec::with_capacity(ids.len().saturating_sub(1));
    for (i, (&token, entry)) in ids.iter().zip(entries).enumerate().skip(1) {
        let entry = entry
            .as_ref()
            .ok_or_else(|| format!("`prompt_logprobs[{i}]` is null"))?;
        let own = entry.get(&token).ok_or_else(|| {
            format!("`prompt_logprobs[{i}]` does not hold the prompt's token {token}")
        })?;
        let mut top: Vec<(u32, &PromptLogprob)> = entry.iter().map(|(&id, l)| (id, l)).collect();
        // By rank where the server gives it, else by log-probability; ties by id.
        top.sort_by(|(a, x), (b, y)| {
            x.rank
                .unwrap_or(u32::MAX)
                .cmp(&y.rank.unwrap_or(u32::MAX))
                .then(y.logprob.total_cmp(&x.logprob))
                .then(a.cmp(b))
        });
        if top.len() < k {
            return Err(format!(
                "`prompt_logprobs[{i}]` holds {} tokens where {k} were asked",
                top.len()
            ));
        }
        scores.push(TokenScore {
            logprob: own.logprob as f32,
            rank: own.rank.unwrap_or(0),
            top: top
                .into_iter()
                .take(k)
                .map(|(id, l)| (id, l.logprob as f32))
                .collect(),
            text: own.decoded_token.clone(),
        });
    }
    Ok(scores)
}

/// Scores token sequences on one or more OpenAI-compatible endpoints that return vLLM's
/// `prompt_logprobs` (vLLM, `distill serve`), with the `openai` backend's retries and limits.
pub struct PromptScorer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    urls: Vec<String>,
}

impl PromptScorer {
    /// Connects to `config.base_urls`: asks the first for its models (`GET /v1/models`, one
    /// attempt, so a wrong address fails at once), and takes its only model when
    /// `config.model` is empty.
    pub fn new(mut config: OpenAiConfig) -> Result<Self> {
        let runtime = runtime()?;
        let probe = Shared::new(OpenAiConfig {
            max_retries: 0,
            ..config.clone()
        })?;
        let models_url = endpoint_url(&config.base_urls[0], "models")?;
        let served = runtime.block_on(async {
            let mut request = probe.client.get(&models_url);
            if let Some(key) = &probe.api_key {
                request = request.bearer_auth(key.secret());
            }
            let response = request.send().await.map_err(|e| Error::Unreachable {
                url: models_url.clone(),
                attempts: 1,
                message: super::transport_error(e).describe(probe.config.timeout),
            })?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::Backend(format!(
                    "`{models_url}` answered HTTP {}: {}",
                    status.as_u16(),
                    super::wire::error_message(&text)
                )));
            }
            let list: ModelList = serde_json::from_str(&text).map_err(|e| {
                Error::Backend(format!("`{models_url}` answered no model list: {e}"))
            })?;
            Ok(list.data.into_iter().map(|m| m.id).collect::<Vec<_>>())
        })?;
        if config.model.trim().is_empty() {
            config.model = match served.as_slice() {
                [one] => one.clone(),
                [] => return Err(Error::Backend(format!("`{models_url}` serves no model"))),
                many => {
                    return Err(Error::Config(format!(
                        "`{models_url}` serves {} models (`{}`): name the teacher's",
                        many.len(),
                        many.join("`, `")
                    )))
                }
            };
        } else if !served.contains(&config.model) {
            return Err(Error::NotFound {
                url: models_url,
                model: config.model.clone(),
                message: format!("it serves `{}`", served.join("`, `")),
            });
        }
        let urls = config
            .base_urls
            .iter()
            .map(|b| endpoint_url(b, "completions"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shared: Arc::new(Shared::new(config)?),
            runtime,
            urls,
        })
    }

    /// The served model's name, as sent in each request.
    pub fn model(&self) -> &str {
        &self.shared.config.model
    }

    /// Scores each sequence: entry `i` of a sequence's scores is its token `i + 1` given the
    /// tokens before it, with the `k` most likely tokens there. Requests run `concurrency` at
    /// a time; the first failure ends the call.
    pub fn score(&self, sequences: &[Vec<u32>], k: usize) -> Result<Vec<Vec<TokenScore>>> {
        if k == 0 {
            return Err(Error::Config(
                "scoring asks for at least one alternative per token".into(),
            ));
        }
        self.runtime.block_on(async {
            let limit = Arc::new(tokio::sync::Semaphore::new(self.shared.config.concurrency));
            let mut tasks = JoinSet::new();
            for (i, ids) in sequences.iter().enumerate() {
                let shared = Arc::clone(&self.shared);
                let urls = self.urls.clone();
                let limit = Arc::clone(&limit);
                let ids = ids.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    (i, score_one(&shared, &urls, &ids, k).await)
                });
            }
            let mut out = vec![Vec::new(); sequences.len()];
            while let Some(joined) = tasks.join_next().await {
                let (i, scored) =
                    joined.map_err(|e| Error::Backend(format!("a scoring task failed: {e}")))?;
                out[i] = scored.map_err(|failure| match failure {
                    Failure::Fatal(e) => e,
                    Failure::Request(message) => Error::Request {
                        key: format!("scoring sequence {i}"),
                        message,
                    },
                })?;
            }
            Ok(out)
        })
    }
}

#[derive(Deserialize)]
struct ModelList {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// One sequence's request with its retries.
async fn score_one(
    shared: &Shared,
    urls: &[String],
    ids: &[u32],
    k: usize,
) -> std::result::Result<Vec<TokenScore>, Failure> {
    let body = CompletionRequest {
        model: Some(shared.config.model.clone()),
        prompt: Some(PromptInput::Ids(ids.to_vec())),
        max_tokens: Some(1),
        temperature: Some(0.0),
        prompt_logprobs: Some(i64::try_from(k).unwrap_or(i64::MAX)),
        n: Some(1),
        ..CompletionRequest::default()
    };
    let body = &body;
    let (scores, _) = with_retries(shared, urls, 1, |url: String, _streaming: bool| async move {
        let (text, _) = send(shared, &url, body).await?;
        let answer: CompletionResponse =
            serde_json::from_str(&text).map_err(|e| AttemptError::Malformed(e.to_string()))?;
        let entries = answer
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.prompt_logprobs)
            .ok_or_else(|| {
                AttemptError::Unsupported(
                    "its answer has no `choices[0].prompt_logprobs`: the endpoint does not score prompts (vLLM and `distill serve` do)".into(),
                )
            })?;
        // The same request would get the same short answer.
        read_prompt_logprobs(ids, &entries, k).map_err(AttemptError::Unsupported)
    })
    .await?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape vLLM 0.30 answers (`CompletionResponseChoice.prompt_logprobs`: a `null`, then
    /// the prompt's token and the top `k` by id, each with `logprob`, `rank`, `decoded_token`);
    /// here k = 2 and the second prompt token is not among the top 2.
    const VLLM_ANSWER: &str = r#"{
      "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "teacher",
      "choices": [{
        "index": 0, "text": "!", "logprobs": null, "finish_reason": "length",
        "stop_reason": null, "prompt_token_ids": [5, 9, 7],
        "prompt_logprobs": [
          null,
          {"9": {"logprob": -3.5, "rank": 3, "decoded_token": " b"},
           "4": {"logprob": -0.25, "rank": 1, "decoded_token": " a"},
           "8": {"logprob": -1.75, "rank": 2, "decoded_token": " c"}},
          {"7": {"logprob": -0.5, "rank": 1, "decoded_token": "d"},
           "3": {"logprob": -1.0, "rank": 2, "decoded_token": "e"}}
        ]
      }],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    }"#;

    #[test]
    fn vllm_prompt_logprobs_are_read_by_rank() {
        let answer: CompletionResponse = serde_json::from_str(VLLM_ANSWER).unwrap();
        let entries = answer.choices[0].prompt_logprobs.clone().unwrap();
        let scores = read_prompt_logprobs(&[5, 9, 7], &entries, 2).unwrap();
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].logprob, -3.5);
        assert_eq!(scores[0].rank, 3);
        assert_eq!(scores[0].top, vec![(4, -0.25), (8, -1.75)]);
        assert_eq!(scores[0].text.as_deref(), Some(" b"));
        assert_eq!(scores[1].top, vec![(7, -0.5), (3, -1.0)]);
        // Fewer alternatives than asked, a missing token, a wrong length: each said.
        let e = read_prompt_logprobs(&[5, 9, 7], &entries, 3).unwrap_err();
        assert!(
            e.contains("`prompt_logprobs[2]` holds 2 tokens where 3"),
            "{e}"
        );
        let e = read_prompt_logprobs(&[5, 9, 6], &entries, 2).unwrap_err();
        assert!(e.contains("does not hold the prompt's token 6"), "{e}");
        assert!(read_prompt_logprobs(&[5, 9], &entries, 2).is_err());
    }

    #[test]
    fn requests_send_ids_and_ask_for_prompt_logprobs() {
        let body = CompletionRequest {
            model: Some("m".into()),
            prompt: Some(PromptInput::Ids(vec![1, 2])),
            max_tokens: Some(1),
            prompt_logprobs: Some(20),
            ..CompletionRequest::default()
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"model": "m", "prompt": [1, 2], "max_tokens": 1, "prompt_logprobs": 20})
        );
        for (text, want) in [
            (r#""hi""#, PromptInput::Text("hi".into())),
            ("[1, 2]", PromptInput::Ids(vec![1, 2])),
            (
                r#"["a", "b"]"#,
                PromptInput::Texts(vec!["a".into(), "b".into()]),
            ),
            (
                "[[1], [2, 3]]",
                PromptInput::IdLists(vec![vec![1], vec![2, 3]]),
            ),
        ] {
            assert_eq!(serde_json::from_str::<PromptInput>(text).unwrap(), want);
        }
    }
}
