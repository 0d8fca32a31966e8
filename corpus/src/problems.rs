//! Problem sources: jsonl and parquet files (or folders of them) mapped onto [`Problem`]s by a
//! column mapping, with presets for GSM8K and MATH / MATH-500 in both their GitHub jsonl and
//! Hugging Face hub parquet layouts.
//!
//! Column resolution (explicit `*_col` options always win, and must exist):
//!
//! | field | `gsm8k` | `math` | no preset |
//! |---|---|---|---|
//! | prompt | `question` | `problem` | `prompt` |
//! | reference | number after the last `#### ` of `answer`, commas removed | `answer` if the column exists, else the last `\boxed{}` of `solution` | `reference_answer` or `answer` if present |
//! | solution | `answer` | `solution` if present | `solution` if present |
//! | id | `{source}-{row}` | `unique_id` if present | `id` if present |
//!
//! Without a preset and without `prompt_col`, the preset is inferred from the columns: `question`
//! and `answer` mean GSM8K, `problem` means MATH. Rows are numbered from 0 across all files of a
//! source in order; generated ids are `{source}-{row}`, where the source is `source_name`, else
//! the (given or inferred) preset name, else the file (or folder) stem. The jsonl written by serializing
//! [`Problem`]s reads back unchanged.
//!
//! A corpus folder (the shards its `manifest.json` lists: a teacher run, an import, a split's
//! `eval` half) is a problem source too: each problem once, by `problem_id`, with its
//! `prompt` and `reference_answer` (to generate again with another teacher, or to compare on
//! the held-out problems of an imported corpus).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use crate::answer;
use crate::{Error, Result};

/// One problem to pose to a teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Unique within a source.
    pub id: String,
    /// Dataset or generator name.
    pub source: String,
    /// The problem as shown to the teacher.
    pub prompt: String,
    /// Ground truth, when the source has one.
    pub reference_answer: Option<String>,
    /// A worked solution, when the source has one.
    pub solution: Option<String>,
}

/// Known dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// GSM8K (`openai/gsm8k`): `question`, `answer` ending in `#### N`.
    Gsm8k,
    /// MATH and MATH-500 (`HuggingFaceH4/MATH-500`): `problem`, `solution`, `answer`,
    /// `unique_id`.
    Math,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Gsm8k => "gsm8k",
            Preset::Math => "math",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    /// `gsm8k`, `math`; also `math500` and `math-500`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gsm8k" => Ok(Preset::Gsm8k),
            "math" | "math500" | "math-500" => Ok(Preset::Math),
            _ => Err(Error::Invalid(format!(
                "Unknown problem preset `{s}` (expected `gsm8k` or `math`)"
            ))),
        }
    }
}

/// Where problems come from and how columns map onto [`Problem`] fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProblemSource {
    /// A `.jsonl` / `.json` / `.parquet` file, or a folder whose files of those kinds are read
    /// in name order.
    pub path: PathBuf,
    pub preset: Option<Preset>,
    pub prompt_col: Option<String>,
    pub answer_col: Option<String>,
    pub id_col: Option<String>,
    pub solution_col: Option<String>,
    /// The `source` of every problem; defaults to the preset name, else the file stem.
    pub source_name: Option<String>,
    /// Keep only the first `limit` problems.
    pub limit: Option<usize>,
}

/// Reads every problem of a source. Errors name the file, and the line or row at fault.
pub fn load_problems(src: &ProblemSource) -> Result<Vec<Problem>> {
    let files = input_files(&src.path)?;
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    let mut row = 0usize;
    for file in &files {
        if src.limit.is_some_and(|l| problems.len() >= l) {
            break;
        }
        let table = read_table(file, src)?;
        if table.rows.is_empty() {
            continue;
        }
        let columns = Columns::resolve(src, &table.columns, file)?;
        let source = source_name(src, columns.preset);
        for (i, values) in table.rows.iter().enumerate() {
            if src.limit.is_some_and(|l| problems.len() >= l) {
                break;
            }
            let problem =
                columns.problem(&table, values, &source, row, file, table.row_label(i))?;
            if !ids.insert(problem.id.clone()) {
                if columns.corpus {
                    continue;
                }
                return Err(Error::DuplicateId {
                    path: file.clone(),
                    id: problem.id,
                });
            }
            problems.push(problem);
            row += 1;
        }
    }
    if problems.is_empty() && src.limit != Some(0) {
        return Err(Error::NoProblems {
            path: src.path.clone(),
        });
    }
    Ok(problems)
}

