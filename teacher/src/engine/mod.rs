//! The generation engine: continuous batching over [`Model::step`].
//!
//! Up to `batch` sequences are live at once, each with its own KV cache and random stream. Every
//! step feeds each live sequence its pending tokens — one sampled token while decoding, a chunk
//! of its prompt while prefilling — in one ragged forward, so new prompts prefill while other
//! sequences decode, and a finished sequence's slot is refilled from the queue before the next
//! step: long chains of thought never hold short ones back. Where the model caches in the
//! paged KV pool (GPUs) or in host buffers (the CPU), the live sequences stay within a budget of
//! blocks ([`EngineOptions::kv_cache_gib`]): when they outgrow it the youngest is preempted and
//! later recomputed, as vLLM does, instead of the machine running out of memory.
//!
//! Sampling only reads a sequence's own logits and rng, so a sample does not depend on which
//! other sequences share its steps (up to float rounding in the batched matmuls, which changes a
//! token only when two candidates tie to ~1e-6).
//!
//! The engine knows nothing about corpora or HTTP: requests come from a [`RequestSource`]
//! (an iterator, or a channel for a server via [`EngineHandle`]) and results go to a callback.
//! The KV cache budget's planning is `kv_budget`; sampling a step's tokens, `sample_step`.

use std::ops::ControlFlow;

use candle_core::Tensor;
use distill_models::chat::{ChatTemplate, Message};
use distill_models::kv_pool::BLOCK;
use distill_models::tokenizer::TextTokenizer;
use distill_models::transformer::Logits;
use distill_models::{Checkpoint, DeviceChoice, DtypeChoice, HostKvDtype, KvCache, Model};

use crate::backend::{Cancel, FinishReason, GenOutput, GenRequest, GenStats, TokenLogprobs};
use crate::sampling::SampleRng;
use crate::{Error, Result};

mod kv_budget;
mod sample_step;

use kv_budget::kv_block_limit;

/// How the engine schedules work.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineOptions {
    /// Most sequences live at once.
    pub batch: usize,
    /// Most prompt tokens one sequence feeds in one step (long prompts prefill over several
    /// steps so decoding sequences are not stalled by one huge forward).
    pub prefill_chunk: usize,
    /// Most tokens (prompt chunks plus decoded tokens) in one step; a prompt that does not fit
    /// waits a step. At least `batch`.
    pub step_tokens: usize,
    /// Each step runs at least this many token rows, padding with a throw-away sequence: the
    /// CPU float matmul (`gemm`) rounds a row differently when it is alone or among very few
    /// (other kernels, other blocking), which would make a sample depend on its batch mates.
    /// 0 means automatic: 1 for a GGUF whose matrices are all quantized (the quantized kernels
    /// compute each row on its own), else [`FLOAT_MIN_ROWS`].
    pub min_step_rows: usize,
    /// Where the model runs (`auto`: the GPU when there is one).
    #[serde(default)]
    pub device: DeviceChoice,
    /// The dtype a checkpoint folder runs in (`auto`: f32 on the CPU, the stored dtype on a GPU).
    #[serde(default)]
    pub dtype: DtypeChoice,
    /// Most GiB the KV cache may hold. 0 means automatic: on a GPU 90% of the memory free once
    /// the model is loaded, less 1 GiB for a step's activations (at least half of what is
    /// free); on the CPU 80% of the memory the host has available once the model is loaded,
    /// less 1 GiB (at least half). Within it, the youngest sequences are paused and recomputed
    /// later when the others need room (vLLM's preemption).
    #[serde(default)]
    pub kv_cache_gib: f64,
    /// What the CPU's f32 path keeps keys and values in: f32, or f16 (half the memory and of
    /// what a long-context step reads, as llama.cpp's default; ~3 significant digits per
    /// cached value). Elsewhere the cache is in the model's dtype.
    #[serde(default)]
    pub kv_cache_dtype: HostKvDtype,
}

/// Rows from which the float matmul gives every row the same bits whatever the row count
/// (measured on candle's CPU backend for model-sized and tiny shapes).
pub const FLOAT_MIN_ROWS: usize = 8;

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch: 8,
            prefill_chunk: 512,
            step_tokens: 2048,
            min_step_rows: 0,
            device: DeviceChoice::Auto,
            dtype: DtypeChoice::Auto,
            kv_cache_gib: 0.0,
            kv_cache_dtype: HostKvDtype::F32,
        }
    }
}

