//! The contract every generation backend fulfils, so the `generate` stage, `compare` and
//! `serve` never care whether samples come from a local model or a remote endpoint.

use distill_models::chat::Message;

/// Sampling settings. Defaults follow DeepSeek-R1's usage recommendations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Also return the `logprobs` most likely tokens and their log-probabilities at every
    /// generated token (0: none).
    #[serde(default)]
    pub logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 0,
            max_new_tokens: 32768,
            logprobs: 0,
        }
    }
}

/// One sample to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    /// Caller's key for the result (the corpus uses `{problem_id}/{sample_index}`).
    pub key: String,
    /// The conversation so far (R1 convention: a single user turn, no system prompt).
    pub messages: Vec<Message>,
    /// Text the assistant turn starts with (R1 convention: `"<think>\n"`); it is part of the
    /// prompt, and is also prepended to the returned `text`.
    pub prefill: String,
    pub sampling: SamplingParams,
    /// This sample's own seed, derived by the caller from (run seed, problem id, sample index)
    /// so results never depend on batching, order or resumes.
    pub seed: u64,
    /// Extra stop strings (EOS ids of the checkpoint always stop).
    pub stop: Vec<String>,
    /// A raw prompt's token ids (`/v1/completions`): when set, the model continues exactly
    /// these and `messages` and `prefill` are not used (no chat template).
    pub prompt_ids: Option<Vec<u32>>,
}

/// Per-token log-probabilities, defined beside the corpus columns that store them.
pub use distill_corpus::logprobs::TokenLogprobs;
/// Why generation ended: the corpus' `finish_reason` values, defined once beside the record.
pub use distill_corpus::record::FinishReason;

/// One finished sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    pub key: String,
    /// The whole assistant turn, prefill included (so `<think>` parsing sees the open tag);
    /// a backend that receives `reasoning_content` separately re-wraps it as
    /// `<think>\n{reasoning}\n</think>\n\n{content}`.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Per generated token, when `sampling.logprobs` asked for them and the backend has them.
    pub logprobs: Option<TokenLogprobs>,
}

/// A cancellation flag shared between the caller (a Ctrl-C handler, a failing sink) and a
/// running backend. Cloning shares the flag. Once set, a backend starts no new request and
/// returns as soon as it can; requests still in flight are abandoned and never reported (they
/// will be regenerated identically on a resume, since every sample has its own seed).
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a backend reports while it runs, in the order things happen.
#[derive(Debug)]
pub enum Event {
    /// A sample finished.
    Done(GenOutput),
    /// One request failed for good (after the backend's own retries); the others go on.
    Failed { key: String, error: crate::Error },
    /// Tokens generated since the previous `Progress` (for tokens/s displays; a backend that
    /// only learns counts at the end of a request may report them with its `Done`).
    Progress { new_tokens: u64 },
}

/// Totals for one [`Backend::generate`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenStats {
    pub completed: u64,
    pub failed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Whether the run stopped early because [`Cancel`] was set.
    pub cancelled: bool,
    /// Sequences paused to free KV cache blocks and recomputed later (local engine).
    #[serde(default)]
    pub preempted: u64,
    /// Most bytes of keys and values the live sequences held at once (local engine; in whole
    /// blocks of 32 positions), the figure to size `--kv-cache-gib` by.
    #[serde(default)]
    pub peak_kv_bytes: u64,
}

/// Failed attempts of requests by kind, every failed attempt counted whether it was retried or
/// not. Serialised with the names `generation.json` uses (`http_429`, `http_5xx`, `timeout`,
/// `connection`, `malformed`, `http_4xx`, `auth`). A local backend makes no remote attempts and
/// reports zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ErrorCounts {
    /// HTTP 429 (rate limited; retried, honouring `Retry-After`).
    #[serde(rename = "http_429")]
    pub rate_limited: u64,
    /// HTTP 5xx (retried).
    #[serde(rename = "http_5xx")]
    pub server: u64,
    /// No complete answer within the time-out (retried).
    pub timeout: u64,
    /// The connection failed (retried).
    #[serde(rename = "connection")]
    pub connect: u64,
    /// A response that is not the expected JSON (retried).
    pub malformed: u64,
    /// Other HTTP 4xx: the request itself was refused (not retried; the sample fails).
    #[serde(rename = "http_4xx")]
    pub client: u64,
    /// HTTP 401/403: the key was rejected (not retried; the run ends).
    pub auth: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.rate_limited
            + self.server
            + self.malformed
            + self.client
            + self.auth
    }

    /// Counts of both.
    pub fn plus(&self, other: &ErrorCounts) -> ErrorCounts {
        self.zip(other, u64::saturating_add)
    }

    /// What was counted since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &ErrorCounts) -> ErrorCounts {
        self.zip(earlier, u64::saturating_sub)
    }

    fn zip(&self, o: &ErrorCounts, f: impl Fn(u64, u64) -> u64) -> ErrorCounts {
        ErrorCounts {
            rate_limited: f(self.rate_limited, o.rate_limited),
            server: f(self.server, o.server),
            timeout: f(self.timeout, o.timeout),
            connect: f(self.connect, o.connect),
            malformed: f(self.malformed, o.malformed),
            client: f(self.client, o.client),
            auth: f(self.auth, o.auth),
        }
    }
}

/// A source of samples: a local model or a remote endpoint.
///
/// Contract:
/// - `requests` is pulled lazily (an 800k-sample run never materialises every prompt), only as
///   fast as the backend has room for them.
/// - `on_event` is called on the thread that called `generate`, as results finish (not in request
///   order); it is never called after `generate` returns.
/// - A failure of one request is an [`Event::Failed`]; `generate` itself returns `Err` only for
///   failures that doomed the whole run (the model cannot run, the endpoint rejects the API key).
/// - Cancellation: see [`Cancel`]; a cancelled run returns `Ok` with `cancelled: true`.
pub trait Backend: Send + Sync {
    /// Provenance string for the corpus `teacher` column (a model file name, `openai:<model>`).
    fn name(&self) -> String;

    fn generate(
        &self,
        requests: &mut (dyn Iterator<Item = GenRequest> + Send),
        cancel: &Cancel,
        on_event: &mut dyn FnMut(Event),
    ) -> crate::Result<GenStats>;

    /// Failed attempts over the backend's lifetime, by kind (the `generate` stage records what
    /// one run added). The default, for backends that make no remote requests, is all zero.
    fn error_counts(&self) -> ErrorCounts {
        ErrorCounts::default()
    }
}
