//! Final-answer extraction, normalization and equivalence: the verifier behind rejection
//! sampling.
//!
//! - [`extract_answer`] finds what a completion claims as its answer: the last non-empty
//!   `\boxed{…}` / `\fbox{…}`, else the last "final answer is …" / "answer: …" phrase, else the
//!   last number.
//! - [`normalize_answer`] rewrites an answer into a canonical string (no `$`, units, spaces,
//!   `\left`, `\dfrac`, thousands separators, …).
//! - [`answers_equivalent`] compares two answers: equal canonical strings, equal values (exact
//!   rationals, or a relative tolerance of [`RELATIVE_TOLERANCE`] once `\pi` or an irrational
//!   root is involved), or element-wise equal tuples, intervals, matrices and unordered sets.
//!
//! Everything here runs once per corpus row (800k rows of multi-kilobyte traces), so extraction
//! scans from the end of the text, regexes are compiled once, and nothing is quadratic in the
//! length of the text.

mod eval;
mod normalize;

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

pub use eval::RELATIVE_TOLERANCE;
use eval::{evaluate, values_equal};
pub use normalize::normalize_answer;
use normalize::tidy;

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Extracts the raw final answer a completion gives.
///
/// 1. The last `\boxed{…}` or `\fbox{…}` with balanced braces (escaped `\{`, `\}` do not count),
///    or `\boxed 5` without braces (up to the next whitespace or `$`). Empty boxes and boxes
///    left unclosed (a truncated generation) are skipped in favour of earlier ones; when every
///    box is empty the result is `None` rather than a guess from the surrounding text.
/// 2. Else the last "final answer is X" / "the answer is X" / "answer: X" (case-insensitive) or
///    GSM8K-style "#### X";
///    X is a `$…$`, `\(…\)` or `\[…\]` math span if one starts there, else the rest of the line
///    up to a sentence end (". " or a final ".").
/// 3. Else the last number in the text (`-1,234.5`, `3/4`).
///
/// The result is trimmed but otherwise raw; compare it with [`answers_equivalent`].
pub fn extract_answer(text: &str) -> Option<String> {
    match last_boxed(text) {
        Boxed::Found(s) => return Some(s.to_string()),
        Boxed::OnlyEmpty => return None,
        Boxed::None => {}
    }
    if let Some(s) = answer_phrase(text) {
        return Some(s.to_string());
    }
    last_number(text).map(str::to_string)
}

/// The content of the last non-empty `\boxed{…}` / `\fbox{…}` in `text`, trimmed (how MATH
/// solutions state their answer).
pub fn last_boxed_answer(text: &str) -> Option<String> {
    match last_boxed(text) {
        Boxed::Found(s) => Some(s.to_string()),
        Boxed::OnlyEmpty | Boxed::None => None,
    }
}

enum Boxed<'a> {
    Found(&'a str),
    OnlyEmpty,
    None,
}

const BOX_COMMANDS: [&str; 2] = ["\\boxed", "\\fbox"];

/// Scans backwards over `\boxed` / `\fbox` occurrences until one has a non-empty argument.
///
/// Linear in the length of the text however many boxes it holds: each command's next
/// occurrence is searched only in the part not yet scanned, and a brace group is scanned only up
/// to the start of a later group found unclosed (a group that is still open there can never
/// close, because the later group never returns to its own starting depth).
fn last_boxed(text: &str) -> Boxed<'_> {
    let mut next: [Option<usize>; 2] = [0, 1].map(|k| text.rfind(BOX_COMMANDS[k]));
    let mut limit = text.len();
    let mut saw_empty = false;
    loop {
        let k = match next {
            [Some(a), Some(b)] => usize::from(b > a),
            [Some(_), None] => 0,
            [None, Some(_)] => 1,
            [None, None] => break,
        };
        let Some(at) = next[k] else { break };
        next[k] = text[..at].rfind(BOX_COMMANDS[k]);
        let arg_start = at + BOX_COMMANDS[k].len();
        if arg_start > limit {
            continue;
        }
        match box_argument(&text[arg_start..limit]) {
            BoxArg::Found(arg) if !arg.trim().is_empty() => return Boxed::Found(arg.trim()),
            BoxArg::Found(_) => saw_empty = true,
            BoxArg::Unclosed(offset) => limit = arg_start + offset,
            BoxArg::NotABox => {}
        }
    }
    if saw_empty {
        Boxed::OnlyEmpty
    } else {
        Boxed::None
    }
}

enum BoxArg<'a> {
    Found(&'a str),
    /// A `{` at this offset that never closes.
    Unclosed(usize),
    NotABox,
}

