//! Parquet shards: a crash-safe shard writer with a `manifest.json`, and a streaming reader
//! over every shard of one or more folders or files.
//!
//! Writer: each shard is written as `{prefix}-{index:05}.parquet.tmp` and renamed once closed
//! and synced, and only then listed in the manifest, so a crash leaves at worst a `.tmp` file
//! (removed when the folder is reopened) and never a half shard under a real name. Reopening a
//! folder continues after the last finished shard, which is what resumable generation needs.
//! A writer may also close shards by age ([`ShardWriter::close_after`]): a slow producer (a
//! CPU teacher writing a few rows a minute) then never holds hours of rows in an open shard.
//!
//! Reader: validates every file up front (exists, not empty, one schema across shards) from
//! the parquet footers alone, then decodes batch by batch on a background thread so decoding
//! overlaps the caller's work while memory stays at a couple of batches.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::record::{self, col};
use crate::{Error, Result};

/// Name of the file listing a folder's finished shards.
pub const MANIFEST: &str = "manifest.json";
const TMP_SUFFIX: &str = ".tmp";

/// How shards are cut and compressed.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct WriterOptions {
    /// Rows per output shard.
    #[arg(long, default_value_t = 50_000)]
    pub rows_per_shard: usize,
    /// Rows per parquet row group (the unit a reader decodes; bounds writer memory).
    #[arg(long, default_value_t = 2048)]
    pub row_group_rows: usize,
    /// zstd level of the shards (1 is fast; 3+ trades speed for size).
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
    /// File name prefix of the shards.
    #[arg(long, default_value = "part")]
    pub shard_prefix: String,
}

impl Default for WriterOptions {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name relative to the folder.
    pub file: String,
    pub rows: u64,
}

/// The finished shards of a folder, in write order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Reads `dir/manifest.json`, or `None` when the folder has none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::parse(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Writes the manifest atomically (temporary file, then rename).
    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}{TMP_SUFFIX}"));
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::parse(&path, e))?;
        fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}

struct OpenShard {
    tmp: PathBuf,
    name: String,
    writer: ArrowWriter<BufWriter<File>>,
    rows: usize,
    opened: Instant,
}

/// Writes batches into numbered shards of at most `rows_per_shard` rows.
pub struct ShardWriter {
    dir: PathBuf,
    schema: SchemaRef,
    opts: WriterOptions,
    props: WriterProperties,
    manifest: Manifest,
    next_index: usize,
    current: Option<OpenShard>,
    max_age: Option<Duration>,
}

impl ShardWriter {
    /// Opens `dir` for writing (creating it), cleaning up `.tmp` leftovers of a crashed run and
    /// continuing after the shards its manifest lists.
    pub fn create(dir: &Path, schema: SchemaRef, opts: WriterOptions) -> Result<Self> {
        if opts.rows_per_shard == 0 || opts.row_group_rows == 0 {
            return Err(Error::Invalid(
                "`rows_per_shard` and `row_group_rows` must be at least 1".into(),
            ));
        }
        let level = ZstdLevel::try_new(opts.zstd_level).map_err(|_| {
            Error::Invalid(format!("`zstd_level` {} is out of range", opts.zstd_level))
        })?;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        let manifest = Manifest::read(dir)?.unwrap_or_default();
        let next_index = manifest
            .shards
            .iter()
            .filter_map(|s| shard_index(&s.file, &opts.shard_prefix))
            .map(|i| i + 1)
            .max()
            .unwrap_or(0);
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            props: writer_properties(&schema, &opts, level),
            schema,
            opts,
            manifest,
            next_index,
            current: None,
            max_age: None,
        })
    }

    /// Also closes a shard once a write finds it open for `age` or longer, so rows reach a
    /// finished shard (and survive a crash) within about `age` plus the time between writes,
    /// however slowly they come.
    pub fn close_after(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The shards finished so far (including those of earlier runs).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends a batch, cutting shards at `rows_per_shard` (and by age, [`Self::close_after`]).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.current = Some(self.open_shard()?);
            }
            let Some(shard) = self.current.as_mut() else {
                unreachable!("a shard was just opened")
            };
            let take = (self.opts.rows_per_shard - shard.rows).min(batch.num_rows() - offset);
            shard
                .writer
                .write(&batch.slice(offset, take))
                .map_err(|e| Error::ParquetWrite {
                    path: shard.tmp.clone(),
                    source: e,
                })?;
            shard.rows += take;
            offset += take;
            if shard.rows >= self.opts.rows_per_shard {
                self.close_shard()?;
            }
        }
        let old = |s: &OpenShard| self.max_age.is_some_and(|age| s.opened.elapsed() >= age);
        if self.current.as_ref().is_some_and(old) {
            self.close_shard()?;
        }
        Ok(())
    }

    /// Closes the open shard and returns the manifest of the folder.
    pub fn finish(mut self) -> Result<Manifest> {
        if self.manifest.shards.is_empty() && self.current.is_none() {
            // An empty output still gets one (empty) shard: it carries the schema, so the
            // next pass reads an empty corpus instead of failing on a folder without shards.
            self.current = Some(self.open_shard()?);
        }
        self.close_shard()?;
        self.manifest.write(&self.dir)?;
        Ok(std::mem::take(&mut self.manifest))
    }

    fn open_shard(&mut self) -> Result<OpenShard> {
        let name = format!("{}-{:05}.parquet", self.opts.shard_prefix, self.next_index);
        self.next_index += 1;
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            self.schema.clone(),
            Some(self.props.clone()),
        )
        .map_err(|e| Error::ParquetWrite {
            path: tmp.clone(),
            source: e,
        })?;
        Ok(OpenShard {
            tmp,
            name,
            writer,
            rows: 0,
            opened: Instant::now(),
        })
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(shard) = self.current.take() else {
            return Ok(());
        };
        let write_err = |e| Error::ParquetWrite {
            path: shard.tmp.clone(),
            source: e,
        };
        let buf = shard.writer.into_inner().map_err(write_err)?;
        let file = buf
            .into_inner()
            .map_err(|e| Error::io(&shard.tmp, e.into_error()))?;
        file.sync_data().map_err(|e| Error::io(&shard.tmp, e))?;
        drop(file);
        let path = self.dir.join(&shard.name);
        fs::rename(&shard.tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.manifest.shards.push(ShardEntry {
            file: shard.name,
            rows: shard.rows as u64,
        });
        self.manifest.write(&self.dir)
    }
}

