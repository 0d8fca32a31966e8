//! The models crate's error type: one variant per thing a user can get wrong, each naming the file.

use std::path::PathBuf;

/// Errors from loading, running and saving models.
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
    #[error("Unsupported architecture `{0}` (supported: qwen2, qwen3, llama)")]
    UnsupportedArchitecture(String),
    #[error("Missing tensor `{name}` in `{path}`")]
    MissingTensor { name: String, path: PathBuf },
    #[error("Tensor `{name}` has shape {actual:?} but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("Unsupported GGUF tensor type `{dtype}` for tensor `{name}`")]
    UnsupportedQuant { name: String, dtype: String },
    #[error("No tokenizer found for `{0}` (expected tokenizer.json or GGUF tokenizer metadata)")]
    MissingTokenizer(PathBuf),
    #[error("Tokenizer error: {0}")]
    Tokenizer(String),
    #[error("Chat template error: {0}")]
    Template(String),
    /// The checkpoint cannot be written as GGUF in a form llama.cpp reads the same way.
    #[error("Cannot export `{path}` as GGUF: {reason}")]
    Export { path: PathBuf, reason: String },
    #[error("Device: {0}")]
    Device(String),
    #[error("Invalid model config: {0}")]
    Config(String),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn export(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Export {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
