//! The `openai` backend: samples from OpenAI-compatible `/v1/chat/completions` endpoints (DeepSeek's
//! API, vLLM, SGLang, `distill serve`), the way to drive a 671B teacher served across many GPUs.
//!
//! Requests go round-robin over one or more base URLs with bounded concurrency, a per-request
//! time-out, and retries with exponential backoff and jitter on connection errors, time-outs, 429
//! (honouring `Retry-After`), 5xx and malformed JSON. A 401/403 ends the run at once: every further
//! request would be rejected too, and retrying them only hammers the endpoint.
//!
//! The trait is synchronous, so the backend owns a small tokio runtime; requests run as tasks on
//! its worker threads, so a slow `on_event` (a shard being written) never stalls their I/O.
//!
//! A 400 saying `max_tokens` cannot fit the model's context ends the run at once too, with the
//! server's message: it is true of every request alike.
//!
//! Streaming: with `stream` set, or once an endpoint refuses a non-streaming request saying it
//! only streams (the backend then streams every later request), answers come as server-sent
//! events whose deltas are joined back into one answer (the `stream` module); an answer that
//! arrives as an event stream although none was asked for is read the same way.
//!
//! Finish reasons other than `stop` and `length` (`content_filter`, `abort`, `tool_calls`...)
//! are kept as what they are, and an answer cut while still reasoning keeps its think block
//! open, so the curation filters see both.
//!
//! Prefill: R1 endpoints generally reject or ignore an assistant prefill, and R1's own chat template
//! already opens `<think>`, so by default the request's `prefill` is not sent. With
//! [`PrefillMode::ContinueFinalMessage`] it is sent as a final assistant message with vLLM's
//! `continue_final_message`, and prepended to the returned text as the local backend does.

mod answer;
mod api_key;
pub mod prompt_logprobs;
mod refusal;
mod stream;
pub mod wire;

pub use api_key::ApiKey;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

pub use crate::backend::ErrorCounts;
use crate::backend::{Backend, Cancel, Event, GenOutput, GenRequest, GenStats};
use crate::{Error, Result};
use wire::{ChatRequest, ChatResponse, Content, Stop, StreamOptions, WireMessage};

/// How the request's `prefill` (the start of the assistant turn) reaches the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefillMode {
    /// Not sent (R1 endpoints: the template opens `<think>` itself).
    #[default]
    None,
    /// Sent as a final assistant message with `continue_final_message: true` (vLLM).
    ContinueFinalMessage,
}

/// Settings of the `openai` backend (the API key itself is never part of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiConfig {
    /// Base URLs, with or without a trailing `/v1`; requests go round-robin over them.
    pub base_urls: Vec<String>,
    /// The `model` field of each request.
    pub model: String,
    /// Name of the environment variable holding the API key (`None`: send no key).
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Time-out of one HTTP request, connection to last byte.
    pub timeout: Duration,
    /// Retries of one request after its first attempt.
    pub max_retries: u32,
    /// First backoff delay; it doubles per retry, up to `backoff_max`, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` obeyed, so a confused server cannot park the run for a day.
    pub retry_after_max: Duration,
    pub prefill: PrefillMode,
    /// Ask for streamed answers (`stream: true`) from the first request, for servers that only
    /// stream. Without it the backend switches to streaming when a server says it must.
    pub stream: bool,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_urls: Vec::new(),
            model: String::new(),
            api_key_env: None,
            concurrency: 16,
            // R1 traces reach 32k tokens; a slow shared endpoint needs many minutes for them.
            timeout: Duration::from_secs(1800),
            max_retries: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(600),
            prefill: PrefillMode::None,
            stream: false,
        }
    }
}

/// A backend sampling from OpenAI-compatible endpoints.
pub struct OpenAiBackend {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("config", &self.shared.config)
            .field("endpoints", &self.shared.endpoints)
            .finish_non_exhaustive()
    }
}

/// What the request tasks share.
#[derive(Debug)]
struct Shared {
    config: OpenAiConfig,
    /// Full `/v1/chat/completions` URLs, one per base URL.
    endpoints: Vec<String>,
    next_endpoint: AtomicUsize,
    client: reqwest::Client,
    api_key: Option<ApiKey>,
    counts: Mutex<ErrorCounts>,
    /// Whether requests ask for a stream: `config.stream`, or set once a server said it only
    /// streams.
    streaming: AtomicBool,
}

