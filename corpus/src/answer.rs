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

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

pub use eval::RELATIVE_TOLERANCE;
use eval::{evaluate, values_equal};

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
    let ends: Vec<usize> = ANSWER_PHRASE.find_iter(text).map(|m| m.end()).collect();
    ends.iter()
        .rev()
        .filter_map(|&end| answer_after_phrase(&text[end..]))
        .next()
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

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

/// Rewrites an answer into a canonical string. In order:
///
/// 1. a string containing `\boxed{…}` is replaced by the content of its last box;
/// 2. Unicode `−`, `×`, `·`, `÷`, `π`, `√`, `∞` become their LaTeX forms, `°` is dropped;
/// 3. `\text{…}`, `\textbf{…}`, `\mbox{…}`, `\mathrm{…}` (and similar) are unwrapped;
/// 4. `$`, `\$`, `%`, `\%`, `^\circ`, `\circ`, `\degree`, `\left`, `\right` (and their `.`),
///    `\displaystyle`, spacing commands (`\!`, `\,`, `\;`, `\:`, `\ `, `\quad`, `~`) and math
///    delimiters `\(`, `\)`, `\[`, `\]` are removed; `\dfrac`/`\tfrac` become `\frac`,
///    `\dbinom`/`\tbinom` become `\binom`;
/// 5. trailing unit words (`cm`, `inches`, `dollars`, `degrees`, `square units`, …, optionally
///    followed by `^2`/`^3`) are removed when they follow a number or a closing bracket, and so
///    is a final `\text{…}` / `\mbox{…}` of any words after one (`12 \text{ ways}`);
/// 6. whitespace is removed (a single space is kept between a control word and a letter, so
///    `\cot x` does not become `\cotx`), and an `\approx …` tail is dropped;
/// 7. arguments of `\frac`, `\sqrt`, `\binom`, `^` and `_` get braces (`\frac34` →
///    `\frac{3}{4}`, `\sqrt2` → `\sqrt{2}`, `x^2` → `x^{2}`, `52_8` → `52_{8}`);
/// 8. a trailing `.` goes, and so do a leading `+`, a `x=` / `\theta=` / `x\in` prefix (a single
///    variable, when no other `=` follows) and braces around the whole answer;
/// 9. `{,}` becomes `,`; thousands separators in a plain number go (`10,080` → `10080`);
/// 10. a plain decimal number is written canonically (`.50` → `0.5`, `18.0` → `18`, `-0` → `0`);
/// 11. a parenthesised choice letter loses its parentheses (`(C)` → `C`).
pub fn normalize_answer(s: &str) -> String {
    let mut s: Cow<str> = Cow::Borrowed(s.trim());
    if s.contains("\\boxed") || s.contains("\\fbox") {
        if let Boxed::Found(inner) = last_boxed(&s) {
            s = Cow::Owned(inner.to_string());
        }
    }
    let s = replace_unicode(&s);
    let s = match TRAILING_TEXT.captures(&s) {
        Some(caps) => Cow::Owned(caps[1].to_string()),
        None => s,
    };
    let s = unwrap_text_commands(&s);
    let s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    let s = strip_commands(&s);
    let s = strip_units(&s);
    let mut s = collapse_whitespace(s);
    // `\sqrt{53}\approx7.28`: the exact form before `\approx` is the answer.
    if let Some(exact) = split_top_level(&s, "\\approx").first() {
        if !exact.is_empty() && exact.len() < s.len() {
            s = exact.to_string();
        }
    }
    let s = brace_arguments(&s, 0);
    tidy(s)
}