/// `source_name`, else the (given or inferred) preset's name, else the file or folder stem.
fn source_name(src: &ProblemSource, preset: Option<Preset>) -> String {
    if let Some(name) = &src.source_name {
        return name.clone();
    }
    if let Some(preset) = preset {
        return preset.name().to_string();
    }
    src.path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "problems".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Jsonl,
    Parquet,
}

pub(crate) fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
        "parquet" => Some(Format::Parquet),
        _ => None,
    }
}

fn input_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    // A corpus folder (a teacher run, an import, a split's half): the shards its manifest
    // lists, not the JSON beside them.
    if let Some(manifest) = crate::shards::Manifest::read(path)? {
        return Ok(manifest.shards.iter().map(|s| path.join(&s.file)).collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        if p.is_file() && format_of(&p).is_some() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::NoProblems {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// The raw cells of one file: column names (as found in the file) and, per row, the cell of
/// every column that [`ProblemSource`] may ask for, as text (`None` for null or absent).
struct Table {
    columns: Vec<String>,
    /// Only the columns named in `wanted`, in that order.
    wanted: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    /// 1-based line numbers of jsonl rows, for error messages; empty for parquet.
    lines: Vec<usize>,
}

impl Table {
    fn row_label(&self, i: usize) -> RowLabel {
        match self.lines.get(i) {
            Some(&line) => RowLabel::Line(line),
            None => RowLabel::Row(i),
        }
    }

    fn cell<'a>(&self, values: &'a [Option<String>], column: &str) -> Option<&'a str> {
        let at = self.wanted.iter().position(|c| c == column)?;
        values.get(at)?.as_deref()
    }
}

#[derive(Debug, Clone, Copy)]
enum RowLabel {
    Line(usize),
    Row(usize),
}

/// Every column name the mapping could use, so a file is read once whatever the preset turns
/// out to be.
fn wanted_columns(src: &ProblemSource) -> Vec<String> {
    let mut wanted: Vec<String> = [
        "question",
        "problem",
        "prompt",
        "answer",
        "reference_answer",
        "solution",
        "unique_id",
        "id",
        "problem_id",
        "source",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in [
        &src.prompt_col,
        &src.answer_col,
        &src.id_col,
        &src.solution_col,
    ]
    .into_iter()
    .flatten()
    {
        if !wanted.contains(c) {
            wanted.push(c.clone());
        }
    }
    wanted
}

fn read_table(path: &Path, src: &ProblemSource) -> Result<Table> {
    let wanted = wanted_columns(src);
    let format = match format_of(path) {
        Some(f) => f,
        None => sniff_format(path)?,
    };
    match format {
        Format::Jsonl => read_jsonl(path, wanted),
        Format::Parquet => read_parquet(path, wanted),
    }
}

/// Parquet files start with the magic bytes `PAR1`; anything else is read as jsonl.
pub(crate) fn sniff_format(path: &Path) -> Result<Format> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(if n == 4 && &head == b"PAR1" {
        Format::Parquet
    } else {
        Format::Jsonl
    })
}

fn json_cell(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads one JSON object per line (blank lines skipped), or a single JSON array of objects,
/// through the reader `import` uses ([`crate::import::read::Rows`]: BOM, arrays, line numbers).
fn read_jsonl(path: &Path, wanted: Vec<String>) -> Result<Table> {
    use crate::import::read::{Place, Rows};
    let mut table = Table {
        columns: Vec::new(),
        wanted,
        rows: Vec::new(),
        lines: Vec::new(),
    };
    for batch in Rows::open(path, &[], 4096)? {
        for row in batch? {
            for key in row.value.keys() {
                if !table.columns.contains(key) {
                    table.columns.push(key.clone());
                }
            }
            let cells = table
                .wanted
                .iter()
                .map(|c| row.value.get(c).and_then(json_cell))
                .collect();
            table.rows.push(cells);
            // Array elements are labelled by their index (`lines` stays empty).
            if let Place::Line(line) = row.place {
                table.lines.push(line);
            }
        }
    }
    Ok(table)
}

fn read_parquet(path: &Path, wanted: Vec<String>) -> Result<Table> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::NoProblems {
            path: path.to_path_buf(),
        });
    }
    let read_err = |source| Error::ParquetRead {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(read_err)?;
    let schema = builder.schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    // Read only the columns the mapping may use: problem files can carry large extra columns.
    let roots: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| wanted.contains(c))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().map_err(read_err)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::parse(path, e))?;
        let cols: Vec<Option<Vec<Option<String>>>> = wanted
            .iter()
            .map(|c| column_text(&batch, c, path))
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            rows.push(
                cols.iter()
                    .map(|col| col.as_ref().and_then(|v| v[r].clone()))
                    .collect(),
            );
        }
    }
    Ok(Table {
        columns,
        wanted,
        rows,
        lines: Vec::new(),
    })
}

