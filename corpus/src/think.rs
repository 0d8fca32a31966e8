//! Splitting a reasoning model's output into its `<think>…</think>` block and the completion.
//!
//! R1-style models write `<think>\n…reasoning…\n</think>\n\n…answer…`. When the prompt prefills
//! the assistant turn with `<think>\n` (the R1 usage convention), the generated text starts inside
//! the block and carries only the closing tag, so both shapes are accepted. Sky-T1's format
//! (`<|begin_of_thought|>…<|end_of_thought|>` then `<|begin_of_solution|>…<|end_of_solution|>`,
//! used by Bespoke-Stratos and OpenThoughts) is read by [`split_sky_t1`].

/// One output split at its `</think>` tag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThinkSplit {
    /// Text inside the think block, without the tags.
    pub reasoning: String,
    /// Text after `</think>` (the whole text when there is no think block at all).
    pub completion: String,
    /// False when a block was opened but never closed (usually a generation cut at the length
    /// limit): then everything is reasoning and the completion is empty.
    pub closed: bool,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Splits `text` at its first `</think>`.
///
/// - `<think>` is recognised only at the very beginning (after leading whitespace); a `<think>`
///   later in the text is ordinary text. It may also be absent (prefilled prompts).
/// - With a `</think>`: reasoning is the text before it (minus a leading `<think>`), completion
///   is the text after it. Later `</think>` tags stay in the completion.
/// - With a leading `<think>` but no `</think>`: everything after `<think>` is reasoning, the
///   completion is empty and `closed` is false.
/// - With neither tag: reasoning is empty and the completion is the whole text.
///
/// Both parts are trimmed of leading and trailing whitespace (`str::trim`: newlines, spaces,
/// tabs and other Unicode whitespace), which removes the newlines R1 puts around the tags;
/// whitespace inside either part is kept as is.
pub fn split_think(text: &str) -> ThinkSplit {
    let start = text.trim_start();
    let (opened, body) = match start.strip_prefix(OPEN) {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    match body.find(CLOSE) {
        Some(at) => ThinkSplit {
            reasoning: body[..at].trim().to_string(),
            completion: body[at + CLOSE.len()..].trim().to_string(),
            closed: true,
        },
        None if opened => ThinkSplit {
            reasoning: body.trim().to_string(),
            completion: String::new(),
            closed: false,
        },
        None => ThinkSplit {
            reasoning: String::new(),
            completion: text.trim().to_string(),
            closed: true,
        },
    }
}

const THOUGHT_OPEN: &str = "<|begin_of_thought|>";
const THOUGHT_CLOSE: &str = "<|end_of_thought|>";
const SOLUTION_OPEN: &str = "<|begin_of_solution|>";
const SOLUTION_CLOSE: &str = "<|end_of_solution|>";

/// Whether `text` names Sky-T1's tags (a system prompt asking for that format).
pub fn names_sky_t1_tags(text: &str) -> bool {
    [THOUGHT_OPEN, THOUGHT_CLOSE, SOLUTION_OPEN, SOLUTION_CLOSE]
        .iter()
        .any(|tag| text.contains(tag))
}

/// Splits a text in Sky-T1's format, or `None` when it has no `<|begin_of_thought|>`.
///
/// Reasoning is the text between the thought tags; the completion is the text between the
/// solution tags (when they are missing, whatever follows `<|end_of_thought|>`). A thought never
/// closed is all reasoning (`closed` false), as with [`split_think`]. Both parts are trimmed.
pub fn split_sky_t1(text: &str) -> Option<ThinkSplit> {
    let start = text.find(THOUGHT_OPEN)? + THOUGHT_OPEN.len();
    let body = &text[start..];
    let Some(end) = body.find(THOUGHT_CLOSE) else {
        return Some(ThinkSplit {
            reasoning: body.trim().to_string(),
            completion: String::new(),
            closed: false,
        });
    };
    let rest = &body[end + THOUGHT_CLOSE.len()..];
    let solution = match rest.find(SOLUTION_OPEN) {
        Some(at) => {
            let inner = &rest[at + SOLUTION_OPEN.len()..];
            inner
                .find(SOLUTION_CLOSE)
                .map_or(inner, |close| &inner[..close])
        }
        None => rest,
    };
    Some(ThinkSplit {
        reasoning: body[..end].trim().to_string(),
        completion: solution.trim().to_string(),
        closed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sky_t1_format() {
        let text = "<|begin_of_thought|>\n\nLet me add.\n\n3 + 4 = 7.\n\n<|end_of_thought|>\n\n\
                    <|begin_of_solution|>\n\nThe answer is \\boxed{7}.\n\n<|end_of_solution|>";
        let s = split_sky_t1(text).unwrap();
        assert_eq!(s.reasoning, "Let me add.\n\n3 + 4 = 7.");
        assert_eq!(s.completion, "The answer is \\boxed{7}.");
        assert!(s.closed);
        let cut = split_sky_t1("<|begin_of_thought|> so far").unwrap();
        assert_eq!((cut.reasoning.as_str(), cut.closed), ("so far", false));
        let bare = split_sky_t1("<|begin_of_thought|>a<|end_of_thought|> b ").unwrap();
        assert_eq!(
            (bare.reasoning.as_str(), bare.completion.as_str()),
            ("a", "b")
        );
        assert_eq!(split_sky_t1("<think>a</think>b"), None);
    }

    fn split(text: &str) -> (String, String, bool) {
        let s = split_think(text);
        (s.reasoning, s.completion, s.closed)
    }

    #[test]
    fn full_block() {
        assert_eq!(split("<think>a</think>b"), ("a".into(), "b".into(), true));
        assert_eq!(
            split("<think>\nstep 1\n\nstep 2\n</think>\n\nSo \\boxed{3}.\n"),
            ("step 1\n\nstep 2".into(), "So \\boxed{3}.".into(), true)
        );
    }

    #[test]
    fn prefilled_prompt_has_only_the_closing_tag() {
        assert_eq!(
            split("Let me think.\n</think>\n\nAnswer: 4"),
            ("Let me think.".into(), "Answer: 4".into(), true)
        );
    }

    #[test]
    fn no_tags_at_all() {
        assert_eq!(
            split("The answer is 4."),
            ("".into(), "The answer is 4.".into(), true)
        );
        assert_eq!(split(""), ("".into(), "".into(), true));
    }

    #[test]
    fn unclosed_block_is_all_reasoning() {
        assert_eq!(
            split("<think>\nhmm, 3 + 4 is"),
            ("hmm, 3 + 4 is".into(), "".into(), false)
        );
        assert_eq!(split("  <think>"), ("".into(), "".into(), false));
    }

    #[test]
    fn splits_at_the_first_closing_tag() {
        assert_eq!(
            split("<think>a</think>b</think>c"),
            ("a".into(), "b</think>c".into(), true)
        );
    }

    #[test]
    fn empty_reasoning() {
        assert_eq!(
            split("<think>\n\n</think>\n\n42"),
            ("".into(), "42".into(), true)
        );
    }

    #[test]
    fn opening_tag_later_in_the_text_is_plain_text() {
        assert_eq!(
            split("I will use <think> tags"),
            ("".into(), "I will use <think> tags".into(), true)
        );
    }
}
