//! Student stage: supervised fine-tuning of Qwen2/Llama students in candle — corpus rendering
//! with label masks, packing, chunked cross-entropy, fused AdamW with schedules, gradient
//! accumulation and clipping, exact checkpoint/resume, and Hugging Face export — plus logit
//! distillation (`kd`) and on-policy distillation (`trainer::on_policy`).

pub mod batch;
pub mod checkpoint;
pub mod data;
mod error;
pub mod export;
pub mod init;
pub mod kd;
pub mod loss;
pub mod optim;
pub mod pack;
pub mod schedule;
pub mod tokenizer_train;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{Control, Event, StepMetrics, StudentInit, TrainTarget, Trainer, TrainerConfig};
