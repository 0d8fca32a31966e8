//! Student stage: supervised fine-tuning of Qwen2/Llama students in candle — corpus rendering
//! with label masks, packing, chunked cross-entropy, fused AdamW with schedules, gradient
//! accumulation and clipping, exact checkpoint/resume, and Hugging Face export.

pub mod batch;
pub mod checkpoint;
mod error;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{Control, Event, StepMetrics, StudentInit, Trainer, TrainerConfig};
