//! What every curation pass shares: input/output options, the staging folder that makes an
//! output appear whole or not at all, background shard sinks, and the writer that routes each
//! row either to the output or, with its reason, to the `dropped/` side folder.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::filter::filter_record_batch;
use serde::{Deserialize, Serialize};

use crate::record::col;
use crate::shards::{Manifest, ShardReader, ShardWriter, WriterOptions};
use crate::{Error, Result};

/// Folder (inside a pass's output) holding the rows the pass dropped.
pub const DROPPED_DIR: &str = "dropped";
/// The pass's summary, written beside its shards.
pub const SUMMARY_FILE: &str = "summary.json";
/// The resolved options the pass ran with.
pub const CONFIG_FILE: &str = "config.json";

/// Inputs and output of a pass.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct PassIo {
    /// Input shards: folders (the shards their manifest lists, else every `*.parquet`) or files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder; built in a temporary sibling and renamed into place when complete.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Rows decoded and processed at a time.
    #[arg(long, default_value_t = 1024)]
    pub batch_rows: usize,
    #[command(flatten)]
    #[serde(default)]
    pub writer: WriterOptions,
}

impl PassIo {
    pub fn new(inputs: Vec<PathBuf>, output: impl Into<PathBuf>) -> Self {
        PassIo {
            inputs,
            output: output.into(),
            overwrite: false,
            batch_rows: 1024,
            writer: WriterOptions::default(),
        }
    }

    pub fn reader(&self) -> Result<ShardReader> {
        Ok(ShardReader::open(&self.inputs)?.with_batch_size(self.batch_rows))
    }
}

/// Row counts every pass reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PassCounts {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Dropped rows per reason.
    pub dropped: BTreeMap<String, u64>,
    pub output: PathBuf,
    pub seconds: f64,
}

impl PassCounts {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// A folder built under a temporary name and renamed to its final name by `commit`; dropped
/// without `commit` (an error anywhere) it is deleted, so no partial output is ever left.
pub struct Staging {
    out: PathBuf,
    tmp: PathBuf,
    overwrite: bool,
    committed: bool,
}

impl Staging {
    /// Refuses an existing output (unless `overwrite`) and an output that is, or contains, one
    /// of the inputs.
    pub fn new(out: &Path, overwrite: bool, inputs: &[PathBuf]) -> Result<Self> {
        let out_abs = absolute(out)?;
        for input in inputs {
            let input_abs = absolute(input)?;
            if input_abs.starts_with(&out_abs) {
                return Err(Error::Invalid(format!(
                    "output `{}` would replace input `{}`",
                    out.display(),
                    input.display()
                )));
            }
        }
        if out.exists() && !overwrite {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let parent = out_abs
            .parent()
            .ok_or_else(|| Error::Invalid(format!("output `{}` has no parent", out.display())))?;
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = out_abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staging {
            out: out_abs,
            tmp,
            overwrite,
            committed: false,
        })
    }

    /// Where to write until `commit`.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn output(&self) -> &Path {
        &self.out
    }