fn replace_unicode(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\u{2212}' | '\u{2013}' => out.push('-'),
            '\u{00d7}' => out.push_str("\\times "),
            '\u{00b7}' | '\u{22c5}' => out.push_str("\\cdot "),
            '\u{00f7}' => out.push_str("\\div "),
            '\u{03c0}' => out.push_str("\\pi "),
            '\u{221a}' => out.push_str("\\sqrt"),
            '\u{221e}' => out.push_str("\\infty "),
            '\u{00b0}' => {}
            '\u{00a0}' => out.push(' '),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

const TEXT_COMMANDS: [&str; 11] = [
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "textsf",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
];

/// Replaces `\text{…}` and friends by their content with a space on each side, innermost
/// groups first via repetition until none is left.
fn unwrap_text_commands(s: &str) -> String {
    let mut s = s.to_string();
    // Each pass removes at least one command, so this terminates; the cap guards pathological
    // input from costing more than a few hundred passes over a short string.
    for _ in 0..256 {
        let Some((at, name_len)) = find_text_command(&s) else {
            break;
        };
        let rest = &s[at + name_len..];
        let trimmed = rest.trim_start();
        let skipped = rest.len() - trimmed.len();
        let replacement = match braced_group(trimmed) {
            Some(group) => {
                let inner = &group[1..group.len() - 1];
                let consumed = at + name_len + skipped + group.len();
                format!("{} {} {}", &s[..at], inner, &s[consumed..])
            }
            // An unclosed `\text{`: drop the command name and keep the rest as is.
            None => format!("{} {}", &s[..at], rest),
        };
        s = replacement;
    }
    s
}

fn find_text_command(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let name_end = b[i + 1..]
                .iter()
                .position(|c| !c.is_ascii_alphabetic())
                .map_or(b.len(), |p| i + 1 + p);
            if name_end == i + 1 {
                i += 2; // a control symbol such as `\\` or `\{`
                continue;
            }
            if TEXT_COMMANDS.contains(&&s[i + 1..name_end]) {
                return Some((i, name_end - i));
            }
            i = name_end;
        } else {
            i += 1;
        }
    }
    None
}

/// Step 4 of [`normalize_answer`]: one pass over control sequences and the plain characters
/// that carry no value.
fn strip_commands(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            let name_end = b[i + 1..]
                .iter()
                .position(|c| !c.is_ascii_alphabetic())
                .map_or(b.len(), |p| i + 1 + p);
            if name_end > i + 1 {
                let name = &s[i + 1..name_end];
                i = name_end;
                match name {
                    "left" | "right" | "bigl" | "bigr" | "Bigl" | "Bigr" | "big" | "Big" => {
                        if b.get(i) == Some(&b'.') {
                            i += 1;
                        }
                    }
                    "displaystyle" | "circ" | "degree" | "limits" => {}
                    "quad" | "qquad" => out.push(' '),
                    "dfrac" | "tfrac" => out.push_str("\\frac"),
                    "dbinom" | "tbinom" => out.push_str("\\binom"),
                    _ => {
                        out.push('\\');
                        out.push_str(name);
                    }
                }
                continue;
            }
            // A control symbol: `\$`, `\%`, spacing, math delimiters go; `\{`, `\\`, … stay.
            match b.get(i + 1) {
                Some(b'$' | b'%' | b'!' | b'(' | b')' | b'[' | b']') => i += 2,
                Some(b',' | b';' | b':' | b' ') => {
                    out.push(' ');
                    i += 2;
                }
                Some(_) => {
                    let ch_len = s[i + 1..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&s[i..i + 1 + ch_len]);
                    i += 1 + ch_len;
                }
                None => i += 1,
            }
            continue;
        }
        match c {
            b'$' | b'%' => i += 1,
            b'~' => {
                out.push(' ');
                i += 1;
            }
            _ => {
                let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    out
}

const UNIT_WORDS: &[&str] = &[
    "mm",
    "cm",
    "m",
    "km",
    "meter",
    "meters",
    "metre",
    "metres",
    "centimeter",
    "centimeters",
    "millimeter",
    "millimeters",
    "kilometer",
    "kilometers",
    "inch",
    "inches",
    "ft",
    "foot",
    "feet",
    "yd",
    "yard",
    "yards",
    "mi",
    "mile",
    "miles",
    "mph",
    "kph",
    "g",
    "kg",
    "gram",
    "grams",
    "kilogram",
    "kilograms",
    "mg",
    "lb",
    "lbs",
    "pound",
    "pounds",
    "oz",
    "ounce",
    "ounces",
    "ton",
    "tons",
    "ml",
    "liter",
    "liters",
    "litre",
    "litres",
    "gallon",
    "gallons",
    "sec",
    "secs",
    "second",
    "seconds",
    "min",
    "mins",
    "minute",
    "minutes",
    "hr",
    "hrs",
    "hour",
    "hours",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "dollar",
    "dollars",
    "cent",
    "cents",
    "euro",
    "euros",
    "usd",
    "degree",
    "degrees",
    "percent",
    "unit",
    "units",
    "square",
    "sq",
    "cubic",
    "per",
    "radians",
];

/// A final `\text{…}` / `\mbox{…}` of words after a value is a unit, whatever the words
/// (`12 \text{ ways}`, `5.4 \text{ cents}`, `864 \mbox{ inches}^2`).
static TRAILING_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?s)^(.*?[0-9}\)\]])\s*\\(?:text|textrm|mbox)\s*\{[^{}\\]*[A-Za-z][^{}\\]*\}(?:\s*\^\s*\{?[23]\}?)?\s*\.?$",
    )
    .expect("static regex is valid")
});

