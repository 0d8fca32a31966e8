//! Dataset files, row by row as JSON objects (other tools' corpora for `import`, and problem
//! files' jsonl): jsonl (also gzipped, or a whole-file `.json` array) a line at a time, parquet
//! a batch at a time with only the columns the import uses, Arrow IPC streams
//! (`Dataset.save_to_disk`'s `.arrow` shards) a batch at a time, so a 200k-row dataset of long
//! traces imports in bounded memory. Folders are searched recursively in name order (a Hugging
//! Face dataset's `data/train-00000-of-00004.parquet`…), leaving out the metadata `datasets`
//! writes beside its shards.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_schema::ArrowError;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::{Map, Value};

use crate::problems::{format_of, sniff_format, Format};
use crate::{Error, Result};

/// One input file and the `source` its rows get when nothing else names one: the stem of the
/// argument it was found under (`OpenR1-Math-220k` for `OpenR1-Math-220k/data/…parquet`).
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub default_source: String,
}

/// What `datasets` writes beside the shards of a saved dataset: metadata, not rows.
const METADATA: [&str; 4] = [
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
];

/// Every file the inputs name: files as given, folders searched recursively (hidden entries,
/// such as a `.cache` folder, and `datasets`' metadata skipped) for `.jsonl`/`.json`/`.ndjson`
/// (also gzipped: `.jsonl.gz`), `.parquet` and `.arrow`. `names` gives
/// some inputs the name their rows' default source takes instead of their stem.
pub fn input_files(
    inputs: &[PathBuf],
    names: &BTreeMap<PathBuf, String>,
) -> Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        let default_source = names.get(input).cloned().unwrap_or_else(|| stem(input));
        if !meta.is_dir() {
            files.push(InputFile {
                path: input.clone(),
                default_source,
            });
            continue;
        }
        let mut found = Vec::new();
        walk(input, &mut found)?;
        if found.is_empty() {
            return Err(Error::Invalid(format!(
                "`{}` holds no .jsonl, .json or .parquet files",
                input.display()
            )));
        }
        found.sort();
        files.extend(found.into_iter().map(|path| InputFile {
            path,
            default_source: default_source.clone(),
        }));
    }
    Ok(files)
}

fn stem(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    // `train.jsonl.gz` is `train`.
    let canonical = if is_gzip(&canonical) {
        canonical.with_extension("")
    } else {
        canonical
    };
    canonical
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imported".to_string())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let metadata = path
            .file_name()
            .is_some_and(|n| METADATA.contains(&n.to_string_lossy().as_ref()));
        if path.is_dir() {
            walk(&path, out)?;
        } else if !metadata && kind_of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// The kinds of file `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jsonl,
    Parquet,
    /// An Arrow IPC stream (`datasets`' `.arrow` shards).
    Arrow,
}

fn kind_of(path: &Path) -> Option<Kind> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("arrow"))
    {
        return Some(Kind::Arrow);
    }
    if is_gzip(path) {
        // `train.jsonl.gz`: jsonl inside.
        return format_of(&path.with_extension(""))
            .filter(|f| *f == Format::Jsonl)
            .map(Kind::from);
    }
    format_of(path).map(Kind::from)
}

fn is_gzip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

impl From<Format> for Kind {
    fn from(f: Format) -> Self {
        match f {
            Format::Jsonl => Kind::Jsonl,
            Format::Parquet => Kind::Parquet,
        }
    }
}

fn format(path: &Path) -> Result<Kind> {
    match kind_of(path) {
        Some(k) => Ok(k),
        None => sniff_format(path).map(Kind::from),
    }
}

/// What a file says about itself before it is read: its column names (a parquet file's or an
/// Arrow stream's schema, the keys of a jsonl file's first object) and, from a parquet footer,
/// its row count (`None` for jsonl and Arrow streams).
pub struct Header {
    pub columns: Vec<String>,
    pub rows: Option<u64>,
}