/// What the engine reports while it runs.
#[derive(Debug)]
pub enum Update {
    /// New text of a request (for streaming); the held-back tail that might still turn into a
    /// stop string is sent once it cannot. The concatenated deltas equal `Done`'s text minus the
    /// prefill (the last may hold no text, only the log-probabilities still unsent).
    Delta {
        key: String,
        text: String,
        /// The top log-probabilities of the tokens sampled since the previous delta, when the
        /// request asks for them: the deltas' records, in order, make up `Done`'s.
        logprobs: Option<TokenLogprobs>,
    },
    Done(GenOutput),
    Failed {
        key: String,
        error: Error,
    },
    /// Tokens sampled in the last step.
    Progress {
        new_tokens: u64,
    },
}

/// The next request of a source.
#[derive(Debug)]
pub enum Poll {
    Ready(GenRequest),
    /// None now, maybe later (a server between requests).
    Pending,
    /// None ever again.
    Exhausted,
}

/// Where the engine takes requests from. `wait` is true when the engine is idle: the source may
/// block until a request arrives.
pub trait RequestSource {
    fn poll(&mut self, wait: bool) -> Poll;
}

/// A [`RequestSource`] over any iterator.
pub struct IterSource<I>(pub I);

impl<I: Iterator<Item = GenRequest>> RequestSource for IterSource<I> {
    fn poll(&mut self, _wait: bool) -> Poll {
        self.0.next().map_or(Poll::Exhausted, Poll::Ready)
    }
}

/// One live sequence.
struct Seq {
    key: String,
    request: GenRequest,
    rng: SampleRng,
    cache: KvCache,
    prompt: Vec<u32>,
    /// After a preemption: the prompt and every sampled token, fed again as a prompt to
    /// rebuild the cache (empty otherwise).
    replay: Vec<u32>,
    /// Tokens of the prompt (or of the replay) already fed.
    prefilled: usize,
    /// Sampled tokens (EOS included when it ended the sequence).
    generated: Vec<u32>,
    /// The token to feed next step while decoding.
    next: Option<u32>,
    detok: Detokenizer,
    /// Bytes of `detok.text` already sent as deltas.
    sent: usize,
    /// Tokens whose log-probabilities went out with deltas.
    logprobs_sent: usize,
    max_stop: usize,
    /// The top log-probabilities of each sampled token, when the request asks for them.
    logprobs: Option<TokenLogprobs>,
}

impl Seq {
    /// A delta of `text`, with the log-probabilities of the tokens not yet sent.
    fn delta(&mut self, text: String) -> Update {
        let logprobs = self.logprobs.as_ref().map(|lp| {
            let tail = lp.tail(self.logprobs_sent);
            self.logprobs_sent = lp.len();
            tail
        });
        Update::Delta {
            key: self.key.clone(),
            text,
            logprobs,
        }
    }

    /// What the sequence prefills: its prompt, or after a preemption its replay.
    fn prefill_source(&self) -> &[u32] {
        if self.replay.is_empty() {
            &self.prompt
        } else {
            &self.replay
        }
    }

    /// The tokens to feed next step: the last sampled token, or the next chunk of the prompt
    /// (or replay).
    fn feed(&self, budget: usize, chunk: usize) -> Vec<u32> {
        match self.next {
            Some(token) => vec![token],
            None => {
                let source = self.prefill_source();
                let end = self
                    .prefilled
                    .saturating_add(chunk.min(budget))
                    .min(source.len());
                source[self.prefilled..end].to_vec()
            }
        }
    }
}

/// Incremental detokenization: decodes a short window of recent tokens and emits text only once
/// it no longer ends in an incomplete UTF-8 sequence (byte-level BPE splits characters across
/// tokens), and without losing word-leading spaces that SentencePiece drops at a slice start.
#[derive(Debug, Default)]
struct Detokenizer {
    text: String,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// Decodes up to `ids.len()` and returns the number of bytes appended to `text`.
    fn push(&mut self, tokenizer: &TextTokenizer, ids: &[u32]) -> Result<usize> {
        let before = tokenizer.decode(&ids[self.prefix..self.read], false)?;
        let now = tokenizer.decode(&ids[self.prefix..], false)?;
        if now.len() > before.len() && !now.ends_with('\u{fffd}') && now.starts_with(&before) {
            let added = &now[before.len()..];
            self.text.push_str(added);
            self.prefix = self.read;
            self.read = ids.len();
            return Ok(added.len());
        }
        Ok(0)
    }
}

