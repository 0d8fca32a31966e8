//! `filter`: rejection sampling (keep verified-correct rows, optionally at most k per problem,
//! preferring shorter ones) and the R1 readability filters, each with a named reason.
//!
//! Checks run cheapest first and the first failing check names the row's reason, so a
//! truncated, wrong sample is counted as `truncated` and never pays for the text scans.

use std::collections::HashMap;

use arrow_array::{Array, ListArray, RecordBatch, StringArray, StructArray};
use serde::{Deserialize, Serialize};

use crate::pass::{par_rows, DropReason, PassCounts, PassIo, SplitWriter};
use crate::record::{col, Columns, FinishReason};
use crate::{Error, Result};

/// Reason codes written to `drop_reason`.
pub mod reason {
    pub const TRUNCATED: &str = "truncated";
    /// Ended for another reason than the model stopping (content filter, abort, tool call...).
    pub const UNFINISHED: &str = "unfinished";
    pub const UNCLOSED_THINK: &str = "unclosed_think";
    pub const UNVERIFIED: &str = "unverified";
    pub const INCORRECT: &str = "incorrect";
    pub const TOO_SHORT: &str = "too_short";
    pub const TOO_LONG: &str = "too_long";
    pub const LANGUAGE_MIXING: &str = "language_mixing";
    pub const CODE_BLOCK: &str = "code_block";
    pub const LONG_PARAGRAPH: &str = "long_paragraph";
    pub const REPETITION: &str = "repetition";
    pub const OVER_PER_PROBLEM: &str = "over_per_problem_limit";
}

/// Options of `filter`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterConfig {
    /// Keep rows the verifier could not judge (`correct` null: no reference answer).
    #[arg(long)]
    pub keep_unverified: bool,
    /// Keep rows judged incorrect (readability filters only, no rejection sampling).
    #[arg(long)]
    pub keep_incorrect: bool,
    /// Keep at most this many rows per problem, the shortest (by completion tokens).
    #[arg(long)]
    pub max_per_problem: Option<usize>,
    /// Keep generations cut at the length limit (`finish_reason = length`).
    #[arg(long)]
    pub keep_truncated: bool,
    /// Language mixing: drop when more than this many letters of the reasoning and completion
    /// are in a script other than the dominant one (Greek, common in maths, never counts).
    #[arg(long, default_value_t = 4)]
    pub max_foreign_letters: usize,
    /// Drop when a paragraph of the reasoning or completion is longer than this (characters).
    #[arg(long, default_value_t = 3000)]
    pub max_paragraph_chars: usize,
    /// Keep reasoning that contains fenced code blocks.
    #[arg(long)]
    pub allow_code_blocks: bool,
    /// Word n-gram length of the repetition check.
    #[arg(long, default_value_t = 10)]
    pub repetition_ngram: usize,
    /// Drop when one word n-gram occurs more often than this in the reasoning (a loop).
    #[arg(long, default_value_t = 10)]
    pub max_ngram_repeats: usize,
    /// Drop rows with fewer completion tokens than this.
    #[arg(long)]
    pub min_tokens: Option<i32>,
    /// Drop rows with more completion tokens than this.
    #[arg(long)]
    pub max_tokens: Option<i32>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// What `filter` kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterSummary {
    #[serde(flatten)]
    pub counts: PassCounts,
    /// Problems with at least one kept row.
    pub problems_kept: u64,
}

/// Columns `filter` reads (`messages` is used when present).
pub const REQUIRED: [&str; 6] = [
    col::PROBLEM_ID,
    col::REASONING,
    col::COMPLETION,
    col::CORRECT,
    col::FINISH_REASON,
    col::COMPLETION_TOKENS,
];

/// The fields of one row the checks look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowView<'a> {
    pub reasoning: &'a str,
    pub completion: &'a str,
    /// The assistant turn of `messages`, when the corpus has one.
    pub assistant: Option<&'a str>,
    pub correct: Option<bool>,
    pub finish_reason: &'a str,
    pub completion_tokens: i32,
}

