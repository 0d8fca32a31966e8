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
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 0,
            max_new_tokens: 32768,
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
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

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
}
