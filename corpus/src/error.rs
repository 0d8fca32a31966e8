//! The corpus crate's error type. Messages are one sentence naming the file or column at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot parse `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{path}` has no column `{column}` (columns present: {present})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        present: String,
    },
    #[error("Invalid argument: {0}")]
    Invalid(String),
    #[error("`{path}` has no columns {missing} (columns present: {present})")]
    MissingColumns {
        path: PathBuf,
        missing: String,
        present: String,
    },
    #[error("Column `{column}` of `{path}` has type `{found}`, expected `{expected}`")]
    ColumnType {
        path: PathBuf,
        column: String,
        found: String,
        expected: String,
    },
    #[error("Shards have different schemas: `{first}` and `{second}` differ ({detail})")]
    MixedSchemas {
        first: PathBuf,
        second: PathBuf,
        detail: String,
    },
    #[error("`{path}` is empty (0 bytes), not a parquet file")]
    EmptyFile { path: PathBuf },
    #[error("No parquet shards found in `{path}`")]
    NoShards { path: PathBuf },
    #[error("Output `{path}` already exists (`--overwrite` replaces it)")]
    OutputExists { path: PathBuf },
    #[error("Cannot read parquet `{path}`")]
    ParquetRead {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("Cannot write parquet `{path}`")]
    ParquetWrite {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("Invalid record batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("Cannot draw chart `{path}`: {message}")]
    Chart { path: PathBuf, message: String },
    #[error("`{path}` holds no problems")]
    NoProblems { path: PathBuf },
    #[error("Line {line} of `{path}` is not valid JSON: {message}")]
    JsonLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("Line {line} of `{path}` is not valid UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("Row {row} of `{path}`: {message}")]
    BadRow {
        path: PathBuf,
        row: usize,
        message: String,
    },
    #[error("Problem id `{id}` occurs twice (second time in `{path}`)")]
    DuplicateId { path: PathBuf, id: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn parse(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
