//! The corpus record: one row per teacher sample, its arrow schema, and conversions between
//! `Record`s and arrow `RecordBatch`es.
//!
//! The curation passes mostly work on batches column by column (copying 6 KB traces into
//! `String`s per row would dominate their cost); `Record` is the convenient form for the
//! teacher stage, tests and small corpora.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Int32Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, ListArray, RecordBatch, StringArray,
    StructArray, UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Column names, written once.
pub mod col {
    pub const ID: &str = "id";
    pub const PROBLEM_ID: &str = "problem_id";
    pub const SAMPLE_INDEX: &str = "sample_index";
    pub const SOURCE: &str = "source";
    pub const PROMPT: &str = "prompt";
    pub const MESSAGES: &str = "messages";
    pub const REASONING: &str = "reasoning";
    pub const COMPLETION: &str = "completion";
    pub const FINAL_ANSWER: &str = "final_answer";
    pub const REFERENCE_ANSWER: &str = "reference_answer";
    pub const CORRECT: &str = "correct";
    pub const FINISH_REASON: &str = "finish_reason";
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "completion_tokens";
    pub const TEACHER: &str = "teacher";
    pub const TEMPERATURE: &str = "temperature";
    pub const TOP_P: &str = "top_p";
    pub const SEED: &str = "seed";
    /// Added to the side files of dropped rows.
    pub const DROP_REASON: &str = "drop_reason";
    /// Free-text detail of a drop (which eval file, which problem it duplicates, …).
    pub const DROP_DETAIL: &str = "drop_detail";
}

