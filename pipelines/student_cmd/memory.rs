//! GPU memory for `distill train`: an estimate checked against the device's free memory before
//! the first step, and out-of-memory errors turned into one line naming the stage, the batch and
//! the estimated need (instead of a CUDA error from deep inside a kernel launch).

use candle_core::DType;
use distill_models::device::{gib, is_out_of_memory, memory_info};
use distill_models::Spec;
use distill_student::batch::Rows;
use distill_student::data::token_cache::CachedDataset;
use distill_student::{StudentInit, TrainTarget};

use super::TrainSettings;

/// Bytes a training run needs, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Parameters, gradients, AdamW moments, and (mixed precision) the compute-dtype copy.
    pub state: f64,
    /// Activations kept for the backward pass of one micro-batch.
    pub activations: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        self.state + self.activations
    }
}

/// What a run of `spec` needs at `micro_batch` rows of `seq_len` tokens. Activations follow the
/// composed ops a GPU runs today: per layer the block's inputs and projections
/// (~16 × hidden + 6 × intermediate values per token) and the attention scores, probabilities
/// and mask (`batch × heads × seq²`, f32).
pub fn estimate(spec: &Spec, target: &TrainTarget, micro_batch: usize, seq_len: usize) -> Estimate {
    let n = spec.num_parameters() as f64;
    let bytes = |d: DType| d.size_in_bytes() as f64;
    let p = &target.precision;
    let copy = if p.is_mixed() { bytes(p.compute) } else { 0.0 };
    // parameter + gradient + two moments (in the parameter's dtype) + the cast copy.
    let state = n * (4.0 * bytes(p.params) + copy);
    let tokens = (micro_batch * seq_len) as f64;
    let per_layer =
        tokens * (16 * spec.hidden_size + 6 * spec.intermediate_size) as f64 * bytes(p.compute)
            + (micro_batch * spec.num_heads) as f64 * (seq_len as f64).powi(2) * 14.0;
    Estimate {
        state,
        activations: per_layer * spec.num_layers as f64,
    }
}

/// Fails before the first step when the estimate exceeds the GPU's free memory (no check on
/// the CPU, where the operating system has the last word).
pub fn preflight(
    settings: &TrainSettings,
    student: &StudentInit,
    target: &TrainTarget,
    dataset: &CachedDataset,
) -> anyhow::Result<()> {
    let Some((free, _)) = memory_info(&target.device) else {
        return Ok(());
    };
    let spec = student.config.spec()?;
    let width = dataset.train.max_len();
    let need = estimate(&spec, target, settings.train.micro_batch_size, width);
    if need.total() > free as f64 {
        anyhow::bail!("{}", advice(settings, target, width, &need, Some(free)));
    }
    Ok(())
}

/// An out-of-memory failure becomes one line with the batch and the estimate for `spec`;
/// anything else passes through.
pub fn explain(
    e: anyhow::Error,
    settings: &TrainSettings,
    target: &TrainTarget,
    spec: &Spec,
) -> anyhow::Error {
    let oom = e.chain().any(|c| {
        c.downcast_ref::<candle_core::Error>()
            .is_some_and(is_out_of_memory)
            || c.to_string().contains("OUT_OF_MEMORY")
    });
    if !oom {
        return e;
    }
    let width = settings.data.max_seq_len;
    let free = memory_info(&target.device).map(|(f, _)| f);
    let need = estimate(spec, target, settings.train.micro_batch_size, width);
    anyhow::anyhow!("{}", advice(settings, target, width, &need, free))
}

fn advice(
    settings: &TrainSettings,
    target: &TrainTarget,
    width: usize,
    need: &Estimate,
    free: Option<usize>,
) -> String {
    format!(
        "train: out of GPU memory: micro-batch {} × {width} tokens in {} needs about {} (weights, gradients and AdamW moments {}, activations {}){}; lower `micro_batch_size` or `max_seq_len` (raise `accumulation_steps` to keep the batch){}",
        settings.train.micro_batch_size,
        target.precision,
        gib(need.total()),
        gib(need.state),
        gib(need.activations),
        free.map_or(String::new(), |f| format!(", {} has {} free", distill_models::device::describe(&target.device), gib(f as f64))),
        if target.precision.params == DType::F32 { ", or use `--dtype bf16-pure`" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_models::transformer::RopeSpec;
    use distill_models::TrainPrecision;

    /// Qwen2.5-1.5B (1.54 B parameters): 16 bytes per parameter of state with f32 master
    /// weights (+2 for the bf16 copy), 8 in pure bf16.
    fn spec() -> Spec {
        Spec {
            vocab_size: 151936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_layers: 28,
            num_heads: 12,
            num_kv_heads: 2,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope: RopeSpec::from_hf(1e6, None, 128).unwrap(),
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            tie_word_embeddings: true,
            hidden_act: "silu".into(),
            initializer_range: 0.02,
        }
    }

    #[test]
    fn qwen_1_5b_estimate() {
        let spec = spec();
        let n = spec.num_parameters() as f64;
        assert!((1.5e9..1.6e9).contains(&n), "{n}");
        let target = |params, compute| TrainTarget {
            device: candle_core::Device::Cpu,
            precision: TrainPrecision { params, compute },
        };
        let mixed = estimate(&spec, &target(DType::F32, DType::BF16), 8, 2048);
        assert_eq!(mixed.state, n * 18.0);
        let pure = estimate(&spec, &target(DType::BF16, DType::BF16), 8, 2048);
        assert_eq!(pure.state, n * 8.0);
        assert_eq!(mixed.activations, pure.activations);
        // Activations grow with the batch and quadratically (attention) with the length.
        let short = estimate(&spec, &target(DType::BF16, DType::BF16), 8, 1024);
        assert!(short.activations < pure.activations / 2.0);
    }

    #[test]
    fn only_out_of_memory_errors_are_rewritten() {
        let settings = TrainSettings::default();
        let target = TrainTarget::from(&candle_core::Device::Cpu);
        let spec = spec();
        let other = explain(anyhow::anyhow!("disk full"), &settings, &target, &spec);
        assert_eq!(other.to_string(), "disk full");
        let oom = explain(
            anyhow::anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"),
            &settings,
            &target,
            &spec,
        )
        .to_string();
        assert!(oom.starts_with("train: out of GPU memory"), "{oom}");
        assert!(oom.contains("micro-batch"), "{oom}");
        assert!(!oom.contains('\n'));
    }
}