/// The first check `row` fails, or `None` when it is kept (before the per-problem limit).
pub fn check_row(row: &RowView, cfg: &FilterConfig) -> Option<DropReason> {
    match FinishReason::parse(row.finish_reason) {
        FinishReason::Stop => {}
        FinishReason::Length if cfg.keep_truncated => {}
        FinishReason::Length => return Some(DropReason::new(reason::TRUNCATED)),
        _ => {
            return Some(DropReason::with_detail(
                reason::UNFINISHED,
                format!("finish_reason `{}`", row.finish_reason),
            ))
        }
    }
    if unclosed_think(row) {
        return Some(DropReason::new(reason::UNCLOSED_THINK));
    }
    match row.correct {
        None if !cfg.keep_unverified => return Some(DropReason::new(reason::UNVERIFIED)),
        Some(false) if !cfg.keep_incorrect => return Some(DropReason::new(reason::INCORRECT)),
        _ => {}
    }
    if let Some(min) = cfg.min_tokens.filter(|&m| row.completion_tokens < m) {
        return Some(DropReason::with_detail(
            reason::TOO_SHORT,
            format!("{} tokens < {min}", row.completion_tokens),
        ));
    }
    if let Some(max) = cfg.max_tokens.filter(|&m| row.completion_tokens > m) {
        return Some(DropReason::with_detail(
            reason::TOO_LONG,
            format!("{} tokens > {max}", row.completion_tokens),
        ));
    }
    let counts = ScriptCounts::of(row.reasoning).plus(&ScriptCounts::of(row.completion));
    if let Some((major, minor, foreign)) = counts.mixing() {
        if foreign > cfg.max_foreign_letters {
            return Some(DropReason::with_detail(
                reason::LANGUAGE_MIXING,
                format!("{foreign} letters outside {major} (mostly {minor})"),
            ));
        }
    }
    if !cfg.allow_code_blocks && row.reasoning.contains("```") {
        return Some(DropReason::new(reason::CODE_BLOCK));
    }
    for text in [row.reasoning, row.completion] {
        let longest = longest_paragraph(text);
        if longest > cfg.max_paragraph_chars {
            return Some(DropReason::with_detail(
                reason::LONG_PARAGRAPH,
                format!("{longest} characters > {}", cfg.max_paragraph_chars),
            ));
        }
    }
    let repeats = max_ngram_repeats(row.reasoning, cfg.repetition_ngram);
    if repeats > cfg.max_ngram_repeats {
        return Some(DropReason::with_detail(
            reason::REPETITION,
            format!(
                "a {}-word sequence occurs {repeats} times",
                cfg.repetition_ngram
            ),
        ));
    }
    None
}

/// A think block opened and never closed: the assistant turn has a `<think>` with no
/// `</think>` after it, or the row has reasoning but nothing after it.
pub fn unclosed_think(row: &RowView) -> bool {
    if let Some(text) = row.assistant {
        if let Some(open) = text.rfind("<think>") {
            if !text[open..].contains("</think>") {
                return true;
            }
        }
    }
    row.completion.trim().is_empty() && !row.reasoning.trim().is_empty()
}

/// Letters per writing system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptCounts {
    counts: [usize; SCRIPTS.len()],
}

const SCRIPTS: [&str; 8] = [
    "Latin",
    "Cyrillic",
    "Arabic",
    "Hebrew",
    "Devanagari",
    "Thai",
    "Han/Kana",
    "Hangul",
];

impl ScriptCounts {
    pub fn of(text: &str) -> Self {
        let mut counts = [0usize; SCRIPTS.len()];
        let bytes = text.as_bytes();
        if bytes.is_ascii() {
            counts[0] = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
            return ScriptCounts { counts };
        }
        for ch in text.chars() {
            if let Some(script) = script_of(ch) {
                counts[script] += 1;
            }
        }
        ScriptCounts { counts }
    }

    pub fn plus(&self, other: &Self) -> Self {
        let mut counts = self.counts;
        for (c, o) in counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        ScriptCounts { counts }
    }

    /// `(dominant script, largest other script, letters outside the dominant one)`, or `None`
    /// when the text has letters of one script only.
    pub fn mixing(&self) -> Option<(&'static str, &'static str, usize)> {
        let mut order: Vec<usize> = (0..SCRIPTS.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.counts[i]));
        let (major, minor) = (order[0], order[1]);
        let foreign: usize = self.counts.iter().sum::<usize>() - self.counts[major];
        (foreign > 0).then_some((SCRIPTS[major], SCRIPTS[minor], foreign))
    }
}

