//! One conversation → one tokenized document whose labels cover exactly the last assistant turn
//! and the end-of-turn token that closes it.
//!
//! How the trained turn is built (robust to templates that rewrite assistant content):
//! 1. `P` = the history (every message before the last assistant turn) rendered with
//!    `add_generation_prompt=true`: exactly what the student is shown at inference.
//! 2. The history plus an assistant turn holding a placeholder is rendered without generation
//!    prompt; around the placeholder are the turn's opening markup (`head`) and its closing
//!    markup (`tail`, e.g. `<|im_end|>\n`).
//! 3. The document is `P` + the raw assistant content + `tail` up to and including the first
//!    end-of-turn/EOS token. The content never passes through the template, so a template that
//!    strips reasoning from assistant turns (DeepSeek-R1-Distill's keeps only the text after
//!    `</think>`, as it should for history) cannot strip it from the turn being trained; history
//!    turns are rendered by the template as they will be at inference. When the generation
//!    prompt prefills the start of the answer (DeepSeek-R1's `<think>\n`), the prefill is part
//!    of the prompt and the content's matching start is not repeated.
//! 4. Labels start at the token boundary of `P`: the tokens of `P` must be a prefix of the
//!    document's tokens; when they are not (a merge across the boundary), the boundary falls
//!    back to the first token whose byte span ends past `P` in the tokenizer's offsets.
//!
//! A template without an end-of-turn token in its closing markup gets the tokenizer's EOS
//! appended: a student that never sees EOS as a target never stops.

use distill_models::chat::{written_by_prompt, ChatTemplate, Message};
use distill_models::tokenizer::TextTokenizer;

use crate::pack::Document;
use crate::{Error, Result};

/// Stands in for the assistant content when probing the template's turn markup.
const PLACEHOLDER: &str = "\u{E000}distill-assistant-content\u{E001}";

/// Why one conversation yields no training document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// No assistant message, or an empty one.
    NoAssistantTurn,
    /// The teacher hit its token limit (`finish_reason` `length`): the answer never ends.
    TeacherTruncated,
    /// Longer than `max_seq_len` (with `overlong = "drop"`).
    TooLong,
    /// The prompt alone fills `max_seq_len` (with `overlong = "truncate"`).
    PromptTooLong,
    /// The chat template failed on this conversation.
    TemplateError,
}

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoAssistantTurn => "no_assistant_turn",
            DropReason::TeacherTruncated => "teacher_truncated",
            DropReason::TooLong => "too_long",
            DropReason::PromptTooLong => "prompt_too_long",
            DropReason::TemplateError => "template_error",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DropReason::NoAssistantTurn => "had no assistant turn",
            DropReason::TeacherTruncated => "were cut off by the teacher's token limit",
            DropReason::TooLong => "were longer than `max_seq_len`",
            DropReason::PromptTooLong => "had a prompt filling `max_seq_len`",
            DropReason::TemplateError => "failed in the chat template",
        }
    }
}

/// What to do with documents longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Skip them (counted as `too_long`). Default: a cut answer never shows its EOS.
    Drop,
    /// Keep the first `max_seq_len` tokens when some of the answer fits.
    Truncate,
}

/// A rendered, tokenized conversation before length handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub input_ids: Vec<u32>,
    /// Index of the first trained token.
    pub boundary: usize,
    /// The boundary came from character offsets rather than a token prefix.
    pub offset_fallback: bool,
    /// EOS was appended because the template's closing markup has no end-of-turn token.
    pub appended_eos: bool,
}

/// Renders conversations with a chat template and tokenizes them with assistant-only labels.
#[derive(Debug, Clone)]
pub struct Renderer {
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    /// Ids that end a turn: the checkpoint's EOS ids and the tokenizer's `eos_token`.
    stop_ids: Vec<u32>,
    /// Text of each stop id, for finding the end of the closing markup.
    stop_texts: Vec<(String, u32)>,
    end_of_turn: Option<u32>,
}

impl Renderer {
    /// `eos_ids` are the checkpoint's end-of-sequence ids; the tokenizer's `eos_token` and the
    /// end-of-turn token the template closes assistant turns with are added to them.
    pub fn new(tokenizer: TextTokenizer, template: ChatTemplate, eos_ids: &[u32]) -> Result<Self> {
        let mut stop_ids: Vec<u32> = eos_ids.to_vec();
        for token in [template.eos_token(), tokenizer.eos_token.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(id) = tokenizer.token_id(token) {
                stop_ids.push(id);
            }
        }
        let mut renderer = Self {
            tokenizer,
            template,
            stop_ids: Vec::new(),
            stop_texts: Vec::new(),
            end_of_turn: None,
        };
        renderer.set_stop_ids(stop_ids);
        // The end-of-turn token: the first special token of the closing markup (ChatML's
        // `<|im_end|>`, Llama-3's `<|eot_id|>`), which becomes a stop id even when the
        // checkpoint's generation config does not list it (Qwen2 base models list only
        // `<|endoftext|>`).
        let probe = [Message::user("1 + 1?"), Message::assistant(PLACEHOLDER)];
        let text = renderer.template.render(&probe, false)?;
        let tail = text
            .find(PLACEHOLDER)
            .map(|at| text[at + PLACEHOLDER.len()..].to_string())
            .ok_or_else(|| {
                Error::Config("the chat template does not render assistant content".into())
            })?;
        let special = renderer.tokenizer.inner.get_added_tokens_decoder();
        let tail_ids = renderer.tokenizer.encode(&tail, false)?;
        let end = tail_ids.iter().copied().find(|id| {
            renderer.stop_ids.contains(id) || special.get(id).is_some_and(|t| t.special)
        });
        if let Some(id) = end {
            let mut ids = renderer.stop_ids.clone();
            ids.push(id);
            renderer.set_stop_ids(ids);
        }
        renderer.end_of_turn = end.or_else(|| renderer.stop_ids.first().copied());
        if renderer.stop_ids.is_empty() {
            return Err(Error::Config(
                "the tokenizer declares no end-of-sequence token and the chat template closes \
                 assistant turns without one: the student could never learn to stop"
                    .into(),
            ));
        }
        Ok(renderer)
    }

