//! One imported row as corpus samples: its conversation (a `messages` or `conversations` list,
//! or prompt and response columns), the final assistant turn split into reasoning and
//! completion whichever way the dataset marks them (R1's `<think>` tags, Sky-T1's thought and
//! solution tags, or a separate `reasoning_content` field or column), and the row's reference
//! answer, problem id, source and finish reason.

use serde_json::{Map, Value};

use super::{Layout, Mapping, SystemPrompt, ThinkFormat};
use crate::answer::last_boxed_answer;
use crate::problems::gsm8k_reference;
use crate::record::{self, FinishReason, Message};
use crate::think;

/// Why a row gave no sample (`summary.json`'s `skipped`).
pub mod skip {
    /// The conversation cell is not a list of messages.
    pub const NOT_A_CONVERSATION: &str = "not_a_conversation";
    pub const NO_ASSISTANT_TURN: &str = "no_assistant_turn";
    pub const NO_USER_TURN: &str = "no_user_turn";
    /// The final assistant turn (or the response cell) is empty or null.
    pub const EMPTY_RESPONSE: &str = "empty_response";
}

/// One sample before it gets its problem id, index and token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The id column's value, when the mapping has one.
    pub problem: Option<String>,
    /// What the problem id hashes when there is no id column: the turns before the answer.
    pub problem_text: String,
    pub messages: Vec<Message>,
    pub prompt: String,
    pub reasoning: String,
    pub completion: String,
    pub format: ThinkFormat,
    /// False when a think block was opened and never closed (a trace cut at a length limit).
    pub closed: bool,
    pub finish: FinishReason,
    pub reference: Option<String>,
    pub source: Option<String>,
}

/// A turn as read: role, text, and a reasoning field kept apart from the text (vLLM's and
/// DeepSeek's `reasoning_content`).
#[derive(Debug, Clone)]
struct Turn {
    role: String,
    content: String,
    reasoning: Option<String>,
}

/// The text of a cell: strings as they are, numbers and booleans written out, OpenAI's
/// content parts (`[{"type": "text", "text": …}]`) joined; `None` for null and anything else.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.concat())
        }
        _ => None,
    }
}

/// The chat role a dataset's name for a speaker means (ShareGPT's `human`/`gpt`, …).
fn role(name: &str) -> String {
    match name.trim().to_ascii_lowercase().as_str() {
        "human" | "user" => "user".into(),
        "gpt" | "assistant" | "model" | "bot" | "chatgpt" => "assistant".into(),
        other => other.to_string(),
    }
}

/// A list of message objects (`role`/`content`, or ShareGPT's `from`/`value`) as turns.
fn turns(value: &Value) -> Option<Vec<Turn>> {
    let items = value.as_array()?;
    items
        .iter()
        .map(|m| {
            let m = m.as_object()?;
            let role = m.get("role").or_else(|| m.get("from"))?.as_str()?;
            let content = m.get("content").or_else(|| m.get("value"));
            Some(Turn {
                role: self::role(role),
                content: content.and_then(text).unwrap_or_default(),
                reasoning: m
                    .get("reasoning_content")
                    .or_else(|| m.get("reasoning"))
                    .and_then(text)
                    .filter(|r| !r.trim().is_empty()),
            })
        })
        .collect()
}

/// A response's sample, or why it gives none ([`skip`]).
pub type Attempt = Result<Draft, &'static str>;

/// The samples of one row: one attempt per response (a row that fails as a whole gives one).
pub fn drafts(row: &Map<String, Value>, mapping: &Mapping, system: SystemPrompt) -> Vec<Attempt> {
    match row_drafts(row, mapping, system) {
        Ok(drafts) => drafts,
        Err(reason) => vec![Err(reason)],
    }
}

fn row_drafts(
    row: &Map<String, Value>,
    mapping: &Mapping,
    system: SystemPrompt,
) -> Result<Vec<Attempt>, &'static str> {
    let cell = |column: &Option<String>| column.as_ref().and_then(|c| row.get(c));
    let problem = cell(&mapping.id).and_then(text);
    let source = cell(&mapping.source)
        .and_then(text)
        .filter(|s| !s.trim().is_empty());
    let reference = cell(&mapping.answer).and_then(text).and_then(|a| {
        // GSM8K's worked answers end in `#### N` and worked solutions (MATH's, Numina's) in a
        // `\boxed{}`: the answer is that; anything else is the answer itself.
        let a = if a.contains("#### ") {
            gsm8k_reference(&a)?
        } else if a.contains("\\boxed") {
            last_boxed_answer(&a)?
        } else {
            a
        };
        let a = a.trim();
        (!a.is_empty()).then(|| a.to_string())
    });
    let finish = cell(&mapping.finish);
    let base = |prefix: Vec<Turn>, answer: Turn, finish: Option<String>| {
        draft(prefix, answer, finish, system).map(|d| Draft {
            problem: problem.clone(),
            source: source.clone(),
            reference: reference.clone(),
            ..d
        })
    };
    match mapping.layout {
        Layout::Messages | Layout::Conversations | Layout::Auto => {
            let mut turns = cell(&mapping.conversation)
                .and_then(turns)
                .ok_or(skip::NOT_A_CONVERSATION)?;
            if let Some(sys) = cell(&mapping.system).and_then(text) {
                if !sys.trim().is_empty() && turns.first().is_none_or(|t| t.role != "system") {
                    turns.insert(
                        0,
                        Turn {
                            role: "system".into(),
                            content: sys,
                            reasoning: None,
                        },
                    );
                }
            }
            let last = turns
                .iter()
                .rposition(|t| t.role == "assistant")
                .ok_or(skip::NO_ASSISTANT_TURN)?;
            turns.truncate(last + 1);
            let answer = turns.pop().ok_or(skip::NO_ASSISTANT_TURN)?;
            Ok(vec![base(turns, answer, finish.and_then(text))])
        }
        Layout::Columns => {
            let prefix = match cell(&mapping.prompt) {
                Some(v @ Value::Array(_)) => turns(v).ok_or(skip::NOT_A_CONVERSATION)?,
                Some(v) => vec![Turn {
                    role: "user".into(),
                    content: text(v).ok_or(skip::NO_USER_TURN)?,
                    reasoning: None,
                }],
                None => return Err(skip::NO_USER_TURN),
            };
            let responses = responses(cell(&mapping.response))?;
            // The reasoning and finish columns may hold one value per response, or one for all.
            let nth = |value: Option<&Value>, i: usize| match value {
                Some(Value::Array(items)) => items.get(i).and_then(text),
                Some(v) => text(v),
                None => None,
            };
            let reasoning = cell(&mapping.reasoning);
            let mut out = Vec::with_capacity(responses.len());
            for (i, mut answer) in responses.into_iter().enumerate() {
                if let Some(r) = nth(reasoning, i).filter(|r| !r.trim().is_empty()) {
                    answer.reasoning = Some(r);
                }
                out.push(base(prefix.clone(), answer, nth(finish, i)));
            }
            Ok(out)
        }
    }
}