/// The script of a letter, by Unicode block; `None` for non-letters, Greek (maths symbols)
/// and scripts not tracked.
fn script_of(ch: char) -> Option<usize> {
    let c = ch as u32;
    Some(match c {
        _ if ch.is_ascii_alphabetic() => 0,
        0x00C0..=0x024F if ch.is_alphabetic() => 0,
        0x1E00..=0x1EFF => 0,
        0x0400..=0x04FF => 1,
        0x0600..=0x06FF | 0x0750..=0x077F => 2,
        0x0590..=0x05FF => 3,
        0x0900..=0x097F => 4,
        0x0E00..=0x0E7F => 5,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => 6,
        0x1100..=0x11FF | 0xAC00..=0xD7AF => 7,
        _ => return None,
    })
}

/// Characters in the longest paragraph (paragraphs are separated by blank lines).
pub fn longest_paragraph(text: &str) -> usize {
    let (mut longest, mut current) = (0usize, 0usize);
    for line in text.split('\n') {
        if line.trim().is_empty() {
            current = 0;
            continue;
        }
        // Count the newline joining it to the previous line as one character.
        current += usize::from(current > 0) + char_len(line);
        longest = longest.max(current);
    }
    longest
}

fn char_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// How often the most frequent word `n`-gram of `text` occurs (0 when shorter than `n`).
pub fn max_ngram_repeats(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let words: Vec<u64> = text
        .split_whitespace()
        .map(|w| twox_hash::XxHash3_64::oneshot(w.as_bytes()))
        .collect();
    if words.len() < n {
        return 0;
    }
    let mut grams: Vec<u64> = words
        .windows(n)
        .map(|w| {
            w.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ x).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
            })
        })
        .collect();
    grams.sort_unstable();
    let (mut best, mut run) = (1usize, 1usize);
    for pair in grams.windows(2) {
        run = if pair[0] == pair[1] { run + 1 } else { 1 };
        best = best.max(run);
    }
    best
}

/// The content of the last assistant turn of row `row` of a `messages` column.
fn assistant_turn(list: &ListArray, row: usize) -> Option<&str> {
    if list.is_null(row) {
        return None;
    }
    let structs = list.values().as_any().downcast_ref::<StructArray>()?;
    let roles = structs
        .column_by_name("role")?
        .as_any()
        .downcast_ref::<StringArray>()?;
    let contents = structs
        .column_by_name("content")?
        .as_any()
        .downcast_ref::<StringArray>()?;
    let offsets = list.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    (start..end)
        .rev()
        .find(|&i| roles.value(i) == "assistant")
        .map(|i| contents.value(i))
}

/// Runs the row checks over a batch (in parallel).
pub fn check_batch(batch: &RecordBatch, cfg: &FilterConfig) -> Result<Vec<Option<DropReason>>> {
    let c = Columns::new(batch);
    let (reasoning, completion) = (c.str(col::REASONING)?, c.str(col::COMPLETION)?);
    let (correct, finish, tokens) = (
        c.bool(col::CORRECT)?,
        c.str(col::FINISH_REASON)?,
        c.i32(col::COMPLETION_TOKENS)?,
    );
    let messages = match batch.column_by_name(col::MESSAGES) {
        Some(_) => Some(c.list(col::MESSAGES)?),
        None => None,
    };
    Ok(par_rows(batch.num_rows(), |i| {
        let row = RowView {
            reasoning: reasoning.value(i),
            completion: completion.value(i),
            assistant: messages.and_then(|m| assistant_turn(m, i)),
            correct: (!correct.is_null(i)).then(|| correct.value(i)),
            finish_reason: finish.value(i),
            completion_tokens: tokens.value(i),
        };
        check_row(&row, cfg)
    }))
}

