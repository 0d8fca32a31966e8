//! Chat templates: renders a checkpoint's Jinja chat template the way `transformers`'
//! `apply_chat_template` does (minijinja configured like HF's Jinja2 sandbox), plus built-in
//! fallback templates (ChatML, Llama-3, DeepSeek-R1) for checkpoints that ship none.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One turn of a conversation, as the `messages` list of the TRL / open-r1 convention holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The name the template is registered under; it shows up in minijinja's error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// Marks errors raised by the template's own `raise_exception(...)`, so that they surface as
/// exactly the template author's message rather than minijinja's wrapping of it.
const RAISE_MARKER: &str = "\u{0}raise_exception\u{0}";

/// A compiled chat template and the special tokens it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error comes back as [`Error::Template`] naming the line.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let env = environment(without_generation_tags(source)).map_err(template_error)?;
        Ok(Self {
            source: source.to_string(),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
            env,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages` like `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, serde_json::Value::Null)
    }

    /// Like [`render`](Self::render), with extra context variables (an object, or null), as
    /// keyword arguments to `apply_chat_template` would pass them (`tools`, custom flags, ...).
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: serde_json::Value,
    ) -> Result<String> {
        // HF always defines these; templates test `tools is not none` and would otherwise see
        // an undefined value where transformers gives them None.
        let mut context = serde_json::Map::new();
        context.insert("tools".into(), serde_json::Value::Null);
        context.insert("documents".into(), serde_json::Value::Null);
        if let Some(token) = &self.bos_token {
            context.insert("bos_token".into(), token.clone().into());
        }
        if let Some(token) = &self.eos_token {
            context.insert("eos_token".into(), token.clone().into());
        }
        match extra {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => context.extend(map),
            other => {
                return Err(Error::Template(format!(
                    "extra context must be a JSON object, got `{other}`"
                )))
            }
        }
        let messages = serde_json::to_value(messages)
            .map_err(|e| Error::Template(format!("cannot serialize messages: {e}")))?;
        context.insert("messages".into(), messages);
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());

        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(json_to_value(serde_json::Value::Object(context)))
            .map_err(template_error)
    }

    /// The text a model continues to write the next assistant turn: the generation prompt, then
    /// the part of `prefill` the template has not already written. DeepSeek-R1-Distill's
    /// templates end the generation prompt with `<think>\n` themselves; appending the default
    /// prefill again would show the model `<think>\n<think>\n`, which it never saw in training.
    pub fn generation_prompt(&self, messages: &[Message], prefill: &str) -> Result<String> {
        let prompt = self.render(messages, true)?;
        let written = written_by_prompt(&prompt, prefill);
        Ok(prompt + &prefill[written..])
    }

    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as Qwen2 and SmolLM2 use.
    pub fn chatml() -> Self {
        Self::builtin_template(CHATML, None, Some("<|im_end|>"))
    }

    /// Llama-3 instruct headers (`<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`).
    pub fn llama3() -> Self {
        Self::builtin_template(LLAMA3, Some("<|begin_of_text|>"), Some("<|eot_id|>"))
    }

    /// DeepSeek-R1-Distill's conversation format: the system prompt right after BOS,
    /// `<｜User｜>` / `<｜Assistant｜>` markers, reasoning (everything up to `</think>`) dropped
    /// from earlier assistant turns, and a generation prompt that opens a `<think>` block.
    pub fn deepseek_r1() -> Self {
        Self::builtin_template(
            DEEPSEEK_R1,
            Some("<｜begin▁of▁sentence｜>"),
            Some("<｜end▁of▁sentence｜>"),
        )
    }

    /// A built-in template by name: `chatml`, `llama3` or `deepseek-r1`.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "chatml" => Some(Self::chatml()),
            "llama3" | "llama-3" => Some(Self::llama3()),
            "deepseek-r1" | "deepseek_r1" => Some(Self::deepseek_r1()),
            _ => None,
        }
    }

    fn builtin_template(source: &'static str, bos: Option<&str>, eos: Option<&str>) -> Self {
        match Self::new(source, bos, eos) {
            Ok(template) => template,
            // The built-in sources are constants covered by tests; failing here is a bug in
            // this file, not something a user can cause.
            Err(e) => panic!("built-in chat template does not compile: {e}"),
        }
    }
}

/// How many bytes at the start of `turn` (a prefill, or a whole assistant turn) the generation
/// prompt `prompt` already ends with: the longest start of `turn` that `prompt` ends with. An
/// overlap of whitespace alone does not count, so a generation prompt ending in a newline does not
/// swallow a turn that starts with one; only text such as an opened `<think>` does.
///
/// Every place that builds a prompt or a training document asks this one question, so generation,
/// evaluation, serving and training agree on where the template's own prefill ends.
pub fn written_by_prompt(prompt: &str, turn: &str) -> usize {
    let longest = prompt.len().min(turn.len());
    turn.char_indices()
        .map(|(at, c)| at + c.len_utf8())
        .take_while(|&end| end <= longest)
        .filter(|&end| prompt.ends_with(&turn[..end]) && !turn[..end].trim().is_empty())
        .last()
        .unwrap_or(0)
}

const CHATML: &str = "\
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}";

const LLAMA3: &str = "\
{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}";

const DEEPSEEK_R1: &str = "\
{%- set ns = namespace(system='') %}
{%- for message in messages if message['role'] == 'system' %}
{%- set ns.system = message['content'] %}
{%- endfor %}
{{- bos_token ~ ns.system }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}
{{- '<｜User｜>' + message['content'] }}
{%- elif message['role'] == 'assistant' %}
{%- set answer = message['content'] %}
{%- if '</think>' in answer %}
{%- set answer = answer.split('</think>')[-1] %}
{%- endif %}
{{- '<｜Assistant｜>' + answer + '<｜end▁of▁sentence｜>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<｜Assistant｜><think>\\n' }}
{%- endif %}";