static UNIT_EXPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s*\^\s*\{?\s*[23]\s*\}?\s*$").expect("static regex is valid"));

/// Step 5 of [`normalize_answer`]: drops the run of unit words ending the answer ("25 square
/// units", "15 cm^2") when a value precedes it.
fn strip_units(s: &str) -> String {
    let s = s.trim_end();
    let mut keep = s.len();
    let mut rest = s;
    loop {
        let body = match UNIT_EXPONENT.find(rest) {
            Some(m) => &rest[..m.start()],
            None => rest,
        }
        .trim_end();
        let word_start = body
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_alphabetic())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &body[word_start..];
        let before = &body[..word_start];
        // Only a whole word after whitespace, so `\pi`, `2m` and `\cdot m` keep their letters.
        if word.is_empty()
            || !UNIT_WORDS.iter().any(|u| u.eq_ignore_ascii_case(word))
            || !before.ends_with(char::is_whitespace)
        {
            break;
        }
        rest = before.trim_end();
        // Only when a value (a digit or a closing bracket) precedes the run, so a lone "feet"
        // or "per second" stays an answer.
        if rest.ends_with(|c: char| c.is_ascii_digit() || matches!(c, '}' | ')' | ']')) {
            keep = rest.len();
        }
    }
    s[..keep].to_string()
}

/// Step 6: removes whitespace, keeping one space where a control word meets a letter.
fn collapse_whitespace(s: String) -> String {
    if !s.contains(char::is_whitespace) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut in_control_word = false;
    let mut pending_space = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && in_control_word && c.is_ascii_alphabetic() {
            out.push(' ');
        }
        pending_space = false;
        if c == '\\' {
            out.push(c);
            match chars.peek() {
                Some(n) if n.is_ascii_alphabetic() => in_control_word = true,
                Some(&n) => {
                    // A control symbol takes exactly one character, even a space or a letter-less
                    // one; it never starts a control word.
                    out.push(n);
                    chars.next();
                    in_control_word = false;
                }
                None => in_control_word = false,
            }
            continue;
        }
        if !(in_control_word && c.is_ascii_alphabetic()) {
            in_control_word = false;
        }
        out.push(c);
    }
    out
}

/// Step 7: braces single-token arguments of `\frac`, `\binom`, `\sqrt`, `^`, `_`, recursively.
fn brace_arguments(s: &str, depth: usize) -> String {
    if depth > 32 {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let (n_args, consumed) = if b[i] == b'^' || b[i] == b'_' {
            (1, 1)
        } else if b[i] == b'\\' {
            let name_end = b[i + 1..]
                .iter()
                .position(|c| !c.is_ascii_alphabetic())
                .map_or(b.len(), |p| i + 1 + p);
            match &s[i + 1..name_end] {
                "frac" | "binom" => (2, name_end - i),
                "sqrt" => (1, name_end - i),
                "" => (0, 1 + s[i + 1..].chars().next().map_or(0, char::len_utf8)),
                _ => (0, name_end - i),
            }
        } else {
            (0, s[i..].chars().next().map_or(1, char::len_utf8))
        };
        out.push_str(&s[i..i + consumed]);
        i += consumed;
        if n_args == 0 {
            continue;
        }
        if &s[i - consumed..i] == "\\sqrt" && b.get(i) == Some(&b'[') {
            if let Some(close) = s[i..].find(']') {
                out.push_str(&s[i..=i + close]);
                i += close + 1;
            }
        }
        for _ in 0..n_args {
            while b.get(i) == Some(&b' ') {
                i += 1;
            }
            let Some(&c) = b.get(i) else { break };
            let arg_len = if c == b'{' {
                match braced_group(&s[i..]) {
                    Some(g) => {
                        out.push('{');
                        out.push_str(&brace_arguments(&g[1..g.len() - 1], depth + 1));
                        out.push('}');
                        i += g.len();
                        continue;
                    }
                    None => break,
                }
            } else if c == b'\\' {
                let name_len = b[i + 1..]
                    .iter()
                    .position(|c| !c.is_ascii_alphabetic())
                    .unwrap_or(b.len() - i - 1);
                if name_len > 0 {
                    1 + name_len
                } else {
                    1 + s[i + 1..].chars().next().map_or(0, char::len_utf8)
                }
            } else {
                s[i..].chars().next().map_or(1, char::len_utf8)
            };
            out.push('{');
            out.push_str(&s[i..i + arg_len]);
            out.push('}');
            i += arg_len;
        }
    }
    out
}

