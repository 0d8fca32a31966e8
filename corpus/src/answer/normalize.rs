//! Answer normalization: rewriting an answer into a canonical string so that equal answers
//! written differently (`\dfrac34`, `$0.75$`, `\frac{3}{4}\text{ cups}`) compare equal as strings
//! or parse as the same value.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::{braced_group, last_boxed, split_top_level, Boxed};

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
pub(super) fn tidy(mut s: String) -> String {
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
}
