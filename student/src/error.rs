//! The student crate's error type: one variant per thing a user can get wrong (config values,
//! data, checkpoints), each naming the offending value or file; model and tensor errors chained.

use std::path::PathBuf;

/// Errors from preparing data, training, checkpointing and exporting a student.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid training config: {0}")]
    Config(String),
    #[error("Cannot parse training config `{path}`")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Invalid batch: {0}")]
    Batch(String),
    #[error("No training data: {0}")]
    NoData(String),
    #[error("Cannot access `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Checkpoint `{path}` is invalid: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("Cannot write `{path}`: {message}")]
    Write { path: PathBuf, message: String },
    #[error("Cannot resume from `{path}`: {difference}")]
    ResumeMismatch { path: PathBuf, difference: String },
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Corpus(#[from] distill_corpus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