/// One turn of a conversation, in the TRL / open-r1 `messages` convention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why the teacher stopped writing a sample: the `finish_reason` column's values. Only `stop`
/// is a finished answer; `length` is cut at the token limit, and the rest (an endpoint's
/// content filter, an aborted request, a tool call, the server running out of resources, or a
/// value this version does not know) are not clean samples either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended the answer itself (EOS or a stop string).
    Stop,
    /// The token limit cut the answer.
    Length,
    /// The endpoint's content filter withheld or cut the answer (OpenAI, DeepSeek).
    ContentFilter,
    /// The model called a tool instead of answering (`tool_calls`, or the older `function_call`).
    ToolCalls,
    /// The server aborted the request (vLLM, SGLang).
    Abort,
    /// The server ran out of resources mid-answer (DeepSeek's `insufficient_system_resource`).
    InsufficientSystemResource,
    /// Missing, or a value not listed here.
    Unknown,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Abort => "abort",
            FinishReason::InsufficientSystemResource => "insufficient_system_resource",
            FinishReason::Unknown => "unknown",
        }
    }

    /// The reason an endpoint or a corpus row names; anything unlisted is `Unknown`.
    pub fn parse(value: &str) -> Self {
        match value {
            "stop" | "eos_token" | "stop_sequence" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "abort" => FinishReason::Abort,
            "insufficient_system_resource" => FinishReason::InsufficientSystemResource,
            _ => FinishReason::Unknown,
        }
    }

    /// Whether the model finished the answer itself.
    pub fn is_finished(self) -> bool {
        self == FinishReason::Stop
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One teacher sample. Field meanings are in DESIGN.md's record table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub problem_id: String,
    pub sample_index: i32,
    pub source: String,
    pub prompt: String,
    pub messages: Vec<Message>,
    pub reasoning: String,
    pub completion: String,
    pub final_answer: Option<String>,
    pub reference_answer: Option<String>,
    pub correct: Option<bool>,
    pub finish_reason: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub teacher: String,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Record {
    /// A finished (`stop`) sample of `problem_id` written with R1's sampling settings (T=0.6,
    /// top-p 0.95), not verified yet: id, messages and text columns filled consistently; callers
    /// set whatever else they need (`source`, `teacher`, `correct`, …).
    pub fn sample(
        problem_id: &str,
        sample_index: i32,
        prompt: &str,
        reasoning: &str,
        completion: &str,
    ) -> Self {
        Self {
            id: record_id(problem_id, sample_index),
            problem_id: problem_id.to_string(),
            sample_index,
            source: String::new(),
            prompt: prompt.to_string(),
            messages: conversation(prompt, reasoning, completion),
            reasoning: reasoning.to_string(),
            completion: completion.to_string(),
            final_answer: None,
            reference_answer: None,
            correct: None,
            finish_reason: FinishReason::Stop.as_str().to_string(),
            prompt_tokens: 0,
            completion_tokens: 0,
            teacher: String::new(),
            temperature: 0.6,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// `{problem_id}/{sample_index}`: the unique row id.
pub fn record_id(problem_id: &str, sample_index: i32) -> String {
    format!("{problem_id}/{sample_index}")
}

/// The assistant turn as R1-style models emit it and trainers consume it.
pub fn assistant_content(reasoning: &str, completion: &str) -> String {
    format!("<think>\n{reasoning}\n</think>\n\n{completion}")
}

/// The two-turn conversation (no system prompt, R1 convention) for `messages`.
pub fn conversation(prompt: &str, reasoning: &str, completion: &str) -> Vec<Message> {
    vec![
        Message::new("user", prompt),
        Message::new("assistant", assistant_content(reasoning, completion)),
    ]
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

/// `list<struct<role: utf8, content: utf8>>`, the type of `messages`.
pub fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        true,
    )))
}

/// The corpus schema (column order as in DESIGN.md).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::ID, DataType::Utf8, false),
                Field::new(col::PROBLEM_ID, DataType::Utf8, false),
                Field::new(col::SAMPLE_INDEX, DataType::Int32, false),
                Field::new(col::SOURCE, DataType::Utf8, false),
                Field::new(col::PROMPT, DataType::Utf8, false),
                Field::new(col::MESSAGES, messages_type(), false),
                Field::new(col::REASONING, DataType::Utf8, false),
                Field::new(col::COMPLETION, DataType::Utf8, false),
                Field::new(col::FINAL_ANSWER, DataType::Utf8, true),
                Field::new(col::REFERENCE_ANSWER, DataType::Utf8, true),
                Field::new(col::CORRECT, DataType::Boolean, true),
                Field::new(col::FINISH_REASON, DataType::Utf8, false),
                Field::new(col::PROMPT_TOKENS, DataType::Int32, false),
                Field::new(col::COMPLETION_TOKENS, DataType::Int32, false),
                Field::new(col::TEACHER, DataType::Utf8, false),
                Field::new(col::TEMPERATURE, DataType::Float32, false),
                Field::new(col::TOP_P, DataType::Float32, false),
                Field::new(col::SEED, DataType::UInt64, false),
            ]))
        })
        .clone()
}

/// Whether two types have the same shape, ignoring list items' names, the order of struct
/// fields and nullability (files written by pyarrow or `datasets` name list items `element`,
/// mark everything nullable, and keep a dataset's own key order: open-r1's `messages` items are
/// `{content, role}`). Readers take struct fields by name.
pub fn same_shape(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => same_shape(x.data_type(), y.data_type()),
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter().all(|f| {
                    y.iter()
                        .any(|g| f.name() == g.name() && same_shape(f.data_type(), g.data_type()))
                })
        }
        _ => a == b,
    }
}

/// Column names as error messages list them: `` `a`, `b` ``, or `none`.
pub fn listed_columns<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    let listed: Vec<String> = names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    if listed.is_empty() {
        "none".to_string()
    } else {
        listed.join(", ")
    }
}

/// Checks that `schema` (read from `path`) has every column in `required` with the corpus type.
/// Names every missing column at once and lists those present.
pub fn check_columns(path: &Path, schema: &Schema, required: &[&str]) -> Result<()> {
    let corpus = self::schema();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|name| schema.field_with_name(name).is_err())
        .collect();
    if !missing.is_empty() {
        let present = listed_columns(schema.fields().iter().map(|f| f.name()));
        return Err(if missing.len() == 1 {
            Error::MissingColumn {
                path: path.to_path_buf(),
                column: missing[0].to_string(),
                present,
            }
        } else {
            Error::MissingColumns {
                path: path.to_path_buf(),
                missing: listed_columns(&missing),
                present,
            }
        });
    }
    for name in required {
        let (Ok(found), Ok(expected)) =
            (schema.field_with_name(name), corpus.field_with_name(name))
        else {
            continue;
        };
        if !same_shape(found.data_type(), expected.data_type()) {
            return Err(Error::ColumnType {
                path: path.to_path_buf(),
                column: name.to_string(),
                found: found.data_type().to_string(),
                expected: expected.data_type().to_string(),
            });
        }
    }
    Ok(())
}

