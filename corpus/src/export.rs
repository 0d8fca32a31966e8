//! `export`: writes the corpus as a training set in the layout TRL's `SFTTrainer` and open-r1
//! read: a `messages` column of `[{"role": "user", …}, {"role": "assistant", "content":
//! "<think>\n…\n</think>\n\n…"}]`, as jsonl (one object per line) or one parquet file.
//!
//! The stored `messages` column is used as is; rows where it is empty (or every row with
//! `rebuild_messages`) get the conversation rebuilt from `prompt`, `reasoning`, `completion`.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::pass::{par_rows, PassIo};
use crate::record::{self, col, Columns, Message};
use crate::{Error, Result};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Parquet,
}

/// Options of `export`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportConfig {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Write only `messages` (no `id`, `problem_id`, `source`).
    #[arg(long)]
    pub messages_only: bool,
    /// Rebuild `messages` from `prompt`, `reasoning` and `completion` for every row.
    #[arg(long)]
    pub rebuild_messages: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub rows: u64,
    /// Rows whose `messages` were rebuilt.
    pub rebuilt: u64,
    pub format: ExportFormat,
    pub output: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
}

const META: [&str; 3] = [col::ID, col::PROBLEM_ID, col::SOURCE];

#[derive(Serialize)]
struct MessageRef<'a> {
    role: &'a str,
    content: Cow<'a, str>,
}

#[derive(Serialize)]
struct Line<'a> {
    messages: Vec<MessageRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

/// A file written under a temporary sibling name and renamed when complete.
struct StagedFile {
    tmp: PathBuf,
    out: PathBuf,
    done: bool,
}