/// A loaded model ready to generate.
pub struct Engine {
    model: Model,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    options: EngineOptions,
    /// Where the model runs, for the user (`cuda:0 (NVIDIA H200, …)`, `cpu`).
    device_description: String,
    /// Most KV pool blocks the live sequences may hold ([`EngineOptions::kv_cache_gib`]).
    kv_blocks: Option<usize>,
    /// The model's context (`Config::context_len`, set by [`Engine::load`]): a sequence ends
    /// there (finish reason `length`), as vLLM's `max_model_len` ends it, instead of running on
    /// into positions the model has never seen. `None` (an engine built with [`Engine::new`]):
    /// no limit.
    context_len: Option<usize>,
}

impl Engine {
    /// `eos`: ids that end a sequence (the checkpoint's generation config). `template`: how
    /// messages become the prompt.
    pub fn new(
        model: Model,
        tokenizer: TextTokenizer,
        template: ChatTemplate,
        eos: Vec<u32>,
        options: EngineOptions,
    ) -> Result<Self> {
        let mut options = options;
        if options.min_step_rows == 0 {
            options.min_step_rows = FLOAT_MIN_ROWS;
        }
        if !(options.kv_cache_gib >= 0.0 && options.kv_cache_gib.is_finite()) {
            return Err(Error::Config(format!(
                "`kv_cache_gib` must be a size in GiB (0: automatic), not {}",
                options.kv_cache_gib
            )));
        }
        if options.batch == 0 || options.prefill_chunk == 0 {
            return Err(Error::Config(
                "`batch` and `prefill_chunk` must be at least 1".into(),
            ));
        }
        let kv_blocks = kv_block_limit(&model, options.kv_cache_gib)?;
        model.set_kv_pool_limit(kv_blocks);
        Ok(Self {
            device_description: distill_models::device::describe(model.device()),
            kv_blocks,
            context_len: None,
            model,
            tokenizer,
            template,
            eos,
            options,
        })
    }

    /// Loads a checkpoint for generation on `options.device` in `options.dtype`: a GGUF file
    /// stays quantized. Without a chat template in the checkpoint, ChatML is used (and logged).
    pub fn load(checkpoint: &Checkpoint, options: EngineOptions) -> Result<Self> {
        let placement = options.device.resolve()?;
        let device = placement.device.clone();
        let dtype = options
            .dtype
            .inference(&device, checkpoint.stored_dtype())?;
        tracing::info!(
            "generation on {} in {}",
            placement.description,
            dtype.as_str()
        );
        let mut model = checkpoint.load_for_inference(&device, dtype)?;
        model.set_host_kv_dtype(options.kv_cache_dtype);
        let tokenizer = checkpoint.tokenizer()?;
        let mut options = options;
        if options.min_step_rows == 0 && all_matrices_quantized(checkpoint) {
            options.min_step_rows = 1;
        }
        let template = match tokenizer.chat_template()? {
            Some(t) => t,
            None => {
                tracing::warn!(
                    "`{}` has no chat template; using ChatML",
                    checkpoint.path().display()
                );
                ChatTemplate::chatml()
            }
        };
        let mut engine = Self::new(
            model,
            tokenizer,
            template,
            checkpoint.eos_token_ids(),
            options,
        )?;
        engine.device_description = placement.explained(&format!("in {}", dtype.as_str()));
        // A sequence never runs past the positions the model was trained for (vLLM's
        // `max_model_len`): a prompt that fills them fails, a long `max_new_tokens` ends there.
        engine.context_len = Some(checkpoint.config().context_len());
        Ok(engine)
    }

    /// Positions a sequence may reach, prompt included; `None`: no limit.
    pub fn context_len(&self) -> Option<usize> {
        self.context_len
    }

    /// Ends sequences at `context_len` positions ([`Engine::context_len`]) instead of the
    /// context [`Engine::load`] set.
    pub fn set_context_len(&mut self, context_len: Option<usize>) {
        self.context_len = context_len;
    }

