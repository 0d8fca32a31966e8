//! Model core: Qwen2, Qwen3 and Llama decoders in candle with a differentiable full-sequence training
//! forward and a KV-cached decode forward; Hugging Face folder and GGUF checkpoint I/O; tokenizers
//! and chat templates; models by name from the Hugging Face hub.

pub mod alloc;
pub mod chat;
pub mod checkpoint;
pub mod chunked_attention;
pub mod config;
pub mod cuda;
mod decode;
pub mod device;
mod error;
pub mod fused;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod kernels;
pub mod kv_pool;
pub mod llama;
pub mod ops;
pub mod prune;
pub mod quantized;
pub mod qwen2;
pub mod qwen3;
pub mod recompute;
mod rope;
pub mod tokenizer;
pub mod transformer;
mod weights;
pub mod workers;

pub use checkpoint::Checkpoint;
pub use config::{Architecture, Config, GenerationConfig, TokenIds};
pub use device::{DeviceChoice, DtypeChoice, Placement, TrainPrecision};
pub use error::{Error, Result};
pub use transformer::{HostKvDtype, KvCache, Model, Spec};