/// Every corpus column name, in schema order.
pub fn all_columns() -> Vec<&'static str> {
    const NAMES: [&str; 18] = [
        col::ID,
        col::PROBLEM_ID,
        col::SAMPLE_INDEX,
        col::SOURCE,
        col::PROMPT,
        col::MESSAGES,
        col::REASONING,
        col::COMPLETION,
        col::FINAL_ANSWER,
        col::REFERENCE_ANSWER,
        col::CORRECT,
        col::FINISH_REASON,
        col::PROMPT_TOKENS,
        col::COMPLETION_TOKENS,
        col::TEACHER,
        col::TEMPERATURE,
        col::TOP_P,
        col::SEED,
    ];
    NAMES.to_vec()
}

/// Builds a `messages` array from per-row conversations.
pub fn messages_array<'a>(rows: impl IntoIterator<Item = &'a [Message]>) -> Result<ListArray> {
    let mut offsets = vec![0i32];
    let mut roles = StringBuilder::new();
    let mut contents = StringBuilder::new();
    let mut total = 0usize;
    for conv in rows {
        for m in conv {
            roles.append_value(&m.role);
            contents.append_value(&m.content);
        }
        total += conv.len();
        let end = i32::try_from(total)
            .map_err(|_| Error::Invalid("too many messages in one batch".into()))?;
        offsets.push(end);
    }
    let structs = StructArray::try_new(
        message_fields(),
        vec![
            Arc::new(roles.finish()) as ArrayRef,
            Arc::new(contents.finish()) as ArrayRef,
        ],
        None,
    )?;
    let DataType::List(item) = messages_type() else {
        unreachable!("messages_type is a list")
    };
    Ok(ListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(structs),
        None,
    )?)
}

/// Converts records into one batch in the corpus schema.
pub fn records_to_batch(records: &[Record]) -> Result<RecordBatch> {
    let n = records.len();
    let strings = |get: &dyn Fn(&Record) -> &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, records.iter().map(|r| get(r).len()).sum());
        for r in records {
            b.append_value(get(r));
        }
        Arc::new(b.finish())
    };
    let optional = |get: &dyn Fn(&Record) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in records {
            b.append_option(get(r));
        }
        Arc::new(b.finish())
    };
    let ints = |get: &dyn Fn(&Record) -> i32| -> ArrayRef {
        let mut b = Int32Builder::with_capacity(n);
        for r in records {
            b.append_value(get(r));
        }
        Arc::new(b.finish())
    };
    let floats = |get: &dyn Fn(&Record) -> f32| -> ArrayRef {
        let mut b = Float32Builder::with_capacity(n);
        for r in records {
            b.append_value(get(r));
        }
        Arc::new(b.finish())
    };
    let mut correct = BooleanBuilder::with_capacity(n);
    let mut seed = UInt64Builder::with_capacity(n);
    for r in records {
        correct.append_option(r.correct);
        seed.append_value(r.seed);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.id),
        strings(&|r| &r.problem_id),
        ints(&|r| r.sample_index),
        strings(&|r| &r.source),
        strings(&|r| &r.prompt),
        Arc::new(messages_array(
            records.iter().map(|r| r.messages.as_slice()),
        )?),
        strings(&|r| &r.reasoning),
        strings(&|r| &r.completion),
        optional(&|r| r.final_answer.as_deref()),
        optional(&|r| r.reference_answer.as_deref()),
        Arc::new(correct.finish()),
        strings(&|r| &r.finish_reason),
        ints(&|r| r.prompt_tokens),
        ints(&|r| r.completion_tokens),
        strings(&|r| &r.teacher),
        floats(&|r| r.temperature),
        floats(&|r| r.top_p),
        Arc::new(seed.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Typed access to a batch's columns by name, with errors that name the column.
pub struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        Columns { batch }
    }

    fn column<T: 'static>(&self, name: &str) -> Result<&'a T> {
        let array = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| Error::Invalid(format!("batch has no column `{name}`")))?;
        array.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::Invalid(format!(
                "column `{name}` has type `{}`, not the corpus type",
                array.data_type()
            ))
        })
    }

    pub fn str(&self, name: &str) -> Result<&'a StringArray> {
        self.column(name)
    }
    pub fn i32(&self, name: &str) -> Result<&'a Int32Array> {
        self.column(name)
    }
    pub fn f32(&self, name: &str) -> Result<&'a Float32Array> {
        self.column(name)
    }
    pub fn u64(&self, name: &str) -> Result<&'a UInt64Array> {
        self.column(name)
    }
    pub fn bool(&self, name: &str) -> Result<&'a BooleanArray> {
        self.column(name)
    }
    pub fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.column(name)
    }
}