    /// Where the model runs and in which dtype, for the user.
    pub fn device_description(&self) -> &str {
        &self.device_description
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Replaces the ids that end a sequence (benchmarks use none, for fixed-length outputs).
    pub fn set_eos_token_ids(&mut self, eos: Vec<u32>) {
        self.eos = eos;
    }

    /// The prompt text: the chat template with the generation prompt, then the prefill (less
    /// any part of it the template already wrote, e.g. DeepSeek-R1-Distill's `<think>\n`).
    pub fn prompt_text(&self, messages: &[Message], prefill: &str) -> Result<String> {
        Ok(self.template.generation_prompt(messages, prefill)?)
    }

    /// The prompt ids. Special tokens are not added again: the template already writes the BOS
    /// where a model wants one.
    pub fn prompt_ids(&self, messages: &[Message], prefill: &str) -> Result<Vec<u32>> {
        let text = self.prompt_text(messages, prefill)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// A request's prompt ids: its raw ids, or its conversation through the chat template.
    fn request_prompt(&self, request: &GenRequest) -> Result<Vec<u32>> {
        match &request.prompt_ids {
            Some(ids) => match outside_vocabulary(&self.model, ids) {
                Some(message) => Err(Error::Config(message)),
                None => Ok(ids.clone()),
            },
            None => self.prompt_ids(&request.messages, &request.prefill),
        }
    }

    fn start(&self, request: GenRequest) -> Result<Seq> {
        let prompt = self.request_prompt(&request)?;
        if prompt.is_empty() {
            return Err(Error::Config("the prompt is empty".into()));
        }
        if let Some(context) = self.context_len.filter(|&c| prompt.len() >= c) {
            return Err(Error::Config(format!(
                "the prompt of {} tokens leaves no room to generate in the model's context of {context} positions",
                prompt.len()
            )));
        }
        // A prompt the KV cache cannot hold with one sampled token fails before any work.
        if let Some(limit) = self.sequence_blocks() {
            if (prompt.len() + 1).div_ceil(BLOCK) > limit {
                return Err(Error::Config(format!(
                    "the prompt of {} tokens needs more than the KV cache's {}: raise `--kv-cache-gib` or shorten the prompt",
                    prompt.len(),
                    self.blocks_described(limit)
                )));
            }
        }
        let max_stop = request.stop.iter().map(String::len).max().unwrap_or(0);
        Ok(Seq {
            key: request.key.clone(),
            rng: SampleRng::new(request.seed),
            cache: self.model.new_cache(),
            prompt,
            replay: Vec::new(),
            prefilled: 0,
            generated: Vec::new(),
            next: None,
            detok: Detokenizer::default(),
            sent: 0,
            logprobs_sent: 0,
            max_stop,
            logprobs: logprobs_asked(&request.sampling),
            request,
        })
    }

    /// Generates every request of `source`, reporting through `on_update` (on this thread).
    /// Returning `Break` from a `Delta` drops that request (a server's client went away).
    /// Returns when the source is exhausted and every sequence finished, or soon after `cancel`
    /// is set (live sequences are then dropped unreported).
    pub fn run(
        &self,
        source: &mut dyn RequestSource,
        cancel: &Cancel,
        on_update: &mut dyn FnMut(Update) -> ControlFlow<()>,
    ) -> Result<GenStats> {
        let mut stats = GenStats::default();
        let mut live: Vec<Seq> = Vec::with_capacity(self.options.batch);
        let mut exhausted = false;
        loop {
            if cancel.is_cancelled() {
                stats.cancelled = true;
                return Ok(stats);
            }
            while !exhausted && live.len() < self.options.batch {
                match source.poll(live.is_empty()) {
                    Poll::Ready(request) => {
                        let key = request.key.clone();
                        if request.sampling.max_new_tokens == 0 {
                            let prompt_tokens =
                                self.request_prompt(&request).map_or(0, |p| p.len());
                            stats.completed += 1;
                            stats.prompt_tokens += prompt_tokens as u64;
                            let _ = on_update(Update::Done(GenOutput {
                                key,
                                text: request.prefill,
                                finish_reason: FinishReason::Length,
                                prompt_tokens: prompt_tokens as u32,
                                completion_tokens: 0,
                                logprobs: logprobs_asked(&request.sampling),
                            }));
                            continue;
                        }
                        match self.start(request) {
                            Ok(seq) => live.push(seq),
                            Err(error) => {
                                stats.failed += 1;
                                let _ = on_update(Update::Failed { key, error });
                            }
                        }
                    }
                    Poll::Pending => break,
                    Poll::Exhausted => exhausted = true,
                }
                if cancel.is_cancelled() {
                    break;
                }
            }
            if live.is_empty() {
                if exhausted || cancel.is_cancelled() {
                    stats.cancelled = cancel.is_cancelled();
                    return Ok(stats);
                }
                continue;
            }
            let sampled = self.step(&mut live, &mut stats, on_update)?;
            if sampled > 0 {
                let _ = on_update(Update::Progress {
                    new_tokens: sampled,
                });
            }
        }
    }

    /// One forward over the live sequences that fit the step budget, then sampling and stop
    /// checks; finished sequences leave `live`. Returns the number of tokens sampled.
    fn step(
        &self,
        live: &mut Vec<Seq>,
        stats: &mut GenStats,
        on_update: &mut dyn FnMut(Update) -> ControlFlow<()>,
    ) -> Result<u64> {
        let opts = self.options;
        let (chosen, feeds): (Vec<usize>, Vec<Vec<u32>>) =
            self.plan(live, stats, on_update).into_iter().unzip();
        if chosen.is_empty() {
            return Ok(0);
        }
        let logits = {
            let mut caches: Vec<Option<&mut KvCache>> =
                live.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut batch: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(chosen.len() + 1);
            for (&i, feed) in chosen.iter().zip(&feeds) {
                if let Some(cache) = caches[i].take() {
                    batch.push((feed.as_slice(), cache));
                }
            }
            let rows: usize = feeds.iter().map(Vec::len).sum();
            let padding = vec![0u32; opts.min_step_rows.saturating_sub(rows)];
            let mut pad_cache = self.model.new_cache();
            if !padding.is_empty() {
                batch.push((padding.as_slice(), &mut pad_cache));
            }
            self.model.step(&mut batch, Logits::Last)?
        };
        let held: usize = live.iter().map(|s| s.cache.blocks_held()).sum();
        stats.peak_kv_bytes = stats
            .peak_kv_bytes
            .max((held * self.model.kv_block_bytes()) as u64);
        let mut sampled = 0u64;
        let mut finished: Vec<(usize, Option<FinishReason>)> = Vec::new();
        // Sequences whose prompt is still prefilling sample nothing this step.
        let mut picks: Vec<(usize, Tensor)> = Vec::with_capacity(chosen.len());
        for ((&i, feed), logits) in chosen.iter().zip(&feeds).zip(logits) {
            let seq = &mut live[i];
            if seq.next.is_none() {
                seq.prefilled += feed.len();
                if seq.prefilled < seq.prefill_source().len() {
                    continue;
                }
                seq.replay = Vec::new();
            }
            picks.push((i, logits));
        }
        // Sampling's rows run in parallel: on the CPU from a pool thread, as the step did.
        let tokens = distill_models::workers::on_workers(self.model.device(), || {
            self.sample_step(&picks, live)
        })?;
        for (&(i, _), token) in picks.iter().zip(tokens) {
            let seq = &mut live[i];
            sampled += 1;
            seq.generated.push(token);
            seq.next = Some(token);
            let reason = self.advance(seq, token, on_update)?;
            if reason != Some(None) {
                finished.push((i, reason.flatten()));
            }
        }
        // Remove from the back so earlier indices stay valid.
        for (i, reason) in finished.into_iter().rev() {
            let seq = live.remove(i);
            if let Some(reason) = reason {
                stats.completed += 1;
                stats.prompt_tokens += seq.prompt.len() as u64;
                stats.completion_tokens += seq.generated.len() as u64;
                let output = self.finish(seq, reason, on_update)?;
                let _ = on_update(Update::Done(output));
            }
        }
        Ok(sampled)
    }

    /// Applies a sampled token: stop checks and streaming. `Some(Some(reason))`: finished;
    /// `Some(None)`: still running; `None`: dropped by the callback.
    #[allow(clippy::option_option)]
    fn advance(
        &self,
        seq: &mut Seq,
        token: u32,
        on_update: &mut dyn FnMut(Update) -> ControlFlow<()>,
    ) -> Result<Option<Option<FinishReason>>> {
        if self.eos.contains(&token) {
            return Ok(Some(Some(FinishReason::Stop)));
        }
        let at_length = seq.generated.len() >= seq.request.sampling.max_new_tokens
            || self
                .context_len
                .is_some_and(|c| seq.prompt.len() + seq.generated.len() >= c);
        let before = seq.detok.text.len();
        let added = seq.detok.push(&self.tokenizer, &seq.generated)?;
        let mut stopped = false;
        if added > 0 && seq.max_stop > 0 {
            // A stop string may straddle the old and new text.
            let mut from = before.saturating_sub(seq.max_stop - 1);
            while !seq.detok.text.is_char_boundary(from) {
                from -= 1;
            }
            let hit = seq
                .request
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| seq.detok.text[from..].find(s.as_str()).map(|p| from + p))
                .min();
            if let Some(at) = hit {
                seq.detok.text.truncate(at);
                stopped = true;
            }
        }
        if stopped || at_length {
            return Ok(Some(Some(if stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            })));
        }
        // Hold back a tail that could still become a stop string.
        let mut safe = seq
            .detok
            .text
            .len()
            .saturating_sub(seq.max_stop.saturating_sub(1));
        while !seq.detok.text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > seq.sent {
            let text = seq.detok.text[seq.sent..safe].to_string();
            seq.sent = safe;
            if on_update(seq.delta(text)).is_break() {
                return Ok(None);
            }
        }
        Ok(Some(None))
    }

