//! The teacher crate's error type: backends, the generation engine and the `generate` stage.

use std::path::PathBuf;

/// Errors from generating samples and writing the corpus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error(transparent)]
    Corpus(#[from] distill_corpus::Error),
    #[error("Model computation failed")]
    Candle(#[from] candle_core::Error),
    #[error("Invalid generation settings: {0}")]
    Config(String),
    #[error(
        "The output folder `{path}` holds a corpus generated with a different config \
         (differing keys: {keys}); pass `--force` to start over"
    )]
    ConfigMismatch { path: PathBuf, keys: String },
    #[error("Request `{key}` failed: {message}")]
    Request { key: String, message: String },
    #[error("Backend error: {0}")]
    Backend(String),
    // The `openai` backend and `distill serve`. Messages about the API key name the environment
    // variable, never its value.
    #[error("The environment variable `{name}` that should hold the API key is not set")]
    ApiKeyMissing { name: String },
    #[error("The endpoint `{url}` rejected the API key from `${env}` (HTTP {status})")]
    ApiKeyRejected {
        url: String,
        env: String,
        status: u16,
    },
    #[error(
        "The endpoint `{url}` refused the request (HTTP {status}) and no API key was given; \
         pass `--api-key-env NAME` with the name of the variable holding it"
    )]
    ApiKeyRequired { url: String, status: u16 },
    #[error(
        "`{url}` answered HTTP 404 ({message}): check the model name `{model}` (the server's \
         `/v1/models` lists what it serves) and that the base URL ends where `/v1` begins"
    )]
    NotFound {
        url: String,
        model: String,
        message: String,
    },
    #[error(
        "`{url}` refused `max_tokens = {max_tokens}` (HTTP {status}: {message}); lower \
         `max_new_tokens` so that prompt and answer fit the model's context on the server"
    )]
    MaxTokensTooLarge {
        url: String,
        max_tokens: usize,
        status: u16,
        message: String,
    },
    #[error("Cannot reach `{url}` after {attempts} attempts: {message}")]
    Unreachable {
        url: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "`{url}` returned no token ids with its log-probabilities ({detail}): `--logprobs` needs a server that honours `return_tokens_as_token_ids` (vLLM, SGLang, `distill serve`)"
    )]
    NoTokenLogprobs { url: String, detail: String },
    #[error("Invalid endpoint URL `{url}`: {message}")]
    BaseUrl { url: String, message: String },
    #[error("Cannot start the HTTP runtime")]
    Runtime(#[source] std::io::Error),
    #[error("Cannot listen on `{addr}`")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("The generation engine has stopped")]
    EngineStopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