/// Runs `filter` over `io.inputs` into `io.output`.
pub fn run(io: &PassIo, cfg: &FilterConfig) -> Result<FilterSummary> {
    if cfg.max_per_problem == Some(0) {
        return Err(Error::Invalid(
            "`max_per_problem` must be at least 1".into(),
        ));
    }
    let reader = io.reader()?;
    reader.require(&REQUIRED)?;
    let mut out = SplitWriter::new(io, reader.schema().clone(), reader.schema())?;
    let mut problems = std::collections::HashSet::new();
    let mut note = |batch: &RecordBatch, verdicts: &[Option<DropReason>]| -> Result<()> {
        let ids = Columns::new(batch).str(col::PROBLEM_ID)?;
        for (i, v) in verdicts.iter().enumerate() {
            if v.is_none() {
                problems.insert(twox_hash::XxHash3_64::oneshot(ids.value(i).as_bytes()));
            }
        }
        Ok(())
    };
    match cfg.max_per_problem {
        None => {
            for batch in reader.batches() {
                let batch = batch?;
                let verdicts = check_batch(&batch, cfg)?;
                note(&batch, &verdicts)?;
                out.write(&batch, &batch, &verdicts)?;
            }
        }
        Some(k) => {
            // Two reads: the first judges every row and ranks each problem's survivors, the
            // second routes rows. Memory is one verdict and one ranking key per row.
            let mut verdicts: Vec<Option<DropReason>> = Vec::new();
            let mut ranked: HashMap<u64, Vec<(i32, usize, usize)>> = HashMap::new();
            for batch in reader.batches() {
                let batch = batch?;
                let c = Columns::new(&batch);
                let (ids, tokens) = (c.str(col::PROBLEM_ID)?, c.i32(col::COMPLETION_TOKENS)?);
                let (reasoning, completion) = (c.str(col::REASONING)?, c.str(col::COMPLETION)?);
                for (i, v) in check_batch(&batch, cfg)?.into_iter().enumerate() {
                    if v.is_none() {
                        let key = twox_hash::XxHash3_64::oneshot(ids.value(i).as_bytes());
                        let bytes = reasoning.value(i).len() + completion.value(i).len();
                        let row = verdicts.len();
                        ranked
                            .entry(key)
                            .or_default()
                            .push((tokens.value(i), bytes, row));
                    }
                    verdicts.push(v);
                }
            }
            for rows in ranked.values_mut() {
                if rows.len() > k {
                    rows.sort_unstable();
                    for &(_, _, row) in &rows[k..] {
                        verdicts[row] = Some(DropReason::with_detail(
                            reason::OVER_PER_PROBLEM,
                            format!("kept {k} shorter samples of this problem"),
                        ));
                    }
                }
            }
            drop(ranked);
            let mut start = 0;
            for batch in reader.batches() {
                let batch = batch?;
                let end = start + batch.num_rows();
                let slice = verdicts.get(start..end).ok_or_else(|| {
                    Error::Invalid("the input changed between the two reads of `filter`".into())
                })?;
                note(&batch, slice)?;
                out.write(&batch, &batch, slice)?;
                start = end;
            }
        }
    }
    let problems_kept = problems.len() as u64;
    out.finish(cfg, |counts| FilterSummary {
        counts,
        problems_kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greek_maths_is_not_language_mixing() {
        let counts = ScriptCounts::of("Let θ = π/4 and α + β = γ; then sin θ = √2/2.");
        assert_eq!(counts.mixing(), None);
        let mixed = ScriptCounts::of("The answer is 42, 答案是四十二.");
        assert_eq!(mixed.mixing(), Some(("Latin", "Han/Kana", 6)));
        let cyrillic = ScriptCounts::of("Ответ: сорок два, i.e. 42");
        assert_eq!(cyrillic.mixing(), Some(("Cyrillic", "Latin", 2)));
    }

    #[test]
    fn paragraphs_are_counted_in_characters_between_blank_lines() {
        assert_eq!(longest_paragraph("ab\ncd\n\n  \nxyz"), 5);
        assert_eq!(longest_paragraph("é".repeat(10).as_str()), 10);
        assert_eq!(longest_paragraph(""), 0);
    }

    #[test]
    fn repeated_ngrams_are_counted() {
        assert_eq!(max_ngram_repeats("a b c a b c a b c", 3), 3);
        assert_eq!(max_ngram_repeats("a b", 3), 0);
        assert_eq!(max_ngram_repeats("a b c d", 2), 1);
    }

    #[test]
    fn unclosed_think_needs_a_closing_tag_after_the_last_opening() {
        let closed = RowView {
            reasoning: "r",
            completion: "c",
            assistant: Some("<think>\nr\n</think>\n\nc"),
            ..RowView::default()
        };
        assert!(!unclosed_think(&closed));
        let reopened = RowView {
            assistant: Some("<think>r</think> c <think> again"),
            ..closed
        };
        assert!(unclosed_think(&reopened));
        let no_answer = RowView {
            completion: " ",
            assistant: None,
            ..closed
        };
        assert!(unclosed_think(&no_answer));
    }
}
