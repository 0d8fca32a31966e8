//! Student stage: supervised fine-tuning of Qwen2/Llama students in candle — corpus rendering
//! with label masks, packing, chunked cross-entropy, fused AdamW with schedules, gradient
//! accumulation and clipping, exact checkpoint/resume, and Hugging Face export.

pub mod batch;