/// `{base}/v1/chat/completions`, whether or not `base` already ends in `/v1`.
pub fn chat_completions_url(base: &str) -> Result<String> {
    endpoint_url(base, "chat/completions")
}

/// `{base}/v1/{path}`, whether or not `base` already ends in `/v1`.
pub fn endpoint_url(base: &str, path: &str) -> Result<String> {
    let trimmed = base.trim().trim_end_matches('/');
    let root = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let url = format!("{root}/v1/{path}");
    let parsed = reqwest::Url::parse(&url).map_err(|e| Error::BaseUrl {
        url: base.to_string(),
        message: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::BaseUrl {
            url: base.to_string(),
            message: "the scheme must be `http` or `https`".to_string(),
        });
    }
    Ok(url)
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]")
}

impl OpenAiBackend {
    /// Checks the settings and reads the API key from its environment variable.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        if config.model.trim().is_empty() {
            return Err(Error::Config(
                "the `openai` backend needs a model name".into(),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared::new(config)?),
            runtime: runtime()?,
        })
    }

    /// Failed attempts so far, by kind.
    pub fn error_counts(&self) -> ErrorCounts {
        *lock(&self.shared.counts)
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.shared.config
    }
}

impl Shared {
    /// Checks the settings, reads the API key from its environment variable and builds the
    /// HTTP client.
    fn new(config: OpenAiConfig) -> Result<Self> {
        if config.base_urls.is_empty() {
            return Err(Error::Config(
                "the `openai` backend needs at least one base URL".into(),
            ));
        }
        if config.concurrency == 0 {
            return Err(Error::Config("`concurrency` must be at least 1".into()));
        }
        if config.timeout.is_zero() {
            return Err(Error::Config("`timeout` must be positive".into()));
        }
        let endpoints = config
            .base_urls
            .iter()
            .map(|b| chat_completions_url(b))
            .collect::<Result<Vec<_>>>()?;
        let api_key = config
            .api_key_env
            .as_deref()
            .map(ApiKey::from_env)
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(30)))
            .pool_max_idle_per_host(config.concurrency);
        // A proxy from the environment would swallow requests meant for this machine.
        if endpoints.iter().all(|e| is_loopback(e)) {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| Error::Backend(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            endpoints,
            next_endpoint: AtomicUsize::new(0),
            client,
            api_key,
            counts: Mutex::new(ErrorCounts::default()),
            streaming: AtomicBool::new(config.stream),
            config,
        })
    }
}

