//! Teacher stage: the generation engine (continuous batching over per-sequence KV caches, seeded
//! sampling), its backends (local checkpoints, OpenAI-compatible HTTP endpoints), the `generate`
//! stage that streams corpus shards resumably, and an OpenAI-compatible server for local models.

pub mod backend;
pub mod engine;
mod error;
pub mod generate;
mod handle;
pub mod local;
pub mod openai;
pub mod sampling;
pub mod score;
pub mod server;

pub use backend::{
    Backend, Cancel, ErrorCounts, Event, FinishReason, GenOutput, GenRequest, GenStats,
    SamplingParams,
};
pub use engine::{Engine, EngineHandle, EngineOptions, Update};
pub use error::{Error, Result};
pub use local::LocalBackend;
