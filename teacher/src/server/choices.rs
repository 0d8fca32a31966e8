//! A request's `n` choices: one engine job per choice (each with its own seed, so sampled choices
//! differ), their updates merged into one stream tagged with the choice's index. Dropping the
//! stream drops every job's receiver, which makes the engine drop the sequences (a client that
//! hangs up stops all its choices).

use std::pin::Pin;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{bad, internal, ApiError, STOPPED};
use crate::backend::{GenOutput, TokenLogprobs};
use crate::engine::Update;
use crate::openai::wire::Usage;

type Tagged = Pin<Box<dyn Stream<Item = (usize, Update)> + Send>>;

/// The updates of a request's choices as they come, each with its choice's index.
pub(super) struct Choices {
    updates: SelectAll<Tagged>,
    done: Vec<bool>,
    /// Choices per prompt: choices `p·n … p·n + n − 1` continue prompt `p`.
    per_prompt: usize,
    usage: Usage,
}

/// What [`Choices::next`] yields.
pub(super) enum Event {
    Delta {
        index: usize,
        text: String,
        /// The log-probabilities of the tokens since the choice's previous delta (asked ones).
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        index: usize,
        output: GenOutput,
    },
    /// A choice failed, or the engine stopped before one finished: the request fails (a 400
    /// when the request itself could not be served, a prompt longer than the model's context).
    Failed(ApiError),
}

impl Choices {
    /// The choices of the receivers, in order (the first is choice 0), `per_prompt` of each
    /// prompt.
    pub(super) fn new(receivers: Vec<UnboundedReceiver<Update>>, per_prompt: usize) -> Self {
        let done = vec![false; receivers.len()];
        let updates = stream::select_all(receivers.into_iter().enumerate().map(|(index, rx)| {
            let tagged = stream::unfold(rx, move |mut rx| async move {
                rx.recv().await.map(|update| ((index, update), rx))
            });
            Box::pin(tagged) as Tagged
        }));
        Self {
            updates,
            done,
            per_prompt: per_prompt.max(1),
            usage: Usage::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.done.len()
    }

    /// Whether every choice has finished.
    pub(super) fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// The request's usage so far: each prompt once (its choices share it), the completion
    /// tokens of all finished choices (OpenAI's and vLLM's accounting for `n`).
    pub(super) fn usage(&self) -> Usage {
        self.usage
    }

    /// Every choice's output, in order, once all have finished (deltas are passed over); the
    /// first failure otherwise.
    pub(super) async fn outputs(&mut self) -> Result<Vec<GenOutput>, ApiError> {
        let mut outputs: Vec<Option<GenOutput>> = vec![None; self.len()];
        while let Some(event) = self.next().await {
            match event {
                Event::Done { index, output } => outputs[index] = Some(output),
                Event::Failed(error) => return Err(error),
                Event::Delta { .. } => {}
            }
        }
        Ok(outputs.into_iter().flatten().collect())
    }

    /// The next delta, finished choice or failure; `None` once every choice has finished.
    pub(super) async fn next(&mut self) -> Option<Event> {
        if self.all_done() {
            return None;
        }
        loop {
            let Some((index, update)) = self.updates.next().await else {
                // Every receiver closed while a choice was unfinished.
                return Some(Event::Failed(internal(STOPPED.into())));
            };
            match update {
                Update::Delta { text, logprobs, .. } => {
                    return Some(Event::Delta {
                        index,
                        text,
                        logprobs,
                    })
                }
                Update::Done(output) => {
                    self.done[index] = true;
                    if index % self.per_prompt == 0 {
                        self.usage.prompt_tokens += u64::from(output.prompt_tokens);
                    }
                    self.usage.completion_tokens += u64::from(output.completion_tokens);
                    self.usage.total_tokens =
                        self.usage.prompt_tokens + self.usage.completion_tokens;
                    return Some(Event::Done { index, output });
                }
                Update::Failed { error, .. } => {
                    let message = error.to_string();
                    return Some(Event::Failed(match error {
                        crate::Error::Config(_) => bad(message, None),
                        _ => internal(message),
                    }));
                }
                Update::Progress { .. } => continue,
            }
        }
    }
}