    fn set_stop_ids(&mut self, mut ids: Vec<u32>) {
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(*id));
        self.stop_texts = ids
            .iter()
            .filter_map(|&id| Some((self.tokenizer.inner.id_to_token(id)?, id)))
            .filter(|(text, _)| !text.is_empty())
            .collect();
        self.stop_ids = ids;
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Every id that ends an assistant turn (what `generation_config.json` must list).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The token that closes assistant turns in this template.
    pub fn end_of_turn_id(&self) -> Option<u32> {
        self.end_of_turn
    }

    /// Renders and tokenizes `messages`; the trained turn is the last assistant message.
    pub fn render(&self, messages: &[Message]) -> std::result::Result<Rendered, DropReason> {
        let last = messages
            .iter()
            .rposition(|m| m.role == "assistant" && !m.content.is_empty())
            .ok_or(DropReason::NoAssistantTurn)?;
        let history = &messages[..last];
        let content = messages[last].content.as_str();
        let prompt = self
            .template
            .render(history, true)
            .map_err(|_| DropReason::TemplateError)?;
        let mut probe = history.to_vec();
        probe.push(Message::assistant(PLACEHOLDER));
        let probed = self
            .template
            .render(&probe, false)
            .map_err(|_| DropReason::TemplateError)?;
        let at = probed.find(PLACEHOLDER).ok_or(DropReason::TemplateError)?;
        let (head, tail) = (&probed[..at], &probed[at + PLACEHOLDER.len()..]);
        // The part of the turn the generation prompt opens itself (`<think>\n`) is written once,
        // as generation writes it (`ChatTemplate::generation_prompt`).
        let written = written_by_prompt(&prompt, content);
        let (prompt, answer) = match prompt.strip_prefix(head) {
            Some("") => (prompt.as_str(), content),
            Some(_) if written > 0 => (prompt.as_str(), &content[written..]),
            _ => (head, content),
        };
        let (tail, appended_eos) = self.close(tail);
        let text = format!("{prompt}{answer}{tail}");
        self.tokenize(&text, prompt.len(), appended_eos)
            .map_err(|_| DropReason::TemplateError)
    }

    /// The closing markup up to and including its first stop token, or the markup plus EOS.
    fn close(&self, tail: &str) -> (String, bool) {
        let first = self
            .stop_texts
            .iter()
            .filter_map(|(text, _)| tail.find(text.as_str()).map(|at| at + text.len()))
            .min();
        match first {
            Some(end) => (tail[..end].to_string(), false),
            None => {
                let eos = self.stop_texts.first().map_or("", |(t, _)| t.as_str());
                (format!("{tail}{eos}"), true)
            }
        }
    }

    fn tokenize(&self, text: &str, prompt_bytes: usize, appended_eos: bool) -> Result<Rendered> {
        let encoding = self
            .tokenizer
            .inner
            .encode(text, false)
            .map_err(|e| Error::Config(format!("cannot tokenize a conversation: {e}")))?;
        let mut input_ids = encoding.get_ids().to_vec();
        let prompt_ids = self.tokenizer.encode(&text[..prompt_bytes], false)?;
        let (boundary, offset_fallback) = if input_ids.starts_with(&prompt_ids) {
            (prompt_ids.len(), false)
        } else {
            let offsets = encoding.get_offsets();
            let at = offsets
                .iter()
                .position(|&(_, end)| end > prompt_bytes)
                .unwrap_or(offsets.len());
            (at, true)
        };
        // The closing token must be a real stop id even if the tokenizer spells its text in
        // pieces (a template marker that is not a token of this vocabulary).
        let ends_with_stop = input_ids
            .last()
            .is_some_and(|id| self.stop_ids.contains(id));
        if !ends_with_stop {
            if let Some(&eos) = self.stop_ids.first() {
                input_ids.push(eos);
            }
        }
        Ok(Rendered {
            input_ids,
            boundary,
            offset_fallback,
            appended_eos: appended_eos || !ends_with_stop,
        })
    }
}

impl Rendered {
    /// The training document, with `max_seq_len` applied: `Err` when it must be dropped.
    pub fn into_document(
        self,
        max_seq_len: usize,
        overlong: Overlong,
    ) -> std::result::Result<(Document, bool), DropReason> {
        let (ids, boundary, truncated) = self.fit_length(max_seq_len, overlong)?;
        Ok((Document::from_boundary(ids, boundary), truncated))
    }

    /// The tokens and first trained index with `max_seq_len` applied, and whether they were
    /// truncated: `Err` when the document must be dropped.
    pub fn fit_length(
        self,
        max_seq_len: usize,
        overlong: Overlong,
    ) -> std::result::Result<(Vec<u32>, usize, bool), DropReason> {
        let mut ids = self.input_ids;
        let mut truncated = false;
        if ids.len() > max_seq_len {
            match overlong {
                Overlong::Drop => return Err(DropReason::TooLong),
                // Some answer token must remain as a target after the last prompt position.
                Overlong::Truncate if self.boundary >= max_seq_len => {
                    return Err(DropReason::PromptTooLong)
                }
                Overlong::Truncate => {
                    ids.truncate(max_seq_len);
                    truncated = true;
                }
            }
        }
        Ok((ids, self.boundary, truncated))
    }
}