/// The argument of a box command, given the text right after the command name. Not a box
/// when the command is really a longer name (`\boxedsymbol`).
fn box_argument(rest: &str) -> BoxArg<'_> {
    let after_space = rest.trim_start();
    let skipped = rest.len() - after_space.len();
    match after_space.chars().next() {
        Some('{') => match braced_group(after_space) {
            Some(g) => BoxArg::Found(&g[1..g.len() - 1]),
            None => BoxArg::Unclosed(skipped),
        },
        Some(c) if c.is_ascii_alphabetic() && skipped == 0 => BoxArg::NotABox,
        Some(_) => {
            // `\boxed 5` / `\boxed5`: plain TeX takes one token, but answers like `\boxed 12`
            // mean the whole run, so take up to whitespace or a closing `$`.
            let end = after_space
                .find(|c: char| c.is_whitespace() || c == '$')
                .unwrap_or(after_space.len());
            BoxArg::Found(&after_space[..end])
        }
        None => BoxArg::Found(""),
    }
}

/// The balanced `{…}` group at the start of `s` (including the braces). A backslash escapes the
/// next character, so `\{`, `\}` and `\\` never count as braces.
fn braced_group(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..=i]);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

static ANSWER_PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i-u)\banswer\b\s*(?:\*\*\s*)?(?:is\b\s*:?|:)|####")
        .expect("static regex is valid")
});

fn answer_phrase(text: &str) -> Option<&str> {
    // The last phrase that is followed by something: "the answer is" at the very end says
    // nothing, so earlier ones are tried.
    let ends: Vec<usize> = ANSWER_PHRASE
        .find_iter(text)
        .filter(|m| !m.as_str().starts_with('#') || gsm8k_marker(&text[m.end()..]))
        .map(|m| m.end())
        .collect();
    ends.iter()
        .rev()
        .filter_map(|&end| answer_after_phrase(&text[end..]))
        .next()
}

/// `#### 18` ends a GSM8K solution, but `#### Step 2` is a Markdown heading: only a value
/// (digit, sign, `.`, `$` or a LaTeX command) after the marker counts.
fn gsm8k_marker(rest: &str) -> bool {
    rest.trim_start_matches([' ', '\t'])
        .starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | '$' | '\\'))
}

fn answer_after_phrase(rest: &str) -> Option<&str> {
    let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '*' || c == ':');
    for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = rest.strip_prefix(open) {
            if let Some(end) = inner.find(close) {
                let span = inner[..end].trim();
                return (!span.is_empty()).then_some(span);
            }
        }
    }
    let line = rest.split('\n').next().unwrap_or("");
    let sentence = match line.find(". ") {
        Some(i) => &line[..i],
        None => line,
    };
    let answer = sentence.trim().trim_end_matches(['.', '*']).trim_end();
    (!answer.is_empty()).then_some(answer)
}

/// The last number in `text`, found by scanning backwards from its last digit: digits with
/// `,` thousands groups and one `.`, a leading `-` unless it is a binary minus (`3-5` gives
/// `5`), and a preceding `N/` (so `3/4` comes back whole).
fn last_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let last_digit = b.iter().rposition(u8::is_ascii_digit)?;
    let end = last_digit + 1;
    let mut start = number_start(b, end);
    if start >= 2 && b[start - 1] == b'/' && b[start - 2].is_ascii_digit() {
        start = number_start(b, start - 1);
    }
    Some(&text[start..end])
}