/// Reads a file's [`Header`] (one footer read for parquet).
pub fn header(path: &Path) -> Result<Header> {
    let names = |schema: &arrow_schema::Schema| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    Ok(match format(path)? {
        Kind::Parquet => {
            let builder = parquet_builder(path)?;
            Header {
                columns: names(builder.schema()),
                rows: u64::try_from(builder.metadata().file_metadata().num_rows()).ok(),
            }
        }
        Kind::Arrow => Header {
            columns: names(&arrow_reader(path, None)?.schema()),
            rows: None,
        },
        Kind::Jsonl => {
            let mut rows = Rows::open(path, &[], 1)?;
            let columns = match rows.next().transpose()? {
                Some(batch) => batch
                    .first()
                    .map(|r| r.value.keys().cloned().collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            Header {
                columns,
                rows: None,
            }
        }
    })
}

/// Where a row stands in its file, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A jsonl line, from 1.
    Line(usize),
    /// An element of a whole-file JSON array, from 0.
    Element(usize),
    /// A parquet or Arrow row, from 0.
    Row(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Element(n) => write!(f, "element {n}"),
            Place::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One row and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub place: Place,
    pub value: Map<String, Value>,
}

/// A file's rows, `batch` at a time.
pub enum Rows {
    Jsonl {
        path: PathBuf,
        /// The file, or what it inflates to (`.jsonl.gz`).
        reader: BufReader<Box<dyn Read>>,
        line: usize,
        /// Whether a non-blank line was read (only the first may open a whole-file array).
        started: bool,
        batch: usize,
        /// A whole-file JSON array, read at once, handed out in batches.
        array: Option<std::vec::IntoIter<Value>>,
        array_index: usize,
    },
    /// Parquet and Arrow IPC files: record batches.
    Batches {
        path: PathBuf,
        reader: Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>,
        row: usize,
    },
}

fn arrow_reader(path: &Path, wanted: Option<&[String]>) -> Result<StreamReader<BufReader<File>>> {
    let bad = |e: ArrowError| Error::parse(path, format!("not an Arrow IPC stream ({e})"));
    let open = || File::open(path).map_err(|e| Error::io(path, e));
    let reader = StreamReader::try_new_buffered(open()?, None).map_err(bad)?;
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok(reader);
    };
    let projection: Vec<usize> = reader
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| wanted.contains(f.name()))
        .map(|(i, _)| i)
        .collect();
    StreamReader::try_new_buffered(open()?, Some(projection)).map_err(bad)
}

fn parquet_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map_err(|e| Error::io(path, e))?.len() == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| Error::ParquetRead {
        path: path.to_path_buf(),
        source,
    })
}

impl Rows {
    /// Opens `path`; parquet files decode only the `wanted` columns (all when empty).
    pub fn open(path: &Path, wanted: &[String], batch: usize) -> Result<Self> {
        let batch = batch.max(1);
        match format(path)? {
            Kind::Jsonl => {
                let file = File::open(path).map_err(|e| Error::io(path, e))?;
                let file: Box<dyn Read> = if is_gzip(path) {
                    Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
                } else {
                    Box::new(file)
                };
                Ok(Rows::Jsonl {
                    path: path.to_path_buf(),
                    reader: BufReader::with_capacity(1 << 20, file),
                    line: 0,
                    started: false,
                    batch,
                    array: None,
                    array_index: 0,
                })
            }
            Kind::Arrow => Ok(Rows::Batches {
                path: path.to_path_buf(),
                reader: Box::new(arrow_reader(path, Some(wanted))?),
                row: 0,
            }),
            Kind::Parquet => {
                let builder = parquet_builder(path)?;
                let roots: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| wanted.is_empty() || wanted.contains(f.name()))
                    .map(|(i, _)| i)
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
                let reader = builder
                    .with_projection(mask)
                    .with_batch_size(batch)
                    .build()
                    .map_err(|source| Error::ParquetRead {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Ok(Rows::Batches {
                    path: path.to_path_buf(),
                    reader: Box::new(reader),
                    row: 0,
                })
            }
        }
    }

    fn next_jsonl(&mut self) -> Result<Option<Vec<Row>>> {
        let Rows::Jsonl {
            path,
            reader,
            line,
            started,
            batch,
            array,
            array_index,
        } = self
        else {
            unreachable!("called on a jsonl reader")
        };
        let mut rows = Vec::new();
        if let Some(values) = array {
            for value in values.by_ref().take(*batch) {
                rows.push(object(path, value, Place::Element(*array_index))?);
                *array_index += 1;
            }
            return Ok((!rows.is_empty()).then_some(rows));
        }
        let mut buf = Vec::new();
        while rows.len() < *batch {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(&*path, e))?;
            if n == 0 {
                break;
            }
            *line += 1;
            let text = std::str::from_utf8(&buf).map_err(|_| Error::NotUtf8 {
                path: path.clone(),
                line: *line,
            })?;
            let text = text.trim_start_matches('\u{feff}').trim();
            if text.is_empty() {
                continue;
            }
            let first = !std::mem::replace(started, true);
            if first && text.starts_with('[') {
                // A whole-file JSON array (`.json` exports): parse it at once.
                let mut all = buf.clone();
                reader
                    .read_to_end(&mut all)
                    .map_err(|e| Error::io(&*path, e))?;
                let body = all.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&all);
                let values: Vec<Value> =
                    serde_json::from_slice(body).map_err(|e| Error::JsonLine {
                        path: path.clone(),
                        line: *line + e.line() - 1,
                        message: e.to_string(),
                    })?;
                *array = Some(values.into_iter());
                return self.next_jsonl();
            }
            let value: Value = serde_json::from_str(text).map_err(|e| Error::JsonLine {
                path: path.clone(),
                line: *line,
                message: e.to_string(),
            })?;
            rows.push(object(path, value, Place::Line(*line))?);
        }
        Ok((!rows.is_empty()).then_some(rows))
    }

    fn next_batch(&mut self) -> Result<Option<Vec<Row>>> {
        let Rows::Batches { path, reader, row } = self else {
            unreachable!("called on a batch reader")
        };
        let Some(batch) = reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| Error::parse(&*path, e))?;
        let schema = batch.schema();
        let mut rows = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let mut value = Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let cell = cell(column.as_ref(), i).map_err(|found| Error::ColumnType {
                    path: path.clone(),
                    column: field.name().clone(),
                    found,
                    expected: "text, numbers, booleans, and lists or structs of them".into(),
                })?;
                value.insert(field.name().clone(), cell);
            }
            rows.push(Row {
                place: Place::Row(*row + i),
                value,
            });
        }
        *row += batch.num_rows();
        Ok(Some(rows))
    }
}