/// transformers' `{% generation %}` … `{% endgeneration %}` (the assistant-mask extension that
/// TRL's assistant-only loss reads) renders its body unchanged, as `{% if true %}` … `{% endif %}`
/// does: minijinja, which has no such tag, compiles that in its place (whitespace control kept).
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(close) = tag.find("%}") else {
            rest = tag;
            break;
        };
        let inner = &tag[2..close];
        let (lead, body) = inner.strip_prefix('-').map_or(("", inner), |b| ("-", b));
        let (body, trail) = body.strip_suffix('-').map_or((body, ""), |b| (b, "-"));
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// An environment configured like transformers' `ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True, extensions=[loopcontrols])` with HF's extra globals and filters.
fn environment(source: String) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

/// Prints values as Jinja2 does under Python: `True`/`False`/`None`, containers as their
/// Python `repr`; minijinja's defaults would print `true`, an empty string and JSON.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            let mut text = String::new();
            python_repr(value, &mut text)?;
            out.write_str(&text).map_err(|e| {
                minijinja::Error::new(ErrorKind::WriteFailure, "cannot write").with_source(e)
            })
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr` of a template value.
fn python_repr(value: &Value, out: &mut String) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            // Python prefers single quotes unless the text holds one and no double quote.
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&key, out)?;
                out.push_str(": ");
                python_repr(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Converts JSON into template values (minijinja's serde bridge is an optional feature).
fn json_to_value(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(items) => items.into_iter().map(json_to_value).collect(),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.into_iter().map(|(k, v)| (k, json_to_value(v))))
        }
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISE_MARKER}{message}"),
    ))
}

fn template_error(error: minijinja::Error) -> Error {
    // Errors raised inside a call may be wrapped; the template author's message wins.
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = current {
        if let Some(mj) = e.downcast_ref::<minijinja::Error>() {
            if let Some(message) = mj.detail().and_then(|d| d.strip_prefix(RAISE_MARKER)) {
                return Error::Template(message.to_string());
            }
        }
        current = e.source();
    }
    let mut message = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(line) = error.line() {
        let _ = write!(message, " (line {line})");
    }
    Error::Template(message)
}

/// `strftime_now(format)`: the current time formatted with the C `strftime` directives chat
/// templates use (Llama-3.1 puts "Today Date: 26 Jul 2024" in its system prompt). transformers
/// uses local time; this uses UTC, which avoids a time-zone database and is what servers run.
fn strftime_now(format: String) -> Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a UTC Unix timestamp with the common `strftime` directives.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('-') => match chars.next() {
                // glibc's "no padding" flag, which Python's strftime passes through.
                Some('d') => write!(out, "{day}"),
                Some('m') => write!(out, "{month}"),
                Some('H') => write!(out, "{hour}"),
                Some(other) => write!(out, "%-{other}"),
                None => write!(out, "%-"),
            },
            Some('b') | Some('h') => write!(out, "{}", &month_name[..3]),
            Some('B') => write!(out, "{month_name}"),
            Some('a') => write!(out, "{}", &weekday_name[..3]),
            Some('A') => write!(out, "{weekday_name}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('j') => write!(out, "{day_of_year:03}"),
            Some('F') => write!(out, "{year}-{month:02}-{day:02}"),
            Some('T') => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// HF's `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`. minijinja's own filter HTML-escapes `<`, `>`,
/// `&` and `'`, which would change every tool schema a template prints.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, "separators must be strings")
                })?;
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "separators must be a pair",
                    ))
                }
            }
        }
        // Python's defaults: ", " without indent, "," with it (the newline separates items).
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, value: &Value, level: usize, out: &mut String) -> Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                // minijinja prints integers as digits and floats always with a `.`, an
                // exponent, `inf` or `NaN`, which is how the integer/float split is recovered.
                let text = value.to_string();
                if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    out.push_str(&text);
                } else {
                    out.push_str(&python_float_repr(f64::try_from(value.clone())?));
                }
            }
            ValueKind::String => self.write_str(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    match key.as_str() {
                        Some(s) => self.write_str(s, out),
                        // Python turns non-string keys into strings.
                        None => self.write_str(&key.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&value.get_item(key)?, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot serialize a {} to JSON", value.kind()),
                ))
            }
        }
        Ok(())
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in [-4, 16).
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %j", t),
            "2024-07-26 12:34:56 Friday 208"
        );
        assert_eq!(strftime("%B %-d, %y %I%p %%", t), "July 26, 24 12PM %");
        assert_eq!(strftime("%F", 0), "1970-01-01");
        assert_eq!(strftime("%F %a", 951_782_400), "2000-02-29 Tue");
    }

    #[test]
    fn python_float_repr_matches_python() {
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(0.1), "0.1");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(123456.5), "123456.5");
        assert_eq!(python_float_repr(-2.5e-7), "-2.5e-07");
    }

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(
            without_generation_tags(
                "a{%- generation -%} b {% endgeneration %}{% if x %}{%generation%}"
            ),
            "a{%- if true -%} b {% endif %}{% if x %}{% if true %}"
        );
        let marked = ChatTemplate::new(
            "{%- for m in messages %}{{- m['role'] + ':' }}\n{%- generation %}\n{{- m['content'] }}{%- endgeneration %}\n{%- endfor %}",
            None,
            None,
        )
        .unwrap();
        let messages = [Message::user("hi"), Message::assistant("yo")];
        assert_eq!(
            marked.render(&messages, false).unwrap(),
            "user:hiassistant:yo"
        );
    }
}