/// A column's cells as text, or `None` when the batch has no such column. Strings and numbers
/// are accepted (`level` is an integer in MATH-500, answers may be numeric in custom files).
fn column_text(
    batch: &RecordBatch,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<Option<String>>>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    fn collect<T: ToString>(col: &dyn Array, get: impl Fn(usize) -> T) -> Vec<Option<String>> {
        (0..col.len())
            .map(|i| (!col.is_null(i)).then(|| get(i).to_string()))
            .collect()
    }
    let col = col.as_ref();
    let cells = match col.data_type() {
        DataType::Utf8 => collect(col, |i| col.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => collect(col, |i| col.as_string::<i64>().value(i)),
        DataType::Utf8View => collect(col, |i| col.as_string_view().value(i)),
        DataType::Int8 => collect(col, |i| col.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => collect(col, |i| col.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => collect(col, |i| col.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => collect(col, |i| col.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => collect(col, |i| col.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => collect(col, |i| col.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => collect(col, |i| col.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => collect(col, |i| col.as_primitive::<UInt64Type>().value(i)),
        DataType::Float32 => collect(col, |i| col.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => collect(col, |i| col.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => collect(col, |i| col.as_boolean().value(i)),
        DataType::Null => vec![None; col.len()],
        other => {
            return Err(Error::ColumnType {
                path: path.to_path_buf(),
                column: name.to_string(),
                found: other.to_string(),
                expected: "string or number".to_string(),
            })
        }
    };
    Ok(Some(cells))
}

/// The resolved column mapping of one file.
struct Columns {
    preset: Option<Preset>,
    prompt: String,
    answer: Option<String>,
    solution: Option<String>,
    id: Option<String>,
    /// Per-row `source` column (only without a preset or `source_name`).
    source: Option<String>,
    /// A corpus's shards: one row per sample, so a repeated problem id is the same problem.
    corpus: bool,
}

impl Columns {
    fn resolve(src: &ProblemSource, present: &[String], path: &Path) -> Result<Columns> {
        let has = |c: &str| present.iter().any(|p| p == c);
        let require = |c: &str| -> Result<String> {
            if has(c) {
                Ok(c.to_string())
            } else {
                Err(Error::MissingColumn {
                    path: path.to_path_buf(),
                    column: c.to_string(),
                    present: crate::record::listed_columns(present),
                })
            }
        };
        let optional = |c: &str| has(c).then(|| c.to_string());
        let preset = src.preset.or_else(|| {
            if src.prompt_col.is_some() {
                None
            } else if has("question") && has("answer") {
                Some(Preset::Gsm8k)
            } else if has("problem") {
                Some(Preset::Math)
            } else {
                None
            }
        });
        let prompt = require(match (&src.prompt_col, preset) {
            (Some(c), _) => c,
            (None, Some(Preset::Gsm8k)) => "question",
            (None, Some(Preset::Math)) => "problem",
            (None, None) => "prompt",
        })?;
        let answer = match (&src.answer_col, preset) {
            (Some(c), _) => Some(require(c)?),
            (None, Some(Preset::Gsm8k)) => Some(require("answer")?),
            (None, Some(Preset::Math)) => optional("answer"),
            (None, None) => optional("reference_answer").or_else(|| optional("answer")),
        };
        let solution = match (&src.solution_col, preset) {
            (Some(c), _) => Some(require(c)?),
            (None, Some(Preset::Gsm8k)) => Some(require("answer")?),
            (None, Some(Preset::Math)) | (None, None) => optional("solution"),
        };
        // A corpus holds its problems once per sample: its `problem_id` is the problem's id
        // and later samples repeat it.
        let corpus = preset.is_none() && has("problem_id") && has("sample_index");
        let id = match (&src.id_col, preset) {
            (Some(c), _) => Some(require(c)?),
            (None, Some(Preset::Math)) => optional("unique_id"),
            (None, None) if corpus => optional("problem_id"),
            (None, None) => optional("id"),
            (None, Some(Preset::Gsm8k)) => None,
        };
        let source = (preset.is_none() && src.source_name.is_none())
            .then(|| optional("source"))
            .flatten();
        if src.preset.is_none() {
            if let Some(p) = preset {
                tracing::debug!(path = %path.display(), preset = %p, "inferred problem preset from columns");
            }
        }
        Ok(Columns {
            preset,
            prompt,
            answer,
            solution,
            id,
            source,
            corpus,
        })
    }

    fn problem(
        &self,
        table: &Table,
        values: &[Option<String>],
        source: &str,
        row: usize,
        path: &Path,
        label: RowLabel,
    ) -> Result<Problem> {
        let bad = |message: String| match label {
            RowLabel::Line(line) => Error::JsonLine {
                path: path.to_path_buf(),
                line,
                message,
            },
            RowLabel::Row(r) => Error::BadRow {
                path: path.to_path_buf(),
                row: r,
                message,
            },
        };
        let cell = |c: &Option<String>| c.as_deref().and_then(|name| table.cell(values, name));
        let prompt = table
            .cell(values, &self.prompt)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad(format!("column `{}` is empty", self.prompt)))?;
        let raw_answer = cell(&self.answer);
        let solution = cell(&self.solution).map(str::to_string);
        let reference = match self.preset {
            Some(Preset::Gsm8k) => {
                let column = self.answer.as_deref().unwrap_or("answer");
                let text = raw_answer.ok_or_else(|| bad(format!("column `{column}` is empty")))?;
                Some(gsm8k_reference(text).ok_or_else(|| {
                    bad(format!(
                        "column `{column}` has no `#### ` line with a final answer"
                    ))
                })?)
            }
            Some(Preset::Math) => match raw_answer.filter(|a| !a.trim().is_empty()) {
                Some(a) => Some(a.trim().to_string()),
                None => solution.as_deref().and_then(answer::last_boxed_answer),
            },
            None => raw_answer
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string),
        };
        let id = match &self.id {
            Some(col) => table
                .cell(values, col)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad(format!("id column `{col}` is empty")))?,
            None => format!("{source}-{row}"),
        };
        let source = cell(&self.source).unwrap_or(source).to_string();
        Ok(Problem {
            id,
            source,
            prompt: prompt.to_string(),
            reference_answer: reference,
            solution,
        })
    }
}

/// The GSM8K reference: the text after the last `#### `, with thousands commas removed
/// (`#### 1,000` gives `1000`).
pub fn gsm8k_reference(answer: &str) -> Option<String> {
    let at = answer.rfind("####")?;
    let value: String = answer[at + 4..]
        .trim()
        .chars()
        .filter(|&c| c != ',')
        .collect();
    (!value.is_empty()).then_some(value)
}