    /// The finished sample; first streams whatever text was held back.
    fn finish(
        &self,
        mut seq: Seq,
        reason: FinishReason,
        on_update: &mut dyn FnMut(Update) -> ControlFlow<()>,
    ) -> Result<GenOutput> {
        let stopped_by_string = reason == FinishReason::Stop
            && !seq.generated.last().is_some_and(|t| self.eos.contains(t));
        let body = if stopped_by_string {
            std::mem::take(&mut seq.detok.text)
        } else {
            // The full decode also flushes bytes the incremental decoder was still holding.
            let ids = match seq.generated.last() {
                Some(t) if self.eos.contains(t) => &seq.generated[..seq.generated.len() - 1],
                _ => &seq.generated[..],
            };
            self.tokenizer.decode(ids, false)?
        };
        // Nothing when the deltas already hold it all (or `sent` is not a boundary of `body`).
        let rest = body.get(seq.sent..).unwrap_or_default().to_string();
        let logprobs_left = seq
            .logprobs
            .as_ref()
            .is_some_and(|lp| lp.len() > seq.logprobs_sent);
        if !rest.is_empty() || logprobs_left {
            let _ = on_update(seq.delta(rest));
        }
        Ok(GenOutput {
            key: seq.key,
            text: format!("{}{}", seq.request.prefill, body),
            finish_reason: reason,
            prompt_tokens: seq.prompt.len() as u32,
            completion_tokens: seq.generated.len() as u32,
            logprobs: seq.logprobs,
        })
    }
}

