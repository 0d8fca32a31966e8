//! `--device` and `--dtype`: the one flag set every model stage (`train`, `generate`, `serve`,
//! `compare`) takes, resolved by [`distill_models::device`]; with them, for the stages that
//! generate, `--kv-cache-dtype`.

use distill_models::{DeviceChoice, DtypeChoice, HostKvDtype};
use distill_teacher::engine::EngineOptions;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct DeviceArgs {
    /// Where model maths runs: `auto` (the first GPU when this binary is built with CUDA and
    /// one is usable, else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value_t = DeviceChoice::Auto, value_name = "DEVICE")]
    pub device: DeviceChoice,
    /// Float type: `auto` (CPU: f32; GPU: bf16 compute over f32 master weights when training,
    /// the checkpoint's stored dtype otherwise), `f32`, `bf16`, `bf16-pure` (training: bf16
    /// weights and AdamW moments, half the memory) or `f16` (inference only).
    #[arg(long, default_value_t = DtypeChoice::Auto, value_name = "DTYPE")]
    pub dtype: DtypeChoice,
    /// Keys and values cached on the CPU: `f32`, or `f16` (half the memory, and faster at long
    /// contexts, where a step reads the whole cache; llama.cpp's default). On a GPU the cache
    /// is in the model's dtype.
    #[arg(long, default_value_t = HostKvDtype::F32, value_name = "DTYPE")]
    pub kv_cache_dtype: HostKvDtype,
}

impl DeviceArgs {
    /// Engine options that run on this device in this dtype.
    pub fn engine(&self, options: EngineOptions) -> EngineOptions {
        EngineOptions {
            device: self.device,
            dtype: self.dtype,
            kv_cache_dtype: self.kv_cache_dtype,
            ..options
        }
    }
}