impl Drop for ShardWriter {
    /// An unfinished shard is not kept: remove its temporary file.
    fn drop(&mut self) {
        if let Some(shard) = self.current.take() {
            drop(shard.writer);
            let _ = fs::remove_file(&shard.tmp);
        }
    }
}

fn shard_index(file: &str, prefix: &str) -> Option<usize> {
    file.strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// zstd everywhere; dictionaries only for the low-cardinality columns, where they pay (on
/// 6 KB unique traces a dictionary is pure overhead until the writer gives up on it).
fn writer_properties(
    schema: &SchemaRef,
    opts: &WriterOptions,
    level: ZstdLevel,
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .set_dictionary_enabled(false);
    for name in [
        col::SOURCE,
        col::FINISH_REASON,
        col::TEACHER,
        col::DROP_REASON,
        col::REFERENCE_ANSWER,
    ] {
        if schema.field_with_name(name).is_ok() {
            b = b.set_column_dictionary_enabled(ColumnPath::from(name), true);
        }
    }
    b.build()
}

/// A set of parquet files sharing one schema, read batch by batch.
#[derive(Debug, Clone)]
pub struct ShardReader {
    files: Vec<PathBuf>,
    rows: Vec<u64>,
    schema: SchemaRef,
    batch_size: usize,
    columns: Option<Vec<String>>,
}

impl ShardReader {
    /// Expands folders (the shards their manifest lists, else every `*.parquet` file in name
    /// order) and checks every file's footer: it exists, is not empty, and has the schema of
    /// the first.
    pub fn open(inputs: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        for input in inputs {
            files.extend(expand(input)?);
        }
        let Some(first) = files.first() else {
            return Err(Error::Invalid("no input files given".into()));
        };
        let first = first.clone();
        let mut schema: Option<SchemaRef> = None;
        let mut rows = Vec::with_capacity(files.len());
        for file in &files {
            let builder = open_builder(file)?;
            rows.push(builder.metadata().file_metadata().num_rows().max(0) as u64);
            let found = builder.schema().clone();
            match &schema {
                None => schema = Some(found),
                Some(expected) => {
                    if expected.fields() != found.fields() {
                        return Err(Error::MixedSchemas {
                            first: first.clone(),
                            second: file.clone(),
                            detail: schema_difference(expected, &found),
                        });
                    }
                }
            }
        }
        Ok(ShardReader {
            files,
            rows,
            schema: schema.unwrap_or_else(record::schema),
            batch_size: 1024,
            columns: None,
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The schema of every shard (before any column selection).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Total rows, from the footers.
    pub fn num_rows(&self) -> u64 {
        self.rows.iter().sum()
    }

    /// Fails naming the missing columns (and listing those present) unless the shards have
    /// all of `required` with their corpus types.
    pub fn require(&self, required: &[&str]) -> Result<()> {
        record::check_columns(&self.files[0], &self.schema, required)
    }

    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Decodes only these columns (the rest are never decompressed).
    pub fn with_columns(mut self, columns: &[&str]) -> Self {
        self.columns = Some(columns.iter().map(|c| c.to_string()).collect());
        self
    }

    /// Streams every batch of every file in order; a background thread decodes ahead by at
    /// most two batches.
    pub fn batches(&self) -> BatchStream {
        let (tx, rx) = mpsc::sync_channel::<Result<RecordBatch>>(2);
        let reader = self.clone();
        let handle = std::thread::spawn(move || {
            for file in &reader.files {
                if let Err(e) = reader.send_file(file, &tx) {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
        BatchStream {
            rx,
            handle: Some(handle),
        }
    }

    /// Decodes one file into the channel; `Ok` also when the receiver hung up.
    fn send_file(&self, file: &Path, tx: &mpsc::SyncSender<Result<RecordBatch>>) -> Result<()> {
        let mut builder = open_builder(file)?.with_batch_size(self.batch_size);
        if let Some(columns) = &self.columns {
            let schema = builder.schema().clone();
            let mut roots = Vec::with_capacity(columns.len());
            for name in columns {
                roots.push(schema.index_of(name).map_err(|_| Error::MissingColumn {
                    path: file.to_path_buf(),
                    column: name.clone(),
                    present: present_columns(&schema),
                })?);
            }
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        let reader = builder.build().map_err(|e| Error::ParquetRead {
            path: file.to_path_buf(),
            source: e,
        })?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::parse(file, e))?;
            if tx.send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The `(problem_id, sample_index)` pairs already written to a shard folder (its finished
/// shards only), so resumed generation can skip them. Empty when the folder does not exist.
pub fn completed_samples(dir: &Path) -> Result<std::collections::HashSet<(String, i32)>> {
    let mut done = std::collections::HashSet::new();
    let listed = Manifest::read(dir)?.is_some_and(|m| !m.shards.is_empty());
    if !dir.is_dir() || !listed {
        return Ok(done);
    }
    let reader = ShardReader::open(&[dir.to_path_buf()])?;
    reader.require(&[col::PROBLEM_ID, col::SAMPLE_INDEX])?;
    for batch in reader
        .with_columns(&[col::PROBLEM_ID, col::SAMPLE_INDEX])
        .batches()
    {
        let batch = batch?;
        let c = record::Columns::new(&batch);
        let (ids, idx) = (c.str(col::PROBLEM_ID)?, c.i32(col::SAMPLE_INDEX)?);
        for i in 0..batch.num_rows() {
            done.insert((ids.value(i).to_string(), idx.value(i)));
        }
    }
    Ok(done)
}

/// Iterator over the batches of a [`ShardReader`]; stops after the first error.
pub struct BatchStream {
    rx: Receiver<Result<RecordBatch>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                if let Some(handle) = self.handle.take() {
                    if handle.join().is_err() {
                        return Some(Err(Error::Invalid(
                            "the shard reader thread panicked".into(),
                        )));
                    }
                }
                None
            }
        }
    }
}

fn present_columns(schema: &arrow_schema::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_builder(file: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let handle = File::open(file).map_err(|e| Error::io(file, e))?;
    let len = handle.metadata().map_err(|e| Error::io(file, e))?.len();
    if len == 0 {
        return Err(Error::EmptyFile {
            path: file.to_path_buf(),
        });
    }
    ParquetRecordBatchReaderBuilder::try_new(handle).map_err(|e| Error::ParquetRead {
        path: file.to_path_buf(),
        source: e,
    })
}

/// The parquet files a path stands for.
fn expand(input: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if !meta.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    if let Some(manifest) = Manifest::read(input)? {
        return Ok(manifest
            .shards
            .iter()
            .map(|s| input.join(&s.file))
            .collect());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(input).map_err(|e| Error::io(input, e))? {
        let path = entry.map_err(|e| Error::io(input, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.is_file() && name.is_some_and(|n| n.ends_with(".parquet") && !n.starts_with('.')) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::NoShards {
            path: input.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

/// A short description of how two schemas differ, for the mixed-schema error.
fn schema_difference(a: &arrow_schema::Schema, b: &arrow_schema::Schema) -> String {
    for f in a.fields() {
        match b.field_with_name(f.name()) {
            Err(_) => return format!("only the first has column `{}`", f.name()),
            Ok(g) if g.data_type() != f.data_type() => {
                return format!(
                    "column `{}` is `{}` in the first and `{}` in the second",
                    f.name(),
                    f.data_type(),
                    g.data_type()
                )
            }
            Ok(g) if g.is_nullable() != f.is_nullable() => {
                return format!("column `{}` differs in nullability", f.name())
            }
            Ok(_) => {}
        }
    }
    for g in b.fields() {
        if a.field_with_name(g.name()).is_err() {
            return format!("only the second has column `{}`", g.name());
        }
    }
    "the column order differs".into()
}