impl StagedFile {
    fn new(out: &Path, overwrite: bool) -> Result<Self> {
        if out.exists() && !overwrite {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        Ok(StagedFile {
            tmp,
            out: out.to_path_buf(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The conversation of row `i`: the stored one, or rebuilt. `bool` tells whether it was rebuilt.
fn conversation<'a>(
    messages: Option<&'a ListArray>,
    prompt: &'a StringArray,
    reasoning: &'a StringArray,
    completion: &'a StringArray,
    i: usize,
    rebuild: bool,
) -> (Vec<MessageRef<'a>>, bool) {
    if let Some(list) = messages.filter(|_| !rebuild) {
        if let Some(turns) = stored_turns(list, i) {
            if !turns.is_empty() {
                return (turns, false);
            }
        }
    }
    let assistant = record::assistant_content(reasoning.value(i), completion.value(i));
    (
        vec![
            MessageRef {
                role: "user",
                content: Cow::Borrowed(prompt.value(i)),
            },
            MessageRef {
                role: "assistant",
                content: Cow::Owned(assistant),
            },
        ],
        true,
    )
}

fn stored_turns(list: &ListArray, i: usize) -> Option<Vec<MessageRef<'_>>> {
    if list.is_null(i) {
        return Some(Vec::new());
    }
    let structs = list.values().as_any().downcast_ref::<StructArray>()?;
    let field = |name: &str| {
        structs
            .column_by_name(name)?
            .as_any()
            .downcast_ref::<StringArray>()
    };
    let (roles, contents) = (field("role")?, field("content")?);
    let offsets = list.value_offsets();
    Some(
        (offsets[i] as usize..offsets[i + 1] as usize)
            .map(|j| MessageRef {
                role: roles.value(j),
                content: Cow::Borrowed(contents.value(j)),
            })
            .collect(),
    )
}

/// Runs `export` over `io.inputs` into the file `io.output`.
pub fn run(io: &PassIo, cfg: &ExportConfig) -> Result<ExportSummary> {
    let started = std::time::Instant::now();
    let reader = io.reader()?;
    reader.require(&[col::PROMPT, col::REASONING, col::COMPLETION])?;
    let has_messages = reader.schema().field_with_name(col::MESSAGES).is_ok();
    if has_messages {
        reader.require(&[col::MESSAGES])?;
    }
    if !cfg.messages_only {
        reader.require(&META)?;
    }
    let staged = StagedFile::new(&io.output, io.overwrite)?;
    let file = File::create(&staged.tmp).map_err(|e| Error::io(&staged.tmp, e))?;
    let mut rows = 0u64;
    let mut rebuilt = 0u64;
    match cfg.format {
        ExportFormat::Jsonl => {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            for batch in reader.batches() {
                let batch = batch?;
                let c = Columns::new(&batch);
                let (prompt, reasoning, completion) = (
                    c.str(col::PROMPT)?,
                    c.str(col::REASONING)?,
                    c.str(col::COMPLETION)?,
                );
                let messages = if has_messages {
                    Some(c.list(col::MESSAGES)?)
                } else {
                    None
                };
                let meta = if cfg.messages_only {
                    None
                } else {
                    Some((
                        c.str(col::ID)?,
                        c.str(col::PROBLEM_ID)?,
                        c.str(col::SOURCE)?,
                    ))
                };
                let lines = par_rows(batch.num_rows(), |i| {
                    let (messages, fresh) = conversation(
                        messages,
                        prompt,
                        reasoning,
                        completion,
                        i,
                        cfg.rebuild_messages,
                    );
                    let line = Line {
                        messages,
                        id: meta.map(|m| m.0.value(i)),
                        problem_id: meta.map(|m| m.1.value(i)),
                        source: meta.map(|m| m.2.value(i)),
                    };
                    (serde_json::to_vec(&line), fresh)
                });
                for (line, fresh) in lines {
                    let line = line.map_err(|e| Error::parse(&io.output, e))?;
                    w.write_all(&line)
                        .and_then(|_| w.write_all(b"\n"))
                        .map_err(|e| Error::io(&staged.tmp, e))?;
                    rows += 1;
                    rebuilt += u64::from(fresh);
                }
            }
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&staged.tmp, e.into_error()))?;
            file.sync_data().map_err(|e| Error::io(&staged.tmp, e))?;
        }
        ExportFormat::Parquet => {
            let schema = export_schema(cfg.messages_only);
            let level = ZstdLevel::try_new(io.writer.zstd_level).map_err(|_| {
                Error::Invalid(format!(
                    "`zstd_level` {} is out of range",
                    io.writer.zstd_level
                ))
            })?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(level))
                .set_max_row_group_row_count(Some(io.writer.row_group_rows.max(1)))
                .build();
            let write_err = |e| Error::ParquetWrite {
                path: staged.tmp.clone(),
                source: e,
            };
            let mut w = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
                .map_err(write_err)?;
            for batch in reader.batches() {
                let batch = batch?;
                let (out, fresh) = export_batch(&batch, &schema, has_messages, cfg)?;
                rows += batch.num_rows() as u64;
                rebuilt += fresh;
                w.write(&out).map_err(write_err)?;
            }
            let buf = w.into_inner().map_err(write_err)?;
            let file = buf
                .into_inner()
                .map_err(|e| Error::io(&staged.tmp, e.into_error()))?;
            file.sync_data().map_err(|e| Error::io(&staged.tmp, e))?;
        }
    }
    let bytes = fs::metadata(&staged.tmp)
        .map_err(|e| Error::io(&staged.tmp, e))?
        .len();
    let output = staged.out.clone();
    staged.commit()?;
    Ok(ExportSummary {
        rows,
        rebuilt,
        format: cfg.format,
        output,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn export_schema(messages_only: bool) -> SchemaRef {
    let mut fields = vec![Field::new(col::MESSAGES, record::messages_type(), false)];
    if !messages_only {
        fields.extend(
            META.iter()
                .map(|name| Field::new(*name, DataType::Utf8, false)),
        );
    }
    Arc::new(Schema::new(fields))
}

fn export_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
    has_messages: bool,
    cfg: &ExportConfig,
) -> Result<(RecordBatch, u64)> {
    let c = Columns::new(batch);
    let (prompt, reasoning, completion) = (
        c.str(col::PROMPT)?,
        c.str(col::REASONING)?,
        c.str(col::COMPLETION)?,
    );
    let messages = if has_messages {
        Some(c.list(col::MESSAGES)?)
    } else {
        None
    };
    let rows: Vec<(Vec<Message>, bool)> = par_rows(batch.num_rows(), |i| {
        let (turns, fresh) = conversation(
            messages,
            prompt,
            reasoning,
            completion,
            i,
            cfg.rebuild_messages,
        );
        let turns = turns
            .into_iter()
            .map(|m| Message::new(m.role, m.content.into_owned()))
            .collect();
        (turns, fresh)
    });
    let fresh = rows.iter().filter(|(_, f)| *f).count() as u64;
    let list = record::messages_array(rows.iter().map(|(m, _)| m.as_slice()))?;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(list)];
    if !cfg.messages_only {
        for name in META {
            columns.push(Arc::new(c.str(name)?.clone()));
        }
    }
    Ok((RecordBatch::try_new(schema.clone(), columns)?, fresh))
}

/// A parquet file with one `messages` column (TRL's conversational layout), written a batch of
/// conversations at a time under a temporary name and renamed into place by
/// [`MessagesWriter::finish`]; dropped unfinished, it leaves nothing behind.
pub struct MessagesWriter {
    staged: StagedFile,
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    rows: u64,
}

impl MessagesWriter {
    /// Rows per row group: small enough for a reader to stream long reasoning traces.
    const ROW_GROUP_ROWS: usize = 2048;

    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        let staged = StagedFile::new(path, overwrite)?;
        let file = File::create(&staged.tmp).map_err(|e| Error::io(&staged.tmp, e))?;
        let schema = export_schema(true);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(Self::ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
            .map_err(|e| Error::ParquetWrite {
                path: staged.tmp.clone(),
                source: e,
            })?;
        Ok(Self {
            staged,
            writer,
            schema,
            rows: 0,
        })
    }

    /// Appends conversations (each a list of messages).
    pub fn write<'a>(&mut self, rows: impl IntoIterator<Item = &'a [Message]>) -> Result<()> {
        let list = record::messages_array(rows)?;
        let n = list.len();
        if n == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(list)])?;
        self.writer.write(&batch).map_err(|e| Error::ParquetWrite {
            path: self.staged.tmp.clone(),
            source: e,
        })?;
        self.rows += n as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the file and moves it into place; returns its rows.
    pub fn finish(self) -> Result<u64> {
        let Self {
            staged,
            writer,
            rows,
            ..
        } = self;
        let buf = writer.into_inner().map_err(|e| Error::ParquetWrite {
            path: staged.tmp.clone(),
            source: e,
        })?;
        let file = buf
            .into_inner()
            .map_err(|e| Error::io(&staged.tmp, e.into_error()))?;
        file.sync_data().map_err(|e| Error::io(&staged.tmp, e))?;
        staged.commit()?;
        Ok(rows)
    }
}