/// Where the number ending (exclusively) at `end` starts; `b[end - 1]` is a digit.
fn number_start(b: &[u8], end: usize) -> usize {
    let mut i = end;
    let mut seen_dot = false;
    while i > 0 {
        let c = b[i - 1];
        let digit_before = i >= 2 && b[i - 2].is_ascii_digit();
        let thousands = c == b','
            && digit_before
            && b[i..].iter().take_while(|d| d.is_ascii_digit()).count() == 3;
        if c.is_ascii_digit() || thousands {
            i -= 1;
        } else if c == b'.' && !seen_dot && b.get(i).is_some_and(u8::is_ascii_digit) {
            seen_dot = true;
            i -= 1;
        } else {
            break;
        }
    }
    if i > 0 && b[i - 1] == b'-' {
        let before = if i >= 2 { Some(b[i - 2]) } else { None };
        let binary = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b')');
        if !binary {
            i -= 1;
        }
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// Extracts the final answer of a completion (the text after `</think>`) and, when a reference
/// exists, judges it: `(final_answer, correct)`. `correct` is `None` without a reference and
/// `Some(false)` when no answer could be extracted.
pub fn verify(completion: &str, reference: Option<&str>) -> (Option<String>, Option<bool>) {
    let answer = extract_answer(completion);
    let correct = reference.map(|r| answer.as_deref().is_some_and(|a| answers_equivalent(a, r)));
    (answer, correct)
}

/// Whether two answers mean the same thing. Both are normalized with [`normalize_answer`]; then
/// they are equal when the strings are equal, when both are single words differing only in case
/// (`Evelyn` / `evelyn`), when both are constant expressions of equal value (exact rationals
/// compare exactly, so `3/4 = 0.75 = \frac34`; with `\pi` or an irrational root the relative
/// tolerance [`RELATIVE_TOLERANCE`] applies), or when both are the same kind of structure with
/// equivalent elements: tuples and intervals in order with the same brackets, matrices cell by
/// cell, and `\{…\}` sets, bare comma lists, `\cup` unions and `a \pm b` as unordered sets
/// (in order past 64 elements, to keep the matching cheap).
/// An empty answer is never equivalent to anything.
pub fn answers_equivalent(pred: &str, reference: &str) -> bool {
    let a = normalize_answer(pred);
    let b = normalize_answer(reference);
    !a.is_empty() && !b.is_empty() && equivalent_normalized(&a, &b, 0)
}

const MAX_STRUCTURE_DEPTH: usize = 6;
/// Sets longer than this are compared in order (see [`answers_equivalent`]).
const MAX_UNORDERED: usize = 64;

fn equivalent_normalized(a: &str, b: &str, depth: usize) -> bool {
    if a == b {
        return true;
    }
    if depth > MAX_STRUCTURE_DEPTH {
        return false;
    }
    let is_word = |s: &str| s.len() > 1 && s.bytes().all(|c| c.is_ascii_alphabetic());
    if is_word(a) && is_word(b) {
        return a.eq_ignore_ascii_case(b);
    }
    if let (Some(x), Some(y)) = (evaluate(a), evaluate(b)) {
        return values_equal(x, y);
    }
    match (Shape::parse(a), Shape::parse(b)) {
        (Some(Shape::Matrix(x)), Some(Shape::Matrix(y))) => {
            x.len() == y.len()
                && x.iter().zip(&y).all(|(rx, ry)| {
                    rx.len() == ry.len()
                        && rx
                            .iter()
                            .zip(ry)
                            .all(|(cx, cy)| equivalent_elements(cx, cy, depth))
                })
        }
        (Some(Shape::Ordered(ox, cx, x)), Some(Shape::Ordered(oy, cy, y))) => {
            ox == oy
                && cx == cy
                && x.len() == y.len()
                && x.iter()
                    .zip(&y)
                    .all(|(ex, ey)| equivalent_elements(ex, ey, depth))
        }
        (Some(Shape::Unordered(x)), Some(Shape::Unordered(y))) => {
            if x.len() != y.len() {
                return false;
            }
            if x.len() > MAX_UNORDERED {
                // Matching is quadratic; answers this long are compared in order instead.
                return x
                    .iter()
                    .zip(&y)
                    .all(|(ex, ey)| equivalent_elements(ex, ey, depth));
            }
            let mut used = vec![false; y.len()];
            x.iter().all(|ex| {
                let hit = y
                    .iter()
                    .enumerate()
                    .position(|(j, ey)| !used[j] && equivalent_elements(ex, ey, depth));
                hit.map(|j| used[j] = true).is_some()
            })
        }
        _ => false,
    }
}

/// Elements of a structure get the whole-answer tidying too (`x=1` → `1`, `1,000` → `1000`).
fn equivalent_elements(a: &str, b: &str, depth: usize) -> bool {
    equivalent_normalized(&tidy(a.to_string()), &tidy(b.to_string()), depth + 1)
}

/// The structure of a normalized answer, for element-wise comparison.
enum Shape<'a> {
    /// `\begin{pmatrix}a&b\\c&d\end{pmatrix}` (also `bmatrix`, `matrix`): rows of cells.
    Matrix(Vec<Vec<&'a str>>),
    /// `(a,b)`, `[a,b)`, …: opening bracket, closing bracket, elements.
    Ordered(u8, u8, Vec<&'a str>),
    /// `\{a,b\}`, `a,b`, `A\cupB`, `a\pmb`: elements in any order.
    Unordered(Vec<Cow<'a, str>>),
}

impl<'a> Shape<'a> {
    fn parse(s: &'a str) -> Option<Shape<'a>> {
        for env in ["pmatrix", "bmatrix", "matrix"] {
            let begin = format!("\\begin{{{env}}}");
            let end = format!("\\end{{{env}}}");
            if let Some(body) = s
                .strip_prefix(begin.as_str())
                .and_then(|r| r.strip_suffix(end.as_str()))
            {
                let rows = split_top_level(body, "\\\\")
                    .into_iter()
                    .map(|row| split_top_level(row, "&"))
                    .collect();
                return Some(Shape::Matrix(rows));
            }
        }
        let union = split_top_level(s, "\\cup");
        if union.len() > 1 {
            return Some(Shape::Unordered(
                union.into_iter().map(Cow::Borrowed).collect(),
            ));
        }
        if let Some(body) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
            if is_balanced(body) {
                return Some(Shape::Unordered(expand_pm(split_top_level(body, ","))));
            }
        }
        let bytes = s.as_bytes();
        if let (Some(&open @ (b'(' | b'[')), Some(&close @ (b')' | b']'))) =
            (bytes.first(), bytes.last())
        {
            let body = &s[1..s.len() - 1];
            if is_balanced(body) {
                let items = split_top_level(body, ",");
                if items.len() > 1 {
                    return Some(Shape::Ordered(open, close, items));
                }
            }
        }
        let items = split_top_level(s, ",");
        if items.len() > 1 {
            return Some(Shape::Unordered(expand_pm(items)));
        }
        let pm = expand_pm(vec![s]);
        (pm.len() > 1).then_some(Shape::Unordered(pm))
    }
}

/// Replaces each element with one top-level `\pm` by its two values (`1\pm\sqrt5` becomes
/// `1+\sqrt5` and `1-\sqrt5`).
fn expand_pm(items: Vec<&str>) -> Vec<Cow<'_, str>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let parts = split_top_level(item, "\\pm");
        if parts.len() == 2 && !parts[1].is_empty() {
            out.push(Cow::Owned(format!("{}+{}", parts[0], parts[1])));
            out.push(Cow::Owned(format!("{}-{}", parts[0], parts[1])));
        } else {
            out.push(Cow::Borrowed(item));
        }
    }
    out
}

/// Bracket depth change of the byte at `i` (`\{`/`\}` count as brackets, any other escaped
/// character does not); returns (delta, bytes consumed).
fn bracket_step(b: &[u8], i: usize) -> (isize, usize) {
    match b[i] {
        b'\\' => match b.get(i + 1) {
            Some(b'{') => (1, 2),
            Some(b'}') => (-1, 2),
            Some(_) => (0, 2),
            None => (0, 1),
        },
        b'{' | b'(' | b'[' => (1, 1),
        b'}' | b')' | b']' => (-1, 1),
        _ => (0, 1),
    }
}

/// Whether every bracket opened in `s` closes in `s` and depth never goes negative (bracket
/// kinds are not matched, so the half-open interval `(3,4]` is balanced).
fn is_balanced(s: &str) -> bool {
    let b = s.as_bytes();
    let (mut i, mut depth) = (0, 0isize);
    while i < b.len() {
        let (d, n) = bracket_step(b, i);
        depth += d;
        if depth < 0 {
            return false;
        }
        i += n;
    }
    depth == 0
}

/// Splits on `sep` where it occurs outside every bracket. A control-word separator (`\cup`,
/// `\pm`) must not be followed by a letter.
fn split_top_level<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let b = s.as_bytes();
    let sep_b = sep.as_bytes();
    let word_sep = sep_b.len() > 1 && sep_b[0] == b'\\' && sep_b[1].is_ascii_alphabetic();
    let mut parts = Vec::new();
    let (mut i, mut depth, mut start) = (0, 0isize, 0);
    while i < b.len() {
        if depth == 0
            && b[i..].starts_with(sep_b)
            && !(word_sep && b.get(i + sep_b.len()).is_some_and(u8::is_ascii_alphabetic))
        {
            parts.push(&s[start..i]);
            i += sep_b.len();
            start = i;
            continue;
        }
        let (d, n) = bracket_step(b, i);
        depth += d;
        i += n;
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braced_group_respects_escapes() {
        assert_eq!(braced_group("{a\\}b}c"), Some("{a\\}b}"));
        assert_eq!(braced_group("{a{b}c}d"), Some("{a{b}c}"));
        assert_eq!(braced_group("{a\\\\}b"), Some("{a\\\\}"));
        assert_eq!(braced_group("{open"), None);
    }

    #[test]
    fn last_number_scans_backwards() {
        assert_eq!(last_number("so 3-5 is it"), Some("5"));
        assert_eq!(last_number("total -1,234.5."), Some("-1,234.5"));
        assert_eq!(last_number("ratio 3/4"), Some("3/4"));
        assert_eq!(last_number("x=.5"), Some(".5"));
        assert_eq!(last_number("numbers 1,2,3"), Some("3"));
        assert_eq!(last_number("no digits"), None);
    }
}