/// The responses of a response cell: one text, a list of texts (OpenR1-Math's `generations`),
/// or a list of messages (TRL's conversational `completion`: its last assistant turn).
fn responses(value: Option<&Value>) -> Result<Vec<Turn>, &'static str> {
    let answer = |content: String, reasoning: Option<String>| Turn {
        role: "assistant".into(),
        content,
        reasoning,
    };
    match value {
        None | Some(Value::Null) => Err(skip::EMPTY_RESPONSE),
        Some(Value::Array(items)) if items.is_empty() => Err(skip::EMPTY_RESPONSE),
        Some(Value::Array(items)) if items.iter().any(Value::is_object) => {
            let turns = turns(value.unwrap_or(&Value::Null)).ok_or(skip::NOT_A_CONVERSATION)?;
            let last = turns
                .into_iter()
                .rfind(|t| t.role == "assistant")
                .ok_or(skip::NO_ASSISTANT_TURN)?;
            Ok(vec![answer(last.content, last.reasoning)])
        }
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|v| answer(text(v).unwrap_or_default(), None))
            .collect()),
        Some(v) => Ok(vec![answer(text(v).unwrap_or_default(), None)]),
    }
}

/// A sample from the turns before the answer and the answer itself.
fn draft(
    prefix: Vec<Turn>,
    answer: Turn,
    finish: Option<String>,
    system: SystemPrompt,
) -> Result<Draft, &'static str> {
    let prompt = prefix
        .iter()
        .rev()
        .find(|t| t.role == "user")
        .map(|t| t.content.clone())
        .ok_or(skip::NO_USER_TURN)?;
    let content = answer.content;
    let (split, format) = if let Some(reasoning) = answer.reasoning {
        // The reasoning came apart from the text; a think block left in the text goes too.
        let rest = think::split_think(&content);
        let split = think::ThinkSplit {
            reasoning: reasoning.trim().to_string(),
            completion: rest.completion,
            closed: true,
        };
        (split, ThinkFormat::Field)
    } else if let Some(split) = think::split_sky_t1(&content) {
        (split, ThinkFormat::SkyT1)
    } else if content.trim_start().starts_with("<think>") || content.contains("</think>") {
        (think::split_think(&content), ThinkFormat::R1)
    } else {
        (think::split_think(&content), ThinkFormat::None)
    };
    if split.reasoning.is_empty() && split.completion.is_empty() {
        return Err(skip::EMPTY_RESPONSE);
    }
    // A system prompt asking for the tags that were just replaced would contradict the answer
    // the student learns: `auto` drops it (Sky-T1's, in Bespoke-Stratos and OpenThoughts).
    let asks_for_replaced_tags =
        |t: &Turn| format == ThinkFormat::SkyT1 && think::names_sky_t1_tags(&t.content);
    let prefix: Vec<Turn> = prefix
        .into_iter()
        .filter(|t| {
            t.role != "system"
                || match system {
                    SystemPrompt::Keep => true,
                    SystemPrompt::Drop => false,
                    SystemPrompt::Auto => !asks_for_replaced_tags(t),
                }
        })
        .collect();
    // The assistant turn as distill's own samples have it (R1's layout); text without a think
    // block stays as it was, and a thought never closed stays open.
    let assistant = match (format, split.closed) {
        (ThinkFormat::None, _) => content.trim().to_string(),
        (_, true) => record::assistant_content(&split.reasoning, &split.completion),
        (_, false) => format!("<think>\n{}", split.reasoning),
    };
    let finish = match finish.map(|f| FinishReason::parse(f.trim())) {
        Some(f) if f != FinishReason::Unknown => f,
        _ if split.closed => FinishReason::Stop,
        _ => FinishReason::Length,
    };
    let problem_text = prefix
        .iter()
        .filter(|t| t.role != "system")
        .map(|t| format!("{}\u{1f}{}", t.role, t.content))
        .collect::<Vec<_>>()
        .join("\u{1e}");
    let mut messages: Vec<Message> = prefix
        .into_iter()
        .map(|t| Message::new(t.role, t.content))
        .collect();
    messages.push(Message::new("assistant", assistant));
    Ok(Draft {
        problem: None,
        problem_text,
        messages,
        prompt,
        reasoning: split.reasoning,
        completion: split.completion,
        format,
        closed: split.closed,
        finish,
        reference: None,
        source: None,
    })
}