static VARIABLE_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?-u:(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{[A-Za-z0-9]+\})?(?:=|\\in(?:\s|\b|$)))")
        .expect("static regex is valid")
});
static THOUSANDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$").expect("static regex is valid")
});
static DECIMAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?$").expect("static regex is valid")
});

/// Steps 8–11 of [`normalize_answer`].
fn tidy(mut s: String) -> String {
    while s.ends_with('.') && !s.ends_with("\\.") {
        s.pop();
    }
    if let Some(rest) = s.strip_prefix('+') {
        s = rest.to_string();
    }
    if let Some(m) = VARIABLE_PREFIX.find(&s) {
        let rest = s[m.end()..].trim_start();
        if !rest.is_empty() && !rest.contains('=') {
            s = rest.to_string();
        }
    }
    while s.starts_with('{') && braced_group(&s).is_some_and(|g| g.len() == s.len()) && s.len() > 2
    {
        s = s[1..s.len() - 1].to_string();
    }
    if s.contains("{,}") {
        s = s.replace("{,}", ",");
    }
    if THOUSANDS.is_match(&s) {
        s.retain(|c| c != ',');
    }
    if let Some(caps) = DECIMAL.captures(&s) {
        let sign = caps.get(1).map_or("", |m| m.as_str());
        let int = caps
            .get(2)
            .map_or("", |m| m.as_str())
            .trim_start_matches('0');
        let frac = caps.get(3).map_or("", |m| m.as_str()).trim_end_matches('0');
        let had_digits = s.bytes().any(|c| c.is_ascii_digit());
        if had_digits {
            let int = if int.is_empty() { "0" } else { int };
            let body = if frac.is_empty() {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            };
            let sign = if body == "0" || sign == "+" { "" } else { sign };
            s = format!("{sign}{body}");
        }
    }
    let b = s.as_bytes();
    if b.len() == 3 && b[0] == b'(' && b[1].is_ascii_uppercase() && b[2] == b')' {
        s = s[1..2].to_string();
    }
    s
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
    fn whitespace_keeps_control_words_apart() {
        assert_eq!(collapse_whitespace("\\cot x".into()), "\\cot x");
        assert_eq!(
            collapse_whitespace("3 \\sqrt {5} + 1".into()),
            "3\\sqrt{5}+1"
        );
        assert_eq!(collapse_whitespace("a \\\\ b".into()), "a\\\\b");
    }

    #[test]
    fn arguments_get_braces() {
        assert_eq!(brace_arguments("\\frac34", 0), "\\frac{3}{4}");
        assert_eq!(brace_arguments("\\frac9{19}", 0), "\\frac{9}{19}");
        assert_eq!(brace_arguments("\\frac{270}7", 0), "\\frac{270}{7}");
        assert_eq!(brace_arguments("11\\sqrt2", 0), "11\\sqrt{2}");
        assert_eq!(brace_arguments("\\sqrt[3]2", 0), "\\sqrt[3]{2}");
        assert_eq!(brace_arguments("\\frac\\pi2", 0), "\\frac{\\pi}{2}");
        assert_eq!(brace_arguments("x^2+y_{1}", 0), "x^{2}+y_{1}");
        assert_eq!(
            brace_arguments("\\frac{\\sqrt3}{2}", 0),
            "\\frac{\\sqrt{3}}{2}"
        );
        assert_eq!(brace_arguments("x^", 0), "x^");
    }

    #[test]
    fn units_only_after_values() {
        assert_eq!(strip_units("5.4  cents "), "5.4");
        assert_eq!(strip_units("864  inches ^2"), "864");
        assert_eq!(strip_units("25 square units"), "25");
        assert_eq!(strip_units("feet"), "feet");
        assert_eq!(strip_units("3\\cdot m"), "3\\cdot m");
        assert_eq!(strip_units("2m"), "2m");
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