    /// Moves the staged folder to its final name (replacing an old one if allowed).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.out.exists() {
            if !self.overwrite {
                return Err(Error::OutputExists {
                    path: self.out.clone(),
                });
            }
            let old = self.tmp.with_extension("old");
            fs::rename(&self.out, &old).map_err(|e| Error::io(&self.out, e))?;
            fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        }
        self.committed = true;
        Ok(self.out.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    // Canonicalise what exists (resolving symlinks and `..`), then re-append the rest.
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if existing.exists() {
            let mut abs = existing
                .canonicalize()
                .map_err(|e| Error::io(&existing, e))?;
            abs.extend(rest.iter().rev());
            return Ok(abs);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => {
                let cwd = std::env::current_dir().map_err(|e| Error::io(path, e))?;
                return Ok(cwd.join(path));
            }
        }
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// A shard writer on its own thread, so parquet encoding and zstd overlap the pass's work.
pub struct Sink {
    tx: Option<SyncSender<RecordBatch>>,
    handle: Option<JoinHandle<Result<Manifest>>>,
}

impl Sink {
    pub fn spawn(dir: &Path, schema: SchemaRef, opts: WriterOptions) -> Result<Self> {
        let mut writer = ShardWriter::create(dir, schema, opts)?;
        let (tx, rx) = mpsc::sync_channel::<RecordBatch>(2);
        let handle = std::thread::spawn(move || {
            for batch in rx {
                writer.write(&batch)?;
            }
            writer.finish()
        });
        Ok(Sink {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    pub fn send(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let sent = self.tx.as_ref().map(|tx| tx.send(batch).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The writer thread stopped early: report its error.
        self.join()
            .and(Err(Error::Invalid("the shard writer stopped".into())))
    }

    pub fn finish(mut self) -> Result<Manifest> {
        self.join()
    }

    fn join(&mut self) -> Result<Manifest> {
        self.tx = None;
        match self.handle.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| Error::Invalid("the shard writer thread panicked".into()))?,
            None => Err(Error::Invalid("the shard writer already finished".into())),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Why a row was dropped: a stable reason code and an optional detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropReason {
    pub reason: &'static str,
    pub detail: Option<String>,
}

impl DropReason {
    pub fn new(reason: &'static str) -> Self {
        DropReason {
            reason,
            detail: None,
        }
    }

    pub fn with_detail(reason: &'static str, detail: impl Into<String>) -> Self {
        DropReason {
            reason,
            detail: Some(detail.into()),
        }
    }
}

/// The schema of a side file: the input's columns plus `drop_reason` and `drop_detail`.
pub fn dropped_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != col::DROP_REASON && f.name() != col::DROP_DETAIL)
        .cloned()
        .collect();
    fields.push(Arc::new(Field::new(
        col::DROP_REASON,
        DataType::Utf8,
        false,
    )));
    fields.push(Arc::new(Field::new(col::DROP_DETAIL, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// Output of a pass that keeps some rows and drops others: `out/*.parquet` and
/// `out/dropped/*.parquet`, staged until `finish`.
pub struct SplitWriter {
    // Fields drop in order: the sinks' threads must stop before the staging folder is removed.
    kept: Sink,
    dropped: Sink,
    staging: Staging,
    dropped_schema: SchemaRef,
    counts: PassCounts,
    started: std::time::Instant,
}

impl SplitWriter {
    pub fn new(io: &PassIo, kept_schema: SchemaRef, input_schema: &Schema) -> Result<Self> {
        let staging = Staging::new(&io.output, io.overwrite, &io.inputs)?;
        let kept = Sink::spawn(staging.dir(), kept_schema, io.writer.clone())?;
        let dropped_schema = dropped_schema(input_schema);
        let dropped_opts = WriterOptions {
            shard_prefix: DROPPED_DIR.into(),
            ..io.writer.clone()
        };
        let dropped = Sink::spawn(
            &staging.dir().join(DROPPED_DIR),
            dropped_schema.clone(),
            dropped_opts,
        )?;
        Ok(SplitWriter {
            staging,
            kept,
            dropped,
            dropped_schema,
            counts: PassCounts::default(),
            started: std::time::Instant::now(),
        })
    }

    /// Writes the rows whose verdict is `None` to the output and the others to `dropped/`.
    /// `kept` is written as is (it may carry updated columns); `original` feeds the side file.
    pub fn write(
        &mut self,
        kept: &RecordBatch,
        original: &RecordBatch,
        verdicts: &[Option<DropReason>],
    ) -> Result<()> {
        self.counts.rows_in += verdicts.len() as u64;
        let keep: BooleanArray = verdicts.iter().map(|v| Some(v.is_none())).collect();
        let n_keep = verdicts.iter().filter(|v| v.is_none()).count();
        if n_keep == verdicts.len() {
            self.counts.rows_out += n_keep as u64;
            return self.kept.send(kept.clone());
        }
        if n_keep > 0 {
            self.kept.send(filter_record_batch(kept, &keep)?)?;
        }
        self.counts.rows_out += n_keep as u64;
        let drop_mask: BooleanArray = verdicts.iter().map(|v| Some(v.is_some())).collect();
        let dropped = filter_record_batch(original, &drop_mask)?;
        let mut reasons = StringBuilder::new();
        let mut details = StringBuilder::new();
        for v in verdicts.iter().flatten() {
            reasons.append_value(v.reason);
            details.append_option(v.detail.as_deref());
            *self.counts.dropped.entry(v.reason.to_string()).or_default() += 1;
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(dropped.num_columns() + 2);
        for (field, array) in dropped.schema().fields().iter().zip(dropped.columns()) {
            if field.name() != col::DROP_REASON && field.name() != col::DROP_DETAIL {
                columns.push(array.clone());
            }
        }
        columns.push(Arc::new(reasons.finish()));
        columns.push(Arc::new(details.finish()));
        self.dropped
            .send(RecordBatch::try_new(self.dropped_schema.clone(), columns)?)
    }

    /// Finishes both sinks, writes `summary.json` and `config.json`, and renames the output
    /// into place. `summary` gets the final counts through `fill`.
    pub fn finish<S: Serialize, C: Serialize>(
        self,
        config: &C,
        fill: impl FnOnce(PassCounts) -> S,
    ) -> Result<S> {
        self.kept.finish()?;
        self.dropped.finish()?;
        let mut counts = self.counts;
        counts.output = self.staging.output().to_path_buf();
        counts.seconds = self.started.elapsed().as_secs_f64();
        let summary = fill(counts);
        write_json(&self.staging.dir().join(SUMMARY_FILE), &summary)?;
        write_json(&self.staging.dir().join(CONFIG_FILE), config)?;
        self.staging.commit()?;
        Ok(summary)
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::parse(path, e))?;
    fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Runs `f` over `0..n` on rayon's pool, keeping order.
pub fn par_rows<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    (0..n).into_par_iter().with_min_len(8).map(f).collect()
}