impl Iterator for Rows {
    type Item = Result<Vec<Row>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Rows::Jsonl { .. } => self.next_jsonl(),
            Rows::Batches { .. } => self.next_batch(),
        }
        .transpose()
    }
}

fn object(path: &Path, value: Value, place: Place) -> Result<Row> {
    match (value, place) {
        (Value::Object(value), _) => Ok(Row { place, value }),
        (_, Place::Line(line)) => Err(Error::JsonLine {
            path: path.to_path_buf(),
            line,
            message: "expected a JSON object".to_string(),
        }),
        (_, Place::Element(row) | Place::Row(row)) => Err(Error::BadRow {
            path: path.to_path_buf(),
            row,
            message: "is not a JSON object".to_string(),
        }),
    }
}

/// One arrow cell as JSON (the shape `datasets` gives it in Python); the error names an
/// unsupported type.
fn cell(array: &dyn Array, row: usize) -> std::result::Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    fn float(x: f64) -> Value {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
    let list = |items: &dyn Array| -> std::result::Result<Value, String> {
        (0..items.len())
            .map(|i| cell(items, i))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Value::Array)
    };
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => array.as_string::<i32>().value(row).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).into(),
        DataType::Utf8View => array.as_string_view().value(row).into(),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                map.insert(field.name().clone(), cell(column.as_ref(), row)?);
            }
            Value::Object(map)
        }
        DataType::Dictionary(_, _) => {
            let dict = array
                .as_any_dictionary_opt()
                .ok_or_else(|| array.data_type().to_string())?;
            let key = dict.normalized_keys()[row];
            cell(dict.values().as_ref(), key)?
        }
        other => return Err(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{LargeListBuilder, LargeStringBuilder, StringDictionaryBuilder};
    use arrow_array::types::Int32Type as Key;
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringViewArray};
    use parquet::arrow::ArrowWriter;
    use serde_json::json;

    use super::*;

    /// polars writes `large_string` and `large_list`, pandas categoricals come back as
    /// dictionaries, and arrow-rs may hand out string views: every one reads as JSON.
    #[test]
    fn other_writers_types_read_as_json() {
        let mut texts = LargeListBuilder::new(LargeStringBuilder::new());
        texts.values().append_value("<think>a</think>b");
        texts.values().append_value("c");
        texts.append(true);
        texts.append_null();
        let mut dict = StringDictionaryBuilder::<Key>::new();
        dict.append_value("olympiads");
        dict.append_value("amc");
        let arrays: Vec<(&str, ArrayRef)> = vec![
            ("generations", Arc::new(texts.finish())),
            ("source", Arc::new(dict.finish())),
            (
                "problem",
                Arc::new(StringViewArray::from(vec!["1+1?", "2+2?"])),
            ),
            ("n", Arc::new(Int64Array::from(vec![Some(3), None]))),
        ];
        let batch = RecordBatch::try_from_iter(arrays).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polars.parquet");
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let rows: Vec<Row> = Rows::open(&path, &[], 16)
            .unwrap()
            .flat_map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            serde_json::Value::Object(rows[0].value.clone()),
            json!({"generations": ["<think>a</think>b", "c"], "source": "olympiads", "problem": "1+1?", "n": 3})
        );
        assert_eq!(rows[1].value["generations"], serde_json::Value::Null);
        assert_eq!(rows[1].value["source"], "amc");
        assert_eq!(rows[1].place, Place::Row(1));
        let head = header(&path).unwrap();
        assert_eq!(head.columns, ["generations", "source", "problem", "n"]);
        assert_eq!(head.rows, Some(2));
    }
}