/// The small runtime the synchronous callers run their requests on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("distill-openai")
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The counters stay meaningful even if a task panicked while holding the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for OpenAiBackend {
    fn name(&self) -> String {
        format!("openai:{}", self.shared.config.model)
    }

    fn generate(
        &self,
        requests: &mut (dyn Iterator<Item = GenRequest> + Send),
        cancel: &Cancel,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<GenStats> {
        self.runtime.block_on(drive(
            &self.shared,
            self.shared.config.concurrency,
            requests,
            cancel,
            on_event,
        ))
    }

    fn error_counts(&self) -> ErrorCounts {
        OpenAiBackend::error_counts(self)
    }
}

/// Keeps up to `concurrency` requests in flight, reporting each as it ends.
async fn drive(
    shared: &Arc<Shared>,
    concurrency: usize,
    requests: &mut (dyn Iterator<Item = GenRequest> + Send),
    cancel: &Cancel,
    on_event: &mut dyn FnMut(Event),
) -> Result<GenStats> {
    let mut stats = GenStats::default();
    let mut tasks: JoinSet<(String, std::result::Result<GenOutput, Failure>)> = JoinSet::new();
    let mut exhausted = false;
    loop {
        if cancel.is_cancelled() {
            // Dropping the set aborts what is in flight; those samples are simply redone on resume.
            tasks.abort_all();
            stats.cancelled = true;
            return Ok(stats);
        }
        while !exhausted && tasks.len() < concurrency {
            match requests.next() {
                Some(request) => {
                    let shared = Arc::clone(shared);
                    tasks.spawn(async move {
                        let key = request.key.clone();
                        (key, run_request(&shared, request).await)
                    });
                }
                None => exhausted = true,
            }
        }
        if tasks.is_empty() {
            return Ok(stats);
        }
        // Wake up now and then to notice a cancellation while every request is still running.
        let joined = match tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await
        {
            Err(_) => continue,
            Ok(None) => continue,
            Ok(Some(joined)) => joined,
        };
        let (key, outcome) = match joined {
            Ok(done) => done,
            Err(e) => {
                tasks.abort_all();
                return Err(Error::Backend(format!("a request task failed: {e}")));
            }
        };
        match outcome {
            Ok(output) => {
                stats.completed += 1;
                stats.prompt_tokens += u64::from(output.prompt_tokens);
                stats.completion_tokens += u64::from(output.completion_tokens);
                // An endpoint's counts come with its answer: reported then, so tokens/s
                // displays move (they read `Progress`).
                on_event(Event::Progress {
                    new_tokens: u64::from(output.completion_tokens),
                });
                on_event(Event::Done(output));
            }
            Err(Failure::Fatal(error)) => {
                tasks.abort_all();
                return Err(error);
            }
            Err(Failure::Request(message)) => {
                stats.failed += 1;
                on_event(Event::Failed {
                    error: Error::Request {
                        key: key.clone(),
                        message,
                    },
                    key,
                });
            }
        }
    }
}

/// How a request ended for good.
#[derive(Debug)]
enum Failure {
    /// This request failed; the others go on.
    Request(String),
    /// The run cannot go on (the key is rejected, the endpoint cannot be reached).
    Fatal(Error),
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    Connect(String),
    Timeout,
    RateLimited {
        retry_after: Option<Duration>,
    },
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    Malformed(String),
    /// A well-formed answer without what was asked (an endpoint that does not score prompts):
    /// every request would get the same, so the run ends.
    Unsupported(String),
    Client {
        status: u16,
        message: String,
    },
    Auth {
        status: u16,
    },
}

impl AttemptError {
    fn retryable(&self) -> bool {
        !matches!(
            self,
            AttemptError::Client { .. } | AttemptError::Auth { .. } | AttemptError::Unsupported(_)
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::RateLimited { retry_after } => *retry_after,
            AttemptError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn count(&self, counts: &mut ErrorCounts) {
        match self {
            AttemptError::Connect(_) => counts.connect += 1,
            AttemptError::Timeout => counts.timeout += 1,
            AttemptError::RateLimited { .. } => counts.rate_limited += 1,
            AttemptError::Server { .. } => counts.server += 1,
            AttemptError::Malformed(_) | AttemptError::Unsupported(_) => counts.malformed += 1,
            AttemptError::Client { .. } => counts.client += 1,
            AttemptError::Auth { .. } => counts.auth += 1,
        }
    }

    fn describe(&self, timeout: Duration) -> String {
        match self {
            AttemptError::Connect(m) => format!("connection failed: {m}"),
            AttemptError::Timeout => format!("no complete answer within {timeout:?}"),
            AttemptError::RateLimited { .. } => "rate limited (HTTP 429)".to_string(),
            AttemptError::Server {
                status, message, ..
            } => format!("server error (HTTP {status}): {message}"),
            AttemptError::Malformed(m) => format!("malformed response: {m}"),
            AttemptError::Unsupported(m) => m.clone(),
            AttemptError::Client { status, message } => format!("HTTP {status}: {message}"),
            AttemptError::Auth { status } => format!("HTTP {status}"),
        }
    }
}

/// One request with its retries.
async fn run_request(
    shared: &Shared,
    request: GenRequest,
) -> std::result::Result<GenOutput, Failure> {
    let config = &shared.config;
    let (response, url) = with_retries(
        shared,
        &shared.endpoints,
        request.sampling.max_new_tokens,
        |url: String, streaming: bool| {
            let body = request_body(config, &request, streaming);
            async move {
                let (text, event_stream) = send(shared, &url, &body).await?;
                read_chat(&text, event_stream)
            }
        },
    )
    .await?;
    answer::to_output(&request, config.prefill, response).map_err(|detail| {
        Failure::Fatal(Error::NoTokenLogprobs {
            url: url.clone(),
            detail,
        })
    })
}

/// Runs `attempt` against `urls` (round-robin per attempt) until it succeeds, retrying what
/// can be retried with backoff; returns its result and the URL that gave it. `max_tokens` names
/// the request's budget in the refusal that it cannot fit the model's context.
async fn with_retries<T, F>(
    shared: &Shared,
    urls: &[String],
    max_tokens: usize,
    attempt: impl Fn(String, bool) -> F,
) -> std::result::Result<(T, String), Failure>
where
    F: std::future::Future<Output = std::result::Result<T, AttemptError>>,
{
    let config = &shared.config;
    let attempts = config.max_retries + 1;
    let mut connect_failures = 0;
    let mut last = String::new();
    let mut tried = 0;
    while tried < attempts {
        // Round-robin per attempt, so a retry lands on another server when there are several.
        let index = shared.next_endpoint.fetch_add(1, Ordering::Relaxed) % urls.len();
        let url = &urls[index];
        let streaming = shared.streaming.load(Ordering::Relaxed);
        let error = match attempt(url.clone(), streaming).await {
            Ok(answer) => return Ok((answer, url.clone())),
            Err(error) => error,
        };
        if let AttemptError::Client { status, message } = &error {
            if !streaming && refusal::asks_for_streaming(message) {
                // Not a failure: the server only streams. Every request streams from now on,
                // and this one is asked again at once without using up an attempt.
                if !shared.streaming.swap(true, Ordering::Relaxed) {
                    tracing::info!(url = %url, "the endpoint only streams (HTTP {status}: {message}); streaming from now on");
                }
                continue;
            }
        }
        error.count(&mut lock(&shared.counts));
        match error {
            AttemptError::Auth { status } => {
                return Err(Failure::Fatal(match &config.api_key_env {
                    Some(env) => Error::ApiKeyRejected {
                        url: url.clone(),
                        env: env.clone(),
                        status,
                    },
                    None => Error::ApiKeyRequired {
                        url: url.clone(),
                        status,
                    },
                }))
            }
            // A wrong model name or path fails every request alike: stop at once.
            AttemptError::Client {
                status: 404,
                ref message,
            } => {
                return Err(Failure::Fatal(Error::NotFound {
                    url: url.clone(),
                    model: config.model.clone(),
                    message: message.clone(),
                }))
            }
            // So does a `max_tokens` the model's context cannot hold.
            AttemptError::Client {
                status: status @ (400 | 422),
                ref message,
            } if refusal::max_tokens_too_large(message, max_tokens) => {
                return Err(Failure::Fatal(Error::MaxTokensTooLarge {
                    url: url.clone(),
                    max_tokens,
                    status,
                    message: message.clone(),
                }))
            }
            AttemptError::Client { .. } => {
                return Err(Failure::Request(format!(
                    "`{url}` refused it: {}",
                    error.describe(config.timeout)
                )))
            }
            AttemptError::Unsupported(message) => {
                return Err(Failure::Fatal(Error::Backend(format!(
                    "`{url}`: {message}"
                ))))
            }
            _ => {}
        }
        debug_assert!(error.retryable());
        if matches!(error, AttemptError::Connect(_)) {
            connect_failures += 1;
        }
        last = error.describe(config.timeout);
        tracing::debug!(attempt = tried, url = %url, "request failed: {last}");
        if tried + 1 < attempts {
            let delay = match error.retry_after() {
                Some(wait) => wait.min(config.retry_after_max),
                None => backoff(config, tried),
            };
            tokio::time::sleep(delay).await;
        }
        tried += 1;
    }
    if connect_failures == attempts {
        // Not one attempt reached a server: the endpoint is down, and so is the rest of the run.
        let url = if urls.len() == 1 {
            urls[0].clone()
        } else {
            urls.join("`, `")
        };
        return Err(Failure::Fatal(Error::Unreachable {
            url,
            attempts,
            message: last,
        }));
    }
    Err(Failure::Request(format!(
        "gave up after {attempts} attempts; last: {last}"
    )))
}

/// Exponential backoff with jitter: `base · 2^attempt`, capped, times a factor in [0.5, 1) so
/// that requests failing together do not come back together.
fn backoff(config: &OpenAiConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(config.backoff_max);
    let jitter: f64 = 0.5 + 0.5 * rand::random::<f64>();
    exp.mul_f64(jitter)
}

fn request_body(config: &OpenAiConfig, request: &GenRequest, stream: bool) -> ChatRequest {
    let mut messages: Vec<WireMessage> = request
        .messages
        .iter()
        .map(|m| WireMessage {
            role: m.role.clone(),
            content: Some(Content::Text(m.content.clone())),
        })
        .collect();
    let continue_final =
        config.prefill == PrefillMode::ContinueFinalMessage && !request.prefill.is_empty();
    if continue_final {
        messages.push(WireMessage {
            role: "assistant".into(),
            content: Some(Content::Text(request.prefill.clone())),
        });
    }
    let sampling = &request.sampling;
    ChatRequest {
        model: Some(config.model.clone()),
        messages: Some(messages),
        temperature: Some(f64::from(sampling.temperature)),
        top_p: Some(f64::from(sampling.top_p)),
        // Not part of OpenAI's API; vLLM and SGLang accept it, so it is sent only when set.
        top_k: (sampling.top_k > 0).then(|| i64::try_from(sampling.top_k).unwrap_or(i64::MAX)),
        max_tokens: Some(i64::try_from(sampling.max_new_tokens).unwrap_or(i64::MAX)),
        max_completion_tokens: None,
        // Endpoints take a signed 64-bit seed (vLLM rejects anything larger).
        seed: Some((request.seed & i64::MAX as u64) as i64),
        stop: (!request.stop.is_empty()).then(|| Stop::Many(request.stop.clone())),
        n: Some(1),
        stream: Some(stream),
        // Without it a stream carries no token counts.
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        continue_final_message: continue_final.then_some(true),
        add_generation_prompt: continue_final.then_some(false),
        logprobs: (sampling.logprobs > 0).then_some(true),
        top_logprobs: (sampling.logprobs > 0).then_some(sampling.logprobs as i64),
        return_tokens_as_token_ids: (sampling.logprobs > 0).then_some(true),
    }
}

/// Posts `body` to `url` once: the answer's text and whether it came as an event stream, or
/// why the attempt failed (by status).
async fn send(
    shared: &Shared,
    url: &str,
    body: &impl Serialize,
) -> std::result::Result<(String, bool), AttemptError> {
    let mut builder = shared.client.post(url).json(body);
    if let Some(key) = &shared.api_key {
        // reqwest marks bearer headers sensitive, so they stay out of its own debug output.
        builder = builder.bearer_auth(key.secret());
    }
    let response = builder.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = parse_retry_after(response.headers(), SystemTime::now());
    let event_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(stream::EVENT_STREAM));
    let text = response.text().await.map_err(transport_error)?;
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(AttemptError::Auth {
            status: status.as_u16(),
        });
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(AttemptError::RateLimited { retry_after });
    }
    if status.is_server_error() {
        return Err(AttemptError::Server {
            status: status.as_u16(),
            message: wire::error_message(&text),
            retry_after,
        });
    }
    if !status.is_success() {
        return Err(AttemptError::Client {
            status: status.as_u16(),
            message: wire::error_message(&text),
        });
    }
    Ok((text, event_stream))
}

/// A chat answer, whole or as an event stream.
fn read_chat(text: &str, event_stream: bool) -> std::result::Result<ChatResponse, AttemptError> {
    let parsed: ChatResponse = if event_stream {
        stream::collect(text).map_err(|e| AttemptError::Malformed(e.to_string()))?
    } else {
        serde_json::from_str(text).map_err(|e| AttemptError::Malformed(e.to_string()))?
    };
    if parsed.choices.is_empty() {
        return Err(AttemptError::Malformed("no `choices` in the answer".into()));
    }
    Ok(parsed)
}

fn transport_error(e: reqwest::Error) -> AttemptError {
    if e.is_timeout() {
        AttemptError::Timeout
    } else if e.is_decode() {
        AttemptError::Malformed(e.to_string())
    } else {
        // reqwest's message names the URL only; the chain below it says why.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        AttemptError::Connect(message)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_v1() {
        for base in [
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000/v1",
            "http://127.0.0.1:8000/v1/",
        ] {
            assert_eq!(
                chat_completions_url(base).unwrap(),
                "http://127.0.0.1:8000/v1/chat/completions"
            );
        }
        assert!(chat_completions_url("not a url").is_err());
        assert!(chat_completions_url("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(3))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        headers.insert("retry-after", later.parse().unwrap());
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(7))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        headers.insert("retry-after", earlier.parse().unwrap());
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = OpenAiConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..OpenAiConfig::default()
        };
        for _ in 0..20 {
            let d0 = backoff(&config, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 < Duration::from_millis(100));
            let d3 = backoff(&config, 3);
            assert!(d3 >= Duration::from_millis(400) && d3 < Duration::from_millis(800));
            assert!(backoff(&config, 40) < Duration::from_millis(1000));
        }
    }
}