/// Token ids a caller gave (a raw prompt, a sequence to score) checked against the model's
/// vocabulary, where an id past it would index outside the embedding table: what is wrong
/// with the first such id, if there is one.
pub fn outside_vocabulary<'a>(
    model: &Model,
    ids: impl IntoIterator<Item = &'a u32>,
) -> Option<String> {
    let vocab = model.spec().vocab_size;
    let id = ids.into_iter().find(|&&id| id as usize >= vocab)?;
    Some(format!(
        "token id {id} is outside the model's vocabulary of {vocab}"
    ))
}

/// An empty record of a request's log-probabilities, when it asks for them.
fn logprobs_asked(sampling: &crate::backend::SamplingParams) -> Option<TokenLogprobs> {
    (sampling.logprobs > 0).then(|| TokenLogprobs::new(sampling.logprobs))
}

/// Whether every matrix of a GGUF checkpoint is stored quantized (norms and other vectors may
/// be float): then each row's result is independent of the batch without padding.
fn all_matrices_quantized(checkpoint: &Checkpoint) -> bool {
    use candle_core::quantized::GgmlDType;
    checkpoint.gguf().is_some_and(|g| {
        g.content().tensor_infos.values().all(|info| {
            info.shape.dims().len() < 2
                || !matches!(
                    info.ggml_dtype,
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
                )
        })
    })
}

pub use crate::handle::EngineHandle;
pub use sample_step::top_logprobs;

#[cfg(test)]
mod tests {
    use super::top_logprobs;

    #[test]
    fn top_logprobs_order_by_logit_then_id() {
        let logits = [1.0, 3.0, 3.0, 2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&x: &f32| x.exp()).sum::<f32>().ln();
        let (lp, top) = top_logprobs(&logits, 3, 4);
        assert!((lp - (2.0 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = top.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, vec![1, 2, 4, 3]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
        assert!(top_logprobs(&logits, 0, 0).1.is_empty());
        let all: Vec<u32> = top_logprobs(&logits, 0, 9)
            .1
            .iter()
            .map(|&(i, _)| i)
            .collect();
        assert_eq!(all, vec![1, 2, 4, 3, 0, 5]);
    }
}