/// The conversation stored in row `row` of a `messages` column.
pub fn messages_at(list: &ListArray, row: usize) -> Result<Vec<Message>> {
    if list.is_null(row) {
        return Ok(Vec::new());
    }
    let value = list.value(row);
    let structs = value
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| Error::Invalid("`messages` items are not structs".into()))?;
    let field = |name: &str| -> Result<&StringArray> {
        structs
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::Invalid(format!("`messages` items have no utf8 `{name}`")))
    };
    let (roles, contents) = (field("role")?, field("content")?);
    Ok((0..structs.len())
        .map(|i| Message::new(roles.value(i), contents.value(i)))
        .collect())
}

/// Converts a batch in the corpus schema (any column order, extra columns ignored) to records.
pub fn records_from_batch(batch: &RecordBatch) -> Result<Vec<Record>> {
    let c = Columns::new(batch);
    let (id, problem_id, sample_index) = (
        c.str(col::ID)?,
        c.str(col::PROBLEM_ID)?,
        c.i32(col::SAMPLE_INDEX)?,
    );
    let (source, prompt, messages) = (
        c.str(col::SOURCE)?,
        c.str(col::PROMPT)?,
        c.list(col::MESSAGES)?,
    );
    let (reasoning, completion) = (c.str(col::REASONING)?, c.str(col::COMPLETION)?);
    let (final_answer, reference_answer, correct) = (
        c.str(col::FINAL_ANSWER)?,
        c.str(col::REFERENCE_ANSWER)?,
        c.bool(col::CORRECT)?,
    );
    let finish_reason = c.str(col::FINISH_REASON)?;
    let (prompt_tokens, completion_tokens) =
        (c.i32(col::PROMPT_TOKENS)?, c.i32(col::COMPLETION_TOKENS)?);
    let (teacher, temperature, top_p, seed) = (
        c.str(col::TEACHER)?,
        c.f32(col::TEMPERATURE)?,
        c.f32(col::TOP_P)?,
        c.u64(col::SEED)?,
    );
    let opt_str = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    (0..batch.num_rows())
        .map(|i| {
            Ok(Record {
                id: id.value(i).to_string(),
                problem_id: problem_id.value(i).to_string(),
                sample_index: sample_index.value(i),
                source: source.value(i).to_string(),
                prompt: prompt.value(i).to_string(),
                messages: messages_at(messages, i)?,
                reasoning: reasoning.value(i).to_string(),
                completion: completion.value(i).to_string(),
                final_answer: opt_str(final_answer, i),
                reference_answer: opt_str(reference_answer, i),
                correct: (!correct.is_null(i)).then(|| correct.value(i)),
                finish_reason: finish_reason.value(i).to_string(),
                prompt_tokens: prompt_tokens.value(i),
                completion_tokens: completion_tokens.value(i),
                teacher: teacher.value(i).to_string(),
                temperature: temperature.value(i),
                top_p: top_p.value(i),
                seed: seed.value(i),
            })
        })
        .collect()
}
